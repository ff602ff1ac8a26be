package feed

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"taskflow/internal/fair"
	"taskflow/internal/pg"
	"taskflow/internal/task"
	"taskflow/internal/web"
)

// Live updates: Server-Sent Events of a user's feed of changes (feed.go). Each stream
// reads the feed itself, from its own cursor: when it opens (catching up from
// Last-Event-ID or since=), whenever a write of its user wakes it (wakeups.go), and every
// PollEvery in case a wake-up was lost. So a stream has no queue to fall behind on: a
// wake-up not acted on yet is one flag, and what it has not sent is in the database. A
// reconnect, on this instance or another, resumes from the last event's id exactly.
//
// The path of a change, from write to browser: the handler's statement stamps the row
// (store.go) and, once it has committed, Wakeups.Changed wakes this instance's streams of
// the user and has the others woken by a NOTIFY; each woken stream reads its feed from
// its cursor (Feed.Read) and writes one event per change, whose id is the cursor
// after it.

// Why a stream is not opened (test with errors.Is).
var (
	ErrShuttingDown   = errors.New("the server is shutting down")
	ErrStreamsFull    = errors.New("this server holds all the event streams it may (MAX_STREAMS)")
	ErrTooManyStreams = errors.New("too many open event streams for this user (MAX_STREAMS_PER_USER)")
)

// Streams holds one instance's open streams, by user.
type Streams struct {
	feed       *Feed
	log        *slog.Logger
	MaxPerUser int // MAX_STREAMS_PER_USER
	MaxTotal   int // MAX_STREAMS
	// Timings; tests shorten them.
	Heartbeat    time.Duration // a comment line at least this often keeps proxies from cutting a stream
	PollEvery    time.Duration // a read about this often (±50%, so that streams opened together spread), in case a wake-up was lost
	WriteTimeout time.Duration // a page of events that takes longer to reach its client cuts it loose

	mu      sync.Mutex
	streams map[string]map[*stream]bool
	total   int
	idleAt  time.Time     // when the last stream ended
	opened  chan struct{} // a stream opened (for the wake-up listener)
	closed  bool
}

// stream is one open event stream, which a goroutine of its own writes (send).
type stream struct {
	events *Streams
	userID string
	conn   net.Conn
	wake   chan struct{}   // the user's feed has more (a flag: capacity one)
	gone   chan struct{}   // closed at shutdown
	ctx    context.Context // ends when the stream does: at shutdown, or when its client goes
	cancel func()
}

const (
	// A stream reads at most streamPage changes at once, and stops a page at
	// streamPageBytes of events (one event over at most: 7 KiB): a stream holds at most
	// that in memory while its client takes it. Reads are the feed's reader's, which no
	// write to a slow client holds up.
	streamPage      = 100
	streamPageBytes = web.PartSize
)

func NewStreams(feed *Feed, log *slog.Logger, maxPerUser, maxTotal int) *Streams {
	return &Streams{
		feed:       feed,
		log:        log,
		MaxPerUser: maxPerUser,
		MaxTotal:   maxTotal,
		Heartbeat:  15 * time.Second,
		PollEvery:  5 * time.Minute,
		// A client this far behind is cut loose: it reconnects from its Last-Event-ID
		// and loses nothing.
		WriteTimeout: 10 * time.Second,
		streams:      map[string]map[*stream]bool{},
		opened:       make(chan struct{}, 1),
	}
}

// Wake tells the user's streams on this instance that their feed has more.
func (e *Streams) Wake(userID string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for s := range e.streams[userID] {
		s.poke()
	}
}

// WakeAll wakes every stream, for when wake-ups may have been missed.
func (e *Streams) WakeAll() {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, streams := range e.streams {
		for s := range streams {
			s.poke()
		}
	}
}

func (s *stream) poke() {
	select {
	case s.wake <- struct{}{}:
	default: // already woken
	}
}

// Open is how many streams are open.
func (e *Streams) Open() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.total
}

// idle reports whether no stream has been open for the last d.
func (e *Streams) idle(d time.Duration) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.total == 0 && time.Since(e.idleAt) >= d
}

// Close ends every stream at once, for shutdown: the server's Shutdown does not know the
// connections the streams took over.
func (e *Streams) Close() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.closed = true
	for _, streams := range e.streams {
		for s := range streams {
			close(s.gone)
			s.cancel()
		}
	}
}

// Admits reports whether a stream of userID's would open now, or why not.
func (e *Streams) Admits(userID string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.admitsLocked(userID)
}

func (e *Streams) admitsLocked(userID string) error {
	switch {
	case e.closed:
		return ErrShuttingDown
	case e.total >= e.MaxTotal:
		return ErrStreamsFull
	case len(e.streams[userID]) >= e.MaxPerUser:
		return ErrTooManyStreams
	}
	return nil
}

// subscribe counts a stream against the limits; unsubscribe, once its socket is closed.
func (e *Streams) subscribe(userID string) (*stream, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.admitsLocked(userID); err != nil {
		return nil, err
	}
	s := &stream{events: e, userID: userID, wake: make(chan struct{}, 1), gone: make(chan struct{})}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	if e.streams[userID] == nil {
		e.streams[userID] = map[*stream]bool{}
	}
	e.streams[userID][s] = true
	e.total++
	select {
	case e.opened <- struct{}{}:
	default:
	}
	return s, nil
}

func (e *Streams) unsubscribe(s *stream) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.streams[s.userID], s)
	if len(e.streams[s.userID]) == 0 {
		delete(e.streams, s.userID)
	}
	if e.total--; e.total == 0 {
		e.idleAt = time.Now()
	}
}

// Serve answers a stream's request and takes its connection over from net/http: the
// stream is then sent by a goroutine of its own, from the cursor from (nil: now), until
// its token expires (an expired event first), the client goes or falls too far behind,
// or the server shuts down. It returns at once. Past the limits, it returns their error.
//
// Why take the connection: left to net/http, an idle stream holds the handler's goroutine
// (its stack grown by the middleware and the token check), a background reader, 10 KiB
// of buffers and the request: twice the memory per idle stream (make bench-live;
// docs/performance.md, "Live updates"). The access log therefore
// has a stream's line when it opens, not when it ends.
func (e *Streams) Serve(w http.ResponseWriter, userID string, from *Cursor, expires time.Time) error {
	s, err := e.subscribe(userID)
	if err != nil {
		return err
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("X-Accel-Buffering", "no") // nginx: pass each event on at once
	// Identity: net/http neither chunks the body nor keeps the connection for another
	// request (Connection: close); the stream ends when the connection does.
	h.Set("Transfer-Encoding", "identity")
	w.WriteHeader(http.StatusOK)
	// retry: how long a browser's EventSource waits before it reconnects by itself.
	io.WriteString(w, "retry: 2000\n\n") //nolint:errcheck // Flush reports it
	rc := http.NewResponseController(w)
	err = rc.Flush()
	if err == nil {
		s.conn, _, err = rc.Hijack()
	}
	if err != nil {
		// The client went, or the connection is not HTTP/1 (this server speaks no
		// other). The stream has begun, so there is no error to answer: it ends, and an
		// EventSource reconnects.
		s.cancel()
		s.events.unsubscribe(s)
		return nil
	}
	go s.send(from, expires)
	return nil
}

// send writes the stream until it ends, then closes its connection and gives its place
// back. It reads the feed at once (the catch-up), when woken, and every PollEvery or so.
// A stream from now (cur is nil) takes its cursor with its first read, not in its
// handler: 10,000 streams opened at once then wait for a reading place, not for a pooled
// connection on the handler's grown stack, which held far more memory
// (docs/performance.md, "Live updates").
func (s *stream) send(cur *Cursor, expires time.Time) {
	graceful := false
	defer func() {
		if !graceful {
			web.ResetOnClose(s.conn)
		}
		s.conn.Close()
		s.events.unsubscribe(s)
	}()
	web.Bound(s.conn, 2*s.events.Heartbeat) // a client gone without a FIN is noticed at the next heartbeats
	ctx, left := s.ctx, s.watch()
	defer s.cancel()
	beat, poll, expiry := time.NewTicker(s.events.Heartbeat), time.NewTimer(0), time.NewTimer(time.Until(expires))
	defer beat.Stop()
	defer poll.Stop()
	defer expiry.Stop()
	for ready := false; ; {
		select {
		case <-s.wake:
		case <-poll.C:
		case <-beat.C:
			if !s.write(keepAlive) {
				return
			}
			continue
		case <-expiry.C:
			graceful = s.write(expiredEvent)
			return
		case <-s.gone:
			return
		case <-left:
			return
		}
		next, err := s.sendChanges(ctx, cur)
		switch {
		case errors.Is(err, pg.ErrUnavailable):
			poll.Reset(time.Second) // the database is away: try again shortly, stay open
			continue
		case errors.Is(err, fair.ErrBusy):
			return // the stream ended while its read waited
		case errors.Is(err, ErrCursorExpired) && s.write(s.frame(next, "resync")):
		case err != nil:
			return // the client is gone, or too far behind
		}
		if cur = &next; !ready {
			if ready = s.write(s.frame(next, "ready")); !ready {
				return
			}
		}
		poll.Reset(s.events.PollEvery/2 + rand.N(s.events.PollEvery))
	}
}

// watch is closed when the client closes the connection or sends anything: the answer
// said Connection: close, so it has nothing more to send. That ends the stream, and the
// read the stream may be waiting for.
func (s *stream) watch() <-chan struct{} {
	left := make(chan struct{})
	go func() {
		s.conn.Read(make([]byte, 1)) //nolint:errcheck // any outcome means the same
		close(left)
		s.cancel()
	}()
	return left
}

// sendChanges reads the feed after cur, a page at a time, writing each page's events at
// once, and returns where it got; from now, when cur is nil, it only reads where now is.
// A page is at most streamPage changes and stops at about streamPageBytes of events: a
// stream holds no more than that while its client takes it.
func (s *stream) sendChanges(ctx context.Context, cur *Cursor) (Cursor, error) {
	if cur == nil {
		return s.events.feed.Now(ctx)
	}
	next := *cur
	for {
		page, err := s.events.feed.Read(ctx, s.userID, next, streamPage)
		if err != nil {
			return page.Next, err
		}
		var more bool
		next, more = page.Next, page.More
		buf := web.GetBuffer()
		for i := range page.Changes {
			c := &page.Changes[i]
			if *buf = appendChangeEvent(*buf, c, s.userID); len(*buf) >= streamPageBytes && i < len(page.Changes)-1 {
				next, more = c.At, true
				break
			}
		}
		sent := len(*buf) == 0 || s.write(*buf)
		web.PutBuffer(buf)
		switch {
		case !sent:
			return next, errClientGone
		case !more:
			return next, nil
		}
	}
}

var errClientGone = errors.New("the client stopped taking events")

// write sends a frame within WriteTimeout.
func (s *stream) write(frame []byte) bool {
	s.conn.SetWriteDeadline(time.Now().Add(s.events.WriteTimeout)) //nolint:errcheck // fails only on a closed connection, as the write then does
	_, err := s.conn.Write(frame)
	return err == nil
}

// The frames that carry no change are the same for every stream.
var (
	keepAlive    = []byte(": keep-alive\n\n")
	expiredEvent = []byte("event: expired\ndata: {}\n\n")
)

// frame is a Server-Sent Event that names a place in the feed: ready or resync.
func (s *stream) frame(c Cursor, name string) []byte {
	id := c.Encode(s.userID)
	return append(appendFrameHead(nil, id, name), `{"cursor":"`+id+`"}`+"\n\n"...)
}

func appendFrameHead(b []byte, id, name string) []byte {
	b = append(append(append(b, "id: "...), id...), "\nevent: "...)
	return append(append(b, name...), "\ndata: "...)
}

// appendChangeEvent frames a change: task.created or task.updated with the task, as the
// REST API shows it, or task.deleted with its id and version.
func appendChangeEvent(b []byte, c *Change, userID string) []byte {
	switch {
	case c.Deleted:
		b = appendFrameHead(b, c.At.Encode(userID), "task.deleted")
		b = strconv.AppendInt(append(b, `{"id":`...), c.Task.ID, 10)
		b = append(strconv.AppendInt(append(b, `,"version":`...), c.Task.Version, 10), '}')
	case c.Created:
		b = task.AppendJSON(appendFrameHead(b, c.At.Encode(userID), "task.created"), &c.Task)
	default:
		b = task.AppendJSON(appendFrameHead(b, c.At.Encode(userID), "task.updated"), &c.Task)
	}
	return append(b, "\n\n"...)
}
