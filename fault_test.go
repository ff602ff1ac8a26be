package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"taskflow/internal/pg"
	"taskflow/internal/testkit"

	"github.com/jackc/pgx/v5/pgxpool"
)

// storeVia opens a store whose connections go to addr instead of the test database.
func storeVia(t *testing.T, addr string, timeout time.Duration, tweak func(*pgxpool.Config)) *Store {
	t.Helper()
	testStore(t)
	u, err := url.Parse(testDatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	if addr != "" {
		u.Host = addr
	}
	cfg, err := pg.ParseConfig(u.String(), timeout)
	if err != nil {
		t.Fatal(err)
	}
	if tweak != nil {
		tweak(cfg)
	}
	d, err := pg.Open(context.Background(), cfg, timeout, discardLogger(), schemaSQL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	return &Store{db: d, maxTasks: 10000}
}

func dbAddr(t *testing.T) string {
	u, err := url.Parse(testDatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	return u.Host
}

func TestDatabaseOutageIs503WithinTheDeadlineAndHeals(t *testing.T) {
	t.Parallel()
	testStore(t)
	proxy := testkit.NewFaultProxy(t, dbAddr(t))
	const deadline = time.Second
	me := newTestAPI(storeVia(t, proxy.Addr(), deadline, nil)).newUser(t)
	task := me.create(t, "before the outage")
	taskPath := fmt.Sprintf("/api/{me}/tasks/%d", task.ID)

	calls := []struct{ method, path, body string }{
		{"GET", "/api/{me}/tasks", ""},
		{"POST", "/api/{me}/tasks", `{"title":"during"}`},
		{"GET", taskPath, ""},
		{"PUT", taskPath, `{"title":"during"}`},
		{"PATCH", taskPath + "/complete", ""},
		{"DELETE", taskPath, ""},
		{"GET", "/readyz", ""},
	}
	for _, mode := range []string{"down", "hang"} {
		t.Run("database "+mode, func(t *testing.T) {
			proxy.Set(mode)
			for _, c := range calls {
				start := time.Now()
				me.do(t, c.method, c.path, c.body).wantStatus(http.StatusServiceUnavailable).detail()
				if took := time.Since(start); took > deadline+time.Second {
					t.Errorf("%s %s took %v with the database %s; the deadline is %v", c.method, c.path, took, mode, deadline)
				}
			}
			me.do(t, "GET", "/healthz", "").wantStatus(http.StatusOK)
			// Cut before restoring, so that statements held while hanging are never delivered.
			proxy.Set("down")
			proxy.Set("up")
			// The same store, not restarted, serves again within the breaker's backoff.
			back := time.Now()
			testkit.WaitFor(t, "the store to serve again", func() bool { return me.do(t, "GET", "/readyz", "").Code == http.StatusOK })
			if took := time.Since(back); took > time.Second {
				t.Errorf("serving again %v after the database returned, want within a second", took)
			}
			got := me.do(t, "GET", taskPath, "").wantStatus(http.StatusOK).task()
			if got.Title != "before the outage" {
				t.Errorf("after the outage the task is %+v", got)
			}
		})
	}
	me.do(t, "POST", "/api/{me}/tasks", `{"title":"after"}`).wantStatus(http.StatusCreated)
}

// terminateBackends ends the server side of every connection of an application name,
// as PostgreSQL does to its sessions on a restart and Neon to idle ones (57P01).
func terminateBackends(t *testing.T, appName string) {
	t.Helper()
	ctx := context.Background()
	pool := testStore(t).db.Pool()
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1`, appName).Scan(&n); err != nil || n == 0 {
		t.Fatalf("terminated %d backends: %v", n, err)
	}
	testkit.WaitFor(t, "the backends to exit", func() bool {
		pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE application_name = $1`, appName).Scan(&n)
		return n == 0
	})
}

// TestConnectionsClosedByTheServer ends a pooled connection on the server's side, as a
// PostgreSQL restart, a failover, PgBouncer or Neon (57P01 for idle sessions) do, and
// then uses it at once, before pgxpool's own health check (a ping of connections idle
// for over a second) would look at it.
func TestConnectionsClosedByTheServer(t *testing.T) {
	t.Parallel()
	// setup gives a user of a store with one connection, a task, and a function that ends
	// that connection on the server's side.
	setup := func(t *testing.T, peek bool) (me *user, taskPath string, kill func()) {
		name := "fault-" + strings.ToLower(testkit.NewUserID()[:12])
		s := storeVia(t, "", 3*time.Second, func(c *pgxpool.Config) {
			c.MaxConns = 1
			c.ConnConfig.RuntimeParams["application_name"] = name
			if !peek {
				c.PrepareConn = nil
			}
		})
		me = newTestAPI(s).newUser(t)
		return me, fmt.Sprintf("/api/{me}/tasks/%d", me.create(t, "x").ID), func() { terminateBackends(t, name) }
	}

	t.Run("the liveness peek finds a fresh connection for a write and a read", func(t *testing.T) {
		me, taskPath, kill := setup(t, true)
		kill()
		if !me.do(t, "PATCH", taskPath+"/complete", "").wantStatus(http.StatusOK).task().Completed {
			t.Error("toggle did not apply")
		}
		kill()
		me.do(t, "GET", taskPath, "").wantStatus(http.StatusOK)
	})

	t.Run("without the peek the same write fails and is not applied", func(t *testing.T) {
		me, taskPath, kill := setup(t, false)
		kill()
		me.do(t, "PATCH", taskPath+"/complete", "").wantStatus(http.StatusServiceUnavailable)
		if me.do(t, "GET", taskPath, "").wantStatus(http.StatusOK).task().Completed {
			t.Error("the failed toggle was applied")
		}
	})
}

func TestDatabaseDownIs503AndHealthzStays200(t *testing.T) {
	t.Parallel()
	me := newTestAPI(noDatabase(t)).newUser(t)
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
		d := me.do(t, c.method, c.path, c.body).wantStatus(http.StatusServiceUnavailable).detail()
		if strings.Contains(d, "127.0.0.1") || strings.Contains(d, "connect") {
			t.Errorf("%s %s: detail %q leaks the driver's error", c.method, c.path, d)
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Errorf("%s %s took %v, want within the 1s deadline", c.method, c.path, took)
		}
	}
	me.do(t, "GET", "/healthz", "").wantStatus(http.StatusOK)
}

// TestAcknowledgedWritesSurviveACrash stops PostgreSQL the hard way right after writes
// were acknowledged. It shares the cluster with the other tests, so it is not parallel:
// Go runs it before any parallel test resumes.
func TestAcknowledgedWritesSurviveACrash(t *testing.T) {
	testkit.NeedOwnCluster(t)
	me := newTestAPI(storeVia(t, "", 2*time.Second, nil)).newUser(t)
	var acked []taskJSON
	for i := 0; i < 50; i++ {
		acked = append(acked, me.create(t, fmt.Sprintf("acknowledged %d", i)))
	}
	toggled := me.do(t, "PATCH", fmt.Sprintf("/api/{me}/tasks/%d/complete", acked[0].ID), "").wantStatus(http.StatusOK).task()

	testkit.PgCtl(t, "stop", "-m", "immediate", "-w")
	restarted := false
	defer func() {
		if !restarted {
			testkit.PgCtl(t, "start")
		}
	}()
	me.do(t, "GET", "/api/{me}/tasks", "").wantStatus(http.StatusServiceUnavailable)
	me.do(t, "GET", "/readyz", "").wantStatus(http.StatusServiceUnavailable)
	me.do(t, "GET", "/healthz", "").wantStatus(http.StatusOK)
	testkit.PgCtl(t, "start")
	restarted = true

	// The same store recovers by itself, and every acknowledged write is there.
	list := me.do(t, "GET", "/api/{me}/tasks?order=asc", "").wantStatus(http.StatusOK).tasks()
	if len(list) != len(acked) {
		t.Fatalf("%d tasks after the crash, want the %d acknowledged", len(list), len(acked))
	}
	for i, task := range list {
		want := acked[i]
		if i == 0 {
			want = toggled
		}
		if !task.Equal(want) {
			t.Errorf("after the crash %+v, want %+v", task, want)
		}
	}
	me.do(t, "POST", "/api/{me}/tasks", `{"title":"after the crash"}`).wantStatus(http.StatusCreated)
}

// TestAnOutageIsQuietAndCheap keeps the database away for three seconds under eight busy
// clients: requests must fail at once without each dialing it, the log must say so in a
// few lines, and requests must succeed again within a second of its return.
func TestAnOutageIsQuietAndCheap(t *testing.T) {
	t.Parallel()
	proxy := testkit.NewFaultProxy(t, dbAddr(t))
	var logs testkit.SyncBuffer
	s := storeVia(t, proxy.Addr(), 2*time.Second, nil)
	s.db.SetLogger(slogTo(&logs))
	api := &testAPI{handler: newTestHandler(s, &logs)}
	me := api.newUser(t)
	taskPath := fmt.Sprintf("/api/{me}/tasks/%d", me.create(t, "before").ID)

	proxy.Set("down")
	start, linesBefore := time.Now(), strings.Count(logs.String(), "\n")
	// The first requests of the outage, one per client, dial before the breaker knows;
	// after that it sets the pace.
	var dialsBefore int64
	time.AfterFunc(time.Second, func() { dialsBefore = proxy.Dials.Load() })
	var (
		mu    sync.Mutex
		slow  []time.Duration
		count int
	)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				time.Sleep(time.Millisecond) // busy, but not so busy as to starve the server's goroutines
				began := time.Now()
				if res := me.do(t, "GET", taskPath, ""); res.Code != http.StatusServiceUnavailable {
					t.Errorf("during the outage: %d", res.Code)
					return
				}
				mu.Lock()
				count++
				if took := time.Since(began); took > 50*time.Millisecond {
					slow = append(slow, took)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	outage := time.Since(start)
	dials := proxy.Dials.Load() - dialsBefore
	lines := strings.Count(logs.String(), "\n") - linesBefore
	if perSecond := float64(dials) / (outage - time.Second).Seconds(); perSecond >= 10 {
		t.Errorf("%d connection attempts in the last %v of the outage (%.0f/s); want a few a second", dials, outage-time.Second, perSecond)
	}
	if lines > 3 {
		t.Errorf("%d log lines for %d refused requests in %v; want a few:\n%s", lines, count, outage, logs.String())
	}
	if len(slow) > count/100 {
		t.Errorf("%d of %d requests took over 50 ms during the outage (%v)", len(slow), count, slow)
	}

	proxy.Set("up")
	back := time.Now()
	testkit.WaitFor(t, "a request to succeed", func() bool {
		return me.do(t, "GET", taskPath, "").Code == http.StatusOK
	})
	if took := time.Since(back); took > time.Second {
		t.Errorf("the first success came %v after the database returned; want under a second", took)
	}
	if !strings.Contains(logs.String(), "database reachable again") {
		t.Errorf("the log does not say the database is back:\n%s", logs.String())
	}
	t.Logf("%d requests refused in %v with %d connection attempts and %d log lines", count, outage.Round(time.Millisecond), dials, lines)
}

// TestAClientHangUpIsNotAnOutage: a client that leaves while its statement waits on the
// database is logged as 499, never as a 503 or a warning.
func TestAClientHangUpIsNotAnOutage(t *testing.T) {
	t.Parallel()
	proxy := testkit.NewFaultProxy(t, dbAddr(t))
	var logs testkit.SyncBuffer
	// Two connections open before the hang, so that neither request has to dial (a dial
	// into a hanging database would rightly warn that it is unreachable).
	s := storeVia(t, proxy.Addr(), time.Second, nil)
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() { defer wg.Done(); s.db.Pool().Exec(context.Background(), `SELECT pg_sleep(0.2)`) }()
	}
	wg.Wait()
	srv := newTestServer(t, newTestHandler(s, &logs))
	me := testkit.NewUserID()
	proxy.Set("hang")
	for _, path := range []string{"/tasks", "/tasks/1"} {
		conn, err := net.Dial("tcp", srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(conn, "GET /api/%s%s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n", me, path, testkit.Token(t, me))
		time.Sleep(100 * time.Millisecond)
		conn.Close()
	}
	testkit.WaitFor(t, "two access log lines", func() bool { return strings.Count(logs.String(), "msg=request") == 2 })
	if strings.Count(logs.String(), "status=499") != 2 || strings.Contains(logs.String(), "WARN") || strings.Contains(logs.String(), "status=503") {
		t.Errorf("want two 499s and no warning:\n%s", logs.String())
	}
	proxy.Set("down")
}

// TestARetryAfterALostAnswerWritesOnce: the statement of a create reaches PostgreSQL and
// commits, but its answer is lost on the way back, so the client gets a 503 that says the
// outcome is unknown. Its retry, with the same key, once the database is back, gets the
// first answer, and there is one task.
func TestARetryAfterALostAnswerWritesOnce(t *testing.T) {
	t.Parallel()
	proxy := testkit.NewFaultProxy(t, dbAddr(t))
	me := newTestAPI(storeVia(t, proxy.Addr(), time.Second, nil)).newUser(t)
	// A pooled connection that knows the keyed create's statement, so that the create
	// below is sent at once: no dial, no Parse whose answer could be the one lost.
	me.doWith(t, "POST", "/api/{me}/tasks", `{"title":"before"}`, map[string]string{"Idempotency-Key": "warm"}).wantStatus(http.StatusCreated)
	key := map[string]string{"Idempotency-Key": "lost-answer"}

	proxy.Set("deaf")
	d := me.doWith(t, "POST", "/api/{me}/tasks", `{"title":"committed, answer lost"}`, key).wantStatus(http.StatusServiceUnavailable).detail()
	if !strings.Contains(d, "retry with the same Idempotency-Key") {
		t.Errorf("the 503 of a write says %q, want it to say to retry with the same key", d)
	}
	proxy.Set("down")
	proxy.Set("up")

	var retry response
	testkit.WaitFor(t, "the retry to be answered", func() bool {
		retry = me.doWith(t, "POST", "/api/{me}/tasks", `{"title":"committed, answer lost"}`, key)
		return retry.Code != http.StatusServiceUnavailable
	})
	retry.wantStatus(http.StatusCreated)
	if retry.Header().Get("Idempotent-Replayed") != "true" {
		t.Error("the retry was not answered from the first request")
	}
	tasks := me.do(t, "GET", "/api/{me}/tasks?order=asc", "").wantStatus(http.StatusOK).tasks()
	if len(tasks) != 2 || !tasks[1].Equal(retry.task()) {
		t.Fatalf("tasks %+v after the retry, want [before, %s]", tasks, retry.Body)
	}
	if want := fmt.Sprintf("/api/%s/tasks/%d", me.id, tasks[1].ID); retry.Header().Get("Location") != want {
		t.Errorf("Location %q, want %q", retry.Header().Get("Location"), want)
	}
}

// TestTheBreakerHearsOfConnectsThatHang: a database that accepts connections and then
// says nothing costs the first request its whole deadline; the breaker hears of that
// attempt's end even though that request gave up first, and from then on only the one
// request that probes the database at a time waits, the others fail fast.
func TestTheBreakerHearsOfConnectsThatHang(t *testing.T) {
	t.Parallel()
	proxy := testkit.NewFaultProxy(t, dbAddr(t))
	const deadline = 500 * time.Millisecond
	me := newTestAPI(storeVia(t, proxy.Addr(), deadline, nil)).newUser(t)
	proxy.Set("down") // no pooled connection is left
	proxy.Set("hang")
	me.do(t, "GET", "/api/{me}/tasks/1", "").wantStatus(http.StatusServiceUnavailable)
	time.Sleep(deadline / 2) // the attempt's own connect timeout ends
	slow := 0
	for range 20 {
		start := time.Now()
		me.do(t, "GET", "/api/{me}/tasks/1", "").wantStatus(http.StatusServiceUnavailable)
		if time.Since(start) > deadline/2 {
			slow++
		}
	}
	if slow > 1 {
		t.Errorf("%d of 20 requests waited for the hanging database; want only the one probing it", slow)
	}
	proxy.Set("down")
}

// TestAStreamOpenedInAnOutageWaitsForTheDatabase: a stream from now finds where now is with
// its first read (internal/feed/stream.go), so while the database is down it opens and waits, and
// once the database is back it says ready and goes on live.
func TestAStreamOpenedInAnOutageWaitsForTheDatabase(t *testing.T) {
	t.Parallel()
	testStore(t)
	proxy := testkit.NewFaultProxy(t, dbAddr(t))
	api := newTestAPI(storeVia(t, proxy.Addr(), time.Second, nil))
	srv := newTestServer(t, api.handler)
	me := api.newUser(t)
	proxy.Set("down")
	stream := openEvents(t, srv.URL+"/api/"+url.PathEscape(me.id)+"/events", map[string]string{"Authorization": "Bearer " + me.token})
	stream.quiet(t)
	proxy.Set("up")
	if ev := stream.next(t); ev.Name != "ready" {
		t.Fatalf("after the outage: %+v, want ready", ev)
	}
	me.create(t, "after the outage")
	if ev := stream.next(t); ev.Name != "task.created" || !strings.Contains(ev.Data, "after the outage") {
		t.Errorf("then %+v, want the task created", ev)
	}
}
