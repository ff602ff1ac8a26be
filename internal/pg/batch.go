package pg

import (
	"context"
	"errors"
	"sync"

	"github.com/jackc/pgx/v5"
)

// Write runs a statement that writes and returns at most one row, as Row does, but in
// one transaction with the writes of other requests made meanwhile: a batch is sent in
// one round trip (a pipeline with one Sync) and committed once. Committing is most of
// what a small write costs PostgreSQL, so under load many writes cost little more than
// one (docs/performance.md, "Writes share a commit"). With no other write in flight, a
// write is sent at once, alone.
//
// Each write keeps its own outcome. A statement that fails undoes its whole batch, so
// then it is run again alone, to get its own error, and the others again without it; a
// batch that fails for want of the database fails each of its writes so (the outcome
// unknown, as for a single statement). Statements must therefore be safe to run again
// after being undone, which any single statement is.
func (d *DB) Write(ctx context.Context, scan func(pgx.Row) error, sql string, args ...any) error {
	w := &write{sql: sql, args: args, scan: scan, done: make(chan struct{})}
	if !d.writes.add(w) {
		return d.Row(ctx, scan, sql, args...) // shutting down: nothing to share with
	}
	<-w.done
	return w.err
}

// maxBatch bounds a batch, and so how long it holds the row locks it takes.
const maxBatch = 64

type write struct {
	sql  string
	args []any
	scan func(pgx.Row) error
	err  error
	done chan struct{}
}

// batcher sends the writes queued while the previous batch was in flight: one batch at a
// time, so that the batches of this instance never wait on each other's row locks.
type batcher struct {
	db   *DB
	mu   sync.Mutex
	next []*write
	shut bool
	kick chan struct{} // capacity one: writes are waiting
	quit chan struct{} // closed when the loop has sent its last batch
}

func newBatcher(d *DB) *batcher {
	b := &batcher{db: d, kick: make(chan struct{}, 1), quit: make(chan struct{})}
	go b.loop()
	return b
}

func (b *batcher) add(w *write) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.shut {
		return false
	}
	b.next = append(b.next, w)
	select {
	case b.kick <- struct{}{}:
	default:
	}
	return true
}

// close sends what is queued, then stops the loop.
func (b *batcher) close() {
	b.mu.Lock()
	if !b.shut {
		b.shut = true
		close(b.kick)
	}
	b.mu.Unlock()
	<-b.quit
}

func (b *batcher) loop() {
	defer close(b.quit)
	for range b.kick {
		for {
			b.mu.Lock()
			batch := b.next[:min(len(b.next), maxBatch)]
			b.next = b.next[len(batch):]
			b.mu.Unlock()
			if len(batch) == 0 {
				break
			}
			b.db.sendWrites(batch)
		}
	}
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
// connection was lost and the outcome is unknown, lost says why.
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
	for i, w := range batch {
		// After a failed statement PostgreSQL skips the rest, and each scan gets the
		// same error.
		if w.err = translate(ctx, w.scan(results.QueryRow())); w.err != nil && !errors.Is(w.err, ErrNoRow) && failed < 0 {
			failed, err = i, w.err
		}
	}
	if closeErr := translate(ctx, results.Close()); err == nil && closeErr != nil {
		failed, err = 0, closeErr // the commit itself failed
	}
	if err != nil && conn.Conn().IsClosed() {
		return -1, err
	}
	return failed, nil
}
