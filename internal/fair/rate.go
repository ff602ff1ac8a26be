package fair

import (
	"sync"
	"time"
)

// Rate holds each user to a number of events a second on this instance, in bursts of
// twice that: a token bucket per user (MAX_WRITES_PER_USER for writes). However many users write, memory stays bounded by
// those who wrote within the last burst/rate (2 s): a bucket that has filled up again
// holds nothing a new one would not, and sweep forgets it.
type Rate struct {
	rate, burst float64

	mu      sync.Mutex
	buckets map[string]bucket
	swept   time.Time
}

type bucket struct {
	tokens float64
	at     time.Time // when tokens was last brought up to date
}

// NewRate allows perSecond events a second per user.
func NewRate(perSecond int) *Rate {
	return &Rate{rate: float64(perSecond), burst: 2 * float64(perSecond), buckets: map[string]bucket{}}
}

// Allow takes a token from the user's bucket, if it has one.
func (l *Rate) Allow(userID string, now time.Time) bool {
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

func (l *Rate) fill(b bucket, now time.Time) float64 {
	return min(l.burst, b.tokens+now.Sub(b.at).Seconds()*l.rate)
}

// sweep forgets the buckets that are full again.
func (l *Rate) sweep(now time.Time) {
	for user, b := range l.buckets {
		if l.fill(b, now) >= l.burst {
			delete(l.buckets, user)
		}
	}
	l.swept = now
}
