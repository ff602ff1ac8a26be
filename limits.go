package main

import (
	"context"
	"errors"
	"sync"
	"time"

	"taskflow/internal/feed"
)

// writes is what every write (create, update, toggle, delete) passes: the user's rate
// limit before it, and once it is made, the wake-up of the user's streams.
type writes struct {
	limit   *writeLimiter
	store   *Store
	wakeups *feed.Wakeups
}

// admit lets a write through within the user's rate. Past it, the write is refused with
// a 429, unless it is a keyed retry of a write already made: that one is a replay, which
// writes nothing, and goes through to get its first answer. (Finding out costs a read by
// primary key, as a GET does; reads have no limit.)
func (g *writes) admit(ctx context.Context, userID string, key *IdempotencyKey) error {
	if g.limit.allow(userID, time.Now()) {
		return nil
	}
	if key == nil {
		return errTooManyWrites
	}
	_, err := g.store.Replay(ctx, userID, key)
	if errors.Is(err, ErrNotFound) {
		return errTooManyWrites
	}
	return err // nil for a replay; else a key reused for another request, or no database
}

// made wakes the user's streams after a write that changed something.
func (g *writes) made(userID string, replayed bool) {
	if !replayed {
		g.wakeups.Changed(userID)
	}
}

// writeLimiter holds each user to rate writes a second on this instance, in bursts of up
// to burst: a token bucket per user. However many users write, memory stays bounded by
// those who wrote within the last burst/rate (2 s): a bucket that has filled up again
// holds nothing a new one would not, and sweep forgets it.
type writeLimiter struct {
	rate, burst float64

	mu      sync.Mutex
	buckets map[string]bucket
	swept   time.Time
}

type bucket struct {
	tokens float64
	at     time.Time // when tokens was last brought up to date
}

func newWriteLimiter(perSecond int) *writeLimiter {
	return &writeLimiter{rate: float64(perSecond), burst: 2 * float64(perSecond), buckets: map[string]bucket{}}
}

// allow takes a token from the user's bucket, if it has one.
func (l *writeLimiter) allow(userID string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if refill := time.Duration(l.burst / l.rate * float64(time.Second)); now.Sub(l.swept) >= refill {
		l.sweep(now)
	}
	b, ok := l.buckets[userID]
	if !ok {
		b = bucket{tokens: l.burst}
	} else {
		b.tokens = l.fill(b, now)
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens, b.at = b.tokens-1, now
	l.buckets[userID] = b
	return true
}

func (l *writeLimiter) fill(b bucket, now time.Time) float64 {
	return min(l.burst, b.tokens+now.Sub(b.at).Seconds()*l.rate)
}

// sweep forgets the buckets that are full again.
func (l *writeLimiter) sweep(now time.Time) {
	for user, b := range l.buckets {
		if l.fill(b, now) >= l.burst {
			delete(l.buckets, user)
		}
	}
	l.swept = now
}
