package main

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
)

// The feed of changes, as the contract's "Changes" section has it, read the way PgQ reads
// its event tables: by transaction snapshot. Every task row carries the id of the
// transaction that last changed it (changed_xid), every delete leaves a tombstone
// (schema.sql), and a cursor holds a pg_snapshot: "everything this snapshot shows was
// delivered". What changed since is then exactly the rows whose transaction the cursor's
// snapshot does not show and the reading statement's snapshot does. A transaction that
// took its id early and commits late is not skipped, however the ids interleave: it is
// invisible in one snapshot and visible in a later one. Nothing is serialized and the
// write path only stamps a column (docs/performance.md, "The feed of changes").
//
// A batch (since, upto] can be longer than a page: it is then read in task id order, and
// the cursor also holds upto and the last id delivered.

// Feed reads the feed of changes, and forgets its tombstones after retention.
type Feed struct {
	*db
	retention time.Duration // CHANGES_RETENTION
}

// PruneTombstones forgets the tombstones older than the retention, moving the feed's
// horizon past them.
func (f *Feed) PruneTombstones(ctx context.Context) (int64, error) {
	return f.pruneBatches(ctx, sqlPruneTombstones, f.retention)
}

// A Change is one task's latest state in the feed, or its deletion.
type Change struct {
	Task    Task // for a deletion, only ID, UserID and Version are set
	Deleted bool
	At      Cursor // where the feed goes on after this change
}

// Created reports whether the task has not changed since it was made.
func (c *Change) Created() bool { return !c.Deleted && c.Task.CreatedAt.Equal(c.Task.UpdatedAt) }

// sqlChanges reads one page of a batch: the tasks and tombstones whose transaction $2
// (since; NULL for a full sync, which skips tombstones) does not show and upto does, in
// id order after $4. upto is $3, or the statement's own snapshot when a batch begins.
// Every row also carries upto, the statement's snapshot and the horizon; an empty page is
// one row of those alone, with task id 0. The tasks are found by the (user_id, created_at, id) index and
// filtered: an index on changed_xid would make every update non-HOT (docs/performance.md).
const sqlChanges = `WITH head AS MATERIALIZED (
    SELECT coalesce($3::pg_snapshot, pg_current_snapshot()) AS upto, pg_current_snapshot() AS now,
           (SELECT xid FROM changes_horizon) AS horizon
), page AS (
    SELECT ` + taskColumns + `, false AS deleted FROM tasks, head
    WHERE user_id = $1 AND id > $4 AND (changed_xid IS NULL OR pg_visible_in_snapshot(changed_xid, upto))
      AND ($2::pg_snapshot IS NULL OR changed_xid >= pg_snapshot_xmin($2) AND NOT pg_visible_in_snapshot(changed_xid, $2))
    UNION ALL
    SELECT id, user_id, '', NULL, false, deleted_at, deleted_at, version, true FROM task_tombstones, head
    WHERE user_id = $1 AND id > $4 AND pg_visible_in_snapshot(changed_xid, upto)
      AND changed_xid >= pg_snapshot_xmin($2) AND NOT pg_visible_in_snapshot(changed_xid, $2)
    ORDER BY id LIMIT $5
)
SELECT coalesce(id, 0), coalesce(user_id, ''), coalesce(title, ''), description, coalesce(completed, false),
    coalesce(created_at, 'epoch'), coalesce(updated_at, 'epoch'), coalesce(version, 0), coalesce(deleted, false),
    upto::text, now::text, horizon::text
FROM head LEFT JOIN page ON true ORDER BY page.id`

// Changes reads one page of userID's feed after from, at most limit changes, and hands
// each to each as it arrives; it returns where the feed goes on and whether more is
// waiting already. A cursor older than the feed keeps is ErrCursorExpired, returned with
// a cursor at the present, from which a client that has listed again may go on.
func (s *Feed) Changes(ctx context.Context, userID string, from Cursor, limit int, each func(*Change) error) (Cursor, bool, error) {
	var since, upto any // NULL unless set
	if from.since.xmin != 0 {
		since = from.since.String()
	}
	if from.upto.xmin != 0 {
		upto = from.upto.String()
	}
	var (
		head    struct{ upto, now, horizon string }
		end     snapshot // the batch's: upto
		pending *Change  // held back until the next arrives: only then is it known whether it ends the batch
		n       int
	)
	mid := func(id int64) Cursor { return Cursor{since: from.since, upto: end, after: id} }
	err := s.query(ctx, func(rows pgx.Rows) error {
		c := &Change{}
		if err := scanTask(rows, &c.Task, &c.Deleted, &head.upto, &head.now, &head.horizon); err != nil {
			return err
		}
		if n == 0 {
			var err error
			if end, err = parseSnapshot(head.upto); err != nil {
				return err
			}
			if expired(from, head.now, head.horizon) {
				return ErrCursorExpired
			}
		}
		if n++; c.Task.ID == 0 || n > limit { // an empty page, or the one that says more is waiting
			return nil
		}
		if pending != nil {
			pending.At = mid(pending.Task.ID)
			if err := each(pending); err != nil {
				return err
			}
		}
		pending = c
		return nil
	}, sqlChanges, userID, since, upto, from.after, limit+1)
	if errors.Is(err, ErrCursorExpired) {
		now, _ := parseSnapshot(head.now) // parsed once already in expired
		return Cursor{since: now}, false, err
	}
	if err != nil {
		return Cursor{}, false, err
	}
	next, more := Cursor{since: end}, n > limit && pending != nil
	if pending != nil {
		if more {
			next = mid(pending.Task.ID)
		}
		pending.At = next
		if err := each(pending); err != nil {
			return Cursor{}, false, err
		}
	}
	return next, more, nil
}

// expired reports whether a cursor may have missed what the feed no longer keeps: the
// tombstones pruning removed (up to the horizon) must all be older than its since, whose
// transactions, like upto's, must not be newer than the database has made (a cursor from
// another database, or from before a restore).
func expired(c Cursor, nowText, horizonText string) bool {
	now, err1 := parseSnapshot(nowText)
	horizon, err2 := strconv.ParseUint(horizonText, 10, 64)
	if err1 != nil || err2 != nil {
		return true
	}
	return c.since.xmin != 0 && horizon >= c.since.xmin || c.since.xmax > now.xmax || c.upto.xmax > now.xmax
}

// Now is a cursor at the present: a stream that starts there sends nothing committed
// before it.
func (s *Feed) Now(ctx context.Context) (Cursor, error) {
	var text string
	err := s.row(ctx, func(r pgx.Row) error { return r.Scan(&text) }, `SELECT pg_current_snapshot()::text`)
	if err != nil {
		return Cursor{}, err
	}
	var c Cursor
	return c, c.set(text)
}
