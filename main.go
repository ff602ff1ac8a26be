// Command taskflow-api serves TaskFlow's task API: the frontend's bearer tokens in, SQL
// against PostgreSQL, JSON and live updates out. See README.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// version is set at build time: go build -ldflags "-X main.version=...".
var version = "dev"

func main() {
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

	poolCfg, err := newPoolConfig(cfg.databaseURL, cfg.dbTimeout)
	if err != nil {
		return err
	}
	dbHost := fmt.Sprintf("%s:%d/%s", poolCfg.ConnConfig.Host, poolCfg.ConnConfig.Port, poolCfg.ConnConfig.Database)
	store, err := openStore(ctx, poolCfg, storeConfig{timeout: cfg.dbTimeout, maxTasks: cfg.maxTasks, log: log})
	if err != nil {
		return fmt.Errorf("database %s: %w (is it running? check DATABASE_URL)", dbHost, err)
	}
	defer store.Close()

	go expireKeys(ctx, store, log)

	var keys keyLookup
	authModes := []string{}
	if cfg.secret != nil {
		authModes = append(authModes, "HS256")
	}
	if cfg.jwksURL != "" {
		jwks := newJWKS(cfg.jwksURL, log)
		go jwks.run(ctx)
		keys = jwks
		authModes = append(authModes, "JWKS "+cfg.jwksURL)
	}
	auth := newAuthenticator(cfg.secret, keys, cfg.issuer, cfg.audience)

	// Parsed as the pool's URL is, so that pool_* settings in it are not sent to
	// PostgreSQL as session parameters, and with the same defaults.
	listenCfg, err := newPoolConfig(cfg.listenURL, cfg.dbTimeout)
	if err != nil {
		return fmt.Errorf("%s: %w", cfg.listenURLVar, err)
	}
	events := newEvents(listenCfg.ConnConfig, cfg.listenURLVar, store, log, cfg.maxUserStreams, cfg.maxStreams)
	go events.Check(ctx)
	go events.Listen(ctx)

	srv := &http.Server{
		Handler: newHandler(log, store, auth, events, cfg.corsOrigins),
		// A client gets 5 s to send its headers (so trickling them ties up nothing for
		// long), 30 s for a whole request of at most 64 KiB, and 30 s to take the answer.
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    32 << 10, // a bearer token is a few KiB; the default 1 MiB is far more than needed
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	ln, err := net.Listen("tcp", ":"+cfg.port)
	if err != nil {
		return fmt.Errorf("listen on port %s: %w (set PORT to a free port)", cfg.port, err)
	}
	log.Info("taskflow-api started",
		"version", version,
		"addr", ln.Addr().String(),
		"database", dbHost,
		"pool_max_conns", poolCfg.MaxConns,
		"auth", strings.Join(authModes, ", "),
		"cors_origins", strings.Join(cfg.corsOrigins, ", "),
		"db_timeout", cfg.dbTimeout.String(),
	)

	// Event streams have taken their connections over, so Shutdown would not end them.
	srv.RegisterOnShutdown(events.Close)
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	select {
	case err := <-serveErr:
		return err
	case <-ctx.Done():
	}

	log.Info("shutting down: finishing requests in flight", "grace", cfg.shutdownGrace.String())
	shutdownCtx, cancel := context.WithTimeout(context.Background(), cfg.shutdownGrace)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		srv.Close()
		return fmt.Errorf("requests still running after SHUTDOWN_GRACE=%s were cut off", cfg.shutdownGrace)
	}
	if err := <-serveErr; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	log.Info("stopped")
	return nil
}

// mintToken signs an HS256 token the way a frontend sharing BETTER_AUTH_SECRET does.
func mintToken(secret []byte, claims jwt.RegisteredClaims) (string, error) {
	return jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(secret)
}

// printDevToken serves "taskflow-api dev-token USER_ID", which make run uses.
func printDevToken(getenv func(string) string, userID string, stdout io.Writer) error {
	cfg, err := loadConfig(getenv)
	if err != nil {
		return err
	}
	if cfg.secret == nil {
		return errors.New("dev-token needs BETTER_AUTH_SECRET")
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

// expireKeys forgets idempotency keys past their 24 hours, at start and then hourly, off
// the path of any request.
func expireKeys(ctx context.Context, store *Store, log *slog.Logger) {
	for {
		if n, err := store.ExpireKeys(ctx); err != nil && ctx.Err() == nil {
			log.Warn("expiring idempotency keys failed", "err", err)
		} else if n > 0 {
			log.Info("idempotency keys expired", "count", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Hour):
		}
	}
}

func newLogger(format string, w io.Writer) *slog.Logger {
	if format == "text" {
		return slog.New(slog.NewTextHandler(w, nil))
	}
	return slog.New(slog.NewJSONHandler(w, nil))
}
