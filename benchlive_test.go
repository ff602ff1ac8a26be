//go:build bench

// make bench-live (go test -tags bench -run TestBenchLive): what live updates cost one
// instance. It prints figures and asserts nothing about speed.

package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestBenchLive opens 10,000 idle event streams against one server and measures its
// memory and the REST throughput beside them, then the delay from a write's answer to
// its event at 1,000 streams under 200 writes a second.
func TestBenchLive(t *testing.T) {
	testStore(t)
	streams := 10000
	const streamsPerUser = 10
	dir := t.TempDir()
	bin := testBinary(t)
	port := freePort(t)
	srv := exec.Command(bin)
	srv.Env = append(os.Environ(), "DATABASE_URL="+testDatabaseURL, "BETTER_AUTH_SECRET="+testSecret, "PORT="+port, "LOG_FORMAT=json")
	srv.Stdout = io.Discard
	srv.Stderr = os.Stderr
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { srv.Process.Signal(os.Interrupt); srv.Wait() }()
	base := "http://127.0.0.1:" + port
	waitOK(t, base+"/readyz")
	rss := func() float64 { return float64(procStatus(t, srv.Process.Pid, "VmRSS")) / (1 << 20) }

	// Users with 50 tasks each, for wrk's list and get.
	ctx := context.Background()
	var users []benchUser
	tokens := map[string]string{}
	for range streams / streamsPerUser {
		u := benchUser{id: newUserID(t)}
		tokens[u.id] = tokenFor(t, u.id)
		if _, err := testStore(t).pool.Exec(ctx, `INSERT INTO tasks (user_id, title) SELECT $1, 'task ' || i FROM generate_series(1, 50) AS i`, u.id); err != nil {
			t.Fatal(err)
		}
		testStore(t).pool.QueryRow(ctx, `SELECT min(id) FROM tasks WHERE user_id = $1`, u.id).Scan(&u.taskID)
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

	// 10,000 idle streams, read by one goroutine each, which records when each event
	// arrives for the latency run.
	type arrival struct {
		stream int
		at     time.Time
	}
	var (
		arrivalsMu sync.Mutex
		arrivals   = map[string][]arrival{} // by task event data's id and updated_at
		ready      atomic.Int64
		conns      []net.Conn
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
					var task taskJSON
					if json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &task) == nil && task.UpdatedAt != "" {
						arrivalsMu.Lock()
						key := fmt.Sprint(task.ID, task.UpdatedAt)
						arrivals[key] = append(arrivals[key], arrival{i, time.Now()})
						arrivalsMu.Unlock()
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
	waitFor(t, "every stream's ready", func() bool { return ready.Load() == int64(streams) })
	time.Sleep(2 * time.Second)
	streamsRSS := rss()
	listBeside, getBeside := rest()
	streamsRSSAfterLoad := rss()

	// 200 writes a second for 10 s, toggles spread over the users of the first 1,000
	// streams; each is awaited on each of that user's streams.
	const latencyStreams, writesPerSecond = 1000, 200
	latencyUsers := users[:latencyStreams/streamsPerUser]
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	type write struct {
		key      string
		answered time.Time
	}
	var (
		writesMu sync.Mutex
		writes   []write
		wg       sync.WaitGroup
	)
	tick := time.NewTicker(time.Second / writesPerSecond)
	for n := 0; n < 10*writesPerSecond; n++ {
		<-tick.C
		u := latencyUsers[n%len(latencyUsers)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest("PATCH", fmt.Sprintf("%s/api/%s/tasks/%d/complete", base, u.id, u.taskID), nil)
			req.Header.Set("Authorization", "Bearer "+tokens[u.id])
			res, err := client.Do(req)
			if err != nil {
				return
			}
			var task taskJSON
			json.NewDecoder(res.Body).Decode(&task)
			res.Body.Close()
			writesMu.Lock()
			writes = append(writes, write{fmt.Sprint(task.ID, task.UpdatedAt), time.Now()})
			writesMu.Unlock()
		}()
	}
	tick.Stop()
	wg.Wait()
	time.Sleep(2 * time.Second)
	var delays []time.Duration
	missing := 0
	arrivalsMu.Lock()
	for _, w := range writes {
		got := arrivals[w.key]
		if len(got) != streamsPerUser {
			missing += streamsPerUser - len(got)
		}
		for _, a := range got {
			delays = append(delays, a.at.Sub(w.answered))
		}
	}
	arrivalsMu.Unlock()
	slices.Sort(delays)

	fmt.Printf("\none instance; %d streams over %d users; wrk 16 connections, median of three 10 s runs, on the same 2 cores\n\n", streams, len(users))
	fmt.Println("| figure | without streams | with the streams |")
	fmt.Println("|---|---:|---:|")
	fmt.Printf("| server RSS | %.1f MiB | %.1f MiB (%.1f MiB after the REST load) |\n", idleRSS, streamsRSS, streamsRSSAfterLoad)
	fmt.Printf("| list req/s (p99) | %.0f (%s) | %.0f (%s) |\n", listBefore.rps, ms(listBefore.p99), listBeside.rps, ms(listBeside.p99))
	fmt.Printf("| get req/s (p99) | %.0f (%s) | %.0f (%s) |\n", getBefore.rps, ms(getBefore.p99), getBeside.rps, ms(getBeside.p99))
	if len(delays) > 0 {
		fmt.Printf("\n%d toggles at %d/s over the users of %d streams: %d events, %d missing; from the write's answer to the event: p50 %s, p99 %s, max %s\n",
			len(writes), writesPerSecond, latencyStreams, len(delays), missing,
			ms(percentile(delays, 50)), ms(percentile(delays, 99)), ms(delays[len(delays)-1]))
	}
}
