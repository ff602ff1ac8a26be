//go:build soak

// The soak runs only through make soak (go test -tags soak): it restarts the shared
// PostgreSQL and takes half a minute, which has no place in make test.

package load

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"taskflow/internal/testkit"
)

type soakResult struct {
	start, end time.Time
	status     int // 0: transport error
}

// TestSoak sends a bounded mixed load from several users to a server on loopback, stops
// PostgreSQL with -m immediate a third of the way in, starts it again after a few
// seconds, and then checks that the server healed by itself and lost no acknowledged task.
func TestSoak(t *testing.T) {
	dbURL := testkit.DatabaseURL(t)
	if os.Getenv("TASKFLOW_PGDATA") == "" {
		t.Fatal("run through make soak, which starts the database this test restarts")
	}
	duration := testkit.EnvDuration(t, "SOAK_DURATION", 30*time.Second)
	downFor := testkit.EnvDuration(t, "SOAK_OUTAGE", 3*time.Second)
	const users, workersPerUser = 8, 4

	base, _ := startServer(t, dbURL, "DB_TIMEOUT=2s", "MAX_WRITES_PER_USER=100000")
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}

	type soakUser struct {
		id, token string
		mu        sync.Mutex
		acked     map[int64]string // id -> title of every create answered 201
	}
	us := make([]*soakUser, users)
	for i := range us {
		id := testkit.NewUserID()
		us[i] = &soakUser{id: id, token: testkit.Token(t, id), acked: map[int64]string{}}
	}

	var transportErrs sync.Map
	call := func(u *soakUser, method, path, body string) (int, string) {
		req, _ := http.NewRequest(method, base+"/api/"+u.id+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+u.token)
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		res, err := client.Do(req)
		if err != nil {
			transportErrs.Store(err.Error(), true)
			return 0, ""
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}

	var (
		resultsMu sync.Mutex
		results   []soakResult
		seq       atomic.Int64
	)
	ctx, cancel := context.WithTimeout(context.Background(), duration)
	defer cancel()
	var wg sync.WaitGroup
	for _, u := range us {
		for w := 0; w < workersPerUser; w++ {
			wg.Add(1)
			go func(u *soakUser) {
				defer wg.Done()
				for ctx.Err() == nil {
					u.mu.Lock()
					var some int64
					for id := range u.acked {
						some = id
						break
					}
					u.mu.Unlock()
					start := time.Now()
					var status int
					switch p := rand.IntN(100); {
					case p < 25 || some == 0:
						title := fmt.Sprintf("soak %d", seq.Add(1))
						var body string
						status, body = call(u, "POST", "/tasks", `{"title":"`+title+`"}`)
						if status == http.StatusCreated {
							var id int64
							fmt.Sscanf(body, `{"id":%d`, &id)
							u.mu.Lock()
							u.acked[id] = title
							u.mu.Unlock()
						}
					case p < 60:
						status, _ = call(u, "GET", "/tasks?limit=50", "")
					case p < 80:
						status, _ = call(u, "GET", fmt.Sprintf("/tasks/%d", some), "")
					case p < 95:
						status, _ = call(u, "PATCH", fmt.Sprintf("/tasks/%d/complete", some), "")
					default:
						status, _ = call(u, "PUT", fmt.Sprintf("/tasks/%d", some), `{"description":"touched"}`)
					}
					resultsMu.Lock()
					results = append(results, soakResult{start, time.Now(), status})
					resultsMu.Unlock()
				}
			}(u)
		}
	}

	loadStart := time.Now()
	time.Sleep(duration / 3)
	outageStart := time.Now()
	testkit.PgCtl(t, "stop", "-m", "immediate", "-w")
	time.Sleep(downFor)
	testkit.PgCtl(t, "start")
	outageEnd := time.Now()
	wg.Wait()

	// The breaker spaces its connection attempts by up to half a second (internal/pg's
	// maxBackoff), so requests may be refused that long after PostgreSQL is back; a 503
	// later than that is a defect.
	healBy := outageEnd.Add(600 * time.Millisecond)
	var served, ok, errDuring, errHealing, errOutside, transport int
	var lastRefused, firstOK time.Time
	for _, r := range results {
		served++
		during := r.start.Before(outageEnd) && r.end.After(outageStart)
		switch {
		case r.status == 0:
			transport++
		case r.status < 300:
			ok++
			if r.start.After(outageEnd) && (firstOK.IsZero() || r.end.Before(firstOK)) {
				firstOK = r.end
			}
		case r.status == http.StatusServiceUnavailable && during:
			errDuring++
		case r.status == http.StatusServiceUnavailable && r.start.Before(healBy):
			errHealing++
			if r.end.After(lastRefused) {
				lastRefused = r.end
			}
		default:
			errOutside++
		}
	}
	acked, lost := 0, 0
	for _, u := range us {
		status, body := call(u, "GET", "/tasks", "")
		if status != http.StatusOK {
			t.Fatalf("final list: %d %s", status, body)
		}
		var stored []testkit.Task
		if err := json.Unmarshal([]byte(body), &stored); err != nil {
			t.Fatal(err)
		}
		titles := make(map[int64]string, len(stored))
		for _, task := range stored {
			titles[task.ID] = task.Title
		}
		for id, title := range u.acked {
			acked++
			if titles[id] != title {
				lost++
			}
		}
	}
	transportErrs.Range(func(k, _ any) bool { t.Logf("transport error: %v", k); return true })
	fmt.Printf(`
soak: %s of load from %d users x %d workers; PostgreSQL stopped (-m immediate) at +%s for %s
  requests served          %d (%.0f/s), 2xx %d
  503 during the outage    %d (requests overlapping %s .. %s)
  503 after it, healing    %d (last answered %s after the restart; first 2xx %s after it)
  errors outside these     %d (4xx/5xx), transport errors %d
  acknowledged creates     %d, lost %d

`, duration, users, workersPerUser, outageStart.Sub(loadStart).Round(time.Millisecond), outageEnd.Sub(outageStart).Round(time.Millisecond),
		served, float64(served)/duration.Seconds(), ok,
		errDuring, outageStart.Format("15:04:05.000"), outageEnd.Format("15:04:05.000"),
		errHealing, sinceOrNone(lastRefused, outageEnd), sinceOrNone(firstOK, outageEnd),
		errOutside, transport, acked, lost)
	if errOutside > 0 || transport > 0 || lost > 0 {
		t.Errorf("%d errors outside the outage, %d transport errors, %d acknowledged tasks lost; want none", errOutside, transport, lost)
	}
	if errDuring == 0 {
		t.Error("no request failed during the outage: the restart did not happen as planned")
	}
}

func sinceOrNone(t, from time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Sub(from).Round(time.Millisecond).String()
}
