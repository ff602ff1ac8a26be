//go:build bench

// make bench-live (go test -tags bench -run TestBenchLive): what live updates cost one
// instance, and what they deliver. It prints figures and asserts nothing about speed.

package load

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"taskflow/internal/testkit"
)

// TestBenchLive opens 10,000 idle event streams against one server and measures its
// memory and the REST throughput beside them; then the delay from a write's answer to
// its event on every stream of its user, at 1,000 streams under 200 and 2,000 writes a
// second; then followers resuming through forced reconnects under writes; then what
// streams that stop reading leave in the kernel.
func TestBenchLive(t *testing.T) {
	dbURL := testkit.DatabaseURL(t)
	streams := 10000
	const streamsPerUser = 10
	dir := t.TempDir()
	base, srv := startServer(t, dbURL, "MAX_WRITES_PER_USER=100000")
	port := strings.TrimPrefix(base, "http://127.0.0.1:")
	db := openPool(t, dbURL)
	rss := func() float64 { return float64(testkit.ProcStatus(t, srv.Process.Pid, "VmRSS")) / (1 << 20) }

	// Users with 50 tasks each, for wrk's list and get.
	ctx := context.Background()
	var users []benchUser
	tokens := map[string]string{}
	for range streams / streamsPerUser {
		u := benchUser{id: testkit.NewUserID()}
		tokens[u.id] = testkit.Token(t, u.id)
		if _, err := db.Exec(ctx, `INSERT INTO tasks (user_id, title) SELECT $1, 'task ' || i FROM generate_series(1, 50) AS i`, u.id); err != nil {
			t.Fatal(err)
		}
		db.QueryRow(ctx, `SELECT min(id) FROM tasks WHERE user_id = $1`, u.id).Scan(&u.taskID)
		users = append(users, u)
	}
	usersFile := filepath.Join(dir, "users.txt")
	writeBenchUsers(t, usersFile, users, func(u benchUser) string { return tokens[u.id] }, nil)
	// The median of three runs: one 10 s run differs from the next by tens of per cent here.
	rest := func() (list, get measurement) {
		var lists, gets []measurement
		for range 3 {
			lists = append(lists, runWrk(t, "", base, usersFile, "list", 16, 10*time.Second))
			gets = append(gets, runWrk(t, "", base, usersFile, "get", 16, 10*time.Second))
		}
		return median(lists), median(gets)
	}
	idleRSS := rss()
	listBefore, getBefore := rest()

	// 10,000 idle streams, read by one goroutine each, which records when each version of
	// each task first arrives on it.
	var (
		ready   atomic.Int64
		conns   []net.Conn
		arrived = make([]sync.Map, streams) // per stream: task id → *arrivals
	)
	for i := range streams {
		u := users[i/streamsPerUser]
		c, err := net.Dial("tcp", "127.0.0.1:"+port)
		if err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
		conns = append(conns, c)
		fmt.Fprintf(c, "GET /api/%s/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n", u.id, tokens[u.id])
		go func(i int, c net.Conn) {
			r := bufio.NewReader(c)
			for {
				line, err := r.ReadString('\n')
				if err != nil {
					return
				}
				switch {
				case strings.HasPrefix(line, "event: ready"):
					ready.Add(1)
				case strings.HasPrefix(line, "data: {\"id\""):
					var task testkit.Task
					if json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &task) == nil {
						v, _ := arrived[i].LoadOrStore(task.ID, &arrivals{})
						v.(*arrivals).add(task.Version, time.Now())
					}
				}
			}
		}(i, c)
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	testkit.WaitFor(t, "every stream's ready", func() bool { return ready.Load() == int64(streams) })
	time.Sleep(2 * time.Second)
	streamsRSS := rss()
	listBeside, getBeside := rest()
	streamsRSSAfterLoad := rss()

	fmt.Printf("\none instance; %d streams over %d users; wrk 16 connections, median of three 10 s runs, on the same 2 cores\n\n", streams, len(users))
	fmt.Println("| figure | without streams | with the streams |")
	fmt.Println("|---|---:|---:|")
	fmt.Printf("| server RSS | %.1f MiB | %.1f MiB (%.1f MiB after the REST load) |\n", idleRSS, streamsRSS, streamsRSSAfterLoad)
	fmt.Printf("| list req/s (p99) | %.0f (%s) | %.0f (%s) |\n", listBefore.rps, testkit.Ms(listBefore.p99), listBeside.rps, testkit.Ms(listBeside.p99))
	fmt.Printf("| get req/s (p99) | %.0f (%s) | %.0f (%s) |\n", getBefore.rps, testkit.Ms(getBefore.p99), getBeside.rps, testkit.Ms(getBeside.p99))

	// Toggles spread over the users of the first 1,000 streams, 10 s at each rate; each
	// is awaited on each of its user's streams: the first arrival of its version or a
	// later one (the feed sends a task's latest state: two toggles read at once are one
	// event).
	fmt.Println("\n| writes/s | writes | events awaited | missing | p50 | p99 | max |")
	fmt.Println("|---:|---:|---:|---:|---:|---:|---:|")
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}}
	for _, rate := range []int{200, 2000} {
		latencyUsers := users[:1000/streamsPerUser]
		type write struct {
			user     int
			task     int64
			version  int64
			answered time.Time
		}
		var (
			mu     sync.Mutex
			writes []write
			wg     sync.WaitGroup
		)
		tick := time.NewTicker(time.Second / time.Duration(rate))
		for n := 0; n < 10*rate; n++ {
			<-tick.C
			k := n % len(latencyUsers)
			u := latencyUsers[k]
			wg.Go(func() {
				req, _ := http.NewRequest("PATCH", fmt.Sprintf("%s/api/%s/tasks/%d/complete", base, u.id, u.taskID), nil)
				req.Header.Set("Authorization", "Bearer "+tokens[u.id])
				res, err := client.Do(req)
				if err != nil {
					return
				}
				var task testkit.Task
				json.NewDecoder(res.Body).Decode(&task)
				res.Body.Close()
				mu.Lock()
				writes = append(writes, write{k, task.ID, task.Version, time.Now()})
				mu.Unlock()
			})
		}
		tick.Stop()
		wg.Wait()
		time.Sleep(2 * time.Second)
		var delays []time.Duration
		missing := 0
		for _, w := range writes {
			for s := w.user * streamsPerUser; s < (w.user+1)*streamsPerUser; s++ {
				v, _ := arrived[s].Load(w.task)
				at, ok := v.(*arrivals).first(w.version)
				if !ok {
					missing++
					continue
				}
				delays = append(delays, at.Sub(w.answered))
			}
		}
		slices.Sort(delays)
		fmt.Printf("| %d | %d | %d | %d | %s | %s | %s |\n", rate, len(writes), len(writes)*streamsPerUser, missing,
			testkit.Ms(testkit.Percentile(delays, 50)), testkit.Ms(testkit.Percentile(delays, 99)), testkit.Ms(delays[len(delays)-1]))
	}
	for _, c := range conns {
		c.Close()
	}
	benchResume(t, base, users)
	benchNonReadingStreams(t, base, users[0], tokens[users[0].id])
}

// arrivals records when each version of a task reached one stream.
type arrivals struct {
	mu sync.Mutex
	at map[int64]time.Time
}

func (a *arrivals) add(version int64, at time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.at == nil {
		a.at = map[int64]time.Time{}
	}
	a.at[version] = at
}

// first is when version, or a later one, first arrived.
func (a *arrivals) first(version int64) (time.Time, bool) {
	if a == nil {
		return time.Time{}, false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	var best time.Time
	for v, at := range a.at {
		if v >= version && (best.IsZero() || at.Before(best)) {
			best = at
		}
	}
	return best, !best.IsZero()
}

// benchResume: followers of several users, their streams cut by the server whenever
// their tokens expire (every 3 s), resume from their last event while 5,000 writes land;
// then each is compared with the database.
func benchResume(t *testing.T, base string, users []benchUser) {
	users = users[:10]
	ctx, cancel := context.WithCancel(context.Background())
	var followers []*testkit.Follower
	var wg sync.WaitGroup
	for _, u := range users {
		for range 3 {
			f := testkit.NewFollower(base, u.id, func() string { return testkit.ShortToken(t, u.id, 3*time.Second) })
			followers = append(followers, f)
			wg.Go(func() { f.Run(ctx, 50*time.Millisecond) })
		}
	}
	client := &http.Client{}
	token := map[string]string{}
	for _, u := range users {
		token[u.id] = testkit.Token(t, u.id)
	}
	start := time.Now()
	for n := range 5000 {
		u := users[n%len(users)]
		method, path, body := "PATCH", fmt.Sprintf("/api/%s/tasks/%d/complete", u.id, u.taskID+int64(n%7)), ""
		if n%10 == 0 {
			method, path, body = "POST", "/api/"+u.id+"/tasks", `{"title":"resume `+strconv.Itoa(n)+`"}`
		}
		req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token[u.id])
		req.Header.Set("Content-Type", "application/json")
		if res, err := client.Do(req); err == nil {
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
		}
		time.Sleep(4 * time.Millisecond)
	}
	took := time.Since(start)
	var reconnects, stale, lists, resyncs, wrong int
	for _, f := range followers {
		if ok, _ := f.Converges(listOf(t, base, f.UserID()), 5*time.Second); !ok {
			wrong++
		}
		c := f.Counts()
		reconnects, stale, lists, resyncs = reconnects+c.Reconnects, stale+c.Stale, lists+c.Lists, resyncs+c.Resyncs
	}
	cancel()
	wg.Wait()
	fmt.Printf("\nresumption: %d followers of %d users, 5,000 writes in %s; %d reconnects (streams ended by the server as their tokens expired); "+
		"%d stale events, %d resyncs, %d lists (one each is the start); %d end unlike the database\n",
		len(followers), len(users), took.Round(time.Second), reconnects, stale, resyncs, lists, wrong)
}

// benchNonReadingStreams: a user opens 16 streams and reads none of them while their
// events pile up; the server drops them when a page cannot reach them, and the kernel
// must free what their sockets held. Three times; TCP's memory (/proc/net/sockstat)
// before, at the worst, and after.
func benchNonReadingStreams(t *testing.T, base string, u benchUser, token string) {
	tcpMem := func() int64 {
		b, _ := os.ReadFile("/proc/net/sockstat")
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) > 0 && f[0] == "TCP:" {
				pages, _ := strconv.ParseInt(f[len(f)-1], 10, 64)
				return pages * 4096
			}
		}
		return 0
	}
	before, worst := tcpMem(), int64(0)
	body := testkit.LargestTaskBody()
	client := &http.Client{}
	for cycle := range 3 {
		var conns []net.Conn
		for range 16 {
			c, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
			if err != nil {
				t.Fatal(err)
			}
			c.(*net.TCPConn).SetReadBuffer(4096)
			fmt.Fprintf(c, "GET /api/%s/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n", u.id, token)
			conns = append(conns, c)
		}
		time.Sleep(500 * time.Millisecond)
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			req, _ := http.NewRequest("POST", base+"/api/"+u.id+"/tasks", strings.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+token)
			req.Header.Set("Content-Type", "application/json")
			if res, err := client.Do(req); err == nil {
				res.Body.Close()
			}
			worst = max(worst, tcpMem())
			// Every stream dropped: a read gets the reset.
			gone := 0
			for _, c := range conns {
				c.SetReadDeadline(time.Now().Add(time.Millisecond))
				if _, err := c.Read(make([]byte, 1)); err != nil && !isTimeout(err) {
					gone++
				}
			}
			if gone == len(conns) {
				break
			}
		}
		for _, c := range conns {
			c.Close()
		}
		fmt.Printf("non-reading streams, cycle %d: TCP memory %.1f MiB (before all cycles %.1f MiB, worst so far %.1f MiB)\n",
			cycle+1, float64(tcpMem())/(1<<20), float64(before)/(1<<20), float64(worst)/(1<<20))
	}
	time.Sleep(time.Second)
	fmt.Printf("16 non-reading streams x 3 cycles: TCP memory grew by %.1f MiB at the worst, %.1f MiB after\n",
		float64(worst-before)/(1<<20), float64(tcpMem()-before)/(1<<20))
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}
