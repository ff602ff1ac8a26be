package testkit

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

// Task is the wire form of a task, decoded strictly so a renamed field fails a test.
type Task struct {
	ID          int64   `json:"id"`
	UserID      string  `json:"user_id"`
	Title       string  `json:"title"`
	Description *string `json:"description"`
	Completed   bool    `json:"completed"`
	CreatedAt   string  `json:"created_at"`
	UpdatedAt   string  `json:"updated_at"`
	Version     int64   `json:"version"`
}

func (tj Task) Equal(o Task) bool {
	sameDesc := (tj.Description == nil) == (o.Description == nil) &&
		(tj.Description == nil || *tj.Description == *o.Description)
	tj.Description, o.Description = nil, nil
	return sameDesc && tj == o
}

// Event is a Server-Sent Event as a client sees it; a comment line is Name ":".
type Event struct{ ID, Name, Data string }

// ReadSSE reads events from r until it ends, as the server sends them: one data line
// each. A comment (a heartbeat) comes as an event named ":".
func ReadSSE(r io.Reader, each func(Event)) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 64<<10)
	var ev Event
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if ev.Name != "" {
				each(ev)
			}
			ev = Event{}
		case strings.HasPrefix(line, ":"):
			each(Event{Name: ":"})
		case strings.HasPrefix(line, "id: "):
			ev.ID = strings.TrimPrefix(line, "id: ")
		case strings.HasPrefix(line, "event: "):
			ev.Name = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			ev.Data = strings.TrimPrefix(line, "data: ")
		}
	}
}

// Follower keeps a user's tasks as a client of the feed should: it lists once, follows
// the event stream from the list's X-Cursor, keeps the highest version of each task, and
// reconnects from the last event's id; only a resync makes it list again. The load
// harnesses check what it ends up with.
type Follower struct {
	base, userID string
	token        func() string // a fresh token for each request
	client       *http.Client

	mu      sync.Mutex
	tasks   map[int64]Task
	deleted map[int64]int64 // id → the tombstone's version
	lastID  string          // the last event id seen: where a reconnect resumes
	counts  FollowerCounts
}

// FollowerCounts are what happened to a Follower: events applied, reconnects, lists (the
// first, and one per resync), resyncs, and events older than what was held (the feed
// must never send one).
type FollowerCounts struct{ Events, Reconnects, Lists, Resyncs, Stale int }

// UserID is whose tasks the Follower keeps.
func (f *Follower) UserID() string { return f.userID }

// Counts says what has happened so far.
func (f *Follower) Counts() FollowerCounts {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.counts
}

func NewFollower(base, userID string, token func() string) *Follower {
	return &Follower{base: base, userID: userID, token: token, client: &http.Client{},
		tasks: map[int64]Task{}, deleted: map[int64]int64{}}
}

// Run follows until ctx ends, waiting pause between a stream's end and the reconnect.
func (f *Follower) Run(ctx context.Context, pause time.Duration) {
	for ctx.Err() == nil {
		if f.last() == "" && !f.list(ctx) {
			time.Sleep(pause)
			continue
		}
		f.follow(ctx)
		f.mu.Lock()
		f.counts.Reconnects++
		f.mu.Unlock()
		select {
		case <-ctx.Done():
		case <-time.After(pause):
		}
	}
}

func (f *Follower) last() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lastID
}

// list fetches the whole list and merges it by version; its X-Cursor is where the stream
// starts. A task the list does not have, and the Follower does, was deleted.
func (f *Follower) list(ctx context.Context) bool {
	req, _ := http.NewRequestWithContext(ctx, "GET", f.base+"/api/"+f.userID+"/tasks", nil)
	req.Header.Set("Authorization", "Bearer "+f.token())
	res, err := f.client.Do(req)
	if err != nil {
		return false
	}
	defer res.Body.Close()
	var list []Task
	if res.StatusCode != http.StatusOK || json.NewDecoder(res.Body).Decode(&list) != nil {
		return false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	listed := map[int64]bool{}
	for _, t := range list {
		listed[t.ID] = true
		f.upsert(t)
	}
	for id := range f.tasks {
		if !listed[id] {
			delete(f.tasks, id)
		}
	}
	f.lastID = res.Header.Get("X-Cursor")
	f.counts.Lists++
	return true
}

func (f *Follower) follow(ctx context.Context) {
	req, _ := http.NewRequestWithContext(ctx, "GET", f.base+"/api/"+f.userID+"/events", nil)
	req.Header.Set("Authorization", "Bearer "+f.token())
	req.Header.Set("Last-Event-ID", f.last())
	res, err := f.client.Do(req)
	if err != nil {
		return
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return
	}
	ReadSSE(res.Body, func(ev Event) {
		switch {
		case ev.Name == "resync":
			f.mu.Lock()
			f.counts.Resyncs++
			f.lastID = ""
			f.mu.Unlock()
			f.list(ctx)
		case strings.HasPrefix(ev.Name, "task."):
			f.apply(ev)
		}
		if ev.ID != "" && ev.Name != "resync" {
			f.mu.Lock()
			f.lastID = ev.ID
			f.mu.Unlock()
		}
	})
}

func (f *Follower) apply(ev Event) {
	var t Task
	if err := json.Unmarshal([]byte(ev.Data), &t); err != nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.counts.Events++
	if ev.Name != "task.deleted" {
		f.upsert(t)
		return
	}
	if held, ok := f.tasks[t.ID]; ok && held.Version > t.Version {
		f.counts.Stale++
	}
	delete(f.tasks, t.ID)
	f.deleted[t.ID] = max(f.deleted[t.ID], t.Version)
}

// upsert keeps t unless a newer version of it, or its deletion, is held already.
func (f *Follower) upsert(t Task) {
	held, ok := f.tasks[t.ID]
	switch {
	case ok && held.Version > t.Version, f.deleted[t.ID] > t.Version:
		f.counts.Stale++
	case f.deleted[t.ID] == 0:
		f.tasks[t.ID] = t
	}
}

// view is the tasks as the Follower holds them, in an order to compare.
func (f *Follower) view() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return TaskView(f.tasks)
}

func TaskView(tasks map[int64]Task) []string {
	var out []string
	for _, t := range tasks {
		desc := ""
		if t.Description != nil {
			desc = *t.Description
		}
		out = append(out, fmt.Sprint(t.ID, " v", t.Version, " ", t.Title, " ", desc, " ", t.Completed, " ", t.UpdatedAt))
	}
	slices.Sort(out)
	return out
}

// Converges waits up to within for the Follower to hold want, and says how it differs.
func (f *Follower) Converges(want map[int64]Task, within time.Duration) (bool, string) {
	wantView := TaskView(want)
	var got []string
	for deadline := time.Now().Add(within); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if got = f.view(); slices.Equal(got, wantView) {
			return true, ""
		}
	}
	return false, fmt.Sprintf("holds %d tasks, the database %d; first of each: %v / %v", len(got), len(wantView), first(got), first(wantView))
}

func first(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[0]
}
