package feed

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"reflect"
	"strconv"
	"sync"
	"testing"
	"time"

	"taskflow/internal/fair"
	"taskflow/internal/pg"
	"taskflow/internal/testkit"
)

// The feed's tests run on TEST_DATABASE_URL (make test), in a schema of their own run
// with ../../schema.sql applied, and write tasks with plain SQL, as a writer outside the
// service must (schema.sql says how): each test isolates itself by its own user ids.
var testDB *pg.DB

func TestMain(m *testing.M) {
	base := os.Getenv("TEST_DATABASE_URL")
	if base == "" && os.Getenv("CI") == "true" {
		fmt.Fprintln(os.Stderr, "TEST_DATABASE_URL is unset: under CI the database tests must run, not skip (use make test)")
		os.Exit(1)
	}
	var drop func()
	if base != "" {
		u, d, err := testkit.NewRunSchema(base)
		if err == nil {
			drop = d
			err = openTestDB(u)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "TEST_DATABASE_URL: %v\n", err)
			os.Exit(1)
		}
	}
	code := m.Run()
	if testDB != nil {
		testDB.Close()
		drop()
	}
	os.Exit(code)
}

func openTestDB(u string) error {
	schema, err := os.ReadFile("../../schema.sql")
	if err != nil {
		return err
	}
	cfg, err := pg.ParseConfig(u, 5*time.Second)
	if err == nil {
		testDB, err = pg.Open(context.Background(), cfg, 5*time.Second, slog.New(slog.DiscardHandler), string(schema))
	}
	return err
}

// testFeed is a feed on the test database, with a budget no test spends unless it means to.
func testFeed(t *testing.T) *Feed {
	t.Helper()
	if testDB == nil {
		t.Skip("TEST_DATABASE_URL is unset; run make test")
	}
	return New(testDB, 168*time.Hour, fair.New(time.Second, time.Minute, 2))
}

func exec(t *testing.T, sql string, args ...any) {
	t.Helper()
	if _, err := testDB.Pool().Exec(context.Background(), sql, args...); err != nil {
		t.Fatal(err)
	}
}

// create inserts a task as any writer may, and returns its id.
func create(t *testing.T, userID, title string) int64 {
	t.Helper()
	var id int64
	if err := testDB.Pool().QueryRow(context.Background(), `INSERT INTO tasks (user_id, title) VALUES ($1, $2) RETURNING id`, userID, title).Scan(&id); err != nil {
		t.Fatal(err)
	}
	return id
}

// rename changes a task's title, stamping it as every writer must.
func rename(t *testing.T, id int64, title string) {
	t.Helper()
	exec(t, `UPDATE tasks SET title = $2, version = nextval('task_versions'), changed_xid = pg_current_xact_id() WHERE id = $1`, id, title)
}

// readAll reads userID's feed from c to its present end, limit at a time.
func readAll(t *testing.T, f *Feed, userID string, c Cursor, limit int) ([]Change, Cursor) {
	t.Helper()
	var all []Change
	for {
		page, err := f.Read(context.Background(), userID, c, limit)
		if err != nil {
			t.Fatal(err)
		}
		all, c = append(all, page.Changes...), page.Next
		if !page.More {
			return all, c
		}
	}
}

// holdReads locks changes_durable, which every read of the feed reads: the reader's
// next statement waits until release (or the test's end).
func holdReads(t *testing.T) (release func()) {
	t.Helper()
	ctx := context.Background()
	lock, err := testDB.Pool().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	release = func() { lock.Rollback(ctx) }
	t.Cleanup(release)
	if _, err := lock.Exec(ctx, `LOCK TABLE changes_durable IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	return release
}

func titles(changes []Change) []string {
	var got []string
	for _, c := range changes {
		got = append(got, c.Task.Title)
	}
	return got
}

func TestCursorsAreOpaqueAndBelongToTheirUser(t *testing.T) {
	t.Parallel()
	const db, inc = "0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210"
	c := Cursor{database: db, incarnation: inc, durable: 99, since: snapshot{xmin: 100, xmax: 105, xip: []uint64{101, 103}},
		upto: snapshot{xmin: 104, xmax: 110, xip: []uint64{104}}, after: place{created: 1790000000123456, id: 42}}
	text := c.Encode("alice")
	if got, err := DecodeCursor("alice", text); err != nil || !reflect.DeepEqual(got, c) {
		t.Fatalf("decode(encode(%+v)) = %+v, %v", c, got, err)
	}
	v1 := func(incarnation string) string {
		return b64(fmt.Sprintf("1|%x|%s/%s/99|100:105:101,103|104:110:104|42", userTag("alice"), db, incarnation))
	}
	// A cursor of the first format paged by task id: its batch starts again.
	if got, err := DecodeCursor("alice", v1(inc)); err != nil || !reflect.DeepEqual(got, c.from(c.since)) {
		t.Errorf("a first-format cursor decodes to %+v, %v; want %+v", got, err, c.from(c.since))
	}
	for name, bad := range map[string]string{
		"another user's":            text,
		"not base64url":             "not a cursor!",
		"empty":                     "",
		"cut short":                 text[:len(text)-2],
		"with a tail":               Cursor{}.Encode("bob") + "AA",
		"xmin above xmax":           Cursor{since: snapshot{xmin: 9, xmax: 5}}.Encode("bob"),
		"paged, no place":           Cursor{since: snapshot{xmin: 5, xmax: 5}, upto: snapshot{xmin: 6, xmax: 6}}.Encode("bob"),
		"a special xid":             Cursor{since: snapshot{xmin: 1 << 32, xmax: 1 << 32}}.Encode("bob"),
		"an incarnation not UTF-8":  Cursor{database: db, incarnation: "\xff\xfe" + inc[2:]}.Encode("bob"),
		"an incarnation with a NUL": Cursor{database: db, incarnation: "\x00" + inc[1:]}.Encode("bob"),
		"a database not hex":        Cursor{database: "zz" + db[2:]}.Encode("bob"),
		"an unknown format":         b64(fmt.Sprintf("3|%x|%s/%s/99|1:1:|1:1:|0|0", userTag("bob"), db, inc)),
		"placed before 4713 BC": Cursor{database: db, incarnation: inc, since: snapshot{xmin: 5, xmax: 5},
			upto: snapshot{xmin: 6, xmax: 6}, after: place{created: -9e18, id: 1}}.Encode("bob"),
	} {
		if _, err := DecodeCursor("bob", bad); !errors.Is(err, ErrBadCursor) {
			t.Errorf("%s cursor %q: %v, want ErrBadCursor", name, bad, err)
		}
	}
}

// TestACreateIsCreatedWhateverFollowed: a task made after the cursor is task.created,
// even when it was changed again before the feed was read; one made before is updated.
func TestACreateIsCreatedWhateverFollowed(t *testing.T) {
	t.Parallel()
	f, me := testFeed(t), testkit.NewUserID()
	old := create(t, me, "old")
	from, err := f.Now(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		id := create(t, me, fmt.Sprint("new ", i))
		rename(t, id, fmt.Sprint("new and renamed ", i))
	}
	rename(t, old, "old and renamed")
	changes, _ := readAll(t, f, me, from, 3)
	if len(changes) != 11 {
		t.Fatalf("%d changes, want 11: %v", len(changes), titles(changes))
	}
	for _, c := range changes {
		if want := c.Task.ID != old; c.Created != want {
			t.Errorf("%q: created %v, want %v", c.Task.Title, c.Created, want)
		}
	}
}

// TestPagesStartWhereTheLastEnded: a long batch read a few at a time brings each change
// once, in the order of the user's index, deletes among them.
func TestPagesStartWhereTheLastEnded(t *testing.T) {
	t.Parallel()
	f, me := testFeed(t), testkit.NewUserID()
	from, err := f.Now(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var ids []int64
	for i := range 40 {
		ids = append(ids, create(t, me, fmt.Sprint(i)))
	}
	for i, id := range ids {
		if i%4 == 1 {
			exec(t, `DELETE FROM tasks WHERE id = $1`, id)
		}
	}
	changes, _ := readAll(t, f, me, from, 3)
	if len(changes) != 40 {
		t.Fatalf("%d changes, want 40", len(changes))
	}
	for i, c := range changes {
		if c.Task.ID != ids[i] || c.Deleted != (i%4 == 1) {
			t.Errorf("change %d: task %d (deleted %v), want %d (deleted %v)", i, c.Task.ID, c.Deleted, ids[i], i%4 == 1)
		}
	}
}

// TestReadsOfOneCursorAreShared: many reads of one cursor waiting together are one read.
// It locks a table every read reads, for a moment, so it is not parallel.
func TestReadsOfOneCursorAreShared(t *testing.T) {
	f, ctx, me := testFeed(t), context.Background(), testkit.NewUserID()
	from, err := f.Now(ctx)
	if err != nil {
		t.Fatal(err)
	}
	create(t, me, "one")
	// A read held up by a lock keeps the reader busy while the others queue behind it.
	release := holdReads(t)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); f.Now(ctx) }()
	testkit.WaitFor(t, "the reader to be busy", func() bool { return f.reader.statements.Load() == 2 })
	pages := make([]Page, 16)
	for i := range pages {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pages[i], _ = f.Read(ctx, me, from, 100)
		}()
	}
	testkit.WaitFor(t, "the reads to queue", func() bool {
		f.reader.mu.Lock()
		defer f.reader.mu.Unlock()
		rd := f.reader.waiting[readKey{me, from.Encode(me), 100}]
		return rd != nil && rd.waiters == 16
	})
	release()
	wg.Wait()
	for _, p := range pages {
		if !reflect.DeepEqual(p, pages[0]) || len(p.Changes) != 1 {
			t.Fatalf("pages differ, or miss the change: %+v", pages)
		}
	}
	if n := f.reader.statements.Load(); n != 3 { // the first Now's, the held one's, and one for all sixteen
		t.Errorf("%d statements, want 3", n)
	}
}

// TestASlowReadHoldsTheFeedBackASecondAtMost: after each read the reader pauses in
// proportion to it, to keep its share of the database; a read slowed by something else
// (PostgreSQL coming back from a restart, here a lock) must not stop every stream for
// many times as long. A 2 s read used to pause the reader 18 s.
func TestASlowReadHoldsTheFeedBackASecondAtMost(t *testing.T) {
	f, ctx, me := testFeed(t), context.Background(), testkit.NewUserID()
	from, err := f.Now(ctx)
	if err != nil {
		t.Fatal(err)
	}
	release := holdReads(t)
	slow := make(chan error)
	go func() { _, err := f.Now(ctx); slow <- err }()
	time.Sleep(2 * time.Second)
	release()
	if err := <-slow; err != nil {
		t.Fatal(err)
	}
	create(t, me, "after")
	start := time.Now()
	page, err := f.Read(ctx, me, from, 10)
	if err != nil || len(page.Changes) != 1 {
		t.Fatalf("%v, %+v", err, page)
	}
	if took := time.Since(start); took > 1500*time.Millisecond {
		t.Errorf("the next read waited %v; want a second at most", took)
	}
}

// TestAReadTheDatabaseRefusesFailsAlone: reads waiting together run as one statement;
// one that the database refuses (here a place PostgreSQL cannot hold, which
// DecodeCursor would not let through) must not fail another user's read beside it.
func TestAReadTheDatabaseRefusesFailsAlone(t *testing.T) {
	f, ctx, me, other := testFeed(t), context.Background(), testkit.NewUserID(), testkit.NewUserID()
	from, err := f.Now(ctx)
	if err != nil {
		t.Fatal(err)
	}
	create(t, me, "mine")
	bad := from.within(from.since, place{created: -9e18, id: 1})
	release := holdReads(t)
	held := make(chan error)
	go func() { _, err := f.Now(ctx); held <- err }() // keeps the reader busy while the two queue
	testkit.WaitFor(t, "the reader to be busy", func() bool { return f.reader.statements.Load() == 2 })
	badErr := make(chan error)
	go func() { _, err := f.Read(ctx, other, bad, 10); badErr <- err }()
	good := make(chan Page)
	go func() { p, _ := f.Read(ctx, me, from, 10); good <- p }()
	testkit.WaitFor(t, "the reads to queue", func() bool {
		f.reader.mu.Lock()
		defer f.reader.mu.Unlock()
		return len(f.reader.waiting) == 2
	})
	release()
	if err := <-held; err != nil {
		t.Fatal(err)
	}
	if p := <-good; len(p.Changes) != 1 {
		t.Errorf("the read beside a refused one: %+v", p)
	}
	if err := <-badErr; err == nil {
		t.Error("a place before 4713 BC was read")
	}
}

// TestAUserWhoseBudgetIsSpentWaitsAlone: reads of a user whose database time is spent
// wait for it to refill; other users' reads do not wait for them.
func TestAUserWhoseBudgetIsSpentWaitsAlone(t *testing.T) {
	t.Parallel()
	users := fair.New(100*time.Millisecond, 100*time.Millisecond, 2)
	f, heavy, light := New(testDB, time.Hour, users), testkit.NewUserID(), testkit.NewUserID()
	if testDB == nil {
		t.Skip("TEST_DATABASE_URL is unset; run make test")
	}
	users.Charge(heavy, 200*time.Millisecond) // 100 ms overspent: 1 s until it may read again
	start := time.Now()
	done := make(chan time.Duration)
	go func() {
		f.Read(context.Background(), heavy, Cursor{}, 10)
		done <- time.Since(start)
	}()
	if _, err := f.Read(context.Background(), light, Cursor{}, 10); err != nil || time.Since(start) > 500*time.Millisecond {
		t.Errorf("another user's read: %v after %v; want it at once", err, time.Since(start))
	}
	if took := <-done; took < 900*time.Millisecond {
		t.Errorf("the spent user's read came after %v; want it to wait about 1 s", took)
	}
}

// TestACursorFromBeforeACrashCountsFromItsXmin: a crash empties changes_incarnation (it
// is unlogged), and may hand out again the ids of transactions that ended unwritten. A
// cursor from before it is read from its xmin (or from the id it knew on disk, if
// lower): what it had seen above comes again, and nothing above can be skipped. It
// empties the table for the whole run, so it is not parallel.
func TestACursorFromBeforeACrashCountsFromItsXmin(t *testing.T) {
	f, ctx, me := testFeed(t), context.Background(), testkit.NewUserID()
	id := create(t, me, "before")
	older, err := testDB.Pool().Begin(ctx) // an older transaction, still open: the cursor's xmin
	if err != nil {
		t.Fatal(err)
	}
	defer older.Rollback(ctx)
	older.Exec(ctx, `SELECT pg_current_xact_id()`)
	rename(t, id, "seen")
	if err := f.Incarnate(ctx); err != nil { // as the reader does every minute
		t.Fatal(err)
	}
	cursor, err := f.Now(ctx)
	if err != nil || cursor.incarnation == "" {
		t.Fatalf("Now = %+v, %v: want a cursor of an incarnation", cursor, err)
	}
	if changes, _ := readAll(t, f, me, cursor, 100); len(changes) != 0 {
		t.Fatalf("the feed from now brought %v", titles(changes))
	}
	crash := func() { exec(t, `DELETE FROM changes_incarnation`) } // as crash recovery does
	incarnations := func() (n int) {
		testDB.Pool().QueryRow(ctx, `SELECT count(*) FROM changes_incarnation`).Scan(&n)
		return n
	}
	crash()
	changes, next := readAll(t, f, me, cursor, 100)
	if got := titles(changes); !reflect.DeepEqual(got, []string{"seen"}) {
		t.Errorf("after the crash, from the cursor of before it: %v, want [seen] again", got)
	}
	// The reader makes it just after it has handed out the pages.
	testkit.WaitFor(t, "the first read after the crash to leave an incarnation", func() bool { return incarnations() == 1 })
	// A cursor made between a crash and the next incarnation has none, and is never
	// taken for the database's, even when the database has none either.
	crash()
	none := cursor
	none.incarnation = ""
	if changes, _ := readAll(t, f, me, none, 100); !reflect.DeepEqual(titles(changes), []string{"seen"}) {
		t.Errorf("from a cursor of no incarnation: %v, want [seen] again", titles(changes))
	}
	older.Rollback(ctx)
	readAll(t, f, me, next, 100)
	crash()
	if c, err := f.Now(ctx); err != nil || c.incarnation == cursor.incarnation {
		t.Errorf("after the crash, Now = %+v, %v: want a new incarnation", c, err)
	}
}

// TestACursorOfAnotherDatabaseIsExpired: a cursor from another database, or one that
// knew of more on disk than the database now has (a restore, a failover that lost
// commits), would miss or invent changes; it is told to list again. It changes the
// database's identity for the whole run, so it is not parallel.
func TestACursorOfAnotherDatabaseIsExpired(t *testing.T) {
	f, ctx, me := testFeed(t), context.Background(), testkit.NewUserID()
	create(t, me, "here")
	cursor, err := f.Now(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Read(ctx, me, cursor, 10); err != nil {
		t.Fatalf("the cursor of this database: %v", err)
	}
	for _, c := range []struct{ name, change, undo string }{
		{"another database", `UPDATE changes_durable SET database = md5('another')`, `UPDATE changes_durable SET database = '` + cursor.database + `'`},
		{"a restore", `UPDATE changes_durable SET xid = '3'`, `UPDATE changes_durable SET xid = greatest(xid, '` + strconv.FormatUint(cursor.durable, 10) + `')`},
	} {
		exec(t, c.change)
		_, err := f.Read(ctx, me, cursor, 10)
		exec(t, c.undo)
		if !errors.Is(err, ErrCursorExpired) {
			t.Errorf("after %s: %v, want ErrCursorExpired", c.name, err)
		}
	}
}

func b64(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
