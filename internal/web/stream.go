package web

import (
	"net/http"
	"strconv"
	"sync"
	"time"
)

// JSONStream sends a JSON document as its parts come, holding at most about PartSize
// bytes: one that fits goes out in one write with a Content-Length, like any other
// response, and a longer one streams, chunked. Lists of 10,000 tasks and pages of changes
// are served this way in bounded memory.
type JSONStream struct {
	w      http.ResponseWriter
	r      *http.Request
	header http.Header // what goes with the status, when it goes
	buf    *[]byte
	sent   bool // the status line and headers are out
	// The client must take each part within wait, or it is cut off (the package
	// comment). 0: no limit.
	wait time.Duration
}

// PartSize is how much of a streamed document is held before it is written.
const PartSize = 32 << 10

// NewJSONStream starts a document for r's answer.
func NewJSONStream(w http.ResponseWriter, r *http.Request, wait time.Duration) *JSONStream {
	return &JSONStream{w: w, r: r, wait: wait}
}

// Begin starts the document with what buf (from GetBuffer) holds, and takes buf. Its
// 200 goes with header when its first bytes do, so an error before then is answered
// without them.
func (j *JSONStream) Begin(header http.Header, buf *[]byte) {
	j.header, j.buf = header, buf
}

// Add appends a part with enc, after a comma unless first; an error means the client
// stopped taking them.
func (j *JSONStream) Add(first bool, enc func([]byte) []byte) error {
	if !first {
		*j.buf = append(*j.buf, ',')
	}
	*j.buf = enc(*j.buf)
	if len(*j.buf) < PartSize {
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

// End closes the document with close, sends what is left and gives the buffer back.
// Given the error that cut the document short, it returns that error to be answered
// when nothing is out yet, and otherwise resets the connection: a client must not
// mistake a truncated document for a whole one.
func (j *JSONStream) End(close string, err error) error {
	if j.buf != nil {
		defer PutBuffer(j.buf)
	}
	switch {
	case err != nil && j.sent:
		resetOnClose(j.r)
		NoteError(j.r.Context(), err)
		panic(http.ErrAbortHandler)
	case err != nil, j.buf == nil: // an error, or nothing begun
		return err
	}
	*j.buf = append(*j.buf, close...)
	if !j.sent {
		j.writeHeader(len(*j.buf))
	}
	j.w.Write(*j.buf) //nolint:errcheck // as in WriteBody
	return nil
}

// writeHeader sends the status and the document's headers, with its length if known.
func (j *JSONStream) writeHeader(length int) {
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

// GetBuffer is an empty buffer from the pool; PutBuffer gives it back.
func GetBuffer() *[]byte { return buffers.Get().(*[]byte) }

func PutBuffer(b *[]byte) {
	if cap(*b) <= 2*PartSize { // one huge document must not pin its buffer
		*b = (*b)[:0]
		buffers.Put(b)
	}
}
