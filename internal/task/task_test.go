package task

import (
	"encoding/json"
	"math/rand"
	"strings"
	"testing"
	"time"

	"taskflow/internal/testkit"
)

// FuzzAppendString holds the hand-written encoder to encoding/json's exact output.
func FuzzAppendString(f *testing.F) {
	for _, seed := range []string{"", "plain", `q"uote\back`, "<script>&", "\u2028\u2029", "tab\tnl\n\x00\x1f", "é😀", "\xff\xfe", "a\xc0"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, s string) {
		want, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		if got := AppendString(nil, s); string(got) != string(want) {
			t.Fatalf("AppendString(%q) = %s, want %s", s, got, want)
		}
	})
}

func TestAppendJSONIsTheContractsTask(t *testing.T) {
	at := time.Date(2026, 2, 12, 10, 4, 5, 123456000, time.FixedZone("CET", 3600))
	desc := "two\nlines"
	for _, task := range []Task{
		{ID: 42, UserID: "k3Jd9xQ2mZ7pL0aB", Title: "Buy milk", CreatedAt: at, UpdatedAt: at, Version: 7},
		{ID: 1<<63 - 1, UserID: "u", Title: `"<é>"`, Description: &desc, Completed: true, CreatedAt: at.Add(-at.Sub(at.Truncate(time.Second))), UpdatedAt: at},
	} {
		b := AppendJSON(nil, &task)
		dec := json.NewDecoder(strings.NewReader(string(b)))
		dec.DisallowUnknownFields()
		var got testkit.Task
		if err := dec.Decode(&got); err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		want := testkit.Task{ID: task.ID, UserID: task.UserID, Title: task.Title, Description: task.Description, Completed: task.Completed,
			CreatedAt: task.CreatedAt.UTC().Format("2006-01-02T15:04:05.000000Z"), UpdatedAt: "2026-02-12T09:04:05.123456Z", Version: task.Version}
		if !got.Equal(want) {
			t.Errorf("got %+v, want %+v", got, want)
		}
	}
}

func TestAppendTimestamp(t *testing.T) {
	times := []time.Time{
		time.Date(2026, 2, 12, 10, 4, 5, 123456789, time.UTC),
		time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.FixedZone("X", -7*3600)),
		time.Date(2024, 2, 29, 12, 0, 0, 1000, time.FixedZone("CET", 3600)),
		time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC), // past 9999: the general formatter
		time.Unix(0, 0),
	}
	for i := 0; i < 1000; i++ {
		times = append(times, time.Unix(rand.Int63n(1<<35), rand.Int63n(1e9)))
	}
	for _, tm := range times {
		if got, want := string(appendTimestamp(nil, tm)), tm.UTC().Format(timeLayout); got != want {
			t.Errorf("appendTimestamp(%v) = %s, want %s", tm, got, want)
		}
	}
}

func BenchmarkAppendJSON50(b *testing.B) {
	tasks := make([]Task, 50)
	now := time.Now()
	desc := strings.Repeat("d", 100)
	for i := range tasks {
		tasks[i] = Task{ID: int64(1000 + i), UserID: "k3Jd9xQ2mZ7pL0aBk3Jd9xQ2mZ7pL0aB", Title: "Task title number something",
			Completed: i%3 == 0, CreatedAt: now, UpdatedAt: now}
		if i%3 != 0 {
			tasks[i].Description = &desc
		}
	}
	buf := make([]byte, 0, 32<<10)
	b.ReportAllocs()
	for b.Loop() {
		buf = buf[:0]
		for i := range tasks {
			buf = AppendJSON(buf, &tasks[i])
		}
	}
	b.SetBytes(int64(len(buf)))
}
