package pg

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// breaker keeps an unreachable database from being dialed by every request. While the
// last connection attempt failed, one attempt at a time is let through, spaced by a
// backoff that doubles up to maxBackoff, and every other caller is refused at once. So a
// request during an outage fails in microseconds, the database (or Neon waking up) sees
// a few attempts a second (two connections each, when pgx follows a failed start-up with
// a cancel request), and requests succeed again at most maxBackoff after it is back.
// The log says it is down once, how many requests were refused every downLogEvery, and
// that it is back once.
type breaker struct {
	log *slog.Logger

	mu      sync.Mutex
	down    bool
	since   time.Time     // when it went down
	next    time.Time     // no attempt before then
	backoff time.Duration // the wait after the last failed attempt
	refused int           // requests refused since the last log line
	total   int           // requests refused in this outage
	logged  time.Time     // the last log line of this outage
}

const (
	minBackoff   = 100 * time.Millisecond
	maxBackoff   = 500 * time.Millisecond
	downLogEvery = 10 * time.Second
)

// beforeConnect is pgxpool's BeforeConnect hook: it lets an attempt through, or refuses.
func (b *breaker) beforeConnect(_ context.Context, cc *pgx.ConnConfig) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	if !b.down {
		return nil
	}
	if now.Before(b.next) {
		b.refused++
		b.total++
		if now.Sub(b.logged) >= downLogEvery {
			b.log.Warn("database still unreachable", "down_for", now.Sub(b.since).Round(time.Second).String(), "requests_refused", b.refused)
			b.refused, b.logged = 0, now
		}
		return ErrDown
	}
	// This attempt's end (TraceConnectEnd) decides when the next one may go; the margin
	// past its connect timeout lets that end arrive after the request that started it
	// gave up, at its own deadline, which may be the same length.
	b.next = now.Add(cc.ConnectTimeout + time.Second)
	return nil
}

// The breaker learns how each attempt ended as pgx's connect tracer: pgxpool finishes an
// attempt in the background when the request that started it gave up first, and only
// the tracer sees that ending.

func (b *breaker) TraceConnectStart(ctx context.Context, _ pgx.TraceConnectStartData) context.Context {
	return ctx
}

func (b *breaker) TraceConnectEnd(_ context.Context, data pgx.TraceConnectEndData) {
	if data.Err != nil {
		b.failed(data.Err)
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.down {
		b.log.Info("database reachable again", "down_for", time.Since(b.since).Round(time.Millisecond).String(), "requests_refused", b.total)
	}
	b.down, b.backoff, b.refused, b.total = false, 0, 0, 0
}

// A connect tracer must be a query tracer too; queries are none of the breaker's business.

func (b *breaker) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	return ctx
}

func (b *breaker) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func (b *breaker) setLog(log *slog.Logger) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.log = log
}

// failed records an attempt that did not get through.
func (b *breaker) failed(cause error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	if !b.down {
		b.down, b.since, b.logged, b.backoff = true, now, now, minBackoff
		b.log.Warn("database unreachable; refusing requests until it answers", "err", cause)
	} else {
		b.backoff = min(2*b.backoff, maxBackoff)
	}
	b.next = now.Add(b.backoff)
}
