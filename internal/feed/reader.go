package feed

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"taskflow/internal/fair"
	"taskflow/internal/pg"
	"taskflow/internal/task"

	"github.com/jackc/pgx/v5"
)

// sqlRead reads one page of the feed for each of many reads at once ($1-$8: each read's
// user, since, upto, place in the batch, incarnation, durable and limit; an array each).
// A read's batch (since, upto] is its cursor's, or (since, now] when it begins one; its
// page is the tasks and tombstones whose transaction since does not show and upto does,
// in (created_at, id) order after its place, found by the (user_id, created_at, id)
// index. A cursor of another incarnation than the database's, or of none, counts from the
// lower of its xmin and its durable id, and begins its batch again (see the package
// comment). Every row carries its read's number, the batch it read, the user's task
// count (what the read cost, for the budget) and the database's state; a read with no
// change is one row of those alone, with task id 0. A read of limit 0 reads nothing: it
// learns where now is.
const sqlRead = `WITH head AS MATERIALIZED (
    SELECT coalesce((SELECT token FROM changes_incarnation), '') AS incarnation, pg_current_snapshot() AS now,
           (SELECT xid FROM changes_horizon) AS horizon, database, xid AS durable FROM changes_durable
    LIMIT 1 -- one row, as the planner must know: its guess for a small table, 1200, made JIT compile this for 0.3 s
), asked AS (
    SELECT * FROM unnest($1::text[], $2::text[]::pg_snapshot[], $3::text[]::pg_snapshot[], $4::timestamptz[], $5::bigint[], $6::text[], $7::text[]::xid8[], $8::int[])
        WITH ORDINALITY AS a(user_id, since, upto, after_created, after_id, incarnation, durable, lim, n)
), at AS MATERIALIZED (
    SELECT a.n, a.user_id, a.lim,
           CASE WHEN same THEN a.since ELSE (least(pg_snapshot_xmin(a.since), a.durable) || ':' || least(pg_snapshot_xmin(a.since), a.durable) || ':')::pg_snapshot END AS since,
           CASE WHEN same THEN coalesce(a.upto, head.now) ELSE head.now END AS upto,
           CASE WHEN same AND a.upto IS NOT NULL THEN a.after_created ELSE '-infinity' END AS after_created,
           CASE WHEN same AND a.upto IS NOT NULL THEN a.after_id ELSE 0 END AS after_id,
           (SELECT tasks FROM task_counts c WHERE c.user_id = a.user_id) AS tasks
    FROM asked a, head, LATERAL (SELECT a.incarnation <> '' AND a.incarnation = head.incarnation AS same) s
)
SELECT coalesce(c.id, 0), coalesce(c.user_id, ''), coalesce(c.title, ''), c.description, coalesce(c.completed, false),
    coalesce(c.created_at, 'epoch'), coalesce(c.updated_at, 'epoch'), coalesce(c.version, 0), coalesce(c.deleted, false), coalesce(c.created, false),
    at.upto::text, coalesce(at.since::text, ''), coalesce(at.tasks, 0), head.now::text, head.horizon::text,
    head.database || '/' || head.incarnation || '/' || head.durable, at.n
FROM head CROSS JOIN at LEFT JOIN LATERAL (
    (SELECT id, user_id, title, description, completed, created_at, updated_at, version, false AS deleted,
            at.since IS NOT NULL AND created_xid IS NOT NULL AND NOT pg_visible_in_snapshot(created_xid, at.since) AS created
     FROM tasks
     WHERE user_id = at.user_id AND (created_at, id) > (at.after_created, at.after_id)
       AND (changed_xid IS NULL OR pg_visible_in_snapshot(changed_xid, at.upto))
       AND (at.since IS NULL OR changed_xid >= pg_snapshot_xmin(at.since) AND NOT pg_visible_in_snapshot(changed_xid, at.since))
     ORDER BY created_at, id LIMIT at.lim)
    UNION ALL
    (SELECT id, user_id, '', NULL, false, created_at, deleted_at, version, true, false
     FROM task_tombstones
     WHERE user_id = at.user_id AND (created_at, id) > (at.after_created, at.after_id)
       AND changed_xid >= pg_snapshot_xmin(at.since) AND pg_visible_in_snapshot(changed_xid, at.upto)
       AND NOT pg_visible_in_snapshot(changed_xid, at.since)
     ORDER BY created_at, id LIMIT at.lim)
    ORDER BY created_at, id LIMIT at.lim
) c ON true
ORDER BY at.n, c.created_at, c.id`

// SQLRead is sqlRead, for taskflow-api statements.
const SQLRead = sqlRead

const (
	// maxReads bounds the reads of one statement.
	maxReads = 64
	// markEvery is how often the reader moves the id known on disk on (Incarnate).
	markEvery = time.Minute
	// readShare is the most of the database's time the reads of one instance take.
	readShare = 0.1
	// maxPause bounds the pause after a read: a slow statement, as PostgreSQL comes back
	// from a restart, must not hold every stream back for many seconds.
	maxPause = time.Second
)

// A Change is one task's latest state in the feed, or its deletion.
type Change struct {
	Task    task.Task // for a deletion, only ID, UserID and Version are set
	Deleted bool
	Created bool   // the task was made after the place read from
	At      Cursor // where the feed goes on after this change
}

// A Page is what one read of the feed found: its changes, in order, where the feed goes
// on after them, and whether more is waiting already.
type Page struct {
	Changes []Change
	Next    Cursor
	More    bool
}

// reader runs the reads of the feed: those waiting when a statement is free go together,
// one per cursor, and only those whose user's budget is not spent.
type reader struct {
	db        *pg.DB
	users     *fair.Users
	known     *atomic.Pointer[string]     // the incarnation the last read saw (Feed.Incarnation)
	incarnate func(context.Context) error // Feed.Incarnate

	mu      sync.Mutex
	waiting map[readKey]*read
	kick    chan struct{} // capacity one: reads are waiting
	marked  time.Time

	statements atomic.Int64 // run so far, for tests
}

type readKey struct {
	userID, from string
	limit        int
}

type read struct {
	key     readKey
	from    Cursor
	waiters int
	done    chan struct{}
	page    Page
	err     error
}

func newReader(db *pg.DB, users *fair.Users, known *atomic.Pointer[string], incarnate func(context.Context) error) *reader {
	r := &reader{db: db, users: users, known: known, incarnate: incarnate, waiting: map[readKey]*read{}, kick: make(chan struct{}, 1)}
	go r.loop()
	return r
}

// read waits for a page of userID's feed after from; limit 0 asks only where now is.
// Reads of one cursor waiting together share one.
func (r *reader) read(ctx context.Context, userID string, from Cursor, limit int) (Page, error) {
	key := readKey{userID: userID, limit: limit}
	if limit > 0 {
		key.from = from.Encode(userID)
	}
	r.mu.Lock()
	rd := r.waiting[key]
	if rd == nil {
		rd = &read{key: key, from: from, done: make(chan struct{})}
		r.waiting[key] = rd
		select {
		case r.kick <- struct{}{}:
		default:
		}
	}
	rd.waiters++
	r.mu.Unlock()
	select {
	case <-rd.done:
		return rd.page, rd.err
	case <-ctx.Done():
		r.mu.Lock()
		if rd.waiters--; rd.waiters == 0 && r.waiting[key] == rd {
			delete(r.waiting, key) // nobody wants it any more
		}
		r.mu.Unlock()
		return Page{}, fmt.Errorf("%w: %w", fair.ErrBusy, ctx.Err())
	}
}

func (r *reader) loop() {
	wait := time.NewTimer(time.Hour)
	for {
		select {
		case <-r.kick:
		case <-wait.C:
		}
		for {
			batch, later := r.take()
			if len(batch) == 0 {
				if later > 0 {
					wait.Reset(later)
				}
				break
			}
			// The feed's reads take at most readShare of the database's time, however
			// many users follow: under load, the reads of many users come together, less
			// often, and a change reaches its streams a little later, while writes keep
			// their speed (docs/performance.md, "Writes while users follow"). A read that
			// failed cost the database nothing to share.
			if took := r.run(batch); took > 0 {
				time.Sleep(min(time.Duration(float64(took)*(1/readShare-1)), maxPause))
			}
		}
	}
}

// take takes the waiting reads that may run now, and says when the next of the others may.
func (r *reader) take() ([]*read, time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var batch []*read
	var later time.Duration
	for key, rd := range r.waiting {
		if len(batch) == maxReads {
			return batch, 0
		}
		if key.userID != "" {
			if wait := r.users.Ready(key.userID); wait > 0 {
				if later == 0 || wait < later {
					later = wait
				}
				continue
			}
		}
		batch = append(batch, rd)
		delete(r.waiting, key)
	}
	return batch, later
}

// run reads a batch and settles its reads. It returns the time the statement took, or 0
// if it failed.
func (r *reader) run(batch []*read) time.Duration {
	pages := make([]pageReader, len(batch))
	for i, rd := range batch {
		pages[i] = pageReader{from: rd.from, limit: rd.key.limit}
	}
	r.statements.Add(1)
	start := time.Now()
	err := r.db.Query(context.Background(), func(rows pgx.Rows) error {
		var (
			c Change
			h pageHead
			n int
		)
		if err := task.Scan(rows, &c.Task, &c.Deleted, &c.Created, &h.upto, &h.since, &h.tasks, &h.now, &h.horizon, &h.incarnation, &n); err != nil {
			return err
		}
		if n == 1 {
			r.known.Store(&h.incarnation)
		}
		pages[n-1].add(c, &h)
		return nil
	}, sqlRead, readArgs(batch)...)
	took := time.Since(start)
	if err != nil {
		if len(batch) > 1 && !errors.Is(err, pg.ErrUnavailable) {
			// A read the database refused must not fail the others it was batched
			// with: each goes again alone.
			took = 0
			for _, rd := range batch {
				took += r.run([]*read{rd})
			}
			return took
		}
		for _, rd := range batch {
			rd.err = err
			close(rd.done)
		}
		return 0
	}
	r.settle(batch, pages, took)
	return took
}

// settle hands each read of a batch read in took its page, and charges each user's
// budget with their share of took, by how many tasks each has (what a read of theirs
// may look through). After a crash it makes the new incarnation.
func (r *reader) settle(batch []*read, pages []pageReader, took time.Duration) {
	var weight int64
	crashed := false
	for i := range pages {
		if batch[i].key.limit > 0 {
			weight += pages[i].tasks + 1
		}
		crashed = crashed || pages[i].began && !pages[i].at.Incarnated()
	}
	for i, rd := range batch {
		rd.page, rd.err = pages[i].finish()
		if rd.key.limit > 0 && weight > 0 {
			r.users.Charge(rd.key.userID, took*time.Duration(pages[i].tasks+1)/time.Duration(weight))
		}
		close(rd.done)
	}
	if crashed || time.Since(r.marked) >= markEvery {
		// The first reader after a crash makes the new incarnation; the pages just
		// read have none, which the next read does not trust.
		if r.incarnate(context.Background()) == nil {
			r.marked = time.Now()
		}
	}
}

// readArgs are sqlRead's arguments for batch: an array of each of a read's parts.
func readArgs(batch []*read) []any {
	var (
		users, since, upto, incarnation, durable []*string
		afterCreated                             []time.Time
		afterID                                  []int64
		limit                                    []int32
	)
	for _, rd := range batch {
		c, user := rd.from, rd.key.userID
		var dur *string
		if c.durable != 0 {
			d := strconv.FormatUint(c.durable, 10)
			dur = &d
		}
		users, since, upto = append(users, &user), append(since, c.since.arg()), append(upto, c.upto.arg())
		afterCreated, afterID = append(afterCreated, c.after.time()), append(afterID, c.after.id)
		incarnation, durable = append(incarnation, &c.incarnation), append(durable, dur)
		lim := int32(0)
		if rd.key.limit > 0 {
			lim = int32(rd.key.limit + 1) // one more says whether more is waiting
		}
		limit = append(limit, lim)
	}
	return []any{users, since, upto, afterCreated, afterID, incarnation, durable, limit}
}

// pageHead is what every row of a read tells of the database and of the read's batch.
type pageHead struct {
	upto, since, now, horizon, incarnation string
	tasks                                  int64
}

// pageReader gathers one read's rows into its page.
type pageReader struct {
	from  Cursor
	limit int
	began bool
	at    Cursor   // the read's own cursor, as the statement read from it
	end   snapshot // the batch's end: upto
	tasks int64
	rows  int
	page  Page
	err   error
}

func (p *pageReader) add(c Change, h *pageHead) {
	if !p.began {
		p.began = true
		p.err = p.begin(h)
	}
	if p.err != nil || c.Task.ID == 0 { // failed, or a read with no change
		return
	}
	if p.rows++; p.rows > p.limit {
		p.page.More = true
		return
	}
	c.At = p.at.within(p.end, placeOf(c.Task.CreatedAt, c.Task.ID))
	p.page.Changes = append(p.page.Changes, c)
}

// begin reads, from the first row, the batch's end and what the statement read from.
func (p *pageReader) begin(h *pageHead) error {
	var (
		at      Cursor
		now     snapshot
		horizon uint64
		errs    [5]error
	)
	p.tasks = h.tasks
	p.end, errs[0] = parseSnapshot(h.upto)
	now, errs[1] = parseSnapshot(h.now)
	horizon, errs[2] = strconv.ParseUint(h.horizon, 10, 64)
	errs[3] = at.setIncarnation(h.incarnation)
	if h.since != "" { // else a full sync
		at.since, errs[4] = parseSnapshot(h.since)
	}
	if err := errors.Join(errs[:]...); err != nil {
		return err
	}
	if p.from.incarnation != "" && p.from.incarnation == at.incarnation { // else read from since only, as the statement did
		at.upto, at.after = p.from.upto, p.from.after
	}
	// A cursor of another database, or one that knew of more on disk than the database
	// now has (a restore, a failover that lost commits), cannot be followed.
	foreign := p.from.database != "" && (p.from.database != at.database || p.from.durable > at.durable)
	p.at, p.page.Next = at, at.from(now)
	if p.limit > 0 && (foreign || expired(at, now, horizon)) {
		return ErrCursorExpired
	}
	return nil
}

// finish says where the feed goes on after the page.
func (p *pageReader) finish() (Page, error) {
	if p.err != nil || p.limit == 0 {
		return p.page, p.err
	}
	n := len(p.page.Changes)
	if p.page.More {
		p.page.Next = p.page.Changes[n-1].At
	} else {
		p.page.Next = p.at.from(p.end)
		if n > 0 {
			p.page.Changes[n-1].At = p.page.Next
		}
	}
	return p.page, nil
}

// expired reports whether a cursor may have missed what the feed no longer keeps: the
// tombstones pruning removed (up to the horizon) must all be older than its since, whose
// transactions, like upto's, must not be newer than the database has made (a cursor from
// another database, or from before a restore).
func expired(c Cursor, now snapshot, horizon uint64) bool {
	return c.since.xmin != 0 && horizon >= c.since.xmin || c.since.xmax > now.xmax || c.upto.xmax > now.xmax
}
