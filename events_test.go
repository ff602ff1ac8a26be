package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"

	"taskflow/internal/feed"
	"taskflow/internal/testkit"

	"github.com/golang-jwt/jwt/v5"
	"github.com/jackc/pgx/v5"
)

// sse is an event as a client sees it; a comment line is Name ":".
type sse = testkit.Event

// eventStream is an open GET of an events route, read into events as they come.
type eventStream struct {
	res    *http.Response
	events chan sse
}

// openEvents opens url with the given headers; it fails the test unless the answer is 200.
func openEvents(t *testing.T, url string, header map[string]string) *eventStream {
	t.Helper()
	s, status := tryEvents(t, url, header)
	if status != http.StatusOK {
		t.Fatalf("GET %s: status %d", url, status)
	}
	return s
}

func tryEvents(t *testing.T, url string, header map[string]string) (*eventStream, int) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != http.StatusOK {
		res.Body.Close()
		return nil, res.StatusCode
	}
	s := &eventStream{res: res, events: make(chan sse, 10000)}
	t.Cleanup(func() { res.Body.Close() })
	go func() {
		defer close(s.events)
		testkit.ReadSSE(res.Body, func(ev sse) { s.events <- ev })
	}()
	return s, res.StatusCode
}

// next returns the stream's next event that is not a heartbeat, within a few seconds.
func (s *eventStream) next(t *testing.T) sse {
	t.Helper()
	for {
		select {
		case ev, ok := <-s.events:
			if !ok {
				t.Fatal("the stream ended")
			}
			if ev.Name != ":" {
				return ev
			}
		case <-time.After(5 * time.Second):
			t.Fatal("no event within 5 s")
		}
	}
}

// quiet checks that no event (but heartbeats) comes for a short while.
func (s *eventStream) quiet(t *testing.T) {
	t.Helper()
	timeout := time.After(300 * time.Millisecond)
	for {
		select {
		case ev := <-s.events:
			if ev.Name != ":" {
				t.Fatalf("unexpected event %+v", ev)
			}
		case <-timeout:
			return
		}
	}
}

// ended waits for the server to end the stream, after the events it still sends.
func (s *eventStream) ended(t *testing.T, within time.Duration) []sse {
	t.Helper()
	var got []sse
	timeout := time.After(within)
	for {
		select {
		case ev, ok := <-s.events:
			if !ok {
				return got
			}
			got = append(got, ev)
		case <-timeout:
			t.Fatalf("the stream was still open after %v (got %v)", within, got)
		}
	}
}

// eventsServer is the handler stack with live updates on, on a loopback server.
type eventsServer struct {
	url     string
	events  *feed.Streams
	wakeups *feed.Wakeups
	logs    *testkit.SyncBuffer
	api     *testAPI
}

// newEventsServer serves live updates on the test database; listenURL is the wake-up
// listener's ("" for the test database's), tweak sets the stream's timings.
func newEventsServer(t *testing.T, listenURL string, tweak func(*feed.Streams, *feed.Wakeups)) *eventsServer {
	t.Helper()
	store := testStore(t)
	if listenURL == "" {
		listenURL = testDatabaseURL
	}
	cfg, err := pgx.ParseConfig(listenURL)
	if err != nil {
		t.Fatal(err)
	}
	logs := &testkit.SyncBuffer{}
	svc := newTestService(store, slogTo(logs))
	w := feed.NewWakeups(svc.events, store.db, cfg, slogTo(logs))
	svc.wakeups = w
	if tweak != nil {
		tweak(svc.events, w)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go w.Listen(ctx)
	go w.Notify(ctx)
	h := newHandler(slogTo(logs), svc, []string{testOrigin})
	srv := newTestServer(t, h)
	t.Cleanup(func() {
		cancel()
		svc.events.Close()
	})
	return &eventsServer{url: srv.URL, events: svc.events, wakeups: w, logs: logs, api: &testAPI{handler: h}}
}

// open opens u's stream with extra headers and takes its ready event.
func (es *eventsServer) open(t *testing.T, u *user, query string, header map[string]string) (*eventStream, sse) {
	t.Helper()
	h := map[string]string{"Authorization": "Bearer " + u.token}
	for k, v := range header {
		h[k] = v
	}
	s := openEvents(t, es.url+"/api/"+url.PathEscape(u.id)+"/events"+query, h)
	ready := s.next(t)
	if ready.Name != "ready" || ready.ID == "" || !strings.Contains(ready.Data, `"cursor":"`+ready.ID+`"`) {
		t.Fatalf("first event %+v, want ready with its cursor as its id", ready)
	}
	return s, ready
}

func (es *eventsServer) stream(t *testing.T, u *user) *eventStream {
	t.Helper()
	s, _ := es.open(t, u, "", nil)
	return s
}

func (es *eventsServer) streams() int { return es.events.Open() }

// oneLine is a REST body as an event's data: without the ending newline.
func oneLine(r response) string { return strings.TrimSuffix(r.Body.String(), "\n") }

func TestEventsCarryEachChangeToItsOwnerOnly(t *testing.T) {
	t.Parallel()
	es := newEventsServer(t, "", nil)
	alice, bob := es.api.newUser(t), es.api.newUser(t)
	aliceEvents, bobEvents := es.stream(t, alice), es.stream(t, bob)

	created := alice.do(t, "POST", "/api/{me}/tasks", `{"title":"live"}`).wantStatus(http.StatusCreated)
	task := created.task()
	path := fmt.Sprintf("/api/{me}/tasks/%d", task.ID)
	for _, step := range []struct {
		write func() string // the event data it should cause
		name  string
	}{
		{func() string { return oneLine(created) }, "task.created"},
		{func() string {
			return oneLine(alice.do(t, "PUT", path, `{"description":"now"}`).wantStatus(http.StatusOK))
		}, "task.updated"},
		{func() string { return oneLine(alice.do(t, "PATCH", path+"/complete", "").wantStatus(http.StatusOK)) }, "task.updated"},
		{func() string {
			alice.do(t, "DELETE", path, "").wantStatus(http.StatusNoContent)
			return fmt.Sprintf(`{"id":%d,"version":`, task.ID)
		}, "task.deleted"},
	} {
		want := step.write()
		got := aliceEvents.next(t)
		if got.Name != step.name || !strings.HasPrefix(got.Data, want) || got.ID == "" {
			t.Errorf("event %+v, want %s %s with an id", got, step.name, want)
		}
	}
	bobEvents.quiet(t)
}

// TestOnlyCommittedChangesAreSent: a change rolled back sends nothing.
func TestOnlyCommittedChangesAreSent(t *testing.T) {
	t.Parallel()
	es := newEventsServer(t, "", nil)
	me := es.api.newUser(t)
	stream := es.stream(t, me)
	ctx := context.Background()
	tx, err := testStore(t).db.Pool().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO tasks (user_id, title) VALUES ($1, 'rolled back')`, me.id); err != nil {
		t.Fatal(err)
	}
	tx.Rollback(ctx)
	me.create(t, "committed")
	if ev := stream.next(t); !strings.Contains(ev.Data, `"committed"`) {
		t.Errorf("first event %+v, want the committed task", ev)
	}
}

// TestAStreamFromNowSendsNothingBefore: a change committed before a stream opened is not
// sent on it, even while an older transaction, still open, holds back what a naive
// reading of transaction ids would take as the present.
func TestAStreamFromNowSendsNothingBefore(t *testing.T) {
	t.Parallel()
	es := newEventsServer(t, "", nil)
	me := es.api.newUser(t)
	ctx := context.Background()
	held, err := testStore(t).db.Pool().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Rollback(ctx)
	if _, err := held.Exec(ctx, `SELECT pg_current_xact_id()`); err != nil {
		t.Fatal(err)
	}
	me.create(t, "before the stream")
	stream := es.stream(t, me)
	me.create(t, "after it")
	if ev := stream.next(t); !strings.Contains(ev.Data, `"after it"`) {
		t.Errorf("first event %+v, want the task created after the stream opened", ev)
	}
}

// TestAStreamResumesFromItsLastEventID: a browser's EventSource reconnects with the id of
// the last event it received, and gets exactly what it missed, then goes on live.
func TestAStreamResumesFromItsLastEventID(t *testing.T) {
	t.Parallel()
	es := newEventsServer(t, "", nil)
	me := es.api.newUser(t)
	stream := es.stream(t, me)
	first := me.create(t, "seen")
	last := stream.next(t)
	stream.res.Body.Close()
	testkit.WaitFor(t, "the stream to close", func() bool { return es.streams() == 0 })
	missed := me.create(t, "missed")
	me.do(t, "DELETE", fmt.Sprintf("/api/{me}/tasks/%d", first.ID), "").wantStatus(http.StatusNoContent)

	// What it missed comes first, in task id order, then ready, then what happens next.
	want := []string{"task.deleted", "task.created", "ready"}
	header := map[string]string{"Authorization": "Bearer " + me.token, "Last-Event-ID": last.ID}
	again := openEvents(t, es.url+"/api/"+me.id+"/events", header)
	for i, name := range want {
		if ev := again.next(t); ev.Name != name || i == 1 && !strings.Contains(ev.Data, fmt.Sprintf(`"id":%d`, missed.ID)) {
			t.Fatalf("resumed: event %d is %+v, want %s", i, ev, name)
		}
	}
	me.create(t, "live again")
	if ev := again.next(t); !strings.Contains(ev.Data, `"live again"`) {
		t.Errorf("after the catch-up: %+v", ev)
	}
	// since= does the same for a client that keeps its own cursor.
	bySince := openEvents(t, es.url+"/api/"+me.id+"/events?since="+url.QueryEscape(last.ID), map[string]string{"Authorization": "Bearer " + me.token})
	for i, name := range []string{"task.deleted", "task.created", "task.created", "ready"} {
		if ev := bySince.next(t); ev.Name != name {
			t.Fatalf("from since=: event %d is %+v, want %s", i, ev, name)
		}
	}
}

// TestAnExpiredPlaceIsAResync: a cursor the feed no longer serves gets resync with a
// cursor at the present, and the stream goes on from there.
func TestAnExpiredPlaceIsAResync(t *testing.T) {
	t.Parallel()
	es := newEventsServer(t, "", nil)
	me := es.api.newUser(t)
	future := futureCursor(t, me.id)
	stream := openEvents(t, es.url+"/api/"+me.id+"/events", map[string]string{"Authorization": "Bearer " + me.token, "Last-Event-ID": future})
	resync := stream.next(t)
	if resync.Name != "resync" || !strings.Contains(resync.Data, `"cursor":"`+resync.ID+`"`) {
		t.Fatalf("first event %+v, want resync with a cursor", resync)
	}
	if ready := stream.next(t); ready.Name != "ready" {
		t.Fatalf("after the resync: %+v, want ready", ready)
	}
	me.create(t, "after the resync")
	if ev := stream.next(t); ev.Name != "task.created" {
		t.Errorf("after the resync: %+v", ev)
	}
}

// TestACatchUpOfManyPagesComesOnce: a catch-up longer than a stream's page (32 KiB of
// events: five of the largest tasks) brings each change once, in order, then ready.
func TestACatchUpOfManyPagesComesOnce(t *testing.T) {
	t.Parallel()
	es := newEventsServer(t, "", nil)
	me := es.api.newUser(t)
	from := me.do(t, "GET", "/api/{me}/tasks", "").wantStatus(http.StatusOK).Header().Get("X-Cursor")
	var created []int64
	for range 30 {
		created = append(created, me.do(t, "POST", "/api/{me}/tasks", testkit.LargestTaskBody()).wantStatus(http.StatusCreated).task().ID)
	}
	stream, _ := tryEvents(t, es.url+"/api/"+me.id+"/events?since="+url.QueryEscape(from), map[string]string{"Authorization": "Bearer " + me.token})
	var seen []int64
	for ev := stream.next(t); ev.Name != "ready"; ev = stream.next(t) {
		var got taskJSON
		if err := json.Unmarshal([]byte(ev.Data), &got); err != nil || ev.Name != "task.created" {
			t.Fatalf("%+v: %v", ev, err)
		}
		seen = append(seen, got.ID)
	}
	if !reflect.DeepEqual(seen, created) {
		t.Errorf("the catch-up brought %v, want %v", seen, created)
	}
}

// TestAMalformedCursorOpensNoStream: a cursor the database would refuse is a 400 before
// any stream opens, whether it comes as Last-Event-ID or since=: an EventSource given a
// 200 and then an end would retry it forever.
func TestAMalformedCursorOpensNoStream(t *testing.T) {
	t.Parallel()
	es := newEventsServer(t, "", nil)
	me := es.api.newUser(t)
	for _, junk := range []string{"\xff\xfe", "\x00"} {
		bad := malformedCursor(me.id, junk)
		if _, status := tryEvents(t, es.url+"/api/"+me.id+"/events", map[string]string{"Authorization": "Bearer " + me.token, "Last-Event-ID": bad}); status != http.StatusBadRequest {
			t.Errorf("Last-Event-ID with an incarnation of %q: %d, want 400", junk, status)
		}
		if _, status := tryEvents(t, es.url+"/api/"+me.id+"/events?since="+bad, map[string]string{"Authorization": "Bearer " + me.token}); status != http.StatusBadRequest {
			t.Errorf("since= with an incarnation of %q: %d, want 400", junk, status)
		}
	}
}

// TestACreateThenAnUpdateIsCreated: a task made after the stream's place arrives as
// task.created, even when it was changed again before the stream read it (contract
// v3.1), however the writes and the reads fall.
func TestACreateThenAnUpdateIsCreated(t *testing.T) {
	t.Parallel()
	es := newEventsServer(t, "", nil)
	me := es.api.newUser(t)
	stream := es.stream(t, me)
	for i := range 100 {
		created := me.create(t, fmt.Sprint("made ", i))
		me.do(t, "PUT", fmt.Sprintf("/api/{me}/tasks/%d", created.ID), `{"title":"and renamed"}`).wantStatus(http.StatusOK)
		// The first event of the task: created, whether the update was read with it or not.
		ev := stream.next(t)
		var got taskJSON
		if err := json.Unmarshal([]byte(ev.Data), &got); err != nil || got.ID != created.ID || ev.Name != "task.created" {
			t.Fatalf("trial %d: the task's first event is %+v, want task.created", i, ev)
		}
		if got.Title != "and renamed" {
			if ev := stream.next(t); ev.Name != "task.updated" {
				t.Fatalf("trial %d: after the create, %+v, want task.updated", i, ev)
			}
		}
	}
}

func TestEventsReachEveryInstance(t *testing.T) {
	t.Parallel()
	a, stopA := startRun(t, nil)
	defer stopA()
	b, stopB := startRun(t, nil)
	defer stopB()
	me := testkit.NewUserID()
	token := testkit.Token(t, me)
	stream := openEvents(t, b+"/api/"+me+"/events", map[string]string{"Authorization": "Bearer " + token})
	if ev := stream.next(t); ev.Name != "ready" {
		t.Fatalf("first event %+v", ev)
	}
	start := time.Now()
	res, body := httpDo(t, "POST", a+"/api/"+me+"/tasks", token, `{"title":"through a"}`)
	if res.StatusCode != http.StatusCreated {
		t.Fatalf("create through a: %d", res.StatusCode)
	}
	if ev := stream.next(t); ev.Name != "task.created" || ev.Data != strings.TrimSpace(body) {
		t.Errorf("on b: %+v, want the task created through a", ev)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("the change took %v to reach the other instance", took)
	}
}

// TestTheListenerSkipsPoolSettings: DATABASE_URL may carry pgxpool's own settings
// (pool_max_conns, ...), and the listener, which connects from the same URL by default,
// must not pass them to PostgreSQL as session parameters.
func TestTheListenerSkipsPoolSettings(t *testing.T) {
	t.Parallel()
	testStore(t)
	var logs testkit.SyncBuffer
	base, stop := startRunTo(t, map[string]string{"DATABASE_URL": testDatabaseURL + "&pool_max_conns=4"}, &logs)
	defer stop()
	me := testkit.NewUserID()
	stream := openEvents(t, base+"/api/"+me+"/events", map[string]string{"Authorization": "Bearer " + testkit.Token(t, me)})
	if ev := stream.next(t); ev.Name != "ready" {
		t.Fatalf("first event %+v, want ready", ev)
	}
	time.Sleep(500 * time.Millisecond)
	if strings.Contains(logs.String(), "listener lost its connection") {
		t.Errorf("the listener could not connect:\n%s", logs.String())
	}
}

// TestAStreamCanAuthenticateInItsQuery: EventSource cannot send headers.
func TestAStreamCanAuthenticateInItsQuery(t *testing.T) {
	t.Parallel()
	es := newEventsServer(t, "", nil)
	me := es.api.newUser(t)
	stream := openEvents(t, es.url+"/api/"+me.id+"/events?access_token="+url.QueryEscape(me.token), map[string]string{"Origin": testOrigin})
	if stream.res.Header.Get("Access-Control-Allow-Origin") != testOrigin || stream.res.Header.Get("Access-Control-Allow-Credentials") != "true" {
		t.Errorf("an EventSource with credentials from %s would be refused: %v", testOrigin, stream.res.Header)
	}
	if h := stream.res.Header; h.Get("Content-Type") != "text/event-stream" || h.Get("Cache-Control") != "no-store" {
		t.Errorf("headers %v", h)
	}
	if ev := stream.next(t); ev.Name != "ready" {
		t.Fatalf("first event %+v", ev)
	}
	for _, c := range []struct {
		path   string
		header map[string]string
		want   int
	}{
		{"/api/" + me.id + "/events?access_token=nope", nil, http.StatusUnauthorized},
		{"/api/" + me.id + "/events?access_token=" + me.token + "&access_token=" + me.token, nil, http.StatusUnauthorized},
		{"/api/someone-else/events?access_token=" + me.token, nil, http.StatusForbidden},
		{"/api/" + me.id + "/tasks?access_token=" + me.token, nil, http.StatusUnauthorized}, // events only
		{"/api/" + me.id + "/events?access_token=" + me.token, map[string]string{"Origin": "https://evil.example", "Accept": "text/event-stream"}, http.StatusForbidden},
		{"/api/" + me.id + "/events?access_token=" + me.token, map[string]string{"Origin": "https://evil.example"}, http.StatusForbidden},
		{"/api/" + me.id + "/%65vents?access_token=" + me.token, map[string]string{"Origin": "https://evil.example", "Accept": "*/*"}, http.StatusForbidden},
		{"/api/" + me.id + "/events?access_token=" + me.token, map[string]string{"Last-Event-ID": "not a cursor"}, http.StatusBadRequest},
	} {
		if _, status := tryEvents(t, es.url+c.path, c.header); status != c.want {
			t.Errorf("GET %s %v: %d, want %d", c.path, c.header, status, c.want)
		}
	}
	if strings.Contains(es.logs.String(), me.token) {
		t.Error("the log holds the token from the query")
	}
}

// TestStreamLimits: past MAX_STREAMS_PER_USER a 429, past MAX_STREAMS a 503, and a
// stream counts until its socket is closed; refusals at the instance's limit are
// counted in the log, not logged one by one.
func TestStreamLimits(t *testing.T) {
	t.Parallel()
	es := newEventsServer(t, "", func(e *feed.Streams, _ *feed.Wakeups) { e.MaxPerUser, e.MaxTotal = 2, 3 })
	alice, bob := es.api.newUser(t), es.api.newUser(t)
	es.stream(t, alice)
	first := es.stream(t, alice)
	if _, status := tryEvents(t, es.url+"/api/"+alice.id+"/events", map[string]string{"Authorization": "Bearer " + alice.token}); status != http.StatusTooManyRequests {
		t.Errorf("a third stream for one user: %d, want 429", status)
	}
	// HEAD says so too, for a client whose EventSource cannot see why it was refused.
	if res := alice.do(t, "HEAD", "/api/{me}/events", ""); res.Code != http.StatusTooManyRequests || res.Header().Get("Retry-After") == "" {
		t.Errorf("HEAD at the limit: %d %v, want 429 with Retry-After", res.Code, res.Header())
	}
	// A client that closes its stream gives its place back, with no event sent to notice.
	first.res.Body.Close()
	testkit.WaitFor(t, "the closed stream to be forgotten", func() bool { return es.streams() == 1 })
	es.stream(t, alice)
	es.stream(t, bob)
	for range 30 {
		if _, status := tryEvents(t, es.url+"/api/"+bob.id+"/events", map[string]string{"Authorization": "Bearer " + bob.token}); status != http.StatusServiceUnavailable {
			t.Fatalf("a fourth stream on the instance: %d, want 503", status)
		}
	}
	if lines := strings.Count(es.logs.String(), "\n"); lines > 10 {
		t.Errorf("30 refusals made %d log lines:\n%s", lines, es.logs.String())
	}
}

// TestAHeadOfTheStreamOpensNone: a GET route answers HEAD too, and a stream's head has
// no body; a stream opened for it would write events onto a connection the client
// reuses for its next request.
func TestAHeadOfTheStreamOpensNone(t *testing.T) {
	t.Parallel()
	es := newEventsServer(t, "", nil)
	alice := es.api.newUser(t)
	conn, err := net.Dial("tcp", strings.TrimPrefix(es.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "HEAD /api/%s/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n", alice.id, alice.token)
	fmt.Fprintf(conn, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReader(conn)
	head, err := http.ReadResponse(br, &http.Request{Method: "HEAD"})
	if err != nil {
		t.Fatal(err)
	}
	if head.StatusCode != http.StatusOK || head.Header.Get("Content-Type") != "text/event-stream" {
		t.Errorf("HEAD: %d %q, want 200 text/event-stream", head.StatusCode, head.Header.Get("Content-Type"))
	}
	next, err := http.ReadResponse(br, &http.Request{Method: "GET"})
	if err != nil {
		t.Fatalf("the request after the HEAD on its connection: %v", err)
	}
	if body, _ := io.ReadAll(next.Body); next.StatusCode != http.StatusOK || !strings.Contains(string(body), "ok") {
		t.Errorf("the request after the HEAD: %d %s, want /healthz's 200", next.StatusCode, body)
	}
	if n := es.streams(); n != 0 {
		t.Errorf("%d streams open after a HEAD, want 0", n)
	}
}

func TestHeartbeatsAndExpiry(t *testing.T) {
	t.Parallel()
	es := newEventsServer(t, "", func(e *feed.Streams, _ *feed.Wakeups) { e.Heartbeat = 100 * time.Millisecond })
	me := es.api.newUser(t)
	c := testkit.Claims(me.id)
	// exp is whole seconds: at least one second away, so that the stream lasts 1 to 2 s
	// however late in a second the test starts.
	c.ExpiresAt = jwt.NewNumericDate(time.Now().Truncate(time.Second).Add(2 * time.Second))
	short, err := mintToken([]byte(testkit.Secret), c)
	if err != nil {
		t.Fatal(err)
	}
	stream := openEvents(t, es.url+"/api/"+me.id+"/events", map[string]string{"Authorization": "Bearer " + short})
	rest := stream.ended(t, 5*time.Second)
	beats := 0
	for _, ev := range rest {
		if ev.Name == ":" {
			beats++
		}
	}
	if len(rest) < 2 || rest[0].Name != "ready" || rest[len(rest)-1].Name != "expired" || beats < 5 {
		t.Errorf("events %v: want ready, heartbeats every 100 ms, and expired last", rest)
	}
}

// TestASlowClientIsCutLoose: a client that stops reading loses its stream once a page of
// events cannot reach it in time, and the kernel frees its socket at once; the others
// go on, and end where the database is.
func TestASlowClientIsCutLoose(t *testing.T) {
	t.Parallel()
	es := newEventsServer(t, "", func(e *feed.Streams, _ *feed.Wakeups) { e.WriteTimeout = 200 * time.Millisecond })
	me := es.api.newUser(t)
	fast := es.stream(t, me)
	conn := es.openUnread(t, me)
	testkit.WaitFor(t, "two streams", func() bool { return es.streams() == 2 })
	// The largest task's events are about 7 KB; a page of them fills any socket buffer.
	var created, seen []int64
	for range 120 {
		created = append(created, me.do(t, "POST", "/api/{me}/tasks", testkit.LargestTaskBody()).wantStatus(http.StatusCreated).task().ID)
	}
	testkit.WaitFor(t, "the slow stream to be dropped", func() bool { return es.streams() == 1 })
	for len(seen) < len(created) { // in pages of streamPageBytes: five of these events
		var task taskJSON
		if err := json.Unmarshal([]byte(fast.next(t).Data), &task); err != nil {
			t.Fatal(err)
		}
		seen = append(seen, task.ID)
	}
	if !reflect.DeepEqual(seen, created) {
		t.Errorf("the reading stream saw %v, want %v", seen, created)
	}
	if _, err := conn.Read(make([]byte, 1<<20)); err == nil {
		for {
			if _, err = conn.Read(make([]byte, 1<<20)); err != nil {
				break
			}
		}
		if !strings.Contains(err.Error(), "reset") {
			t.Errorf("the dropped stream ended with %v, want a reset (SO_LINGER 0)", err)
		}
	}
}

// openUnread opens u's stream on a raw connection that reads nothing, with small
// buffers, so that it backs up soon.
func (es *eventsServer) openUnread(t *testing.T, u *user) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(es.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.(*net.TCPConn).SetReadBuffer(4096)
	fmt.Fprintf(conn, "GET /api/%s/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n", u.id, u.token)
	return conn
}

// TestASlowClientDelaysNoOne: a stream whose client has stopped reading holds nothing
// the feed's reads need while it waits for its client, so however many such streams
// there are, the others' events go on.
func TestASlowClientDelaysNoOne(t *testing.T) {
	t.Parallel()
	es := newEventsServer(t, "", func(e *feed.Streams, _ *feed.Wakeups) { e.WriteTimeout = time.Minute })
	slow, other := es.api.newUser(t), es.api.newUser(t)
	es.openUnread(t, slow)
	testkit.WaitFor(t, "the slow stream", func() bool { return es.streams() == 1 })
	for range 40 { // 280 KB of events: more than the socket buffers hold
		slow.do(t, "POST", "/api/{me}/tasks", testkit.LargestTaskBody()).wantStatus(http.StatusCreated)
	}
	time.Sleep(300 * time.Millisecond) // for the slow stream to fill its socket and wait
	fast := es.stream(t, other)        // its ready event needs a read of the feed
	created := other.do(t, "POST", "/api/{me}/tasks", `{"title":"on time"}`).wantStatus(http.StatusCreated)
	if ev := fast.next(t); ev.Name != "task.created" || ev.Data != oneLine(created) {
		t.Fatalf("got %+v, want task.created with %s", ev, oneLine(created))
	}
}

// TestAListenerCutLosesNothing: the listener's connection ended by the server (a
// failover, an idle timeout, an operator) comes back, and every stream reads what it may
// have missed meanwhile: here a task written around the service, which sends no wake-up.
func TestAListenerCutLosesNothing(t *testing.T) {
	t.Parallel()
	name := "listener-" + strings.ToLower(testkit.NewUserID()[:12])
	es := newEventsServer(t, testDatabaseURL+"&application_name="+name, nil)
	me := es.api.newUser(t)
	stream := es.stream(t, me)
	testkit.WaitFor(t, "the listener", func() bool { return listeners(t, name) == 1 })
	if _, err := testStore(t).db.Pool().Exec(context.Background(), `INSERT INTO tasks (user_id, title) VALUES ($1, 'by hand')`, me.id); err != nil {
		t.Fatal(err)
	}
	terminateBackends(t, name)
	if ev := stream.next(t); ev.Name != "task.created" || !strings.Contains(ev.Data, `"by hand"`) {
		t.Fatalf("after the cut: %+v, want the task written meanwhile", ev)
	}
}

func listeners(t *testing.T, name string) int {
	var n int
	testStore(t).db.Pool().QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity WHERE application_name = $1`, name).Scan(&n)
	return n
}

// TestTheListenerHoldsNoConnectionForNobody: it connects for the first stream, and lets
// the connection go a while after the last.
func TestTheListenerHoldsNoConnectionForNobody(t *testing.T) {
	t.Parallel()
	name := "lazy-" + strings.ToLower(testkit.NewUserID()[:12])
	es := newEventsServer(t, testDatabaseURL+"&application_name="+name, func(e *feed.Streams, w *feed.Wakeups) {
		w.Linger, e.Heartbeat = 200*time.Millisecond, 100*time.Millisecond
	})
	time.Sleep(300 * time.Millisecond)
	if n := listeners(t, name); n != 0 {
		t.Fatalf("%d listener connections with no stream", n)
	}
	me := es.api.newUser(t)
	stream := es.stream(t, me)
	testkit.WaitFor(t, "the listener to connect", func() bool { return listeners(t, name) == 1 })
	stream.res.Body.Close()
	testkit.WaitFor(t, "the listener to let go", func() bool { return listeners(t, name) == 0 })
}

// TestShutdownEndsStreamsAtOnce: open streams must not hold the drain for SHUTDOWN_GRACE.
func TestShutdownEndsStreamsAtOnce(t *testing.T) {
	t.Parallel()
	base, stop := startRun(t, nil)
	me := testkit.NewUserID()
	stream := openEvents(t, base+"/api/"+me+"/events", map[string]string{"Authorization": "Bearer " + testkit.Token(t, me)})
	stream.next(t)
	start := time.Now()
	if err := stop(); err != nil {
		t.Errorf("run returned %v", err)
	}
	stream.ended(t, time.Second)
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("shutdown took %v with a stream open", took)
	}
}

// TestTheFeedThroughAPooler: behind PgBouncer in transaction mode, as Neon's -pooler
// endpoint, the REST API, /changes and every stream's catch-up work, with only the
// wake-up listener on the direct URL; a change made on one instance reaches a stream on
// another.
func TestTheFeedThroughAPooler(t *testing.T) {
	t.Parallel()
	testStore(t)
	pooled := testkit.StartPgBouncer(t, testDatabaseURL).URL
	me := testkit.NewUserID()
	token := testkit.Token(t, me)
	env := map[string]string{"DATABASE_URL": pooled, "DATABASE_LISTEN_URL": testDatabaseURL}
	a, stopA := startRun(t, env)
	defer stopA()
	b, stopB := startRun(t, env)
	defer stopB()
	res, _ := httpDo(t, "GET", a+"/api/"+me+"/tasks", token, "")
	cursor := res.Header.Get("X-Cursor")
	if res, body := httpDo(t, "POST", a+"/api/"+me+"/tasks", token, `{"title":"before the stream"}`); res.StatusCode != http.StatusCreated {
		t.Fatalf("create through the pooler: %d %s", res.StatusCode, body)
	}
	if res, body := httpDo(t, "GET", b+"/api/"+me+"/changes?since="+url.QueryEscape(cursor), token, ""); res.StatusCode != http.StatusOK || !strings.Contains(body, "before the stream") {
		t.Errorf("changes through the pooler: %d %s", res.StatusCode, body)
	}
	stream := openEvents(t, b+"/api/"+me+"/events?since="+url.QueryEscape(cursor), map[string]string{"Authorization": "Bearer " + token})
	if ev := stream.next(t); ev.Name != "task.created" || !strings.Contains(ev.Data, "before the stream") {
		t.Fatalf("the stream's catch-up: %+v", ev)
	}
	if ev := stream.next(t); ev.Name != "ready" {
		t.Fatalf("after the catch-up: %+v", ev)
	}
	if res, _ := httpDo(t, "POST", a+"/api/"+me+"/tasks", token, `{"title":"heard"}`); res.StatusCode != http.StatusCreated {
		t.Fatalf("create: %d", res.StatusCode)
	}
	if ev := stream.next(t); ev.Name != "task.created" || !strings.Contains(ev.Data, `"heard"`) {
		t.Errorf("event %+v, want the task created on the other instance", ev)
	}
}

// TestAStreamOutlivesAPostgreSQLRestart restarts the shared cluster, so it is not
// parallel: Go runs it before any parallel test resumes. The stream stays open through
// the outage and goes on. After a crash, PostgreSQL may hand out again the ids of
// transactions whose end it had not written; if it went back below the stream's cursor,
// the service cannot tell what the stream missed, and says resync first.
func TestAStreamOutlivesAPostgreSQLRestart(t *testing.T) {
	testkit.NeedOwnCluster(t)
	es := newEventsServer(t, "", nil)
	me := es.api.newUser(t)
	stream := es.stream(t, me)
	testkit.PgCtl(t, "stop", "-m", "immediate", "-w")
	testkit.PgCtl(t, "start")
	testkit.WaitFor(t, "a create to succeed", func() bool {
		return me.do(t, "POST", "/api/{me}/tasks", `{"title":"after the restart"}`).Code == http.StatusCreated
	})
	ev := stream.next(t)
	if ev.Name == "resync" { // as a client does: list again
		if list := me.do(t, "GET", "/api/{me}/tasks", "").wantStatus(http.StatusOK).tasks(); len(list) == 1 {
			return
		}
		t.Fatal("after a resync, the list lacks the task created after the restart")
	}
	if ev.Name != "task.created" || !strings.Contains(ev.Data, "after the restart") {
		t.Errorf("after the restart: %+v", ev)
	}
}
