package load

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"taskflow/internal/testkit"

	"github.com/jackc/pgx/v5/pgxpool"
)

// The load harnesses drive the built service, as an operator runs it: start it, send it
// requests, read its database.

func TestMain(m *testing.M) {
	code := m.Run()
	testkit.RemoveBinary()
	os.Exit(code)
}

// startServer runs the service on a free port against databaseURL, with the test secret
// and env, until the test ends; it returns its base URL and its process.
func startServer(t testing.TB, databaseURL string, env ...string) (string, *exec.Cmd) {
	t.Helper()
	port := testkit.FreePort(t)
	srv := exec.Command(testkit.Binary(t))
	srv.Env = append(os.Environ(), append([]string{"DATABASE_URL=" + databaseURL, "BETTER_AUTH_SECRET=" + testkit.Secret,
		"PORT=" + port, "LOG_FORMAT=json"}, env...)...)
	srv.Stdout, srv.Stderr = io.Discard, os.Stderr
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Process.Signal(os.Interrupt); srv.Wait() })
	base := "http://127.0.0.1:" + port
	testkit.WaitOK(t, base+"/readyz")
	return base, srv
}

// openPool is a pool on databaseURL, with the service's schema applied.
func openPool(t testing.TB, databaseURL string) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), databaseURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	schema, err := os.ReadFile(filepath.Join(testkit.Root(t), "schema.sql"))
	if err == nil {
		_, err = pool.Exec(context.Background(), string(schema))
	}
	if err != nil {
		t.Fatalf("schema.sql: %v", err)
	}
	return pool
}

// statements are the service's SQL, by name (taskflow-api statements).
func statements(t testing.TB) map[string]string {
	out, err := exec.Command(testkit.Binary(t), "statements").Output()
	var m map[string]string
	if err == nil {
		err = json.Unmarshal(out, &m)
	}
	if err != nil {
		t.Fatalf("taskflow-api statements: %v", err)
	}
	return m
}

// send makes a request as token, and returns its status and body.
func send(client *http.Client, method, url, token, key, body string) (int, []byte) {
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := client.Do(req)
	if err != nil {
		return 0, nil
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, b
}

// listOf is userID's tasks as the service lists them, by id.
func listOf(t testing.TB, base, userID string) map[int64]testkit.Task {
	status, body := send(http.DefaultClient, "GET", base+"/api/"+userID+"/tasks", testkit.Token(t, userID), "", "")
	var list []testkit.Task
	if status != http.StatusOK || json.Unmarshal(body, &list) != nil {
		t.Fatalf("list of %s: %d %s", userID, status, body)
	}
	m := map[int64]testkit.Task{}
	for _, task := range list {
		m[task.ID] = task
	}
	return m
}
