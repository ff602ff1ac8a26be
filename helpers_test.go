package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"taskflow/internal/fair"
	"taskflow/internal/feed"
	"taskflow/internal/pg"
	"taskflow/internal/testkit"
)

// Tests that need PostgreSQL use the one named by TEST_DATABASE_URL (make test starts
// it), in a schema of their own run that TestMain creates and drops, so that nothing
// piles up in the database from run to run. Within a run, tests isolate themselves by
// user: each makes fresh random user ids, and every statement is scoped by user, so they
// run in parallel without seeing each other's rows. Tests of the HTTP layer that never
// reach the store run without a database (noDatabase).

var (
	testStoreShared *Store
	testDatabaseURL string // TEST_DATABASE_URL with the run's schema as search_path
)

func TestMain(m *testing.M) {
	base := os.Getenv("TEST_DATABASE_URL")
	if base == "" && os.Getenv("CI") == "true" {
		fmt.Fprintln(os.Stderr, "TEST_DATABASE_URL is unset: under CI the database tests must run, not skip (use make test)")
		os.Exit(1)
	}
	var drop func()
	if base != "" {
		var err error
		testDatabaseURL, drop, err = testkit.NewRunSchema(base)
		if err == nil {
			testStoreShared, err = openTestStore(testDatabaseURL)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "TEST_DATABASE_URL: %v\n", err)
			os.Exit(1)
		}
	}
	code := m.Run()
	if testStoreShared != nil {
		testStoreShared.db.Close()
		drop()
	}
	testkit.RemoveBinary()
	os.Exit(code)
}

func openTestStore(databaseURL string) (*Store, error) {
	cfg, err := pg.ParseConfig(databaseURL, 5*time.Second)
	if err != nil {
		return nil, err
	}
	d, err := pg.Open(context.Background(), cfg, 5*time.Second, discardLogger(), schemaSQL)
	if err != nil {
		return nil, err
	}
	return &Store{db: d, maxTasks: 10000}, nil
}

// testFeed is the feed of a test store's database, with the default retention: one per
// store, as a server has.
func testFeed(s *Store) *feed.Feed {
	f, _ := testFeeds.LoadOrStore(s, feed.New(s.db, 168*time.Hour, newUsers()))
	return f.(*feed.Feed)
}

var testFeeds sync.Map // *Store → *feed.Feed

// testStore returns the store on the test database, or skips when there is none (only
// outside CI: TestMain fails the run there).
func testStore(t testing.TB) *Store {
	t.Helper()
	if testStoreShared == nil {
		t.Skip("TEST_DATABASE_URL is unset; run make test")
	}
	return testStoreShared
}

// noDatabase is a store whose database refuses every connection, for tests of what
// happens before a request reaches the store; one that does reach it gets a 503.
func noDatabase(t testing.TB) *Store {
	t.Helper()
	cfg, err := pg.ParseConfig("postgres://nobody@127.0.0.1:1/none?sslmode=disable", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	d, err := pg.New(cfg, time.Second, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	return &Store{db: d, maxTasks: 10000}
}

func discardLogger() *slog.Logger { return slogTo(io.Discard) }

// slogTo returns a logger writing text lines to w.
func slogTo(w io.Writer) *slog.Logger { return slog.New(slog.NewTextHandler(w, nil)) }

// testAPI is the real handler stack, with the test secret and origin, on a store,
// driven through httptest.
type testAPI struct{ handler http.Handler }

const testOrigin = "http://localhost:3000"

func newTestAPI(s *Store) *testAPI { return &testAPI{handler: newTestHandler(s, io.Discard)} }

// newTestHandler is the handler stack on a store, logging to w.
func newTestHandler(s *Store, w io.Writer) http.Handler {
	return newHandler(slogTo(w), newTestService(s, slogTo(w)), []string{testOrigin})
}

// newTestService is what the handlers are made of, on a store, with the test secret: live
// updates wake this instance's streams only (nothing sends wake-ups to others), and
// writes are limited far above what any test but the limit's own makes.
func newTestService(s *Store, log *slog.Logger) service {
	changes := testFeed(s)
	events := feed.NewStreams(changes, log, 16, 10000)
	wakeups := feed.NewWakeups(events, s.db, nil, log)
	return service{
		store:     s,
		feed:      changes,
		auth:      newAuthenticator([]byte(testkit.Secret), nil, "taskflow-web", "taskflow-api"),
		events:    events,
		users:     newUsers(),
		writeRate: fair.NewRate(1 << 20),
		wakeups:   wakeups,
	}
}

// request is one HTTP call; the zero value of each field means "the usual".
type request struct {
	method, path, body string
	token              string            // "" sends no Authorization header
	header             map[string]string // extra headers; Content-Type defaults to JSON when there is a body
	chunked            bool              // no Content-Length, as a streaming client sends
}

// response is an answer, with the t of the call that got it for its checks.
type response struct {
	*httptest.ResponseRecorder
	t *testing.T
}

func (a *testAPI) do(t *testing.T, req request) response {
	t.Helper()
	var body io.Reader
	if req.body != "" {
		body = strings.NewReader(req.body)
	}
	r := httptest.NewRequest(req.method, req.path, body)
	if req.body != "" {
		r.Header.Set("Content-Type", "application/json")
	}
	if req.token != "" {
		r.Header.Set("Authorization", "Bearer "+req.token)
	}
	for k, v := range req.header {
		r.Header.Set(k, v)
	}
	if req.chunked {
		r.ContentLength = -1
	}
	w := httptest.NewRecorder()
	a.handler.ServeHTTP(w, r)
	return response{w, t}
}

// user is a test user with a valid token, talking to a testAPI.
type user struct {
	api   *testAPI
	id    string
	token string
}

func (a *testAPI) newUser(t testing.TB) *user {
	id := testkit.NewUserID()
	return &user{api: a, id: id, token: testkit.Token(t, id)}
}

// do sends a request as u; "{me}" in path stands for u's id.
func (u *user) do(t *testing.T, method, path, body string) response {
	t.Helper()
	return u.api.do(t, request{method: method, path: strings.ReplaceAll(path, "{me}", url.PathEscape(u.id)), body: body, token: u.token})
}

// doWith is do with extra request headers.
func (u *user) doWith(t *testing.T, method, path, body string, header map[string]string) response {
	t.Helper()
	return u.api.do(t, request{method: method, path: strings.ReplaceAll(path, "{me}", url.PathEscape(u.id)), body: body, token: u.token, header: header})
}

// create makes a task through the API and returns it decoded.
func (u *user) create(t *testing.T, title string) taskJSON {
	t.Helper()
	return u.do(t, "POST", "/api/{me}/tasks", fmt.Sprintf(`{"title":%q}`, title)).wantStatus(http.StatusCreated).task()
}

// taskJSON is the wire form of a task, decoded strictly so a renamed field fails a test.
type taskJSON = testkit.Task

func (r response) wantStatus(want int) response {
	r.t.Helper()
	if r.Code != want {
		r.t.Fatalf("status %d, want %d; body %s", r.Code, want, r.Body.String())
	}
	return r
}

func (r response) decode(v any) {
	r.t.Helper()
	dec := json.NewDecoder(strings.NewReader(r.Body.String()))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		r.t.Fatalf("decode %s: %v", r.Body.String(), err)
	}
}

func (r response) task() taskJSON {
	r.t.Helper()
	var tj taskJSON
	r.decode(&tj)
	return tj
}

func (r response) tasks() []taskJSON {
	r.t.Helper()
	var tjs []taskJSON
	r.decode(&tjs)
	return tjs
}

// detail checks that r is the contract's error shape and returns its message.
func (r response) detail() string {
	r.t.Helper()
	if ct := r.Header().Get("Content-Type"); ct != "application/json" {
		r.t.Errorf("Content-Type %q, want application/json", ct)
	}
	var e struct {
		Detail string `json:"detail"`
	}
	r.decode(&e)
	if e.Detail == "" {
		r.t.Errorf("empty detail in %s", r.Body.String())
	}
	return e.Detail
}

// pgBouncer is a running pgbouncer; see startPgBouncer.
type pgBouncer struct {
	url         string // a DATABASE_URL through it
	start, stop func()
}
