//go:build bench

// make bench (go test -tags bench -run TestBench): the service against the ceiling that
// PostgreSQL itself sets. It is a benchmark, not a test: it prints a table and asserts
// nothing about speed.

package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/jackc/pgx/v5"
)

const (
	benchUsers        = 1000
	benchTasksPerUser = 50
	// pgbench variables cannot hold strings, so the ceiling asks a sample of the users,
	// one script each, with the user id in a -D variable: the statement text and its
	// parameters are then exactly the service's. All the data sit in shared_buffers, so
	// which user is asked does not change the cost, but how many scripts there are does:
	// pgbench prepares every script's statement on every connection. With 128 scripts at
	// 64 connections that is 8192 prepared statements, most of them run only a few times
	// (planned afresh for each of their first five runs), and the ceiling for a get read
	// 3,700 req/s; with 16 scripts, 8,000-8,500. The service's connections each prepare
	// one statement per operation and run it thousands of times.
	ceilingUsers = 16
)

type measurement struct {
	rps              float64
	p50, p99         time.Duration
	non2xx, sockErrs int
}

type benchUser struct {
	id     string
	taskID int64
}

// TestBench measures, row by row (operation x connections), the ceiling and then every
// target: this tree's service, plus any binaries named in BENCH_COMPARE, so that an A/B
// (another commit's build, a variant, the Node peer's run.sh) comes from one run.
func TestBench(t *testing.T) {
	testStore(t)
	duration := envDuration(t, "BENCH_DURATION", 15*time.Second)
	warmup := envDuration(t, "BENCH_WARMUP", 3*time.Second)
	ops := envList("BENCH_OPS", "list,get,toggle,create")
	var concs []int
	for _, c := range envList("BENCH_CONC", "16,64") {
		n, err := strconv.Atoi(c)
		if err != nil {
			t.Fatal(err)
		}
		concs = append(concs, n)
	}
	auth := envOr("BENCH_AUTH", "HS256")
	repeats, err := strconv.Atoi(envOr("BENCH_REPEAT", "1"))
	if err != nil || repeats < 1 {
		t.Fatalf("BENCH_REPEAT=%q: want a count of at least 1", os.Getenv("BENCH_REPEAT"))
	}
	ctx := context.Background()
	dir := t.TempDir()

	// A fresh database, seeded by SQL.
	testURL, _ := url.Parse(os.Getenv("TEST_DATABASE_URL"))
	admin, err := pgx.Connect(ctx, testURL.String())
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{`DROP DATABASE IF EXISTS taskflow_bench`, `CREATE DATABASE taskflow_bench`} {
		if _, err := admin.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	admin.Close(ctx)
	benchURL := *testURL
	benchURL.Path = "/taskflow_bench"
	db, err := openTestStore(benchURL.String())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	seedStart := time.Now()
	if _, err := db.pool.Exec(ctx, benchSeedSQL); err != nil {
		t.Fatalf("seed: %v", err)
	}
	if _, err := db.pool.Exec(ctx, `VACUUM ANALYZE tasks`); err != nil {
		t.Fatal(err)
	}
	var maxSeedID int64
	db.pool.QueryRow(ctx, `SELECT max(id) FROM tasks`).Scan(&maxSeedID)
	users := loadBenchUsers(t, db)
	fmt.Printf("seeded %d users x %d tasks in %v\n", len(users), benchTasksPerUser, time.Since(seedStart).Round(time.Millisecond))

	reset := func() {
		if _, err := db.pool.Exec(ctx, `DELETE FROM tasks WHERE id > $1`, maxSeedID); err != nil {
			t.Fatal(err)
		}
		if _, err := db.pool.Exec(ctx, `VACUUM ANALYZE tasks`); err != nil {
			t.Fatal(err)
		}
	}

	// Server and PostgreSQL on one core, the load generator on the other, for every target.
	serverCPU, loadCPU := "0", "1"
	if runtime.NumCPU() < 2 {
		t.Log("fewer than 2 CPUs: no pinning")
		serverCPU, loadCPU = "", ""
	}
	pinPostgres(t, serverCPU)
	defer pinPostgres(t, fmt.Sprintf("0-%d", runtime.NumCPU()-1))
	pinned := func(cpu string, argv ...string) *exec.Cmd {
		if cpu != "" {
			argv = append([]string{"taskset", "-c", cpu}, argv...)
		}
		return exec.Command(argv[0], argv[1:]...)
	}

	bin := filepath.Join(dir, "taskflow-api")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	ceilingUsersSample := slices.Clone(users)
	rand.Shuffle(len(ceilingUsersSample), func(i, j int) {
		ceilingUsersSample[i], ceilingUsersSample[j] = ceilingUsersSample[j], ceilingUsersSample[i]
	})
	ceilingUsersSample = ceilingUsersSample[:ceilingUsers]

	// Tokens: HS256 with the shared secret, or EdDSA through a JWKS served here.
	edKey := newTestKey(t, "bench-key", "EdDSA")
	jwks := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, mustJSON(map[string]any{"keys": []any{edKey.jwk}}))
	}))
	defer jwks.Close()
	authEnv := []string{"BETTER_AUTH_SECRET=" + testSecret, "JWT_JWKS_URL="}
	token := func(u benchUser) string {
		c := validClaims(u.id)
		c.ExpiresAt = jwt.NewNumericDate(time.Now().Add(2 * time.Hour))
		if auth == "EdDSA" {
			return edKey.sign(t, edKey.method, c)
		}
		return signWith(t, jwt.SigningMethodHS256, []byte(testSecret), c)
	}
	if auth == "EdDSA" {
		authEnv = []string{"BETTER_AUTH_SECRET=", "JWT_JWKS_URL=" + jwks.URL}
	}
	usersFile := filepath.Join(dir, "users.txt")
	writeBenchUsers(t, usersFile, users, token)

	// Every target runs at once, each pinned to the server core and idle while another is
	// measured, so that each row measures the ceiling and every target back to back: on a
	// VM whose speed drifts by tens of per cent over minutes, ratios within a row are then
	// comparable. A target that fails to start fails the benchmark before any row runs.
	type target struct {
		name, base string
		server     *exec.Cmd
		rows       map[string]measurement
	}
	var targets []*target
	for _, spec := range append([]string{"service=" + bin}, envList("BENCH_COMPARE", "")...) {
		name, path, ok := strings.Cut(spec, "=")
		if !ok {
			if spec != "" {
				t.Fatalf("BENCH_COMPARE entry %q: want name=/path/to/binary", spec)
			}
			continue
		}
		port := freePort(t)
		tg := &target{name: name, base: "http://127.0.0.1:" + port, rows: map[string]measurement{}, server: pinned(serverCPU, path)}
		// LOG=1 turns on the Node peer's request log, as this service always logs.
		tg.server.Env = append(os.Environ(), "DATABASE_URL="+benchURL.String(), "LOG_FORMAT=text", "LOG=1", "PORT="+port)
		tg.server.Env = append(tg.server.Env, authEnv...)
		tg.server.Stdout = io.Discard // the access log
		tg.server.Stderr = os.Stderr
		if err := tg.server.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			tg.server.Process.Signal(os.Interrupt)
			tg.server.Wait()
		})
		waitOK(t, tg.base+"/healthz")
		targets = append(targets, tg)
	}

	// Each measurement as for pgbench: reset, warm up, measure. A reset between the last
	// two would start the measurement with freshly invalidated plans and a VACUUM behind it.
	// The targets take turns at going first after the ceiling, so that whatever pgbench
	// leaves behind (its backends exiting, a colder cache) does not fall on one of them.
	// With BENCH_REPEAT=n each row runs n times over and reports the median of each
	// figure (and the sum of the failures).
	ceiling := map[string]measurement{}
	turn := 0
	eachRow(ops, concs, func(op string, c int, k string) {
		runs := map[*target][]measurement{}
		var ceilingRuns []measurement
		for range repeats {
			reset()
			ceilingRuns = append(ceilingRuns, runPgbench(t, pinned, loadCPU, dir, &benchURL, op, c, ceilingUsersSample, warmup, duration))
			for i := range targets {
				tg := targets[(turn+i)%len(targets)]
				reset()
				runWrk(t, pinned, loadCPU, tg.base, usersFile, op, c, warmup) // discarded
				runs[tg] = append(runs[tg], runWrk(t, pinned, loadCPU, tg.base, usersFile, op, c, duration))
			}
			turn++
		}
		ceiling[k] = median(ceilingRuns)
		for _, tg := range targets {
			tg.rows[k] = median(runs[tg])
		}
	})
	reset()

	fmt.Printf("\n%s tokens; %d users x %d tasks; median of %d runs, %s measured after %s warm-up; servers+PostgreSQL on CPU %s, load on CPU %s\n",
		auth, benchUsers, benchTasksPerUser, repeats, duration, warmup, serverCPU, loadCPU)
	for _, tg := range targets {
		fmt.Printf("\n%s (peak RSS %.1f MiB)\n\n", tg.name, float64(peakRSS(t, tg.server.Process.Pid))/(1<<20))
		fmt.Println("| operation | conc | ceiling req/s | req/s | / ceiling | ceiling p50 / p99 | p50 / p99 | p99 / ceiling's | non-2xx | socket errors |")
		fmt.Println("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
		eachRow(ops, concs, func(op string, c int, k string) {
			cm, sm := ceiling[k], tg.rows[k]
			fmt.Printf("| %s | %d | %.0f | %.0f | %.2f | %s / %s | %s / %s | %.2f | %d | %d |\n",
				op, c, cm.rps, sm.rps, sm.rps/cm.rps, ms(cm.p50), ms(cm.p99), ms(sm.p50), ms(sm.p99),
				float64(sm.p99)/float64(cm.p99), sm.non2xx, sm.sockErrs)
		})
	}
	if len(targets) < 2 {
		return
	}
	fmt.Printf("\nA/B: each target's req/s and p99 against %s's, row by row\n\n", targets[0].name)
	header, rule := "| operation | conc |", "|---|---:|"
	for _, tg := range targets[1:] {
		header += fmt.Sprintf(" %s / %s req/s | p99 |", tg.name, targets[0].name)
		rule += "---:|---:|"
	}
	fmt.Println(header)
	fmt.Println(rule)
	eachRow(ops, concs, func(op string, c int, k string) {
		base := targets[0].rows[k]
		line := fmt.Sprintf("| %s | %d |", op, c)
		for _, tg := range targets[1:] {
			m := tg.rows[k]
			line += fmt.Sprintf(" %.2f | %.2f |", m.rps/base.rps, float64(m.p99)/float64(base.p99))
		}
		fmt.Println(line)
	})
}

// eachRow calls f for every row of the tables, in their order; k keys the row's results.
func eachRow(ops []string, concs []int, f func(op string, c int, k string)) {
	for _, op := range ops {
		for _, c := range concs {
			f(op, c, fmt.Sprint(op, c))
		}
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
		rps: mid(func(m measurement) float64 { return m.rps }),
		p50: time.Duration(mid(func(m measurement) float64 { return float64(m.p50) })),
		p99: time.Duration(mid(func(m measurement) float64 { return float64(m.p99) })),
	}
	for _, r := range runs {
		m.non2xx += r.non2xx
		m.sockErrs += r.sockErrs
	}
	return m
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

func loadBenchUsers(t *testing.T, db *Store) []benchUser {
	// One task of each user, chosen at random, is the one get and toggle ask for.
	rows, err := db.pool.Query(context.Background(),
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

func writeBenchUsers(t *testing.T, path string, users []benchUser, token func(benchUser) string) {
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := bufio.NewWriter(f)
	for _, u := range users {
		fmt.Fprintf(w, "%s %s %d\n", u.id, token(u), u.taskID)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
}

// ceilingSQL is the statement the service runs for op, with its $n parameters named as
// pgbench variables (which pgbench -M prepared binds as parameters again).
func ceilingSQL(op string, k int) string {
	u, tid := fmt.Sprintf(":u%d", k), fmt.Sprintf(":t%d", k)
	var sql string
	var args []string
	switch op {
	case "list":
		// The service binds LIMIT to NULL; a pgbench variable cannot be NULL, and a limit
		// of 1000 returns the same 50 rows through the same plan.
		sql, args = listSQL[ListQuery{Status: "all", Sort: "created", Desc: true}], []string{u, ":lim", ":off"}
	case "get":
		sql, args = sqlGetTask, []string{tid, u}
	case "toggle":
		sql, args = sqlToggleTask, []string{tid, u}
	case "create":
		sql, args = sqlCreateTask, []string{u, ":title", ":desc"}
	}
	for i := len(args); i >= 1; i-- {
		sql = strings.ReplaceAll(sql, fmt.Sprintf("$%d", i), args[i-1])
	}
	return strings.Join(strings.Fields(sql), " ") + ";\n" // pgbench wants one line
}

func runPgbench(t *testing.T, pinned func(string, ...string) *exec.Cmd, cpu, dir string, dbURL *url.URL, op string, conc int, users []benchUser, warmup, duration time.Duration) measurement {
	t.Helper()
	runDir := filepath.Join(dir, fmt.Sprintf("pgbench-%s-%d", op, conc))
	os.MkdirAll(runDir, 0o755)
	password, _ := dbURL.User.Password()
	argv := []string{"pgbench", "-n", "-M", "prepared", "-c", fmt.Sprint(conc), "-j", "1",
		"-T", fmt.Sprint(int((warmup + duration).Seconds())), "-l", "--log-prefix", filepath.Join(runDir, "log"),
		"-h", dbURL.Hostname(), "-p", dbURL.Port(), "-U", dbURL.User.Username(),
		"-D", "lim=1000", "-D", "off=0", "-D", "title=bench create", "-D", "desc=created by make bench"}
	for k, u := range users {
		script := filepath.Join(runDir, fmt.Sprintf("u%d.sql", k))
		if err := os.WriteFile(script, []byte(ceilingSQL(op, k)), 0o644); err != nil {
			t.Fatal(err)
		}
		argv = append(argv, "-D", fmt.Sprintf("u%d=%s", k, u.id), "-D", fmt.Sprintf("t%d=%d", k, u.taskID), "-f", script)
	}
	argv = append(argv, strings.TrimPrefix(dbURL.Path, "/"))
	cmd := pinned(cpu, argv...)
	cmd.Env = append(os.Environ(), "PGPASSWORD="+password)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("pgbench %s c=%d: %v\n%s", op, conc, err, out)
	}
	if m := regexp.MustCompile(`number of failed transactions: (\d+)`).FindSubmatch(out); m != nil && string(m[1]) != "0" {
		t.Fatalf("pgbench %s c=%d: failed transactions\n%s", op, conc, out)
	}

	// Per-transaction log lines: client tx latency_us script epoch_s epoch_us. The first
	// warm-up seconds are dropped: they include preparing each statement per connection.
	logs, _ := filepath.Glob(filepath.Join(runDir, "log*"))
	type tx struct {
		end     float64
		latency time.Duration
	}
	var txs []tx
	first := 0.0
	for _, path := range logs {
		f, _ := os.Open(path)
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fl := strings.Fields(sc.Text())
			if len(fl) < 6 {
				continue
			}
			lat, _ := strconv.ParseFloat(fl[2], 64)
			sec, _ := strconv.ParseFloat(fl[4], 64)
			usec, _ := strconv.ParseFloat(fl[5], 64)
			end := sec + usec/1e6
			if first == 0 || end < first {
				first = end
			}
			txs = append(txs, tx{end, time.Duration(lat * float64(time.Microsecond))})
		}
		f.Close()
	}
	// pgbench's -T clock starts before its connections are made, so its last transaction
	// can end before the window does; the rate is over the span actually covered.
	from, to := first+warmup.Seconds(), first+warmup.Seconds()+duration.Seconds()
	var lats []time.Duration
	last := from
	for _, x := range txs {
		if x.end >= from && x.end < to {
			lats = append(lats, x.latency)
			last = max(last, x.end)
		}
	}
	return summarize(lats, time.Duration((last-from)*float64(time.Second)))
}

func summarize(lats []time.Duration, over time.Duration) measurement {
	slices.Sort(lats)
	if len(lats) == 0 {
		return measurement{}
	}
	return measurement{
		rps: float64(len(lats)) / over.Seconds(),
		p50: lats[len(lats)/2],
		p99: lats[len(lats)*99/100],
	}
}

var (
	wrkRPS     = regexp.MustCompile(`Requests/sec:\s+([\d.]+)`)
	wrkPct     = regexp.MustCompile(`(?m)^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$`)
	wrkNon2xx  = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
	wrkSockErr = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
)

func runWrk(t *testing.T, pinned func(string, ...string) *exec.Cmd, cpu, base, usersFile, op string, conc int, d time.Duration) measurement {
	t.Helper()
	cmd := pinned(cpu, "wrk", "-t", "1", "-c", fmt.Sprint(conc), "-d", fmt.Sprintf("%ds", int(d.Seconds())),
		"--latency", "-s", "scripts/bench.lua", base, "--", usersFile, op)
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
	if r := wrkSockErr.FindSubmatch(out); r != nil {
		for _, g := range r[1:] {
			n, _ := strconv.Atoi(string(g))
			m.sockErrs += n
		}
	}
	return m
}

// pinPostgres sets the CPU affinity of the test cluster's processes; backends forked
// later inherit the postmaster's.
func pinPostgres(t *testing.T, cpus string) {
	if cpus == "" {
		return
	}
	pidFile, err := os.ReadFile(filepath.Join(os.Getenv("TASKFLOW_PGDATA"), "postmaster.pid"))
	if err != nil {
		t.Fatalf("make bench pins the cluster of scripts/devdb.sh: %v", err)
	}
	postmaster := strings.SplitN(string(pidFile), "\n", 2)[0]
	pids := []string{postmaster}
	if out, err := exec.Command("pgrep", "-P", postmaster).Output(); err == nil {
		pids = append(pids, strings.Fields(string(out))...)
	}
	for _, pid := range pids {
		exec.Command("taskset", "-a", "-p", "-c", cpus, pid).Run()
	}
}
