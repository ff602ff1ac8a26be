package testkit

import (
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// DatabaseURL is TEST_DATABASE_URL, which make test and the harnesses' make targets set
// (scripts/devdb.sh). Without it a test is skipped, but under CI, where it fails.
func DatabaseURL(t testing.TB) string {
	t.Helper()
	u := os.Getenv("TEST_DATABASE_URL")
	if u == "" && os.Getenv("CI") == "true" {
		t.Fatal("TEST_DATABASE_URL is unset: under CI the database tests must run, not skip (use make test)")
	}
	if u == "" {
		t.Skip("TEST_DATABASE_URL is unset; run make test")
	}
	return u
}

// FaultProxy stands between the service and PostgreSQL and can cut or freeze the link.
type FaultProxy struct {
	ln     net.Listener
	target string

	Dials atomic.Int64 // connections the service opened to the proxy

	mu      sync.Mutex
	mode    string // "up", "down" (connections refused and cut), "hang" (bytes held) or "deaf" (answers lost)
	changed chan struct{}
	conns   map[net.Conn]bool
}

func NewFaultProxy(t *testing.T, target string) *FaultProxy {
	t.Helper()
	ln := ListenLoopback(t)
	p := &FaultProxy{ln: ln, target: target, mode: "up", changed: make(chan struct{}), conns: map[net.Conn]bool{}}
	t.Cleanup(func() {
		ln.Close()
		p.Set("down")
	})
	go p.serve()
	return p
}

// Addr is the proxy's address, to dial instead of the target's.
func (p *FaultProxy) Addr() string { return p.ln.Addr().String() }

// Set puts the link in a mode: "up", "down" (connections refused and cut), "hang" (bytes
// held) or "deaf" (answers lost).
func (p *FaultProxy) Set(mode string) {
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

func (p *FaultProxy) serve() {
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.Dials.Add(1)
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
			go p.pipe(server, client, false)
			p.pipe(client, server, true)
		}()
	}
}

// pipe copies src to dst, holding each chunk while the proxy hangs, and dropping what
// goes to the client while it is deaf.
func (p *FaultProxy) pipe(dst, src net.Conn, toClient bool) {
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
		p.mu.Lock()
		deaf := p.mode == "deaf"
		p.mu.Unlock()
		if n > 0 && !(deaf && toClient) {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// PgBouncer is a running pgbouncer; see StartPgBouncer.
type PgBouncer struct {
	URL         string // a DATABASE_URL through it
	Start, Stop func()
}

// StartPgBouncer runs Debian's pgbouncer with deploy/pgbouncer.ini (transaction pooling,
// as Neon's -pooler endpoint) in front of the database of databaseURL. make test installs
// pgbouncer; elsewhere the calling test is skipped without it.
func StartPgBouncer(t *testing.T, databaseURL string) *PgBouncer {
	t.Helper()
	bin, err := exec.LookPath("pgbouncer")
	if err != nil {
		bin = "/usr/sbin/pgbouncer"
	}
	if _, err := os.Stat(bin); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("pgbouncer is not installed: run the tests through make test")
		}
		t.Skip("pgbouncer is not installed; make test installs it")
	}
	direct, err := url.Parse(databaseURL)
	if err != nil {
		t.Fatal(err)
	}
	// As root, pgbouncer runs as postgres (it refuses root), which must reach its files.
	dir, err := os.MkdirTemp("", "pgbouncer")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o777)
	t.Cleanup(func() { os.RemoveAll(dir) })
	port := FreePort(t)
	template, err := os.ReadFile(filepath.Join(Root(t), "deploy/pgbouncer.ini"))
	if err != nil {
		t.Fatal(err)
	}
	var options string
	if schema := direct.Query().Get("search_path"); schema != "" {
		// A test run's schema is a start-up parameter pgbouncer does not pass on; its
		// server connections set it themselves.
		options = "connect_query='SET search_path = " + schema + "'"
	}
	ini := strings.NewReplacer("@DATABASE@", strings.TrimPrefix(direct.Path, "/"), "@PGHOST@", direct.Hostname(),
		"@PGPORT@", direct.Port(), "@DBOPTIONS@", options, "@PORT@", port, "@DIR@", dir).Replace(string(template))
	for name, body := range map[string]string{"pgbouncer.ini": ini, "users.txt": `"postgres" ""` + "\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	argv := []string{bin, filepath.Join(dir, "pgbouncer.ini")}
	if os.Geteuid() == 0 {
		argv = append([]string{"runuser", "-u", "postgres", "--"}, argv...)
	}
	var cmd *exec.Cmd
	b := &PgBouncer{}
	b.Start = func() {
		cmd = exec.Command(argv[0], argv[1:]...)
		cmd.Dir = "/"
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		WaitFor(t, "pgbouncer to listen", func() bool {
			c, err := net.Dial("tcp", "127.0.0.1:"+port)
			if err == nil {
				c.Close()
			}
			return err == nil
		})
	}
	b.Stop = func() {
		if cmd != nil {
			cmd.Process.Signal(syscall.SIGTERM) // immediate shutdown
			cmd.Wait()
			cmd = nil
		}
	}
	b.Start()
	t.Cleanup(b.Stop)
	through := *direct
	through.Host = "127.0.0.1:" + port
	q := through.Query()
	q.Del("search_path")
	q.Set("default_query_exec_mode", "exec") // see deploy/pgbouncer.ini
	through.RawQuery = q.Encode()
	b.URL = through.String()
	return b
}

// FreshDatabase drops and creates the database name on the test cluster, for the
// harnesses that need a database of their own, and returns its URL.
func FreshDatabase(t testing.TB, name string) string {
	t.Helper()
	ctx := context.Background()
	base := os.Getenv("TEST_DATABASE_URL")
	admin, err := pgx.Connect(ctx, base)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	for _, q := range []string{`DROP DATABASE IF EXISTS ` + name, `CREATE DATABASE ` + name} {
		if _, err := admin.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/" + name
	return u.String()
}

// NeedOwnCluster skips a test that stops and starts PostgreSQL unless the cluster is the
// one scripts/devdb.sh runs (make test); under CI it fails instead.
func NeedOwnCluster(t testing.TB) {
	t.Helper()
	DatabaseURL(t)
	if os.Getenv("TASKFLOW_PGDATA") == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("TASKFLOW_PGDATA is unset: run the tests through make test")
		}
		t.Skip("needs the cluster of scripts/devdb.sh (make test) to stop and start it")
	}
}

// PgCtl runs pg_ctl on the cluster scripts/devdb.sh started, as the user that owns it.
func PgCtl(t *testing.T, args ...string) {
	t.Helper()
	bin, data, owner := os.Getenv("TASKFLOW_PGBIN"), os.Getenv("TASKFLOW_PGDATA"), os.Getenv("TASKFLOW_PGOWNER")
	argv := append([]string{bin + "/pg_ctl", "-D", data}, args...)
	if args[0] == "start" {
		argv = append(argv, "-w", "-t", "60", "-l", data+"/server.log", "-o", "-p "+os.Getenv("TASKFLOW_PG_PORT"))
	}
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

// NewRunSchema makes a schema for this run and returns base with that schema as its
// search_path, and a function that drops it. Schemas that runs killed before their
// cleanup left behind are dropped once they are an hour old.
func NewRunSchema(base string) (string, func(), error) {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, base)
	if err != nil {
		return "", nil, err
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT nspname FROM pg_namespace
WHERE nspname LIKE 'run\_%' AND split_part(nspname, '_', 2)::bigint < extract(epoch FROM now()) - 3600`)
	if err != nil {
		return "", nil, err
	}
	stale, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return "", nil, err
	}
	for _, s := range stale {
		conn.Exec(ctx, `DROP SCHEMA `+s+` CASCADE`) //nolint:errcheck // another run may drop it first
	}
	schema := fmt.Sprintf("run_%d_%s", time.Now().Unix(), strings.ToLower(rand.Text()[:8]))
	if _, err := conn.Exec(ctx, `CREATE SCHEMA `+schema); err != nil {
		return "", nil, err
	}
	u, err := url.Parse(base)
	if err != nil {
		return "", nil, err
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	drop := func() {
		if conn, err := pgx.Connect(ctx, base); err == nil {
			conn.Exec(ctx, `DROP SCHEMA `+schema+` CASCADE`) //nolint:errcheck // the next run drops it if this fails
			conn.Close(ctx)
		}
	}
	return u.String(), drop, nil
}

func mustQuery(rows pgx.Rows, err error) pgx.Rows {
	if err != nil {
		panic(err)
	}
	return rows
}
