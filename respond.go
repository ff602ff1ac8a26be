package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// Everything the service sends back goes through this file: the error type, the one
// table of statuses, the error writer and the JSON writers.

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
	log := logger(r.Context())
	switch {
	case apiErr == nil:
		log.Error("request failed", "err", err)
		apiErr = errInternal
	case errors.Is(err, errDatabaseDown):
		// The database could not be reached: the breaker logs that, with a count of the
		// requests it cost, so that an outage is a few log lines instead of one per request.
		if info := infoFrom(r.Context()); info != nil {
			info.quiet = true
		}
	case apiErr.status >= 500:
		log.Warn("request failed", "err", err)
	}
	if apiErr.challenge != "" {
		w.Header().Set("WWW-Authenticate", apiErr.challenge)
	}
	writeJSON(w, apiErr.status, struct {
		Detail string `json:"detail"`
	}{apiErr.detail})
}

// writeJSON sends v as the whole body. Headers go first: after WriteHeader they are ignored.
func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		panic(err) // every value sent here is of a type that always encodes
	}
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
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(*buf)))
	w.WriteHeader(status)
	w.Write(*buf) //nolint:errcheck // as in writeJSON
}

// taskETag is a task's strong ETag: its version, which every write changes.
func taskETag(version int64) string { return `"` + strconv.FormatInt(version, 10) + `"` }

// listETag is a list's: a task's change raises the newest version among the tasks the
// list's filter matches, a delete lowers their count, and a task coming in or going out
// of the filter changes one of them, so it changes whenever the page could; with the
// query, so that two pages never share one.
func listETag(h ListHead, q ListQuery) string {
	order := "asc"
	if q.Desc {
		order = "desc"
	}
	return fmt.Sprintf(`"%d.%d.%s.%s.%s.%d.%d"`, h.Total, h.Newest, q.Status, q.Sort, order, q.Limit, q.Offset)
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
	status int
	buf    *[]byte
	sent   bool // the status line and headers are out
	n      int  // tasks added
}

const listBuffer = 32 << 10

func newTaskList(w http.ResponseWriter) *taskList { return &taskList{w: w} }

// begin opens the array; the headers set so far go with the status when the first bytes do.
func (l *taskList) begin(status int) error {
	l.status, l.buf = status, getBuffer()
	l.w.Header().Set("Content-Type", "application/json")
	*l.buf = append(*l.buf, '[')
	return nil
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
		l.w.WriteHeader(l.status)
		l.sent = true
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
		l.w.Header().Set("Content-Length", strconv.Itoa(len(*l.buf)))
		l.w.WriteHeader(l.status)
	}
	l.w.Write(*l.buf) //nolint:errcheck // as in writeJSON
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

// writeEventStream sends a stream's events as Server-Sent Events, after the ready event
// the stream was opened with, until its token expires (an expired event first), the
// client goes, or the stream is dropped (shutdown, or a client too far behind).
func writeEventStream(w http.ResponseWriter, r *http.Request, s *stream, expires time.Time, heartbeat time.Duration) {
	rc := http.NewResponseController(w)
	// The server's read and write timeouts are for a request and its answer; a stream
	// outlives them. It has read all it will; each write gets a deadline of its own, so a
	// client that stops reading is cut loose.
	rc.SetReadDeadline(time.Time{}) //nolint:errcheck // net/http's own writer supports it
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("X-Accel-Buffering", "no") // nginx: pass each event on at once
	w.WriteHeader(http.StatusOK)
	send := func(frame string) bool {
		rc.SetWriteDeadline(time.Now().Add(eventWriteTimeout)) //nolint:errcheck // as above
		_, err := io.WriteString(w, frame)
		return err == nil && rc.Flush() == nil
	}
	// retry: how long a browser's EventSource waits before it reconnects.
	if !send("retry: 2000\nevent: ready\ndata: {}\n\n") {
		return
	}
	beat := time.NewTicker(heartbeat)
	defer beat.Stop()
	expiry := time.NewTimer(time.Until(expires))
	defer expiry.Stop()
	for {
		var frame string
		select {
		case ev := <-s.events:
			frame = "event: " + ev.name + "\ndata: " + string(ev.data) + "\n\n"
		case <-beat.C:
			frame = ": keep-alive\n\n"
		case <-expiry.C:
			send("event: expired\ndata: {}\n\n")
			return
		case <-s.gone:
			return
		case <-r.Context().Done():
			return
		}
		if !send(frame) {
			return
		}
	}
}

// eventWriteTimeout is how long one event may take to reach a client.
const eventWriteTimeout = 10 * time.Second
