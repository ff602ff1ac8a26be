//go:build cluster

// make cluster (go test -tags cluster -run TestCluster): three instances of the service
// behind HAProxy (deploy/haproxy.cfg), their requests through PgBouncer in transaction
// mode (deploy/pgbouncer.ini) and their listeners direct to PostgreSQL, under mixed load
// from several users who also hold live-update streams, while the harness restarts each
// instance in turn, kills one, restarts PgBouncer and restarts PostgreSQL. It prints what
// each phase cost and fails on a lost or doubled write, a stream that ends up wrong, or
// a failed request during the rolling deploy. CLUSTER_SHORT=1 is the ~30 s run of CI;
// the full run also measures throughput through HAProxy with 1, 2 and 3 instances.

package load

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"taskflow/internal/testkit"
)

// instance is one taskflow-api process of the cluster, restartable on its port.
type instance struct {
	name, port string
	env        []string
	bin, logs  string
	cmd        *exec.Cmd
	exited     chan struct{}
}

func (in *instance) start(t *testing.T) {
	t.Helper()
	log, err := os.OpenFile(in.logs, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	in.cmd = exec.Command(in.bin)
	in.cmd.Env = append(os.Environ(), append(in.env, "PORT="+in.port)...)
	in.cmd.Stdout, in.cmd.Stderr = log, log
	if err := in.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	in.exited = make(chan struct{})
	go func(cmd *exec.Cmd, log *os.File, exited chan struct{}) {
		cmd.Wait()
		log.Close()
		close(exited)
	}(in.cmd, log, in.exited)
	testkit.WaitOK(t, "http://127.0.0.1:"+in.port+"/readyz")
}

// stop signals the process and waits for it to exit.
func (in *instance) stop(t *testing.T, sig syscall.Signal) {
	t.Helper()
	in.cmd.Process.Signal(sig)
	select {
	case <-in.exited:
	case <-time.After(30 * time.Second):
		t.Fatalf("%s still runs 30 s after signal %v", in.name, sig)
	}
}

// outcome is one logical request of the load, after the client's own retry if any.
type outcome struct {
	start, end time.Time
	status     int // 0: no answer (a connection error)
}

// clusterLoad is the mixed load: users with workers, each worker owning the tasks it
// creates, so that what each task must look like at the end is known.
type clusterLoad struct {
	base   string
	client *http.Client

	mu       sync.Mutex
	outcomes []outcome
	retried  int
	samples  map[int]string // a body of each failing status, for the report
}

// do sends one request; a create or toggle carries an Idempotency-Key. A connection
// error or a 502/503 is retried once, with the same key, as the contract tells clients
// to: only requests that are safe to repeat are sent here without a key.
func (l *clusterLoad) do(method, path, token, body, key string) (int, []byte) {
	start := time.Now()
	status, resp := l.once(method, path, token, body, key)
	if status == 0 || status == http.StatusBadGateway || status == http.StatusServiceUnavailable {
		l.mu.Lock()
		l.retried++
		l.mu.Unlock()
		time.Sleep(200 * time.Millisecond)
		status, resp = l.once(method, path, token, body, key)
		if method == "DELETE" && status == http.StatusNotFound {
			status = http.StatusNoContent // the first attempt deleted it; its answer was lost
		}
	}
	l.mu.Lock()
	l.outcomes = append(l.outcomes, outcome{start, time.Now(), status})
	if status >= 400 && l.samples[status] == "" {
		l.samples[status] = method + " " + path + ": " + string(resp)
	}
	l.mu.Unlock()
	return status, resp
}

func (l *clusterLoad) once(method, path, token, body, key string) (int, []byte) {
	req, _ := http.NewRequest(method, l.base+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	res, err := l.client.Do(req)
	if err != nil {
		return 0, nil
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, b
}

// owned is what a worker knows of one of its tasks.
type owned struct {
	title         string
	acked         bool // the create was answered 201; else its outcome is unknown
	id            int64
	completed     bool
	completedSure bool // no toggle since the last acknowledged one failed
	deleted       bool
	deleteSure    bool
}

// worker runs one worker of one user until ctx ends, and returns its tasks.
func (l *clusterLoad) worker(ctx context.Context, name, userID, token string) []*owned {
	var tasks []*owned
	live := func() *owned {
		var candidates []*owned
		for _, o := range tasks {
			if o.acked && !o.deleted {
				candidates = append(candidates, o)
			}
		}
		if len(candidates) == 0 {
			return nil
		}
		return candidates[rand.IntN(len(candidates))]
	}
	base := "/api/" + userID + "/tasks"
	for seq := 0; ctx.Err() == nil; seq++ {
		o := live()
		switch p := rand.IntN(100); {
		case p < 30 || o == nil:
			title := fmt.Sprintf("%s #%d", name, seq)
			status, body := l.do("POST", base, token, fmt.Sprintf(`{"title":%q}`, title), fmt.Sprintf("%s-create-%d", name, seq))
			t := &owned{title: title, completedSure: true, deleteSure: true}
			if status == http.StatusCreated {
				var got testkit.Task
				json.Unmarshal(body, &got)
				t.acked, t.id = true, got.ID
			}
			tasks = append(tasks, t)
		case p < 50:
			status, body := l.do("PATCH", fmt.Sprintf("%s/%d/complete", base, o.id), token, "", fmt.Sprintf("%s-toggle-%d", name, seq))
			if status == http.StatusOK {
				var got testkit.Task
				json.Unmarshal(body, &got)
				o.completed, o.completedSure = got.Completed, true
			} else {
				o.completedSure = false
			}
		case p < 60:
			l.do("PUT", fmt.Sprintf("%s/%d", base, o.id), token, fmt.Sprintf(`{"description":"%s %d"}`, name, seq), "")
		case p < 67:
			status, _ := l.do("DELETE", fmt.Sprintf("%s/%d", base, o.id), token, "", "")
			o.deleted, o.deleteSure = true, status == http.StatusNoContent
		case p < 85:
			l.do("GET", base+"?limit=20", token, "", "")
		default:
			l.do("GET", fmt.Sprintf("%s/%d", base, o.id), token, "", "")
		}
	}
	return tasks
}

func TestCluster(t *testing.T) {
	testkit.NeedOwnCluster(t) // phase 4 restarts it
	short := os.Getenv("CLUSTER_SHORT") == "1"
	settle := 5 * time.Second
	users, workersPerUser := 8, 3
	if short {
		settle, users, workersPerUser = 2*time.Second, 4, 2
	}
	ctx := context.Background()
	dir := t.TempDir()

	direct := testkit.FreshDatabase(t, "taskflow_cluster")
	bouncer := testkit.StartPgBouncer(t, direct)

	bin := testkit.Binary(t)
	// The load measures availability, not the write limit: it is set far above its rate.
	env := []string{"DATABASE_URL=" + bouncer.URL, "DATABASE_LISTEN_URL=" + direct, "BETTER_AUTH_SECRET=" + testkit.Secret,
		"LOG_FORMAT=json", "MAX_WRITES_PER_USER=100000"}
	var instances []*instance
	for i := 1; i <= 3; i++ {
		in := &instance{name: fmt.Sprint("i", i), port: testkit.FreePort(t), env: env, bin: bin, logs: filepath.Join(dir, fmt.Sprintf("i%d.log", i))}
		in.start(t)
		t.Cleanup(func() { in.stop(t, syscall.SIGKILL) })
		instances = append(instances, in)
	}
	haproxyPort, tlsPort, adminSocket := testkit.FreePort(t), testkit.FreePort(t), filepath.Join(dir, "haproxy.sock")
	cert := selfSignedCert(t, dir)
	haproxy := exec.Command("haproxy", "-f", filepath.Join(testkit.Root(t), "deploy/haproxy.cfg"), "-db")
	haproxy.Env = append(os.Environ(), "HAPROXY_BIND=127.0.0.1:"+haproxyPort, "HAPROXY_ADMIN_SOCKET="+adminSocket,
		"HAPROXY_TLS_BIND=127.0.0.1:"+tlsPort, "HAPROXY_CERT="+cert,
		"INSTANCE1=127.0.0.1:"+instances[0].port, "INSTANCE2=127.0.0.1:"+instances[1].port, "INSTANCE3=127.0.0.1:"+instances[2].port)
	haproxy.Stderr = os.Stderr
	if err := haproxy.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { haproxy.Process.Kill(); haproxy.Wait() })
	front := "http://127.0.0.1:" + haproxyPort
	testkit.WaitOK(t, front+"/readyz")
	checkHTTP2(t, "https://127.0.0.1:"+tlsPort)

	// The load, and a stream per user.
	transport := &http.Transport{MaxIdleConnsPerHost: 64}
	load := &clusterLoad{base: front, client: &http.Client{Timeout: 10 * time.Second, Transport: transport}, samples: map[int]string{}}
	loadCtx, stopLoad := context.WithCancel(ctx)
	type worker struct{ tasks []*owned }
	var (
		wg      sync.WaitGroup
		workers []*worker
		streams []*testkit.Follower
	)
	streamCtx, stopStreams := context.WithCancel(ctx)
	defer stopStreams()
	for u := range users {
		userID := testkit.NewUserID()
		token := testkit.Token(t, userID)
		// Two followers per user, as two devices: each lists once and then follows the
		// feed, resuming from its last event's id on whichever instance HAProxy picks.
		for range 2 {
			f := testkit.NewFollower(front, userID, func() string { return token })
			streams = append(streams, f)
			go f.Run(streamCtx, 200*time.Millisecond)
		}
		for k := range workersPerUser {
			wk := &worker{}
			workers = append(workers, wk)
			wg.Add(1)
			go func() {
				defer wg.Done()
				wk.tasks = load.worker(loadCtx, fmt.Sprintf("u%dw%d", u, k), userID, token)
			}()
		}
	}

	// The phases, each with its window.
	type phase struct {
		name                 string
		start, down, up, end time.Time // down..up: the component is away
		noFailure            bool      // no request may fail
		noLate5xx            bool      // a 5xx only from down to a second after up
	}
	var phases []*phase
	run := func(name string, action func(p *phase)) {
		time.Sleep(settle)
		p := &phase{name: name, start: time.Now()}
		action(p)
		time.Sleep(settle)
		p.end = time.Now()
		phases = append(phases, p)
		t.Logf("%s: done", name)
	}
	run("1. rolling deploy (SIGTERM, restart, /readyz; each instance in turn)", func(p *phase) {
		p.noFailure = true
		for _, in := range instances {
			in.stop(t, syscall.SIGTERM)
			in.start(t)
			time.Sleep(time.Second) // HAProxy's health check takes it back
		}
	})
	run("2. one instance killed (SIGKILL) and started again", func(p *phase) {
		instances[1].stop(t, syscall.SIGKILL)
		p.down = time.Now()
		instances[1].start(t)
		p.up = time.Now()
	})
	run("3. PgBouncer restarted", func(p *phase) {
		p.noLate5xx, p.down = true, time.Now()
		bouncer.Stop()
		bouncer.Start()
		p.up = time.Now()
	})
	run("4. PostgreSQL restarted (immediate stop, start)", func(p *phase) {
		p.noLate5xx, p.down = true, time.Now()
		testkit.PgCtl(t, "stop", "-m", "immediate", "-w")
		testkit.PgCtl(t, "start")
		p.up = time.Now()
	})
	stopLoad()
	wg.Wait()

	// What each phase cost.
	fmt.Printf("\n%d users x %d workers through HAProxy, %d instances, PgBouncer (transaction mode); the client retries a failed request once (with its Idempotency-Key); %d retries in all\n\n",
		users, workersPerUser, len(instances), load.retried)
	fmt.Println("| phase | requests | 2xx | 4xx | 5xx | connection errors | p99 | 5xx outside the outage (+1 s) |")
	fmt.Println("|---|---:|---:|---:|---:|---:|---:|---:|")
	for _, p := range phases {
		var n, ok, c4, c5, connErr, late int
		var lats []time.Duration
		for _, o := range load.outcomes {
			if o.start.Before(p.start) || !o.start.Before(p.end) {
				continue
			}
			n++
			lats = append(lats, o.end.Sub(o.start))
			switch {
			case o.status == 0:
				connErr++
			case o.status < 300:
				ok++
			case o.status < 500:
				c4++
			default:
				c5++
				if p.down.IsZero() || o.end.Before(p.down) || o.start.After(p.up.Add(time.Second)) {
					late++
				}
			}
		}
		slices.Sort(lats)
		fmt.Printf("| %s | %d | %d | %d | %d | %d | %s | %d |\n", p.name, n, ok, c4, c5, connErr, testkit.Ms(testkit.Percentile(lats, 99)), late)
		if p.noFailure && c4+c5+connErr > 0 {
			t.Errorf("%s: %d requests failed; want none", p.name, c4+c5+connErr)
		}
		if p.noLate5xx && late > 0 {
			t.Errorf("%s: %d 5xx outside the outage and its first second", p.name, late)
		}
	}

	for status, body := range load.samples {
		fmt.Printf("  a %d: %s\n", status, body)
	}

	// Every acknowledged write is there, once; none is there twice.
	pool := openPool(t, direct)
	stored := map[string][]testkit.Task{} // by title
	rows, err := pool.Query(ctx, `SELECT title, completed FROM tasks`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var tk testkit.Task
		if err := rows.Scan(&tk.Title, &tk.Completed); err != nil {
			t.Fatal(err)
		}
		stored[tk.Title] = append(stored[tk.Title], tk)
	}
	var acked, unknown, lost, doubled, wrongToggle, undeleted int
	for _, w := range workers {
		for _, o := range w.tasks {
			copies := stored[o.title]
			switch {
			case len(copies) > 1:
				doubled++
			case o.acked && len(copies) == 0 && !o.deleted: // a delete with no answer may have happened
				lost++
				t.Logf("lost: %+v", *o)
			case o.acked && o.deleted && o.deleteSure && len(copies) == 1:
				undeleted++
			case o.acked && !o.deleted && o.completedSure && len(copies) == 1 && copies[0].Completed != o.completed:
				wrongToggle++
			}
			if o.acked {
				acked++
			} else {
				unknown++
			}
		}
	}
	fmt.Printf("\n%d creates acknowledged, %d with no answer even after the retry; %d lost, %d stored twice, %d toggles not as acknowledged, %d acknowledged deletes undone\n",
		acked, unknown, lost, doubled, wrongToggle, undeleted)
	if lost+doubled+wrongToggle+undeleted > 0 {
		t.Error("acknowledged writes were lost, doubled or undone")
	}

	// Every stream shows its user's tasks as they are, having listed once, and never been
	// sent a change older than one it had.
	var events, stale, lists, resyncs, reconnects, wrong int
	for _, f := range streams {
		if ok, diff := f.Converges(listOf(t, front, f.UserID()), 5*time.Second); !ok {
			wrong++
			t.Logf("a stream of %s: %s", f.UserID(), diff)
		}
		c := f.Counts()
		events, stale, lists, resyncs, reconnects = events+c.Events, stale+c.Stale, lists+c.Lists, resyncs+c.Resyncs, reconnects+c.Reconnects
	}
	stopStreams()
	fmt.Printf("%d streams: %d events, %d reconnects, %d resyncs, %d lists; %d events older than held; %d end up unlike the database\n",
		len(streams), events, reconnects, resyncs, lists, stale, wrong)
	if wrong > 0 || stale > 0 || lists != len(streams)+resyncs {
		t.Errorf("%d streams do not show their user's tasks as stored, %d events were stale, %d lists for %d streams and %d resyncs",
			wrong, stale, lists, len(streams), resyncs)
	}

	if short {
		return
	}
	clusterThroughput(t, dir, direct, instances, front, adminSocket, bin)
}

// clusterThroughput measures list and get with wrk: one instance on PostgreSQL directly,
// one through PgBouncer, and HAProxy in front of 1, 2 and 3 of them (the others taken out
// through HAProxy's admin socket).
func clusterThroughput(t *testing.T, dir, direct string, instances []*instance, front, adminSocket, bin string) {
	ctx := context.Background()
	db := openPool(t, direct)
	if _, err := db.Exec(ctx, `TRUNCATE tasks, task_counts`); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(ctx, benchSeedSQL); err != nil {
		t.Fatal(err)
	}
	users := loadBenchUsers(t, db)
	usersFile := filepath.Join(dir, "users.txt")
	writeBenchUsers(t, usersFile, users, func(u benchUser) string { return testkit.Token(t, u.id) }, nil)

	plain := &instance{name: "direct", port: testkit.FreePort(t), bin: bin, logs: filepath.Join(dir, "direct.log"),
		env: []string{"DATABASE_URL=" + direct, "BETTER_AUTH_SECRET=" + testkit.Secret, "LOG_FORMAT=json"}}
	plain.start(t)
	defer plain.stop(t, syscall.SIGTERM)

	haproxyAdmin := func(cmd string) {
		c, err := net.Dial("unix", adminSocket)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintln(c, cmd)
		io.ReadAll(c)
	}
	targets := []struct {
		name, base string
		enabled    int
	}{
		{"one instance, PostgreSQL direct", "http://127.0.0.1:" + plain.port, 0},
		{"one instance through PgBouncer", "http://127.0.0.1:" + instances[0].port, 0},
		{"HAProxy + 1 instance through PgBouncer", front, 1},
		{"HAProxy + 2 instances", front, 2},
		{"HAProxy + 3 instances", front, 3},
	}
	fmt.Printf("\nThroughput with wrk (16 connections, 10 s; everything on the same 2 cores, unpinned)\n\n")
	fmt.Println("| target | list req/s | list p99 | get req/s | get p99 |")
	fmt.Println("|---|---:|---:|---:|---:|")
	for _, tg := range targets {
		if tg.enabled > 0 {
			for i := 2; i <= 3; i++ {
				state := "enable"
				if i > tg.enabled {
					state = "disable"
				}
				haproxyAdmin(fmt.Sprintf("%s server instances/i%d", state, i))
			}
			time.Sleep(time.Second)
		}
		list := runWrk(t, "", tg.base, usersFile, "list", 16, 10*time.Second)
		get := runWrk(t, "", tg.base, usersFile, "get", 16, 10*time.Second)
		fmt.Printf("| %s | %.0f | %s | %.0f | %s |\n", tg.name, list.rps, testkit.Ms(list.p99), get.rps, testkit.Ms(get.p99))
	}
}

// selfSignedCert makes the certificate and key HAProxy's TLS frontend serves, in one PEM.
func selfSignedCert(t *testing.T, dir string) string {
	key, crt, pem := filepath.Join(dir, "key.pem"), filepath.Join(dir, "crt.pem"), filepath.Join(dir, "haproxy.pem")
	if out, err := exec.Command("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", crt,
		"-days", "1", "-subj", "/CN=localhost").CombinedOutput(); err != nil {
		t.Fatalf("openssl: %v\n%s", err, out)
	}
	k, _ := os.ReadFile(key)
	c, _ := os.ReadFile(crt)
	os.WriteFile(pem, append(c, k...), 0o600)
	return pem
}

// checkHTTP2: through HAProxy's TLS frontend, curl speaks HTTP/2, for calls and for an
// event stream alike, several of them on one connection.
func checkHTTP2(t *testing.T, front string) {
	me := testkit.NewUserID()
	auth := "Authorization: Bearer " + testkit.Token(t, me)
	out, err := exec.Command("curl", "--http2", "-sk", "-H", auth, "-w", "%{http_version} %{http_code} %{num_connects}\\n",
		"-o", "/dev/null", front+"/api/"+me+"/tasks", "-o", "/dev/null", front+"/readyz").CombinedOutput()
	lines := strings.Fields(string(out))
	if err != nil || len(lines) != 6 || lines[0] != "2" || lines[1] != "200" || lines[3] != "2" || lines[4] != "200" || lines[5] != "0" {
		t.Fatalf("curl --http2 through HAProxy: %v %q, want HTTP/2 200 twice on one connection", err, out)
	}
	stream, err := exec.Command("curl", "--http2", "-skN", "--max-time", "2", "-H", auth, front+"/api/"+me+"/events").Output()
	if !strings.Contains(string(stream), "event: ready") {
		t.Fatalf("an event stream over HTTP/2 through HAProxy: %v %q", err, stream)
	}
	fmt.Println("HTTP/2 through HAProxy's TLS frontend: two calls on one connection, and an event stream: ok")
}
