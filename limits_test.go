package main

import (
	"fmt"
	"net/http"
	"runtime"
	"testing"
	"time"
)

func TestTheWriteLimiterIsATokenBucketPerUser(t *testing.T) {
	t.Parallel()
	l := newWriteLimiter(10)
	now := time.Now()
	for i := range 20 {
		if !l.allow("alice", now) {
			t.Fatalf("write %d of a burst of 20 refused", i+1)
		}
	}
	if l.allow("alice", now) {
		t.Error("the 21st write of a burst allowed")
	}
	if !l.allow("bob", now) {
		t.Error("another user slowed by alice's writes")
	}
	if !l.allow("alice", now.Add(100*time.Millisecond)) || l.allow("alice", now.Add(100*time.Millisecond)) {
		t.Error("after 100 ms at 10 a second, one write more, not two")
	}
}

// TestTheWriteLimiterForgetsIdleUsers: however many users write, it holds only those
// who wrote within the last two seconds.
func TestTheWriteLimiterForgetsIdleUsers(t *testing.T) {
	t.Parallel()
	l := newWriteLimiter(50)
	now := time.Now()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range 100_000 {
		l.allow(fmt.Sprint("user-", i), now)
	}
	runtime.ReadMemStats(&after)
	t.Logf("100,000 users: %d buckets, about %d bytes each", len(l.buckets), (after.HeapAlloc-before.HeapAlloc)/100_000)
	l.allow("one more", now.Add(3*time.Second))
	if n := len(l.buckets); n != 1 {
		t.Errorf("%d buckets three seconds after 100,000 users wrote once, want 1", n)
	}
}

// TestWritesPastTheRateAre429: nothing written, Retry-After; a keyed retry of a write
// already made is still answered; another user writes on.
func TestWritesPastTheRateAre429(t *testing.T) {
	t.Parallel()
	s := testStore(t)
	svc := newTestService(s, discardLogger())
	svc.writes.limit = newWriteLimiter(5)
	api := &testAPI{handler: newHandler(discardLogger(), svc, []string{testOrigin})}
	me, other := api.newUser(t), api.newUser(t)
	key := map[string]string{"Idempotency-Key": "made-before-the-limit"}
	first := me.doWith(t, "POST", "/api/{me}/tasks", `{"title":"keyed"}`, key).wantStatus(http.StatusCreated)
	for range 9 {
		me.create(t, "within the burst")
	}
	for _, write := range []struct{ method, path, body string }{
		{"POST", "/api/{me}/tasks", `{"title":"one too many"}`},
		{"PUT", fmt.Sprintf("/api/{me}/tasks/%d", first.task().ID), `{"title":"changed"}`},
		{"PATCH", fmt.Sprintf("/api/{me}/tasks/%d/complete", first.task().ID), ""},
		{"DELETE", fmt.Sprintf("/api/{me}/tasks/%d", first.task().ID), ""},
	} {
		res := me.do(t, write.method, write.path, write.body).wantStatus(http.StatusTooManyRequests)
		if res.Header().Get("Retry-After") != "1" {
			t.Errorf("%s: Retry-After %q, want 1", write.method, res.Header().Get("Retry-After"))
		}
		res.detail()
	}
	again := me.doWith(t, "POST", "/api/{me}/tasks", `{"title":"keyed"}`, key).wantStatus(http.StatusCreated)
	if again.Header().Get("Idempotent-Replayed") != "true" {
		t.Error("a keyed retry of a write already made was refused by the limit")
	}
	me.doWith(t, "POST", "/api/{me}/tasks", `{"title":"new"}`, map[string]string{"Idempotency-Key": "not-made"}).wantStatus(http.StatusTooManyRequests)
	if got := me.do(t, "GET", "/api/{me}/tasks", "").wantStatus(http.StatusOK).tasks(); len(got) != 10 || got[0].Title != "within the burst" {
		t.Errorf("%d tasks after 10 writes went through, want 10 and none changed", len(got))
	}
	other.create(t, "not slowed")
}
