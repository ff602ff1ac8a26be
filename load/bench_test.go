//go:build bench

// make bench (go test -tags bench -run TestBench): the service against the ceiling that
// PostgreSQL itself sets. It is a benchmark, not a test: it prints a table and asserts
// nothing about speed.

package load

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
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

	"taskflow/internal/testkit"
)

const (
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

// TestBench measures, row by row (operation x connections), the ceiling and then every
// target: this tree's service, plus any binaries named in BENCH_COMPARE, so that an A/B
// (another commit's build, a variant, the Node peer's run.sh) comes from one run.
func TestBench(t *testing.T) {
	testkit.DatabaseURL(t)
	duration := testkit.EnvDuration(t, "BENCH_DURATION", 15*time.Second)
	warmup := testkit.EnvDuration(t, "BENCH_WARMUP", 3*time.Second)
	ops := testkit.EnvList("BENCH_OPS", "list,list-304,get,toggle,update,create,create-key")
	var concs []int
	for _, c := range testkit.EnvList("BENCH_CONC", "16,64") {
		n, err := strconv.Atoi(c)
		if err != nil {
			t.Fatal(err)
		}
		concs = append(concs, n)
	}
	repeats, err := strconv.Atoi(testkit.EnvOr("BENCH_REPEAT", "1"))
	if err != nil || repeats < 1 {
		t.Fatalf("BENCH_REPEAT=%q: want a count of at least 1", os.Getenv("BENCH_REPEAT"))
	}
	ctx := context.Background()
	dir := t.TempDir()

	// A fresh database, seeded by SQL.
	benchURL, _ := url.Parse(testkit.FreshDatabase(t, "taskflow_bench"))
	db := openPool(t, benchURL.String())
	seedStart := time.Now()
	if _, err := db.Exec(ctx, benchSeedSQL); err != nil {
		t.Fatalf("seed: %v", err)
	}
	if _, err := db.Exec(ctx, `VACUUM ANALYZE tasks`); err != nil {
		t.Fatal(err)
	}
	var maxSeedID int64
	db.QueryRow(ctx, `SELECT max(id) FROM tasks`).Scan(&maxSeedID)
	users := loadBenchUsers(t, db)
	fmt.Printf("seeded %d users x %d tasks in %v\n", len(users), benchTasksPerUser, time.Since(seedStart).Round(time.Millisecond))

	reset := func() {
		if _, err := db.Exec(ctx, `DELETE FROM tasks WHERE id > $1`, maxSeedID); err != nil {
			t.Fatal(err)
		}
		if _, err := db.Exec(ctx, `VACUUM ANALYZE tasks`); err != nil {
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

	bin := testkit.Binary(t)
	stmts := statements(t)

	ceilingUsersSample := slices.Clone(users)
	rand.Shuffle(len(ceilingUsersSample), func(i, j int) {
		ceilingUsersSample[i], ceilingUsersSample[j] = ceilingUsersSample[j], ceilingUsersSample[i]
	})
	ceilingUsersSample = ceilingUsersSample[:ceilingUsers]

	// HS256 tokens: with the token cache, a Better Auth EdDSA token costs a request the
	// same, once verified (docs/performance.md, "The token cache").
	token := func(u benchUser) string { return testkit.ShortToken(t, u.id, 2*time.Hour) }
	usersFile := filepath.Join(dir, "users.txt")
	writeBenchUsers(t, usersFile, users, token, nil)
	// listETags are the ETags of every user's whole list as it is now, as the service
	// answers them, for list-304's If-None-Match: toggles change them between rows.
	listETags := func(base string) map[string]string {
		etags := map[string]string{}
		for _, u := range users {
			req, _ := http.NewRequest("GET", base+"/api/"+u.id+"/tasks", nil)
			req.Header.Set("Authorization", "Bearer "+token(u))
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			etags[u.id] = res.Header.Get("ETag")
		}
		return etags
	}

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
	specs := []string{"service=" + bin}
	if os.Getenv("BENCH_FEED_AB") == "1" {
		specs = append(specs, "service, capture off="+captureOffBinary(t), "service again="+bin)
	}
	for _, spec := range append(specs, testkit.EnvList("BENCH_COMPARE", "")...) {
		name, path, ok := strings.Cut(spec, "=")
		if !ok {
			if spec != "" {
				t.Fatalf("BENCH_COMPARE entry %q: want name=/path/to/binary", spec)
			}
			continue
		}
		port := testkit.FreePort(t)
		tg := &target{name: name, base: "http://127.0.0.1:" + port, rows: map[string]measurement{}, server: pinned(serverCPU, path)}
		// LOG=1 turns on the Node peer's request log, as this service always logs. The
		// write limit is far above the load's rate per user: it measures speed, not limits.
		tg.server.Env = append(os.Environ(), "DATABASE_URL="+benchURL.String(), "LOG_FORMAT=text", "LOG=1", "PORT="+port,
			"MAX_WRITES_PER_USER=1000000")
		tg.server.Env = append(tg.server.Env, "BETTER_AUTH_SECRET="+testkit.Secret)
		tg.server.Stdout = io.Discard // the access log
		tg.server.Stderr = os.Stderr
		if err := tg.server.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			tg.server.Process.Signal(os.Interrupt)
			tg.server.Wait()
		})
		testkit.WaitOK(t, tg.base+"/healthz")
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
			ceilingRuns = append(ceilingRuns, runPgbench(t, loadCPU, dir, benchURL, stmts, op, c, ceilingUsersSample, warmup, duration))
			for i := range targets {
				tg := targets[(turn+i)%len(targets)]
				reset()
				if op == "list-304" {
					writeBenchUsers(t, usersFile, users, token, listETags(tg.base))
				}
				runWrk(t, loadCPU, tg.base, usersFile, op, c, warmup) // discarded
				runs[tg] = append(runs[tg], runWrk(t, loadCPU, tg.base, usersFile, op, c, duration))
			}
			turn++
		}
		ceiling[k] = median(ceilingRuns)
		line := fmt.Sprintf("%s/%d: ceiling %.0f req/s", op, c, ceiling[k].rps)
		for _, tg := range targets {
			tg.rows[k] = median(runs[tg])
			line += fmt.Sprintf("; %s %.0f req/s p99 %s", tg.name, tg.rows[k].rps, testkit.Ms(tg.rows[k].p99))
		}
		fmt.Println(line) // as it comes, so that a run cut short still says something
	})
	reset()

	fmt.Printf("\nHS256 tokens; %d users x %d tasks; median of %d runs, %s measured after %s warm-up; servers+PostgreSQL on CPU %s, load on CPU %s\n",
		benchUsers, benchTasksPerUser, repeats, duration, warmup, serverCPU, loadCPU)
	for _, tg := range targets {
		fmt.Printf("\n%s (peak RSS %.1f MiB)\n\n", tg.name, float64(testkit.PeakRSS(t, tg.server.Process.Pid))/(1<<20))
		fmt.Println("| operation | conc | ceiling req/s | req/s | / ceiling | ceiling p50 / p99 | p50 / p99 | p99 / ceiling's | bytes/req | non-2xx | socket errors |")
		fmt.Println("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
		eachRow(ops, concs, func(op string, c int, k string) {
			cm, sm := ceiling[k], tg.rows[k]
			fmt.Printf("| %s | %d | %.0f | %.0f | %.2f | %s / %s | %s / %s | %.2f | %.0f | %d | %d |\n",
				op, c, cm.rps, sm.rps, sm.rps/cm.rps, testkit.Ms(cm.p50), testkit.Ms(cm.p99), testkit.Ms(sm.p50), testkit.Ms(sm.p99),
				float64(sm.p99)/float64(cm.p99), sm.bytesPerReq, sm.non2xx, sm.sockErrs)
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

// captureOffBinary builds this tree with its change capture taken out, for BENCH_FEED_AB:
// the UPDATE statements no longer stamp changed_xid and no wake-up notification is sent.
// (An insert's column default still stamps it: the database is shared with the service.)
// It is built from a copy of the tree, so no code of the service's knows of it.
func captureOffBinary(t *testing.T) string {
	dir := t.TempDir()
	root := testkit.Root(t)
	files, _ := filepath.Glob(filepath.Join(root, "*.go"))
	for i, f := range files {
		files[i] = filepath.Base(f)
	}
	files = append(files, "go.mod", "go.sum", "schema.sql", "openapi.json")
	edits := map[string][2]string{
		"store.go":   {", changed_xid = pg_current_xact_id()`", "`"},
		"wakeups.go": {"func (w *Wakeups) Notify(ctx context.Context) {", "func (w *Wakeups) Notify(ctx context.Context) {\n\t<-ctx.Done()\n\treturn"},
	}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(root, f))
		if err != nil {
			t.Fatal(err)
		}
		if e, ok := edits[f]; ok {
			if !strings.Contains(string(b), e[0]) {
				t.Fatalf("captureOffBinary: %s no longer holds %q", f, e[0])
			}
			b = []byte(strings.Replace(string(b), e[0], e[1], 1))
		}
		os.WriteFile(filepath.Join(dir, f), b, 0o644)
	}
	bin := filepath.Join(dir, "taskflow-capture-off")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build without capture: %v\n%s", err, out)
	}
	return bin
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

// ceilingSQL is the pgbench script for op: the statement the service runs (taskflow-api
// statements prints them), with its $n
// parameters named as pgbench variables (which pgbench -M prepared binds as parameters
// again). A pgbench variable cannot be NULL, so the parameters the service binds to NULL
// (no If-Match, no Idempotency-Key) are the literal NULL here.
func ceilingSQL(stmts map[string]string, op string, k int) string {
	u, tid := fmt.Sprintf(":u%d", k), fmt.Sprintf(":t%d", k)
	var sql, script string
	var args []string
	switch op {
	case "list", "list-304":
		// The service binds LIMIT to NULL too; a limit of 1000 returns the same 50 rows
		// through the same plan.
		sql, args = stmts["list"], []string{u, ":lim", ":off"}
	case "get":
		sql, args = stmts["get"], []string{u, tid}
	case "toggle":
		sql, args = stmts["toggle"], []string{u, "NULL", "NULL", tid, "NULL", "NULL"}
	case "update":
		sql, args = stmts["update"], []string{u, tid, ":title", "false", "NULL", "NULL", "NULL", "NULL"}
	case "create":
		sql, args = stmts["create"], []string{u, "NULL", "NULL", ":title", ":desc", ":max"}
	case "create-key":
		script = "\\set key random(1, 1000000000000000)\n"
		sql, args = stmts["create"], []string{u, ":key", ":req", ":title", ":desc", ":max"}
	}
	for i := len(args); i >= 1; i-- {
		sql = strings.ReplaceAll(sql, fmt.Sprintf("$%d", i), args[i-1])
	}
	return script + strings.Join(strings.Fields(sql), " ") + ";\n" // pgbench wants one line
}

func runPgbench(t *testing.T, cpu, dir string, dbURL *url.URL, stmts map[string]string, op string, conc int, users []benchUser, warmup, duration time.Duration) measurement {
	t.Helper()
	runDir := filepath.Join(dir, fmt.Sprintf("pgbench-%s-%d", op, conc))
	os.MkdirAll(runDir, 0o755)
	password, _ := dbURL.User.Password()
	argv := []string{"pgbench", "-n", "-M", "prepared", "-c", fmt.Sprint(conc), "-j", "1",
		"-T", fmt.Sprint(int((warmup + duration).Seconds())), "-l", "--log-prefix", filepath.Join(runDir, "log"),
		"-h", dbURL.Hostname(), "-p", dbURL.Port(), "-U", dbURL.User.Username(),
		"-D", "lim=1000", "-D", "off=0", "-D", "title=bench create", "-D", "desc=created by make bench",
		"-D", "max=1000000", "-D", `req=\x8a1f6b0f7c5e3d2a1b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a`}
	for k, u := range users {
		script := filepath.Join(runDir, fmt.Sprintf("u%d.sql", k))
		if err := os.WriteFile(script, []byte(ceilingSQL(stmts, op, k)), 0o644); err != nil {
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
