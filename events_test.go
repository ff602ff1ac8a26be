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
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/jackc/pgx/v5"
)

// sse is an event as a client sees it; a comment line is name ":".
type sse struct{ name, data string }

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
		readSSE(res.Body, func(ev sse) { s.events <- ev })
	}()
	return s, res.StatusCode
}

// readSSE reads events from r until it ends, as the server sends them: one data line
// each. A comment (a heartbeat) comes as an event named ":".
func readSSE(r io.Reader, each func(sse)) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 64<<10)
	var ev sse
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if ev.name != "" {
				each(ev)
			}
			ev = sse{}
		case strings.HasPrefix(line, ":"):
			each(sse{name: ":"})
		case strings.HasPrefix(line, "event: "):
			ev.name = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			ev.data = strings.TrimPrefix(line, "data: ")
		}
	}
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
			if ev.name != ":" {
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
			if ev.name != ":" {
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
	url    string
	events *Events
	logs   *syncBuffer
	api    *testAPI
}

func newEventsServer(t *testing.T, listenURL string, tweak func(*Events)) *eventsServer {
	t.Helper()
	store := testStore(t)
	if listenURL == "" {
		listenURL = testDatabaseURL
	}
	cfg, err := pgx.ParseConfig(listenURL)
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	events := newEvents(cfg, "DATABASE_LISTEN_URL", store, slogTo(logs), 16, 10000)
	if tweak != nil {
		tweak(events)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go events.Listen(ctx)
	h := newHandler(slogTo(logs), store, newAuthenticator([]byte(testSecret), nil, "taskflow-web", "taskflow-api"), events, []string{testOrigin})
	srv := newTestServer(t, h)
	t.Cleanup(func() {
		cancel()
		events.Close()
	})
	return &eventsServer{url: srv.URL, events: events, logs: logs, api: &testAPI{handler: h}}
}

// stream opens u's stream and takes its ready event.
func (es *eventsServer) stream(t *testing.T, u *user) *eventStream {
	t.Helper()
	s := openEvents(t, es.url+"/api/"+url.PathEscape(u.id)+"/events", map[string]string{"Authorization": "Bearer " + u.token})
	if ev := s.next(t); ev.name != "ready" {
		t.Fatalf("first event %+v, want ready", ev)
	}
	return s
}

func TestEventsCarryEachChangeToItsOwnerOnly(t *testing.T) {
	t.Parallel()
	es := newEventsServer(t, "", nil)
	alice, bob := es.api.newUser(t), es.api.newUser(t)
	aliceEvents, bobEvents := es.stream(t, alice), es.stream(t, bob)

	created := alice.do(t, "POST", "/api/{me}/tasks", `{"title":"live"}`).wantStatus(http.StatusCreated)
	path := fmt.Sprintf("/api/{me}/tasks/%d", created.task().ID)
	updated := alice.do(t, "PUT", path, `{"description":"now"}`).wantStatus(http.StatusOK)
	toggled := alice.do(t, "PATCH", path+"/complete", "").wantStatus(http.StatusOK)
	alice.do(t, "DELETE", path, "").wantStatus(http.StatusNoContent)

	for _, want := range []sse{
		{"task.created", created.Body.String()},
		{"task.updated", updated.Body.String()},
		{"task.updated", toggled.Body.String()},
		{"task.deleted", fmt.Sprintf(`{"id":%d}`, created.task().ID)},
	} {
		// The REST body ends with the encoder's newline; the event's data is one line.
		if got := aliceEvents.next(t); got.name != want.name || got.data != strings.TrimSpace(want.data) {
			t.Errorf("event %s %s, want %s %s", got.name, got.data, want.name, strings.TrimSpace(want.data))
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
	tx, err := testStore(t).pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO tasks (user_id, title) VALUES ($1, 'rolled back')`, me.id); err != nil {
		t.Fatal(err)
	}
	tx.Rollback(ctx)
	me.create(t, "committed")
	if ev := stream.next(t); !strings.Contains(ev.data, `"committed"`) {
		t.Errorf("first event %+v, want the committed task", ev)
	}
}

// TestTheLargestTaskFitsANotification: NOTIFY refuses payloads of 8000 bytes and more, and
// a notification that did not fit would fail the write itself.
func TestTheLargestTaskFitsANotification(t *testing.T) {
	t.Parallel()
	es := newEventsServer(t, "", nil)
	// U+0001 is the character JSON escapes the longest (\u0001, six bytes); the user id
	// is the longest allowed too, of the same character.
	id := newUserID(t)[:8] + strings.Repeat("\x01", 247)
	me := &user{api: es.api, id: id, token: tokenFor(t, id)}
	stream := es.stream(t, me)
	body := largestTaskBody()
	created := me.do(t, "POST", "/api/{me}/tasks", body).wantStatus(http.StatusCreated)
	if ev := stream.next(t); ev.name != "task.created" || ev.data != strings.TrimSpace(created.Body.String()) {
		t.Errorf("event %s of %d bytes, want the created task", ev.name, len(ev.data))
	}
}

func TestEventsReachEveryInstance(t *testing.T) {
	t.Parallel()
	a, stopA := startRun(t, nil)
	defer stopA()
	b, stopB := startRun(t, nil)
	defer stopB()
	me := newUserID(t)
	token := tokenFor(t, me)
	stream := openEvents(t, b+"/api/"+me+"/events", map[string]string{"Authorization": "Bearer " + token})
	if ev := stream.next(t); ev.name != "ready" {
		t.Fatalf("first event %+v", ev)
	}
	res, body := httpDo(t, "POST", a+"/api/"+me+"/tasks", token, `{"title":"through a"}`)
	if res.StatusCode != http.StatusCreated {
		t.Fatalf("create through a: %d", res.StatusCode)
	}
	if ev := stream.next(t); ev.name != "task.created" || ev.data != strings.TrimSpace(body) {
		t.Errorf("on b: %+v, want the task created through a", ev)
	}
}

// TestTheListenerSkipsPoolSettings: DATABASE_URL may carry pgxpool's own settings
// (pool_max_conns, ...), and the listener, which connects from the same URL by default,
// must not pass them to PostgreSQL as session parameters.
func TestTheListenerSkipsPoolSettings(t *testing.T) {
	t.Parallel()
	testStore(t)
	base, stop := startRun(t, map[string]string{"DATABASE_URL": testDatabaseURL + "&pool_max_conns=4"})
	defer stop()
	me := newUserID(t)
	stream := openEvents(t, base+"/api/"+me+"/events", map[string]string{"Authorization": "Bearer " + tokenFor(t, me)})
	if ev := stream.next(t); ev.name != "ready" {
		t.Fatalf("first event %+v, want ready", ev)
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
	if ev := stream.next(t); ev.name != "ready" {
		t.Fatalf("first event %+v", ev)
	}
	for _, c := range []struct {
		path string
		want int
	}{
		{"/api/" + me.id + "/events?access_token=nope", http.StatusUnauthorized},
		{"/api/" + me.id + "/events?access_token=" + me.token + "&access_token=" + me.token, http.StatusUnauthorized},
		{"/api/someone-else/events?access_token=" + me.token, http.StatusForbidden},
		{"/api/" + me.id + "/tasks?access_token=" + me.token, http.StatusUnauthorized}, // events only
	} {
		if _, status := tryEvents(t, es.url+c.path, nil); status != c.want {
			t.Errorf("GET %s: %d, want %d", c.path, status, c.want)
		}
	}
	if strings.Contains(es.logs.String(), me.token) {
		t.Error("the log holds the token from the query")
	}
}

func TestStreamLimits(t *testing.T) {
	t.Parallel()
	es := newEventsServer(t, "", func(e *Events) { e.maxPerUser, e.maxTotal = 2, 3 })
	alice, bob := es.api.newUser(t), es.api.newUser(t)
	es.stream(t, alice)
	first := es.stream(t, alice)
	if _, status := tryEvents(t, es.url+"/api/"+alice.id+"/events", map[string]string{"Authorization": "Bearer " + alice.token}); status != http.StatusTooManyRequests {
		t.Errorf("a third stream for one user: %d, want 429", status)
	}
	// A client that closes its stream gives its place back, with no event sent to notice.
	first.res.Body.Close()
	waitFor(t, "the closed stream to be forgotten", func() bool {
		es.events.mu.Lock()
		defer es.events.mu.Unlock()
		return es.events.total == 1
	})
	es.stream(t, alice)
	es.stream(t, bob)
	if _, status := tryEvents(t, es.url+"/api/"+bob.id+"/events", map[string]string{"Authorization": "Bearer " + bob.token}); status != http.StatusServiceUnavailable {
		t.Errorf("a fourth stream on the instance: %d, want 503", status)
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
	es.events.mu.Lock()
	defer es.events.mu.Unlock()
	if es.events.total != 0 {
		t.Errorf("%d streams open after a HEAD, want 0", es.events.total)
	}
}

func TestHeartbeatsAndExpiry(t *testing.T) {
	t.Parallel()
	es := newEventsServer(t, "", func(e *Events) { e.heartbeat = 100 * time.Millisecond })
	me := es.api.newUser(t)
	c := validClaims(me.id)
	c.ExpiresAt = jwt.NewNumericDate(time.Now().Add(1500 * time.Millisecond))
	short, err := mintToken([]byte(testSecret), c)
	if err != nil {
		t.Fatal(err)
	}
	stream := openEvents(t, es.url+"/api/"+me.id+"/events", map[string]string{"Authorization": "Bearer " + short})
	rest := stream.ended(t, 5*time.Second)
	beats := 0
	for _, ev := range rest {
		if ev.name == ":" {
			beats++
		}
	}
	if len(rest) < 2 || rest[0].name != "ready" || rest[len(rest)-1].name != "expired" || beats < 5 {
		t.Errorf("events %v: want ready, heartbeats every 100 ms, and expired last", rest)
	}
}

// TestASlowClientIsCutLoose: a client that stops reading loses its stream once its
// buffer is full, and the others go on receiving every event.
func TestASlowClientIsCutLoose(t *testing.T) {
	t.Parallel()
	es := newEventsServer(t, "", nil)
	me := es.api.newUser(t)
	fast := es.stream(t, me)
	// A raw connection that reads nothing; small buffers, so that it backs up soon.
	conn, err := net.Dial("tcp", strings.TrimPrefix(es.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.(*net.TCPConn).SetReadBuffer(4096)
	fmt.Fprintf(conn, "GET /api/%s/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n", me.id, me.token)
	waitFor(t, "two streams", func() bool {
		es.events.mu.Lock()
		defer es.events.mu.Unlock()
		return es.events.total == 2
	})
	// The largest task's events are about 7 KB; enough of them fill any socket buffer.
	body := largestTaskBody()
	path := fmt.Sprintf("/api/{me}/tasks/%d", me.do(t, "POST", "/api/{me}/tasks", body).wantStatus(http.StatusCreated).task().ID)
	const toggles = 1500
	for range toggles {
		me.do(t, "PATCH", path+"/complete", "").wantStatus(http.StatusOK)
	}
	waitFor(t, "the slow stream to be dropped", func() bool {
		es.events.mu.Lock()
		defer es.events.mu.Unlock()
		return es.events.total == 1
	})
	if ev := fast.next(t); ev.name != "task.created" {
		t.Fatalf("fast: %+v", ev)
	}
	for i := range toggles {
		if ev := fast.next(t); ev.name != "task.updated" {
			t.Fatalf("fast: event %d is %+v", i, ev)
		}
	}
}

// TestAListenerCutResyncs: the listener's connection ended by the server (a failover,
// an idle timeout, an operator) comes back, and the streams are told they may have
// missed changes.
func TestAListenerCutResyncs(t *testing.T) {
	t.Parallel()
	name := "listener-" + strings.ToLower(newUserID(t)[:12])
	es := newEventsServer(t, testDatabaseURL+"&application_name="+name, nil)
	me := es.api.newUser(t)
	stream := es.stream(t, me)
	terminateBackends(t, name)
	if ev := stream.next(t); ev.name != "resync" {
		t.Fatalf("after the cut: %+v, want resync", ev)
	}
	me.create(t, "after the cut")
	if ev := stream.next(t); ev.name != "task.created" {
		t.Errorf("after the resync: %+v", ev)
	}
}

// TestTheListenerHoldsNoConnectionForNobody: it connects for the first stream, and lets
// the connection go a while after the last.
func TestTheListenerHoldsNoConnectionForNobody(t *testing.T) {
	t.Parallel()
	name := "lazy-" + strings.ToLower(newUserID(t)[:12])
	es := newEventsServer(t, testDatabaseURL+"&application_name="+name, func(e *Events) {
		e.linger, e.heartbeat = 200*time.Millisecond, 100*time.Millisecond
	})
	connections := func() int {
		var n int
		testStore(t).pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity WHERE application_name = $1`, name).Scan(&n)
		return n
	}
	time.Sleep(300 * time.Millisecond)
	if n := connections(); n != 0 {
		t.Fatalf("%d listener connections with no stream", n)
	}
	me := es.api.newUser(t)
	stream := es.stream(t, me)
	if n := connections(); n != 1 {
		t.Errorf("%d listener connections with a stream, want 1", n)
	}
	stream.res.Body.Close()
	waitFor(t, "the listener to let go", func() bool { return connections() == 0 })
}

// TestAListenerThatHearsNothingIsReported: a listener whose own notification never comes
// back (here it listens on another database; behind a transaction-mode pooler, nothing
// comes back either) says so in the log, and streams get a 503 that says why.
func TestAListenerThatHearsNothingIsReported(t *testing.T) {
	t.Parallel()
	other := strings.Replace(testDatabaseURL, "/taskflow_test?", "/postgres?", 1)
	es := newEventsServer(t, other, func(e *Events) { e.checkWait = 300 * time.Millisecond })
	es.events.Check(context.Background())
	if !strings.Contains(es.logs.String(), "set DATABASE_LISTEN_URL") {
		t.Errorf("the log does not say what to fix:\n%s", es.logs.String())
	}
	me := es.api.newUser(t)
	res := me.do(t, "GET", "/api/{me}/events", "").wantStatus(http.StatusServiceUnavailable)
	if d := res.detail(); !strings.Contains(d, "DATABASE_LISTEN_URL") {
		t.Errorf("detail %q", d)
	}
	me.create(t, "the REST API works as before")
}

// TestShutdownEndsStreamsAtOnce: open streams must not hold the drain for SHUTDOWN_GRACE.
func TestShutdownEndsStreamsAtOnce(t *testing.T) {
	t.Parallel()
	base, stop := startRun(t, nil)
	me := newUserID(t)
	stream := openEvents(t, base+"/api/"+me+"/events", map[string]string{"Authorization": "Bearer " + tokenFor(t, me)})
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

// TestEventsThroughAPooler: behind PgBouncer in transaction mode, as Neon's -pooler
// endpoint, LISTEN is accepted and nothing arrives. The listener finds out and says what
// to fix; the REST API goes on through the pooler; with DATABASE_LISTEN_URL direct,
// events flow while everything else still goes through the pooler.
func TestEventsThroughAPooler(t *testing.T) {
	t.Parallel()
	testStore(t)
	pooled := startPgBouncer(t, testDatabaseURL).url
	me := newUserID(t)
	token := tokenFor(t, me)

	var logs syncBuffer
	base, stop := startRunTo(t, map[string]string{"DATABASE_URL": pooled}, &logs)
	waitFor(t, "the start-up check to report", func() bool { return strings.Contains(logs.String(), "set DATABASE_LISTEN_URL") })
	res, body := httpDo(t, "GET", base+"/api/"+me+"/events", token, "")
	if res.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, "DATABASE_LISTEN_URL") {
		t.Errorf("events through the pooler: %d %s, want a 503 that names DATABASE_LISTEN_URL", res.StatusCode, body)
	}
	if res, body := httpDo(t, "POST", base+"/api/"+me+"/tasks", token, `{"title":"through the pooler"}`); res.StatusCode != http.StatusCreated {
		t.Errorf("create through the pooler: %d %s", res.StatusCode, body)
	}
	stop()

	base, stop = startRun(t, map[string]string{"DATABASE_URL": pooled, "DATABASE_LISTEN_URL": testDatabaseURL})
	defer stop()
	stream := openEvents(t, base+"/api/"+me+"/events", map[string]string{"Authorization": "Bearer " + token})
	if ev := stream.next(t); ev.name != "ready" {
		t.Fatalf("first event %+v", ev)
	}
	if res, _ := httpDo(t, "POST", base+"/api/"+me+"/tasks", token, `{"title":"heard"}`); res.StatusCode != http.StatusCreated {
		t.Fatalf("create: %d", res.StatusCode)
	}
	if ev := stream.next(t); ev.name != "task.created" || !strings.Contains(ev.data, `"heard"`) {
		t.Errorf("event %+v, want the task created through the pooler", ev)
	}
}

// TestEventsResyncAfterAPostgreSQLRestart restarts the shared cluster, so it is not
// parallel: Go runs it before any parallel test resumes.
func TestEventsResyncAfterAPostgreSQLRestart(t *testing.T) {
	needOwnCluster(t)
	es := newEventsServer(t, "", nil)
	me := es.api.newUser(t)
	stream := es.stream(t, me)
	pgCtl(t, "stop", "-m", "immediate", "-w")
	pgCtl(t, "start")
	back := time.Now()
	if ev := stream.next(t); ev.name != "resync" {
		t.Fatalf("after the restart: %+v, want resync", ev)
	}
	t.Logf("resync %v after PostgreSQL was back", time.Since(back).Round(time.Millisecond))
	waitFor(t, "a create to succeed", func() bool {
		return me.do(t, "POST", "/api/{me}/tasks", `{"title":"after the restart"}`).Code == http.StatusCreated
	})
	if ev := stream.next(t); ev.name != "task.created" {
		t.Errorf("after the resync: %+v", ev)
	}
}

// largestTaskBody is a create body of the largest task in JSON: 200 and 1000 characters
// of U+0001, which JSON escapes the longest (\u0001).
func largestTaskBody() string {
	b, _ := json.Marshal(map[string]string{"title": strings.Repeat("\x01", 200), "description": strings.Repeat("\x01", 1000)})
	return string(b)
}
