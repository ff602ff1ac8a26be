package fair

import (
	"fmt"
	"runtime"
	"testing"
	"time"
)

func TestTheWriteLimiterIsATokenBucketPerUser(t *testing.T) {
	t.Parallel()
	l := NewRate(10)
	now := time.Now()
	for i := range 20 {
		if !l.Allow("alice", now) {
			t.Fatalf("write %d of a burst of 20 refused", i+1)
		}
	}
	if l.Allow("alice", now) {
		t.Error("the 21st write of a burst allowed")
	}
	if !l.Allow("bob", now) {
		t.Error("another user slowed by alice's writes")
	}
	if !l.Allow("alice", now.Add(100*time.Millisecond)) || l.Allow("alice", now.Add(100*time.Millisecond)) {
		t.Error("after 100 ms at 10 a second, one write more, not two")
	}
}

// TestTheWriteLimiterForgetsIdleUsers: however many users write, it holds only those
// who wrote within the last two seconds.
func TestTheWriteLimiterForgetsIdleUsers(t *testing.T) {
	t.Parallel()
	l := NewRate(50)
	now := time.Now()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range 100_000 {
		l.Allow(fmt.Sprint("user-", i), now)
	}
	runtime.ReadMemStats(&after)
	t.Logf("100,000 users: %d buckets, about %d bytes each", len(l.buckets), (after.HeapAlloc-before.HeapAlloc)/100_000)
	l.Allow("one more", now.Add(3*time.Second))
	if n := len(l.buckets); n != 1 {
		t.Errorf("%d buckets three seconds after 100,000 users wrote once, want 1", n)
	}
}
