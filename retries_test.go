package main

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"taskflow/internal/testkit"

	"github.com/jackc/pgx/v5"
)

// The contract's "Safe retries and concurrent edits": Idempotency-Key on create and
// toggle, ETags, If-None-Match and If-Match. The faults behind a lost answer are in
// fault_test.go.

func TestIdempotentCreate(t *testing.T) {
	t.Parallel()
	api := newTestAPI(testStore(t))
	me := api.newUser(t)
	create := func(t *testing.T, key, body string) response {
		return me.doWith(t, "POST", "/api/{me}/tasks", body, map[string]string{"Idempotency-Key": key})
	}
	count := func(t *testing.T, u *user) string {
		return u.do(t, "GET", "/api/{me}/tasks", "").wantStatus(http.StatusOK).Header().Get("X-Total-Count")
	}

	t.Run("the same key again gets the first answer and writes nothing", func(t *testing.T) {
		first := create(t, "key-1", `{"title":"once"}`).wantStatus(http.StatusCreated)
		if first.Header().Get("Idempotent-Replayed") != "" {
			t.Error("the first answer says it is replayed")
		}
		again := create(t, "key-1", `{"title":"once"}`).wantStatus(http.StatusCreated)
		if again.Body.String() != first.Body.String() || again.Header().Get("Location") != first.Header().Get("Location") ||
			again.Header().Get("ETag") != first.Header().Get("ETag") {
			t.Errorf("replay %s %v, first %s %v", again.Body, again.Header(), first.Body, first.Header())
		}
		if again.Header().Get("Idempotent-Replayed") != "true" {
			t.Errorf("Idempotent-Replayed %q on the replay", again.Header().Get("Idempotent-Replayed"))
		}
		if n := count(t, me); n != "1" {
			t.Errorf("%s tasks after a create sent twice with one key, want 1", n)
		}
	})
	t.Run("the same key with another request is 422", func(t *testing.T) {
		d := create(t, "key-1", `{"title":"twice"}`).wantStatus(http.StatusUnprocessableEntity).detail()
		if !strings.Contains(d, "Idempotency-Key") {
			t.Errorf("detail %q", d)
		}
	})
	t.Run("another user's key is another key", func(t *testing.T) {
		other := api.newUser(t)
		other.doWith(t, "POST", "/api/{me}/tasks", `{"title":"once"}`, map[string]string{"Idempotency-Key": "key-1"}).
			wantStatus(http.StatusCreated)
		if n := count(t, other); n != "1" {
			t.Errorf("the other user has %s tasks, want 1", n)
		}
	})
	t.Run("a malformed key is 400", func(t *testing.T) {
		for _, key := range []string{"", " ", "has space", strings.Repeat("k", 256), "é", "tab\there"} {
			create(t, key, `{"title":"x"}`).wantStatus(http.StatusBadRequest).detail()
		}
		create(t, strings.Repeat("k", 255), `{"title":"longest key"}`).wantStatus(http.StatusCreated)
	})
	t.Run("an expired key is a new request", func(t *testing.T) {
		first := create(t, "key-old", `{"title":"old"}`).wantStatus(http.StatusCreated)
		store := testStore(t)
		if _, err := store.db.Pool().Exec(context.Background(), `UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE user_id = $1 AND key = 'key-old'`, me.id); err != nil {
			t.Fatal(err)
		}
		if n, err := store.PruneKeys(context.Background()); err != nil || n < 1 {
			t.Fatalf("PruneKeys = %d, %v", n, err)
		}
		again := create(t, "key-old", `{"title":"old"}`).wantStatus(http.StatusCreated)
		if again.Header().Get("Idempotent-Replayed") != "" || again.Header().Get("Location") == first.Header().Get("Location") {
			t.Errorf("an expired key was replayed: %v", again.Header())
		}
	})
}

// TestConcurrentRequestsWithOneKey: 20 requests with one key at once write once, and
// every one of them gets the same answer.
func TestConcurrentRequestsWithOneKey(t *testing.T) {
	t.Parallel()
	me := newTestAPI(testStore(t)).newUser(t)
	race := func(t *testing.T, method, path, body string) []response {
		var wg sync.WaitGroup
		answers := make([]response, 20)
		for i := range answers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				answers[i] = me.doWith(t, method, path, body, map[string]string{"Idempotency-Key": "raced-" + method})
			}()
		}
		wg.Wait()
		for _, a := range answers[1:] {
			if a.Code != answers[0].Code || a.Body.String() != answers[0].Body.String() {
				t.Fatalf("answers differ: %d %s and %d %s", a.Code, a.Body, answers[0].Code, answers[0].Body)
			}
		}
		return answers
	}
	created := race(t, "POST", "/api/{me}/tasks", `{"title":"raced"}`)[0].wantStatus(http.StatusCreated).task()
	if n := me.do(t, "GET", "/api/{me}/tasks", "").Header().Get("X-Total-Count"); n != "1" {
		t.Errorf("%s tasks after 20 creates with one key, want 1", n)
	}
	toggled := race(t, "PATCH", fmt.Sprintf("/api/{me}/tasks/%d/complete", created.ID), "")[0].wantStatus(http.StatusOK).task()
	now := me.do(t, "GET", fmt.Sprintf("/api/{me}/tasks/%d", created.ID), "").wantStatus(http.StatusOK).task()
	if !toggled.Completed || !now.Completed {
		t.Errorf("after 20 toggles with one key: answered %v, stored %v; want flipped once", toggled.Completed, now.Completed)
	}
}

func TestETagsAndConditionalRequests(t *testing.T) {
	t.Parallel()
	me := newTestAPI(testStore(t)).newUser(t)
	res := me.do(t, "POST", "/api/{me}/tasks", `{"title":"watched"}`).wantStatus(http.StatusCreated)
	etag := res.Header().Get("ETag")
	if !strings.HasPrefix(etag, `"`) || !strings.HasSuffix(etag, `"`) || len(etag) < 3 {
		t.Fatalf("ETag %q, want a strong entity tag", etag)
	}
	path := fmt.Sprintf("/api/{me}/tasks/%d", res.task().ID)
	ifNoneMatch := func(tag string) map[string]string { return map[string]string{"If-None-Match": tag} }
	ifMatch := func(tag string) map[string]string { return map[string]string{"If-Match": tag} }

	t.Run("a GET with the current ETag is 304 without a body", func(t *testing.T) {
		if got := me.do(t, "GET", path, "").wantStatus(http.StatusOK).Header().Get("ETag"); got != etag {
			t.Errorf("GET ETag %q, want the create's %q", got, etag)
		}
		for _, tag := range []string{etag, "W/" + etag, `"nope", ` + etag, "*"} {
			nm := me.doWith(t, "GET", path, "", ifNoneMatch(tag)).wantStatus(http.StatusNotModified)
			if nm.Body.Len() != 0 || nm.Header().Get("ETag") != etag {
				t.Errorf("If-None-Match %s: body %q, ETag %q", tag, nm.Body, nm.Header().Get("ETag"))
			}
		}
		me.doWith(t, "GET", path, "", ifNoneMatch(`"0"`)).wantStatus(http.StatusOK)
	})

	list := "/api/{me}/tasks?sort=title&order=asc"
	listETag := me.do(t, "GET", list, "").wantStatus(http.StatusOK).Header().Get("ETag")
	t.Run("a list with the current ETag is 304", func(t *testing.T) {
		if nm := me.doWith(t, "GET", list, "", ifNoneMatch(listETag)).wantStatus(http.StatusNotModified); nm.Body.Len() != 0 {
			t.Errorf("304 with a body %q", nm.Body)
		}
		if other := me.do(t, "GET", "/api/{me}/tasks", "").Header().Get("ETag"); other == listETag {
			t.Errorf("two orders of one list share the ETag %s", other)
		}
	})

	t.Run("a stale If-Match is 412 and changes nothing", func(t *testing.T) {
		changed := me.do(t, "PUT", path, `{"title":"changed"}`).wantStatus(http.StatusOK)
		if changed.Header().Get("ETag") == etag {
			t.Fatal("a change kept the ETag")
		}
		for _, c := range []struct{ method, path, body string }{
			{"PUT", path, `{"title":"lost update"}`},
			{"PATCH", path + "/complete", ""},
			{"DELETE", path, ""},
		} {
			for _, tag := range []string{etag, "W/" + changed.Header().Get("ETag"), `"x"`} {
				d := me.doWith(t, c.method, c.path, c.body, ifMatch(tag)).wantStatus(http.StatusPreconditionFailed).detail()
				if !strings.Contains(d, "changed") {
					t.Errorf("%s If-Match %s: detail %q", c.method, tag, d)
				}
			}
		}
		if got := me.do(t, "GET", path, "").wantStatus(http.StatusOK).task(); got.Title != "changed" || got.Completed {
			t.Errorf("after the refused writes the task is %+v", got)
		}
		etag = changed.Header().Get("ETag")
	})

	t.Run("the current If-Match or * lets a write through", func(t *testing.T) {
		next := me.doWith(t, "PATCH", path+"/complete", "", ifMatch(`"1", `+etag)).wantStatus(http.StatusOK).Header().Get("ETag")
		next = me.doWith(t, "PUT", path, `{"title":"again"}`, ifMatch(next)).wantStatus(http.StatusOK).Header().Get("ETag")
		me.doWith(t, "PUT", path, `{"title":"star"}`, ifMatch("*")).wantStatus(http.StatusOK)
		me.doWith(t, "DELETE", path, "", ifMatch(next)).wantStatus(http.StatusPreconditionFailed)
		me.doWith(t, "DELETE", path, "", ifMatch("*")).wantStatus(http.StatusNoContent)
		// On a task that is gone, any If-Match is a 404: there is nothing to compare.
		me.doWith(t, "PUT", path, `{"title":"ghost"}`, ifMatch("*")).wantStatus(http.StatusNotFound)
		me.doWith(t, "DELETE", path, "", ifMatch(next)).wantStatus(http.StatusNotFound)
	})

	t.Run("the list's ETag changed with its tasks", func(t *testing.T) {
		me.doWith(t, "GET", list, "", ifNoneMatch(listETag)).wantStatus(http.StatusOK)
	})

	t.Run("a malformed condition is 400", func(t *testing.T) {
		me.doWith(t, "GET", list, "", ifNoneMatch("no-quotes")).wantStatus(http.StatusBadRequest).detail()
		me.doWith(t, "PUT", path, `{"title":"x"}`, ifMatch(`"a b"`)).wantStatus(http.StatusBadRequest).detail()
		me.doWith(t, "PUT", path, `{"title":"x"}`, ifMatch(`*, "1"`)).wantStatus(http.StatusBadRequest).detail()
	})
}

// TestConditionsCompareAsRFC9110Says: If-Match compares strongly, character for
// character; If-None-Match on a write is a precondition too; a create's conditions are
// a 412 when they cannot hold.
func TestConditionsCompareAsRFC9110Says(t *testing.T) {
	t.Parallel()
	me := newTestAPI(testStore(t)).newUser(t)
	task := me.create(t, "compared")
	path := fmt.Sprintf("/api/{me}/tasks/%d", task.ID)
	v := task.Version
	header := func(name, value string) map[string]string { return map[string]string{name: value} }
	for _, tag := range []string{fmt.Sprintf(`"+%d"`, v), fmt.Sprintf(`"0%d"`, v), fmt.Sprintf(`W/"%d"`, v), fmt.Sprintf(`"%d.0"`, v)} {
		me.doWith(t, "PUT", path, `{"title":"spelled otherwise"}`, header("If-Match", tag)).wantStatus(http.StatusPreconditionFailed)
	}
	me.doWith(t, "PUT", path, `{"title":"x"}`, header("If-None-Match", "*")).wantStatus(http.StatusPreconditionFailed)
	me.doWith(t, "PUT", path, `{"title":"x"}`, header("If-None-Match", fmt.Sprintf(`W/"%d"`, v))).wantStatus(http.StatusPreconditionFailed)
	me.doWith(t, "DELETE", path, "", header("If-None-Match", "*")).wantStatus(http.StatusPreconditionFailed)
	if got := me.do(t, "GET", path, "").wantStatus(http.StatusOK).task(); got.Title != "compared" {
		t.Fatalf("a refused write changed the task: %+v", got)
	}
	me.doWith(t, "PATCH", path+"/complete", "", header("If-None-Match", `"1"`)).wantStatus(http.StatusOK)
	me.doWith(t, "PUT", "/api/{me}/tasks/999999999999", `{"title":"x"}`, header("If-None-Match", "*")).wantStatus(http.StatusNotFound)

	create := func(h map[string]string) response {
		return me.doWith(t, "POST", "/api/{me}/tasks", `{"title":"conditional create"}`, h)
	}
	create(header("If-Match", `"1"`)).wantStatus(http.StatusPreconditionFailed).detail()
	create(header("If-Match", "*")).wantStatus(http.StatusPreconditionFailed)
	create(header("If-Match", "garbage")).wantStatus(http.StatusBadRequest)
	create(header("If-None-Match", "*")).wantStatus(http.StatusCreated)
	if n := len(me.do(t, "GET", "/api/{me}/tasks", "").wantStatus(http.StatusOK).tasks()); n != 2 {
		t.Errorf("%d tasks after one create went through, want 2", n)
	}
}

// TestATaskHasOneURL: an id spelled any other way is a 400, and a keyed request whose
// path is spelled otherwise is still the same request.
func TestATaskHasOneURL(t *testing.T) {
	t.Parallel()
	api := newTestAPI(testStore(t))
	me := api.newUser(t)
	task := me.create(t, "one url")
	digits := fmt.Sprint(task.ID)
	var encoded strings.Builder
	for _, c := range digits {
		fmt.Fprintf(&encoded, "%%%02X", c)
	}
	for _, id := range []string{encoded.String(), "0" + digits, "+" + digits, "%2B" + digits} {
		me.do(t, "GET", "/api/{me}/tasks/"+id, "").wantStatus(http.StatusBadRequest).detail()
		me.do(t, "PATCH", "/api/{me}/tasks/"+id+"/complete", "").wantStatus(http.StatusBadRequest)
	}
	// The user id may be percent-encoded (any string is a user id); the key's fingerprint
	// is the canonical path's.
	u := &user{api: api, id: "idem-" + testkit.NewUserID()[:8], token: ""}
	u.token = testkit.Token(t, u.id)
	key := map[string]string{"Idempotency-Key": "respelled"}
	first := u.api.do(t, request{method: "POST", path: "/api/" + u.id + "/tasks", body: `{"title":"once"}`, token: u.token, header: key}).wantStatus(http.StatusCreated)
	again := u.api.do(t, request{method: "POST", path: "/api/%69" + u.id[1:] + "/tasks", body: `{"title":"once"}`, token: u.token, header: key}).wantStatus(http.StatusCreated)
	if again.Header().Get("Idempotent-Replayed") != "true" || again.Body.String() != first.Body.String() {
		t.Errorf("the same request on a respelled path: %v %s, want the first answer replayed", again.Header(), again.Body)
	}
}

// TestEveryWriteGetsANewVersion: two writes in the same microsecond (here: in one
// transaction, where now() does not move) still give two ETags.
func TestEveryWriteGetsANewVersion(t *testing.T) {
	t.Parallel()
	s, ctx, me := testStore(t), context.Background(), testkit.NewUserID()
	task := mustCreate(t, s, me, "twice at once", nil)
	tx, err := s.db.Pool().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	var updated [2]time.Time
	var versions [2]int64
	for i := range 2 {
		if err := tx.QueryRow(ctx, sqlToggleTask, me, task.ID, nil, []int64{}).Scan(new(int64), new(string), new(string), new(*string),
			new(bool), new(time.Time), &updated[i], &versions[i]); err != nil {
			t.Fatal(err)
		}
	}
	if !updated[0].Equal(updated[1]) || versions[0] == versions[1] || versions[0] == task.Version {
		t.Errorf("updated_at %v and %v, versions %d, %d (created %d): want the same time and three versions", updated[0], updated[1], versions[0], versions[1], task.Version)
	}
}

// TestTheSchemaUpgradesAnExistingDatabase applies schema.sql to tables as the previous
// release left them: nothing is lost, every task gets a version of its own, every user a
// task count, and a second start changes nothing.
func TestTheSchemaUpgradesAnExistingDatabase(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	testStore(t)
	conn, err := pgx.Connect(ctx, testDatabaseURL) // its own: the search_path changes
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	schema := "upgrade_" + strings.ToLower(testkit.NewUserID()[:10])
	for _, q := range []string{
		`CREATE SCHEMA ` + schema,
		`SET search_path = ` + schema,
		// The tasks table of commit 1ffb6c0.
		`CREATE TABLE tasks (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, user_id text NOT NULL, title text NOT NULL,
    description text, completed boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now())`,
		`INSERT INTO tasks (user_id, title, completed) SELECT 'u' || (i % 3), 'task ' || i, i % 2 = 0 FROM generate_series(1, 30) AS i`,
	} {
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	defer conn.Exec(ctx, `DROP SCHEMA `+schema+` CASCADE`)
	for range 2 {
		if _, err := conn.Exec(ctx, schemaSQL); err != nil {
			t.Fatalf("schema.sql on the old table: %v", err)
		}
	}
	var tasks, versions, counted, sum int
	if err := conn.QueryRow(ctx, `SELECT count(*), count(DISTINCT version), (SELECT count(*) FROM task_counts), (SELECT sum(tasks) FROM task_counts) FROM tasks`).Scan(&tasks, &versions, &counted, &sum); err != nil {
		t.Fatal(err)
	}
	if tasks != 30 || versions != 30 || counted != 3 || sum != 30 {
		t.Errorf("%d tasks with %d versions, %d users counted with %d tasks; want 30, 30, 3 and 30", tasks, versions, counted, sum)
	}
}

// TestAStartWaitsForNoQuery: an instance that starts while others serve applies
// schema.sql, which must not wait for a query in progress on any table the service reads,
// since every query after it would wait behind it (a list left unread held one for
// DB_TIMEOUT, and a start beside it stalled every other list: a 503 in CI).
func TestAStartWaitsForNoQuery(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	reading, err := testStore(t).db.Pool().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer reading.Rollback(ctx)
	for _, table := range []string{"tasks", "task_tombstones", "task_counts", "changes_durable", "changes_horizon", "changes_incarnation", "idempotency_keys"} {
		if _, err := reading.Exec(ctx, `SELECT FROM `+table+` LIMIT 1`); err != nil {
			t.Fatal(err)
		}
	}
	start, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if _, err := testStore(t).db.Pool().Exec(start, schemaSQL); err != nil {
		t.Fatalf("schema.sql while a query holds its tables: %v", err)
	}
}

// TestARetryGetsItsFirstAnswerWhateverItsFirstAttemptDid: the first attempt's own effect
// (a new version, the task limit reached) or a change since (the task deleted) would
// make the retry fail on its own; with the key used before, it gets the first answer.
func TestARetryGetsItsFirstAnswerWhateverItsFirstAttemptDid(t *testing.T) {
	t.Parallel()
	s := storeVia(t, "", 5*time.Second, nil)
	s.maxTasks = 2
	me := newTestAPI(s).newUser(t)
	with := func(h ...string) map[string]string {
		m := map[string]string{}
		for i := 0; i+1 < len(h); i += 2 {
			m[h[i]] = h[i+1]
		}
		return m
	}
	first := me.doWith(t, "POST", "/api/{me}/tasks", `{"title":"one"}`, with("Idempotency-Key", "create-1")).wantStatus(http.StatusCreated)
	path := fmt.Sprintf("/api/{me}/tasks/%d", first.task().ID)
	me.create(t, "two") // the limit is reached

	t.Run("a create at the limit its first attempt reached", func(t *testing.T) {
		again := me.doWith(t, "POST", "/api/{me}/tasks", `{"title":"one"}`, with("Idempotency-Key", "create-1")).wantStatus(http.StatusCreated)
		if again.Body.String() != first.Body.String() || again.Header().Get("Idempotent-Replayed") != "true" {
			t.Errorf("got %s %v", again.Body, again.Header())
		}
		me.doWith(t, "POST", "/api/{me}/tasks", `{"title":"other"}`, with("Idempotency-Key", "create-1")).wantStatus(http.StatusUnprocessableEntity)
	})
	t.Run("a toggle whose If-Match its first attempt made stale", func(t *testing.T) {
		h := with("Idempotency-Key", "toggle-1", "If-Match", first.Header().Get("ETag"))
		toggled := me.doWith(t, "PATCH", path+"/complete", "", h).wantStatus(http.StatusOK)
		again := me.doWith(t, "PATCH", path+"/complete", "", h).wantStatus(http.StatusOK)
		if again.Body.String() != toggled.Body.String() || again.Header().Get("Idempotent-Replayed") != "true" {
			t.Errorf("got %s %v", again.Body, again.Header())
		}
	})
	t.Run("a toggle of a task deleted since", func(t *testing.T) {
		h := with("Idempotency-Key", "toggle-2")
		toggled := me.doWith(t, "PATCH", path+"/complete", "", h).wantStatus(http.StatusOK)
		me.do(t, "DELETE", path, "").wantStatus(http.StatusNoContent)
		again := me.doWith(t, "PATCH", path+"/complete", "", h).wantStatus(http.StatusOK)
		if again.Body.String() != toggled.Body.String() {
			t.Errorf("got %s, want %s", again.Body, toggled.Body)
		}
		// Without a key, the task is simply gone.
		me.do(t, "PATCH", path+"/complete", "").wantStatus(http.StatusNotFound)
	})
}
