//go:build abuse

// TestAbuseFairness (make abuse): what one account's habits, heavy or hostile, cost the
// other users, and what its clients can make the kernel and the log hold. Victims (20
// users with 50 tasks each) list, get and create at 150 requests a second, open loop,
// first alone (the baseline), then beside the account, in the same minute; the account
// has 10,000 tasks of 1000-character descriptions. It prints figures for
// docs/operations.md and asserts nothing.

package load

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
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

func TestAbuseFairness(t *testing.T) {
	ctx := context.Background()
	dbURL := testkit.FreshDatabase(t, "taskflow_fairness")
	pool := openPool(t, dbURL)
	var logLines atomic.Int64
	base, port := startCountingLines(t, dbURL, &logLines)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}}

	victims := make([]string, 20)
	tokens := map[string]string{}
	for i := range victims {
		victims[i] = testkit.NewUserID()
		tokens[victims[i]] = testkit.Token(t, victims[i])
		if _, err := pool.Exec(ctx, `INSERT INTO tasks (user_id, title, description)
SELECT $1, 'task ' || i, 'Notes for task ' || i FROM generate_series(1, 50) AS i`, victims[i]); err != nil {
			t.Fatal(err)
		}
	}
	// The account, and a cursor of it from before its 10,000 tasks.
	heavy := testkit.NewUserID()
	token := testkit.Token(t, heavy)
	old := cursorOf(t, client, base, heavy, token)
	insertHeavy := func(userID string, n int) {
		if _, err := pool.Exec(ctx, `INSERT INTO tasks (user_id, title, description)
SELECT $1, 'task ' || i, repeat('d', 1000) FROM generate_series(1, $2::int) AS i`, userID, n); err != nil {
			t.Fatal(err)
		}
	}
	insertHeavy(heavy, 10000)
	var ids []int64
	rows, _ := pool.Query(ctx, `SELECT id FROM tasks WHERE user_id = $1`, heavy)
	for rows.Next() {
		var id int64
		rows.Scan(&id)
		ids = append(ids, id)
	}
	rows.Close()

	probe := func(name string, abuse func(ctx context.Context)) {
		alone := victimLoad(client, base, tokens, victims, 10*time.Second)
		actx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); abuse(actx) }()
		time.Sleep(time.Second) // the abuse under way
		beside := victimLoad(client, base, tokens, victims, 10*time.Second)
		cancel()
		<-done
		fmt.Printf("\n%s\n| victims' op | alone p50 / p99 | beside it p50 / p99 | p99 ratio |\n|---|---:|---:|---:|\n", name)
		for _, op := range []string{"list", "get", "create"} {
			a, b := alone[op], beside[op]
			fmt.Printf("| %s | %s / %s | %s / %s | %.2f |\n", op, testkit.Ms(a.p50), testkit.Ms(a.p99), testkit.Ms(b.p50), testkit.Ms(b.p99), float64(b.p99)/float64(a.p99))
		}
	}

	// The controls: the same habits in an ordinary account of 50 tasks, for what any busy
	// neighbour costs the victims on these two cores.
	ordinary := testkit.NewUserID()
	ordinaryToken := testkit.Token(t, ordinary)
	insertHeavy(ordinary, 50)
	var ordinaryIDs []int64
	pool.QueryRow(ctx, `SELECT array_agg(id) FROM tasks WHERE user_id = $1`, ordinary).Scan(&ordinaryIDs)
	followAndWrite := func(userID, token string, ids []int64) func(ctx context.Context) {
		return func(ctx context.Context) {
			for range 16 {
				go follow(ctx, base, userID, token, "")
			}
			tick := time.NewTicker(20 * time.Millisecond)
			defer tick.Stop()
			for ctx.Err() == nil {
				<-tick.C
				go send(client, "PATCH", fmt.Sprintf("%s/api/%s/tasks/%d/complete", base, userID, ids[rand.N(len(ids))]), token, "", "")
			}
		}
	}
	fourLists := func(userID, token, sort string) func(ctx context.Context) {
		return func(ctx context.Context) {
			var wg sync.WaitGroup
			for range 4 {
				wg.Go(func() {
					for ctx.Err() == nil {
						send(client, "GET", base+"/api/"+userID+"/tasks?sort="+sort, token, "", "")
					}
				})
			}
			wg.Wait()
		}
	}
	probe("Control for probe 1: an account of 50 tasks follows with 16 streams and writes 50 times a second", followAndWrite(ordinary, ordinaryToken, ordinaryIDs))
	probe("Probe 1: the account follows with 16 streams and writes 50 times a second", followAndWrite(heavy, token, ids))
	var resumed atomic.Int64
	probe("Probe 2: 16 loops resume from a cursor of before the account's 10,000 changes", func(ctx context.Context) {
		var wg sync.WaitGroup
		for range 16 {
			wg.Go(func() {
				for ctx.Err() == nil {
					follow(ctx, base, heavy, token, old) // until ready
					resumed.Add(1)
				}
			})
		}
		wg.Wait()
	})
	fmt.Printf("(%d catch-ups of 10,000 changes in the 11 s)\n", resumed.Load())
	probe("Control for probe 4: 4 lists at once of an account's 50 tasks", fourLists(ordinary, ordinaryToken, "created"))
	for _, sort := range []string{"created", "updated", "title"} {
		probe("Probe 4: 4 lists at once of the account's 10,000 tasks, sort="+sort, fourLists(heavy, token, sort))
	}

	// Catch-up costs what it sends: a stream from an old cursor, alone, to its ready.
	fmt.Printf("\nCatching up from an old cursor, one stream alone:\n")
	for _, n := range []int{1000, 10000} {
		user := testkit.NewUserID()
		tok := testkit.Token(t, user)
		from := cursorOf(t, client, base, user, tok)
		insertHeavy(user, n)
		start := time.Now()
		events := follow(ctx, base, user, tok, from)
		fmt.Printf("- %d changes: ready after %s (%d events)\n", n, testkit.Ms(time.Since(start)), events)
	}

	// Probe 3: 100 clients of the account ask for 1000 tasks and never read.
	var conns []net.Conn
	for range 100 {
		c, err := net.Dial("tcp", "127.0.0.1:"+port)
		if err != nil {
			t.Fatal(err)
		}
		c.(*net.TCPConn).SetReadBuffer(4096)
		fmt.Fprintf(c, "GET /api/%s/tasks?limit=1000 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n", heavy, token)
		conns = append(conns, c)
	}
	stalled, most, freed := time.Now(), 0, time.Duration(0)
	for time.Since(stalled) < 30*time.Second {
		n := unsent(t, port)
		most = max(most, n)
		if n == 0 && time.Since(stalled) > time.Second {
			freed = time.Since(stalled)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, c := range conns {
		c.Close()
	}
	fmt.Printf("\nProbe 3: 100 clients ask for 1000 tasks (1.1 MB each) and never read: at most %.2f MiB unsent in the kernel (ss, orphans included), none left %s after the requests\n",
		float64(most)/(1<<20), testkit.Ms(freed))
	status, _ := send(client, "GET", base+"/api/"+heavy+"/tasks?limit=5", token, "", "")
	fmt.Printf("the account's next list: %d\n", status)

	// The log under floods of refusals.
	for _, flood := range []struct {
		name string
		send func() int
	}{
		{"401 (a bad token)", func() int {
			s, _ := send(client, "GET", base+"/api/"+heavy+"/tasks/1", "not-a-token", "", "")
			return s
		}},
		{"429 (writes past the rate)", func() int {
			s, _ := send(client, "PATCH", fmt.Sprintf("%s/api/%s/tasks/%d/complete", base, heavy, ids[0]), token, "", "")
			return s
		}},
	} {
		time.Sleep(11 * time.Second) // the last refusals' count is written
		before := logLines.Load()
		statuses := map[int]int{}
		var mu sync.Mutex
		var wg sync.WaitGroup
		stop := time.Now().Add(5 * time.Second)
		for range 8 {
			wg.Go(func() {
				for time.Now().Before(stop) {
					s := flood.send()
					mu.Lock()
					statuses[s]++
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		fmt.Printf("a 5 s flood of %s: %v, %d log lines\n", flood.name, statuses, logLines.Load()-before)
	}
}

type percentiles struct{ p50, p99 time.Duration }

// victimLoad sends the victims' requests at 150 a second, open loop (each on time,
// whether the ones before have been answered or not), for d, and gives each kind's
// latency.
func victimLoad(client *http.Client, base string, tokens map[string]string, victims []string, d time.Duration) map[string]percentiles {
	ops := []string{"list", "get", "create"}
	var mu sync.Mutex
	lat := map[string][]time.Duration{}
	var wg sync.WaitGroup
	tick := time.NewTicker(time.Second / 150)
	defer tick.Stop()
	for i, stop := 0, time.Now().Add(d); time.Now().Before(stop); i++ {
		<-tick.C
		op, user := ops[i%3], victims[i%len(victims)]
		wg.Go(func() {
			token := tokens[user]
			began := time.Now()
			switch op {
			case "list":
				send(client, "GET", base+"/api/"+user+"/tasks", token, "", "")
			case "get":
				send(client, "GET", base+"/api/"+user+"/tasks/1", token, "", "")
			case "create":
				send(client, "POST", base+"/api/"+user+"/tasks", token, "", `{"title":"victim"}`)
			}
			mu.Lock()
			lat[op] = append(lat[op], time.Since(began))
			mu.Unlock()
		})
	}
	wg.Wait()
	out := map[string]percentiles{}
	for op, l := range lat {
		slices.Sort(l)
		out[op] = percentiles{testkit.Percentile(l, 50), testkit.Percentile(l, 99)}
	}
	return out
}

// cursorOf is the X-Cursor of userID's list.
func cursorOf(t *testing.T, client *http.Client, base, userID, token string) string {
	req, _ := http.NewRequest("GET", base+"/api/"+userID+"/tasks", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	res, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	return res.Header.Get("X-Cursor")
}

// follow opens userID's stream from since ("" for now) and reads it until ctx ends or,
// from a cursor, until its ready; it returns how many changes it read.
func follow(ctx context.Context, base, userID, token, since string) int {
	u := base + "/api/" + userID + "/events?access_token=" + token
	if since != "" {
		u += "&since=" + url.QueryEscape(since)
	}
	req, _ := http.NewRequestWithContext(ctx, "GET", u, nil)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0
	}
	defer res.Body.Close()
	n := 0
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		switch line := sc.Text(); {
		case strings.HasPrefix(line, "event: task."):
			n++
		case line == "event: ready" && since != "":
			return n
		}
	}
	return n
}

// unsent is how many bytes the sockets of the server's port hold unacknowledged, from
// ss: connections still open and orphans alike.
func unsent(t *testing.T, port string) int {
	out, err := exec.Command("ss", "-tnH", "state", "all", "( sport = :"+port+" )").Output()
	if err != nil {
		t.Fatalf("ss: %v", err)
	}
	total := 0
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) >= 3 {
			n, _ := strconv.Atoi(f[2])
			total += n
		}
	}
	return total
}

// startCountingLines runs the service as startServer does, counting the lines it logs.
func startCountingLines(t *testing.T, databaseURL string, lines *atomic.Int64) (base, port string) {
	port = testkit.FreePort(t)
	srv := exec.Command(testkit.Binary(t))
	srv.Env = append(os.Environ(), "DATABASE_URL="+databaseURL, "BETTER_AUTH_SECRET="+testkit.Secret, "PORT="+port, "LOG_FORMAT=json")
	out, _ := srv.StdoutPipe()
	srv.Stderr = os.Stderr
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			lines.Add(1)
		}
	}()
	t.Cleanup(func() { srv.Process.Signal(os.Interrupt); srv.Wait() })
	base = "http://127.0.0.1:" + port
	testkit.WaitOK(t, base+"/readyz")
	return base, port
}
