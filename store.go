package main

import (
	"bytes"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// The errors the store expects are these sentinels (test with errors.Is), each wrapping
// the driver's own error for the log; respond.go maps them to statuses. Any other error
// it returns is unexpected (a SQLSTATE it does not map, a bug) and is a 500.
var (
	ErrNotFound    = errors.New("task not found")
	ErrUnavailable = errors.New("database unavailable")
	ErrRejected    = errors.New("value rejected by the database")
	ErrTaskLimit   = errors.New("the user owns MAX_TASKS_PER_USER tasks")
	// ErrPrecondition: the task exists, but not in a version the write's If-Match names.
	ErrPrecondition = errors.New("the task has changed")
	// ErrKeyReused: an Idempotency-Key came back with another request than its first.
	ErrKeyReused = errors.New("idempotency key reused with another request")
	// ErrOutcomeUnknown: a write failed for want of the database, so it may have been
	// committed or not; outcomeUnknown wraps it around ErrUnavailable.
	ErrOutcomeUnknown = errors.New("the write may or may not have been made")
)

//go:embed schema.sql
var schemaSQL string

// Task is one row of the tasks table. The API's JSON for it is appendTask's; the tags
// read the JSON PostgreSQL makes of a row (replayed answers, notifications).
type Task struct {
	ID          int64     `json:"id"`
	UserID      string    `json:"user_id"`
	Title       string    `json:"title"`
	Description *string   `json:"description"`
	Completed   bool      `json:"completed"`
	CreatedAt   time.Time `json:"created_at"`
	UpdatedAt   time.Time `json:"updated_at"`
	Version     int64     `json:"version"` // new with every write; the task's ETag, not in the API's JSON
}

// MarshalJSON is appendTask, so that encoding/json writes a Task as the API does.
func (t Task) MarshalJSON() ([]byte, error) { return appendTask(nil, &t), nil }

// TaskPatch holds the fields of a PUT; a nil pointer means "keep the stored value".
// SetDescription distinguishes an absent description (keep) from an explicit null (clear).
type TaskPatch struct {
	Title          *string
	SetDescription bool
	Description    *string
	Completed      *bool
}

// ListQuery is a validated list request. Limit 0 means no limit.
type ListQuery struct {
	Status string // "all", "pending" or "completed"
	Sort   string // "created", "updated" or "title"
	Desc   bool
	Limit  int
	Offset int64
}

// ListHead is what the list endpoint must know before its first task.
type ListHead struct {
	Total int64 // tasks matching the filter, ignoring limit and offset
	// Digest is the XOR of a 64-bit hash of each matching task's version. Versions are
	// unique, so any change among the tasks changes it (but for a 2^-64 chance), in
	// whatever order the changes commit; the newest version alone would not.
	Digest int64
}

// IdempotencyKey is a create's or a toggle's Idempotency-Key, with the fingerprint of the
// request that carried it.
type IdempotencyKey struct {
	Key     string
	Request [32]byte // SHA-256 of the method, path and body
}

// args are the key's statement parameters: both NULL without a key.
func (k *IdempotencyKey) args() (key, request any) {
	if k == nil {
		return nil, nil
	}
	return k.Key, k.Request[:]
}

// Store runs the service's SQL. Every statement is scoped by the caller's user id and runs
// under the store's deadline, so a hanging database is ErrUnavailable, not a hung request.
type Store struct {
	pool     *pgxpool.Pool
	timeout  time.Duration
	maxTasks int // MAX_TASKS_PER_USER
	breaker  *breaker
}

// Pool defaults suited to Neon; each applies only when DATABASE_URL does not set it.
const (
	defaultMaxConns          = 15
	defaultMaxConnIdleTime   = 60 * time.Second // well before Neon suspends an idle compute (5 min)
	defaultHealthCheckPeriod = 30 * time.Second
)

// newPoolConfig parses databaseURL with pgx's own parser, so pgx's URL parameters
// (pool_max_conns, default_query_exec_mode, sslmode, ...) keep working, then fills in
// the defaults the URL left open.
func newPoolConfig(databaseURL string, timeout time.Duration) (*pgxpool.Config, error) {
	cfg, err := pgxpool.ParseConfig(databaseURL)
	if err != nil {
		return nil, err
	}
	set := func(param string) bool { return hasConnParam(databaseURL, param) }
	if !set("pool_max_conns") {
		cfg.MaxConns = defaultMaxConns
	}
	if !set("pool_max_conn_idle_time") {
		cfg.MaxConnIdleTime = defaultMaxConnIdleTime
	}
	if !set("pool_health_check_period") {
		cfg.HealthCheckPeriod = defaultHealthCheckPeriod
	}
	if !set("connect_timeout") {
		cfg.ConnConfig.ConnectTimeout = timeout
	}
	cfg.PrepareConn = func(_ context.Context, c *pgx.Conn) (bool, error) { return connAlive(c.PgConn().Conn()), nil }
	if _, ok := cfg.ConnConfig.RuntimeParams["application_name"]; !ok {
		cfg.ConnConfig.RuntimeParams["application_name"] = "taskflow-api"
	}
	return cfg, nil
}

// hasConnParam reports whether a connection string, in URL or keyword/value form, sets
// param (a password or another value that merely contains the name does not count).
func hasConnParam(connString, param string) bool {
	if strings.HasPrefix(connString, "postgres://") || strings.HasPrefix(connString, "postgresql://") {
		u, err := url.Parse(connString)
		return err == nil && u.Query().Has(param)
	}
	for _, field := range strings.Fields(connString) {
		if name, _, ok := strings.Cut(field, "="); ok && strings.TrimSpace(name) == param {
			return true
		}
	}
	return false
}

// storeConfig is what a Store needs besides its pool's.
type storeConfig struct {
	timeout  time.Duration // DB_TIMEOUT
	maxTasks int           // MAX_TASKS_PER_USER
	log      *slog.Logger
}

// newStore makes a store whose pool connects on first use.
func newStore(cfg *pgxpool.Config, sc storeConfig) (*Store, error) {
	b := &breaker{log: sc.log}
	cfg.BeforeConnect, cfg.ConnConfig.Tracer = b.beforeConnect, b
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		return nil, err
	}
	return &Store{pool: pool, timeout: sc.timeout, maxTasks: sc.maxTasks, breaker: b}, nil
}

// openStore makes a store, pings the database and applies schema.sql. It fails rather
// than start a server that could not serve a single request.
func openStore(ctx context.Context, cfg *pgxpool.Config, sc storeConfig) (*Store, error) {
	// Until the store opens, a failure is the start's own error, not an outage to log.
	quiet := sc
	quiet.log = slog.New(slog.DiscardHandler)
	s, err := newStore(cfg, quiet)
	if err != nil {
		return nil, err
	}
	defer s.breaker.setLog(sc.log)
	timeout := sc.timeout
	// Neon may need a few seconds to wake a suspended compute, so the start gets more
	// time than a request does.
	startCtx, cancel := context.WithTimeout(ctx, max(timeout, 15*time.Second))
	defer cancel()
	if err := s.pool.Ping(startCtx); err != nil {
		s.Close()
		return nil, fmt.Errorf("ping: %w", err)
	}
	if _, err := s.pool.Exec(startCtx, schemaSQL); err != nil {
		s.Close()
		return nil, fmt.Errorf("apply schema.sql: %w", err)
	}
	return s, nil
}

func (s *Store) Close() { s.pool.Close() }

// Ping reports whether the database answers within the store's deadline.
func (s *Store) Ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	return translate(ctx, s.pool.Ping(ctx))
}

const taskColumns = `id, user_id, title, description, completed, created_at, updated_at, version`

// The statements behind create, get, update, toggle and delete, one per request; the list
// statements are in listSQL. make bench runs these same texts through pgbench.
//
// A write's If-Match is checked in the statement that writes: its parameter is NULL for
// no condition, or the versions the client names. An Idempotency-Key is remembered with
// the answer by the statement that writes, in idempotency_keys: a key used before makes
// the insert fail, which undoes the whole statement, and Store.replay answers instead.
const (
	// The user's task count is checked in the statement that inserts, on the user's
	// task_counts row (made at 0 for a new user), whose lock makes concurrent creates
	// take turns: each sees the count the one before it left, raised by the tasks_count
	// trigger (schema.sql). At the limit, no row.
	sqlCreateTask = `WITH slot AS (
    INSERT INTO task_counts AS c (user_id, tasks) VALUES ($1, 0)
    ON CONFLICT (user_id) DO UPDATE SET tasks = c.tasks WHERE c.tasks < $4
    RETURNING user_id
), task AS (
    INSERT INTO tasks (user_id, title, description) SELECT user_id, $2, $3 FROM slot
    RETURNING ` + taskColumns + `
), remembered AS (
    INSERT INTO idempotency_keys (user_id, key, request, task)
    SELECT $1, $5, $6, row_to_json(task) FROM task WHERE $5::text IS NOT NULL
)
SELECT ` + taskColumns + ` FROM task`
	sqlGetTask = `SELECT ` + taskColumns + ` FROM tasks WHERE id = $1 AND user_id = $2`
	// One statement, so a concurrent change to a field the patch does not touch is
	// never overwritten with a stale value.
	sqlUpdateTask = `UPDATE tasks SET
    title       = COALESCE($3, title),
    description = CASE WHEN $4 THEN $5 ELSE description END,
    completed   = COALESCE($6, completed),
    updated_at  = now(),
    version     = nextval('task_versions')
WHERE id = $1 AND user_id = $2 AND ($7::bigint[] IS NULL OR version = ANY ($7))
RETURNING ` + taskColumns
	// The row lock taken by UPDATE makes two concurrent toggles apply one after the
	// other, so neither is lost.
	sqlToggleTask = `WITH task AS (
    UPDATE tasks SET completed = NOT completed, updated_at = now(), version = nextval('task_versions')
    WHERE id = $1 AND user_id = $2 AND ($3::bigint[] IS NULL OR version = ANY ($3))
    RETURNING ` + taskColumns + `
), remembered AS (
    INSERT INTO idempotency_keys (user_id, key, request, task)
    SELECT $2, $4, $5, row_to_json(task) FROM task WHERE $4::text IS NOT NULL
)
SELECT ` + taskColumns + ` FROM task`
	sqlDeleteTask = `DELETE FROM tasks WHERE id = $1 AND user_id = $2 AND ($3::bigint[] IS NULL OR version = ANY ($3))
RETURNING true`
)

// scanTask scans taskColumns into t, then any further columns into extra.
func scanTask(row pgx.Row, t *Task, extra ...any) error {
	return row.Scan(append([]any{&t.ID, &t.UserID, &t.Title, &t.Description, &t.Completed, &t.CreatedAt, &t.UpdatedAt, &t.Version}, extra...)...)
}

// versionDigest is ListHead.Digest as an aggregate.
const versionDigest = `bit_xor(hashint8extended(version, 0))`

// statusFilter is the WHERE clause fragment of each list status.
var statusFilter = map[string]string{"all": "", "pending": " AND NOT completed", "completed": " AND completed"}

// listSQL holds one statement per (status, sort, order), built from fixed fragments only,
// never from request input; each gets its own prepared statement and plan.
var listSQL = func() map[ListQuery]string {
	sortBy := map[string]string{"created": "created_at", "updated": "updated_at", "title": "title"}
	m := make(map[ListQuery]string)
	for status, where := range statusFilter {
		for sort, col := range sortBy {
			for _, desc := range []bool{false, true} {
				dir := "ASC"
				if desc {
					dir = "DESC"
				}
				// The window aggregates are computed before LIMIT and OFFSET, so the
				// list's head (see ListHead) comes with the first row of the page.
				m[ListQuery{Status: status, Sort: sort, Desc: desc}] = `SELECT ` + taskColumns + `, count(*) OVER (), ` + versionDigest + ` OVER ()
FROM tasks WHERE user_id = $1` + where + `
ORDER BY ` + col + ` ` + dir + `, id ` + dir + `
LIMIT $2 OFFSET $3`
			}
		}
	}
	return m
}()

// ListTasks reads one page of the user's tasks and hands it on as it arrives: head once,
// before any task, then each for every task in order. An error from head or each stops
// the query and is returned as it is.
//
// Each row must arrive within the store's deadline of asking for it, set on the socket
// as in Store.row; how long the whole list takes depends on how fast head and each pass
// it on, which is the caller's to bound (the HTTP server's write timeout). A client that
// hangs up (ctx) ends the query at the next row; one that stops reading, at the write
// that fails.
func (s *Store) ListTasks(ctx context.Context, userID string, q ListQuery, head func(ListHead) error, each func(*Task) error) error {
	query, ok := listSQL[ListQuery{Status: q.Status, Sort: q.Sort, Desc: q.Desc}]
	if !ok {
		return fmt.Errorf("list query %+v was not validated", q)
	}
	var limit *int
	if q.Limit > 0 {
		limit = &q.Limit
	}
	acquireCtx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	conn, socket, release, err := s.acquire(acquireCtx)
	if err != nil {
		return err
	}
	defer release()
	arm := func() { socket.SetDeadline(time.Now().Add(s.timeout)) } //nolint:errcheck // fails only on a closed socket
	arm()
	rows, err := conn.Query(context.Background(), query, userID, limit, q.Offset)
	if err != nil {
		return translate(context.Background(), err)
	}
	defer func() {
		if ctx.Err() != nil {
			// The client went: end the query now (pgx closes the connection) rather
			// than read the rest of it.
			socket.SetDeadline(time.Now()) //nolint:errcheck // as above
		} else {
			arm() // a list stopped early (a 304) reads what is left, under the deadline
		}
		rows.Close()
	}()
	var (
		t      Task
		h      ListHead
		headed bool
	)
	for {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		arm()
		if !rows.Next() {
			break
		}
		if err := scanTask(rows, &t, &h.Total, &h.Digest); err != nil {
			return translate(context.Background(), err)
		}
		if !headed {
			if err := head(h); err != nil {
				return err
			}
			headed = true
		}
		if err := each(&t); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return translate(context.Background(), err)
	}
	if headed {
		return nil
	}
	// An empty page has no row to carry the head; past the end of a list it is not zero.
	if q.Offset > 0 {
		err := conn.QueryRow(context.Background(), `SELECT count(*), coalesce(`+versionDigest+`, 0) FROM tasks WHERE user_id = $1`+statusFilter[q.Status], userID).Scan(&h.Total, &h.Digest)
		if err != nil {
			return translate(context.Background(), err)
		}
	}
	return head(h)
}

// CreateTask inserts a task owned by userID; the database assigns id and timestamps. A
// user who already owns maxTasks tasks gets ErrTaskLimit. With a key used before, nothing
// is written and the first answer's task comes back, replayed.
func (s *Store) CreateTask(ctx context.Context, userID, title string, description *string, key *IdempotencyKey) (Task, bool, error) {
	k, request := key.args()
	t, err := s.oneTask(ctx, sqlCreateTask, userID, title, description, s.maxTasks, k, request)
	if errors.Is(err, ErrNotFound) {
		err = ErrTaskLimit
	}
	return s.keyed(ctx, userID, key, t, err)
}

// GetTask returns the user's task id; another user's task is ErrNotFound, like a missing one.
func (s *Store) GetTask(ctx context.Context, userID string, id int64) (Task, error) {
	return s.oneTask(ctx, sqlGetTask, id, userID)
}

// UpdateTask applies p, if the task is in one of the versions ifMatch names (nil: any);
// fields p leaves nil keep their stored values.
func (s *Store) UpdateTask(ctx context.Context, userID string, id int64, p TaskPatch, ifMatch []int64) (Task, error) {
	t, err := s.oneTask(ctx, sqlUpdateTask, id, userID, p.Title, p.SetDescription, p.Description, p.Completed, ifMatch)
	return t, outcomeUnknown(s.notFoundOrChanged(ctx, userID, id, ifMatch, err))
}

// ToggleTask flips completed in the database itself, never read-modify-write, if the task
// is in one of the versions ifMatch names (nil: any). With a key used before, nothing is
// written and the first answer's task comes back, replayed.
func (s *Store) ToggleTask(ctx context.Context, userID string, id int64, ifMatch []int64, key *IdempotencyKey) (Task, bool, error) {
	k, request := key.args()
	t, err := s.oneTask(ctx, sqlToggleTask, id, userID, ifMatch, k, request)
	return s.keyed(ctx, userID, key, t, s.notFoundOrChanged(ctx, userID, id, ifMatch, err))
}

// keyed settles a write that may carry an Idempotency-Key. A key used before gets the
// answer it got then, replayed, whenever this attempt wrote nothing: because it found
// the key taken (errKeyUsed), or because the first attempt's own effect now stops it (it
// changed the version an If-Match names, reached the task limit, or the task was deleted
// since). Without a remembered answer the attempt's own outcome stands.
func (s *Store) keyed(ctx context.Context, userID string, key *IdempotencyKey, t Task, err error) (Task, bool, error) {
	wroteNothing := errors.Is(err, errKeyUsed) || errors.Is(err, ErrNotFound) || errors.Is(err, ErrPrecondition) || errors.Is(err, ErrTaskLimit)
	if key == nil || !wroteNothing {
		return t, false, outcomeUnknown(err)
	}
	first, replayErr := s.replay(ctx, userID, key)
	switch {
	case replayErr == nil:
		return first, true, nil
	case !errors.Is(replayErr, ErrNotFound):
		return Task{}, false, outcomeUnknown(replayErr)
	case errors.Is(err, errKeyUsed): // and forgotten since: a new request may go ahead
		return Task{}, false, fmt.Errorf("%w: the key's first answer expired meanwhile", ErrUnavailable)
	}
	return t, false, err
}

// DeleteTask removes the user's task id, if it is in one of the versions ifMatch names
// (nil: any).
func (s *Store) DeleteTask(ctx context.Context, userID string, id int64, ifMatch []int64) error {
	err := s.row(ctx, func(r pgx.Row) error { return r.Scan(nil) }, sqlDeleteTask, id, userID, ifMatch)
	return outcomeUnknown(s.notFoundOrChanged(ctx, userID, id, ifMatch, err))
}

// notFoundOrChanged tells, when a conditional write found no row, whether the task is
// missing (ErrNotFound) or in another version (ErrPrecondition); other errors pass.
func (s *Store) notFoundOrChanged(ctx context.Context, userID string, id int64, ifMatch []int64, err error) error {
	if ifMatch == nil || !errors.Is(err, ErrNotFound) {
		return err
	}
	var exists bool
	if err := s.row(ctx, func(r pgx.Row) error { return r.Scan(&exists) },
		`SELECT EXISTS (SELECT FROM tasks WHERE id = $1 AND user_id = $2)`, id, userID); err != nil {
		return err
	}
	if exists {
		return ErrPrecondition
	}
	return ErrNotFound
}

// replay answers a request whose Idempotency-Key was used before: with the task the first
// answer carried, if the request is the same as the first.
func (s *Store) replay(ctx context.Context, userID string, key *IdempotencyKey) (Task, error) {
	var (
		request []byte
		stored  Task
	)
	err := s.row(ctx, func(r pgx.Row) error { return r.Scan(&request, &stored) },
		`SELECT request, task FROM idempotency_keys WHERE user_id = $1 AND key = $2`, userID, key.Key)
	if err != nil {
		return Task{}, err
	}
	if !bytes.Equal(request, key.Request[:]) {
		return Task{}, ErrKeyReused
	}
	return stored, nil
}

// Notify sends a notification through the pool, as a write's trigger does.
func (s *Store) Notify(ctx context.Context, channel, payload string) error {
	return s.row(ctx, func(r pgx.Row) error { return r.Scan(nil) }, `SELECT pg_notify($1, $2)`, channel, payload)
}

// ExpireKeys forgets the idempotency keys older than 24 hours, under a deadline of its
// own; run calls it every hour.
func (s *Store) ExpireKeys(ctx context.Context) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	tag, err := s.pool.Exec(ctx, `DELETE FROM idempotency_keys WHERE created_at < now() - interval '24 hours'`)
	return tag.RowsAffected(), translate(ctx, err)
}

// outcomeUnknown marks a write that failed for want of the database: the statement may
// have been sent and committed, or not.
func outcomeUnknown(err error) error {
	if errors.Is(err, ErrUnavailable) {
		return fmt.Errorf("%w: %w", ErrOutcomeUnknown, err)
	}
	return err
}

// oneTask runs a statement that returns at most one task.
func (s *Store) oneTask(ctx context.Context, sql string, args ...any) (Task, error) {
	var t Task
	err := s.row(ctx, func(r pgx.Row) error { return scanTask(r, &t) }, sql, args...)
	return t, err
}

// row runs a statement that returns at most one row, and scans it. It runs to completion
// under the store's deadline even if the client hangs up: it takes a millisecond, and
// interrupting it would cost its connection (pgx closes a connection it interrupts).
//
// The deadline is set on the connection's socket, not in a context pgx watches: 8-11%
// more throughput, p99 a fifth to a third lower (docs/performance.md, "Socket deadlines").
// A statement past it fails with a timeout; pgx then closes the connection, and the pool
// replaces it.
func (s *Store) row(ctx context.Context, scan func(pgx.Row) error, sql string, args ...any) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.timeout)
	defer cancel()
	conn, socket, release, err := s.acquire(ctx)
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

// acquire takes a connection from the pool, and its socket, on which the caller sets the
// statement's deadline. release clears the deadline and gives the connection back; but a
// connection pgx closed (after a timeout, say) is cleaning up under a deadline of its
// own, which must stay: it goes back to the pool only to be destroyed.
func (s *Store) acquire(ctx context.Context) (conn *pgxpool.Conn, socket net.Conn, release func(), err error) {
	conn, err = s.pool.Acquire(ctx)
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

// errKeyUsed: the statement found its Idempotency-Key taken, and was undone.
var errKeyUsed = errors.New("idempotency key used before")

// translate turns a driver error into one of the store's sentinels, keeping the cause
// in the chain for the log. ctx is the statement's.
func translate(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return ErrNotFound
	}
	var connectErr *pgconn.ConnectError
	if errors.As(err, &connectErr) { // the breaker has heard of it (TraceConnectEnd)
		return fmt.Errorf("%w: %w: %w", ErrUnavailable, errDatabaseDown, err)
	}
	if errors.Is(err, errDatabaseDown) {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	// After the connect errors, which may wrap a PgError (57P03 while starting up).
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case pgErr.Code == "23505" && pgErr.ConstraintName == "idempotency_keys_pkey":
			return errKeyUsed
		case pgErr.Code == "23514", // check_violation
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
