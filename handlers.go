package main

import (
	_ "embed"
	"errors"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// router is the part of *http.ServeMux that addRoutes needs; the OpenAPI test passes a
// recorder to learn which routes exist.
type router interface {
	Handle(pattern string, h http.Handler)
}

// addRoutes is the whole API at a glance.
func addRoutes(mux router, store *Store, auth *Authenticator, events *Events) {
	mux.Handle("GET /healthz", handleHealthz())
	mux.Handle("GET /readyz", handleReadyz(store))
	mux.Handle("GET /openapi.json", handleOpenAPI())

	mux.Handle("GET /api/{user_id}/tasks", authed(auth, handleListTasks(store)))
	mux.Handle("POST /api/{user_id}/tasks", authed(auth, handleCreateTask(store)))
	mux.Handle("GET /api/{user_id}/tasks/{id}", authed(auth, handleGetTask(store)))
	mux.Handle("PUT /api/{user_id}/tasks/{id}", authed(auth, handleUpdateTask(store)))
	mux.Handle("DELETE /api/{user_id}/tasks/{id}", authed(auth, handleDeleteTask(store)))
	mux.Handle("PATCH /api/{user_id}/tasks/{id}/complete", authed(auth, handleToggleTask(store)))
	mux.Handle(eventsRoute, authed(auth, handleEvents(events)))
}

// eventsRoute is the live-updates stream, the one route that may take its token from the
// query: a browser's EventSource cannot send headers.
const eventsRoute = "GET /api/{user_id}/events"

// newHandler assembles the server: request log → panic recovery → CORS → the mux, whose
// own 404 and 405 answers are turned into JSON; each /api route checks its token first.
func newHandler(log *slog.Logger, store *Store, auth *Authenticator, events *Events, corsOrigins []string) http.Handler {
	mux := http.NewServeMux()
	addRoutes(mux, store, auth, events)
	return withRequestLog(log, withRecover(withCORS(corsOrigins, withJSONErrors(mux))))
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
		// A user's tasks, and the errors about them, are for that user only.
		w.Header().Set("Cache-Control", "no-store")
		who, err := auth.authenticate(r, r.Pattern == eventsRoute)
		if err != nil {
			return err
		}
		if info := infoFrom(r.Context()); info != nil {
			info.userID = who.userID
		}
		if r.PathValue("user_id") != who.userID {
			return &apiError{status: http.StatusForbidden, detail: "the token does not grant access to this user's tasks"}
		}
		return h(w, r, who)
	}
}

func handleHealthz() handlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
		return nil
	}
}

func handleReadyz(store *Store) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		if err := store.Ping(r.Context()); err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
		return nil
	}
}

//go:embed openapi.json
var openAPIDoc []byte

func handleOpenAPI() handlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		w.Header().Set("Content-Type", "application/json")
		w.Write(openAPIDoc) //nolint:errcheck // as in writeJSON
		return nil
	}
}

func handleListTasks(store *Store) userHandler {
	return func(w http.ResponseWriter, r *http.Request, who caller) error {
		q, err := parseListQuery(r.URL.RawQuery)
		if err != nil {
			return err
		}
		list := newTaskList(w)
		err = store.ListTasks(r.Context(), who.userID, q, func(h ListHead) error {
			etag := listETag(h, q)
			if match, err := noneMatch(r, etag); match || err != nil {
				if err == nil {
					writeNotModified(w, etag)
					err = errNotModified
				}
				return err
			}
			list.begin(http.Header{"Etag": {etag}, "X-Total-Count": {strconv.FormatInt(h.Total, 10)}})
			return nil
		}, list.add)
		if errors.Is(err, errNotModified) {
			err = nil
		}
		return list.end(err)
	}
}

// errNotModified stops a list whose head shows the client has it already.
var errNotModified = errors.New("not modified")

func handleCreateTask(store *Store) userHandler {
	return func(w http.ResponseWriter, r *http.Request, who caller) error {
		in, body, err := readTaskBody(w, r, false)
		if err != nil {
			return err
		}
		if in.Title == nil {
			return unprocessable("title is required")
		}
		key, err := readIdempotencyKey(r, body)
		if err != nil {
			return err
		}
		t, replayed, err := store.CreateTask(r.Context(), who.userID, *in.Title, in.Description, key)
		if err != nil {
			return err
		}
		w.Header().Set("Location", taskPath(who.userID, t.ID))
		writeTask(w, http.StatusCreated, t, replayed)
		return nil
	}
}

func handleGetTask(store *Store) userHandler {
	return func(w http.ResponseWriter, r *http.Request, who caller) error {
		id, err := parseTaskID(r.PathValue("id"))
		if err != nil {
			return err
		}
		t, err := store.GetTask(r.Context(), who.userID, id)
		if err != nil {
			return err
		}
		etag := taskETag(t.Version)
		if match, err := noneMatch(r, etag); match || err != nil {
			if err == nil {
				writeNotModified(w, etag)
			}
			return err
		}
		writeTask(w, http.StatusOK, t, false)
		return nil
	}
}

func handleUpdateTask(store *Store) userHandler {
	return func(w http.ResponseWriter, r *http.Request, who caller) error {
		id, err := parseTaskID(r.PathValue("id"))
		if err != nil {
			return err
		}
		patch, _, err := readTaskBody(w, r, true)
		if err != nil {
			return err
		}
		if patch == (TaskPatch{}) {
			return unprocessable("the body must set at least one of title, description, completed")
		}
		ifMatch, err := readIfMatch(r)
		if err != nil {
			return err
		}
		t, err := store.UpdateTask(r.Context(), who.userID, id, patch, ifMatch)
		if err != nil {
			return err
		}
		writeTask(w, http.StatusOK, t, false)
		return nil
	}
}

func handleDeleteTask(store *Store) userHandler {
	return func(w http.ResponseWriter, r *http.Request, who caller) error {
		id, err := parseTaskID(r.PathValue("id"))
		if err != nil {
			return err
		}
		ifMatch, err := readIfMatch(r)
		if err != nil {
			return err
		}
		if err := store.DeleteTask(r.Context(), who.userID, id, ifMatch); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
}

func handleToggleTask(store *Store) userHandler {
	return func(w http.ResponseWriter, r *http.Request, who caller) error {
		id, err := parseTaskID(r.PathValue("id"))
		if err != nil {
			return err
		}
		ifMatch, err := readIfMatch(r)
		if err != nil {
			return err
		}
		key, err := readIdempotencyKey(r, nil)
		if err != nil {
			return err
		}
		t, replayed, err := store.ToggleTask(r.Context(), who.userID, id, ifMatch, key)
		if err != nil {
			return err
		}
		writeTask(w, http.StatusOK, t, replayed)
		return nil
	}
}

// handleEvents opens a stream of the user's changes (text/event-stream), which
// Events.serve sends until the token expires, the client leaves or falls too far behind,
// or the server shuts down.
func handleEvents(events *Events) userHandler {
	return func(w http.ResponseWriter, r *http.Request, who caller) error {
		if !time.Now().Before(who.expires) {
			// Within the clock leeway the token still authenticates, but a stream would
			// only say it expired: EventSource would reconnect with it again and again.
			return unauthorized("token has expired")
		}
		if r.Method == http.MethodHead {
			// A GET route answers HEAD too. A stream's answer has no end, so its head is
			// all there is to send: no stream is opened, and no event follows.
			w.Header().Set("Content-Type", "text/event-stream")
			w.WriteHeader(http.StatusOK)
			return nil
		}
		s, err := events.subscribe(r.Context(), who.userID)
		if err != nil {
			return err
		}
		events.serve(w, s, who.expires)
		return nil
	}
}

func taskPath(userID string, id int64) string {
	return "/api/" + url.PathEscape(userID) + "/tasks/" + strconv.FormatInt(id, 10)
}
