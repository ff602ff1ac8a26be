package main

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// How the service talks to PostgreSQL: the pool, the deadline every statement runs
// under, and the few errors the rest of the code needs to tell apart. The statements
// themselves are in store.go and changes.go.

// db runs statements, each under the deadline DB_TIMEOUT, so that a hanging database is
// ErrUnavailable, not a hung request. Store and Feed hold one.
type db struct {
	pool    *pgxpool.Pool
	timeout time.Duration
	breaker *breaker
}

// Pool defaults suited to Neon; each applies only when the URL does not set it.
const (
	defaultMaxConns          = 15
	defaultMaxConnIdleTime   = 60 * time.Second // well before Neon suspends an idle compute (5 min)
	defaultHealthCheckPeriod = 30 * time.Second
)

// newPoolConfig parses databaseURL with pgx's own parser, so pgx's URL parameters
// (pool_max_conns, default_query_exec_mode, sslmode, ...) keep working, then fills in
// the defaults the URL left open.
func newPoolConfig(databaseURL string, timeout time.Duration) (*pgxpool.Config, error) {
	cfg, err := pgxpool.ParseConfig(databaseURL)
	if err != nil {
		return nil, err
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

//go:embed schema.sql
var schemaSQL string

// newDB makes a db whose pool connects on first use.
func newDB(cfg *pgxpool.Config, timeout time.Duration, log *slog.Logger) (*db, error) {
	b := &breaker{log: log}
	cfg.BeforeConnect, cfg.ConnConfig.Tracer = b.beforeConnect, b
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		return nil, err
	}
	return &db{pool: pool, timeout: timeout, breaker: b}, nil
}

// openDB makes a db, pings the database and applies schema.sql. It fails rather than
// start a server that could not serve a single request.
func openDB(ctx context.Context, cfg *pgxpool.Config, timeout time.Duration, log *slog.Logger) (*db, error) {
	// Until it opens, a failure is the start's own error, not an outage to log.
	s, err := newDB(cfg, timeout, slog.New(slog.DiscardHandler))
	if err != nil {
		return nil, err
	}
	defer s.breaker.setLog(log)
	// Neon may need a few seconds to wake a suspended compute, so the start gets more
	// time than a request does.
	startCtx, cancel := context.WithTimeout(ctx, max(timeout, 15*time.Second))
	defer cancel()
	if err := s.pool.Ping(startCtx); err != nil {
		s.Close()
		return nil, fmt.Errorf("ping: %w", err)
	}
	if _, err := s.pool.Exec(startCtx, schemaSQL); err != nil {
		s.Close()
		return nil, fmt.Errorf("apply schema.sql: %w", err)
	}
	return s, nil
}

func (s *db) Close() { s.pool.Close() }

// Ping reports whether the database answers within the deadline.
func (s *db) Ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	return translate(ctx, s.pool.Ping(ctx))
}

// row runs a statement that returns at most one row, and scans it. It runs to completion
// under its deadline even if the client hangs up: it takes a millisecond, and
// interrupting it would cost its connection (pgx closes a connection it interrupts).
//
// The deadline is set on the connection's socket, not in a context pgx watches: 8-11%
// more throughput, p99 a fifth to a third lower (docs/performance.md, "Socket deadlines").
// A statement past it fails with a timeout; pgx then closes the connection, and the pool
// replaces it.
func (s *db) row(ctx context.Context, scan func(pgx.Row) error, sql string, args ...any) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.timeout)
	defer cancel()
	conn, socket, release, err := s.acquire(ctx)
	if err != nil {
		return err
	}
	defer release()
	deadline, _ := ctx.Deadline()
	if err := socket.SetDeadline(deadline); err != nil {
		return translate(ctx, err)
	}
	return translate(ctx, scan(conn.QueryRow(context.Background(), sql, args...)))
}

// query runs a statement and hands each row to scan as it arrives; an error from scan
// stops the query and is returned as it is. Each row must arrive within the
// deadline of asking for it, set on the socket as in row; how long the whole takes
// depends on how fast scan passes rows on, which is the caller's to bound (the HTTP
// server's write timeout). A client that hangs up (ctx) ends the query at the next row;
// one that stops reading, at the write that fails.
func (s *db) query(ctx context.Context, scan func(pgx.Rows) error, sql string, args ...any) error {
	acquireCtx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	conn, socket, release, err := s.acquire(acquireCtx)
	if err != nil {
		return err
	}
	defer release()
	arm := func() { socket.SetDeadline(time.Now().Add(s.timeout)) } //nolint:errcheck // fails only on a closed socket
	arm()
	rows, err := conn.Query(context.Background(), sql, args...)
	if err != nil {
		return translate(context.Background(), err)
	}
	defer func() {
		if ctx.Err() != nil {
			// The client went: end the query now (pgx closes the connection) rather
			// than read the rest of it.
			socket.SetDeadline(time.Now()) //nolint:errcheck // as above
		} else {
			arm() // a query stopped early (a 304) reads what is left, under the deadline
		}
		rows.Close()
	}()
	for {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		arm()
		if !rows.Next() {
			break
		}
		if err := scan(rows); err != nil {
			return err
		}
	}
	return translate(context.Background(), rows.Err())
}

// acquire takes a connection from the pool, and its socket, on which the caller sets the
// statement's deadline. release clears the deadline and gives the connection back; but a
// connection pgx closed (after a timeout, say) is cleaning up under a deadline of its
// own, which must stay: it goes back to the pool only to be destroyed.
func (s *db) acquire(ctx context.Context) (conn *pgxpool.Conn, socket net.Conn, release func(), err error) {
	conn, err = s.pool.Acquire(ctx)
	if err != nil {
		return nil, nil, nil, translate(ctx, err)
	}
	socket = conn.Conn().PgConn().Conn()
	return conn, socket, func() {
		if !conn.Conn().IsClosed() {
			socket.SetDeadline(time.Time{}) //nolint:errcheck // fails only on a closed socket
		}
		conn.Release()
	}, nil
}

// errKeyUsed: the statement found its Idempotency-Key taken, and was undone.
var errKeyUsed = errors.New("idempotency key used before")

// translate turns a driver error into one of the store's errors, keeping the cause in
// the chain for the log; a SQLSTATE it does not map, or a bug, stays as it is (a 500).
// ctx is the statement's.
func translate(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return ErrNotFound
	}
	var connectErr *pgconn.ConnectError
	if errors.As(err, &connectErr) { // the breaker has heard of it (TraceConnectEnd)
		return fmt.Errorf("%w: %w: %w", ErrUnavailable, errDatabaseDown, err)
	}
	if errors.Is(err, errDatabaseDown) {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	// After the connect errors, which may wrap a PgError (57P03 while starting up).
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case pgErr.Code == "23505" && pgErr.ConstraintName == "idempotency_keys_pkey":
			return errKeyUsed
		case pgErr.Code == "23514", // check_violation
			pgErr.Code == "22001", // string_data_right_truncation
			pgErr.Code == "22021": // character_not_in_repertoire
			return fmt.Errorf("%w: %w", ErrRejected, err)
		case unavailableCode(pgErr.Code):
			return fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		return err
	}
	if ctx.Err() != nil || pgconn.Timeout(err) || connectionLost(err) {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return err
}

// unavailableCode reports the SQLSTATEs that mean "try again later", not "your request
// is wrong": lost or refused connections, shutdowns, resource exhaustion, cancellation.
func unavailableCode(code string) bool {
	switch code {
	case "57P01", // admin_shutdown: restart, failover, Neon closing idle connections
		"57P02", // crash_shutdown
		"57P03", // cannot_connect_now: starting up or in recovery
		"57014", // query_canceled: statement_timeout
		"40001", // serialization_failure
		"40P01": // deadlock_detected
		return true
	}
	// Class 08: connection exception. Class 53: insufficient resources (53300 too_many_connections).
	return strings.HasPrefix(code, "08") || strings.HasPrefix(code, "53")
}

// connectionLost reports errors that mean the connection, not the statement, failed.
func connectionLost(err error) bool {
	var netErr net.Error
	return errors.As(err, &netErr) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EPIPE) ||
		pgconn.SafeToRetry(err)
}

// pruneBatch is how many rows a pruning statement deletes at most.
const pruneBatch = 5000

// pruneBatches runs a pruning statement until it prunes less than a whole batch, each a
// short transaction, under a deadline of its own: it holds no lock for long, and two
// instances pruning at once skip each other's rows.
func (s *db) pruneBatches(ctx context.Context, sql string, args ...any) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var total int64
	for ctx.Err() == nil {
		var n int64
		err := s.row(ctx, func(r pgx.Row) error { return r.Scan(&n) }, sql, args...)
		if errors.Is(err, ErrNotFound) { // the tombstones' statement has no row when it pruned none
			err = nil
		}
		if total += n; err != nil || n < pruneBatch {
			return total, err
		}
	}
	return total, translate(ctx, ctx.Err())
}
