package main

import (
	"bytes"
	"context"
	_ "embed"
	"errors"
	"fmt"

	"taskflow/internal/pg"
	"taskflow/internal/task"

	"github.com/jackc/pgx/v5"
)

// The tasks' SQL: one statement per create, get, update, toggle and delete, with its
// conditions and Idempotency-Key checked in the statement that writes; the lists. The
// feed of changes reads these rows in internal/feed.

//go:embed schema.sql
var schemaSQL string

// The store's errors (test with errors.Is); the store wraps the driver's error in them for the log.
var (
	ErrNotFound  = errors.New("task not found")
	ErrTaskLimit = errors.New("the user owns MAX_TASKS_PER_USER tasks")
	// ErrPrecondition: the task exists, but not in a version the write's conditions allow.
	ErrPrecondition = errors.New("the task has changed")
	// ErrKeyReused: an Idempotency-Key came back with another request than its first.
	ErrKeyReused = errors.New("idempotency key reused with another request")
	// ErrOutcomeUnknown: a write failed for want of the database, so it may have been
	// committed or not; it wraps pg.ErrUnavailable.
	ErrOutcomeUnknown = errors.New("the write may or may not have been made")
)

// Store reads and writes users' tasks.
type Store struct {
	db       *pg.DB
	maxTasks int // MAX_TASKS_PER_USER
}

// Condition is a write's If-Match and If-None-Match, as versions. Match nil allows any
// version; otherwise the task must be in one of Match, which If-None-Match: * leaves
// empty (no existing task passes it). The task must be in none of NoneMatch.
type Condition struct{ Match, NoneMatch []int64 }

func (c Condition) given() bool { return c.Match != nil || c.NoneMatch != nil }

// none is NoneMatch as version_allowed takes it: never NULL.
func (c Condition) none() []int64 {
	if c.NoneMatch == nil {
		return []int64{}
	}
	return c.NoneMatch
}

// IdempotencyKey is a create's or a toggle's Idempotency-Key, with the fingerprint of the
// request that carried it.
type IdempotencyKey struct {
	Key     string
	Request [32]byte // SHA-256 of the method, canonical path and body
}

// The statements behind create, get, update, toggle and delete, each whole (make bench
// runs these same texts through pgbench; taskflow-api statements prints them). $1 is
// always the caller's user id. Every change of a task sets, besides its fields, a new
// version and the transaction that made it, which places the change in the feed
// (internal/feed); an insert gets both from the columns' defaults. Each returns the task's
// columns in task.Columns' order. version_allowed (schema.sql) is a write's Condition.
const (
	// The user's task count is checked and raised in the statement that inserts, on the
	// user's task_counts row, whose lock makes concurrent creates take turns: each sees
	// the count the one before it left. At the limit, no row. counted tells the trigger
	// that counts other writers' tasks (schema.sql) that this one is counted.
	sqlCreateTask = `WITH slot AS (
    INSERT INTO task_counts AS c (user_id, tasks) VALUES ($1, 1)
    ON CONFLICT (user_id) DO UPDATE SET tasks = c.tasks + 1 WHERE c.tasks < $4
    RETURNING user_id
)
INSERT INTO tasks (user_id, title, description, counted) SELECT user_id, $2, $3, true FROM slot
RETURNING id, user_id, title, description, completed, created_at, updated_at, version`
	// A keyed create also records its answer ($5: the key, $6: the request's
	// fingerprint), in the statement that writes: a key used before makes that insert
	// fail, which undoes the whole statement, and Store.keyed answers instead.
	sqlCreateTaskKeyed = `WITH slot AS (
    INSERT INTO task_counts AS c (user_id, tasks) VALUES ($1, 1)
    ON CONFLICT (user_id) DO UPDATE SET tasks = c.tasks + 1 WHERE c.tasks < $4
    RETURNING user_id
), task AS (
    INSERT INTO tasks (user_id, title, description, counted) SELECT user_id, $2, $3, true FROM slot
    RETURNING id, user_id, title, description, completed, created_at, updated_at, version
), remembered AS (
    INSERT INTO idempotency_keys (user_id, key, request, task) SELECT $1, $5, $6, row_to_json(task) FROM task
)
SELECT id, user_id, title, description, completed, created_at, updated_at, version FROM task`

	sqlGetTask = `SELECT id, user_id, title, description, completed, created_at, updated_at, version FROM tasks
WHERE user_id = $1 AND id = $2`

	// One statement, so a concurrent change to a field the patch does not touch is
	// never overwritten with a stale value. $7 and $8 are the Condition.
	sqlUpdateTask = `UPDATE tasks SET
    title       = COALESCE($3, title),
    description = CASE WHEN $4 THEN $5 ELSE description END,
    completed   = COALESCE($6, completed),
    updated_at = now(), version = nextval('task_versions'), changed_xid = pg_current_xact_id()
WHERE user_id = $1 AND id = $2 AND version_allowed(version, $7, $8)
RETURNING id, user_id, title, description, completed, created_at, updated_at, version`

	// The row lock taken by UPDATE makes two concurrent toggles apply one after the
	// other, so neither is lost. $3 and $4 are the Condition.
	sqlToggleTask = `UPDATE tasks SET completed = NOT completed,
    updated_at = now(), version = nextval('task_versions'), changed_xid = pg_current_xact_id()
WHERE user_id = $1 AND id = $2 AND version_allowed(version, $3, $4)
RETURNING id, user_id, title, description, completed, created_at, updated_at, version`
	// A keyed toggle records its answer as a keyed create does.
	sqlToggleTaskKeyed = `WITH task AS (
    UPDATE tasks SET completed = NOT completed,
        updated_at = now(), version = nextval('task_versions'), changed_xid = pg_current_xact_id()
    WHERE user_id = $1 AND id = $2 AND version_allowed(version, $3, $4)
    RETURNING id, user_id, title, description, completed, created_at, updated_at, version
), remembered AS (
    INSERT INTO idempotency_keys (user_id, key, request, task) SELECT $1, $5, $6, row_to_json(task) FROM task
)
SELECT id, user_id, title, description, completed, created_at, updated_at, version FROM task`

	sqlDeleteTask = `DELETE FROM tasks WHERE user_id = $1 AND id = $2 AND version_allowed(version, $3, $4) RETURNING true`
)

// CreateTask inserts a task owned by userID; the database assigns id and timestamps. A
// user who already owns maxTasks tasks gets ErrTaskLimit. With a key used before, nothing
// is written and the first answer's task comes back, replayed.
func (s *Store) CreateTask(ctx context.Context, userID, title string, description *string, key *IdempotencyKey) (task.Task, bool, error) {
	var t task.Task
	var err error
	if key == nil {
		t, err = s.write(ctx, sqlCreateTask, userID, title, description, s.maxTasks)
	} else {
		t, err = s.write(ctx, sqlCreateTaskKeyed, userID, title, description, s.maxTasks, key.Key, key.Request[:])
	}
	if errors.Is(err, ErrNotFound) {
		err = ErrTaskLimit
	}
	return s.keyed(ctx, userID, key, t, err)
}

// GetTask returns the user's task id; another user's task is ErrNotFound, like a missing one.
func (s *Store) GetTask(ctx context.Context, userID string, id int64) (task.Task, error) {
	var t task.Task
	err := s.db.Row(ctx, func(r pgx.Row) error { return task.Scan(r, &t) }, sqlGetTask, userID, id)
	return t, storeError(err)
}

// UpdateTask applies p if the task meets cond; fields p leaves nil keep their values.
func (s *Store) UpdateTask(ctx context.Context, userID string, id int64, p task.Patch, cond Condition) (task.Task, error) {
	t, err := s.write(ctx, sqlUpdateTask, userID, id, p.Title, p.SetDescription, p.Description, p.Completed, cond.Match, cond.none())
	return t, outcomeUnknown(s.notFoundOrChanged(ctx, userID, id, cond, err))
}

// ToggleTask flips completed in the database itself, never read-modify-write, if the task
// meets cond. With a key used before, nothing is written and the first answer's task
// comes back, replayed.
func (s *Store) ToggleTask(ctx context.Context, userID string, id int64, cond Condition, key *IdempotencyKey) (task.Task, bool, error) {
	var t task.Task
	var err error
	if key == nil {
		t, err = s.write(ctx, sqlToggleTask, userID, id, cond.Match, cond.none())
	} else {
		t, err = s.write(ctx, sqlToggleTaskKeyed, userID, id, cond.Match, cond.none(), key.Key, key.Request[:])
	}
	return s.keyed(ctx, userID, key, t, s.notFoundOrChanged(ctx, userID, id, cond, err))
}

// DeleteTask removes the user's task id if it meets cond.
func (s *Store) DeleteTask(ctx context.Context, userID string, id int64, cond Condition) error {
	err := storeError(s.db.Write(ctx, userID, func(r pgx.Row) error { return r.Scan(nil) }, sqlDeleteTask, userID, id, cond.Match, cond.none()))
	return outcomeUnknown(s.notFoundOrChanged(ctx, userID, id, cond, err))
}

// write runs a statement of userID's ($1) that writes and returns at most one task, in a
// transaction shared with the writes of other requests made meanwhile (pg.DB.Write).
func (s *Store) write(ctx context.Context, sql, userID string, args ...any) (task.Task, error) {
	var t task.Task
	err := s.db.Write(ctx, userID, func(r pgx.Row) error { return task.Scan(r, &t) }, sql, append([]any{userID}, args...)...)
	return t, storeError(err)
}

// keyed settles a write that may carry an Idempotency-Key. A key used before gets the
// answer it got then, replayed, whenever this attempt wrote nothing: because it found
// the key taken (errKeyUsed), or because the first attempt's own effect now stops it (it
// changed the version a condition names, reached the task limit, or the task was deleted
// since). Without a remembered answer the attempt's own outcome stands.
func (s *Store) keyed(ctx context.Context, userID string, key *IdempotencyKey, t task.Task, err error) (task.Task, bool, error) {
	wroteNothing := errors.Is(err, errKeyUsed) || errors.Is(err, ErrNotFound) || errors.Is(err, ErrPrecondition) || errors.Is(err, ErrTaskLimit)
	if key == nil || !wroteNothing {
		return t, false, outcomeUnknown(err)
	}
	first, replayErr := s.Replay(ctx, userID, key)
	switch {
	case replayErr == nil:
		return first, true, nil
	case !errors.Is(replayErr, ErrNotFound):
		return task.Task{}, false, outcomeUnknown(replayErr)
	case errors.Is(err, errKeyUsed): // and forgotten since: a new request may go ahead
		return task.Task{}, false, fmt.Errorf("%w: the key's first answer expired meanwhile", pg.ErrUnavailable)
	}
	return t, false, err
}

// notFoundOrChanged tells, when a conditional write found no row, whether the task is
// missing (ErrNotFound) or fails the condition (ErrPrecondition); other errors pass.
func (s *Store) notFoundOrChanged(ctx context.Context, userID string, id int64, cond Condition, err error) error {
	if !cond.given() || !errors.Is(err, ErrNotFound) {
		return err
	}
	var exists bool
	if err := s.db.Row(ctx, func(r pgx.Row) error { return r.Scan(&exists) },
		`SELECT EXISTS (SELECT FROM tasks WHERE user_id = $1 AND id = $2)`, userID, id); err != nil {
		return err
	}
	if exists {
		return ErrPrecondition
	}
	return ErrNotFound
}

// Replay returns the task a key's first answer carried, if the request is the same as the
// first (else ErrKeyReused); ErrNotFound when the key is not taken.
func (s *Store) Replay(ctx context.Context, userID string, key *IdempotencyKey) (task.Task, error) {
	var (
		request []byte
		first   task.Task
	)
	err := storeError(s.db.Row(ctx, func(r pgx.Row) error { return r.Scan(&request, &first) },
		`SELECT request, task FROM idempotency_keys WHERE user_id = $1 AND key = $2`, userID, key.Key))
	if err != nil {
		return task.Task{}, err
	}
	if !bytes.Equal(request, key.Request[:]) {
		return task.Task{}, ErrKeyReused
	}
	return first, nil
}

// outcomeUnknown marks a write that failed for want of the database: the statement may
// have been sent and committed, or not.
func outcomeUnknown(err error) error {
	if errors.Is(err, pg.ErrUnavailable) {
		return fmt.Errorf("%w: %w", ErrOutcomeUnknown, err)
	}
	return err
}

// storeError is err in the store's terms: no row is a task not found, and a statement
// undone because its Idempotency-Key was taken is errKeyUsed.
func storeError(err error) error {
	switch {
	case errors.Is(err, pg.ErrNoRow):
		return ErrNotFound
	case pg.Violates(err, "idempotency_keys_pkey"):
		return errKeyUsed
	}
	return err
}

// errKeyUsed: the statement found its Idempotency-Key taken, and was undone.
var errKeyUsed = errors.New("idempotency key used before")

// ListQuery is a validated list request. Limit 0 means no limit.
type ListQuery struct {
	Status string // "all", "pending" or "completed"
	Sort   string // "created", "updated" or "title"
	Desc   bool
	Limit  int
	Offset int64
}

// ListHead is what a list's headers say of it.
type ListHead struct {
	Total int64 // tasks matching the filter, ignoring limit and offset
	// Digest is the XOR of a 64-bit hash of each matching task's version. Versions are
	// unique, so any change among the tasks changes it (but for a 2^-64 chance), in
	// whatever order the changes commit; the newest version alone would not.
	Digest   int64
	Snapshot string // the statement's pg_snapshot: the list's place in the feed (feed.CursorAt)
}

// statusFilter is the WHERE clause fragment of each list status.
var statusFilter = map[string]string{"all": "", "pending": " AND NOT completed", "completed": " AND completed"}

// listSQL holds two statements per (status, sort, order), built from fixed fragments
// only, never from request input; each gets its own prepared statement and plan. A whole
// list (no limit, no offset) is the user's rows alone, as a plain SELECT reads them, and
// its head is counted as they arrive; the snapshot's join makes an empty list one row of
// the snapshot alone, task id 0. A page's head counts the rows it skips too: the window
// aggregates are computed before LIMIT and OFFSET, and an empty page is one row of the
// head alone, read in the same snapshot (its aggregate runs only then).
var listSQL = func() map[ListQuery][2]string {
	sortBy := map[string]string{"created": "created_at", "updated": "updated_at", "title": "title"}
	m := make(map[ListQuery][2]string)
	for status, where := range statusFilter {
		for sort, col := range sortBy {
			for dir, desc := range map[string]bool{"ASC": false, "DESC": true} {
				order := ` ORDER BY ` + col + ` ` + dir + `, id ` + dir
				m[ListQuery{Status: status, Sort: sort, Desc: desc}] = [2]string{
					`SELECT coalesce(id, 0), coalesce(user_id::text, ''), coalesce(title::text, ''), description, coalesce(completed, false),
    coalesce(created_at, 'epoch'), coalesce(updated_at, 'epoch'), coalesce(version, 0), snapshot
FROM (SELECT pg_current_snapshot()::text AS snapshot) AS head LEFT JOIN tasks ON user_id = $1` + where + order,
					`WITH page AS (
    SELECT ` + task.Columns + `, count(*) OVER (), bit_xor(hashint8extended(version, 0)) OVER () FROM tasks WHERE user_id = $1` + where + order + `
    LIMIT $2 OFFSET $3
), head AS (SELECT pg_current_snapshot()::text AS snapshot)
SELECT page.*, head.snapshot FROM page, head
UNION ALL
SELECT 0, '', '', NULL, false, 'epoch', 'epoch', 0, total, digest, head.snapshot
FROM (SELECT count(*) AS total, coalesce(bit_xor(hashint8extended(version, 0)), 0) AS digest FROM tasks WHERE user_id = $1` + where + `) AS whole, head
WHERE NOT EXISTS (SELECT FROM page)`}
			}
		}
	}
	return m
}()

// ListTasks reads one page of the user's tasks, handing each to each in order as it
// arrives, and returns the list's head. An error from each stops the query and is
// returned as it is.
func (s *Store) ListTasks(ctx context.Context, userID string, q ListQuery, each func(*task.Task) error) (ListHead, error) {
	statements, ok := listSQL[ListQuery{Status: q.Status, Sort: q.Sort, Desc: q.Desc}]
	if !ok {
		return ListHead{}, fmt.Errorf("list query %+v was not validated", q)
	}
	var (
		t task.Task
		h ListHead
	)
	if q.Limit == 0 && q.Offset == 0 {
		err := s.db.Query(ctx, func(rows pgx.Rows) error {
			if err := task.Scan(rows, &t, &h.Snapshot); err != nil || t.ID == 0 { // an error, or an empty list
				return err
			}
			h.Total, h.Digest = h.Total+1, h.Digest^versionHash(t.Version)
			return each(&t)
		}, statements[0], userID)
		return h, err
	}
	var limit *int
	if q.Limit > 0 {
		limit = &q.Limit
	}
	err := s.db.Query(ctx, func(rows pgx.Rows) error {
		if err := task.Scan(rows, &t, &h.Total, &h.Digest, &h.Snapshot); err != nil || t.ID == 0 { // an error, or an empty page
			return err
		}
		return each(&t)
	}, statements[1], userID, limit, q.Offset)
	return h, err
}

// versionHash mixes a version's bits (SplitMix64's finalizer), so that the XOR of many
// is unlikely to stay the same when some of them change.
func versionHash(v int64) int64 {
	x := uint64(v)
	x = (x ^ x>>30) * 0xbf58476d1ce4e5b9
	x = (x ^ x>>27) * 0x94d049bb133111eb
	return int64(x ^ x>>31)
}

// TasksByID appends to into the user's tasks of ids, in the order of ids; those not
// found (deleted since the ids were read) are left out.
func (s *Store) TasksByID(ctx context.Context, userID string, ids []int64, into *[]task.Task) error {
	byID := make(map[int64]task.Task, len(ids))
	var t task.Task
	err := s.db.Query(ctx, func(rows pgx.Rows) error {
		if err := task.Scan(rows, &t); err != nil {
			return err
		}
		byID[t.ID] = t
		return nil
	}, `SELECT `+task.Columns+` FROM tasks WHERE user_id = $1 AND id = ANY ($2)`, userID, ids)
	for _, id := range ids {
		if t, ok := byID[id]; ok {
			*into = append(*into, t)
		}
	}
	return err
}

// PruneKeys forgets the idempotency keys older than 24 hours.
func (s *Store) PruneKeys(ctx context.Context) (int64, error) {
	return s.db.Prune(ctx, sqlPruneKeys)
}

// sqlPruneKeys deletes at most pg.PruneBatch keys and returns how many it did.
var sqlPruneKeys = fmt.Sprintf(`WITH gone AS (
    DELETE FROM idempotency_keys WHERE ctid = ANY (ARRAY(
        SELECT ctid FROM idempotency_keys WHERE created_at < now() - interval '24 hours'
        LIMIT %d FOR UPDATE SKIP LOCKED))
    RETURNING 1
) SELECT count(*) FROM gone`, pg.PruneBatch)
