// Package feed is the feed of changes of the contract's "Changes" section: what changed
// in a user's tasks since a cursor, for /changes, for the list's X-Cursor, and for the
// event streams, which this package serves too (stream.go), woken across instances
// (wakeups.go). Its rules, which every piece keeps:
//
//   - The feed lives in the database, written by the transactions that change tasks.
//     Each task row carries changed_xid, the transaction that last changed it, and
//     created_xid, the one that made it; each delete leaves a tombstone (schema.sql). A
//     write stamps its own row and nothing else: no commit waits for another.
//   - A cursor holds a pg_snapshot, read as PgQ reads its event tables: what changed since
//     is exactly the rows whose transaction the cursor's snapshot does not show and the
//     reading statement's does. A transaction that took its id early and commits late is
//     invisible in one snapshot and visible in a later one, so it is never skipped.
//   - A batch (since, upto] is read in pages in the order of the (user_id, created_at, id)
//     index, each from where the last ended: catching up reads each row once, so its
//     cost grows with the user's tasks and changes, never with their square.
//   - Crashes. After one, PostgreSQL may hand out again the ids of transactions whose end
//     it had not written to disk, so a cursor from before must not be trusted to tell
//     them apart. An unlogged row (changes_incarnation) is emptied by crash recovery, and
//     a promoted standby or a new Neon compute does not have it; the first reader after a
//     crash makes a new one (Incarnate). A cursor of another incarnation counts from the
//     lower of its xmin and an id known then to be on disk (changes_durable, which the
//     reader moves on about once a minute, and every start): the changes since may come
//     twice, never not at all. A cursor of another database, or one that knew of more on
//     disk than the database has (a restore), is ErrCursorExpired.
//   - Tombstones are kept for the retention and pruned; a cursor that may have missed a
//     pruned one (older than changes_horizon) is ErrCursorExpired: list again.
//   - Wake-ups are only hints: a stream reads its feed when woken, and every few minutes
//     anyway, so a lost wake-up delays a change and loses nothing.
//   - Reading is shared and fair: the reads waiting at one moment, of any users, run as
//     one statement, once per cursor however many streams hold it, and each user's reads
//     are charged to their database budget (package fair).
package feed

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"taskflow/internal/fair"
	"taskflow/internal/pg"
	"taskflow/internal/task"

	"github.com/jackc/pgx/v5"
)

// Feed reads the feed of changes, and forgets its tombstones after the retention.
type Feed struct {
	db        *pg.DB
	retention time.Duration // CHANGES_RETENTION
	reader    *reader
	known     atomic.Pointer[string] // the incarnation the last read saw, as SQLIncarnation has it
}

// New is the feed of the database db, which keeps tombstones and cursors for retention
// and charges each user's reads to users.
func New(db *pg.DB, retention time.Duration, users *fair.Users) *Feed {
	f := &Feed{db: db, retention: retention}
	f.reader = newReader(db, users, &f.known, f.Incarnate)
	return f
}

// Timeout is the deadline of the feed's statements.
func (f *Feed) Timeout() time.Duration { return f.db.Timeout }

// Read reads userID's feed after from: at most limit changes, each task once, in its
// latest state. A cursor older than the feed keeps is ErrCursorExpired, returned with a
// page whose Next is the present, from which a client that has listed again may go on.
// It waits for the user's budget (package fair) at most until ctx ends.
func (f *Feed) Read(ctx context.Context, userID string, from Cursor, limit int) (Page, error) {
	return f.reader.read(ctx, userID, from, limit)
}

// Now is a cursor at the present: a stream that starts there sends nothing committed
// before it.
func (f *Feed) Now(ctx context.Context) (Cursor, error) {
	page, err := f.reader.read(ctx, "", Cursor{}, 0)
	return page.Next, err
}

// SQLIncarnation is the database's identity, its incarnation for the feed and its id known
// on disk, in a cursor's form ("database/token/xid"); the token is "" just after a crash,
// until Incarnate makes one.
const SQLIncarnation = `(SELECT database || '/' || coalesce((SELECT token FROM changes_incarnation), '') || '/' || xid FROM changes_durable)`

// Incarnation is the incarnation as the feed's last read, or Incarnate, saw it: what a
// list takes before its statement, to make its cursor with the statement's snapshot.
// Taken before, it may be older than the snapshot (a crash in between), which makes a
// cursor that is read with care; never newer.
func (f *Feed) Incarnation(ctx context.Context) (string, error) {
	if known := f.known.Load(); known != nil {
		return *known, nil
	}
	_, err := f.Now(ctx)
	if known := f.known.Load(); known != nil && err == nil {
		return *known, nil
	}
	return "", err
}

// Incarnate gives the database an incarnation if it has none, and moves the id known on
// disk on. The first reader after a crash does it; a cursor made before then has none,
// which the reader never trusts.
func (f *Feed) Incarnate(ctx context.Context) error {
	var known string
	err := f.db.Row(ctx, func(r pgx.Row) error { return r.Scan(&known) }, `WITH made AS (
    INSERT INTO changes_incarnation (token) VALUES (md5(random()::text || clock_timestamp()::text)) ON CONFLICT DO NOTHING RETURNING token
), marked AS (
    UPDATE changes_durable SET xid = greatest(xid, pg_current_xact_id()) RETURNING database, xid
)
SELECT database || '/' || coalesce((SELECT token FROM made), (SELECT token FROM changes_incarnation), '') || '/' || xid FROM marked`)
	if err == nil {
		f.known.Store(&known)
	}
	return err
}

// PruneTombstones forgets the tombstones older than the retention, moving the feed's
// horizon past them, and moves the id known on disk on.
func (f *Feed) PruneTombstones(ctx context.Context) (int64, error) {
	n, err := f.db.Prune(ctx, sqlPruneTombstones, f.retention)
	return n, errors.Join(err, f.Incarnate(ctx))
}

// sqlPruneTombstones deletes at most pg.PruneBatch tombstones older than $1, moves the
// horizon past them, and returns how many it deleted.
var sqlPruneTombstones = fmt.Sprintf(`WITH gone AS (
    DELETE FROM task_tombstones WHERE ctid = ANY (ARRAY(
        SELECT ctid FROM task_tombstones WHERE deleted_at < now() - $1::interval
        LIMIT %d FOR UPDATE SKIP LOCKED))
    RETURNING changed_xid
)
UPDATE changes_horizon SET xid = greatest(xid, (SELECT max(changed_xid) FROM gone))
WHERE EXISTS (SELECT FROM gone) RETURNING (SELECT count(*) FROM gone)`, pg.PruneBatch)

// AppendChange encodes a change as /changes sends it: {"op":"upsert","task":{...}}, or
// {"op":"delete","id":N,"version":V}.
func AppendChange(b []byte, c *Change) []byte {
	if c.Deleted {
		b = strconv.AppendInt(append(b, `{"op":"delete","id":`...), c.Task.ID, 10)
		return append(strconv.AppendInt(append(b, `,"version":`...), c.Task.Version, 10), '}')
	}
	return append(task.AppendJSON(append(b, `{"op":"upsert","task":`...), &c.Task), '}')
}
