package main

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"taskflow/internal/fair"
	"taskflow/internal/feed"
	"taskflow/internal/pg"
	"taskflow/internal/task"
	"taskflow/internal/web"
)

// What a client is answered: every error it can receive, with its status (the store's
// sentinels, the one table that maps them, and apiError for the errors decided above the
// store), and the tasks and ETags a success carries. The log gets the cause behind an
// error; writing bodies is internal/web's.

// apiError is an error whose status and detail are meant for the client.
type apiError struct {
	status     int
	detail     string
	challenge  string // WWW-Authenticate, sent with a 401
	retryAfter int    // Retry-After in seconds, sent with a 429 or 503 when set
}

func (e *apiError) Error() string { return e.detail }

func badRequest(format string, args ...any) error {
	return &apiError{status: http.StatusBadRequest, detail: fmt.Sprintf(format, args...)}
}

func unprocessable(format string, args ...any) error {
	return &apiError{status: http.StatusUnprocessableEntity, detail: fmt.Sprintf(format, args...)}
}

func tooLarge(limit int) error {
	return &apiError{status: http.StatusRequestEntityTooLarge, detail: fmt.Sprintf("request body is larger than %d bytes", limit)}
}

// unauthorized is a 401 for a token that was sent and refused (RFC 6750's invalid_token);
// a request without credentials gets the bare challenge of errNoToken instead.
func unauthorized(detail string) error {
	return &apiError{status: http.StatusUnauthorized, detail: detail, challenge: `Bearer error="invalid_token"`}
}

// The errors decided above the store that need no words from the request.
var (
	errRefusedOrigin = &apiError{status: http.StatusForbidden, detail: "origin not allowed"}
	errNoToken       = &apiError{status: http.StatusUnauthorized, detail: "missing bearer token", challenge: "Bearer"}
	errForbidden     = &apiError{status: http.StatusForbidden, detail: "the token does not grant access to this user's tasks"}
	errNotJSON       = &apiError{status: http.StatusUnsupportedMediaType, detail: "Content-Type must be application/json"}
	errCreateIfMatch = &apiError{status: http.StatusPreconditionFailed, detail: "If-Match cannot hold on a create: the task does not exist yet"}
	errTooManyWrites = &apiError{status: http.StatusTooManyRequests, detail: "too many writes for this user (MAX_WRITES_PER_USER); retry after Retry-After seconds", retryAfter: 1}
	errInternal      = &apiError{status: http.StatusInternalServerError, detail: "internal server error"}
)

// storeErrors maps the errors of the store and of the packages below it to what the
// client sees; the first that matches wins.
var storeErrors = []struct {
	err error
	api *apiError
}{
	{ErrNotFound, &apiError{status: http.StatusNotFound, detail: "task not found"}},
	{ErrPrecondition, &apiError{status: http.StatusPreconditionFailed, detail: "the task has changed since the ETag in If-Match (or If-None-Match holds); fetch it again"}},
	{ErrKeyReused, &apiError{status: http.StatusUnprocessableEntity, detail: "this Idempotency-Key was first used with a different request; use a new key for a new request"}},
	{ErrTaskLimit, &apiError{status: http.StatusConflict, detail: "this user already has the most tasks allowed; delete some to make room"}},
	{feed.ErrBadCursor, &apiError{status: http.StatusBadRequest, detail: "the cursor is not one this API gave to this user"}},
	{feed.ErrCursorExpired, &apiError{status: http.StatusGone, detail: "the cursor is older than the feed keeps; list the tasks again and follow from their X-Cursor"}},
	{feed.ErrTooManyStreams, &apiError{status: http.StatusTooManyRequests, detail: "too many open event streams for this user (MAX_STREAMS_PER_USER)", retryAfter: 5}},
	{feed.ErrStreamsFull, &apiError{status: http.StatusServiceUnavailable, detail: "this server holds all the event streams it may (MAX_STREAMS); try again shortly", retryAfter: 5}},
	{feed.ErrShuttingDown, &apiError{status: http.StatusServiceUnavailable, detail: "the server is shutting down"}},
	{fair.ErrBusy, &apiError{status: http.StatusServiceUnavailable, detail: "this user's requests are using all the database time they may; try again shortly", retryAfter: 1}},
	{ErrOutcomeUnknown, &apiError{status: http.StatusServiceUnavailable, detail: "database unavailable: the change may or may not have been made; retry with the same Idempotency-Key", retryAfter: 1}},
	{pg.ErrUnavailable, &apiError{status: http.StatusServiceUnavailable, detail: "database unavailable, try again shortly", retryAfter: 1}},
	{pg.ErrRejected, &apiError{status: http.StatusUnprocessableEntity, detail: "a value was rejected by validation"}},
}

// apiErrorFor is what the client learns of err: its apiError, the table's entry, or,
// for anything unexpected, a generic 500 (expected reports false: log the cause).
func apiErrorFor(err error) (api *apiError, expected bool) {
	var (
		body   *task.BodyError
		header *web.BadHeader
	)
	switch {
	case errors.As(err, &api):
		return api, true
	case errors.As(err, &body) && body.Invalid:
		return &apiError{status: http.StatusUnprocessableEntity, detail: body.Detail}, true
	case errors.As(err, &body):
		return &apiError{status: http.StatusBadRequest, detail: body.Detail}, true
	case errors.As(err, &header):
		return &apiError{status: http.StatusBadRequest, detail: header.Detail}, true
	}
	for _, e := range storeErrors {
		if errors.Is(err, e.err) {
			return e.api, true
		}
	}
	return errInternal, false
}

// writeError sends err as {"detail": ...}, with the status apiErrorFor gives it; the access
// log learns the cause.
func writeError(w http.ResponseWriter, r *http.Request, err error) {
	api, _ := apiErrorFor(err)
	h := w.Header()
	if api.challenge != "" {
		h.Set("WWW-Authenticate", api.challenge)
	}
	if api.retryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(api.retryAfter))
	}
	web.WriteError(w, r, err, api.status, api.detail)
}

// writeTask sends one task with its ETag. A replayed answer (the first answer to an
// Idempotency-Key, sent again) says so.
func writeTask(w http.ResponseWriter, status int, t task.Task, replayed bool) {
	h := w.Header()
	h.Set("ETag", taskETag(t.Version))
	if replayed {
		h.Set("Idempotent-Replayed", "true")
	}
	buf := web.GetBuffer()
	defer web.PutBuffer(buf)
	*buf = append(task.AppendJSON(*buf, &t), '\n')
	web.WriteBody(w, status, *buf)
}

// taskETag is a task's strong ETag: its version, which every change replaces.
func taskETag(version int64) string { return `"` + strconv.FormatInt(version, 10) + `"` }

// listETag is a list's: the count and version digest of the tasks its filter matches
// (see ListHead), which change whenever the page could, and the query, so that two pages
// never share one.
func listETag(h ListHead, q ListQuery) string {
	order := "asc"
	if q.Desc {
		order = "desc"
	}
	return fmt.Sprintf(`"%d.%x.%s.%s.%s.%d.%d"`, h.Total, uint64(h.Digest), q.Status, q.Sort, order, q.Limit, q.Offset)
}

// writeNotModified answers a GET whose If-None-Match names the current ETag.
func writeNotModified(w http.ResponseWriter, etag string) {
	w.Header().Set("ETag", etag)
	w.WriteHeader(http.StatusNotModified)
}
