package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
)

// What the service sends back: the error type, the one table of statuses, the error
// writer and the JSON writers. (Event streams are written by events.go.)

// apiError is an error whose status and detail are meant for the client.
type apiError struct {
	status    int
	detail    string
	challenge string // WWW-Authenticate, sent with a 401
}

func (e *apiError) Error() string { return e.detail }

func badRequest(format string, args ...any) error {
	return &apiError{status: http.StatusBadRequest, detail: fmt.Sprintf(format, args...)}
}

func unprocessable(format string, args ...any) error {
	return &apiError{status: http.StatusUnprocessableEntity, detail: fmt.Sprintf(format, args...)}
}

// unauthorized is a 401 for a token that was sent and refused (RFC 6750's invalid_token);
// a request without credentials gets the bare challenge instead (errNoToken in auth.go).
func unauthorized(detail string) error {
	return &apiError{status: http.StatusUnauthorized, detail: detail, challenge: `Bearer error="invalid_token"`}
}

// storeErrors maps the store's sentinel errors to what the client sees.
var storeErrors = []struct {
	err error
	api *apiError
}{
	{ErrNotFound, &apiError{status: http.StatusNotFound, detail: "task not found"}},
	{ErrPrecondition, &apiError{status: http.StatusPreconditionFailed, detail: "the task has changed since the ETag in If-Match; fetch it again"}},
	{ErrKeyReused, &apiError{status: http.StatusUnprocessableEntity, detail: "this Idempotency-Key was first used with a different request; use a new key for a new request"}},
	{ErrOutcomeUnknown, &apiError{status: http.StatusServiceUnavailable, detail: "database unavailable: the change may or may not have been made; retry with the same Idempotency-Key"}},
	{ErrUnavailable, &apiError{status: http.StatusServiceUnavailable, detail: "database unavailable, try again shortly"}},
	{ErrRejected, &apiError{status: http.StatusUnprocessableEntity, detail: "a value was rejected by validation"}},
	{ErrTaskLimit, &apiError{status: http.StatusConflict, detail: "this user already has the most tasks allowed; delete some to make room"}},
}

// errInternal is all a client learns of an unexpected failure; the log has the cause.
var errInternal = &apiError{status: http.StatusInternalServerError, detail: "internal server error"}

// statusClientClosed is what the access log records for a request whose client went
// away before the answer (nginx's convention): not an error of this service's.
const statusClientClosed = 499

// writeError sends err as {"detail": ...}. Only an apiError or a store sentinel reaches the
// client in words; anything else is logged with its cause and sent as a generic 500.
func writeError(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil {
		// The client hung up, which is also why the store gave up: nobody to answer.
		w.WriteHeader(statusClientClosed)
		return
	}
	var apiErr *apiError
	if !errors.As(err, &apiErr) {
		for _, e := range storeErrors {
			if errors.Is(err, e.err) {
				apiErr = e.api
				break
			}
		}
	}
	switch {
	case apiErr == nil:
		logger(r.Context()).Error("request failed", "err", err)
		apiErr = errInternal
	case errors.Is(err, errDatabaseDown):
		// The database could not be reached: the breaker logs that, with a count of the
		// requests it cost, so that an outage is a few log lines instead of one per request.
		if info := infoFrom(r.Context()); info != nil {
			info.quiet = true
		}
	case apiErr.status >= 500:
		logger(r.Context()).Warn("request failed", "err", err)
	}
	if apiErr.challenge != "" {
		w.Header().Set("WWW-Authenticate", apiErr.challenge)
	}
	writeJSON(w, apiErr.status, struct {
		Detail string `json:"detail"`
	}{apiErr.detail})
}

// writeJSON sends v as the whole body.
func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		panic(err) // every value sent here is of a type that always encodes
	}
	writeBody(w, status, body)
}

// writeBody sends a whole JSON body. Headers go first: after WriteHeader they are ignored.
func writeBody(w http.ResponseWriter, status int, body []byte) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	w.Write(body) //nolint:errcheck // the client has gone; nothing left to tell it
}

// writeTask sends one task with its ETag. A replayed answer (the first answer to an
// Idempotency-Key, sent again) says so.
func writeTask(w http.ResponseWriter, status int, t Task, replayed bool) {
	h := w.Header()
	h.Set("ETag", taskETag(t.Version))
	if replayed {
		h.Set("Idempotent-Replayed", "true")
	}
	buf := getBuffer()
	defer putBuffer(buf)
	*buf = appendTask(*buf, &t)
	writeBody(w, status, *buf)
}

// taskETag is a task's strong ETag: its version, which every write changes.
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

// taskList sends a JSON array of tasks as they come, holding at most about listBuffer
// bytes: a list that fits goes out in one write with a Content-Length, like any other
// response, and a longer one streams, chunked.
type taskList struct {
	w      http.ResponseWriter
	header http.Header // what goes with the status, when it goes
	buf    *[]byte
	sent   bool // the status line and headers are out
	n      int  // tasks added
}

const listBuffer = 32 << 10

func newTaskList(w http.ResponseWriter) *taskList { return &taskList{w: w} }

// begin opens the array, whose 200 goes with header when its first bytes do: an error
// before then is answered without them.
func (l *taskList) begin(header http.Header) {
	l.header, l.buf = header, getBuffer()
	*l.buf = append(*l.buf, '[')
}

// writeHeader sends the status and the list's headers, with the body's length if known.
func (l *taskList) writeHeader(length int) {
	h := l.w.Header()
	for k, v := range l.header {
		h[k] = v
	}
	h.Set("Content-Type", "application/json")
	if length >= 0 {
		h.Set("Content-Length", strconv.Itoa(length))
	}
	l.w.WriteHeader(http.StatusOK)
	l.sent = true
}

// add appends one task; an error means the client stopped taking them.
func (l *taskList) add(t *Task) error {
	if l.n > 0 {
		*l.buf = append(*l.buf, ',')
	}
	l.n++
	*l.buf = appendTask(*l.buf, t)
	if len(*l.buf) < listBuffer {
		return nil
	}
	if !l.sent {
		l.writeHeader(-1)
	}
	_, err := l.w.Write(*l.buf)
	*l.buf = (*l.buf)[:0]
	return err
}

// end closes the array, sends what is left and gives the buffer back. Given the error
// that cut the list short, it returns that error to be sent as the response when nothing
// is out yet, and otherwise drops the connection: a client must not mistake a truncated
// list for a whole one.
func (l *taskList) end(err error) error {
	if l.buf != nil {
		defer putBuffer(l.buf)
	}
	switch {
	case err != nil && l.sent:
		panic(http.ErrAbortHandler)
	case err != nil, l.buf == nil: // an error, or a 304 already written
		return err
	}
	*l.buf = append(*l.buf, ']')
	if !l.sent {
		l.writeHeader(len(*l.buf))
	}
	l.w.Write(*l.buf) //nolint:errcheck // as in writeBody
	return nil
}

// buffers recycles encoding buffers: a 50-task list is about 15 KiB, and allocating that
// for every request was most of the garbage a list request made.
var buffers = sync.Pool{New: func() any { b := make([]byte, 0, 4<<10); return &b }}

func getBuffer() *[]byte { return buffers.Get().(*[]byte) }

func putBuffer(b *[]byte) {
	if cap(*b) <= 2*listBuffer { // one huge task list must not pin its buffer
		*b = (*b)[:0]
		buffers.Put(b)
	}
}
