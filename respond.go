package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"taskflow/internal/task"
)

// What the service sends back over HTTP: errors, whole JSON bodies, tasks with their
// ETags, and JSON documents streamed as their rows arrive. Event streams are events.go's.

// writeError sends err as {"detail": ...}, with the status errors.go gives it; the access
// log learns the cause. A client that hung up gets nothing: it is why the store gave up.
func writeError(w http.ResponseWriter, r *http.Request, err error) {
	noteError(r.Context(), err)
	if r.Context().Err() != nil {
		w.WriteHeader(statusClientClosed)
		return
	}
	api, _ := apiErrorFor(err)
	h := w.Header()
	if api.challenge != "" {
		h.Set("WWW-Authenticate", api.challenge)
	}
	if api.retryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(api.retryAfter))
	}
	writeJSON(w, api.status, struct {
		Detail string `json:"detail"`
	}{api.detail})
}

// writeJSON sends v as the whole body, ended by a newline as a terminal wants it.
func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		panic(err) // every value sent here is of a type that always encodes
	}
	writeBody(w, status, append(body, '\n'))
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
func writeTask(w http.ResponseWriter, status int, t task.Task, replayed bool) {
	h := w.Header()
	h.Set("ETag", taskETag(t.Version))
	if replayed {
		h.Set("Idempotent-Replayed", "true")
	}
	buf := getBuffer()
	defer putBuffer(buf)
	*buf = append(task.AppendJSON(*buf, &t), '\n')
	writeBody(w, status, *buf)
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

// jsonStream sends a JSON document as its parts come, holding at most about streamBuffer
// bytes: one that fits goes out in one write with a Content-Length, like any other
// response, and a longer one streams, chunked. Lists of 10,000 tasks and pages of
// changes are served this way in bounded memory.
type jsonStream struct {
	w      http.ResponseWriter
	header http.Header // what goes with the status, when it goes
	buf    *[]byte
	sent   bool // the status line and headers are out
	// While the document is read from the database, its client must take each part
	// within wait, or it is cut off: a client that stops reading must not hold a
	// database connection (readers, in limits.go). 0: no limit.
	wait time.Duration
}

const streamBuffer = 32 << 10

// begin starts the document with open; its 200 goes with header when its first bytes
// do, so an error before then is answered without them.
func (j *jsonStream) begin(header http.Header, open string) {
	j.header, j.buf = header, getBuffer()
	*j.buf = append(*j.buf, open...)
}

// add appends a part with enc, after a comma unless first; an error means the client
// stopped taking them.
func (j *jsonStream) add(first bool, enc func([]byte) []byte) error {
	if !first {
		*j.buf = append(*j.buf, ',')
	}
	*j.buf = enc(*j.buf)
	if len(*j.buf) < streamBuffer {
		return nil
	}
	if !j.sent {
		j.writeHeader(-1)
	}
	if j.wait > 0 {
		http.NewResponseController(j.w).SetWriteDeadline(time.Now().Add(j.wait)) //nolint:errcheck // the write fails as it would have
	}
	_, err := j.w.Write(*j.buf)
	*j.buf = (*j.buf)[:0]
	return err
}

// end closes the document with close, sends what is left and gives the buffer back.
// Given the error that cut the document short, it returns that error to be sent as the
// response when nothing is out yet, and otherwise drops the connection: a client must
// not mistake a truncated document for a whole one.
func (j *jsonStream) end(close string, err error) error {
	if j.buf != nil {
		defer putBuffer(j.buf)
	}
	switch {
	case err != nil && j.sent:
		panic(http.ErrAbortHandler)
	case err != nil, j.buf == nil: // an error, or a 304 already written
		return err
	}
	*j.buf = append(*j.buf, close...)
	if !j.sent {
		j.writeHeader(len(*j.buf))
	}
	j.w.Write(*j.buf) //nolint:errcheck // as in writeBody
	return nil
}

// writeHeader sends the status and the document's headers, with its length if known.
func (j *jsonStream) writeHeader(length int) {
	h := j.w.Header()
	for k, v := range j.header {
		h[k] = v
	}
	h.Set("Content-Type", "application/json")
	if length >= 0 {
		h.Set("Content-Length", strconv.Itoa(length))
	}
	j.w.WriteHeader(http.StatusOK)
	j.sent = true
}

// buffers recycles encoding buffers: a 50-task list is about 15 KiB, and allocating that
// for every request was most of the garbage a list request made.
var buffers = sync.Pool{New: func() any { b := make([]byte, 0, 4<<10); return &b }}

func getBuffer() *[]byte { return buffers.Get().(*[]byte) }

func putBuffer(b *[]byte) {
	if cap(*b) <= 2*streamBuffer { // one huge list must not pin its buffer
		*b = (*b)[:0]
		buffers.Put(b)
	}
}
