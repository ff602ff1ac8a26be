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
	mux.Handle("GET /api/{user_id}/tasks/{id}", authed(auth, withTaskID(handleGetTask(store))))
	mux.Handle("PUT /api/{user_id}/tasks/{id}", authed(auth, withTaskID(handleUpdateTask(store))))
	mux.Handle("DELETE /api/{user_id}/tasks/{id}", authed(auth, withTaskID(handleDeleteTask(store))))
	mux.Handle("PATCH /api/{user_id}/tasks/{id}/complete", authed(auth, withTaskID(handleToggleTask(store))))
}

// newHandler assembles the server's handler: request log → panic recovery → CORS → mux,
// and behind the mux each /api route checks its token before its handler runs.
func newHandler(log *slog.Logger, store *Store, auth *Authenticator, corsOrigins []string) http.Handler {
	mux := http.NewServeMux()
	addRoutes(patternRecorder{mux}, store, auth)
	return withRequestLog(log, withRecover(withCORS(corsOrigins, mux)))
}

// handlerFunc is a handler that returns its error to one place, writeError, so that no
// handler can forget to return after writing one.
type handlerFunc func(w http.ResponseWriter, r *http.Request) error

func (h handlerFunc) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if err := h(w, r); err != nil {
		writeError(w, r, err)
	}
}

// userHandler serves a request made by an authenticated user for their own data.
type userHandler func(w http.ResponseWriter, r *http.Request, userID string) error

// authed checks the bearer token and that the path names its user. Handlers receive the
// token's user id, never the path's, and pass it to every store call.
func authed(auth *Authenticator, h userHandler) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		userID, err := auth.authenticate(r)
		if err != nil {
			return err
		}
		if info := infoFrom(r.Context()); info != nil {
			info.userID = userID
		}
		if r.PathValue("user_id") != userID {
			return &apiError{http.StatusForbidden, "the token does not grant access to this user's tasks"}
		}
		return h(w, r, userID)
	}
}

// taskHandler serves a request for one task of the authenticated user.
type taskHandler func(w http.ResponseWriter, r *http.Request, userID string, id int64) error

func withTaskID(h taskHandler) userHandler {
	return func(w http.ResponseWriter, r *http.Request, userID string) error {
		id, err := parseTaskID(r.PathValue("id"))
		if err != nil {
			return err
		}
		return h(w, r, userID, id)
	}
}

func handleHealthz() http.Handler {
	return handlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		writeBody(w, http.StatusOK, []byte(`{"status":"ok"}`))
		return nil
	})
}

func handleReadyz(store *Store) http.Handler {
	return handlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if err := store.Ping(r.Context()); err != nil {
			return err
		}
		writeBody(w, http.StatusOK, []byte(`{"status":"ready"}`))
		return nil
	})
}

//go:embed openapi.json
var openAPIDoc []byte

func handleOpenAPI() http.Handler {
	return handlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		writeBody(w, http.StatusOK, openAPIDoc)
		return nil
	})
}

func handleListTasks(store *Store) userHandler {
	return func(w http.ResponseWriter, r *http.Request, userID string) error {
		q, err := parseListQuery(r.URL.RawQuery)
		if err != nil {
			return err
		}
		tasks, total, err := store.ListTasks(r.Context(), userID, q)
		if err != nil {
			return err
		}
		w.Header().Set("X-Total-Count", strconv.FormatInt(total, 10))
		writeTasks(w, tasks)
		return nil
	}
}

func handleCreateTask(store *Store) userHandler {
	return func(w http.ResponseWriter, r *http.Request, userID string) error {
		fields, err := readJSONObject(w, r)
		if err != nil {
			return err
		}
		in, err := decodeTaskInput(fields, false)
		if err != nil {
			return err
		}
		if in.title == nil {
			return unprocessable("title is required")
		}
		t, err := store.CreateTask(r.Context(), userID, *in.title, in.description)
		if err != nil {
			return err
		}
		w.Header().Set("Location", taskPath(userID, t.ID))
		writeTask(w, http.StatusCreated, &t)
		return nil
	}
}

func handleGetTask(store *Store) taskHandler {
	return func(w http.ResponseWriter, r *http.Request, userID string, id int64) error {
		t, err := store.GetTask(r.Context(), userID, id)
		if err != nil {
			return err
		}
		writeTask(w, http.StatusOK, &t)
		return nil
	}
}

func handleUpdateTask(store *Store) taskHandler {
	return func(w http.ResponseWriter, r *http.Request, userID string, id int64) error {
		fields, err := readJSONObject(w, r)
		if err != nil {
			return err
		}
		in, err := decodeTaskInput(fields, true)
		if err != nil {
			return err
		}
		if len(fields) == 0 {
			return unprocessable("the body must set at least one of title, description, completed")
		}
		t, err := store.UpdateTask(r.Context(), userID, id, TaskPatch{
			Title:          in.title,
			SetDescription: in.hasDescription,
			Description:    in.description,
			Completed:      in.completed,
		})
		if err != nil {
			return err
		}
		writeTask(w, http.StatusOK, &t)
		return nil
	}
}

func handleDeleteTask(store *Store) taskHandler {
	return func(w http.ResponseWriter, r *http.Request, userID string, id int64) error {
		if err := store.DeleteTask(r.Context(), userID, id); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
}

func handleToggleTask(store *Store) taskHandler {
	return func(w http.ResponseWriter, r *http.Request, userID string, id int64) error {
		t, err := store.ToggleTask(r.Context(), userID, id)
		if err != nil {
			return err
		}
		writeTask(w, http.StatusOK, &t)
		return nil
	}
}

func taskPath(userID string, id int64) string {
	return "/api/" + url.PathEscape(userID) + "/tasks/" + strconv.FormatInt(id, 10)
}
