package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// follower keeps a user's tasks as a client of the feed should: it lists once, follows
// the event stream from the list's X-Cursor, keeps the highest version of each task, and
// reconnects from the last event's id; only a resync makes it list again. The cluster
// harness, make bench-live and TestStreamsResumeWithoutLoss check what it ends up with.
type follower struct {
	base, userID string
	token        func() string // a fresh token for each request
	client       *http.Client

	mu      sync.Mutex
	tasks   map[int64]taskJSON
	deleted map[int64]int64 // id → the tombstone's version
	lastID  string          // the last event id seen: where a reconnect resumes
	// What happened: events applied, reconnects, lists (the first and one per resync),
	// and events older than what was held (the feed must never send one).
	events, reconnects, lists, resyncs, stale int
}

func newFollower(base, userID string, token func() string) *follower {
	return &follower{base: base, userID: userID, token: token, client: &http.Client{},
		tasks: map[int64]taskJSON{}, deleted: map[int64]int64{}}
}

// run follows until ctx ends, waiting pause between a stream's end and the reconnect.
func (f *follower) run(ctx context.Context, pause time.Duration) {
	for ctx.Err() == nil {
		if f.last() == "" && !f.list(ctx) {
			time.Sleep(pause)
			continue
		}
		f.follow(ctx)
		f.mu.Lock()
		f.reconnects++
		f.mu.Unlock()
		select {
		case <-ctx.Done():
		case <-time.After(pause):
		}
	}
}

func (f *follower) last() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lastID
}

// list fetches the whole list and merges it by version; its X-Cursor is where the stream
// starts. A task the list does not have, and the follower does, was deleted.
func (f *follower) list(ctx context.Context) bool {
	req, _ := http.NewRequestWithContext(ctx, "GET", f.base+"/api/"+f.userID+"/tasks", nil)
	req.Header.Set("Authorization", "Bearer "+f.token())
	res, err := f.client.Do(req)
	if err != nil {
		return false
	}
	defer res.Body.Close()
	var list []taskJSON
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
	f.lists++
	return true
}

func (f *follower) follow(ctx context.Context) {
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
	readSSE(res.Body, func(ev sse) {
		switch {
		case ev.name == "resync":
			f.mu.Lock()
			f.resyncs++
			f.lastID = ""
			f.mu.Unlock()
			f.list(ctx)
		case strings.HasPrefix(ev.name, "task."):
			f.apply(ev)
		}
		if ev.id != "" && ev.name != "resync" {
			f.mu.Lock()
			f.lastID = ev.id
			f.mu.Unlock()
		}
	})
}

func (f *follower) apply(ev sse) {
	var t taskJSON
	if err := json.Unmarshal([]byte(ev.data), &t); err != nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.events++
	if ev.name != "task.deleted" {
		f.upsert(t)
		return
	}
	if held, ok := f.tasks[t.ID]; ok && held.Version > t.Version {
		f.stale++
	}
	delete(f.tasks, t.ID)
	f.deleted[t.ID] = max(f.deleted[t.ID], t.Version)
}

// upsert keeps t unless a newer version of it, or its deletion, is held already.
func (f *follower) upsert(t taskJSON) {
	held, ok := f.tasks[t.ID]
	switch {
	case ok && held.Version > t.Version, f.deleted[t.ID] > t.Version:
		f.stale++
	case f.deleted[t.ID] == 0:
		f.tasks[t.ID] = t
	}
}

// view is the tasks as the follower holds them, in an order to compare.
func (f *follower) view() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return taskView(f.tasks)
}

func taskView(tasks map[int64]taskJSON) []string {
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

// converges waits up to within for the follower to hold want, and says how it differs.
func (f *follower) converges(want map[int64]taskJSON, within time.Duration) (bool, string) {
	wantView := taskView(want)
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

// TestStreamsResumeWithoutLoss: streams cut by the server again and again (their tokens
// expire every second or two) while several users write resume from their last event,
// and end up where the database is: none stale, none lost, no list but the first.
func TestStreamsResumeWithoutLoss(t *testing.T) {
	t.Parallel()
	es := newEventsServer(t, "", nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var followers []*follower
	var wg sync.WaitGroup
	users := make([]*user, 3)
	for i := range users {
		users[i] = es.api.newUser(t)
		u := users[i]
		for range 2 {
			short := func() string {
				c := validClaims(u.id)
				c.ExpiresAt = jwt.NewNumericDate(time.Now().Add(1500 * time.Millisecond))
				tok, _ := mintToken([]byte(testSecret), c)
				return tok
			}
			f := newFollower(es.url, u.id, short)
			followers = append(followers, f)
			wg.Go(func() { f.run(ctx, 10*time.Millisecond) })
		}
	}
	var ids []int64
	for i := range 600 {
		u := users[i%len(users)]
		switch {
		case i%4 == 0 || len(ids) < 3:
			ids = append(ids, u.create(t, fmt.Sprint("task ", i)).ID)
		case i%7 == 0:
			u.api.do(t, request{method: "DELETE", path: fmt.Sprintf("/api/%s/tasks/%d", u.id, ids[0]), token: u.token})
			ids = ids[1:]
		default:
			u.api.do(t, request{method: "PATCH", path: fmt.Sprintf("/api/%s/tasks/%d/complete", u.id, ids[i%len(ids)]), token: u.token})
		}
		time.Sleep(5 * time.Millisecond)
	}
	reconnects := 0
	for _, f := range followers {
		var tasks []taskJSON
		u := &user{api: es.api, id: f.userID, token: tokenFor(t, f.userID)}
		u.do(t, "GET", "/api/{me}/tasks", "").wantStatus(http.StatusOK).decode(&tasks)
		want := map[int64]taskJSON{}
		for _, task := range tasks {
			want[task.ID] = task
		}
		if ok, diff := f.converges(want, 5*time.Second); !ok {
			t.Errorf("a follower of %s: %s", f.userID, diff)
		}
		f.mu.Lock()
		if f.stale > 0 || f.lists != 1 || f.resyncs > 0 {
			t.Errorf("a follower: %d stale events, %d lists, %d resyncs; want 0, 1, 0", f.stale, f.lists, f.resyncs)
		}
		reconnects += f.reconnects
		f.mu.Unlock()
	}
	cancel()
	wg.Wait()
	if reconnects < 2*len(followers) {
		t.Errorf("%d reconnects in all: the test did not cut the streams", reconnects)
	}
	t.Logf("%d followers, %d reconnects", len(followers), reconnects)
}
