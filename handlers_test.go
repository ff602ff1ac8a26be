package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"taskflow/internal/testkit"
	"taskflow/internal/web"

	"github.com/jackc/pgx/v5/pgxpool"
)

var timestampRE = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$`)

func TestTaskLifecycle(t *testing.T) {
	t.Parallel()
	me := newTestAPI(testStore(t)).newUser(t)

	res := me.do(t, "POST", "/api/{me}/tasks", `{"title":"  Buy milk  ","description":"2 litres"}`).wantStatus(http.StatusCreated)
	created := res.task()
	if created.Title != "Buy milk" || *created.Description != "2 litres" || created.Completed || created.UserID != me.id || created.ID <= 0 {
		t.Fatalf("created %+v", created)
	}
	if !timestampRE.MatchString(created.CreatedAt) || created.UpdatedAt != created.CreatedAt {
		t.Errorf("timestamps %q %q, want equal RFC 3339 UTC with microseconds", created.CreatedAt, created.UpdatedAt)
	}
	if want := fmt.Sprintf("/api/%s/tasks/%d", me.id, created.ID); res.Header().Get("Location") != want {
		t.Errorf("Location %q, want %q", res.Header().Get("Location"), want)
	}
	if ct := res.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	taskPath := fmt.Sprintf("/api/{me}/tasks/%d", created.ID)

	if got := me.do(t, "GET", taskPath, "").wantStatus(http.StatusOK).task(); !got.Equal(created) {
		t.Errorf("GET %+v, want %+v", got, created)
	}

	list := me.do(t, "GET", "/api/{me}/tasks", "").wantStatus(http.StatusOK)
	if tasks := list.tasks(); len(tasks) != 1 || !tasks[0].Equal(created) {
		t.Errorf("list %+v, want [%+v]", tasks, created)
	}
	if list.Header().Get("X-Total-Count") != "1" {
		t.Errorf("X-Total-Count %q, want 1", list.Header().Get("X-Total-Count"))
	}

	time.Sleep(2 * time.Millisecond) // updated_at has microsecond precision; make the change visible
	updated := me.do(t, "PUT", taskPath, `{"title":"Buy oat milk","description":null}`).wantStatus(http.StatusOK).task()
	if updated.Title != "Buy oat milk" || updated.Description != nil || updated.Completed ||
		updated.CreatedAt != created.CreatedAt || updated.UpdatedAt <= created.UpdatedAt {
		t.Errorf("updated %+v (created %+v)", updated, created)
	}

	toggled := me.do(t, "PATCH", taskPath+"/complete", "").wantStatus(http.StatusOK).task()
	if !toggled.Completed || toggled.UpdatedAt <= updated.UpdatedAt || toggled.Title != "Buy oat milk" {
		t.Errorf("toggled %+v", toggled)
	}
	if back := me.do(t, "PATCH", taskPath+"/complete", "").wantStatus(http.StatusOK).task(); back.Completed {
		t.Errorf("second toggle left completed = true")
	}

	del := me.do(t, "DELETE", taskPath, "").wantStatus(http.StatusNoContent)
	if del.Body.Len() != 0 {
		t.Errorf("DELETE body %q, want empty", del.Body.String())
	}
	me.do(t, "GET", taskPath, "").wantStatus(http.StatusNotFound).detail()
	me.do(t, "DELETE", taskPath, "").wantStatus(http.StatusNotFound).detail()
	me.do(t, "GET", "/api/{me}/tasks/9223372036854775807", "").wantStatus(http.StatusNotFound).detail()
}

func TestUpdateKeepsAbsentFields(t *testing.T) {
	t.Parallel()
	me := newTestAPI(testStore(t)).newUser(t)
	task := me.do(t, "POST", "/api/{me}/tasks", `{"title":"T","description":"D"}`).wantStatus(http.StatusCreated).task()
	path := fmt.Sprintf("/api/{me}/tasks/%d", task.ID)

	got := me.do(t, "PUT", path, `{"completed":true}`).wantStatus(http.StatusOK).task()
	if got.Title != "T" || got.Description == nil || *got.Description != "D" || !got.Completed {
		t.Errorf("PUT completed only: %+v", got)
	}
	got = me.do(t, "PUT", path, `{"description":"E"}`).wantStatus(http.StatusOK).task()
	if got.Title != "T" || *got.Description != "E" || !got.Completed {
		t.Errorf("PUT description only: %+v", got)
	}
	if d := me.do(t, "PUT", path, `{}`).wantStatus(http.StatusUnprocessableEntity).detail(); !strings.Contains(d, "at least one") {
		t.Errorf("PUT {} detail %q", d)
	}
}

func TestCreateNeverTakesServerFieldsFromTheClient(t *testing.T) {
	t.Parallel()
	api := newTestAPI(testStore(t))
	me, victim := api.newUser(t), api.newUser(t)
	for _, field := range []string{
		`"user_id":"` + victim.id + `"`, `"id":1`, `"completed":true`,
		`"created_at":"2000-01-01T00:00:00Z"`, `"updated_at":"2000-01-01T00:00:00Z"`,
	} {
		me.do(t, "POST", "/api/{me}/tasks", `{"title":"x",`+field+`}`).wantStatus(http.StatusUnprocessableEntity).detail()
	}
	for _, u := range []*user{me, victim} {
		if n := u.do(t, "GET", "/api/{me}/tasks", "").wantStatus(http.StatusOK).Header().Get("X-Total-Count"); n != "0" {
			t.Errorf("a rejected create left %s tasks", n)
		}
	}
}

func TestUsersCannotReachEachOthersTasks(t *testing.T) {
	t.Parallel()
	api := newTestAPI(testStore(t))
	owner, intruder := api.newUser(t), api.newUser(t)
	task := owner.create(t, "mine")
	theirs := fmt.Sprintf("/api/%s/tasks/%d", owner.id, task.ID)
	asIntruder := fmt.Sprintf("/api/{me}/tasks/%d", task.ID)

	t.Run("the owner's path with the intruder's token is 403", func(t *testing.T) {
		for _, c := range []struct{ method, path, body string }{
			{"GET", "/api/" + owner.id + "/tasks", ""},
			{"POST", "/api/" + owner.id + "/tasks", `{"title":"planted"}`},
			{"GET", theirs, ""},
			{"PUT", theirs, `{"title":"x"}`},
			{"DELETE", theirs, ""},
			{"PATCH", theirs + "/complete", ""},
		} {
			intruder.do(t, c.method, c.path, c.body).wantStatus(http.StatusForbidden).detail()
		}
	})
	t.Run("the owner's task id under the intruder's own path is 404", func(t *testing.T) {
		for _, c := range []struct{ method, path, body string }{
			{"GET", asIntruder, ""},
			{"PUT", asIntruder, `{"title":"x"}`},
			{"DELETE", asIntruder, ""},
			{"PATCH", asIntruder + "/complete", ""},
		} {
			if d := intruder.do(t, c.method, c.path, c.body).wantStatus(http.StatusNotFound).detail(); d != "task not found" {
				t.Errorf("%s %s: detail %q, want the same as a missing task", c.method, c.path, d)
			}
		}
	})
	if got := owner.do(t, "GET", fmt.Sprintf("/api/{me}/tasks/%d", task.ID), "").wantStatus(http.StatusOK).task(); !got.Equal(task) {
		t.Errorf("after the intrusions the task is %+v, want %+v", got, task)
	}
}

func TestListQueryParameters(t *testing.T) {
	t.Parallel()
	me := newTestAPI(testStore(t)).newUser(t)
	var made []taskJSON
	for _, title := range []string{"b", "c", "a", "d"} {
		made = append(made, me.create(t, title))
	}
	me.do(t, "PATCH", fmt.Sprintf("/api/{me}/tasks/%d/complete", made[1].ID), "").wantStatus(http.StatusOK) // "c"
	time.Sleep(2 * time.Millisecond)
	me.do(t, "PUT", fmt.Sprintf("/api/{me}/tasks/%d", made[0].ID), `{"description":"touched"}`).wantStatus(http.StatusOK) // "b"

	tests := []struct {
		query      string
		wantTitles string
		wantTotal  string
	}{
		{"", "d a c b", "4"}, // newest first by default
		{"?order=asc", "b c a d", "4"},
		{"?sort=title&order=asc", "a b c d", "4"},
		{"?sort=title", "d c b a", "4"},
		{"?sort=updated", "b c d a", "4"}, // b was updated last, c toggled before it
		{"?status=completed", "c", "1"},
		{"?status=pending&sort=title&order=asc", "a b d", "3"},
		{"?status=all&sort=created&order=desc", "d a c b", "4"},
		{"?sort=title&order=asc&limit=2", "a b", "4"},
		{"?sort=title&order=asc&limit=2&offset=2", "c d", "4"},
		{"?sort=title&order=asc&offset=3", "d", "4"},
		{"?offset=10", "", "4"},
		{"?limit=1000", "d a c b", "4"},
		{"?unknown=ignored", "d a c b", "4"},
	}
	for _, tt := range tests {
		res := me.do(t, "GET", "/api/{me}/tasks"+tt.query, "").wantStatus(http.StatusOK)
		var titles []string
		for _, task := range res.tasks() {
			titles = append(titles, task.Title)
		}
		if got := strings.Join(titles, " "); got != tt.wantTitles {
			t.Errorf("%q: titles %q, want %q", tt.query, got, tt.wantTitles)
		}
		if got := res.Header().Get("X-Total-Count"); got != tt.wantTotal {
			t.Errorf("%q: X-Total-Count %s, want %s", tt.query, got, tt.wantTotal)
		}
	}

	for _, bad := range []string{
		"?status=done", "?status=", "?sort=priority", "?order=up", "?limit=0", "?limit=1001",
		"?limit=abc", "?limit=-1", "?limit=+5", "?offset=-1", "?offset=1.5",
		"?offset=99999999999999999999", "?status=all&status=pending", "?status=%zz",
	} {
		if d := me.do(t, "GET", "/api/{me}/tasks"+bad, "").wantStatus(http.StatusBadRequest).detail(); d == "" {
			t.Errorf("%q: no detail", bad)
		}
	}
}

func TestBadTaskIDIs400(t *testing.T) {
	t.Parallel()
	me := newTestAPI(noDatabase(t)).newUser(t)
	for _, id := range []string{"abc", "0", "-1", "1.5", "+1", "0x10", "036", "00", "99999999999999999999", "%20"} {
		for _, c := range []struct{ method, suffix, body string }{
			{"GET", "", ""}, {"PUT", "", `{"title":"x"}`}, {"DELETE", "", ""}, {"PATCH", "/complete", ""},
		} {
			me.do(t, c.method, "/api/{me}/tasks/"+id+c.suffix, c.body).wantStatus(http.StatusBadRequest).detail()
		}
	}
}

func TestHealthReadyAndOpenAPI(t *testing.T) {
	t.Parallel()
	api := newTestAPI(testStore(t))
	for _, path := range []string{"/healthz", "/readyz", "/openapi.json"} {
		res := api.do(t, request{method: "GET", path: path}).wantStatus(http.StatusOK)
		if !json.Valid(res.Body.Bytes()) || res.Header().Get("Content-Type") != "application/json" {
			t.Errorf("%s: %q %q", path, res.Header().Get("Content-Type"), res.Body.String())
		}
	}
}

func TestCreatePastTheLimitIs409(t *testing.T) {
	t.Parallel()
	s := storeVia(t, "", 5*time.Second, nil)
	s.maxTasks = 2
	me := newTestAPI(s).newUser(t)
	me.create(t, "one")
	me.create(t, "two")
	if d := me.do(t, "POST", "/api/{me}/tasks", `{"title":"three"}`).wantStatus(http.StatusConflict).detail(); !strings.Contains(d, "most tasks") {
		t.Errorf("detail %q", d)
	}
}

// insertBigTasks gives userID n tasks of the largest size (a description of 1000
// four-byte characters: 4 KB), in one statement. 10,000 of them are 40 MB of JSON, more
// than the socket buffers between PostgreSQL, the server and a client can hold.
func insertBigTasks(t *testing.T, userID string, n int) {
	t.Helper()
	_, err := testStore(t).db.Pool().Exec(context.Background(), `INSERT INTO tasks (user_id, title, description)
SELECT $1, 'task ' || i, repeat('😀', 1000) FROM generate_series(1, $2) AS i`, userID, n)
	if err != nil {
		t.Fatal(err)
	}
}

// TestListStreamsInBoundedMemory holds a client early in a 10,000-task list (40 MB of
// JSON) and looks at the server's live heap: a list built whole would hold all of it.
func TestListStreamsInBoundedMemory(t *testing.T) {
	testStore(t) // not parallel: it measures this process's heap
	me := testkit.NewUserID()
	insertBigTasks(t, me, 10000)
	srv := newTestServer(t, newTestAPI(testStore(t)).handler)

	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	req, _ := http.NewRequest("GET", srv.URL+"/api/"+me+"/tasks", nil)
	req.Header.Set("Authorization", "Bearer "+testkit.Token(t, me))
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK || res.Header.Get("X-Total-Count") != "10000" {
		t.Fatalf("status %d, X-Total-Count %q", res.StatusCode, res.Header.Get("X-Total-Count"))
	}
	first := make([]byte, 1<<20)
	if _, err := io.ReadFull(res.Body, first); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // the server fills the socket buffers and blocks
	runtime.GC()
	var during runtime.MemStats
	runtime.ReadMemStats(&during)
	if grew := int64(during.HeapAlloc) - int64(before.HeapAlloc); grew > 4<<20 {
		t.Errorf("the heap grew by %.1f MiB while a 40 MB list was being sent; want it bounded", float64(grew)/(1<<20))
	}
	// The rest of the body completes one valid array of every task.
	var tasks []taskJSON
	whole := io.MultiReader(strings.NewReader(string(first)), res.Body)
	if err := json.NewDecoder(whole).Decode(&tasks); err != nil || len(tasks) != 10000 {
		t.Errorf("%d tasks decoded, %v; want 10000", len(tasks), err)
	}
}

// TestAListEndsWhenItsClientGoes: a client that stops reading (for DB_TIMEOUT; the server
// has no write timeout here) or hangs up ends the query, which otherwise would hold a
// pooled connection.
func TestAListEndsWhenItsClientGoes(t *testing.T) {
	t.Parallel()
	appName := "listgone-" + strings.ToLower(testkit.NewUserID()[:12])
	s := storeVia(t, "", time.Second, func(c *pgxpool.Config) { c.ConnConfig.RuntimeParams["application_name"] = appName })
	me := testkit.NewUserID()
	insertBigTasks(t, me, 10000)
	active := func() int {
		var n int
		testStore(t).db.Pool().QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity
WHERE application_name = $1 AND state = 'active'`, appName).Scan(&n)
		return n
	}
	var logs testkit.SyncBuffer
	srv := newTestServer(t, newTestHandler(s, &logs))

	for _, how := range []string{"stops reading", "hangs up"} {
		t.Run("a client that "+how, func(t *testing.T) {
			conn, err := net.Dial("tcp", srv.Listener.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			fmt.Fprintf(conn, "GET /api/%s/tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n", me, testkit.Token(t, me))
			testkit.WaitFor(t, "the list to be under way", func() bool { return active() == 1 })
			if how == "hangs up" {
				conn.Close()
			}
			testkit.WaitFor(t, "the list's statement to end", func() bool { return active() == 0 })
		})
	}
	testkit.WaitFor(t, "two access log lines", func() bool { return strings.Count(logs.String(), "route=/api/{user_id}/tasks") == 2 })
	// Neither is an outage: both are logged as 499 (net/http cancels the request's context
	// when a write fails too), with no warning.
	if strings.Contains(logs.String(), "WARN") || strings.Count(logs.String(), "status=499") != 2 {
		t.Errorf("want both logged as 499 and no warning:\n%s", logs.String())
	}
}

// TestAUsersUnreadListsHoldNothing: lists whose clients hang up, or never read them,
// hold no connection and no turn of their user's (contract: "Concurrent requests of one
// user"). After 50 that hung up, the user's next list and page of changes answer within
// DB_TIMEOUT; beside 100 that never read, five full lists all answer.
func TestAUsersUnreadListsHoldNothing(t *testing.T) {
	t.Parallel()
	var logs testkit.SyncBuffer
	store := storeVia(t, "", 2*time.Second, func(c *pgxpool.Config) { c.MaxConns = 4 })
	api := &testAPI{handler: newTestHandler(store, &logs)}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the server's log:\n%s", logs.String())
		}
	})
	srv := newTestServer(t, api.handler)
	me, other := api.newUser(t), api.newUser(t)
	insertBigTasks(t, me.id, 300) // 1.2 MB: more than the socket buffers hold
	ask := func(closeAtOnce bool) {
		conn, err := net.Dial("tcp", srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		conn.(*net.TCPConn).SetReadBuffer(4096)
		fmt.Fprintf(conn, "GET /api/%s/tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n", me.id, me.token)
		if closeAtOnce {
			conn.Close()
		}
	}
	for range 50 {
		ask(true)
	}
	start := time.Now()
	me.do(t, "GET", "/api/{me}/tasks?limit=5", "").wantStatus(http.StatusOK)
	me.do(t, "GET", "/api/{me}/changes?limit=5", "").wantStatus(http.StatusOK)
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("after 50 lists of its user that hung up, a list and a page of changes took %v, want less than DB_TIMEOUT", took)
	}
	for range 100 {
		ask(false)
	}
	var wg sync.WaitGroup
	codes := make(chan int, 5)
	for range 5 {
		wg.Go(func() { codes <- me.do(t, "GET", "/api/{me}/tasks", "").Code })
	}
	wg.Wait()
	close(codes)
	for code := range codes {
		if code != http.StatusOK {
			t.Errorf("a full list beside 100 unread ones: %d, want 200", code)
		}
	}
	for _, path := range []string{"/api/{me}/tasks", "/api/{me}/changes"} {
		other.do(t, "GET", path, "").wantStatus(http.StatusOK)
	}
}

// TestEachWaitForATurnIsBoundedAlone: waitForTurn bounds each of a list's waits for its
// user's turn, not the list: a part read after the list has run longer than that, whose
// user's budget is spent meanwhile, waits for it and comes. Not parallel: it shortens
// waitForTurn, before the parallel tests start.
func TestEachWaitForATurnIsBoundedAlone(t *testing.T) {
	defer func(w time.Duration) { waitForTurn = w }(waitForTurn)
	waitForTurn = time.Second
	svc := newTestService(testStore(t), slogTo(io.Discard))
	srv := httptest.NewUnstartedServer(newHandler(slogTo(io.Discard), svc, []string{testOrigin}))
	srv.Listener.Close()
	srv.Listener = web.BoundedListener(testkit.ListenLoopback(t), 5*time.Second) // as main's: 32 KiB sent ahead
	srv.Start()
	defer srv.Close()
	me := testkit.NewUserID()
	insertBigTasks(t, me, 300) // 1.2 MB in parts of 100 tasks: more than the sockets hold
	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.(*net.TCPConn).SetReadBuffer(64 << 10)
	fmt.Fprintf(conn, "GET /api/%s/tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n", me, testkit.Token(t, me))
	time.Sleep(waitForTurn + waitForTurn/5)
	svc.users.Charge(me, time.Second+waitForTurn/10) // the next part waits about 0.4 s
	res, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	var tasks []json.RawMessage
	if err := json.NewDecoder(res.Body).Decode(&tasks); err != nil || len(tasks) != 300 {
		t.Errorf("%d tasks, %v; want all 300", len(tasks), err)
	}
}

// TestHonestBurstsAreServed: a user's own lists and pages of changes, many at once, all
// get their answers; some wait a little for their turn (package fair).
func TestHonestBurstsAreServed(t *testing.T) {
	t.Parallel()
	api := newTestAPI(testStore(t))
	me := api.newUser(t)
	insertBigTasks(t, me.id, 300)
	var wg sync.WaitGroup
	codes := make(chan int, 30)
	for i := range 30 {
		path := "/api/{me}/tasks"
		if i%3 == 0 {
			path = "/api/{me}/changes"
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes <- me.do(t, "GET", path, "").Code
		}()
	}
	wg.Wait()
	close(codes)
	for code := range codes {
		if code != http.StatusOK {
			t.Errorf("one of 20 lists and 10 pages of changes at once: %d, want 200", code)
		}
	}
}
