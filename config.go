package main

import (
	"cmp"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"taskflow/internal/pg"
	"taskflow/internal/web"

	"github.com/jackc/pgx/v5/pgxpool"
)

// devDatabaseURL is the database scripts/devdb.sh starts; see the Makefile.
const devDatabaseURL = "postgres://postgres@127.0.0.1:15432/taskflow?sslmode=disable"

// config is everything the server reads from its environment.
type config struct {
	pool           *pgxpool.Config // DATABASE_URL, parsed
	listen         *pgxpool.Config // DATABASE_LISTEN_URL (or DATABASE_URL), parsed
	secret         []byte          // nil when BETTER_AUTH_SECRET is unset
	issuer         string
	audience       string
	jwksURL        string
	corsOrigins    []string
	host, port     string
	dbTimeout      time.Duration
	shutdownGrace  time.Duration
	logFormat      string
	maxTasks       int // per user
	maxWrites      int // per user and second, on each instance
	maxStreams     int // per instance
	maxUserStreams int // per user and instance
	retention      time.Duration
}

// loadConfig reads and checks the environment. Its errors are one line that names the
// variable to fix, because they are the last thing an operator sees before the exit.
func loadConfig(getenv func(string) string) (config, error) {
	env := func(name, def string) string { return cmp.Or(strings.TrimSpace(getenv(name)), def) }
	c := config{
		issuer:    env("JWT_ISSUER", "taskflow-web"),
		audience:  env("JWT_AUDIENCE", "taskflow-api"),
		jwksURL:   env("JWT_JWKS_URL", ""),
		host:      env("HOST", ""),
		port:      env("PORT", "8000"),
		logFormat: env("LOG_FORMAT", "json"),
	}
	if s := getenv("BETTER_AUTH_SECRET"); s != "" && len(s) < 32 {
		return c, fmt.Errorf("BETTER_AUTH_SECRET must be at least 32 bytes, got %d (generate one with: openssl rand -base64 32)", len(s))
	} else if s != "" {
		c.secret = []byte(s)
	}
	if c.secret == nil && c.jwksURL == "" {
		return c, errors.New("set BETTER_AUTH_SECRET (HS256 shared secret, at least 32 bytes) or JWT_JWKS_URL (the frontend's JWKS), or both")
	}
	if u, err := url.Parse(c.jwksURL); c.jwksURL != "" && (err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "") {
		return c, fmt.Errorf("JWT_JWKS_URL must be an http(s) URL, got %q", c.jwksURL)
	}
	if n, err := strconv.Atoi(c.port); err != nil || n < 0 || n > 65535 {
		return c, fmt.Errorf("PORT must be a port number, got %q", c.port)
	}
	origins, err := web.ParseOrigins(env("CORS_ORIGINS", "http://localhost:3000"))
	if err != nil {
		return c, fmt.Errorf("CORS_ORIGINS %w", err)
	}
	c.corsOrigins = origins
	for _, v := range []struct {
		name, def string
		into      any // *time.Duration, above 0, or *int, at least 1
	}{
		{"DB_TIMEOUT", "3s", &c.dbTimeout},
		{"SHUTDOWN_GRACE", "15s", &c.shutdownGrace},
		{"CHANGES_RETENTION", "168h", &c.retention},
		{"MAX_TASKS_PER_USER", "10000", &c.maxTasks},
		{"MAX_WRITES_PER_USER", "50", &c.maxWrites},
		{"MAX_STREAMS", "10000", &c.maxStreams},
		{"MAX_STREAMS_PER_USER", "16", &c.maxUserStreams},
	} {
		if err := parsePositive(v.name, env(v.name, v.def), v.into); err != nil {
			return c, err
		}
	}
	if c.logFormat != "json" && c.logFormat != "text" {
		return c, fmt.Errorf("LOG_FORMAT must be json or text, got %q", c.logFormat)
	}
	if c.pool, err = parseDatabaseURL("DATABASE_URL", env("DATABASE_URL", devDatabaseURL), c.dbTimeout); err != nil {
		return c, err
	}
	c.listen = c.pool.Copy()
	if u := env("DATABASE_LISTEN_URL", ""); u != "" {
		c.listen, err = parseDatabaseURL("DATABASE_LISTEN_URL", u, c.dbTimeout)
	}
	return c, err
}

// parsePositive sets *into from s: a duration above 0, or a count of at least 1.
func parsePositive(name, s string, into any) error {
	switch into := into.(type) {
	case *time.Duration:
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			return fmt.Errorf("%s must be a positive duration such as 3s or 500ms, got %q", name, s)
		}
		*into = d
	case *int:
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			return fmt.Errorf("%s must be a whole number of at least 1, got %q", name, s)
		}
		*into = n
	}
	return nil
}

// parseDatabaseURL parses the database URL in variable name.
func parseDatabaseURL(name, databaseURL string, timeout time.Duration) (*pgxpool.Config, error) {
	cfg, err := pg.ParseConfig(databaseURL, timeout)
	if err != nil {
		return nil, fmt.Errorf("%s %w", name, err)
	}
	return cfg, nil
}
