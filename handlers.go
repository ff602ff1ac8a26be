package main

import (
	_ "embed"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
)

// router is the part of *http.ServeMux that addRoutes needs; the OpenAPI test passes a
// recorder to learn which routes exist.
type router interface {
	Handle(pattern string, h http.Handler)
}

// addRoutes is the whole API at a glance.
func addRoutes(mux router, store *Store, auth *Authenticator) {
	mux.Handle("GET /healthz", handleHealthz())
	mux.Handle("GET /readyz", handleReadyz(store))
	mux.Handle("GET /openapi.json", handleOpenAPI())

	mux.Handle("GET /api/{user_id}/tasks", authed(auth, handleListTasks(store)))
	mux.Handle("POST /api/{user_id}/tasks", authed(auth, handleCreateTask(store)))
	mux.Handle("GET /api/{user_id}/tasks/{id}", authed(auth, handleGetTask(store)))
	mux.Handle("PUT /api/{user_id}/tasks/{id}", authed(auth, handleUpdateTask(store)))
	mux.Handle("DELETE /api/{user_id}/tasks/{id}", authed(auth, handleDeleteTask(store)))
	mux.Handle("PATCH /api/{user_id}/tasks/{id}/complete", authed(auth, handleToggleTask(store)))
}

// newHandler assembles the server: request log → panic recovery → CORS → the mux, whose
// own 404 and 405 answers are turned into JSON; each /api route checks its token first.
func newHandler(log *slog.Logger, store *Store, auth *Authenticator, corsOrigins []string) http.Handler {
	mux := http.NewServeMux()
	addRoutes(mux, store, auth)
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
type userHandler func(w http.ResponseWriter, r *http.Request, userID string) error

// authed checks the bearer token and that the path names its user. Handlers receive the
// token's user id, never the path's, and pass it to every store call.
func authed(auth *Authenticator, h userHandler) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		// A user's tasks, and the errors about them, are for that user only.
		w.Header().Set("Cache-Control", "no-store")
		userID, err := auth.authenticate(r)
		if err != nil {
			return err
		}
		if info := infoFrom(r.Context()); info != nil {
			info.userID = userID
		}
		if r.PathValue("user_id") != userID {
			return &apiError{status: http.StatusForbidden, detail: "the token does not grant access to this user's tasks"}
		}
		return h(w, r, userID)
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
	return func(w http.ResponseWriter, r *http.Request, userID string) error {
		q, err := parseListQuery(r.URL.RawQuery)
		if err != nil {
			return err
		}
		list := newJSONArray(w)
		err = store.ListTasks(r.Context(), userID, q, func(h ListHead) error {
			w.Header().Set("X-Total-Count", strconv.FormatInt(h.Total, 10))
			return list.begin(http.StatusOK)
		}, func(t *Task) error { return list.add(t) })
		return list.end(err)
	}
}

func handleCreateTask(store *Store) userHandler {
	return func(w http.ResponseWriter, r *http.Request, userID string) error {
		in, err := readTaskBody(w, r, false)
		if err != nil {
			return err
		}
		if in.Title == nil {
			return unprocessable("title is required")
		}
		t, err := store.CreateTask(r.Context(), userID, *in.Title, in.Description)
		if err != nil {
			return err
		}
		w.Header().Set("Location", taskPath(userID, t.ID))
		writeJSON(w, http.StatusCreated, t)
		return nil
	}
}

func handleGetTask(store *Store) userHandler {
	return func(w http.ResponseWriter, r *http.Request, userID string) error {
		id, err := parseTaskID(r.PathValue("id"))
		if err != nil {
			return err
		}
		t, err := store.GetTask(r.Context(), userID, id)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, t)
		return nil
	}
}

func handleUpdateTask(store *Store) userHandler {
	return func(w http.ResponseWriter, r *http.Request, userID string) error {
		id, err := parseTaskID(r.PathValue("id"))
		if err != nil {
			return err
		}
		patch, err := readTaskBody(w, r, true)
		if err != nil {
			return err
		}
		if patch == (TaskPatch{}) {
			return unprocessable("the body must set at least one of title, description, completed")
		}
		t, err := store.UpdateTask(r.Context(), userID, id, patch)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, t)
		return nil
	}
}

func handleDeleteTask(store *Store) userHandler {
	return func(w http.ResponseWriter, r *http.Request, userID string) error {
		id, err := parseTaskID(r.PathValue("id"))
		if err != nil {
			return err
		}
		if err := store.DeleteTask(r.Context(), userID, id); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
}

func handleToggleTask(store *Store) userHandler {
	return func(w http.ResponseWriter, r *http.Request, userID string) error {
		id, err := parseTaskID(r.PathValue("id"))
		if err != nil {
			return err
		}
		t, err := store.ToggleTask(r.Context(), userID, id)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, t)
		return nil
	}
}

func taskPath(userID string, id int64) string {
	return "/api/" + url.PathEscape(userID) + "/tasks/" + strconv.FormatInt(id, 10)
}
