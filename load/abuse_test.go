//go:build abuse

// make abuse (go test -tags abuse -run TestAbuse): what a hostile or careless client can
// make a server spend, for this tree's build and for every binary named in ABUSE_COMPARE
// (name=path,...; an earlier commit's build, say), one after the other, on loopback. It
// prints a table and asserts nothing: the figures are for docs/operations.md.

package load

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"taskflow/internal/testkit"
)

func TestAbuse(t *testing.T) {
	outage := testkit.EnvDuration(t, "ABUSE_OUTAGE", 30*time.Second)
	ctx := context.Background()

	// A database of its own, with one user who owns 10,000 tasks of 1000-character
	// descriptions: the most a user may own, at the largest description.
	dbURL := testkit.FreshDatabase(t, "taskflow_abuse")
	pool := openPool(t, dbURL)
	me := testkit.NewUserID()
	if _, err := pool.Exec(ctx, `INSERT INTO tasks (user_id, title, description)
SELECT $1, 'task ' || i, repeat('d', 1000) FROM generate_series(1, 10000) AS i`, me); err != nil {
		t.Fatal(err)
	}
	var taskID int64
	pool.QueryRow(ctx, `SELECT min(id) FROM tasks`).Scan(&taskID)
	token := testkit.Token(t, me)

	bin := testkit.Binary(t)
	type figures map[string]string
	var names []string
	results := map[string]figures{}
	for _, spec := range append([]string{"this tree=" + bin}, testkit.EnvList("ABUSE_COMPARE", "")...) {
		name, path, ok := strings.Cut(spec, "=")
		if !ok {
			continue
		}
		names = append(names, name)
		f := figures{}
		results[name] = f

		dbAddr := strings.Split(strings.Split(dbURL, "@")[1], "/")[0]
		proxy := testkit.NewFaultProxy(t, dbAddr)
		u := strings.Replace(dbURL, dbAddr, proxy.Addr(), 1)
		port := testkit.FreePort(t)
		srv := exec.Command(path)
		srv.Env = append(os.Environ(), "DATABASE_URL="+u, "BETTER_AUTH_SECRET="+testkit.Secret, "PORT="+port, "LOG_FORMAT=json")
		stdout, _ := srv.StdoutPipe()
		srv.Stderr = os.Stderr
		var lines atomic.Int64
		go func() {
			sc := bufio.NewScanner(stdout)
			sc.Buffer(make([]byte, 1<<20), 1<<20)
			for sc.Scan() {
				lines.Add(1)
			}
		}()
		if err := srv.Start(); err != nil {
			t.Fatal(err)
		}
		base := "http://127.0.0.1:" + port
		testkit.WaitOK(t, base+"/readyz")
		get := func(path string) (*http.Response, error) {
			req, _ := http.NewRequest("GET", base+path, nil)
			req.Header.Set("Authorization", "Bearer "+token)
			return http.DefaultClient.Do(req)
		}
		list := "/api/" + me + "/tasks"

		// One client, the whole list: time to the first byte and to the last.
		start := time.Now()
		res, err := get(list)
		if err != nil {
			t.Fatal(err)
		}
		firstByte := make([]byte, 1)
		io.ReadFull(res.Body, firstByte)
		ttfb := time.Since(start)
		n, _ := io.Copy(io.Discard, res.Body)
		res.Body.Close()
		f["10,000-task list: first byte / last byte"] = fmt.Sprintf("%s / %s (%.1f MB)", testkit.Ms(ttfb), testkit.Ms(time.Since(start)), float64(n+1)/1e6)

		// Four clients fetching it at once (as many as one user may).
		testkit.ResetPeakRSS(t, srv.Process.Pid)
		var wg sync.WaitGroup
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if res, err := get(list); err == nil {
					io.Copy(io.Discard, res.Body)
					res.Body.Close()
				}
			}()
		}
		wg.Wait()
		f["peak RSS, 4 clients fetch it at once"] = fmt.Sprintf("%.1f MiB", float64(testkit.PeakRSS(t, srv.Process.Pid))/(1<<20))

		// 300 clients ask for 1000 tasks each and never read the answer (but its status
		// line): a few are served, the rest refused, and the served are cut off.
		testkit.ResetPeakRSS(t, srv.Process.Pid)
		var conns []net.Conn
		statuses := map[string]int{}
		for range 300 {
			c, err := net.Dial("tcp", "127.0.0.1:"+port)
			if err != nil {
				t.Fatal(err)
			}
			c.(*net.TCPConn).SetReadBuffer(4096)
			fmt.Fprintf(c, "GET %s?limit=1000 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n", list, token)
			line, _ := bufio.NewReader(c).ReadString('\n')
			statuses[strings.TrimSpace(strings.TrimPrefix(line, "HTTP/1.1"))]++
			conns = append(conns, c)
		}
		time.Sleep(10 * time.Second)
		f["peak RSS, 300 clients ask for 1000 tasks and never read"] = fmt.Sprintf("%.1f MiB (%v)", float64(testkit.PeakRSS(t, srv.Process.Pid))/(1<<20), statuses)
		for _, c := range conns {
			c.Close()
		}

		// A database outage under 8 busy clients.
		testkit.WaitOK(t, base+"/readyz")
		time.Sleep(time.Second) // the access lines of the above are written
		proxy.Set("down")
		dials, logged := proxy.Dials.Load(), lines.Load()
		outCtx, cancel := context.WithTimeout(ctx, outage)
		var (
			mu        sync.Mutex
			latencies []time.Duration
		)
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for outCtx.Err() == nil {
					began := time.Now()
					res, err := get(fmt.Sprintf("%s/%d", list, taskID))
					if err != nil {
						continue
					}
					io.Copy(io.Discard, res.Body)
					res.Body.Close()
					mu.Lock()
					latencies = append(latencies, time.Since(began))
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		cancel()
		dials, logged = proxy.Dials.Load()-dials, lines.Load()-logged
		slices.Sort(latencies)
		f["outage: requests answered (all 503)"] = strconv.Itoa(len(latencies))
		f["outage: connection attempts (per second)"] = fmt.Sprintf("%d (%.1f/s)", dials, float64(dials)/outage.Seconds())
		f["outage: log lines written"] = strconv.FormatInt(logged, 10)
		if len(latencies) > 0 {
			f["outage: 503 latency p50 / p99"] = fmt.Sprintf("%s / %s", testkit.Ms(testkit.Percentile(latencies, 50)), testkit.Ms(testkit.Percentile(latencies, 99)))
		}
		proxy.Set("up")
		back := time.Now()
		for {
			res, err := get(fmt.Sprintf("%s/%d", list, taskID))
			if err == nil {
				res.Body.Close()
				if res.StatusCode == http.StatusOK {
					break
				}
			}
			if time.Since(back) > 30*time.Second {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		f["outage: first 200 after the database returns"] = testkit.Ms(time.Since(back))

		srv.Process.Signal(os.Interrupt)
		srv.Wait()
	}

	fmt.Printf("\n| figure | %s |\n|---|%s\n", strings.Join(names, " | "), strings.Repeat("---:|", len(names)))
	for _, row := range []string{
		"10,000-task list: first byte / last byte",
		"peak RSS, 4 clients fetch it at once",
		"peak RSS, 300 clients ask for 1000 tasks and never read",
		"outage: requests answered (all 503)",
		"outage: connection attempts (per second)",
		"outage: log lines written",
		"outage: 503 latency p50 / p99",
		"outage: first 200 after the database returns",
	} {
		line := "| " + row + " |"
		for _, name := range names {
			line += " " + results[name][row] + " |"
		}
		fmt.Println(line)
	}
	fmt.Printf("\n(outage: %s with the database's TCP proxy refusing and cutting connections)\n", outage)
}

// TestAbuseWrites: what one account can add to the database, and what many accounts cost
// the write limiter. One user with 8 connections toggles for 10 s with a fresh 255-character
// Idempotency-Key each time (the probe that grew idempotency_keys by 492 rows a second
// before MAX_WRITES_PER_USER); then 100,000 users write once each.
func TestAbuseWrites(t *testing.T) {
	ctx := context.Background()
	dbURL := testkit.FreshDatabase(t, "taskflow_abuse_writes")
	pool := openPool(t, dbURL)
	base, srv := startServer(t, dbURL)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}

	me := testkit.NewUserID()
	token := testkit.Token(t, me)
	var taskID int64
	pool.QueryRow(ctx, `INSERT INTO tasks (user_id, title) VALUES ($1, 'toggled') RETURNING id`, me).Scan(&taskID)
	var before int64
	pool.QueryRow(ctx, `SELECT count(*) FROM idempotency_keys`).Scan(&before)
	var (
		statuses sync.Map
		sent     atomic.Int64
		wg       sync.WaitGroup
	)
	stop := time.Now().Add(10 * time.Second)
	for w := range 8 {
		wg.Go(func() {
			for n := 0; time.Now().Before(stop); n++ {
				key := fmt.Sprintf("%d-%d-", w, n)
				key += strings.Repeat("k", 255-len(key))
				status, _ := send(client, "PATCH", fmt.Sprintf("%s/api/%s/tasks/%d/complete", base, me, taskID), token, key, "")
				v, _ := statuses.LoadOrStore(status, new(atomic.Int64))
				v.(*atomic.Int64).Add(1)
				sent.Add(1)
			}
		})
	}
	wg.Wait()
	var after int64
	pool.QueryRow(ctx, `SELECT count(*) FROM idempotency_keys`).Scan(&after)
	fmt.Printf("\none user, 8 connections, 10 s of toggles with fresh 255-character keys: %d sent;", sent.Load())
	statuses.Range(func(k, v any) bool { fmt.Printf(" %v: %d;", k, v.(*atomic.Int64).Load()); return true })
	var bytes int64
	pool.QueryRow(ctx, `SELECT pg_total_relation_size('idempotency_keys')`).Scan(&bytes)
	fmt.Printf(" idempotency_keys grew by %d rows, %d bytes a row with its indexes\n", after-before, bytes/max(after, 1))

	// 100,000 users, each creating one task, from 16 connections.
	rss := func() float64 { return float64(testkit.ProcStatus(t, srv.Process.Pid, "VmRSS")) / (1 << 20) }
	idle := rss()
	const users = 100_000
	next := atomic.Int64{}
	testkit.ResetPeakRSS(t, srv.Process.Pid)
	start := time.Now()
	var failed atomic.Int64
	for range 16 {
		wg.Go(func() {
			for i := next.Add(1); i <= users; i = next.Add(1) {
				id := fmt.Sprintf("writer-%d", i)
				tok := testkit.Token(t, id)
				if status, _ := send(client, "POST", base+"/api/"+id+"/tasks", tok, "", `{"title":"once"}`); status != http.StatusCreated {
					failed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	peak, end := float64(testkit.PeakRSS(t, srv.Process.Pid))/(1<<20), rss()
	time.Sleep(3 * time.Second)
	send(client, "POST", base+"/api/"+me+"/tasks", token, "", `{"title":"sweeps the limiter"}`) // its sweep runs on a write
	fmt.Printf("%d users writing once each in %s (%d failed): RSS %.1f MiB idle, %.1f MiB at the peak, %.1f MiB at the end, %.1f MiB 3 s later\n",
		users, took.Round(time.Second), failed.Load(), idle, peak, end, rss())
}
