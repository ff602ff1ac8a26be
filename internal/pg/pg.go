// Package pg runs the service's statements on PostgreSQL. It knows nothing of tasks; its
// rules hold for every statement:
//
//   - Every statement runs under a deadline (DB.Timeout), set on the connection's socket
//     rather than in a context pgx watches (docs/performance.md, "Socket deadlines"). Past
//     it the statement fails, pgx closes the connection and the pool replaces it: a
//     hanging database is ErrUnavailable, never a hung request.
//   - A statement that cannot run for want of the database is ErrUnavailable. During an
//     outage the breaker (breaker.go) lets one connection attempt through at a time and
//     refuses the rest at once, so requests fail in microseconds and heal within half a
//     second of the database's return.
//   - A pooled connection the server has closed is never used: a write sent on it could
//     not be retried (peek_linux.go).
//   - Writes of concurrent requests share one transaction and one commit (Write,
//     batch.go); each still gets its own outcome, as if it had run alone.
//   - Errors keep the driver's cause in their chain for the log; a client is told only
//     the class (ErrNoRow, ErrUnavailable, ErrRejected).
package pg

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"syscall"
	"time"

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

// DB runs statements, each under the deadline Timeout.
type DB struct {
	pool    *pgxpool.Pool
	Timeout time.Duration
	breaker *breaker
	writes  *batcher
}

// New makes a DB whose pool connects on first use.
func New(cfg *pgxpool.Config, timeout time.Duration, log *slog.Logger) (*DB, error) {
	b := &breaker{log: log}
	cfg.BeforeConnect, cfg.ConnConfig.Tracer = b.beforeConnect, b
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		return nil, err
	}
	d := &DB{pool: pool, Timeout: timeout, breaker: b}
	d.writes = newBatcher(d)
	return d, nil
}

// Open makes a DB, pings the database and applies schema. It fails rather than start a
// server that could not serve a single request.
func Open(ctx context.Context, cfg *pgxpool.Config, timeout time.Duration, log *slog.Logger, schema string) (*DB, error) {
	// Until it opens, a failure is the start's own error, not an outage to log.
	d, err := New(cfg, timeout, slog.New(slog.DiscardHandler))
	if err != nil {
		return nil, err
	}
	defer d.SetLogger(log)
	// Neon may need a few seconds to wake a suspended compute, so the start gets more
	// time than a request does.
	startCtx, cancel := context.WithTimeout(ctx, max(timeout, 15*time.Second))
	defer cancel()
	if err := d.pool.Ping(startCtx); err != nil {
		d.Close()
		return nil, fmt.Errorf("ping: %w", err)
	}
	if _, err := d.pool.Exec(startCtx, schema); err != nil {
		d.Close()
		return nil, fmt.Errorf("apply the schema: %w", err)
	}
	return d, nil
}

// Close ends the pool, once the writes in flight are done.
func (d *DB) Close() {
	d.writes.close()
	d.pool.Close()
}

// Pool is the pool itself, for what needs pgx directly: tests, and a connection of its
// own for LISTEN.
func (d *DB) Pool() *pgxpool.Pool { return d.pool }

// SetLogger sets where the breaker tells of outages.
func (d *DB) SetLogger(log *slog.Logger) { d.breaker.setLog(log) }

// Ping reports whether the database answers within the deadline.
func (d *DB) Ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, d.Timeout)
	defer cancel()
	return translate(ctx, d.pool.Ping(ctx))
}

// Row runs a statement that returns at most one row, and scans it (ErrNoRow when there
// is none). It runs to completion under its deadline even if the client hangs up: it
// takes a millisecond, and interrupting it would cost its connection.
func (d *DB) Row(ctx context.Context, scan func(pgx.Row) error, sql string, args ...any) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d.Timeout)
	defer cancel()
	conn, socket, release, err := d.acquire(ctx)
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

// Query runs a statement and hands each row to scan as it arrives; an error from scan
// stops the query and is returned as it is. Each row must arrive within the deadline of
// asking for it. A client that hangs up (ctx) ends the query at the next row.
func (d *DB) Query(ctx context.Context, scan func(pgx.Rows) error, sql string, args ...any) error {
	acquireCtx, cancel := context.WithTimeout(ctx, d.Timeout)
	defer cancel()
	conn, socket, release, err := d.acquire(acquireCtx)
	if err != nil {
		return err
	}
	defer release()
	arm := func() { socket.SetDeadline(time.Now().Add(d.Timeout)) } //nolint:errcheck // fails only on a closed socket
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
			arm() // a query stopped early reads what is left, under the deadline
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
func (d *DB) acquire(ctx context.Context) (conn *pgxpool.Conn, socket net.Conn, release func(), err error) {
	conn, err = d.pool.Acquire(ctx)
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

// PruneBatch is how many rows a pruning statement deletes at most.
const PruneBatch = 5000

// Prune runs a pruning statement, which deletes at most PruneBatch rows and returns how
// many, until it prunes less than a whole batch, each a short transaction, under a
// deadline of its own: it holds no lock for long, and two instances pruning at once skip
// each other's rows (FOR UPDATE SKIP LOCKED in the statement).
func (d *DB) Prune(ctx context.Context, sql string, args ...any) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var total int64
	for ctx.Err() == nil {
		var n int64
		err := d.Row(ctx, func(r pgx.Row) error { return r.Scan(&n) }, sql, args...)
		if errors.Is(err, ErrNoRow) { // a statement may have no row when it pruned none
			err = nil
		}
		if total += n; err != nil || n < PruneBatch {
			return total, err
		}
	}
	return total, translate(ctx, ctx.Err())
}
