package main

import (
	"context"
	"errors"
	"fmt"
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

// sqlPruneTombstones deletes at most pruneBatch tombstones older than $1, moves the
// horizon past them, and returns how many it deleted.
var sqlPruneTombstones = fmt.Sprintf(`WITH gone AS (
    DELETE FROM task_tombstones WHERE ctid = ANY (ARRAY(
        SELECT ctid FROM task_tombstones WHERE deleted_at < now() - $1::interval
        LIMIT %d FOR UPDATE SKIP LOCKED))
    RETURNING changed_xid
)
UPDATE changes_horizon SET xid = greatest(xid, (SELECT max(changed_xid) FROM gone))
WHERE EXISTS (SELECT FROM gone) RETURNING (SELECT count(*) FROM gone)`, pruneBatch)

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
// id order after $4. upto is $3, or the statement's own snapshot when a batch begins. A
// cursor of another incarnation than the database's, or of none ($6; changes_incarnation
// in schema.sql: there was a crash) counts from the lower of its xmin and the id it knew
// to be on disk ($7), and its batch begins again: above them, ids it saw as ended may
// have been handed out again (some changes may come twice). Every row also carries upto,
// the statement's snapshot, the horizon, the since used and the incarnation; an empty
// page is one row of those alone, with task id 0. The tasks are found by the (user_id,
// created_at, id) index and filtered: an index on changed_xid would make every update
// non-HOT (docs/performance.md).
const sqlChanges = `WITH head AS MATERIALIZED (
    SELECT coalesce((SELECT token FROM changes_incarnation), '') AS incarnation, pg_current_snapshot() AS now,
           (SELECT xid FROM changes_horizon) AS horizon, database, xid AS durable FROM changes_durable
), at AS MATERIALIZED (
    SELECT database, incarnation, durable, now, horizon, CASE WHEN same THEN $2::pg_snapshot
               ELSE (least(pg_snapshot_xmin($2), $7::xid8) || ':' || least(pg_snapshot_xmin($2), $7::xid8) || ':')::pg_snapshot END AS since,
           CASE WHEN same THEN coalesce($3::pg_snapshot, now) ELSE now END AS upto,
           CASE WHEN same THEN $4::bigint ELSE 0 END AS from_id
    FROM head, LATERAL (SELECT $6::text <> '' AND $6::text = incarnation AS same) AS s
), page AS (
    SELECT ` + taskColumns + `, false AS deleted FROM tasks, at
    WHERE user_id = $1 AND id > from_id AND (changed_xid IS NULL OR pg_visible_in_snapshot(changed_xid, upto))
      AND (since IS NULL OR changed_xid >= pg_snapshot_xmin(since) AND NOT pg_visible_in_snapshot(changed_xid, since))
    UNION ALL
    SELECT id, user_id, '', NULL, false, deleted_at, deleted_at, version, true FROM task_tombstones, at
    WHERE user_id = $1 AND id > from_id AND pg_visible_in_snapshot(changed_xid, upto)
      AND changed_xid >= pg_snapshot_xmin(since) AND NOT pg_visible_in_snapshot(changed_xid, since)
    ORDER BY id LIMIT $5
)
SELECT coalesce(id, 0), coalesce(user_id, ''), coalesce(title, ''), description, coalesce(completed, false),
    coalesce(created_at, 'epoch'), coalesce(updated_at, 'epoch'), coalesce(version, 0), coalesce(deleted, false),
    upto::text, now::text, horizon::text, coalesce(since::text, ''), database || '/' || incarnation || '/' || durable
FROM at LEFT JOIN page ON true ORDER BY page.id`

// Changes reads one page of userID's feed after from, at most limit changes, and hands
// each to each as it arrives; it returns where the feed goes on and whether more is
// waiting already. each may end the page early by returning errPageFull. A cursor older
// than the feed keeps is ErrCursorExpired, returned with a cursor at the present, from
// which a client that has listed again may go on.
func (f *Feed) Changes(ctx context.Context, userID string, from Cursor, limit int, each func(*Change) error) (Cursor, bool, error) {
	var durable any // NULL unless set
	if from.durable != 0 {
		durable = strconv.FormatUint(from.durable, 10)
	}
	p := &feedPage{from: from, limit: limit, each: each}
	err := f.query(ctx, p.add, sqlChanges, userID, from.since.arg(), from.upto.arg(), from.after, limit+1, from.incarnation, durable)
	if err == nil && p.from.incarnation == "" {
		err = f.incarnate(ctx)
	}
	switch {
	case errors.Is(err, ErrCursorExpired):
		return p.from.from(p.now), false, err
	case errors.Is(err, errPageFull):
		return p.pending.At, true, nil
	case err != nil:
		return Cursor{}, false, err
	}
	return p.finish()
}

// errPageFull, from the each of Changes, ends the page after the change it was given.
var errPageFull = errors.New("page full")

// A feedPage gathers the rows of sqlChanges as they arrive. Each change is held back until
// the next arrives: only then is it known whether it ends the batch.
type feedPage struct {
	from    Cursor // after the first row, as the statement read it
	limit   int
	each    func(*Change) error
	head    struct{ upto, now, horizon, since, incarnation string } // on every row
	end     snapshot                                                // the batch's: upto
	now     snapshot
	pending *Change
	n       int
}

func (p *feedPage) add(rows pgx.Rows) error {
	c := &Change{}
	h := &p.head
	if err := scanTask(rows, &c.Task, &c.Deleted, &h.upto, &h.now, &h.horizon, &h.since, &h.incarnation); err != nil {
		return err
	}
	if p.n == 0 {
		if err := p.begin(); err != nil {
			return err
		}
	}
	if p.n++; c.Task.ID == 0 || p.n > p.limit { // an empty page, or the one that says more is waiting
		return nil
	}
	if p.pending != nil {
		p.pending.At = p.within(p.pending.Task.ID)
		if err := p.each(p.pending); err != nil {
			return err
		}
	}
	p.pending = c
	return nil
}

// begin reads, from the first row, the batch's end and what the statement read from.
func (p *feedPage) begin() error {
	var (
		at               Cursor
		horizon          uint64
		err1, err2, err3 error
	)
	p.end, err1 = parseSnapshot(p.head.upto)
	p.now, err2 = parseSnapshot(p.head.now)
	horizon, err3 = strconv.ParseUint(p.head.horizon, 10, 64)
	if err := errors.Join(err1, err2, err3); err != nil {
		return err
	}
	if err := at.set(p.head.since, p.head.incarnation); err != nil && p.head.since != "" { // "": a full sync
		return err
	}
	if p.from.incarnation != "" && p.from.incarnation == at.incarnation { // else read from since only, as the statement did
		at.upto, at.after = p.from.upto, p.from.after
	}
	// A cursor of another database, or one that knew of more on disk than the database
	// now has (a restore, a failover that lost commits), cannot be followed.
	foreign := p.from.database != "" && (p.from.database != at.database || p.from.durable > at.durable)
	if p.from = at; foreign || expired(at, p.now, horizon) {
		return ErrCursorExpired
	}
	return nil
}

// within is the cursor after task id, inside the batch.
func (p *feedPage) within(id int64) Cursor {
	c := p.from
	c.upto, c.after = p.end, id
	return c
}

// finish hands on the last change and says where the feed goes on.
func (p *feedPage) finish() (Cursor, bool, error) {
	next := p.from.from(p.end)
	if p.pending == nil {
		return next, false, nil
	}
	more := p.n > p.limit
	if more {
		next = p.within(p.pending.Task.ID)
	}
	p.pending.At = next
	if err := p.each(p.pending); err != nil && !errors.Is(err, errPageFull) {
		return Cursor{}, false, err
	}
	return next, more, nil
}

// expired reports whether a cursor may have missed what the feed no longer keeps: the
// tombstones pruning removed (up to the horizon) must all be older than its since, whose
// transactions, like upto's, must not be newer than the database has made (a cursor from
// another database, or from before a restore).
func expired(c Cursor, now snapshot, horizon uint64) bool {
	return c.since.xmin != 0 && horizon >= c.since.xmin || c.since.xmax > now.xmax || c.upto.xmax > now.xmax
}

// Now is a cursor at the present: a stream that starts there sends nothing committed
// before it.
func (f *Feed) Now(ctx context.Context) (Cursor, error) {
	var text, incarnation string
	err := f.row(ctx, func(r pgx.Row) error { return r.Scan(&text, &incarnation) }, `SELECT pg_current_snapshot()::text, `+sqlIncarnation)
	var c Cursor
	if err == nil {
		err = c.set(text, incarnation)
	}
	if err == nil && c.incarnation == "" {
		err = f.incarnate(ctx)
	}
	return c, err
}
