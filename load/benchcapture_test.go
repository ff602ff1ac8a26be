//go:build bench

// make bench-capture (go test -tags bench -run TestBenchCapture): what recording a change
// costs the statement that makes it, with the toggle under pgbench: no capture at all,
// the service's stamp (changed_xid), and the NOTIFY trigger the service had before its
// feed of changes. Then the same with every commit waiting 2 ms for a synchronous standby,
// as a commit on Neon waits for its safekeepers, at 1, 16 and 64 connections. And what a
// tombstone takes on disk. It prints tables and asserts nothing about speed.

package load

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"taskflow/internal/testkit"
)

const (
	captureUsers, captureTasksPerUser = 1000, 50
	// oldNotifyTrigger is the trigger the service had before the feed (schema.sql at
	// 4049bf7): every change notified from the statement that made it.
	oldNotifyTrigger = `CREATE OR REPLACE FUNCTION bench_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('taskflow_tasks', json_build_object(
        'user', encode(sha256(convert_to(NEW.user_id, 'UTF8')), 'hex'), 'op', 'updated',
        'task', json_build_object('id', NEW.id, 'title', NEW.title, 'description', NEW.description,
            'completed', NEW.completed, 'created_at', NEW.created_at, 'updated_at', NEW.updated_at,
            'version', NEW.version))::text);
    RETURN NEW;
END $$;
CREATE TRIGGER bench_notify AFTER UPDATE ON tasks FOR EACH ROW EXECUTE FUNCTION bench_notify()`
)

// The candidates the feed did not keep, as triggers: an outbox row for every change, read
// in order by (user, transaction); and the stamp set by the database for every writer.
const (
	changeRowTrigger = `CREATE TABLE IF NOT EXISTS bench_changes (user_id text, id bigint, version bigint, xid xid8 DEFAULT pg_current_xact_id());
CREATE INDEX IF NOT EXISTS bench_changes_idx ON bench_changes (user_id, xid);
CREATE OR REPLACE FUNCTION bench_change_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO bench_changes (user_id, id, version) VALUES (NEW.user_id, NEW.id, NEW.version); RETURN NULL; END $$;
CREATE TRIGGER bench_change_row AFTER UPDATE ON tasks FOR EACH ROW EXECUTE FUNCTION bench_change_row()`
	stampTrigger = `CREATE OR REPLACE FUNCTION bench_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.changed_xid := pg_current_xact_id(); RETURN NEW; END $$;
CREATE TRIGGER bench_stamp BEFORE UPDATE ON tasks FOR EACH ROW EXECUTE FUNCTION bench_stamp()`
)

type captureVariant struct {
	name  string
	sql   string // the toggle
	setup string // run before its rounds, undone by teardown
	down  string
}

func TestBenchCapture(t *testing.T) {
	testkit.DatabaseURL(t)
	duration := testkit.EnvDuration(t, "BENCH_DURATION", 10*time.Second)
	rounds := 3
	ctx := context.Background()
	dbURL := testkit.FreshDatabase(t, "taskflow_capture")
	db := openPool(t, dbURL)
	// Users u0..u999 with 50 consecutive task ids each, so that a pgbench script can pick
	// any task and name its owner: user_id = 'u' || (id - 1) / 50.
	if _, err := db.Exec(ctx, fmt.Sprintf(`INSERT INTO tasks (user_id, title, description)
SELECT 'u' || ((g - 1) / %d), 'task ' || g, CASE WHEN g %% 3 = 0 THEN NULL ELSE left(repeat(md5(g::text), 4), 100) END
FROM generate_series(1, %d) AS g`, captureTasksPerUser, captureUsers*captureTasksPerUser)); err != nil {
		t.Fatal(err)
	}
	db.Exec(ctx, `VACUUM ANALYZE tasks`)
	stamped := statements(t)["toggle"]
	unstamped := strings.Replace(stamped, ", changed_xid = pg_current_xact_id()", "", 1)
	if unstamped == stamped {
		t.Fatal("the toggle no longer stamps changed_xid as this bench expects")
	}
	variants := []captureVariant{
		{name: "no capture", sql: unstamped},
		{name: "the stamp (this service)", sql: stamped},
		{name: "NOTIFY trigger (before the feed)", sql: unstamped, setup: oldNotifyTrigger, down: `DROP TRIGGER bench_notify ON tasks`},
		// The candidates not kept (docs/performance.md, "The feed of changes").
		{name: "the stamp, and an index to read it by", sql: stamped,
			setup: `CREATE INDEX bench_changed ON tasks (user_id, changed_xid)`, down: `DROP INDEX bench_changed`},
		{name: "a change row, by a trigger", sql: unstamped, setup: changeRowTrigger, down: `DROP TRIGGER bench_change_row ON tasks`},
		{name: "the stamp, by a trigger", sql: unstamped, setup: stampTrigger, down: `DROP TRIGGER bench_stamp ON tasks`},
	}
	dir := t.TempDir()
	run := func(v captureVariant, conc int) float64 {
		if v.setup != "" {
			mustExec(t, db, v.setup)
			defer mustExec(t, db, v.down)
		}
		return pgbenchTPS(t, dir, dbURL, toggleScript(v.sql), conc, duration)
	}
	table := func(title string, variants []captureVariant, concs []int) {
		results := map[string][]float64{}
		for r := range rounds {
			for _, c := range concs {
				for i := range variants {
					v := variants[(r+i)%len(variants)] // each goes first in turn
					results[fmt.Sprint(v.name, c)] = append(results[fmt.Sprint(v.name, c)], run(v, c))
				}
			}
		}
		fmt.Printf("\n%s: pgbench -M prepared -T %s, %d rounds, tps (median; ratio to the first row's median)\n\n", title, duration, rounds)
		fmt.Println("| variant | connections | rounds | median | / " + variants[0].name + " |")
		fmt.Println("|---|---:|---|---:|---:|")
		for _, c := range concs {
			base := medianOf(results[fmt.Sprint(variants[0].name, c)])
			for _, v := range variants {
				tps := results[fmt.Sprint(v.name, c)]
				fmt.Printf("| %s | %d | %s | %.0f | %.2f |\n", v.name, c, roundList(tps), medianOf(tps), medianOf(tps)/base)
			}
		}
	}
	table("The toggle statement", variants, []int{16, 64})

	if os.Getenv("BENCH_SLOW_COMMIT") == "1" {
		stop := slowCommits(t, dbURL, 2*time.Millisecond)
		fmt.Printf("\nwith a synchronous standby applying each commit 2 ms after it: one commit at a time takes %.2f ms\n",
			1000/pgbenchTPS(t, dir, dbURL, toggleScript(unstamped), 1, duration))
		table("The toggle statement, every commit 2 ms", variants[1:3], []int{1, 16, 64})
		stop()
	}

	// What a tombstone costs: 100,000 deletes, and the table with its indexes after them.
	mustExec(t, db, `DELETE FROM tasks WHERE id <= 100000`)
	var n, bytes int64
	db.QueryRow(ctx, `SELECT count(*), pg_total_relation_size('task_tombstones') FROM task_tombstones`).Scan(&n, &bytes)
	fmt.Printf("\n%d tombstones: %d bytes with their indexes, %.0f bytes each\n", n, bytes, float64(bytes)/float64(n))
}

// toggleScript is a pgbench script that toggles a random task of a random user with sql.
func toggleScript(sql string) string {
	args := []string{"'u' || ((:id - 1) / 50)", "NULL", "NULL", ":id", "NULL", "NULL"}
	for i := len(args); i >= 1; i-- {
		sql = strings.ReplaceAll(sql, fmt.Sprintf("$%d", i), args[i-1])
	}
	return fmt.Sprintf("\\set id random(1, %d)\n%s;\n", captureUsers*captureTasksPerUser, strings.Join(strings.Fields(sql), " "))
}

func pgbenchTPS(t *testing.T, dir, dbURL, script string, conc int, duration time.Duration) float64 {
	f := filepath.Join(dir, "script.sql")
	os.WriteFile(f, []byte(script), 0o644)
	out, err := exec.Command("pgbench", "-n", "-M", "prepared", "-c", fmt.Sprint(conc), "-j", fmt.Sprint(min(conc, 2)),
		"-T", fmt.Sprint(int(duration.Seconds())), "-f", f, dbURL).CombinedOutput()
	if err != nil {
		t.Fatalf("pgbench: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`tps = ([0-9.]+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("pgbench printed no tps:\n%s", out)
	}
	var tps float64
	fmt.Sscan(string(m[1]), &tps)
	return tps
}

func mustExec(t *testing.T, db *pgxpool.Pool, sql string) {
	if _, err := db.Exec(context.Background(), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func medianOf(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

func roundList(v []float64) string {
	var parts []string
	for _, x := range v {
		parts = append(parts, fmt.Sprintf("%.0f", x))
	}
	return strings.Join(parts, ", ")
}

// slowCommits makes every commit in dbURL's database wait for a synchronous standby (made
// here with pg_basebackup) to apply it, which it does delay after the commit: what a
// commit that waits on a network costs, as Neon's do. Only that database's sessions
// wait: the cluster's default is made local, so a run cut short leaves the other
// databases committing as before. stop undoes it all.
func slowCommits(t *testing.T, dbURL string, delay time.Duration) (stop func()) {
	data := os.Getenv("TASKFLOW_PGDATA")
	bin := os.Getenv("TASKFLOW_PGBIN")
	if data == "" || bin == "" {
		t.Fatal("BENCH_SLOW_COMMIT needs the cluster of scripts/devdb.sh")
	}
	as := func(argv ...string) *exec.Cmd {
		if owner := os.Getenv("TASKFLOW_PGOWNER"); owner != "" {
			argv = append([]string{"runuser", "-u", owner, "--"}, argv...)
		}
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Dir = "/"
		return cmd
	}
	standby := filepath.Join(filepath.Dir(data), filepath.Base(data)+"-standby")
	os.RemoveAll(standby)
	os.MkdirAll(standby, 0o700)
	if owner := os.Getenv("TASKFLOW_PGOWNER"); owner != "" {
		exec.Command("chown", owner+":", standby).Run()
	}
	port := testkit.FreePort(t)
	primaryPort := os.Getenv("TASKFLOW_PG_PORT")
	if out, err := as(filepath.Join(bin, "pg_basebackup"), "-h", "127.0.0.1", "-p", primaryPort, "-U", "postgres",
		"-D", standby, "-R", "-X", "stream", "-c", "fast").CombinedOutput(); err != nil {
		t.Fatalf("pg_basebackup: %v\n%s", err, out)
	}
	conf := fmt.Sprintf("\nport = %s\ncluster_name = 'bench_standby'\nrecovery_min_apply_delay = '%dms'\nhot_standby_feedback = on\n", port, delay.Milliseconds())
	f, _ := os.OpenFile(filepath.Join(standby, "postgresql.auto.conf"), os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(conf)
	f.Close()
	if out, err := as(filepath.Join(bin, "pg_ctl"), "-D", standby, "-l", filepath.Join(standby, "log"), "-w", "start").CombinedOutput(); err != nil {
		t.Fatalf("start the standby: %v\n%s", err, out)
	}
	db := openPool(t, dbURL)
	u, _ := url.Parse(dbURL)
	name := strings.TrimPrefix(u.Path, "/")
	mustExec(t, db, `ALTER SYSTEM SET synchronous_commit = local`)
	mustExec(t, db, `ALTER SYSTEM SET synchronous_standby_names = 'bench_standby'`)
	mustExec(t, db, `SELECT pg_reload_conf()`)
	mustExec(t, db, `ALTER DATABASE `+name+` SET synchronous_commit = remote_apply`)
	return func() {
		db, err := pgxpool.New(context.Background(), dbURL)
		if err == nil {
			mustExec(t, db, `ALTER DATABASE `+name+` RESET synchronous_commit`)
			mustExec(t, db, `ALTER SYSTEM RESET synchronous_standby_names`)
			mustExec(t, db, `ALTER SYSTEM RESET synchronous_commit`)
			mustExec(t, db, `SELECT pg_reload_conf()`)
			db.Close()
		}
		as(filepath.Join(bin, "pg_ctl"), "-D", standby, "-m", "immediate", "-w", "stop").Run()
		os.RemoveAll(standby)
	}
}
