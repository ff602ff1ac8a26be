package pg

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"taskflow/internal/testkit"

	"github.com/jackc/pgx/v5"
)

// The tests that need PostgreSQL use TEST_DATABASE_URL (make test), in a schema of their
// own run, with a table of their own.
var testURL string

func TestMain(m *testing.M) {
	base := os.Getenv("TEST_DATABASE_URL")
	if base == "" && os.Getenv("CI") == "true" {
		fmt.Fprintln(os.Stderr, "TEST_DATABASE_URL is unset: under CI the database tests must run, not skip (use make test)")
		os.Exit(1)
	}
	drop := func() {}
	if base != "" {
		var err error
		if testURL, drop, err = testkit.NewRunSchema(base); err != nil {
			fmt.Fprintf(os.Stderr, "TEST_DATABASE_URL: %v\n", err)
			os.Exit(1)
		}
	}
	code := m.Run()
	drop()
	os.Exit(code)
}

const testSchema = `CREATE TABLE IF NOT EXISTS written (v text PRIMARY KEY)`

// testDB is a DB on the test schema, one per test, with the table made once: two
// CREATE TABLE IF NOT EXISTS at once may collide.
func testDB(t *testing.T) *DB {
	t.Helper()
	if testURL == "" {
		t.Skip("TEST_DATABASE_URL is unset; run make test")
	}
	cfg, err := ParseConfig(testURL, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	made.Do(func() {
		if d, err := Open(context.Background(), cfg.Copy(), 5*time.Second, slog.New(slog.DiscardHandler), testSchema); err == nil {
			d.Close()
		}
	})
	d, err := Open(context.Background(), cfg, 5*time.Second, slog.New(slog.DiscardHandler), "SELECT")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	return d
}

var made sync.Once

// insert inserts v through Write and returns the transaction that committed it.
func insert(d *DB, v string) (xid string, err error) {
	err = d.Write(context.Background(), v, func(r pgx.Row) error { return r.Scan(&xid) },
		`INSERT INTO written (v) VALUES ($1) RETURNING pg_current_xact_id()::text`, v)
	return xid, err
}

// TestWritesShareACommit: writes made while others are in flight go together, in one
// transaction; each still gets its own answer.
func TestWritesShareACommit(t *testing.T) {
	t.Parallel()
	d := testDB(t)
	prefix := testkit.NewUserID()
	var wg sync.WaitGroup
	xids := make([]string, 200)
	for i := range xids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			if xids[i], err = insert(d, fmt.Sprint(prefix, i)); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	transactions := map[string]bool{}
	for _, x := range xids {
		transactions[x] = true
	}
	if n := rowsOf(d, prefix); n != 200 || len(transactions) >= 200 {
		t.Errorf("%d rows written in %d transactions; want 200 in fewer", n, len(transactions))
	}
}

// TestAFailingWriteUndoesOnlyItself: a statement that fails fails alone; the writes it
// shared a batch with are made.
func TestAFailingWriteUndoesOnlyItself(t *testing.T) {
	t.Parallel()
	d := testDB(t)
	prefix := testkit.NewUserID()
	if _, err := insert(d, prefix+"taken"); err != nil {
		t.Fatal(err)
	}
	writeRounds(prefix, func(v string, i int) error {
		if i == 5 {
			v = prefix + "taken"
		}
		_, err := insert(d, v)
		return err
	}, func(round int, errs []error) {
		for i, err := range errs {
			if i == 5 && !Violates(err, "written_pkey") || i != 5 && err != nil {
				t.Fatalf("round %d, write %d: %v", round, i, err)
			}
		}
	})
	if n := rowsOf(d, prefix); n != 1+20*9 {
		t.Errorf("%d rows, want %d", n, 1+20*9)
	}
}

// TestAWriteWhoseRowCannotBeReadIsMadeOnce: a scan that fails in the client leaves its
// statement made, and pgx reads no result after it, so the batch's outcome is unknown to
// its writes; sending it again would make every write of it twice (here, a unique
// violation for each).
func TestAWriteWhoseRowCannotBeReadIsMadeOnce(t *testing.T) {
	t.Parallel()
	d := testDB(t)
	prefix := testkit.NewUserID()
	writeRounds(prefix, func(v string, i int) error {
		if i != 5 {
			_, err := insert(d, v)
			return err
		}
		var n int // a text into an int: the client cannot read it
		return d.Write(context.Background(), v, func(r pgx.Row) error { return r.Scan(&n) },
			`INSERT INTO written (v) VALUES ($1) RETURNING v`, v)
	}, func(round int, errs []error) {
		for i, err := range errs {
			if i == 5 && err == nil || err != nil && i != 5 && !errors.Is(err, ErrUnavailable) {
				t.Fatalf("round %d, write %d: %v", round, i, err)
			}
		}
	})
	if n := rowsOf(d, prefix); n != 20*10 {
		t.Errorf("%d rows, want %d", n, 20*10)
	}
}

// writeRounds makes 20 rounds of 10 writes at once, each write(v, i) with a value of its
// own, and hands each round's errors to check.
func writeRounds(prefix string, write func(v string, i int) error, check func(round int, errs []error)) {
	for round := range 20 {
		var wg sync.WaitGroup
		errs := make([]error, 10)
		for i := range errs {
			wg.Go(func() { errs[i] = write(fmt.Sprint(prefix, round, "-", i), i) })
		}
		wg.Wait()
		check(round, errs)
	}
}

// rowsOf counts the rows written whose value starts with prefix.
func rowsOf(d *DB, prefix string) (n int) {
	d.Pool().QueryRow(context.Background(), `SELECT count(*) FROM written WHERE v LIKE $1 || '%'`, prefix).Scan(&n)
	return n
}

// TestAWriteWaitsToBeSentNoLongerThanTimeout: while the database hangs (a lock, here),
// maxInFlight batches of maxBatch writes hang with it and the other writes queue. Each
// gives up in the queue within the deadline, so none takes more than about twice it,
// instead of waiting for one generation of hung batches after another (four times it).
func TestAWriteWaitsToBeSentNoLongerThanTimeout(t *testing.T) {
	t.Parallel()
	testDB(t) // the table
	const timeout = 500 * time.Millisecond
	cfg, err := ParseConfig(testURL, timeout)
	if err != nil {
		t.Fatal(err)
	}
	d, err := New(cfg, timeout, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	prefix := testkit.NewUserID()
	lock, err := d.Pool().Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Rollback(context.Background())
	if _, err := lock.Exec(context.Background(), `LOCK TABLE written IN SHARE MODE`); err != nil { // inserts wait
		t.Fatal(err)
	}
	n := 3 * maxInFlight * maxBatch
	took := make(chan time.Duration, n)
	for i := range n {
		go func() {
			start := time.Now()
			insert(d, fmt.Sprint(prefix, i)) //nolint:errcheck // each fails; how long it takes is the point
			took <- time.Since(start)
		}()
	}
	var longest time.Duration
	for range n {
		longest = max(longest, <-took)
	}
	if longest > 3*timeout { // twice the deadline, and room for a busy machine
		t.Errorf("a write took %v; want at most about twice the %v deadline", longest, timeout)
	}
}

// TestWritesWithNoDatabaseFailQuickly: a write that cannot reach the database is
// ErrUnavailable within the deadline, batched or not.
func TestWritesWithNoDatabaseFailQuickly(t *testing.T) {
	t.Parallel()
	cfg, err := ParseConfig("postgres://nobody@127.0.0.1:1/none?sslmode=disable", 500*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	d, err := New(cfg, 500*time.Millisecond, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	start := time.Now()
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := insert(d, "x"); !errors.Is(err, ErrUnavailable) {
				t.Errorf("a write with no database: %v, want ErrUnavailable", err)
			}
		}()
	}
	wg.Wait()
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("20 writes with no database took %v", took)
	}
}
