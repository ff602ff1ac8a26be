package main

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// The store's callers see only these errors (or nil); writeError maps them to statuses.
// Everything the driver says stays inside the error chain for the log.
var (
	ErrNotFound    = errors.New("task not found")
	ErrUnavailable = errors.New("database unavailable")
	ErrRejected    = errors.New("value rejected by the database")
)

//go:embed schema.sql
var schemaSQL string

// Task is one row of the tasks table, as the API returns it.
type Task struct {
	ID          int64
	UserID      string
	Title       string
	Description *string
	Completed   bool
	CreatedAt   time.Time
	UpdatedAt   time.Time
}

// TaskPatch holds the fields of a PUT; a nil pointer means "keep the stored value".
// SetDescription distinguishes an absent description (keep) from an explicit null (clear).
type TaskPatch struct {
	Title          *string
	SetDescription bool
	Description    *string
	Completed      *bool
}

// ListQuery is a validated list request. The string fields hold only values that
// parseListQuery accepted; Limit 0 means no limit.
type ListQuery struct {
	Status string // "all", "pending" or "completed"
	Sort   string // "created", "updated" or "title"
	Desc   bool
	Limit  int
	Offset int64
}

// Store runs the service's SQL. Every statement is scoped by the caller's user id and runs
// under its own deadline, so a hanging database turns into ErrUnavailable, not a hung request.
type Store struct {
	pool    *pgxpool.Pool
	timeout time.Duration
}

// Pool defaults suited to Neon; each applies only when DATABASE_URL does not set it.
const (
	defaultMaxConns          = 15               // the earlier design's 5 + 10 overflow
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
	cfg.BeforeAcquire = func(_ context.Context, c *pgx.Conn) bool { return connAlive(c.PgConn().Conn()) }
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

// openStore connects, pings and applies schema.sql. It fails rather than starting a server
// that could not serve a single request.
func openStore(ctx context.Context, cfg *pgxpool.Config, timeout time.Duration) (*Store, error) {
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	s := &Store{pool: pool, timeout: timeout}
	// Neon may need a few seconds to wake a suspended compute, so the start gets more
	// time than a request does.
	startCtx, cancel := context.WithTimeout(ctx, max(timeout, 15*time.Second))
	defer cancel()
	if err := pool.Ping(startCtx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("ping: %w", err)
	}
	if _, err := pool.Exec(startCtx, schemaSQL); err != nil {
		pool.Close()
		return nil, fmt.Errorf("apply schema.sql: %w", err)
	}
	return s, nil
}

func (s *Store) Close() { s.pool.Close() }

// Ping reports whether the database answers within the store's deadline.
func (s *Store) Ping(ctx context.Context) error {
	return s.do(ctx, true, func(ctx context.Context, c *pgxpool.Conn) error { return c.Ping(ctx) })
}

const taskColumns = `id, user_id, title, description, completed, created_at, updated_at`

// The single statements behind create, get, update, toggle and delete; the list
// statements are in listSQL. make bench runs these same texts through pgbench.
const (
	sqlCreateTask = `INSERT INTO tasks (user_id, title, description) VALUES ($1, $2, $3)
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
	sqlDeleteTask = `DELETE FROM tasks WHERE id = $1 AND user_id = $2`
)

// scanTask scans taskColumns into t, then any further columns into extra.
func scanTask(row pgx.Row, t *Task, extra ...any) error {
	return row.Scan(append([]any{&t.ID, &t.UserID, &t.Title, &t.Description, &t.Completed, &t.CreatedAt, &t.UpdatedAt}, extra...)...)
}

// statusFilter is the WHERE clause fragment of each list status.
var statusFilter = map[string]string{"all": "", "pending": " AND NOT completed", "completed": " AND completed"}

// listSQL holds one statement per (status, sort, order) so that the query text is built
// from fixed fragments only, never from request input, and each variant gets its own
// prepared statement and plan.
var listSQL = func() map[ListQuery]string {
	sortBy := map[string]string{"created": "created_at", "updated": "updated_at", "title": "title"}
	m := make(map[ListQuery]string)
	for status, w := range statusFilter {
		for sort, col := range sortBy {
			for _, desc := range []bool{false, true} {
				dir := "ASC"
				if desc {
					dir = "DESC"
				}
				// count(*) OVER () is computed before LIMIT/OFFSET, so the total rides along
				// with the page in the same statement.
				m[ListQuery{Status: status, Sort: sort, Desc: desc}] = `SELECT ` + taskColumns + `, count(*) OVER ()
FROM tasks WHERE user_id = $1` + w + `
ORDER BY ` + col + ` ` + dir + `, id ` + dir + `
LIMIT $2 OFFSET $3`
			}
		}
	}
	return m
}()

// ListTasks returns one page of the user's tasks and how many tasks match the filter.
func (s *Store) ListTasks(ctx context.Context, userID string, q ListQuery) ([]Task, int64, error) {
	query, ok := listSQL[ListQuery{Status: q.Status, Sort: q.Sort, Desc: q.Desc}]
	if !ok {
		return nil, 0, fmt.Errorf("list query %+v was not validated", q)
	}
	var limit *int
	if q.Limit > 0 {
		limit = &q.Limit
	}
	var (
		tasks []Task
		total int64
	)
	err := s.do(ctx, true, func(ctx context.Context, c *pgxpool.Conn) error {
		tasks, total = tasks[:0], 0
		rows, err := c.Query(ctx, query, userID, limit, q.Offset)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var t Task
			if err := scanTask(rows, &t, &total); err != nil {
				return err
			}
			tasks = append(tasks, t)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		// A page past the end has no row to carry the total; only then is it counted apart.
		if len(tasks) == 0 && q.Offset > 0 {
			return c.QueryRow(ctx, `SELECT count(*) FROM tasks WHERE user_id = $1`+statusFilter[q.Status], userID).Scan(&total)
		}
		return nil
	})
	if err != nil {
		return nil, 0, err
	}
	if tasks == nil {
		tasks = []Task{}
	}
	return tasks, total, nil
}

// CreateTask inserts a task owned by userID; the database assigns id and timestamps.
func (s *Store) CreateTask(ctx context.Context, userID, title string, description *string) (Task, error) {
	var t Task
	err := s.do(ctx, false, func(ctx context.Context, c *pgxpool.Conn) error {
		return scanTask(c.QueryRow(ctx, sqlCreateTask, userID, title, description), &t)
	})
	return t, err
}

// GetTask returns the user's task id; another user's task is ErrNotFound, like a missing one.
func (s *Store) GetTask(ctx context.Context, userID string, id int64) (Task, error) {
	var t Task
	err := s.do(ctx, true, func(ctx context.Context, c *pgxpool.Conn) error {
		return scanTask(c.QueryRow(ctx, sqlGetTask, id, userID), &t)
	})
	return t, err
}

// UpdateTask applies p; fields p leaves nil keep their stored values.
func (s *Store) UpdateTask(ctx context.Context, userID string, id int64, p TaskPatch) (Task, error) {
	var t Task
	err := s.do(ctx, false, func(ctx context.Context, c *pgxpool.Conn) error {
		return scanTask(c.QueryRow(ctx, sqlUpdateTask, id, userID, p.Title, p.SetDescription, p.Description, p.Completed), &t)
	})
	return t, err
}

// ToggleTask flips completed in the database itself, never read-modify-write.
func (s *Store) ToggleTask(ctx context.Context, userID string, id int64) (Task, error) {
	var t Task
	err := s.do(ctx, false, func(ctx context.Context, c *pgxpool.Conn) error {
		return scanTask(c.QueryRow(ctx, sqlToggleTask, id, userID), &t)
	})
	return t, err
}

// DeleteTask removes the user's task id.
func (s *Store) DeleteTask(ctx context.Context, userID string, id int64) error {
	return s.do(ctx, false, func(ctx context.Context, c *pgxpool.Conn) error {
		tag, err := c.Exec(ctx, sqlDeleteTask, id, userID)
		if err == nil && tag.RowsAffected() == 0 {
			return pgx.ErrNoRows
		}
		return err
	})
}

// do runs one database call on one pooled connection, under the store's deadline, and
// translates its error.
//
// A call that fails because its pooled connection had died (the server restarted, or Neon
// or PgBouncer closed it) is tried once more, on a fresh connection: always for reads,
// which are idempotent, and for writes only when pgconn guarantees nothing reached the
// server, since a write that may have committed must not be applied twice.
func (s *Store) do(ctx context.Context, idempotent bool, call func(context.Context, *pgxpool.Conn) error) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	err := s.attempt(ctx, call)
	if err != nil && ctx.Err() == nil && !pgconn.Timeout(err) && (pgconn.SafeToRetry(err) || idempotent && connectionLost(err)) {
		err = s.attempt(ctx, call)
	}
	return translate(ctx, err)
}

// attempt acquires a connection within ctx, then runs call with ctx's deadline set on the
// connection's socket and a context that cannot be cancelled.
//
// Why not let pgx watch ctx: for every statement under a cancellable context pgx starts a
// goroutine to watch it, and when the statement ends it hands off to that goroutine over an
// unbuffered channel. With GOMAXPROCS=1 (the server on one core) each handoff waits behind
// every runnable goroutine, and that wait was most of the service's p99 (get at 16
// connections under wrk, as make bench runs it: p99 39-56 ms with the watcher, 11-13 ms
// without). The socket deadline
// keeps the guarantee the context gave: a statement still running at the deadline fails
// with a timeout, pgx closes that connection and the pool replaces it. What is given up
// is cancelling a statement because its client hung up; every statement here is short,
// and a write the client no longer waits for still either commits whole or not at all.
func (s *Store) attempt(ctx context.Context, call func(context.Context, *pgxpool.Conn) error) error {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	deadline, _ := ctx.Deadline()
	socket := conn.Conn().PgConn().Conn()
	if err := socket.SetDeadline(deadline); err != nil {
		return err
	}
	err = call(context.WithoutCancel(ctx), conn)
	// A connection pgx closed (after a timeout, say) is cleaning up under a deadline of
	// its own, which must stay; it goes back to the pool only to be destroyed.
	if !conn.Conn().IsClosed() {
		socket.SetDeadline(time.Time{}) // fails only on a socket already closed
	}
	return err
}

// translate turns a driver error into one of the store's sentinels, keeping the cause
// in the chain for the log.
func translate(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return ErrNotFound
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
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return strings.HasPrefix(pgErr.Code, "08") || pgErr.Code == "57P01" || pgErr.Code == "57P02"
	}
	var netErr net.Error
	var connectErr *pgconn.ConnectError
	return errors.As(err, &netErr) || errors.As(err, &connectErr) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EPIPE) ||
		pgconn.SafeToRetry(err)
}
