package main

import (
	"context"
	_ "embed"
	"errors"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"taskflow/internal/fair"
	"taskflow/internal/feed"
	"taskflow/internal/task"
	"taskflow/internal/web"
)

// router is the part of *http.ServeMux that addRoutes needs; the OpenAPI test passes a
// recorder to learn which routes exist.
type router interface {
	Handle(pattern string, h http.Handler)
}

// service is what the handlers are made of.
type service struct {
	store     *Store
	feed      *feed.Feed
	auth      *Authenticator
	events    *feed.Streams
	users     *fair.Users // each user's turns and database budget
	writeRate *fair.Rate  // MAX_WRITES_PER_USER
	wakeups   *feed.Wakeups
}

// addRoutes is the whole API at a glance.
func addRoutes(mux router, s service) {
	mux.Handle("GET /healthz", handleHealthz())
	mux.Handle("GET /readyz", handleReadyz(s.store))
	mux.Handle("GET /openapi.json", handleOpenAPI())

	mux.Handle("GET /api/{user_id}/tasks", authed(s.auth, handleListTasks(s.store, s.feed, s.users)))
	mux.Handle("POST /api/{user_id}/tasks", authed(s.auth, handleCreateTask(s.store, s.writeRate, s.wakeups)))
	mux.Handle("GET /api/{user_id}/tasks/{id}", authed(s.auth, handleGetTask(s.store)))
	mux.Handle("PUT /api/{user_id}/tasks/{id}", authed(s.auth, handleUpdateTask(s.store, s.writeRate, s.wakeups)))
	mux.Handle("DELETE /api/{user_id}/tasks/{id}", authed(s.auth, handleDeleteTask(s.store, s.writeRate, s.wakeups)))
	mux.Handle("PATCH /api/{user_id}/tasks/{id}/complete", authed(s.auth, handleToggleTask(s.store, s.writeRate, s.wakeups)))
	mux.Handle("GET /api/{user_id}/changes", authed(s.auth, handleChanges(s.feed)))
	mux.Handle(eventsRoute, authed(s.auth, handleEvents(s.events)))
}

// eventsRoute is the live stream, the one route that may take its token from the query:
// a browser's EventSource cannot send headers.
const eventsRoute = "GET /api/{user_id}/events"

// newHandler assembles the server: request log → panic recovery → CORS → the mux, whose
// own 404 and 405 answers are turned into JSON; each /api route checks its token first.
func newHandler(log *slog.Logger, s service, corsOrigins []string) http.Handler {
	mux := http.NewServeMux()
	addRoutes(mux, s)
	return web.Log(log, web.Recover(web.CORS(corsOrigins, web.JSONErrors(mux))))
}

// handlerFunc is a handler that returns its error to one place, writeError, so that no
// handler can forget to return after writing one.
type handlerFunc func(w http.ResponseWriter, r *http.Request) error

func (h handlerFunc) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if err := h(w, r); err != nil {
		writeError(w, r, err)
	}
}

// userHandler serves an authenticated user's request for their own tasks.
type userHandler func(w http.ResponseWriter, r *http.Request, who caller) error

// authed checks the bearer token and that the path names its user. Handlers receive the
// token's caller, never the path's user, and pass who.userID to every store call.
func authed(auth *Authenticator, h userHandler) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		who, err := auth.authenticate(r, r.Pattern == eventsRoute)
		if err != nil {
			return err
		}
		web.NoteUser(r.Context(), who.userID)
		if r.PathValue("user_id") != who.userID {
			return errForbidden
		}
		return h(w, r, who)
	}
}

func handleHealthz() handlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		web.WriteJSON(w, http.StatusOK, map[string]string{"status": "ok"})
		return nil
	}
}

func handleReadyz(store *Store) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		if err := store.db.Ping(r.Context()); err != nil {
			return err
		}
		web.WriteJSON(w, http.StatusOK, map[string]string{"status": "ready"})
		return nil
	}
}

//go:embed openapi.json
var openAPIDoc []byte

func handleOpenAPI() handlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		web.WriteBody(w, http.StatusOK, openAPIDoc)
		return nil
	}
}

// handleListTasks reads a list from the database in one of its user's turns (package
// fair), then sends it: a client that reads slowly, or not at all, holds no connection
// and no turn. Past its first part (web.PartSize bytes), only the tasks' ids are kept
// from the list's statement; their rows are read again a part at a time, each in a turn,
// as the client takes the answer, so that memory stays bounded however long the list. The headers and
// the order come from the statement's snapshot; a task read again shows its state then,
// and one deleted meanwhile is left out: that change is in the feed after X-Cursor.
func handleListTasks(store *Store, f *feed.Feed, users *fair.Users) userHandler {
	return func(w http.ResponseWriter, r *http.Request, who caller) error {
		q, err := parseListQuery(r.URL.RawQuery)
		if err != nil {
			return err
		}
		ctx := r.Context()
		// The incarnation before the statement's snapshot: a crash between them makes
		// the cursor one of an older incarnation, which is read with care, never the
		// other way round (internal/feed).
		incarnation, err := f.Incarnation(ctx)
		if err != nil {
			return err
		}
		buf := web.GetBuffer()
		*buf = append(*buf, '[')
		head, rest, err := readList(ctx, store, users, who.userID, q, buf)
		if err != nil {
			web.PutBuffer(buf)
			return err
		}
		etag := listETag(head, q)
		if match, err := web.NoneMatch(r, etag); match || err != nil {
			web.PutBuffer(buf)
			if err == nil {
				writeNotModified(w, etag)
			}
			return err
		}
		at, err := feed.CursorAt(head.Snapshot, incarnation)
		if err != nil {
			web.PutBuffer(buf)
			return err
		}
		list := web.NewJSONStream(w, r, store.db.Timeout)
		list.Begin(http.Header{"Etag": {etag}, "X-Total-Count": {strconv.FormatInt(head.Total, 10)},
			"X-Cursor": {at.Encode(who.userID)}}, buf)
		return list.End("]\n", sendRest(ctx, list, store, users, who.userID, rest))
	}
}

// sendRest sends a list's tasks past its first part, read again a part at a time.
func sendRest(ctx context.Context, list *web.JSONStream, store *Store, users *fair.Users, userID string, rest []int64) error {
	var part []task.Task
	for len(rest) > 0 {
		ids := rest[:min(len(rest), listPartTasks)]
		rest, part = rest[len(ids):], part[:0]
		if err := inTurn(ctx, users, userID, func() error { return store.TasksByID(ctx, userID, ids, &part) }); err != nil {
			return err
		}
		for i := range part {
			if err := list.Add(false, func(b []byte) []byte { return task.AppendJSON(b, &part[i]) }); err != nil {
				return err
			}
		}
	}
	return nil
}

// readList reads a list in one of its user's turns: its head, its first part encoded
// into buf as the rows come, and only the ids of the tasks past it.
func readList(ctx context.Context, store *Store, users *fair.Users, userID string, q ListQuery, buf *[]byte) (head ListHead, rest []int64, err error) {
	err = inTurn(ctx, users, userID, func() error {
		var err error
		head, err = store.ListTasks(ctx, userID, q, func(t *task.Task) error {
			switch {
			case len(*buf) >= web.PartSize:
				rest = append(rest, t.ID)
				return nil
			case len(*buf) > 1:
				*buf = append(*buf, ',')
			}
			*buf = task.AppendJSON(*buf, t)
			return nil
		})
		return err
	})
	return head, rest, err
}

// listPartTasks is how many tasks past a list's first part are read again at once.
const listPartTasks = 100

// waitForTurn bounds each wait of a request for its user's turn (package fair), after
// which it is a 503: a user whose own requests keep the database that busy. It bounds the
// wait only: neither the statement after it nor the answer's writing. (A variable for
// the tests.)
var waitForTurn = 10 * time.Second

// inTurn runs f in one of the user's turns, once it comes within waitForTurn.
func inTurn(ctx context.Context, users *fair.Users, userID string, f func() error) error {
	wait, cancel := context.WithTimeout(ctx, waitForTurn)
	defer cancel()
	return users.Do(wait, userID, f)
}

// admit lets a write of the user's through within MAX_WRITES_PER_USER. Past it, the
// write is refused with a 429, unless it is a keyed retry of a write already made: that
// one is answered with its first answer (replayed), and nothing is written. (Finding out
// costs a read by primary key, as a GET does; reads have no rate.)
func admit(ctx context.Context, rate *fair.Rate, store *Store, userID string, key *IdempotencyKey) (first task.Task, replayed bool, err error) {
	if rate.Allow(userID, time.Now()) {
		return first, false, nil
	}
	if key == nil {
		return first, false, errTooManyWrites
	}
	first, err = store.Replay(ctx, userID, key)
	if errors.Is(err, ErrNotFound) {
		return first, false, errTooManyWrites
	}
	return first, err == nil, err // else a key reused for another request, or no database
}

// wake wakes the user's streams after a write that was made, or may have been, and
// returns the write's error. A replay wakes them too: its first try may have committed
// and lost its answer, and with it the wake-up. Wake-ups are hints, so one too many
// costs a read.
func wake(wakeups *feed.Wakeups, userID string, err error) error {
	if err == nil || errors.Is(err, ErrOutcomeUnknown) {
		wakeups.Changed(userID)
	}
	return err
}

func handleCreateTask(store *Store, rate *fair.Rate, wakeups *feed.Wakeups) userHandler {
	return func(w http.ResponseWriter, r *http.Request, who caller) error {
		if err := readCreateCondition(r); err != nil {
			return err
		}
		in, body, err := readNewTask(w, r)
		if err != nil {
			return err
		}
		key, err := readIdempotencyKey(r, body)
		if err != nil {
			return err
		}
		t, replayed, err := admit(r.Context(), rate, store, who.userID, key)
		if err == nil && !replayed {
			t, replayed, err = store.CreateTask(r.Context(), who.userID, *in.Title, in.Description, key)
		}
		if err := wake(wakeups, who.userID, err); err != nil {
			return err
		}
		// A path, not an absolute URL (RFC 9110 10.2.2 allows either): a client resolves
		// it against its request's URL, so a proxy in front need rewrite nothing.
		w.Header().Set("Location", taskPath(who.userID, t.ID))
		writeTask(w, http.StatusCreated, t, replayed)
		return nil
	}
}

func handleGetTask(store *Store) userHandler {
	return func(w http.ResponseWriter, r *http.Request, who caller) error {
		id, err := taskID(r)
		if err != nil {
			return err
		}
		t, err := store.GetTask(r.Context(), who.userID, id)
		if err != nil {
			return err
		}
		etag := taskETag(t.Version)
		if match, err := web.NoneMatch(r, etag); match || err != nil {
			if err == nil {
				writeNotModified(w, etag)
			}
			return err
		}
		writeTask(w, http.StatusOK, t, false)
		return nil
	}
}

func handleUpdateTask(store *Store, rate *fair.Rate, wakeups *feed.Wakeups) userHandler {
	return func(w http.ResponseWriter, r *http.Request, who caller) error {
		id, cond, err := readTarget(r)
		if err != nil {
			return err
		}
		patch, err := readPatch(w, r)
		if err != nil {
			return err
		}
		if _, _, err := admit(r.Context(), rate, store, who.userID, nil); err != nil {
			return err
		}
		t, err := store.UpdateTask(r.Context(), who.userID, id, patch, cond)
		if err := wake(wakeups, who.userID, err); err != nil {
			return err
		}
		writeTask(w, http.StatusOK, t, false)
		return nil
	}
}

func handleDeleteTask(store *Store, rate *fair.Rate, wakeups *feed.Wakeups) userHandler {
	return func(w http.ResponseWriter, r *http.Request, who caller) error {
		id, cond, err := readTarget(r)
		if err != nil {
			return err
		}
		if _, _, err := admit(r.Context(), rate, store, who.userID, nil); err != nil {
			return err
		}
		if err := wake(wakeups, who.userID, store.DeleteTask(r.Context(), who.userID, id, cond)); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
}

func handleToggleTask(store *Store, rate *fair.Rate, wakeups *feed.Wakeups) userHandler {
	return func(w http.ResponseWriter, r *http.Request, who caller) error {
		id, cond, err := readTarget(r)
		if err != nil {
			return err
		}
		key, err := readIdempotencyKey(r, nil)
		if err != nil {
			return err
		}
		t, replayed, err := admit(r.Context(), rate, store, who.userID, key)
		if err == nil && !replayed {
			t, replayed, err = store.ToggleTask(r.Context(), who.userID, id, cond, key)
		}
		if err := wake(wakeups, who.userID, err); err != nil {
			return err
		}
		writeTask(w, http.StatusOK, t, replayed)
		return nil
	}
}

// handleChanges serves a page of the user's feed: {"changes": [...], "cursor", "more"},
// read a part at a time (each a read of the feed, which shares the database fairly) and
// sent as it comes: no read waits on the client.
func handleChanges(f *feed.Feed) userHandler {
	return func(w http.ResponseWriter, r *http.Request, who caller) error {
		from, limit, err := parseChangesQuery(r.URL.RawQuery, who.userID)
		if err != nil {
			return err
		}
		page, buf := web.NewJSONStream(w, r, f.Timeout()), web.GetBuffer()
		*buf = append(*buf, `{"changes":[`...)
		page.Begin(nil, buf)
		n, next, more := 0, from, true
		for more && n < limit {
			wait, cancel := context.WithTimeout(r.Context(), waitForTurn)
			part, err := f.Read(wait, who.userID, next, min(limit-n, listPartTasks))
			cancel()
			if err != nil {
				return page.End("", err)
			}
			for i := range part.Changes {
				n++
				if err := page.Add(n == 1, func(b []byte) []byte { return feed.AppendChange(b, &part.Changes[i]) }); err != nil {
					return page.End("", err)
				}
			}
			next, more = part.Next, part.More
		}
		tail := `],"cursor":"` + next.Encode(who.userID) + `","more":` + strconv.FormatBool(more) + "}\n"
		return page.End(tail, nil)
	}
}

// handleEvents opens a stream of the user's feed (internal/feed/stream.go): from the
// Last-Event-ID an EventSource sends when it reconnects, else from since=, else from now.
func handleEvents(events *feed.Streams) userHandler {
	return func(w http.ResponseWriter, r *http.Request, who caller) error {
		if web.RefusedOrigin(r) {
			// A browser would not show the answer to the page, but a stream opened for
			// it would hold a place until the page went away.
			return errRefusedOrigin
		}
		if !time.Now().Before(who.expires) {
			// Within the clock leeway the token still authenticates, but a stream would
			// only say it expired: EventSource would reconnect with it again and again.
			return unauthorized("token has expired")
		}
		from, err := parseStreamStart(r, who.userID)
		if err != nil {
			return err
		}
		if r.Method == http.MethodHead {
			// A GET route answers HEAD too. A stream's answer has no end, so its head is
			// all there is to send: no stream is opened, and no event follows. It says
			// whether one would be, which an EventSource refused cannot learn.
			if err := events.Admits(who.userID); err != nil {
				return err
			}
			w.Header().Set("Content-Type", "text/event-stream")
			w.WriteHeader(http.StatusOK)
			return nil
		}
		return events.Serve(w, who.userID, from, who.expires)
	}
}

// parseStreamStart reads where an event stream starts: the Last-Event-ID an EventSource
// sends when it reconnects by itself, else the since parameter, else now (nil).
func parseStreamStart(r *http.Request, userID string) (*feed.Cursor, error) {
	text := r.Header.Get("Last-Event-ID")
	if text == "" {
		v, err := queryValues(r.URL.RawQuery, "since")
		since, ok := v["since"]
		if err != nil || !ok {
			return nil, err
		}
		text = since
	}
	from, err := feed.DecodeCursor(userID, text)
	if err != nil {
		return nil, err
	}
	return &from, nil
}

func taskPath(userID string, id int64) string {
	return "/api/" + url.PathEscape(userID) + "/tasks/" + strconv.FormatInt(id, 10)
}
