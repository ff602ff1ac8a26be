package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

var timestampRE = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$`)

func TestTaskLifecycle(t *testing.T) {
	t.Parallel()
	me := newTestAPI(t).newUser()

	res := me.do("POST", "/api/{me}/tasks", `{"title":"  Buy milk  ","description":"2 litres"}`).wantStatus(http.StatusCreated)
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

	if got := me.do("GET", taskPath, "").wantStatus(http.StatusOK).task(); !got.equal(created) {
		t.Errorf("GET %+v, want %+v", got, created)
	}

	list := me.do("GET", "/api/{me}/tasks", "").wantStatus(http.StatusOK)
	if tasks := list.tasks(); len(tasks) != 1 || !tasks[0].equal(created) {
		t.Errorf("list %+v, want [%+v]", tasks, created)
	}
	if list.Header().Get("X-Total-Count") != "1" {
		t.Errorf("X-Total-Count %q, want 1", list.Header().Get("X-Total-Count"))
	}

	time.Sleep(2 * time.Millisecond) // updated_at has microsecond precision; make the change visible
	updated := me.do("PUT", taskPath, `{"title":"Buy oat milk","description":null}`).wantStatus(http.StatusOK).task()
	if updated.Title != "Buy oat milk" || updated.Description != nil || updated.Completed ||
		updated.CreatedAt != created.CreatedAt || updated.UpdatedAt <= created.UpdatedAt {
		t.Errorf("updated %+v (created %+v)", updated, created)
	}

	toggled := me.do("PATCH", taskPath+"/complete", "").wantStatus(http.StatusOK).task()
	if !toggled.Completed || toggled.UpdatedAt <= updated.UpdatedAt || toggled.Title != "Buy oat milk" {
		t.Errorf("toggled %+v", toggled)
	}
	if back := me.do("PATCH", taskPath+"/complete", "").wantStatus(http.StatusOK).task(); back.Completed {
		t.Errorf("second toggle left completed = true")
	}

	del := me.do("DELETE", taskPath, "").wantStatus(http.StatusNoContent)
	if del.Body.Len() != 0 {
		t.Errorf("DELETE body %q, want empty", del.Body.String())
	}
	me.do("GET", taskPath, "").wantStatus(http.StatusNotFound).detail()
	me.do("DELETE", taskPath, "").wantStatus(http.StatusNotFound).detail()
}

func TestUpdateKeepsAbsentFields(t *testing.T) {
	t.Parallel()
	me := newTestAPI(t).newUser()
	task := me.do("POST", "/api/{me}/tasks", `{"title":"T","description":"D"}`).wantStatus(http.StatusCreated).task()
	path := fmt.Sprintf("/api/{me}/tasks/%d", task.ID)

	got := me.do("PUT", path, `{"completed":true}`).wantStatus(http.StatusOK).task()
	if got.Title != "T" || got.Description == nil || *got.Description != "D" || !got.Completed {
		t.Errorf("PUT completed only: %+v", got)
	}
	got = me.do("PUT", path, `{"description":"E"}`).wantStatus(http.StatusOK).task()
	if got.Title != "T" || *got.Description != "E" || !got.Completed {
		t.Errorf("PUT description only: %+v", got)
	}
	if d := me.do("PUT", path, `{}`).wantStatus(http.StatusUnprocessableEntity).detail(); !strings.Contains(d, "at least one") {
		t.Errorf("PUT {} detail %q", d)
	}
}

func TestCreateNeverTakesServerFieldsFromTheClient(t *testing.T) {
	t.Parallel()
	api := newTestAPI(t)
	me, victim := api.newUser(), api.newUser()
	for _, field := range []string{
		`"user_id":"` + victim.id + `"`, `"id":1`, `"completed":true`,
		`"created_at":"2000-01-01T00:00:00Z"`, `"updated_at":"2000-01-01T00:00:00Z"`,
	} {
		me.do("POST", "/api/{me}/tasks", `{"title":"x",`+field+`}`).wantStatus(http.StatusUnprocessableEntity).detail()
	}
	for _, u := range []*user{me, victim} {
		if n := u.do("GET", "/api/{me}/tasks", "").wantStatus(http.StatusOK).Header().Get("X-Total-Count"); n != "0" {
			t.Errorf("a rejected create left %s tasks", n)
		}
	}
}

func TestUsersCannotReachEachOthersTasks(t *testing.T) {
	t.Parallel()
	api := newTestAPI(t)
	owner, intruder := api.newUser(), api.newUser()
	task := owner.create("mine")
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
			intruder.do(c.method, c.path, c.body).wantStatus(http.StatusForbidden).detail()
		}
	})
	t.Run("the owner's task id under the intruder's own path is 404", func(t *testing.T) {
		for _, c := range []struct{ method, path, body string }{
			{"GET", asIntruder, ""},
			{"PUT", asIntruder, `{"title":"x"}`},
			{"DELETE", asIntruder, ""},
			{"PATCH", asIntruder + "/complete", ""},
		} {
			if d := intruder.do(c.method, c.path, c.body).wantStatus(http.StatusNotFound).detail(); d != "task not found" {
				t.Errorf("%s %s: detail %q, want the same as a missing task", c.method, c.path, d)
			}
		}
	})
	if got := owner.do("GET", fmt.Sprintf("/api/{me}/tasks/%d", task.ID), "").wantStatus(http.StatusOK).task(); !got.equal(task) {
		t.Errorf("after the intrusions the task is %+v, want %+v", got, task)
	}
}

func TestListQueryParameters(t *testing.T) {
	t.Parallel()
	me := newTestAPI(t).newUser()
	var made []taskJSON
	for _, title := range []string{"b", "c", "a", "d"} {
		made = append(made, me.create(title))
	}
	me.do("PATCH", fmt.Sprintf("/api/{me}/tasks/%d/complete", made[1].ID), "").wantStatus(http.StatusOK) // "c"
	time.Sleep(2 * time.Millisecond)
	me.do("PUT", fmt.Sprintf("/api/{me}/tasks/%d", made[0].ID), `{"description":"touched"}`).wantStatus(http.StatusOK) // "b"

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
		res := me.do("GET", "/api/{me}/tasks"+tt.query, "").wantStatus(http.StatusOK)
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
		if d := me.do("GET", "/api/{me}/tasks"+bad, "").wantStatus(http.StatusBadRequest).detail(); d == "" {
			t.Errorf("%q: no detail", bad)
		}
	}
}

func TestBadTaskIDIs400(t *testing.T) {
	t.Parallel()
	me := newTestAPI(t).newUser()
	for _, id := range []string{"abc", "0", "-1", "1.5", "+1", "0x10", "99999999999999999999", "%20"} {
		for _, c := range []struct{ method, suffix, body string }{
			{"GET", "", ""}, {"PUT", "", `{"title":"x"}`}, {"DELETE", "", ""}, {"PATCH", "/complete", ""},
		} {
			me.do(c.method, "/api/{me}/tasks/"+id+c.suffix, c.body).wantStatus(http.StatusBadRequest).detail()
		}
	}
	me.do("GET", "/api/{me}/tasks/9223372036854775807", "").wantStatus(http.StatusNotFound).detail()
}

func TestUnknownPathAndMethod(t *testing.T) {
	t.Parallel()
	api := newTestAPI(t)
	me := api.newUser()
	for _, path := range []string{"/", "/api", "/api/{me}", "/api/{me}/tasks/1/2", "/api/{me}/tasks/", "/nope"} {
		me.do("GET", path, "").wantStatus(http.StatusNotFound).detail()
	}
	for _, c := range []struct{ method, path, allow string }{
		{"DELETE", "/api/{me}/tasks", "GET, HEAD, POST"},
		{"POST", "/api/{me}/tasks/1", "DELETE, GET, HEAD, PUT"},
		{"GET", "/api/{me}/tasks/1/complete", "PATCH"},
		{"POST", "/healthz", "GET, HEAD"},
	} {
		res := me.do(c.method, c.path, "").wantStatus(http.StatusMethodNotAllowed)
		res.detail()
		if got := res.Header().Get("Allow"); got != c.allow {
			t.Errorf("%s %s: Allow %q, want %q", c.method, c.path, got, c.allow)
		}
	}
}

func TestBodyLimitsAndContentType(t *testing.T) {
	t.Parallel()
	api := newTestAPI(t)
	me := api.newUser()
	task := me.create("x")
	taskPath := fmt.Sprintf("/api/%s/tasks/%d", me.id, task.ID)

	big := `{"title":"x","description":"` + strings.Repeat("a", maxBodyBytes) + `"}`
	for _, c := range []struct{ method, path string }{{"POST", "/api/" + me.id + "/tasks"}, {"PUT", taskPath}} {
		api.do(request{method: c.method, path: c.path, body: big, token: me.token}).wantStatus(http.StatusRequestEntityTooLarge).detail()
		for _, ct := range []string{"text/plain", "application/x-www-form-urlencoded", "", "application/jsonx", "json"} {
			api.do(request{method: c.method, path: c.path, body: `{"title":"x"}`, token: me.token,
				header: map[string]string{"Content-Type": ct}}).wantStatus(http.StatusUnsupportedMediaType).detail()
		}
		for _, ct := range []string{"application/json; charset=utf-8", "Application/JSON", "application/json;charset=UTF-8"} {
			api.do(request{method: c.method, path: c.path, body: `{"title":"y"}`, token: me.token,
				header: map[string]string{"Content-Type": ct}}).wantStatus(map[string]int{"POST": 201, "PUT": 200}[c.method])
		}
	}
	// Exactly at the limit is accepted as far as size goes (it then fails validation).
	atLimit := `{"title":"x","description":"` + strings.Repeat("a", maxBodyBytes-len(`{"title":"x","description":""}`)) + `"}`
	me.do("POST", "/api/{me}/tasks", atLimit).wantStatus(http.StatusUnprocessableEntity)
	// A chunked body of unknown length is cut at the limit too.
	r := request{method: "POST", path: "/api/" + me.id + "/tasks", body: big, token: me.token}
	res := api.doChunked(r)
	res.wantStatus(http.StatusRequestEntityTooLarge).detail()
}

// doChunked sends a body without Content-Length, as a streaming client would.
func (a *testAPI) doChunked(req request) response {
	a.t.Helper()
	r := httptestRequest(req)
	r.ContentLength = -1
	w := newRecorder()
	a.handler.ServeHTTP(w, r)
	return response{w, a.t}
}

func TestDatabaseDownIs503AndHealthzStays200(t *testing.T) {
	t.Parallel()
	// A store whose database refuses connections: the handlers must answer 503 quickly.
	cfg, err := newPoolConfig("postgres://postgres@127.0.0.1:1/none?sslmode=disable&connect_timeout=1", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	down := &Store{pool: pool, timeout: time.Second}
	defer down.Close()
	me := apiOn(t, down).newUser()

	for _, c := range []struct{ method, path, body string }{
		{"GET", "/api/{me}/tasks", ""},
		{"POST", "/api/{me}/tasks", `{"title":"x"}`},
		{"GET", "/api/{me}/tasks/1", ""},
		{"PUT", "/api/{me}/tasks/1", `{"title":"x"}`},
		{"DELETE", "/api/{me}/tasks/1", ""},
		{"PATCH", "/api/{me}/tasks/1/complete", ""},
		{"GET", "/readyz", ""},
	} {
		start := time.Now()
		d := me.do(c.method, c.path, c.body).wantStatus(http.StatusServiceUnavailable).detail()
		if strings.Contains(d, "127.0.0.1") || strings.Contains(d, "connect") {
			t.Errorf("%s %s: detail %q leaks the driver's error", c.method, c.path, d)
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Errorf("%s %s took %v, want within the 1s deadline", c.method, c.path, took)
		}
	}
	me.do("GET", "/healthz", "").wantStatus(http.StatusOK)
}

func TestHealthReadyAndOpenAPI(t *testing.T) {
	t.Parallel()
	api := newTestAPI(t)
	for _, path := range []string{"/healthz", "/readyz", "/openapi.json"} {
		res := api.do(request{method: "GET", path: path}).wantStatus(http.StatusOK)
		if !json.Valid(res.Body.Bytes()) || res.Header().Get("Content-Type") != "application/json" {
			t.Errorf("%s: %q %q", path, res.Header().Get("Content-Type"), res.Body.String())
		}
	}
}

func TestPanicIs500AndTheServerGoesOn(t *testing.T) {
	t.Parallel()
	var logs strings.Builder
	log := slogTo(&logs)
	h := withRequestLog(log, withRecover(withCORS([]string{testOrigin}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/boom" {
			panic("kaboom")
		}
		w.WriteHeader(http.StatusOK)
	}))))
	api := &testAPI{t: t, handler: h}
	res := api.do(request{method: "GET", path: "/boom", header: map[string]string{"Origin": testOrigin}}).wantStatus(http.StatusInternalServerError)
	if d := res.detail(); d != "internal server error" {
		t.Errorf("detail %q", d)
	}
	if res.Header().Get("Access-Control-Allow-Origin") != testOrigin {
		t.Errorf("the 500 lost its CORS headers, so a browser could not read it")
	}
	if !strings.Contains(logs.String(), "kaboom") || !strings.Contains(logs.String(), "goroutine") {
		t.Errorf("the log lacks the panic and its stack:\n%s", logs.String())
	}
	api.do(request{method: "GET", path: "/fine"}).wantStatus(http.StatusOK)
}

func TestUnexpectedErrorIsGeneric500(t *testing.T) {
	t.Parallel()
	var logs strings.Builder
	r := httptestRequest(request{method: "GET", path: "/x"})
	info := &requestInfo{id: "req-1", base: slogTo(&logs)}
	r = r.WithContext(withRequestInfo(context.Background(), info))
	w := newRecorder()
	writeError(w, r, fmt.Errorf("pq: relation \"secret_table\" does not exist"))
	res := response{w, t}
	res.wantStatus(http.StatusInternalServerError)
	if d := res.detail(); strings.Contains(d, "secret_table") {
		t.Errorf("detail %q leaks the cause", d)
	}
	if !strings.Contains(logs.String(), "secret_table") || !strings.Contains(logs.String(), "req-1") {
		t.Errorf("the log lacks the cause or the request id: %s", logs.String())
	}
}

func TestRequestIDIsKeptOrMade(t *testing.T) {
	t.Parallel()
	api := newTestAPI(t)
	if got := api.do(request{method: "GET", path: "/healthz", header: map[string]string{"X-Request-ID": "abc-123"}}).Header().Get("X-Request-ID"); got != "abc-123" {
		t.Errorf("X-Request-ID %q, want the client's abc-123", got)
	}
	for _, bad := range []string{"", "has space", strings.Repeat("x", 200), "new\nline", `quote"`} {
		got := api.do(request{method: "GET", path: "/healthz", header: map[string]string{"X-Request-ID": bad}}).Header().Get("X-Request-ID")
		if got == bad || !saneRequestID(got) {
			t.Errorf("for %q the server answered X-Request-ID %q, want a fresh sane id", bad, got)
		}
	}
}
