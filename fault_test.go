package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// faultProxy stands between the service and PostgreSQL and can cut or freeze the link.
type faultProxy struct {
	ln     net.Listener
	target string

	mu      sync.Mutex
	mode    string // "up", "down" (connections refused and cut) or "hang" (bytes held)
	changed chan struct{}
	conns   map[net.Conn]bool
}

func newFaultProxy(t *testing.T, target string) *faultProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &faultProxy{ln: ln, target: target, mode: "up", changed: make(chan struct{}), conns: map[net.Conn]bool{}}
	t.Cleanup(func() {
		ln.Close()
		p.set("down")
	})
	go p.serve()
	return p
}

func (p *faultProxy) set(mode string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mode = mode
	close(p.changed)
	p.changed = make(chan struct{})
	if mode == "down" {
		for c := range p.conns {
			c.Close()
		}
		p.conns = map[net.Conn]bool{}
	}
}

func (p *faultProxy) serve() {
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		mode := p.mode
		if mode == "down" {
			client.Close()
			p.mu.Unlock()
			continue
		}
		p.conns[client] = true
		p.mu.Unlock()
		go func() {
			server, err := net.Dial("tcp", p.target)
			if err != nil {
				client.Close()
				return
			}
			p.mu.Lock()
			p.conns[server] = true
			p.mu.Unlock()
			go p.pipe(server, client)
			p.pipe(client, server)
		}()
	}
}

// pipe copies src to dst, holding each chunk while the proxy hangs.
func (p *faultProxy) pipe(dst, src net.Conn) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		for {
			p.mu.Lock()
			mode, changed := p.mode, p.changed
			p.mu.Unlock()
			if mode != "hang" {
				break
			}
			<-changed
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// storeVia opens a store whose connections go to addr instead of the test database.
func storeVia(t *testing.T, addr string, timeout time.Duration, tweak func(*pgxpool.Config)) *Store {
	t.Helper()
	testStore(t)
	u, err := url.Parse(os.Getenv("TEST_DATABASE_URL"))
	if err != nil {
		t.Fatal(err)
	}
	if addr != "" {
		u.Host = addr
	}
	cfg, err := newPoolConfig(u.String(), timeout)
	if err != nil {
		t.Fatal(err)
	}
	if tweak != nil {
		tweak(cfg)
	}
	s, err := openStore(context.Background(), cfg, timeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func dbAddr(t *testing.T) string {
	u, err := url.Parse(os.Getenv("TEST_DATABASE_URL"))
	if err != nil {
		t.Fatal(err)
	}
	return u.Host
}

func TestDatabaseOutageIs503WithinTheDeadlineAndHeals(t *testing.T) {
	t.Parallel()
	testStore(t)
	proxy := newFaultProxy(t, dbAddr(t))
	const deadline = time.Second
	api := apiOn(t, storeVia(t, proxy.ln.Addr().String(), deadline, nil))
	me := api.newUser()
	task := me.create("before the outage")
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
			proxy.set(mode)
			for _, c := range calls {
				start := time.Now()
				me.do(c.method, c.path, c.body).wantStatus(http.StatusServiceUnavailable).detail()
				if took := time.Since(start); took > deadline+time.Second {
					t.Errorf("%s %s took %v with the database %s; the deadline is %v", c.method, c.path, took, mode, deadline)
				}
			}
			me.do("GET", "/healthz", "").wantStatus(http.StatusOK)
			// Cut before restoring, so that statements held while hanging are never delivered.
			proxy.set("down")
			proxy.set("up")
			// The same store, not restarted, serves again.
			got := me.do("GET", taskPath, "").wantStatus(http.StatusOK).task()
			if got.Title != "before the outage" {
				t.Errorf("after the outage the task is %+v", got)
			}
			me.do("GET", "/readyz", "").wantStatus(http.StatusOK)
		})
	}
	me.do("POST", "/api/{me}/tasks", `{"title":"after"}`).wantStatus(http.StatusCreated)
}

// terminateBackends ends the server side of every connection of an application name,
// as PostgreSQL does to its sessions on a restart and Neon to idle ones (57P01).
func terminateBackends(t *testing.T, appName string) {
	t.Helper()
	ctx := context.Background()
	pool := testStore(t).pool
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1`, appName).Scan(&n); err != nil || n == 0 {
		t.Fatalf("terminated %d backends: %v", n, err)
	}
	waitFor(t, "the backends to exit", func() bool {
		pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE application_name = $1`, appName).Scan(&n)
		return n == 0
	})
}

func TestConnectionsClosedByTheServer(t *testing.T) {
	t.Parallel()
	appName := func() string { return "fault-" + strings.ToLower(newUserID(t)[:12]) }
	oneConn := func(name string, check bool) func(*pgxpool.Config) {
		return func(c *pgxpool.Config) {
			c.MaxConns = 1
			c.ConnConfig.RuntimeParams["application_name"] = name
			if !check {
				c.BeforeAcquire = nil
			}
		}
	}

	// setup gives a user of a one-connection store, a task, and a function that ends that
	// connection on the server side.
	setup := func(t *testing.T, livenessCheck bool) (me *user, taskPath string, kill func()) {
		name := appName()
		me = apiOn(t, storeVia(t, "", 3*time.Second, oneConn(name, livenessCheck))).newUser()
		return me, fmt.Sprintf("/api/{me}/tasks/%d", me.create("x").ID), func() { terminateBackends(t, name) }
	}

	t.Run("a read on a connection the server closed is retried once and succeeds", func(t *testing.T) {
		me, taskPath, kill := setup(t, false)
		kill()
		me.do("GET", taskPath, "").wantStatus(http.StatusOK)
		kill()
		me.do("GET", "/api/{me}/tasks", "").wantStatus(http.StatusOK)
	})

	t.Run("a write on a connection the server closed is not retried blindly", func(t *testing.T) {
		me, taskPath, kill := setup(t, false)
		kill()
		me.do("PATCH", taskPath+"/complete", "").wantStatus(http.StatusServiceUnavailable)
		if me.do("GET", taskPath, "").wantStatus(http.StatusOK).task().Completed {
			t.Error("the failed toggle was applied")
		}
	})

	t.Run("with the liveness check a write finds a fresh connection", func(t *testing.T) {
		me, taskPath, kill := setup(t, true)
		kill()
		if !me.do("PATCH", taskPath+"/complete", "").wantStatus(http.StatusOK).task().Completed {
			t.Error("toggle did not apply")
		}
	})
}

// pgCtl runs pg_ctl on the cluster scripts/devdb.sh started, as the user that owns it.
func pgCtl(t *testing.T, args ...string) {
	t.Helper()
	bin, data, owner := os.Getenv("TASKFLOW_PGBIN"), os.Getenv("TASKFLOW_PGDATA"), os.Getenv("TASKFLOW_PGOWNER")
	argv := append([]string{bin + "/pg_ctl", "-D", data}, args...)
	if owner != "" && os.Geteuid() == 0 {
		argv = append([]string{"runuser", "-u", owner, "--"}, argv...)
	}
	// Output goes to /dev/null (nil), not to a pipe: the server pg_ctl starts would inherit
	// a pipe and keep Run waiting for as long as it lives.
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = "/" // the owner may not be allowed into the checkout
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s: %v", strings.Join(argv, " "), err)
	}
}

// TestAcknowledgedWritesSurviveACrash stops PostgreSQL the hard way right after writes
// were acknowledged. It shares the cluster with the other tests, so it is not parallel:
// Go runs it before any parallel test resumes.
func TestAcknowledgedWritesSurviveACrash(t *testing.T) {
	testStore(t)
	if os.Getenv("TASKFLOW_PGDATA") == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("TASKFLOW_PGDATA is unset: run the tests through make test")
		}
		t.Skip("needs the cluster of scripts/devdb.sh (make test) to stop and start it")
	}
	api := apiOn(t, storeVia(t, "", 2*time.Second, nil))
	me := api.newUser()
	var acked []taskJSON
	for i := 0; i < 50; i++ {
		acked = append(acked, me.create(fmt.Sprintf("acknowledged %d", i)))
	}
	toggled := me.do("PATCH", fmt.Sprintf("/api/{me}/tasks/%d/complete", acked[0].ID), "").wantStatus(http.StatusOK).task()

	pgCtl(t, "stop", "-m", "immediate", "-w")
	restarted := false
	defer func() {
		if !restarted {
			pgCtl(t, "start", "-w", "-t", "60", "-l", os.Getenv("TASKFLOW_PGDATA")+"/server.log")
		}
	}()
	me.do("GET", "/api/{me}/tasks", "").wantStatus(http.StatusServiceUnavailable)
	me.do("GET", "/readyz", "").wantStatus(http.StatusServiceUnavailable)
	me.do("GET", "/healthz", "").wantStatus(http.StatusOK)
	pgCtl(t, "start", "-w", "-t", "60", "-l", os.Getenv("TASKFLOW_PGDATA")+"/server.log")
	restarted = true

	// The same store recovers by itself, and every acknowledged write is there.
	list := me.do("GET", "/api/{me}/tasks?order=asc", "").wantStatus(http.StatusOK).tasks()
	if len(list) != len(acked) {
		t.Fatalf("%d tasks after the crash, want the %d acknowledged", len(list), len(acked))
	}
	for i, task := range list {
		want := acked[i]
		if i == 0 {
			want = toggled
		}
		if !task.equal(want) {
			t.Errorf("after the crash %+v, want %+v", task, want)
		}
	}
	me.do("POST", "/api/{me}/tasks", `{"title":"after the crash"}`).wantStatus(http.StatusCreated)
}
