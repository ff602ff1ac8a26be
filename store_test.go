package main

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"taskflow/internal/pg"
	"taskflow/internal/task"
	"taskflow/internal/testkit"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

func ptr[T any](v T) *T { return &v }

// listTasks collects what Store.ListTasks streams.
func listTasks(s *Store, ctx context.Context, userID string, q ListQuery) ([]task.Task, int64, error) {
	var tasks []task.Task
	head, err := s.ListTasks(ctx, userID, q, func(t *task.Task) error { tasks = append(tasks, *t); return nil })
	return tasks, head.Total, err
}

func mustCreate(t *testing.T, s *Store, userID, title string, description *string) task.Task {
	t.Helper()
	tk, _, err := s.CreateTask(context.Background(), userID, title, description, nil)
	if err != nil {
		t.Fatalf("CreateTask(%q): %v", title, err)
	}
	return tk
}

func TestStoreCreateAndGet(t *testing.T) {
	t.Parallel()
	s, ctx, me := testStore(t), context.Background(), testkit.NewUserID()

	before := time.Now().Add(-time.Second)
	created := mustCreate(t, s, me, "Buy milk", ptr("2 litres"))
	if created.ID <= 0 || created.UserID != me || created.Title != "Buy milk" || *created.Description != "2 litres" || created.Completed {
		t.Fatalf("created %+v", created)
	}
	if created.CreatedAt.Before(before) || !created.UpdatedAt.Equal(created.CreatedAt) {
		t.Errorf("timestamps created %v updated %v, want now and equal", created.CreatedAt, created.UpdatedAt)
	}
	got, err := s.GetTask(ctx, me, created.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, created) {
		t.Errorf("got %+v, want %+v", got, created)
	}

	noDesc := mustCreate(t, s, me, "No description", nil)
	if noDesc.Description != nil {
		t.Errorf("description %q, want nil", *noDesc.Description)
	}
}

func TestStoreScopesEveryStatementByUser(t *testing.T) {
	t.Parallel()
	s, ctx := testStore(t), context.Background()
	owner, other := testkit.NewUserID(), testkit.NewUserID()
	tk := mustCreate(t, s, owner, "Private", nil)

	if _, err := s.GetTask(ctx, other, tk.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetTask by another user: %v, want ErrNotFound", err)
	}
	if _, err := s.UpdateTask(ctx, other, tk.ID, task.Patch{Title: ptr("Hijacked")}, Condition{}); !errors.Is(err, ErrNotFound) {
		t.Errorf("UpdateTask by another user: %v, want ErrNotFound", err)
	}
	if _, _, err := s.ToggleTask(ctx, other, tk.ID, Condition{}, nil); !errors.Is(err, ErrNotFound) {
		t.Errorf("ToggleTask by another user: %v, want ErrNotFound", err)
	}
	if err := s.DeleteTask(ctx, other, tk.ID, Condition{}); !errors.Is(err, ErrNotFound) {
		t.Errorf("DeleteTask by another user: %v, want ErrNotFound", err)
	}
	if tasks, total, err := listTasks(s, ctx, other, ListQuery{Status: "all", Sort: "created", Desc: true}); err != nil || len(tasks) != 0 || total != 0 {
		t.Errorf("ListTasks by another user: %d tasks, total %d, err %v; want none", len(tasks), total, err)
	}

	got, err := s.GetTask(ctx, owner, tk.ID)
	if err != nil || got.Title != "Private" || got.Completed {
		t.Errorf("after the other user's attempts the task is %+v, %v; want it unchanged", got, err)
	}
}

func TestStoreUpdateChangesOnlyTheGivenFields(t *testing.T) {
	t.Parallel()
	s, ctx, me := testStore(t), context.Background(), testkit.NewUserID()
	tk := mustCreate(t, s, me, "Original", ptr("keep me"))

	tests := []struct {
		name  string
		patch task.Patch
		want  func(task.Task) string // "" when right
	}{
		{"a title alone keeps the description and state", task.Patch{Title: ptr("Renamed")}, func(t task.Task) string {
			if t.Title != "Renamed" || t.Description == nil || *t.Description != "keep me" || t.Completed {
				return "title not applied alone"
			}
			return ""
		}},
		{"completed alone keeps title and description", task.Patch{Completed: ptr(true)}, func(t task.Task) string {
			if !t.Completed || t.Title != "Renamed" || *t.Description != "keep me" {
				return "completed not applied alone"
			}
			return ""
		}},
		{"a new description replaces the old", task.Patch{SetDescription: true, Description: ptr("new")}, func(t task.Task) string {
			if t.Description == nil || *t.Description != "new" || t.Title != "Renamed" {
				return "description not replaced"
			}
			return ""
		}},
		{"a null description clears it", task.Patch{SetDescription: true}, func(t task.Task) string {
			if t.Description != nil || t.Title != "Renamed" || !t.Completed {
				return "description not cleared"
			}
			return ""
		}},
	}
	prev := tk
	for _, tt := range tests {
		got, err := s.UpdateTask(ctx, me, tk.ID, tt.patch, Condition{})
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if msg := tt.want(got); msg != "" {
			t.Errorf("%s: %s: got %+v", tt.name, msg, got)
		}
		if !got.CreatedAt.Equal(tk.CreatedAt) {
			t.Errorf("%s: created_at moved from %v to %v", tt.name, tk.CreatedAt, got.CreatedAt)
		}
		if !got.UpdatedAt.After(prev.UpdatedAt) {
			t.Errorf("%s: updated_at %v, want after %v", tt.name, got.UpdatedAt, prev.UpdatedAt)
		}
		prev = got
	}
}

func TestStoreToggleIsAtomicUnderConcurrency(t *testing.T) {
	t.Parallel()
	s, ctx, me := testStore(t), context.Background(), testkit.NewUserID()
	tk := mustCreate(t, s, me, "Flip me", nil)

	// An odd number of concurrent toggles must end flipped and an even number must end
	// where it started: a read-modify-write toggle loses some and fails one of the two.
	for _, n := range []int{31, 32} {
		before, err := s.GetTask(ctx, me, tk.ID)
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _, err := s.ToggleTask(ctx, me, tk.ID, Condition{}, nil)
				errs <- err
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		after, err := s.GetTask(ctx, me, tk.ID)
		if err != nil {
			t.Fatal(err)
		}
		if want := before.Completed != (n%2 == 1); after.Completed != want {
			t.Errorf("after %d concurrent toggles completed = %v, want %v", n, after.Completed, want)
		}
		if !after.UpdatedAt.After(before.UpdatedAt) {
			t.Errorf("toggle did not refresh updated_at")
		}
	}
}

func TestStoreDelete(t *testing.T) {
	t.Parallel()
	s, ctx, me := testStore(t), context.Background(), testkit.NewUserID()
	tk := mustCreate(t, s, me, "Doomed", nil)
	if err := s.DeleteTask(ctx, me, tk.ID, Condition{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetTask(ctx, me, tk.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetTask after delete: %v, want ErrNotFound", err)
	}
	if err := s.DeleteTask(ctx, me, tk.ID, Condition{}); !errors.Is(err, ErrNotFound) {
		t.Errorf("second delete: %v, want ErrNotFound", err)
	}
}

func TestStoreConstraintsBackTheValidation(t *testing.T) {
	t.Parallel()
	s, me := testStore(t), testkit.NewUserID()
	// These bypass the handler's validation on purpose: the schema is the last line.
	cases := map[string]struct {
		userID, title string
		description   *string
	}{
		"empty title":            {me, "", nil},
		"blank title":            {me, "   ", nil},
		"title of 201 chars":     {me, strings.Repeat("é", 201), nil},
		"description of 1001":    {me, "ok", ptr(strings.Repeat("d", 1001))},
		"empty user id":          {"", "ok", nil},
		"user id over 255 bytes": {strings.Repeat("u", 256), "ok", nil},
	}
	for name, c := range cases {
		if _, _, err := s.CreateTask(context.Background(), c.userID, c.title, c.description, nil); !errors.Is(err, pg.ErrRejected) {
			t.Errorf("%s: %v, want pg.ErrRejected", name, err)
		}
	}
	if _, _, err := s.CreateTask(context.Background(), me, strings.Repeat("é", 200), ptr(strings.Repeat("d", 1000)), nil); err != nil {
		t.Errorf("the largest valid task: %v", err)
	}
}

// insertTies adds n tasks in one statement, so they share created_at and updated_at
// (now() is fixed per transaction) and, when title is fixed, the title too.
func insertTies(t *testing.T, s *Store, userID string, n int, title string, completedEvery int) {
	t.Helper()
	_, err := s.db.Pool().Exec(context.Background(), `INSERT INTO tasks (user_id, title, completed)
SELECT $1, $2, (i % $4 = 0) FROM generate_series(1, $3) AS i`, userID, title, n, completedEvery)
	if err != nil {
		t.Fatal(err)
	}
}

func TestStoreListPagesAreStableAndComplete(t *testing.T) {
	t.Parallel()
	s, ctx, me := testStore(t), context.Background(), testkit.NewUserID()
	insertTies(t, s, me, 23, "same", 3) // every third completed: 7 of 23
	mustCreate(t, s, me, "alpha", nil)
	mustCreate(t, s, me, "zulu", nil)
	wantTotal := map[string]int64{"all": 25, "pending": 18, "completed": 7}

	for _, status := range []string{"all", "pending", "completed"} {
		for _, sort := range []string{"created", "updated", "title"} {
			for _, desc := range []bool{false, true} {
				q := ListQuery{Status: status, Sort: sort, Desc: desc}
				name := fmt.Sprintf("status=%s sort=%s desc=%v", status, sort, desc)
				whole, total, err := listTasks(s, ctx, me, q)
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				if total != wantTotal[status] || int64(len(whole)) != total {
					t.Errorf("%s: %d tasks, total %d; want %d", name, len(whole), total, wantTotal[status])
				}
				for i := 1; i < len(whole); i++ {
					if !ordered(whole[i-1], whole[i], sort, desc) {
						t.Errorf("%s: %+v before %+v", name, whole[i-1], whole[i])
					}
				}
				for _, tk := range whole {
					if status == "pending" && tk.Completed || status == "completed" && !tk.Completed {
						t.Errorf("%s: returned %+v", name, tk)
					}
				}
				// Pages of 4 must concatenate to exactly the whole list.
				var paged []task.Task
				for offset := int64(0); ; offset += 4 {
					q.Limit, q.Offset = 4, offset
					page, total, err := listTasks(s, ctx, me, q)
					if err != nil {
						t.Fatal(err)
					}
					if total != wantTotal[status] {
						t.Errorf("%s offset %d: total %d, want %d", name, offset, total, wantTotal[status])
					}
					if len(page) == 0 {
						break
					}
					paged = append(paged, page...)
				}
				if fmt.Sprint(ids(paged)) != fmt.Sprint(ids(whole)) {
					t.Errorf("%s: pages %v, whole list %v", name, ids(paged), ids(whole))
				}
			}
		}
	}
}

// ordered reports whether a may precede b in a list sorted by key, ties broken by id.
func ordered(a, b task.Task, key string, desc bool) bool {
	cmp := 0
	switch key {
	case "created":
		cmp = a.CreatedAt.Compare(b.CreatedAt)
	case "updated":
		cmp = a.UpdatedAt.Compare(b.UpdatedAt)
	case "title":
		cmp = strings.Compare(a.Title, b.Title) // the test database's collation is C.UTF-8
	}
	if cmp == 0 {
		cmp = int(a.ID - b.ID)
		if cmp == 0 {
			return false
		}
	}
	return (cmp < 0) != desc
}

func ids(tasks []task.Task) []int64 {
	out := make([]int64, len(tasks))
	for i, t := range tasks {
		out[i] = t.ID
	}
	return out
}

func TestStoreListPastTheEndStillCounts(t *testing.T) {
	t.Parallel()
	s, me := testStore(t), testkit.NewUserID()
	insertTies(t, s, me, 3, "x", 2)
	page, total, err := listTasks(s, context.Background(), me, ListQuery{Status: "all", Sort: "created", Desc: true, Limit: 10, Offset: 50})
	if err != nil || len(page) != 0 || total != 3 {
		t.Errorf("page %v total %d err %v; want empty page, total 3", page, total, err)
	}
}

// A statement that outlives the store's deadline is pg.ErrUnavailable, and the pool serves
// again right after.
func TestStoreDeadline(t *testing.T) {
	t.Parallel()
	s := storeVia(t, "", 300*time.Millisecond, func(c *pgxpool.Config) { c.MaxConns = 1 })
	ctx, me := context.Background(), testkit.NewUserID()
	tk := mustCreate(t, s, me, "held", nil)

	// A toggle waiting for a row lock another session holds fails at its deadline. The
	// lock is let go after 10 s in any case, so that a missing deadline fails this test
	// rather than hanging it.
	tx, err := testStore(t).db.Pool().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `SELECT 1 FROM tasks WHERE id = $1 FOR UPDATE`, tk.ID); err != nil {
		t.Fatal(err)
	}
	release := time.AfterFunc(10*time.Second, func() { tx.Rollback(ctx) })
	_, _, err = s.ToggleTask(ctx, me, tk.ID, Condition{}, nil)
	release.Stop()
	tx.Rollback(ctx)
	if !errors.Is(err, pg.ErrUnavailable) {
		t.Fatalf("toggle held past its deadline: %v, want pg.ErrUnavailable", err)
	}
	if _, _, err := s.ToggleTask(ctx, me, tk.ID, Condition{}, nil); err != nil {
		t.Fatalf("toggle after a timed-out one: %v", err)
	}
}

// TestCreatesStopAtTheTaskLimit races creates at the limit: the count is checked in the
// statement that inserts, so exactly the limit is reached, never passed.
func TestCreatesStopAtTheTaskLimit(t *testing.T) {
	t.Parallel()
	s := storeVia(t, "", 5*time.Second, nil)
	s.maxTasks = 20
	ctx, me := context.Background(), testkit.NewUserID()
	for i := 0; i < s.maxTasks-5; i++ {
		mustCreate(t, s, me, fmt.Sprint("before ", i), nil)
	}
	const racers = 50
	var wg sync.WaitGroup
	errs := make(chan error, racers)
	for i := 0; i < racers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _, err := s.CreateTask(ctx, me, "racer", nil, nil)
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	created, refused := 0, 0
	for err := range errs {
		switch {
		case err == nil:
			created++
		case errors.Is(err, ErrTaskLimit):
			refused++
		default:
			t.Fatal(err)
		}
	}
	_, total, err := listTasks(s, ctx, me, ListQuery{Status: "all", Sort: "created", Desc: true, Limit: 1})
	if err != nil {
		t.Fatal(err)
	}
	if created != 5 || refused != racers-5 || total != int64(s.maxTasks) {
		t.Errorf("%d created, %d refused, %d owned; want 5, %d and %d", created, refused, total, racers-5, s.maxTasks)
	}

	// A delete makes room for exactly one more.
	_, _, err = s.CreateTask(ctx, me, "one too many", nil, nil)
	if !errors.Is(err, ErrTaskLimit) {
		t.Fatalf("create at the limit: %v, want ErrTaskLimit", err)
	}
	tasks, _, _ := listTasks(s, ctx, me, ListQuery{Status: "all", Sort: "created", Desc: true, Limit: 1})
	if err := s.DeleteTask(ctx, me, tasks[0].ID, Condition{}); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, s, me, "in the room a delete made", nil)
	if _, _, err := s.CreateTask(ctx, me, "one too many again", nil, nil); !errors.Is(err, ErrTaskLimit) {
		t.Errorf("create at the limit after the refill: %v, want ErrTaskLimit", err)
	}
	// Another user is not affected.
	mustCreate(t, s, testkit.NewUserID(), "someone else", nil)
}

// TestTheListDigestSeesChangesInAnyCommitOrder: versions are taken when a write starts,
// so writes may commit out of version order; the list's head must still change.
func TestTheListDigestSeesChangesInAnyCommitOrder(t *testing.T) {
	t.Parallel()
	s, ctx, me := testStore(t), context.Background(), testkit.NewUserID()
	a, b := mustCreate(t, s, me, "a", nil), mustCreate(t, s, me, "b", nil)
	head := func() ListHead {
		h, err := s.ListTasks(ctx, me, ListQuery{Status: "all", Sort: "created", Desc: true}, func(*task.Task) error { return nil })
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	begin := func(id int64) pgx.Tx {
		tx, err := s.db.Pool().Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tx.Rollback(ctx) })
		if _, err := tx.Exec(ctx, `UPDATE tasks SET title = title || '!', version = nextval('task_versions') WHERE id = $1`, id); err != nil {
			t.Fatal(err)
		}
		return tx
	}
	older := begin(a.ID) // takes the lower version
	newer := begin(b.ID)
	if err := newer.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	before := head()
	if err := older.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if after := head(); after.Total == before.Total && after.Digest == before.Digest {
		t.Errorf("the list's head %+v did not change when the older write committed", after)
	}
}

// TestEveryWriterCountsTowardsTheLimit: tasks written around the service (psql, an older
// instance) count too.
func TestEveryWriterCountsTowardsTheLimit(t *testing.T) {
	t.Parallel()
	s := storeVia(t, "", 5*time.Second, nil)
	s.maxTasks = 3
	ctx, me := context.Background(), testkit.NewUserID()
	if _, err := s.db.Pool().Exec(ctx, `INSERT INTO tasks (user_id, title) SELECT $1, 'by hand ' || i FROM generate_series(1, 3) AS i`, me); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.CreateTask(ctx, me, "one too many", nil, nil); !errors.Is(err, ErrTaskLimit) {
		t.Fatalf("create after 3 tasks written by hand: %v, want ErrTaskLimit", err)
	}
	if _, err := s.db.Pool().Exec(ctx, `DELETE FROM tasks WHERE id = (SELECT min(id) FROM tasks WHERE user_id = $1)`, me); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, s, me, "room made by hand", nil)
}
