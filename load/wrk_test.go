//go:build bench || cluster

// Load tools that make bench and make cluster share: the seeded users and wrk.

package load

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"taskflow/internal/testkit"
)

const (
	benchUsers        = 1000
	benchTasksPerUser = 50
)

type measurement struct {
	rps              float64
	p50, p99         time.Duration
	non2xx, sockErrs int
	bytesPerReq      float64 // response bytes, headers included (wrk only)
}

type benchUser struct {
	id     string
	taskID int64
}

// benchSeedSQL makes 1000 users with ids like Better Auth's (32 random alphanumerics) and
// 50 tasks each, a third without description and the rest with about 100 characters,
// inserted in random order so that no user's tasks are contiguous in the table.
const benchSeedSQL = `
CREATE TABLE bench_users AS
SELECT n, (SELECT string_agg(substr('ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789',
                                   1 + floor(random() * 62)::int, 1), '')
           FROM generate_series(1, 32) WHERE n > 0) AS id
FROM generate_series(1, 1000) AS n;

INSERT INTO tasks (user_id, title, description, completed, created_at, updated_at)
SELECT id, title, description, completed, ts, ts
FROM (SELECT u.id,
             'Task ' || t || ' for the benchmark' AS title,
             CASE WHEN random() < 1.0 / 3 THEN NULL ELSE left(repeat(md5(random()::text), 4), 100) END AS description,
             random() < 0.5 AS completed,
             now() - random() * interval '30 days' AS ts
      FROM bench_users u CROSS JOIN generate_series(1, 50) AS t) AS s
ORDER BY random();
`

func loadBenchUsers(t *testing.T, db *pgxpool.Pool) []benchUser {
	// One task of each user, chosen at random, is the one get and toggle ask for.
	rows, err := db.Query(context.Background(),
		`SELECT DISTINCT ON (user_id) user_id, id FROM tasks ORDER BY user_id, random()`)
	if err != nil {
		t.Fatal(err)
	}
	var users []benchUser
	for rows.Next() {
		var u benchUser
		if err := rows.Scan(&u.id, &u.taskID); err != nil {
			t.Fatal(err)
		}
		users = append(users, u)
	}
	if len(users) != benchUsers {
		t.Fatalf("%d users seeded, want %d", len(users), benchUsers)
	}
	return users
}

// writeBenchUsers writes the lines bench.lua reads: user id, token, task id, and the
// ETag of the user's whole list ("-" where etags has none).
func writeBenchUsers(t *testing.T, path string, users []benchUser, token func(benchUser) string, etags map[string]string) {
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := bufio.NewWriter(f)
	for _, u := range users {
		etag := etags[u.id]
		if etag == "" {
			etag = "-"
		}
		fmt.Fprintf(w, "%s %s %d %s\n", u.id, token(u), u.taskID, etag)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
}

var (
	wrkRPS     = regexp.MustCompile(`Requests/sec:\s+([\d.]+)`)
	wrkPct     = regexp.MustCompile(`(?m)^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$`)
	wrkNon2xx  = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
	wrkSockErr = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	wrkRead    = regexp.MustCompile(`(\d+) requests in [\d.]+\w+, ([\d.]+)([KMG]?B) read`)
)

// pinned is the command argv, run on cpu when one is given (taskset).
func pinned(cpu string, argv ...string) *exec.Cmd {
	if cpu != "" {
		argv = append([]string{"taskset", "-c", cpu}, argv...)
	}
	return exec.Command(argv[0], argv[1:]...)
}

func runWrk(t *testing.T, cpu, base, usersFile, op string, conc int, d time.Duration) measurement {
	t.Helper()
	cmd := pinned(cpu, "wrk", "-t", "1", "-c", fmt.Sprint(conc), "-d", fmt.Sprintf("%ds", int(d.Seconds())),
		"--latency", "-s", filepath.Join(testkit.Root(t), "scripts/bench.lua"), base, "--", usersFile, op)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("wrk %s c=%d: %v\n%s", op, conc, err, out)
	}
	var m measurement
	if r := wrkRPS.FindSubmatch(out); r != nil {
		m.rps, _ = strconv.ParseFloat(string(r[1]), 64)
	}
	for _, p := range wrkPct.FindAllSubmatch(out, -1) {
		v, _ := strconv.ParseFloat(string(p[2]), 64)
		unit := map[string]time.Duration{"us": time.Microsecond, "ms": time.Millisecond, "s": time.Second}[string(p[3])]
		dur := time.Duration(v * float64(unit))
		if string(p[1]) == "50" {
			m.p50 = dur
		} else {
			m.p99 = dur
		}
	}
	if r := wrkNon2xx.FindSubmatch(out); r != nil {
		m.non2xx, _ = strconv.Atoi(string(r[1]))
	}
	if r := wrkRead.FindSubmatch(out); r != nil {
		n, _ := strconv.ParseFloat(string(r[1]), 64)
		size, _ := strconv.ParseFloat(string(r[2]), 64)
		size *= map[string]float64{"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}[string(r[3])]
		m.bytesPerReq = size / n
	}
	if r := wrkSockErr.FindSubmatch(out); r != nil {
		for _, g := range r[1:] {
			n, _ := strconv.Atoi(string(g))
			m.sockErrs += n
		}
	}
	return m
}

func summarize(lats []time.Duration, over time.Duration) measurement {
	slices.Sort(lats)
	if len(lats) == 0 {
		return measurement{}
	}
	return measurement{
		rps: float64(len(lats)) / over.Seconds(),
		p50: testkit.Percentile(lats, 50),
		p99: testkit.Percentile(lats, 99),
	}
}

// median takes the median of each figure on its own, and sums the failures.
func median(runs []measurement) measurement {
	mid := func(f func(measurement) float64) float64 {
		v := make([]float64, len(runs))
		for i, m := range runs {
			v[i] = f(m)
		}
		slices.Sort(v)
		if len(v)%2 == 1 {
			return v[len(v)/2]
		}
		return (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	m := measurement{
		rps:         mid(func(m measurement) float64 { return m.rps }),
		bytesPerReq: mid(func(m measurement) float64 { return m.bytesPerReq }),
		p50:         time.Duration(mid(func(m measurement) float64 { return float64(m.p50) })),
		p99:         time.Duration(mid(func(m measurement) float64 { return float64(m.p99) })),
	}
	for _, r := range runs {
		m.non2xx += r.non2xx
		m.sockErrs += r.sockErrs
	}
	return m
}
