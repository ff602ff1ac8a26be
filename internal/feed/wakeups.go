package feed

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"log/slog"
	"sort"
	"sync"
	"time"

	"taskflow/internal/pg"

	"github.com/jackc/pgx/v5"
)

// Wake-ups tell a stream, within milliseconds, that its user's feed has more. A write
// wakes this instance's streams of its user at once (Changed). Other instances hear of it
// by a NOTIFY sent after the write committed, outside its transaction: NOTIFY takes a
// lock on the whole database cluster from before its transaction commits until the commit
// is flushed (PostgreSQL's async.c, PreCommit_Notify), so notifying from the writing
// transaction had every write commit one at a time (docs/performance.md). Here one
// small transaction per instance notifies at a time, for every user written since the
// last. The feed itself is in the database: a wake-up that is lost only delays a change,
// to the stream's next poll.

// wakeupChannel is the NOTIFY channel; a payload is a wakeup in JSON.
const wakeupChannel = "taskflow_changes"

type wakeup struct {
	From  string   `json:"from"` // the sending instance, which skips its own
	Users []string `json:"users"`
}

// Wakeups sends this instance's wake-ups and listens for the others'.
type Wakeups struct {
	events   *Streams
	db       *pg.DB
	listen   *pgx.ConnConfig // DATABASE_LISTEN_URL: direct, since a transaction pooler drops LISTEN's notifications
	log      *slog.Logger
	instance string
	Linger   time.Duration // the listener's connection outlives the last stream by this much
	// notifyEvery spaces this instance's notifications: at most 100 a second, each for
	// every user written since the last went out, however fast the writes come. Sent back
	// to back, they slowed busy writes (docs/performance.md, "Wake-ups").
	notifyEvery time.Duration

	mu      sync.Mutex
	pending map[string]bool // users written since the last notification went out
	kick    chan struct{}
}

func NewWakeups(events *Streams, db *pg.DB, listen *pgx.ConnConfig, log *slog.Logger) *Wakeups {
	return &Wakeups{events: events, db: db, listen: listen, log: log, instance: rand.Text(),
		Linger: 30 * time.Second, notifyEvery: 10 * time.Millisecond, pending: map[string]bool{}, kick: make(chan struct{}, 1)}
}

// Changed wakes userID's streams: on this instance at once, on the others with the next
// notification.
func (w *Wakeups) Changed(userID string) {
	w.events.Wake(userID)
	w.mu.Lock()
	w.pending[userID] = true
	w.mu.Unlock()
	w.poke()
}

func (w *Wakeups) poke() {
	select {
	case w.kick <- struct{}{}:
	default: // a notification will go out anyway
	}
}

// Notify sends the pending wake-ups until ctx ends, one notification at a time and
// notifyEvery apart: those that pile up meanwhile go out together in the next.
func (w *Wakeups) Notify(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.kick:
		}
		w.send(ctx)
		select {
		case <-ctx.Done():
			return
		case <-time.After(w.notifyEvery):
		}
	}
}

// send notifies the other instances of the users written since the last send.
func (w *Wakeups) send(ctx context.Context) {
	w.mu.Lock()
	users := w.pending
	w.pending = map[string]bool{}
	w.mu.Unlock()
	// A wake-up need not be durable: lost, it delays a change to the next poll, and after
	// a crash every listener reconnects and wakes all its streams. So its commit does not
	// wait for the WAL to reach disk, which also frees the notify lock at once.
	err := w.db.Row(ctx, func(r pgx.Row) error { return r.Scan(nil, nil) },
		`SELECT set_config('synchronous_commit', 'off', true), count(pg_notify($1, p)) FROM unnest($2::text[]) p`,
		wakeupChannel, wakeupPayloads(w.instance, users))
	if err != nil && ctx.Err() == nil {
		// Sent again with the next ones, a second from now at the latest.
		w.log.Warn("wake-up notification failed; retrying", "users", len(users), "err", err)
		w.mu.Lock()
		for u := range users {
			w.pending[u] = true
		}
		w.mu.Unlock()
		time.AfterFunc(time.Second, w.poke)
	}
}

// wakeupPayloads names the users in notifications within NOTIFY's 8000 bytes.
func wakeupPayloads(from string, users map[string]bool) []string {
	const maxPayload = 7900
	var payloads []string
	p := wakeup{From: from}
	size := 0
	flush := func() {
		b, _ := json.Marshal(p) //nolint:errcheck // strings always encode
		payloads = append(payloads, string(b))
		p.Users, size = nil, 0
	}
	names := make([]string, 0, len(users))
	for u := range users {
		names = append(names, u)
	}
	sort.Strings(names)
	for _, u := range names {
		// A user id is at most 255 bytes, which JSON may escape to six each.
		if size+6*len(u)+3 > maxPayload-len(from)-32 {
			flush()
		}
		p.Users = append(p.Users, u)
		size += 6*len(u) + 3
	}
	if len(p.Users) > 0 {
		flush()
	}
	return payloads
}

// Listen keeps a LISTEN connection while streams are open, and linger after, waking the
// streams of the users each notification names; until ctx ends. It holds no connection
// while no stream is open, so that it never keeps a Neon compute awake for nobody. At
// each (re)connection it wakes every stream, for the notifications it could not hear.
func (w *Wakeups) Listen(ctx context.Context) {
	const firstRetry, lastRetry = 250 * time.Millisecond, time.Second
	backoff := firstRetry
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.events.opened:
		}
		for ctx.Err() == nil && !w.events.idle(w.Linger) {
			connected, err := w.listenOnce(ctx)
			if connected {
				backoff = firstRetry
			}
			if err == nil {
				continue
			}
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, lastRetry)
		}
	}
}

// listenOnce connects, listens and passes notifications on until the connection fails
// (an error) or no stream has been open for linger (nil).
func (w *Wakeups) listenOnce(ctx context.Context) (connected bool, err error) {
	connectCtx, cancel := context.WithTimeout(ctx, w.listen.ConnectTimeout+5*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(connectCtx, w.listen)
	if err == nil {
		_, err = conn.Exec(connectCtx, "LISTEN "+wakeupChannel)
	}
	if err != nil {
		if conn != nil {
			conn.Close(context.Background())
		}
		return false, err
	}
	defer conn.Close(context.Background())
	w.events.WakeAll()
	for {
		waitCtx, cancel := context.WithTimeout(ctx, w.events.Heartbeat)
		n, err := conn.WaitForNotification(waitCtx)
		cancel()
		switch {
		case err == nil:
			w.dispatch(n.Payload)
		case ctx.Err() != nil:
			return true, nil
		case !errors.Is(err, context.DeadlineExceeded):
			w.log.Warn("wake-ups: the listener lost its connection; reconnecting", "err", err)
			return true, err
		default: // a quiet while: see that the connection lives
			pingCtx, cancel := context.WithTimeout(ctx, w.db.Timeout)
			err = conn.Ping(pingCtx)
			cancel()
			if err != nil {
				w.log.Warn("wake-ups: the listener lost its connection; reconnecting", "err", err)
				return true, err
			}
		}
		if w.events.idle(w.Linger) {
			return true, nil
		}
	}
}

func (w *Wakeups) dispatch(payload string) {
	var n wakeup
	if json.Unmarshal([]byte(payload), &n) != nil || n.From == w.instance {
		return
	}
	for _, u := range n.Users {
		w.events.Wake(u)
	}
}
