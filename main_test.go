package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// The tests run against the real PostgreSQL named by TEST_DATABASE_URL (make test starts
// one). Tests isolate themselves by user: each makes fresh random user ids, and every
// query is scoped by user id, so they run in parallel on one database without seeing
// each other's rows.

var testStoreShared *Store

const testSecret = "test-secret-that-is-at-least-32-bytes-long"

func TestMain(m *testing.M) {
	url := os.Getenv("TEST_DATABASE_URL")
	switch {
	case url != "":
		cfg, err := newPoolConfig(url, 5*time.Second)
		if err == nil {
			testStoreShared, err = openStore(context.Background(), cfg, 5*time.Second)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "TEST_DATABASE_URL: %v\n", err)
			os.Exit(1)
		}
	case os.Getenv("CI") == "true":
		fmt.Fprintln(os.Stderr, "TEST_DATABASE_URL is unset: under CI the database tests must run, not skip (use make test)")
		os.Exit(1)
	}
	code := m.Run()
	if testStoreShared != nil {
		testStoreShared.Close()
	}
	os.Exit(code)
}

// testStore returns the store on the test database, or skips when there is none (only
// outside CI: TestMain fails the run there).
func testStore(t testing.TB) *Store {
	t.Helper()
	if testStoreShared == nil {
		t.Skip("TEST_DATABASE_URL is unset; run make test")
	}
	return testStoreShared
}

// newUserID returns a fresh id shaped like Better Auth's: 32 random alphanumerics.
func newUserID(t testing.TB) string {
	t.Helper()
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}

// validClaims are claims the test server accepts for userID; tests mutate a copy.
func validClaims(userID string) jwt.RegisteredClaims {
	now := time.Now()
	return jwt.RegisteredClaims{
		Subject:   userID,
		Issuer:    "taskflow-web",
		Audience:  jwt.ClaimStrings{"taskflow-api"},
		IssuedAt:  jwt.NewNumericDate(now),
		ExpiresAt: jwt.NewNumericDate(now.Add(15 * time.Minute)),
	}
}

func tokenFor(t testing.TB, userID string) string {
	t.Helper()
	tok, err := mintToken([]byte(testSecret), validClaims(userID))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// testAPI is the real handler stack on the real store, driven through httptest.
type testAPI struct {
	t       *testing.T
	handler http.Handler
}

const testOrigin = "http://localhost:3000"

func newTestAPI(t *testing.T) *testAPI {
	t.Helper()
	return apiOn(t, testStore(t))
}

// apiOn is the real handler stack, with the test secret and origin, on store s.
func apiOn(t *testing.T, s *Store) *testAPI {
	auth := newAuthenticator([]byte(testSecret), nil, "taskflow-web", "taskflow-api")
	return &testAPI{t: t, handler: newHandler(discardLogger(), s, auth, []string{testOrigin})}
}

func discardLogger() *slog.Logger { return slogTo(io.Discard) }

// request is one HTTP call; the zero value of each field means "the usual".
type request struct {
	method, path, body string
	token              string            // "" sends no Authorization header
	header             map[string]string // extra headers; Content-Type defaults to JSON when there is a body
}

type response struct {
	*httptest.ResponseRecorder
	t *testing.T
}

func (a *testAPI) do(req request) response {
	a.t.Helper()
	w := newRecorder()
	a.handler.ServeHTTP(w, httptestRequest(req))
	return response{w, a.t}
}

func httptestRequest(req request) *http.Request {
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
	return r
}

func newRecorder() *httptest.ResponseRecorder { return httptest.NewRecorder() }

// slogTo returns a logger writing text lines to w.
func slogTo(w io.Writer) *slog.Logger { return slog.New(slog.NewTextHandler(w, nil)) }

// user is a test user with a valid token, talking to a testAPI.
type user struct {
	api   *testAPI
	id    string
	token string
}

func (a *testAPI) newUser() *user {
	id := newUserID(a.t)
	return &user{api: a, id: id, token: tokenFor(a.t, id)}
}

func (u *user) do(method, path, body string) response {
	u.api.t.Helper()
	return u.api.do(request{method: method, path: strings.ReplaceAll(path, "{me}", u.id), body: body, token: u.token})
}

// create makes a task through the API and returns it decoded.
func (u *user) create(title string) taskJSON {
	u.api.t.Helper()
	res := u.do("POST", "/api/{me}/tasks", fmt.Sprintf(`{"title":%q}`, title))
	res.wantStatus(http.StatusCreated)
	return res.task()
}

// taskJSON is the wire form of a task, decoded strictly so a renamed field fails a test.
type taskJSON struct {
	ID          int64   `json:"id"`
	UserID      string  `json:"user_id"`
	Title       string  `json:"title"`
	Description *string `json:"description"`
	Completed   bool    `json:"completed"`
	CreatedAt   string  `json:"created_at"`
	UpdatedAt   string  `json:"updated_at"`
}

func (tj taskJSON) equal(o taskJSON) bool {
	sameDesc := (tj.Description == nil) == (o.Description == nil) &&
		(tj.Description == nil || *tj.Description == *o.Description)
	tj.Description, o.Description = nil, nil
	return sameDesc && tj == o
}

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

// envDuration reads a duration knob of make soak or make bench.
func envDuration(t *testing.T, name string, def time.Duration) time.Duration {
	if v := os.Getenv(name); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return d
	}
	return def
}
