// Command taskflow-api serves TaskFlow's task API: the frontend's bearer tokens in,
// one SQL statement per request against PostgreSQL, JSON out. See README.md.
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
	if len(os.Args) == 3 && os.Args[1] == "dev-token" {
		err = printDevToken(os.Getenv, os.Args[2], os.Stdout)
	} else {
		err = run(ctx, os.Getenv, os.Stdout)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "taskflow-api:", err)
		os.Exit(1)
	}
}

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
	store, err := openStore(ctx, poolCfg, cfg.dbTimeout)
	if err != nil {
		return fmt.Errorf("database %s: %w (is it running? check DATABASE_URL)", dbHost, err)
	}
	defer store.Close()

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

	srv := &http.Server{
		Handler: newHandler(log, store, auth, cfg.corsOrigins),
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

func newLogger(format string, w io.Writer) *slog.Logger {
	if format == "text" {
		return slog.New(slog.NewTextHandler(w, nil))
	}
	return slog.New(slog.NewJSONHandler(w, nil))
}
