package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"taskflow/internal/testkit"
)

func TestCursorsAreOpaqueAndBelongToTheirUser(t *testing.T) {
	t.Parallel()
	c := Cursor{since: snapshot{xmin: 100, xmax: 105, xip: []uint64{101, 103}}, upto: snapshot{xmin: 104, xmax: 110, xip: []uint64{104}}, after: 42}
	text := c.Encode("alice")
	if got, err := decodeCursor("alice", text); err != nil || !reflect.DeepEqual(got, c) {
		t.Fatalf("decode(encode(%+v)) = %+v, %v", c, got, err)
	}
	var api *apiError
	for name, bad := range map[string]string{
		"another user's":  text,
		"not base64url":   "not a cursor!",
		"empty":           "",
		"cut short":       text[:len(text)-2],
		"with a tail":     Cursor{}.Encode("bob") + "AA",
		"xmin above xmax": Cursor{since: snapshot{xmin: 9, xmax: 5}}.Encode("bob"),
		"paged, no id":    Cursor{since: snapshot{xmin: 5, xmax: 5}, upto: snapshot{xmin: 6, xmax: 6}}.Encode("bob"),
		"a special xid":   Cursor{since: snapshot{xmin: 1 << 32, xmax: 1 << 32}}.Encode("bob"),
	} {
		if _, err := decodeCursor("bob", bad); !errors.As(err, &api) || api.status != http.StatusBadRequest {
			t.Errorf("%s cursor %q: %v, want a 400", name, bad, err)
		}
	}
}

// readFeed reads userID's feed from c to its present end, a page of limit at a time, and
// returns the pages and where the feed goes on.
func readFeed(t *testing.T, s *Store, userID string, c Cursor, limit int) ([][]Change, Cursor) {
	t.Helper()
	var pages [][]Change
	for {
		var page []Change
		next, more, err := testFeed(s).Changes(context.Background(), userID, c, limit, func(ch *Change) error {
			page = append(page, *ch)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		pages, c = append(pages, page), next
		if !more {
			return pages, c
		}
	}
}

func titles(pages [][]Change) []string {
	var got []string
	for _, p := range pages {
		for _, c := range p {
			got = append(got, c.Task.Title)
		}
	}
	return got
}

// TestTheFeedNeverSkipsALateCommit: a transaction that took its id before others, and
// commits after them, still comes through the feed, after the feed has gone past them.
func TestTheFeedNeverSkipsALateCommit(t *testing.T) {
	t.Parallel()
	s, ctx, me := testStore(t), context.Background(), testkit.NewUserID()
	a, b := mustCreate(t, s, me, "a", nil), mustCreate(t, s, me, "b", nil)
	start, err := testFeed(s).Now(ctx)
	if err != nil {
		t.Fatal(err)
	}
	late, err := s.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer late.Rollback(ctx)
	var lateXID, earlyXID uint64
	if err := late.QueryRow(ctx, `UPDATE tasks SET title = 'late', `+stamp+` WHERE id = $1 RETURNING changed_xid::text::bigint`, a.ID).Scan(&lateXID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UpdateTask(ctx, me, b.ID, TaskPatch{Title: ptr("early")}, Condition{}); err != nil {
		t.Fatal(err)
	}
	s.pool.QueryRow(ctx, `SELECT changed_xid::text::bigint FROM tasks WHERE id = $1`, b.ID).Scan(&earlyXID)
	if lateXID >= earlyXID {
		t.Fatalf("the late transaction's id %d is not below the early one's %d", lateXID, earlyXID)
	}
	pages, cur := readFeed(t, s, me, start, 100)
	if got := titles(pages); !reflect.DeepEqual(got, []string{"early"}) {
		t.Fatalf("while the late transaction is open: %v, want [early]", got)
	}
	if err := late.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	pages, _ = readFeed(t, s, me, cur, 100)
	if got := titles(pages); !reflect.DeepEqual(got, []string{"late"}) {
		t.Errorf("after it commits, from where the feed had got: %v, want [late]", got)
	}
}

// TestTheFeedPagesCompactsAndKeepsDeletes: a page holds each task once, in its latest
// state; versions only grow along the feed; a delete is a tombstone newer than the
// task; the end of the feed is the database's state.
func TestTheFeedPagesCompactsAndKeepsDeletes(t *testing.T) {
	t.Parallel()
	s, ctx, me := testStore(t), context.Background(), testkit.NewUserID()
	start, err := testFeed(s).Now(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var tasks []Task
	for i := range 25 {
		tasks = append(tasks, mustCreate(t, s, me, fmt.Sprint("task ", i), nil))
	}
	for i, task := range tasks {
		switch i % 5 {
		case 0:
			s.ToggleTask(ctx, me, task.ID, Condition{}, nil)
			s.ToggleTask(ctx, me, task.ID, Condition{}, nil)
		case 1:
			if err := s.DeleteTask(ctx, me, task.ID, Condition{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	pages, _ := readFeed(t, s, me, start, 7)
	if len(pages) != 4 {
		t.Errorf("%d pages of at most 7 for 25 changes, want 4", len(pages))
	}
	latest := map[int64]Change{}
	for _, page := range pages {
		seen := map[int64]bool{}
		for _, c := range page {
			if seen[c.Task.ID] {
				t.Errorf("task %d twice in one page", c.Task.ID)
			}
			seen[c.Task.ID] = true
			if prev, ok := latest[c.Task.ID]; ok && c.Task.Version <= prev.Task.Version {
				t.Errorf("task %d went from version %d to %d", c.Task.ID, prev.Task.Version, c.Task.Version)
			}
			latest[c.Task.ID] = c
		}
	}
	for i, task := range tasks {
		c, ok := latest[task.ID]
		switch {
		case !ok:
			t.Errorf("task %d is not in the feed", task.ID)
		case i%5 == 1 && (!c.Deleted || c.Task.Version <= task.Version):
			t.Errorf("deleted task %d: %+v, want a tombstone newer than version %d", task.ID, c, task.Version)
		case i%5 != 1:
			now, err := s.GetTask(ctx, me, task.ID)
			if err != nil || c.Deleted || c.Task.Version != now.Version || c.Task.Completed != now.Completed {
				t.Errorf("task %d: the feed ends at %+v, the database has %+v (%v)", task.ID, c.Task, now, err)
			}
		}
	}
}

// TestAFullSyncThenFollow: without a cursor, the feed is every task the user has (no
// tombstones: there is nothing to delete yet), and its cursor goes on from there.
func TestAFullSyncThenFollow(t *testing.T) {
	t.Parallel()
	s, ctx, me := testStore(t), context.Background(), testkit.NewUserID()
	kept, gone := mustCreate(t, s, me, "kept", nil), mustCreate(t, s, me, "gone", nil)
	if err := s.DeleteTask(ctx, me, gone.ID, Condition{}); err != nil {
		t.Fatal(err)
	}
	pages, cur := readFeed(t, s, me, Cursor{}, 1000)
	if got := titles(pages); !reflect.DeepEqual(got, []string{"kept"}) {
		t.Errorf("a full sync: %v, want [kept]", got)
	}
	s.UpdateTask(ctx, me, kept.ID, TaskPatch{Title: ptr("changed")}, Condition{})
	if pages, _ := readFeed(t, s, me, cur, 1000); !reflect.DeepEqual(titles(pages), []string{"changed"}) {
		t.Errorf("after the full sync: %v, want [changed]", titles(pages))
	}
}

// TestAListsCursorMissesNothing: following the feed from a list's X-Cursor brings every
// change made after the list, whether the list was empty, a page, or filtered.
func TestAListsCursorMissesNothing(t *testing.T) {
	t.Parallel()
	me := newTestAPI(testStore(t)).newUser(t)
	for _, query := range []string{"", "?status=completed", "?limit=1&offset=5"} {
		res := me.do(t, "GET", "/api/{me}/tasks"+query, "").wantStatus(http.StatusOK)
		cursor := res.Header().Get("X-Cursor")
		if cursor == "" {
			t.Fatalf("list %q has no X-Cursor", query)
		}
		created := me.create(t, "after the list "+query)
		var page struct {
			Changes []struct {
				Op   string   `json:"op"`
				Task taskJSON `json:"task"`
			} `json:"changes"`
			Cursor string `json:"cursor"`
			More   bool   `json:"more"`
		}
		me.do(t, "GET", "/api/{me}/changes?since="+url.QueryEscape(cursor), "").wantStatus(http.StatusOK).decode(&page)
		found := false
		for _, c := range page.Changes {
			found = found || c.Op == "upsert" && c.Task.ID == created.ID && c.Task.Version == created.Version
		}
		if !found || page.Cursor == "" || page.More {
			t.Errorf("list %q, then the feed from its X-Cursor: %+v, want the task created after it", query, page)
		}
	}
}

func TestChangesRefusesWhatItCannotServe(t *testing.T) {
	t.Parallel()
	api := newTestAPI(testStore(t))
	me, other := api.newUser(t), api.newUser(t)
	future := Cursor{since: snapshot{xmin: 1<<40 + 100, xmax: 1<<40 + 100}}.Encode(me.id)
	for _, c := range []struct {
		query string
		want  int
	}{
		{"?since=garbage", http.StatusBadRequest},
		{"?since=" + Cursor{}.Encode(other.id), http.StatusBadRequest},
		{"?limit=0", http.StatusBadRequest},
		{"?limit=1001", http.StatusBadRequest},
		{"?limit=1&limit=2", http.StatusBadRequest},
		{"?since=" + future, http.StatusGone},
	} {
		me.do(t, "GET", "/api/{me}/changes"+c.query, "").wantStatus(c.want).detail()
	}
}

// TestAnExpiredCursorIs410 prunes every tombstone older than a millisecond in the run's
// schema, so it is not parallel: the cursors of tests still running would expire.
func TestAnExpiredCursorIs410(t *testing.T) {
	s := storeVia(t, "", 5*time.Second, nil)
	feed := &Feed{db: s.db, retention: time.Millisecond}
	ctx := context.Background()
	me := newTestAPI(s).newUser(t)
	before := me.do(t, "GET", "/api/{me}/tasks", "").wantStatus(http.StatusOK).Header().Get("X-Cursor")
	task := me.create(t, "deleted, and its tombstone pruned")
	me.do(t, "DELETE", fmt.Sprintf("/api/{me}/tasks/%d", task.ID), "").wantStatus(http.StatusNoContent)
	time.Sleep(10 * time.Millisecond)
	if n, err := feed.PruneTombstones(ctx); err != nil || n < 1 {
		t.Fatalf("PruneTombstones = %d, %v", n, err)
	}
	if d := me.do(t, "GET", "/api/{me}/changes?since="+url.QueryEscape(before), "").wantStatus(http.StatusGone).detail(); !strings.Contains(d, "X-Cursor") {
		t.Errorf("detail %q does not say what to do", d)
	}
	after := me.do(t, "GET", "/api/{me}/tasks", "").wantStatus(http.StatusOK).Header().Get("X-Cursor")
	me.do(t, "GET", "/api/{me}/changes?since="+url.QueryEscape(after), "").wantStatus(http.StatusOK)
}

// TestPruningTakesBatches: more tombstones than a batch are all pruned, a batch at a time.
// Not parallel either, for the same reason.
func TestPruningTakesBatches(t *testing.T) {
	s := storeVia(t, "", 5*time.Second, nil)
	ctx, me := context.Background(), testkit.NewUserID()
	if _, err := s.pool.Exec(ctx, `INSERT INTO task_tombstones (user_id, id, deleted_at)
SELECT $1, -i, now() - interval '30 days' FROM generate_series(1, $2::int) AS i`, me, pruneBatch+10); err != nil {
		t.Fatal(err)
	}
	if n, err := testFeed(s).PruneTombstones(ctx); err != nil || n < pruneBatch+10 {
		t.Errorf("PruneTombstones = %d, %v, want at least %d", n, err, pruneBatch+10)
	}
	var left int
	s.pool.QueryRow(ctx, `SELECT count(*) FROM task_tombstones WHERE user_id = $1`, me).Scan(&left)
	if left != 0 {
		t.Errorf("%d tombstones older than the retention left", left)
	}
}

// TestACursorFromBeforeACrashCountsFromItsXmin: a crash empties changes_incarnation (it
// is unlogged), and may hand out again the ids of transactions that ended unwritten. A
// cursor from before it is read from its xmin (or from the id it knew on disk, if
// lower): what it had seen above comes again, and nothing above can be skipped. It
// empties the table for the whole run, so it is not parallel.
func TestACursorFromBeforeACrashCountsFromItsXmin(t *testing.T) {
	s, ctx, me := testStore(t), context.Background(), testkit.NewUserID()
	feed := testFeed(s)
	task := mustCreate(t, s, me, "before", nil)
	older, err := s.pool.Begin(ctx) // an older transaction, still open: the cursor's xmin
	if err != nil {
		t.Fatal(err)
	}
	defer older.Rollback(ctx)
	older.Exec(ctx, `SELECT pg_current_xact_id()`)
	if _, err := s.UpdateTask(ctx, me, task.ID, TaskPatch{Title: ptr("seen")}, Condition{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.pool.Exec(ctx, sqlMarkDurable); err != nil { // as a write's wake-up does
		t.Fatal(err)
	}
	cursor, err := feed.Now(ctx)
	if err != nil || cursor.incarnation == "" {
		t.Fatalf("Now = %+v, %v: want a cursor of an incarnation", cursor, err)
	}
	if pages, _ := readFeed(t, s, me, cursor, 100); len(titles(pages)) != 0 {
		t.Fatalf("the feed from now brought %v", titles(pages))
	}
	crash := func() {
		if _, err := s.pool.Exec(ctx, `DELETE FROM changes_incarnation`); err != nil { // as crash recovery does
			t.Fatal(err)
		}
	}
	incarnations := func() (n int) {
		s.pool.QueryRow(ctx, `SELECT count(*) FROM changes_incarnation`).Scan(&n)
		return n
	}
	crash()
	if _, _, err := listTasks(s, ctx, me, ListQuery{Status: "all", Sort: "created"}); err != nil || incarnations() != 1 {
		t.Errorf("after the crash, a list (%v) left %d incarnations, want 1", err, incarnations())
	}
	pages, next := readFeed(t, s, me, cursor, 100)
	if got := titles(pages); !reflect.DeepEqual(got, []string{"seen"}) {
		t.Errorf("after the crash, from the cursor of before it: %v, want [seen] again", got)
	}
	// A cursor made between a crash and the next incarnation has none, and is never
	// taken for the database's, even when the database has none either.
	crash()
	none := cursor
	none.incarnation = ""
	if pages, _ := readFeed(t, s, me, none, 100); !reflect.DeepEqual(titles(pages), []string{"seen"}) {
		t.Errorf("from a cursor of no incarnation: %v, want [seen] again", titles(pages))
	}
	older.Rollback(ctx)
	readFeed(t, s, me, next, 100)
	crash()
	if c, err := feed.Now(ctx); err != nil || incarnations() != 1 || c.incarnation == cursor.incarnation {
		t.Errorf("after the crash, Now = %+v, %v, %d incarnations: want a new one", c, err, incarnations())
	}
}

// TestACursorOfAnotherDatabaseIs410: a cursor from another database, or one that knew of
// more on disk than the database now has (a restore, a failover that lost commits),
// would miss or invent changes; it is told to list again. It changes the database's
// identity for the whole run, so it is not parallel.
func TestACursorOfAnotherDatabaseIs410(t *testing.T) {
	s, ctx, me := testStore(t), context.Background(), testkit.NewUserID()
	feed := testFeed(s)
	mustCreate(t, s, me, "here", nil)
	cursor, err := feed.Now(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := feed.Changes(ctx, me, cursor, 10, func(*Change) error { return nil }); err != nil {
		t.Fatalf("the cursor of this database: %v", err)
	}
	for _, c := range []struct{ name, change, undo string }{
		{"another database", `UPDATE changes_durable SET database = 'another'`, `UPDATE changes_durable SET database = '` + cursor.database + `'`},
		{"a restore", `UPDATE changes_durable SET xid = '3'`, `UPDATE changes_durable SET xid = greatest(xid, '` + strconv.FormatUint(cursor.durable, 10) + `')`},
	} {
		if _, err := s.pool.Exec(ctx, c.change); err != nil {
			t.Fatal(err)
		}
		_, _, err := feed.Changes(ctx, me, cursor, 10, func(*Change) error { return nil })
		if _, undo := s.pool.Exec(ctx, c.undo); undo != nil {
			t.Fatal(undo)
		}
		if !errors.Is(err, ErrCursorExpired) {
			t.Errorf("after %s: %v, want ErrCursorExpired", c.name, err)
		}
	}
}

// BenchmarkFeedRead: what a woken stream's read costs the database, one change among a
// user's 50 tasks (as in make bench) or 10,000 (MAX_TASKS_PER_USER): the rows are found by
// the user's index and filtered by their stamp (docs/performance.md, "The feed of
// changes"). go test -run '^$' -bench FeedRead, with the test database.
func BenchmarkFeedRead(b *testing.B) {
	s, ctx := testStore(b), context.Background()
	for _, n := range []int{50, 10000} {
		b.Run(fmt.Sprintf("tasks=%d", n), func(b *testing.B) {
			me := testkit.NewUserID()
			if _, err := s.pool.Exec(ctx, `INSERT INTO tasks (user_id, title, description)
SELECT $1, 'task ' || i, left(repeat(md5(i::text), 4), 100) FROM generate_series(1, $2) AS i`, me, n); err != nil {
				b.Fatal(err)
			}
			feed := testFeed(s)
			from, err := feed.Now(ctx)
			if err != nil {
				b.Fatal(err)
			}
			var id int64
			s.pool.QueryRow(ctx, `SELECT min(id) FROM tasks WHERE user_id = $1`, me).Scan(&id)
			if _, _, err := s.ToggleTask(ctx, me, id, Condition{}, nil); err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				changes := 0
				if _, _, err := feed.Changes(ctx, me, from, 100, func(*Change) error { changes++; return nil }); err != nil || changes != 1 {
					b.Fatalf("%d changes, %v; want the one", changes, err)
				}
			}
		})
	}
}
