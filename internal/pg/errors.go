package pg

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// The errors statements fail with (test with errors.Is).
var (
	ErrNoRow       = errors.New("no row")
	ErrUnavailable = errors.New("database unavailable")
	ErrRejected    = errors.New("value rejected by the database")
	// ErrDown marks an ErrUnavailable for which no connection could be made: the breaker
	// refused, or the attempt failed. The breaker logs those, counted.
	ErrDown = errors.New("database unreachable")
)

// Where names the database cfg points at, host:port/database, without credentials.
func Where(cfg *pgxpool.Config) string {
	cc := cfg.ConnConfig
	return fmt.Sprintf("%s:%d/%s", cc.Host, cc.Port, cc.Database)
}

// openError says why the database could not be opened, and what to check.
func openError(cfg *pgxpool.Config, err error) error {
	var pgErr *pgconn.PgError
	switch {
	case errors.As(err, &pgErr) && pgErr.Code == "3D000": // invalid_catalog_name
		return fmt.Errorf("database %s does not exist: create it", Where(cfg))
	case errors.As(err, &pgErr):
		return fmt.Errorf("database %s: %w", Where(cfg), err)
	}
	return fmt.Errorf("database %s: %w (is PostgreSQL running there?)", Where(cfg), err)
}

// Violates reports whether err is a unique violation of the named constraint.
func Violates(err error, constraint string) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "23505" && pgErr.ConstraintName == constraint
}

// translate turns a driver error into one of this package's, keeping the cause in the
// chain for the log; a SQLSTATE it does not map, or a bug, stays as it is (a 500). ctx
// is the statement's.
func translate(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return ErrNoRow
	}
	var connectErr *pgconn.ConnectError
	if errors.As(err, &connectErr) { // the breaker has heard of it (TraceConnectEnd)
		return fmt.Errorf("%w: %w: %w", ErrUnavailable, ErrDown, err)
	}
	if errors.Is(err, ErrDown) {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	// After the connect errors, which may wrap a PgError (57P03 while starting up).
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case pgErr.Code == "23514", // check_violation, also a domain's CHECK
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
