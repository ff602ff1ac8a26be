package main

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

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
	env := func(name, def string) string {
		if v := strings.TrimSpace(getenv(name)); v != "" {
			return v
		}
		return def
	}
	c := config{
		issuer:    env("JWT_ISSUER", "taskflow-web"),
		audience:  env("JWT_AUDIENCE", "taskflow-api"),
		jwksURL:   env("JWT_JWKS_URL", ""),
		host:      env("HOST", ""),
		port:      env("PORT", "8000"),
		logFormat: env("LOG_FORMAT", "json"),
	}
	if s := getenv("BETTER_AUTH_SECRET"); s != "" {
		if len(s) < 32 {
			return c, fmt.Errorf("BETTER_AUTH_SECRET must be at least 32 bytes, got %d (generate one with: openssl rand -base64 32)", len(s))
		}
		c.secret = []byte(s)
	}
	if c.secret == nil && c.jwksURL == "" {
		return c, errors.New("set BETTER_AUTH_SECRET (HS256 shared secret, at least 32 bytes) or JWT_JWKS_URL (the frontend's JWKS), or both")
	}
	if c.jwksURL != "" {
		if u, err := url.Parse(c.jwksURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return c, fmt.Errorf("JWT_JWKS_URL must be an http(s) URL, got %q", c.jwksURL)
		}
	}
	if n, err := strconv.Atoi(c.port); err != nil || n < 0 || n > 65535 {
		return c, fmt.Errorf("PORT must be a port number, got %q", c.port)
	}
	if c.host != "" && net.ParseIP(strings.Trim(c.host, "[]")) == nil && !validHostname(c.host) {
		return c, fmt.Errorf("HOST must be an IP address or a host name to listen on, such as 127.0.0.1, got %q", c.host)
	}
	origins, err := parseOrigins(env("CORS_ORIGINS", "http://localhost:3000"))
	if err != nil {
		return c, err
	}
	c.corsOrigins = origins
	if c.dbTimeout, err = positiveDuration(env("DB_TIMEOUT", "3s"), "DB_TIMEOUT"); err != nil {
		return c, err
	}
	if c.shutdownGrace, err = positiveDuration(env("SHUTDOWN_GRACE", "15s"), "SHUTDOWN_GRACE"); err != nil {
		return c, err
	}
	if c.maxTasks, err = positiveInt(env("MAX_TASKS_PER_USER", "10000"), "MAX_TASKS_PER_USER"); err != nil {
		return c, err
	}
	if c.maxWrites, err = positiveInt(env("MAX_WRITES_PER_USER", "50"), "MAX_WRITES_PER_USER"); err != nil {
		return c, err
	}
	if c.maxStreams, err = positiveInt(env("MAX_STREAMS", "10000"), "MAX_STREAMS"); err != nil {
		return c, err
	}
	if c.maxUserStreams, err = positiveInt(env("MAX_STREAMS_PER_USER", "16"), "MAX_STREAMS_PER_USER"); err != nil {
		return c, err
	}
	if c.retention, err = positiveDuration(env("CHANGES_RETENTION", "168h"), "CHANGES_RETENTION"); err != nil {
		return c, err
	}
	if c.logFormat != "json" && c.logFormat != "text" {
		return c, fmt.Errorf("LOG_FORMAT must be json or text, got %q", c.logFormat)
	}
	databaseURL := env("DATABASE_URL", devDatabaseURL)
	if c.pool, err = newPoolConfig(databaseURL, c.dbTimeout); err != nil {
		return c, fmt.Errorf("DATABASE_URL is not a valid PostgreSQL URL (postgres://user:password@host:5432/database): %s", urlError(err))
	}
	if listenURL := env("DATABASE_LISTEN_URL", ""); listenURL == "" {
		c.listen = c.pool.Copy()
	} else if c.listen, err = newPoolConfig(listenURL, c.dbTimeout); err != nil {
		return c, fmt.Errorf("DATABASE_LISTEN_URL is not a valid PostgreSQL URL: %s", urlError(err))
	}
	return c, nil
}

// parseOrigins reads CORS_ORIGINS. Browsers send Origin as scheme://host[:port], so an
// entry of any other shape could never match and is reported instead of ignored.
func parseOrigins(list string) ([]string, error) {
	var origins []string
	for _, o := range strings.Split(list, ",") {
		o = strings.TrimSuffix(strings.TrimSpace(o), "/")
		if o == "" {
			continue
		}
		if o == "*" {
			return nil, errors.New("CORS_ORIGINS cannot be *: credentials are allowed, so origins must be listed exactly")
		}
		u, err := url.Parse(o)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Path != "" || u.RawQuery != "" || u.User != nil {
			return nil, fmt.Errorf("CORS_ORIGINS entry %q must look like https://app.example.com or http://localhost:3000", o)
		}
		origins = append(origins, strings.ToLower(o))
	}
	if len(origins) == 0 {
		return nil, errors.New("CORS_ORIGINS lists no origin")
	}
	return origins, nil
}

func positiveDuration(s, name string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("%s must be a positive duration such as 3s or 500ms, got %q", name, s)
	}
	return d, nil
}

func positiveInt(s, name string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		return 0, fmt.Errorf("%s must be a whole number of at least 1, got %q", name, s)
	}
	return n, nil
}

// urlError is why pgx could not parse a database URL, without the URL: pgx quotes it
// with its password masked, which alters what the operator typed.
func urlError(err error) string {
	msg := err.Error()
	if i := strings.LastIndex(msg, ": "); i >= 0 && strings.Contains(msg, "cannot parse") {
		return msg[i+2:]
	}
	return msg
}

// validHostname reports whether s could name a host: letters, digits, dots and dashes.
func validHostname(s string) bool {
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-') {
			return false
		}
	}
	return len(s) <= 253
}
