package fair

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestTurnsAreTakenInOrder: past Turns at once, a user's statements wait, and go in the
// order they came; another user's go at once meanwhile.
func TestTurnsAreTakenInOrder(t *testing.T) {
	for _, turns := range []int{1, 2} {
		us := New(time.Second, time.Minute, turns)
		release := make(chan struct{})
		var running, most atomic.Int32
		var order []int
		var mu sync.Mutex
		var wg sync.WaitGroup
		for i := range 6 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				us.Do(context.Background(), "alice", func() error {
					if n := running.Add(1); n > most.Load() {
						most.Store(n)
					}
					mu.Lock()
					order = append(order, i)
					mu.Unlock()
					<-release
					running.Add(-1)
					return nil
				})
			}()
			time.Sleep(10 * time.Millisecond) // so that they come in order
		}
		if err := us.Do(context.Background(), "bob", func() error { return nil }); err != nil {
			t.Errorf("another user waited: %v", err)
		}
		close(release)
		wg.Wait()
		if int(most.Load()) != turns {
			t.Errorf("%d of one user's statements ran at once, want %d", most.Load(), turns)
		}
		for i, got := range order {
			if turns == 1 && got != i {
				t.Fatalf("turns taken in the order %v, want as they came", order)
			}
		}
	}
}

// TestASpentBudgetWaitsToRefill: what a statement took is charged; a user who spent
// their burst waits until the rate has refilled it, then goes on.
func TestASpentBudgetWaitsToRefill(t *testing.T) {
	now := time.Unix(0, 0)
	var mu sync.Mutex
	us := New(100*time.Millisecond, 100*time.Millisecond, 1)
	us.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	us.Do(context.Background(), "alice", func() error { advance(300 * time.Millisecond); return nil }) // 200 ms over
	if wait := us.Ready("alice"); wait != 2*time.Second {
		t.Errorf("after spending 200 ms past the budget: wait %v, want 2s", wait)
	}
	if wait := us.Ready("bob"); wait != 0 {
		t.Errorf("another user: wait %v, want none", wait)
	}
	advance(2 * time.Second)
	if wait := us.Ready("alice"); wait != 0 {
		t.Errorf("after 2 s: wait %v, want none", wait)
	}
}

// TestAWaitEndsWithItsContext: a statement that waits too long for its turn is ErrBusy,
// and gives its place up.
func TestAWaitEndsWithItsContext(t *testing.T) {
	us := New(time.Second, time.Minute, 1)
	hold := make(chan struct{})
	go us.Do(context.Background(), "alice", func() error { <-hold; return nil })
	time.Sleep(10 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := us.Do(ctx, "alice", func() error { return nil }); !errors.Is(err, ErrBusy) {
		t.Errorf("a wait past its context: %v, want ErrBusy", err)
	}
	close(hold)
	if err := us.Do(context.Background(), "alice", func() error { return nil }); err != nil {
		t.Errorf("after the holder left: %v", err)
	}
	us.mu.Lock()
	defer us.mu.Unlock()
	if u := us.users["alice"]; u != nil && (u.running != 0 || len(u.waiting) != 0) {
		t.Errorf("alice left %d running, %d waiting", u.running, len(u.waiting))
	}
}

// TestIdleUsersAreForgotten: memory is bounded by the users active within the time a
// budget takes to refill.
func TestIdleUsersAreForgotten(t *testing.T) {
	now := time.Unix(0, 0)
	us := New(100*time.Millisecond, 100*time.Millisecond, 1)
	us.now = func() time.Time { return now }
	for i := range 1000 {
		us.Charge(string(rune('a'+i%26))+time.Duration(i).String(), 50*time.Millisecond)
	}
	now = now.Add(2 * time.Second)
	us.Charge("last", 0)
	if n := len(us.users); n != 1 {
		t.Errorf("%d users held after all but one refilled, want 1", n)
	}
}
