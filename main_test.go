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
	"net/http/httptrace"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"taskflow/internal/testkit"

	"github.com/jackc/pgx/v5"
)

func TestConfigErrorsAreOneLineNamingTheVariable(t *testing.T) {
	base := map[string]string{"BETTER_AUTH_SECRET": testkit.Secret}
	tests := []struct {
		name    string
		env     map[string]string
		wantVar string
	}{
		{"no secret and no JWKS", map[string]string{"BETTER_AUTH_SECRET": ""}, "BETTER_AUTH_SECRET"},
		{"a short secret", map[string]string{"BETTER_AUTH_SECRET": "short"}, "BETTER_AUTH_SECRET"},
		{"a bad port", map[string]string{"PORT": "eighty"}, "PORT"},
		{"a wildcard origin", map[string]string{"CORS_ORIGINS": "*"}, "CORS_ORIGINS"},
		{"an origin with a path", map[string]string{"CORS_ORIGINS": "http://localhost:3000/app"}, "CORS_ORIGINS"},
		{"a bad JWKS URL", map[string]string{"JWT_JWKS_URL": "ftp://x"}, "JWT_JWKS_URL"},
		{"a bad database URL", map[string]string{"DATABASE_URL": "postgres://u:hunter2@host:notaport/db"}, "DATABASE_URL"},
		{"a bad timeout", map[string]string{"DB_TIMEOUT": "soon"}, "DB_TIMEOUT"},
		{"a bad log format", map[string]string{"LOG_FORMAT": "xml"}, "LOG_FORMAT"},
		{"a task limit of zero", map[string]string{"MAX_TASKS_PER_USER": "0"}, "MAX_TASKS_PER_USER"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := map[string]string{}
			for k, v := range base {
				env[k] = v
			}
			for k, v := range tt.env {
				env[k] = v
			}
			err := run(context.Background(), func(k string) string { return env[k] }, io.Discard)
			if err == nil {
				t.Fatal("run started with a bad configuration")
			}
			if msg := err.Error(); !strings.Contains(msg, tt.wantVar) || strings.Contains(msg, "\n") || strings.Contains(msg, "hunter2") {
				t.Errorf("error %q, want one line naming %s and no password", msg, tt.wantVar)
			}
		})
	}
	if _, err := loadConfig(func(k string) string {
		return map[string]string{"JWT_JWKS_URL": "http://localhost:3000/api/auth/jwks"}[k]
	}); err != nil {
		t.Errorf("JWKS alone is a valid configuration: %v", err)
	}
}

// newTestServer is httptest.NewServer on a port below 32768.
func newTestServer(t testing.TB, h http.Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.Listener.Close()
	srv.Listener = testkit.ListenLoopback(t)
	srv.Start()
	t.Cleanup(srv.Close)
	return srv
}

// startRun runs the whole program as main would, and waits until /healthz answers.
// It returns the base URL and a function that cancels the context and returns run's error.
func startRun(t *testing.T, env map[string]string) (string, func() error) {
	t.Helper()
	return startRunTo(t, env, io.Discard)
}

// startRunTo is startRun with the server's log written to stdout.
func startRunTo(t *testing.T, env map[string]string, stdout io.Writer) (string, func() error) {
	t.Helper()
	testStore(t)
	port := testkit.FreePort(t)
	full := map[string]string{
		"DATABASE_URL":       testDatabaseURL,
		"BETTER_AUTH_SECRET": testkit.Secret,
		"PORT":               port,
	}
	for k, v := range env {
		full[k] = v
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, func(k string) string { return full[k] }, stdout) }()
	base := "http://127.0.0.1:" + port
	deadline := time.Now().Add(10 * time.Second)
	for {
		res, err := http.Get(base + "/healthz")
		if err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				break
			}
		}
		select {
		case err := <-done:
			t.Fatalf("run returned before serving: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			cancel()
			t.Fatal("the server did not answer /healthz within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	stop := func() error {
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(30 * time.Second):
			return fmt.Errorf("run did not return 30s after its context was cancelled")
		}
	}
	t.Cleanup(func() { cancel() })
	return base, stop
}

func httpDo(t *testing.T, method, url, token, body string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", "Bearer "+token)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res, string(b)
}

func TestShutdownLetsRequestsInFlightFinish(t *testing.T) {
	store := testStore(t)
	appName := "shutdown-" + strings.ToLower(testkit.NewUserID()[:12])
	base, stop := startRun(t, map[string]string{
		"DATABASE_URL": testDatabaseURL + "&application_name=" + appName,
	})
	me := testkit.NewUserID()
	token := testkit.Token(t, me)
	// Hold the task's row lock so that the toggles below are still running when the
	// shutdown starts.
	id, tx := lockedTask(t, store, base, me)
	ctx := context.Background()

	const inFlight = 5
	statuses := make(chan int, inFlight)
	var wg sync.WaitGroup
	for i := 0; i < inFlight; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest("PATCH", fmt.Sprintf("%s/api/%s/tasks/%d/complete", base, me, id), nil)
			req.Header.Set("Authorization", "Bearer "+token)
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				statuses <- 0
				return
			}
			res.Body.Close()
			statuses <- res.StatusCode
		}()
	}
	// The first waits on the row lock; the others wait to share the next commit.
	testkit.WaitFor(t, "a toggle to wait on the row lock", func() bool {
		var n int
		store.db.Pool().QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'`, appName).Scan(&n)
		return n == 1
	})
	time.Sleep(100 * time.Millisecond) // and the others to queue behind it

	stopped := make(chan error, 1)
	go func() { stopped <- stop() }()
	time.Sleep(200 * time.Millisecond) // the shutdown is under way with the requests held
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(statuses)
	for s := range statuses {
		if s != http.StatusOK {
			t.Errorf("a request in flight at shutdown ended with %d, want 200", s)
		}
	}
	if err := <-stopped; err != nil {
		t.Errorf("run returned %v, want nil after a clean shutdown", err)
	}
	if _, err := http.Get(base + "/healthz"); err == nil {
		t.Error("the server still accepts connections after shutdown")
	}
}

// TestAUsersRequestsInFlightAtShutdownAllFinish: a user's lists and creates in flight
// when the server is told to stop, many at once, each get their 2xx: none is refused for
// being one of many, and the writes queued for the next commit are sent.
func TestAUsersRequestsInFlightAtShutdownAllFinish(t *testing.T) {
	t.Parallel()
	base, stop := startRun(t, nil)
	me := testkit.NewUserID()
	token := testkit.Token(t, me)
	insertBigTasks(t, me, 1000) // 4 MB: each list takes a while to send
	statuses, written := make(chan string, 20), make(chan struct{}, 20)
	trace := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
		WroteRequest: func(httptrace.WroteRequestInfo) { written <- struct{}{} },
	})
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			method, body := "GET", ""
			if i%2 == 1 {
				method, body = "POST", `{"title":"at shutdown"}`
			}
			req, _ := http.NewRequestWithContext(trace, method, base+"/api/"+me+"/tasks", strings.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+token)
			req.Header.Set("Content-Type", "application/json")
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				statuses <- err.Error()
				return
			}
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
			statuses <- res.Status
		}()
	}
	// Stop once every request is out, and the server has had a moment to take them in:
	// a request still in the kernel's queue when the listener closes was never in flight.
	for range 20 {
		<-written
	}
	time.Sleep(50 * time.Millisecond)
	stopped := make(chan error, 1)
	go func() { stopped <- stop() }()
	wg.Wait()
	close(statuses)
	for s := range statuses {
		if s != "200 OK" && s != "201 Created" {
			t.Errorf("a request in flight at shutdown ended with %q, want its 2xx", s)
		}
	}
	if err := <-stopped; err != nil {
		t.Errorf("run: %v", err)
	}
}

// lockedTask creates a task for userID through the server at base and holds its row
// lock in a transaction until the test commits it or ends, so that requests on it wait.
func lockedTask(t *testing.T, store *Store, base, userID string) (int64, pgx.Tx) {
	t.Helper()
	res, body := httpDo(t, "POST", base+"/api/"+userID+"/tasks", testkit.Token(t, userID), `{"title":"held"}`)
	if res.StatusCode != http.StatusCreated {
		t.Fatalf("create: %d %s", res.StatusCode, body)
	}
	var id int64
	fmt.Sscanf(body, `{"id":%d`, &id)
	ctx := context.Background()
	tx, err := store.db.Pool().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tx.Rollback(ctx) })
	if _, err := tx.Exec(ctx, `SELECT 1 FROM tasks WHERE id = $1 FOR UPDATE`, id); err != nil {
		t.Fatal(err)
	}
	return id, tx
}

// waitHealthy waits until base answers /healthz.
func waitHealthy(t *testing.T, base string) {
	t.Helper()
	testkit.WaitOK(t, base+"/healthz")
}

func TestSlowHeadersAreCutOff(t *testing.T) {
	base, stop := startRun(t, nil)
	defer stop()
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	if _, err := conn.Write([]byte("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")); err != nil {
		t.Fatal(err)
	}
	// Trickle a header a byte a second; the server must give up on us long before we end.
	closed := make(chan time.Duration, 1)
	go func() {
		buf := make([]byte, 512)
		conn.Read(buf) // returns on the server's 408 or close
		closed <- time.Since(start)
	}()
	for i := 0; i < 20; i++ {
		select {
		case took := <-closed:
			if took > 7*time.Second {
				t.Errorf("the connection was cut after %v, want within about 5s", took)
			}
			// Other clients were served all along.
			if res, err := http.Get(base + "/healthz"); err != nil || res.StatusCode != http.StatusOK {
				t.Errorf("healthz after the slow client: %v", err)
			}
			return
		case <-time.After(time.Second):
			conn.Write([]byte("a"))
		}
	}
	t.Fatal("a client trickling its headers was still connected after 20s")
}

func TestStartLineAndAccessLog(t *testing.T) {
	testStore(t)
	var out testkit.SyncBuffer
	dbURL := strings.Replace(testDatabaseURL, "postgres@", "postgres:hunter2@", 1)
	base, stop := startRunTo(t, map[string]string{"DATABASE_URL": dbURL}, &out)
	defer stop()

	me := testkit.NewUserID()
	token := testkit.Token(t, me)
	req, _ := http.NewRequest("POST", base+"/api/"+me+"/tasks?secret-query=1", strings.NewReader(`{"title":"body-secret"}`))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Request-ID", "trace-42")
	res, err := http.DefaultClient.Do(req)
	if err != nil || res.StatusCode != http.StatusCreated {
		t.Fatalf("create: %v %v", res, err)
	}
	res.Body.Close()

	var start, access map[string]any
	testkit.WaitFor(t, "the access log line", func() bool {
		for _, line := range strings.Split(out.String(), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(line), &m) != nil {
				continue
			}
			switch m["msg"] {
			case "taskflow-api started":
				start = m
			case "request":
				if m["request_id"] == "trace-42" {
					access = m
				}
			}
		}
		return start != nil && access != nil
	})
	for _, key := range []string{"version", "addr", "database", "pool_max_conns", "auth", "cors_origins"} {
		if _, ok := start[key]; !ok {
			t.Errorf("the start line lacks %s: %v", key, start)
		}
	}
	want := map[string]any{"method": "POST", "route": "/api/{user_id}/tasks", "status": float64(201), "user_id": me}
	for k, v := range want {
		if access[k] != v {
			t.Errorf("access log %s = %v, want %v", k, access[k], v)
		}
	}
	if _, ok := access["duration_ms"].(float64); !ok {
		t.Errorf("access log lacks duration_ms: %v", access)
	}
	if b, _ := access["bytes"].(float64); b <= 0 {
		t.Errorf("access log bytes = %v", access["bytes"])
	}
	for _, secret := range []string{"hunter2", token, "body-secret", "secret-query"} {
		if strings.Contains(out.String(), secret) {
			t.Errorf("the log contains %q", secret)
		}
	}
}

// TestTheServersOwnRefusalsAreCounted: what net/http answers by itself, before any
// handler, is plain text (docs/api.md says so) and would leave no trace; it is counted.
func TestTheServersOwnRefusalsAreCounted(t *testing.T) {
	testStore(t)
	var out testkit.SyncBuffer
	base, stop := startRunTo(t, nil, &out)
	defer stop()
	addr := strings.TrimPrefix(base, "http://")
	for _, raw := range []string{
		"NONSENSE\r\n\r\n",
		"GET /healthz HTTP/1.1\r\nHost: x\r\nExpect: bogus\r\n\r\n",
		"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
		"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 40<<10) + "\r\n\r\n",
	} {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(conn, raw)
		status, _ := bufio.NewReader(conn).ReadString('\n')
		conn.Close()
		if !strings.HasPrefix(status, "HTTP/1.1 4") && !strings.HasPrefix(status, "HTTP/1.1 501") {
			t.Errorf("%.30q: %q", raw, status)
		}
	}
	testkit.WaitFor(t, "the refusals to be logged", func() bool {
		return strings.Contains(out.String(), "refused by the HTTP server itself")
	})
}

var built struct {
	once sync.Once
	bin  string
	err  error
}

func TestTheCommandLine(t *testing.T) {
	t.Parallel()
	bin := testkit.Binary(t)
	for _, c := range []struct {
		args     []string
		env      []string
		wantCode int
		want     string // in stdout when it exits 0, else in stderr
	}{
		{[]string{"--help"}, nil, 0, "dev-token USER_ID"},
		{[]string{"-h"}, nil, 0, "usage:"},
		{[]string{"serve"}, nil, 2, "usage:"},
		{[]string{"dev-token", "--help"}, []string{"BETTER_AUTH_SECRET=" + testkit.Secret}, 2, "usage:"},
		{[]string{"version"}, nil, 0, "taskflow-api "},
		{[]string{"dev-token", "someone"}, []string{"BETTER_AUTH_SECRET=" + testkit.Secret}, 0, "eyJ"},
		// Errors are one line, whatever pgx's own message looks like.
		{nil, []string{"BETTER_AUTH_SECRET=" + testkit.Secret, "PORT=0", "DATABASE_URL=postgres://u@127.0.0.1:1/db?connect_timeout=1"}, 1, "taskflow-api: database 127.0.0.1:1/db:"},
		{nil, []string{"BETTER_AUTH_SECRET=short"}, 1, "taskflow-api: BETTER_AUTH_SECRET must be"},
	} {
		cmd := exec.Command(bin, c.args...)
		cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, c.env...)
		var stdout, stderr strings.Builder
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		code := 0
		if exitErr, ok := cmd.Run().(*exec.ExitError); ok {
			code = exitErr.ExitCode()
		}
		out := stdout.String()
		if c.wantCode != 0 {
			out = stderr.String()
		}
		if code != c.wantCode || !strings.Contains(out, c.want) {
			t.Errorf("taskflow-api %v: exit %d, stdout %q, stderr %q; want exit %d with %q", c.args, code, stdout.String(), stderr.String(), c.wantCode, c.want)
		}
		if c.wantCode == 1 && strings.Count(strings.TrimSpace(string(out)), "\n") != 0 {
			t.Errorf("taskflow-api %v: the error spans several lines:\n%s", c.args, out)
		}
	}
}

func TestSignalsStopTheProcess(t *testing.T) {
	store := testStore(t)
	bin := testkit.Binary(t)
	appName := "signals-" + strings.ToLower(testkit.NewUserID()[:12])
	start := func() (*exec.Cmd, string) {
		port := testkit.FreePort(t)
		cmd := exec.Command(bin)
		cmd.Env = append(os.Environ(),
			"DATABASE_URL="+testDatabaseURL+"&application_name="+appName,
			"BETTER_AUTH_SECRET="+testkit.Secret, "PORT="+port, "LOG_FORMAT=text")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill() })
		base := "http://127.0.0.1:" + port
		waitHealthy(t, base)
		return cmd, base
	}
	exited := func(cmd *exec.Cmd) chan error {
		c := make(chan error, 1)
		go func() { c <- cmd.Wait() }()
		return c
	}

	t.Run("SIGTERM stops it with exit status 0", func(t *testing.T) {
		cmd, _ := start()
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited(cmd):
			if err != nil {
				t.Errorf("exit: %v, want status 0", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("still running 10s after SIGTERM with nothing in flight")
		}
	})

	t.Run("a second signal during the grace period exits at once", func(t *testing.T) {
		cmd, base := start()
		me := testkit.NewUserID()
		id, _ := lockedTask(t, store, base, me)
		ctx := context.Background()
		held, _ := http.NewRequest("PATCH", fmt.Sprintf("%s/api/%s/tasks/%d/complete", base, me, id), nil)
		held.Header.Set("Authorization", "Bearer "+testkit.Token(t, me))
		go func() {
			if res, err := http.DefaultClient.Do(held); err == nil {
				res.Body.Close()
			}
		}()
		testkit.WaitFor(t, "the request to wait on the lock", func() bool {
			var n int
			store.db.Pool().QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'`, appName).Scan(&n)
			return n == 1
		})
		done := exited(cmd)
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-done:
			t.Fatalf("exited (%v) with a request in flight, want it to wait", err)
		case <-time.After(300 * time.Millisecond):
		}
		cmd.Process.Signal(syscall.SIGINT)
		select {
		case err := <-done:
			if err == nil {
				t.Error("exit status 0 after a forced stop, want non-zero")
			}
		case <-time.After(2 * time.Second):
			t.Fatal("a second signal did not stop the process")
		}
	})
}
