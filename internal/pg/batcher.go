package pg

import (
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// The batcher behind DB.Write: it decides which queued writes go together, and when.

const (
	// maxBatch bounds a batch, and so how long it holds the row locks it takes.
	maxBatch = 64
	// How many batches go at once depends on how far the database is. Near it (the
	// fastest recent batch came back within far), a batch waits for the one before it,
	// which makes batches big: two at once served fewer toggles on loopback. Far from it
	// (Neon, across a network), where a commit costs the database little next to the
	// round trip, writes go at once, up to maxInFlight batches, as one at a time left
	// them behind the Node peer (docs/performance.md, "Writes share a commit"). A batch
	// out longer than stuck (waiting for a lock, say) holds the others up no longer.
	far         = time.Millisecond
	stuck       = 5 * time.Millisecond
	maxInFlight = 8
	// floorFor is how long the fastest batch seen stands for the database's distance.
	floorFor = 5 * time.Second
)

type write struct {
	key  string
	sql  string
	args []any
	scan func(pgx.Row) error
	err  error
	done chan struct{}
}

// batcher sends the writes queued while the batches before them were in flight.
type batcher struct {
	send     func([]*write) // runs a batch and settles each of its writes
	mu       sync.Mutex
	next     []*write
	busy     map[string]int // keys with writes in flight
	inFlight int
	newest   time.Time     // when the newest batch in flight was sent
	floor    time.Duration // the fastest batch seen lately: how far the database is
	floorAt  time.Time
	shut     bool
	kick     chan struct{} // capacity one: something changed
	quit     chan struct{} // closed when the loop has sent its last batch
}

func newBatcher(send func([]*write)) *batcher {
	b := &batcher{send: send, busy: map[string]int{}, kick: make(chan struct{}, 1), quit: make(chan struct{})}
	go b.loop()
	return b
}

func (b *batcher) add(w *write) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.shut {
		return false
	}
	b.next = append(b.next, w)
	b.poke()
	return true
}

// withdraw takes w out of the queue, if it has not been sent.
func (b *batcher) withdraw(w *write) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, q := range b.next {
		if q == w {
			b.next = append(b.next[:i], b.next[i+1:]...)
			return true
		}
	}
	return false
}

func (b *batcher) poke() {
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

// close sends what is queued, then stops the loop.
func (b *batcher) close() {
	b.mu.Lock()
	b.shut = true
	b.poke()
	b.mu.Unlock()
	<-b.quit
}

func (b *batcher) loop() {
	defer close(b.quit)
	timer := time.NewTimer(time.Hour)
	for {
		select {
		case <-b.kick:
		case <-timer.C:
		}
		for {
			batch, wait, done := b.take()
			if done {
				return
			}
			if batch == nil {
				if wait > 0 {
					timer.Reset(wait)
				}
				break
			}
			go func() {
				sent := time.Now()
				b.send(batch)
				took := time.Since(sent)
				b.mu.Lock()
				if took < b.floor || time.Since(b.floorAt) > floorFor {
					b.floor, b.floorAt = took, time.Now()
				}
				for _, w := range batch {
					if b.busy[w.key]--; b.busy[w.key] == 0 {
						delete(b.busy, w.key)
					}
				}
				b.inFlight--
				b.poke()
				b.mu.Unlock()
			}()
		}
	}
}

// take takes the next batch, if one may go now: the queued writes whose keys have none
// in flight, in order. Otherwise it says how long until one may, if it knows; done once
// the batcher is shut and has nothing left.
func (b *batcher) take() (batch []*write, wait time.Duration, done bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.next) == 0 {
		return nil, 0, b.shut && b.inFlight == 0
	}
	if b.inFlight > 0 {
		after := stuck
		if b.floor >= far {
			after = 0
		}
		if b.inFlight >= maxInFlight {
			return nil, 0, false // the one coming back pokes
		}
		if since := time.Since(b.newest); since < after {
			return nil, after - since, false
		}
	}
	kept := b.next[:0]
	for _, w := range b.next {
		if len(batch) < maxBatch && b.busy[w.key] == 0 {
			batch = append(batch, w)
		} else {
			kept = append(kept, w)
		}
	}
	for _, w := range batch {
		b.busy[w.key]++
	}
	b.next = kept
	if batch != nil {
		b.inFlight++
		b.newest = time.Now()
	}
	return batch, 0, false
}
