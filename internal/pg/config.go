package pg

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Pool defaults suited to Neon; each applies only when the URL does not set it. Across a
// network each read holds its connection for a round trip, so 30 connections serve many
// more reads at once than 15 did there, and no fewer on loopback (docs/performance.md,
// "The pool").
const (
	defaultMaxConns          = 30
	defaultMaxConnIdleTime   = 60 * time.Second // well before Neon suspends an idle compute (5 min)
	defaultHealthCheckPeriod = 30 * time.Second
)

// ParseConfig parses databaseURL with pgx's own parser, so pgx's URL parameters
// (pool_max_conns, default_query_exec_mode, sslmode, ...) keep working, then fills in
// the defaults the URL left open, and the liveness peek. Its errors never quote the URL:
// pgx's quote it with the password masked, which alters what the operator typed.
func ParseConfig(databaseURL string, timeout time.Duration) (*pgxpool.Config, error) {
	if scheme, _, ok := strings.Cut(databaseURL, "://"); ok && scheme != "postgres" && scheme != "postgresql" {
		return nil, fmt.Errorf("must start with postgres:// or postgresql://, not %s://", scheme[:min(len(scheme), 20)])
	}
	cfg, err := pgxpool.ParseConfig(databaseURL)
	if err != nil {
		msg := err.Error()
		if i := strings.LastIndex(msg, ": "); i >= 0 && strings.Contains(msg, "cannot parse") {
			msg = msg[i+2:]
		}
		return nil, fmt.Errorf("is not a valid PostgreSQL URL (postgres://user:password@host:5432/database): %s", msg)
	}
	set := func(param string) bool { return hasConnParam(databaseURL, param) }
	if !set("pool_max_conns") {
		cfg.MaxConns = defaultMaxConns
	}
	if !set("pool_max_conn_idle_time") {
		cfg.MaxConnIdleTime = defaultMaxConnIdleTime
	}
	if !set("pool_health_check_period") {
		cfg.HealthCheckPeriod = defaultHealthCheckPeriod
	}
	if !set("connect_timeout") {
		cfg.ConnConfig.ConnectTimeout = timeout
	}
	cfg.PrepareConn = func(_ context.Context, c *pgx.Conn) (bool, error) { return connAlive(c.PgConn().Conn()), nil }
	if _, ok := cfg.ConnConfig.RuntimeParams["application_name"]; !ok {
		cfg.ConnConfig.RuntimeParams["application_name"] = "taskflow-api"
	}
	return cfg, nil
}

// hasConnParam reports whether a connection string, in URL or keyword/value form, sets
// param (a password or another value that merely contains the name does not count).
func hasConnParam(connString, param string) bool {
	if strings.HasPrefix(connString, "postgres://") || strings.HasPrefix(connString, "postgresql://") {
		u, err := url.Parse(connString)
		return err == nil && u.Query().Has(param)
	}
	for _, field := range strings.Fields(connString) {
		if name, _, ok := strings.Cut(field, "="); ok && strings.TrimSpace(name) == param {
			return true
		}
	}
	return false
}
