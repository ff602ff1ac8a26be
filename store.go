package main

import (
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

// The store's errors are these sentinels (test with errors.Is), each wrapping the
// driver's own error for the log. respond.go maps them to statuses.
var (
	ErrNotFound    = errors.New("task not found")
	ErrUnavailable = errors.New("database unavailable")
	ErrRejected    = errors.New("value rejected by the database")
	ErrTaskLimit   = errors.New("the user owns MAX_TASKS_PER_USER tasks")
)

//go:embed schema.sql
var schemaSQL string

// Task is one row of the tasks table, and the API's JSON for it.
type Task struct {
	ID          int64     `json:"id"`
	UserID      string    `json:"user_id"`
	Title       string    `json:"title"`
	Description *string   `json:"description"`
	Completed   bool      `json:"completed"`
	CreatedAt   Timestamp `json:"created_at"`
	UpdatedAt   Timestamp `json:"updated_at"`
}

// Timestamp is a time as the API writes it: RFC 3339 in UTC with exactly six fractional
// digits (PostgreSQL's precision), so that clients may compare timestamps as strings.
type Timestamp struct{ time.Time }

func (t Timestamp) MarshalJSON() ([]byte, error) {
	return t.UTC().AppendFormat([]byte{'"'}, `2006-01-02T15:04:05.000000Z"`), nil
}

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
	b := &breaker{log: sc.log, connectTimeout: cfg.ConnConfig.ConnectTimeout}
	cfg.BeforeConnect, cfg.AfterConnect = b.beforeConnect, b.afterConnect
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		return nil, err
	}
	return &Store{pool: pool, timeout: sc.timeout, maxTasks: sc.maxTasks, breaker: b}, nil
}

// openStore makes a store, pings the database and applies schema.sql. It fails rather
// than start a server that could not serve a single request.
func openStore(ctx context.Context, cfg *pgxpool.Config, sc storeConfig) (*Store, error) {
	timeout := sc.timeout
	s, err := newStore(cfg, sc)
	if err != nil {
		return nil, err
	}
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
	ctx, cancel := s.statement(ctx)
	defer cancel()
	return s.translate(ctx, s.pool.Ping(ctx))
}

const taskColumns = `id, user_id, title, description, completed, created_at, updated_at`

// The statements behind create, get, update, toggle and delete, one per request; the list
// statements are in listSQL. make bench runs these same texts through pgbench.
const (
	// The task count of the user is checked and raised in the statement that inserts, on
	// the user's task_counts row, whose lock makes concurrent creates at the limit take
	// turns: each sees the count the one before it left. At the limit, no row.
	sqlCreateTask = `WITH slot AS (
    INSERT INTO task_counts AS c (user_id, tasks) VALUES ($1, 1)
    ON CONFLICT (user_id) DO UPDATE SET tasks = c.tasks + 1 WHERE c.tasks < $4
    RETURNING user_id
)
INSERT INTO tasks (user_id, title, description) SELECT user_id, $2, $3 FROM slot
RETURNING ` + taskColumns
	sqlGetTask = `SELECT ` + taskColumns + ` FROM tasks WHERE id = $1 AND user_id = $2`
	// One statement, so a concurrent change to a field the patch does not touch is
	// never overwritten with a stale value.
	sqlUpdateTask = `UPDATE tasks SET
    title       = COALESCE($3, title),
    description = CASE WHEN $4 THEN $5 ELSE description END,
    completed   = COALESCE($6, completed),
    updated_at  = now()
WHERE id = $1 AND user_id = $2
RETURNING ` + taskColumns
	// The row lock taken by UPDATE makes two concurrent toggles apply one after the
	// other, so neither is lost.
	sqlToggleTask = `UPDATE tasks SET completed = NOT completed, updated_at = now()
WHERE id = $1 AND user_id = $2
RETURNING ` + taskColumns
	sqlDeleteTask = `WITH gone AS (
    DELETE FROM tasks WHERE id = $1 AND user_id = $2 RETURNING user_id
), counted AS (
    UPDATE task_counts c SET tasks = greatest(c.tasks - 1, 0) FROM gone WHERE c.user_id = gone.user_id
)
SELECT count(*) FROM gone`
)

// scanTask scans taskColumns into t, then any further columns into extra.
func scanTask(row pgx.Row, t *Task, extra ...any) error {
	return row.Scan(append([]any{&t.ID, &t.UserID, &t.Title, &t.Description, &t.Completed, &t.CreatedAt.Time, &t.UpdatedAt.Time}, extra...)...)
}

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
				// count(*) OVER () is computed before LIMIT and OFFSET, so the total
				// comes with the first row of the page.
				m[ListQuery{Status: status, Sort: sort, Desc: desc}] = `SELECT ` + taskColumns + `, count(*) OVER ()
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
// Each row must arrive within the store's deadline of asking for it; how long the whole
// list takes depends on how fast head and each pass it on, which is the caller's to bound
// (the HTTP server's write timeout). A ctx cancelled by a client that hung up ends it.
func (s *Store) ListTasks(ctx context.Context, userID string, q ListQuery, head func(ListHead) error, each func(*Task) error) error {
	query, ok := listSQL[ListQuery{Status: q.Status, Sort: q.Sort, Desc: q.Desc}]
	if !ok {
		return fmt.Errorf("list query %+v was not validated", q)
	}
	var limit *int
	if q.Limit > 0 {
		limit = &q.Limit
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stalled := time.AfterFunc(s.timeout, func() { cancel(context.DeadlineExceeded) })
	defer stalled.Stop()
	rows, err := s.pool.Query(ctx, query, userID, limit, q.Offset)
	if err != nil {
		return s.translate(ctx, err)
	}
	defer rows.Close()
	var (
		t      Task
		h      ListHead
		headed bool
	)
	for rows.Next() {
		stalled.Stop()
		if err := scanTask(rows, &t, &h.Total); err != nil {
			return s.translate(ctx, err)
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
		stalled.Reset(s.timeout)
	}
	if err := rows.Err(); err != nil {
		return s.translate(ctx, err)
	}
	if headed {
		return nil
	}
	// An empty page has no row to carry the total; past the end of a list it is not 0.
	if q.Offset > 0 {
		err := s.pool.QueryRow(ctx, `SELECT count(*) FROM tasks WHERE user_id = $1`+statusFilter[q.Status], userID).Scan(&h.Total)
		if err != nil {
			return s.translate(ctx, err)
		}
	}
	return head(h)
}

// CreateTask inserts a task owned by userID; the database assigns id and timestamps. A
// user who already owns maxTasks tasks gets ErrTaskLimit.
func (s *Store) CreateTask(ctx context.Context, userID, title string, description *string) (Task, error) {
	t, err := s.oneTask(ctx, sqlCreateTask, userID, title, description, s.maxTasks)
	if errors.Is(err, ErrNotFound) {
		err = ErrTaskLimit
	}
	return t, err
}

// GetTask returns the user's task id; another user's task is ErrNotFound, like a missing one.
func (s *Store) GetTask(ctx context.Context, userID string, id int64) (Task, error) {
	return s.oneTask(ctx, sqlGetTask, id, userID)
}

// UpdateTask applies p; fields p leaves nil keep their stored values.
func (s *Store) UpdateTask(ctx context.Context, userID string, id int64, p TaskPatch) (Task, error) {
	return s.oneTask(ctx, sqlUpdateTask, id, userID, p.Title, p.SetDescription, p.Description, p.Completed)
}

// ToggleTask flips completed in the database itself, never read-modify-write.
func (s *Store) ToggleTask(ctx context.Context, userID string, id int64) (Task, error) {
	return s.oneTask(ctx, sqlToggleTask, id, userID)
}

// DeleteTask removes the user's task id.
func (s *Store) DeleteTask(ctx context.Context, userID string, id int64) error {
	ctx, cancel := s.statement(ctx)
	defer cancel()
	var deleted int
	err := s.pool.QueryRow(ctx, sqlDeleteTask, id, userID).Scan(&deleted)
	if err == nil && deleted == 0 {
		err = pgx.ErrNoRows
	}
	return s.translate(ctx, err)
}

// oneTask runs a statement that returns at most one task.
func (s *Store) oneTask(ctx context.Context, sql string, args ...any) (Task, error) {
	ctx, cancel := s.statement(ctx)
	defer cancel()
	var t Task
	err := scanTask(s.pool.QueryRow(ctx, sql, args...), &t)
	return t, s.translate(ctx, err)
}

// statement is the context of a single-row statement: the store's deadline, and no
// cancelling when the client hangs up. Such a statement takes a millisecond, and
// interrupting it would cost its connection (pgx closes a connection it interrupts).
func (s *Store) statement(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), s.timeout)
}

// translate turns a driver error into one of the store's sentinels, keeping the cause
// in the chain for the log, and tells the breaker about failed connection attempts. ctx
// is the statement's.
func (s *Store) translate(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return ErrNotFound
	}
	var connectErr *pgconn.ConnectError
	if errors.As(err, &connectErr) {
		s.breaker.failed(err)
		return fmt.Errorf("%w: %w: %w", ErrUnavailable, errDatabaseDown, err)
	}
	if errors.Is(err, errDatabaseDown) {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
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
	var connectErr *pgconn.ConnectError
	return errors.As(err, &netErr) || errors.As(err, &connectErr) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EPIPE) ||
		pgconn.SafeToRetry(err)
}
