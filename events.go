package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

// Live updates, as the contract's "Live updates" section has them. Every change of a task
// notifies on eventsChannel from the statement that makes it (a trigger, schema.sql), and
// PostgreSQL delivers the notification to every listening session when, and only if, the
// change commits. Each instance listens on one connection of its own, held only while at
// least one stream is open, and hands each change to the open streams of its user.

const eventsChannel = "taskflow_tasks"

// Events is one instance's fan-out: its open streams, by user, and its listener.
type Events struct {
	listenConfig *pgx.ConnConfig // DATABASE_LISTEN_URL, or DATABASE_URL
	listenURLVar string          // which of the two, for the log
	store        *Store          // the self-check notifies through it, as writes do
	log          *slog.Logger
	maxPerUser   int
	maxTotal     int

	// Timings; tests shorten them.
	readyWait time.Duration // how long a new stream waits for the listener
	checkWait time.Duration // how long the listener waits for its own notification
	heartbeat time.Duration // a comment line at least this often keeps proxies from cutting a stream
	linger    time.Duration // the listener's connection outlives the last stream by this much

	mu      sync.Mutex
	streams map[string]map[*stream]bool // by userKey, which is how notifications name users
	total   int
	live    bool      // the listener listens and received its own notification
	fault   error     // why the last try to listen failed; nil once live
	faultAt time.Time // when
	idleAt  time.Time // when the last stream ended
	wake    chan struct{}
	closed  bool
}

// stream is one open event stream.
type stream struct {
	userID  string
	key     string
	events  chan *event   // what is to be sent, in order
	pending atomic.Int64  // bytes in events
	ready   bool          // its ready event is in events
	gone    chan struct{} // closed when Events drops it: too slow, or shutting down
}

// event is one Server-Sent Event, framed once for all the streams it goes to.
type event struct {
	frame []byte // event: name, data: data
	size  int64  // the data's bytes, which streamBytes counts
}

func newEvent(name string, data []byte) *event {
	frame := make([]byte, 0, len("event: \ndata: \n\n")+len(name)+len(data))
	frame = append(append(append(frame, "event: "...), name...), "\ndata: "...)
	frame = append(append(frame, data...), "\n\n"...)
	return &event{frame: frame, size: int64(len(data))}
}

// The events that carry no change are the same for every stream.
var (
	readyEvent   = newEvent("ready", []byte("{}"))
	resyncEvent  = newEvent("resync", []byte("{}"))
	expiredEvent = newEvent("expired", []byte("{}"))
	keepAlive    = []byte(": keep-alive\n\n")
)

// A stream may have streamBuffer events, and streamBytes of them, waiting for its
// client; a client so far behind is cut loose (it reconnects and refetches) rather than
// slowing others or holding memory without bound. That is 64 ordinary changes, or 36
// of the largest; the streams of one user share their events' bytes.
const (
	streamBuffer = 64
	streamBytes  = 256 << 10
)

func newEvents(listenConfig *pgx.ConnConfig, listenURLVar string, store *Store, log *slog.Logger, maxPerUser, maxTotal int) *Events {
	return &Events{
		listenConfig: listenConfig,
		listenURLVar: listenURLVar,
		store:        store,
		log:          log,
		maxPerUser:   maxPerUser,
		maxTotal:     maxTotal,
		readyWait:    5 * time.Second,
		checkWait:    3 * time.Second,
		heartbeat:    15 * time.Second,
		linger:       30 * time.Second,
		streams:      map[string]map[*stream]bool{},
		wake:         make(chan struct{}, 1),
	}
}

// userKey is how a notification names a user: the hex SHA-256 of the id, 64 characters
// whatever the id, which keeps the largest task's notification under NOTIFY's limit.
func userKey(userID string) string {
	sum := sha256.Sum256([]byte(userID))
	return hex.EncodeToString(sum[:])
}

var (
	errTooManyStreams = &apiError{status: http.StatusTooManyRequests, detail: "too many open event streams for this user (MAX_STREAMS_PER_USER)"}
	errStreamsFull    = &apiError{status: http.StatusServiceUnavailable, detail: "this server holds all the event streams it may (MAX_STREAMS); try again shortly"}
	errEventsDown     = &apiError{status: http.StatusServiceUnavailable, detail: "live updates are unavailable: the database does not answer; try again shortly"}
	errShuttingDown   = &apiError{status: http.StatusServiceUnavailable, detail: "the server is shutting down"}
	errSwallowed      = &apiError{status: http.StatusServiceUnavailable,
		detail: "live updates are unavailable: the server's database listener receives no notifications; its operator must set DATABASE_LISTEN_URL to the database's direct (non-pooler) URL"}
	// errIdle ends a listener connection nobody has needed for linger.
	errIdle = errors.New("no stream for a while")
)

// subscribe opens a stream for userID and returns it once the listener is live (the
// stream's first event, ready, has been taken). It fails at once past the limits, or
// while the listener's last try found that notifications never come back, and after
// readyWait when the listener cannot listen.
func (e *Events) subscribe(ctx context.Context, userID string) (*stream, error) {
	key := userKey(userID)
	e.mu.Lock()
	switch {
	case e.closed:
		e.mu.Unlock()
		return nil, errShuttingDown
	case e.total >= e.maxTotal:
		e.mu.Unlock()
		return nil, errStreamsFull
	case len(e.streams[key]) >= e.maxPerUser:
		e.mu.Unlock()
		return nil, errTooManyStreams
	case e.fault == errSwallowed && time.Since(e.faultAt) < time.Minute:
		e.mu.Unlock()
		return nil, errSwallowed
	}
	s := &stream{userID: userID, key: key, events: make(chan *event, streamBuffer), gone: make(chan struct{})}
	if e.streams[key] == nil {
		e.streams[key] = map[*stream]bool{}
	}
	e.streams[key][s] = true
	e.total++
	if e.live {
		e.readyLocked(s)
	}
	e.mu.Unlock()
	select {
	case e.wake <- struct{}{}:
	default:
	}

	timer := time.NewTimer(e.readyWait)
	defer timer.Stop()
	select {
	case ev := <-s.events: // ready
		s.pending.Add(-ev.size)
		return s, nil
	case <-s.gone:
	case <-ctx.Done():
	case <-timer.C:
	}
	e.unsubscribe(s)
	e.mu.Lock()
	defer e.mu.Unlock()
	switch {
	case e.closed:
		return nil, errShuttingDown
	case e.fault == errSwallowed:
		return nil, errSwallowed
	}
	return nil, errEventsDown
}

// unsubscribe forgets a stream; its sender has stopped, or never will start.
func (e *Events) unsubscribe(s *stream) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.dropLocked(s)
}

func (e *Events) dropLocked(s *stream) {
	if !e.streams[s.key][s] {
		return
	}
	delete(e.streams[s.key], s)
	if len(e.streams[s.key]) == 0 {
		delete(e.streams, s.key)
	}
	e.total--
	if e.total == 0 {
		e.idleAt = time.Now()
	}
	close(s.gone)
}

// sendLocked hands an event to a stream without waiting: a stream whose client is so far
// behind that its buffer is full is dropped instead.
func (e *Events) sendLocked(s *stream, ev *event) {
	if s.pending.Add(ev.size) > streamBytes {
		e.dropLocked(s)
		return
	}
	select {
	case s.events <- ev:
	default:
		e.dropLocked(s)
	}
}

// Close ends every stream at once, for shutdown: the server's Shutdown does not know the
// connections the streams took over.
func (e *Events) Close() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.closed = true
	for _, streams := range e.streams {
		for s := range streams {
			e.dropLocked(s)
		}
	}
}

func (e *Events) readyLocked(s *stream) {
	s.ready = true
	e.sendLocked(s, readyEvent)
}

// setLive records whether the listener is live. Becoming live, it tells every stream:
// ready to a new one, resync to one that may have missed changes while it was not. Found
// to receive nothing, it turns away the streams still waiting.
func (e *Events) setLive(live bool, fault error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.live, e.fault = live, fault
	if fault != nil {
		e.faultAt = time.Now()
	}
	for _, streams := range e.streams {
		for s := range streams {
			switch {
			case live && s.ready:
				e.sendLocked(s, resyncEvent)
			case live:
				e.readyLocked(s)
			case fault == errSwallowed && !s.ready:
				e.dropLocked(s)
			}
		}
	}
}

// notification is what the tasks trigger sends (schema.sql).
type notification struct {
	User string `json:"user"`
	Op   string `json:"op"`   // created, updated or deleted
	ID   int64  `json:"id"`   // deleted
	Task *Task  `json:"task"` // created and updated, without user_id
}

// dispatch hands one notification to the ready streams of its user.
func (e *Events) dispatch(payload string) {
	var n notification
	if err := json.Unmarshal([]byte(payload), &n); err != nil || n.User == "" {
		return // the self-check's, or not ours
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	streams := e.streams[n.User]
	if len(streams) == 0 {
		return
	}
	var ev *event
	switch n.Op {
	case "deleted":
		ev = newEvent("task.deleted", []byte(`{"id":`+strconv.FormatInt(n.ID, 10)+`}`))
	case "created", "updated":
		if n.Task == nil {
			return
		}
		for s := range streams {
			n.Task.UserID = s.userID // all the same: they share the user's key
			break
		}
		ev = newEvent("task."+n.Op, appendTask(nil, n.Task))
	default:
		return
	}
	for s := range streams {
		if s.ready {
			e.sendLocked(s, ev)
		}
	}
}

// Listen keeps the listener going until ctx ends: connected while streams are open (and
// linger after), reconnecting when cut, 250 ms to 1 s apart, and idle without a
// connection while none are, so that it never keeps a Neon compute awake for nobody, nor
// wakes one.
func (e *Events) Listen(ctx context.Context) {
	const firstRetry, lastRetry = 250 * time.Millisecond, time.Second
	backoff := firstRetry
	for {
		select {
		case <-ctx.Done():
			return
		case <-e.wake:
		}
		if !e.wanted() {
			continue
		}
		wasLive, err := e.listenOnce(ctx)
		switch {
		case ctx.Err() != nil:
			return
		case wasLive:
			backoff = firstRetry
		}
		if errors.Is(err, errIdle) || err == errSwallowed {
			// Nobody wants it; or nothing would come: streams are turned away for a
			// minute, and the first one after that tries again.
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, lastRetry)
		select { // try again, if a stream still wants it
		case e.wake <- struct{}{}:
		default:
		}
	}
}

func (e *Events) wanted() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.total > 0 || time.Since(e.idleAt) < e.linger
}

// listenOnce connects, listens, checks that its own notification comes back, and then
// passes on notifications until the connection fails or nobody has needed it for linger.
// It reports whether it got that far.
func (e *Events) listenOnce(ctx context.Context) (wasLive bool, err error) {
	conn, err := e.connect(ctx)
	if err != nil {
		e.setLive(false, err)
		return false, err
	}
	defer conn.Close(context.Background())
	e.setLive(true, nil)
	defer e.setLive(false, nil)
	for {
		waitCtx, cancel := context.WithTimeout(ctx, e.heartbeat)
		n, err := conn.WaitForNotification(waitCtx)
		cancel()
		switch {
		case err == nil:
			e.dispatch(n.Payload)
			if !e.wanted() { // other users' changes alone must not keep it open
				return true, errIdle
			}
			continue
		case ctx.Err() != nil:
			return true, ctx.Err()
		case !errors.Is(err, context.DeadlineExceeded):
			e.log.Warn("live updates: the listener lost its connection; reconnecting", "err", err)
			return true, err
		}
		// A quiet while: end the connection if nobody needs it, or see that it lives.
		if !e.wanted() {
			return true, errIdle
		}
		pingCtx, cancel := context.WithTimeout(ctx, e.checkWait)
		err = conn.Ping(pingCtx)
		cancel()
		if err != nil {
			e.log.Warn("live updates: the listener lost its connection; reconnecting", "err", err)
			return true, err
		}
	}
}

// Check tries the listener once, at start, so that a DATABASE_LISTEN_URL to fix is in
// the log before the first stream opens; the connection does not stay open.
func (e *Events) Check(ctx context.Context) {
	conn, err := e.connect(ctx)
	if err == nil {
		conn.Close(context.Background())
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if err == errSwallowed {
		e.fault, e.faultAt = err, time.Now()
	}
}

// connect opens the listener's connection, LISTENs, and checks that a notification sent
// through the store, as a write's would be, comes back on it.
func (e *Events) connect(ctx context.Context) (*pgx.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, e.listenConfig.ConnectTimeout+e.checkWait+5*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, e.listenConfig)
	if err != nil {
		return nil, err
	}
	if _, err = conn.Exec(ctx, "LISTEN "+eventsChannel); err == nil {
		err = e.selfCheck(ctx, conn)
	}
	if err != nil {
		conn.Close(context.Background())
		return nil, err
	}
	return conn, nil
}

// selfCheck sends a notification and waits checkWait for it. One that does not come back
// means a transaction-mode pooler (Neon's -pooler endpoint, PgBouncer) between: it
// accepts LISTEN and then delivers nothing. That is logged, with the fix.
func (e *Events) selfCheck(ctx context.Context, conn *pgx.Conn) error {
	nonce := `{"check":"` + rand.Text() + `"}`
	if err := e.store.Notify(ctx, eventsChannel, nonce); err != nil {
		return err
	}
	checkCtx, cancel := context.WithTimeout(ctx, e.checkWait)
	defer cancel()
	for {
		n, err := conn.WaitForNotification(checkCtx)
		switch {
		case err == nil && n.Payload == nonce:
			return nil
		case err == nil:
			continue // someone's change, from before the check
		case checkCtx.Err() == nil:
			return err
		}
		e.log.Error(fmt.Sprintf("live updates are off: the listener's connection (%s, %s) received none of its own notifications within %s; "+
			"it goes through a transaction-mode pooler (such as Neon's -pooler endpoint), which cannot carry LISTEN: set DATABASE_LISTEN_URL to the database's direct URL",
			e.listenURLVar, e.listenConfig.Host, e.checkWait))
		return errSwallowed
	}
}

// serve answers the stream's request and takes its connection over from net/http: the
// events are then sent as Server-Sent Events by a goroutine of the stream's own, after
// the ready event the stream was opened with, until its token expires (an expired event
// first), the client goes, or the stream is dropped (shutdown, or a client too far
// behind). It returns at once.
//
// Why take the connection: left to net/http, an idle stream holds the handler's goroutine
// (its stack grown by the middleware and the token check), a background reader, 10 KiB
// of buffers and the request. 10,000 idle streams held 326 MiB that way, 148 MiB taken
// over (make bench-live; docs/performance.md, "Live updates"). The access log therefore
// has a stream's line when it opens, not when it ends.
func (e *Events) serve(w http.ResponseWriter, s *stream, expires time.Time) {
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("X-Accel-Buffering", "no") // nginx: pass each event on at once
	// Identity: net/http neither chunks the body nor keeps the connection for another
	// request (Connection: close); the stream ends when the connection does.
	h.Set("Transfer-Encoding", "identity")
	w.WriteHeader(http.StatusOK)
	// retry: how long a browser's EventSource waits before it reconnects.
	io.WriteString(w, "retry: 2000\n") //nolint:errcheck // Flush reports it
	w.Write(readyEvent.frame)          //nolint:errcheck // as above
	rc := http.NewResponseController(w)
	if err := rc.Flush(); err != nil {
		e.unsubscribe(s) // the client went: nothing to answer
		return
	}
	conn, _, err := rc.Hijack()
	if err != nil {
		// Only a connection that is not HTTP/1 cannot be taken over, and this server
		// speaks no other. The stream has begun, so there is no error to answer: it ends,
		// and the client's EventSource reconnects.
		e.unsubscribe(s)
		e.log.Error("event stream: cannot take over the connection", "err", err)
		return
	}
	go e.send(conn, s, expires)
}

// send writes a stream's events to its connection until the stream ends, then closes it.
func (e *Events) send(conn net.Conn, s *stream, expires time.Time) {
	defer conn.Close()
	defer e.unsubscribe(s)
	// The answer said Connection: close, so the client has nothing more to send: its
	// closing the connection, or any byte it sends anyway, ends the stream. (Bytes of a
	// pipelined request that net/http had already read are dropped with it.)
	left := make(chan struct{})
	go func() {
		conn.Read(make([]byte, 1)) //nolint:errcheck // any outcome means the same
		close(left)
	}()
	beat := time.NewTicker(e.heartbeat)
	defer beat.Stop()
	expiry := time.NewTimer(time.Until(expires))
	defer expiry.Stop()
	write := func(frame []byte) bool {
		conn.SetWriteDeadline(time.Now().Add(eventWriteTimeout)) //nolint:errcheck // fails only on a closed connection, as the write then does
		_, err := conn.Write(frame)
		return err == nil
	}
	for {
		var frame []byte
		select {
		case ev := <-s.events:
			s.pending.Add(-ev.size)
			frame = ev.frame
		case <-beat.C:
			frame = keepAlive
		case <-expiry.C:
			write(expiredEvent.frame)
			return
		case <-s.gone:
			return
		case <-left:
			return
		}
		if !write(frame) {
			return
		}
	}
}

// eventWriteTimeout is how long one event may take to reach a client.
const eventWriteTimeout = 10 * time.Second
