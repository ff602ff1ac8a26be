package main

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"

	"taskflow/internal/feed"
	"taskflow/internal/pg"
	"taskflow/internal/task"
	"taskflow/internal/testkit"
)

// futureCursor is a cursor of userID's from transactions the database has not made yet:
// one from before a restore.
func futureCursor(t *testing.T, userID string) string {
	t.Helper()
	c, err := feed.CursorAt("1099511627876:1099511627876:", "00000000000000000000000000000000//3")
	if err != nil {
		t.Fatal(err)
	}
	return c.Encode(userID)
}

// readFeed reads userID's feed from c to its present end, a page of limit at a time, and
// returns the pages and where the feed goes on.
func readFeed(t *testing.T, s *Store, userID string, c feed.Cursor, limit int) ([][]feed.Change, feed.Cursor) {
	t.Helper()
	var pages [][]feed.Change
	for {
		page, err := testFeed(s).Read(context.Background(), userID, c, limit)
		if err != nil {
			t.Fatal(err)
		}
		pages, c = append(pages, page.Changes), page.Next
		if !page.More {
			return pages, c
		}
	}
}

func titles(pages [][]feed.Change) []string {
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
	late, err := s.db.Pool().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer late.Rollback(ctx)
	var lateXID, earlyXID uint64
	if err := late.QueryRow(ctx, `UPDATE tasks SET title = 'late', version = nextval('task_versions'), changed_xid = pg_current_xact_id()
WHERE id = $1 RETURNING changed_xid::text::bigint`, a.ID).Scan(&lateXID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UpdateTask(ctx, me, b.ID, task.Patch{Title: ptr("early")}, Condition{}); err != nil {
		t.Fatal(err)
	}
	s.db.Pool().QueryRow(ctx, `SELECT changed_xid::text::bigint FROM tasks WHERE id = $1`, b.ID).Scan(&earlyXID)
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
	var tasks []task.Task
	for i := range 25 {
		tasks = append(tasks, mustCreate(t, s, me, fmt.Sprint("task ", i), nil))
	}
	for i, tk := range tasks {
		switch i % 5 {
		case 0:
			s.ToggleTask(ctx, me, tk.ID, Condition{}, nil)
			s.ToggleTask(ctx, me, tk.ID, Condition{}, nil)
		case 1:
			if err := s.DeleteTask(ctx, me, tk.ID, Condition{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	pages, _ := readFeed(t, s, me, start, 7)
	if len(pages) != 4 {
		t.Errorf("%d pages of at most 7 for 25 changes, want 4", len(pages))
	}
	latest := map[int64]feed.Change{}
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
	for i, tk := range tasks {
		c, ok := latest[tk.ID]
		switch {
		case !ok:
			t.Errorf("task %d is not in the feed", tk.ID)
		case i%5 == 1 && (!c.Deleted || c.Task.Version <= tk.Version):
			t.Errorf("deleted task %d: %+v, want a tombstone newer than version %d", tk.ID, c, tk.Version)
		case i%5 != 1:
			now, err := s.GetTask(ctx, me, tk.ID)
			if err != nil || c.Deleted || c.Task.Version != now.Version || c.Task.Completed != now.Completed || !c.Created {
				t.Errorf("task %d: the feed ends at %+v, the database has %+v (%v); want it created since the start", tk.ID, c, now, err)
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
	pages, cur := readFeed(t, s, me, feed.Cursor{}, 1000)
	if got := titles(pages); !reflect.DeepEqual(got, []string{"kept"}) {
		t.Errorf("a full sync: %v, want [kept]", got)
	}
	s.UpdateTask(ctx, me, kept.ID, task.Patch{Title: ptr("changed")}, Condition{})
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
	future := futureCursor(t, me.id)
	for _, c := range []struct {
		query string
		want  int
	}{
		{"?since=garbage", http.StatusBadRequest},
		{"?since=" + feed.Cursor{}.Encode(other.id), http.StatusBadRequest},
		{"?limit=0", http.StatusBadRequest},
		{"?limit=1001", http.StatusBadRequest},
		{"?limit=1&limit=2", http.StatusBadRequest},
		{"?since=" + future, http.StatusGone},
		{"?since=" + malformedCursor(me.id, "\xff\xfe"), http.StatusBadRequest},
		{"?since=" + malformedCursor(me.id, "\x00"), http.StatusBadRequest},
	} {
		me.do(t, "GET", "/api/{me}/changes"+c.query, "").wantStatus(c.want).detail()
	}
}

// malformedCursor is userID's cursor in the API's format but for an incarnation that
// begins with junk (bytes that are not UTF-8, or a NUL), which the database would refuse.
func malformedCursor(userID, junk string) string {
	incarnation := junk + strings.Repeat("a", 32-len(junk))
	tag := sha256.Sum256([]byte(userID))
	text := fmt.Sprintf("2|%x|%s/%s/3|3:3:|0:0:|0|0", tag[:4], strings.Repeat("0", 32), incarnation)
	return base64.RawURLEncoding.EncodeToString([]byte(text))
}

// TestAnExpiredCursorIs410 prunes every tombstone older than a millisecond in the run's
// schema, so it is not parallel: the cursors of tests still running would expire.
func TestAnExpiredCursorIs410(t *testing.T) {
	s := storeVia(t, "", 5*time.Second, nil)
	short := feed.New(s.db, time.Millisecond, newUsers())
	ctx := context.Background()
	me := newTestAPI(s).newUser(t)
	before := me.do(t, "GET", "/api/{me}/tasks", "").wantStatus(http.StatusOK).Header().Get("X-Cursor")
	tk := me.create(t, "deleted, and its tombstone pruned")
	me.do(t, "DELETE", fmt.Sprintf("/api/{me}/tasks/%d", tk.ID), "").wantStatus(http.StatusNoContent)
	time.Sleep(10 * time.Millisecond)
	if n, err := short.PruneTombstones(ctx); err != nil || n < 1 {
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
	if _, err := s.db.Pool().Exec(ctx, `INSERT INTO task_tombstones (user_id, id, deleted_at)
SELECT $1, -i, now() - interval '30 days' FROM generate_series(1, $2::int) AS i`, me, pg.PruneBatch+10); err != nil {
		t.Fatal(err)
	}
	if n, err := testFeed(s).PruneTombstones(ctx); err != nil || n < pg.PruneBatch+10 {
		t.Errorf("PruneTombstones = %d, %v, want at least %d", n, err, pg.PruneBatch+10)
	}
	var left int
	s.db.Pool().QueryRow(ctx, `SELECT count(*) FROM task_tombstones WHERE user_id = $1`, me).Scan(&left)
	if left != 0 {
		t.Errorf("%d tombstones older than the retention left", left)
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
			if _, err := s.db.Pool().Exec(ctx, `INSERT INTO tasks (user_id, title, description)
SELECT $1, 'tk ' || i, left(repeat(md5(i::text), 4), 100) FROM generate_series(1, $2) AS i`, me, n); err != nil {
				b.Fatal(err)
			}
			f := testFeed(s)
			from, err := f.Now(ctx)
			if err != nil {
				b.Fatal(err)
			}
			var id int64
			s.db.Pool().QueryRow(ctx, `SELECT min(id) FROM tasks WHERE user_id = $1`, me).Scan(&id)
			if _, _, err := s.ToggleTask(ctx, me, id, Condition{}, nil); err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				if page, err := f.Read(ctx, me, from, 100); err != nil || len(page.Changes) != 1 {
					b.Fatalf("%d changes, %v; want the one", len(page.Changes), err)
				}
			}
		})
	}
}
