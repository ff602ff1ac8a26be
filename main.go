// Command taskflow-api serves TaskFlow's task API: the frontend's bearer tokens in, SQL
// against PostgreSQL, JSON and live updates out. See README.md.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"taskflow/internal/fair"
	"taskflow/internal/feed"
	"taskflow/internal/jwks"
	"taskflow/internal/pg"
	"taskflow/internal/web"

	"github.com/golang-jwt/jwt/v5"
)

// version is set at build time: go build -ldflags "-X main.version=...".
var version = "dev"

func main() {
	// The live heap of a busy instance is a few MiB, which the default GOGC collects so
	// often that lists lose throughput and p99 to it (docs/performance.md, "Garbage
	// collection"). The soft limit has the collector work harder before an instance
	// holding thousands of streams grows past it; set lower than what those streams
	// hold live, it would collect without end. Either set in the environment wins.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(256 << 20)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop() // from here on a second signal has its default effect: exit at once
	}()
	var err error
	switch args := os.Args[1:]; {
	case len(args) == 0:
		err = run(ctx, os.Getenv, os.Stdout)
	case len(args) == 1 && (args[0] == "version" || args[0] == "--version"):
		fmt.Println("taskflow-api", version)
	case len(args) == 1 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help"):
		fmt.Print(usage)
	case len(args) == 2 && args[0] == "dev-token" && !strings.HasPrefix(args[1], "-"):
		err = printDevToken(os.Getenv, args[1], os.Stdout)
	case len(args) == 1 && args[0] == "statements":
		err = json.NewEncoder(os.Stdout).Encode(statements())
	default:
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	if err != nil {
		// One line, whatever the cause: it is the last thing an operator sees.
		fmt.Fprintln(os.Stderr, "taskflow-api:", strings.Join(strings.Fields(err.Error()), " "))
		os.Exit(1)
	}
}

const usage = `usage:
  taskflow-api                    serve the API; configured by the environment (README.md)
  taskflow-api dev-token USER_ID  print an HS256 token for USER_ID, valid for a day,
                                  signed with BETTER_AUTH_SECRET (for trying the API by hand)
  taskflow-api statements         print the SQL each request runs, as JSON (make bench
                                  runs it through pgbench; EXPLAIN it by hand)
  taskflow-api version            print the version
`

// run is the whole program; main only supplies the process's context, environment and
// output, so tests can start real servers in parallel with their own.
func run(ctx context.Context, getenv func(string) string, stdout io.Writer) error {
	cfg, err := loadConfig(getenv)
	if err != nil {
		return err
	}
	log := newLogger(cfg.logFormat, stdout)
	db, err := pg.Open(ctx, cfg.pool, cfg.dbTimeout, log, schemaSQL)
	if err != nil {
		return fmt.Errorf("%w (check DATABASE_URL)", err)
	}
	defer db.Close()
	users := newUsers()
	store, changes := &Store{db: db, maxTasks: cfg.maxTasks}, feed.New(db, cfg.retention, users)
	go prune(ctx, store, changes, log)

	auth, authModes := newAuth(ctx, cfg, log)
	events := feed.NewStreams(changes, log, cfg.maxUserStreams, cfg.maxStreams)
	wakeups := feed.NewWakeups(events, db, cfg.listen.ConnConfig, log)
	go wakeups.Listen(ctx)
	go wakeups.Notify(ctx)
	srv := newServer(newHandler(log, service{store: store, feed: changes, auth: auth, events: events, users: users, writeRate: fair.NewRate(cfg.maxWrites), wakeups: wakeups}, cfg.corsOrigins), log)
	web.Watch(srv, log)

	ln, err := net.Listen("tcp", net.JoinHostPort(cfg.host, cfg.port))
	if err != nil {
		return fmt.Errorf("listen on %s: %w (set HOST and PORT to a free address)", net.JoinHostPort(cfg.host, cfg.port), err)
	}
	// A client that stops reading holds an answer in the kernel for DB_TIMEOUT at most,
	// as it holds nothing of the database's for longer (internal/web).
	ln = web.BoundedListener(ln, cfg.dbTimeout)
	log.Info("taskflow-api started", "version", version, "addr", ln.Addr().String(), "database", pg.Where(cfg.pool),
		"pool_max_conns", cfg.pool.MaxConns, "auth", strings.Join(authModes, ", "),
		"cors_origins", strings.Join(cfg.corsOrigins, ", "), "db_timeout", cfg.dbTimeout.String())
	// Event streams have taken their connections over, so Shutdown would not end them.
	srv.RegisterOnShutdown(events.Close)
	return web.Serve(ctx, srv, ln, cfg.shutdownGrace, log)
}

// newUsers shares the database between users (package fair): each may spend a quarter
// of a second of its time a second, a second at once, in two statements at a time. What
// that allows a user, and costs the others, is in docs/operations.md.
func newUsers() *fair.Users { return fair.New(250*time.Millisecond, time.Second, 2) }

// newServer is the HTTP server with its timeouts.
func newServer(h http.Handler, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler: h,
		// A client gets 5 s to send its headers (so trickling them ties up nothing for
		// long), 30 s for a whole request of at most 64 KiB, and 30 s to take the answer.
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    32 << 10, // a bearer token is a few KiB; the default 1 MiB is far more than needed
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}

// newAuth is the token check configured: HS256, the frontend's JWKS (kept fresh until ctx
// ends), or both.
func newAuth(ctx context.Context, cfg config, log *slog.Logger) (*Authenticator, []string) {
	var keys keyLookup
	modes := []string{}
	if cfg.secret != nil {
		modes = append(modes, "HS256")
	}
	if cfg.jwksURL != "" {
		set := jwks.New(cfg.jwksURL, log)
		go set.KeepFresh(ctx)
		keys = set
		modes = append(modes, "JWKS "+cfg.jwksURL)
	}
	return newAuthenticator(cfg.secret, keys, cfg.issuer, cfg.audience), modes
}

// mintToken signs an HS256 token the way a frontend sharing BETTER_AUTH_SECRET does.
func mintToken(secret []byte, claims jwt.RegisteredClaims) (string, error) {
	return jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(secret)
}

// printDevToken serves "taskflow-api dev-token USER_ID", which make run uses.
func printDevToken(getenv func(string) string, userID string, stdout io.Writer) error {
	if getenv("BETTER_AUTH_SECRET") == "" {
		return errors.New("dev-token signs with BETTER_AUTH_SECRET: set it (at least 32 bytes)")
	}
	cfg, err := loadConfig(getenv)
	if err != nil {
		return err
	}
	now := time.Now()
	token, err := mintToken(cfg.secret, jwt.RegisteredClaims{
		Subject:   userID,
		Issuer:    cfg.issuer,
		Audience:  jwt.ClaimStrings{cfg.audience},
		IssuedAt:  jwt.NewNumericDate(now),
		ExpiresAt: jwt.NewNumericDate(now.Add(24 * time.Hour)),
	})
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(stdout, token)
	return err
}

// statements are the texts of the requests' statements, by name, for `taskflow-api
// statements`: $1 is the user id; the others are those of the Store method that runs it.
func statements() map[string]string {
	return map[string]string{"create": sqlCreateTask, "create-keyed": sqlCreateTaskKeyed, "get": sqlGetTask,
		"update": sqlUpdateTask, "toggle": sqlToggleTask, "toggle-keyed": sqlToggleTaskKeyed, "delete": sqlDeleteTask,
		"list": listSQL[ListQuery{Status: "all", Sort: "created", Desc: true}][0], "changes": feed.SQLRead}
}

// prune forgets expired idempotency keys and tombstones, at start and then every ten
// minutes, off the path of any request.
func prune(ctx context.Context, store *Store, changes *feed.Feed, log *slog.Logger) {
	for {
		keys, err := store.PruneKeys(ctx)
		tombstones, err2 := changes.PruneTombstones(ctx)
		if err = errors.Join(err, err2); err != nil && ctx.Err() == nil {
			log.Warn("pruning failed", "err", err)
		} else if keys+tombstones > 0 {
			log.Info("pruned", "idempotency_keys", keys, "tombstones", tombstones)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(10 * time.Minute):
		}
	}
}

func newLogger(format string, w io.Writer) *slog.Logger {
	if format == "text" {
		return slog.New(slog.NewTextHandler(w, nil))
	}
	return slog.New(slog.NewJSONHandler(w, nil))
}
