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
//   - Writes of concurrent requests share one transaction and one commit (Write); each
//     still gets its own outcome, as if it had run alone.
//   - Errors keep the driver's cause in their chain for the log; a client is told only
//     the class (ErrNoRow, ErrUnavailable, ErrRejected).
package pg

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
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
	d.writes = newBatcher(d.sendWrites)
	return d, nil
}

// Open makes a DB, pings the database and applies schema. It fails rather than start a
// server that could not serve a single request.
func Open(ctx context.Context, cfg *pgxpool.Config, timeout time.Duration, log *slog.Logger, schema string) (*DB, error) {
	// Until it opens, a failure is the start's own error, not an outage to log.
	d, err := New(cfg, timeout, slog.New(slog.DiscardHandler))
	if err != nil {
		return nil, openError(cfg, err)
	}
	defer d.SetLogger(log)
	// Neon may need a few seconds to wake a suspended compute, so the start gets more
	// time than a request does.
	startCtx, cancel := context.WithTimeout(ctx, max(timeout, 15*time.Second))
	defer cancel()
	if err := d.pool.Ping(startCtx); err != nil {
		d.Close()
		return nil, openError(cfg, err)
	}
	if _, err := d.pool.Exec(startCtx, schema); err != nil {
		d.Close()
		return nil, openError(cfg, fmt.Errorf("apply the schema: %w", err))
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

// Write runs a statement that writes and returns at most one row, as Row does, but in
// one transaction with the writes of other requests made meanwhile: a batch is sent in
// one round trip (a pipeline with one Sync) and committed once. Committing is most of
// what a small write costs PostgreSQL, so under load many writes cost little more than
// one (docs/performance.md, "Writes share a commit"). With no other write in flight, a
// write is sent at once, alone.
//
// The writes of one key (a user) are never in two batches at once, so they commit in
// order, and the batches in flight never wait on each other's row locks.
//
// Each write keeps its own outcome. A statement that fails undoes its whole batch, so
// then it is run again alone, to get its own error, and the others again without it; a
// batch that fails for want of the database fails each of its writes so (the outcome
// unknown, as for a single statement). Statements must therefore be safe to run again
// after being undone, which any single statement is.
//
// A write waits to be sent at most Timeout, as a statement does for its answer: behind a
// write of its key that hangs, say. Past it, it is not sent, and fails as unavailable.
func (d *DB) Write(ctx context.Context, key string, scan func(pgx.Row) error, sql string, args ...any) error {
	w := &write{key: key, sql: sql, args: args, scan: scan, done: make(chan struct{})}
	if !d.writes.add(w) {
		return d.Row(ctx, scan, sql, args...) // shutting down: nothing to share with
	}
	queued := time.NewTimer(d.Timeout)
	defer queued.Stop()
	select {
	case <-w.done:
	case <-queued.C:
		if d.writes.withdraw(w) {
			return fmt.Errorf("%w: the write waited %s to be sent", ErrUnavailable, d.Timeout)
		}
		<-w.done // sent meanwhile: its outcome comes within its batch's deadline
	}
	return w.err
}

// sendWrites runs a batch and settles each of its writes.
func (d *DB) sendWrites(batch []*write) {
	if len(batch) == 1 {
		w := batch[0]
		w.err = d.Row(context.Background(), w.scan, w.sql, w.args...)
		close(w.done)
		return
	}
	failed, lost := d.runBatch(batch)
	switch {
	case lost != nil: // the database, not a statement: every write's outcome is unknown
		for _, w := range batch {
			w.err = lost
			close(w.done)
		}
	case failed < 0:
		for _, w := range batch {
			close(w.done)
		}
	default:
		d.sendWrites(batch[failed : failed+1])
		d.sendWrites(append(batch[:failed:failed], batch[failed+1:]...))
	}
}

// runBatch runs the writes in one transaction. When it committed, failed is -1 and each
// write's err is its own (nil or ErrNoRow). Otherwise nothing was committed: failed is
// the statement that failed (a deadlock's, say), or 0 when the commit did; or, when the
// connection was lost or a row could not be read, and the outcome is unknown, lost says
// why.
func (d *DB) runBatch(batch []*write) (failed int, lost error) {
	ctx, cancel := context.WithTimeout(context.Background(), d.Timeout)
	defer cancel()
	conn, socket, release, err := d.acquire(ctx)
	if err != nil {
		return -1, err
	}
	defer release()
	deadline, _ := ctx.Deadline()
	if err := socket.SetDeadline(deadline); err != nil {
		return -1, translate(ctx, err)
	}
	queued := &pgx.Batch{}
	for _, w := range batch {
		queued.Queue(w.sql, w.args...)
	}
	results := conn.SendBatch(context.Background(), queued)
	failed = -1
	var why error // of the failed statement
	for i, w := range batch {
		raw := w.scan(results.QueryRow())
		w.err = translate(ctx, raw)
		var refused *pgconn.PgError
		switch {
		case raw == nil || errors.Is(raw, pgx.ErrNoRows) || failed >= 0 || lost != nil:
		case errors.As(raw, &refused):
			failed, why = i, w.err // PostgreSQL skips the statements after it, and undoes the batch
		default:
			// The connection was lost, or a row could not be read, after which pgx
			// reads no further result: whether the batch committed is unknown.
			lost = w.err
			if !errors.Is(lost, ErrUnavailable) {
				lost = fmt.Errorf("%w: a row of its batch could not be read: %w", ErrUnavailable, w.err)
			}
		}
	}
	var refused *pgconn.PgError
	switch closeErr := results.Close(); {
	case failed >= 0 || lost != nil || closeErr == nil:
	case errors.As(closeErr, &refused):
		failed, why = 0, translate(ctx, closeErr) // the commit itself failed
	default:
		lost = translate(ctx, closeErr)
	}
	if failed >= 0 && conn.Conn().IsClosed() {
		return -1, why // the connection went with it (a server shutting down): unknown
	}
	return failed, lost
}
