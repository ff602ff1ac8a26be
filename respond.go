package main

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"
)

// statusOf maps the store's sentinel errors to the status and detail the client sees.
var statusOf = map[error]*apiError{
	ErrNotFound:    {http.StatusNotFound, "task not found"},
	ErrUnavailable: {http.StatusServiceUnavailable, "database unavailable, try again shortly"},
	ErrRejected:    {http.StatusUnprocessableEntity, "a value was rejected by validation"},
}

// errInternal is all a client learns of an unexpected failure; the log has the cause.
var errInternal = &apiError{http.StatusInternalServerError, "internal server error"}

// writeError sends err as {"detail": ...}. Only apiError and the sentinels above reach the
// client in words; anything else is logged with its cause and sent as a generic 500.
func writeError(w http.ResponseWriter, r *http.Request, err error) {
	var apiErr *apiError
	if !errors.As(err, &apiErr) {
		for sentinel, e := range statusOf {
			if errors.Is(err, sentinel) {
				apiErr = e
				break
			}
		}
	}
	log := logger(r.Context())
	switch {
	case apiErr == nil:
		log.Error("request failed", "err", err)
		apiErr = errInternal
	case apiErr.status >= 500:
		log.Warn("request failed", "err", err)
	}
	if apiErr.status == http.StatusUnauthorized {
		// RFC 6750: a request without credentials gets the bare challenge; error= is
		// for a token that was sent and refused.
		challenge := `Bearer error="invalid_token"`
		if apiErr == errNoToken {
			challenge = "Bearer"
		}
		w.Header().Set("WWW-Authenticate", challenge)
	}
	writeBody(w, apiErr.status, errorJSON(apiErr.detail))
}

// errorJSON is the contract's error body: {"detail": "..."}.
func errorJSON(detail string) []byte {
	return append(appendJSONString(append(make([]byte, 0, 64), `{"detail":`...), detail), '}')
}

// writeBody sends an encoded JSON document. Headers go first: after WriteHeader they are ignored.
func writeBody(w http.ResponseWriter, status int, body []byte) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	w.Write(body) //nolint:errcheck // the client has gone; nothing left to tell it
}

// bufPool recycles encoding buffers: a 50-task list is ~15 KiB, and allocating that per
// request is most of the garbage a list request makes.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

func writeTask(w http.ResponseWriter, status int, t *Task) {
	bp := bufPool.Get().(*[]byte)
	*bp = appendTask((*bp)[:0], t)
	writeBody(w, status, *bp)
	putBuf(bp)
}

func writeTasks(w http.ResponseWriter, tasks []Task) {
	bp := bufPool.Get().(*[]byte)
	b := append((*bp)[:0], '[')
	for i := range tasks {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendTask(b, &tasks[i])
	}
	*bp = append(b, ']')
	writeBody(w, http.StatusOK, *bp)
	putBuf(bp)
}

func putBuf(bp *[]byte) {
	if cap(*bp) <= 1<<20 { // a rare huge list should not pin its buffer forever
		bufPool.Put(bp)
	}
}

// timeLayout is RFC 3339 in UTC with a fixed six-digit fraction: PostgreSQL's precision, and the
// shape the earlier design produced, so clients that compare strings keep working.
const timeLayout = "2006-01-02T15:04:05.000000Z07:00" // Z07:00 prints Z for UTC

// appendTask encodes t as the contract's Task object. It is hand-written rather than
// encoding/json so that a list costs one buffer, not one reflection walk and allocation
// per field; TestAppendTaskIsTheContractsTask and FuzzAppendJSONString hold it to
// the contract and to encoding/json's escaping.
func appendTask(b []byte, t *Task) []byte {
	b = append(b, `{"id":`...)
	b = strconv.AppendInt(b, t.ID, 10)
	b = append(b, `,"user_id":`...)
	b = appendJSONString(b, t.UserID)
	b = append(b, `,"title":`...)
	b = appendJSONString(b, t.Title)
	b = append(b, `,"description":`...)
	if t.Description == nil {
		b = append(b, "null"...)
	} else {
		b = appendJSONString(b, *t.Description)
	}
	b = append(b, `,"completed":`...)
	b = strconv.AppendBool(b, t.Completed)
	b = append(b, `,"created_at":"`...)
	b = appendTimestamp(b, t.CreatedAt)
	b = append(b, `","updated_at":"`...)
	b = appendTimestamp(b, t.UpdatedAt)
	return append(b, `"}`...)
}

// appendTimestamp appends t in UTC in timeLayout. It is time.AppendFormat unrolled for
// this one layout: with two timestamps per task, the general formatter was half the
// cost of encoding a list. TestAppendTimestamp holds it to time.Format.
func appendTimestamp(b []byte, t time.Time) []byte {
	t = t.UTC()
	year, month, day := t.Date()
	if year < 0 || year > 9999 {
		return t.AppendFormat(b, timeLayout)
	}
	hour, minute, sec := t.Clock()
	b = appendDigits(b, year, 4)
	b = append(b, '-')
	b = appendDigits(b, int(month), 2)
	b = append(b, '-')
	b = appendDigits(b, day, 2)
	b = append(b, 'T')
	b = appendDigits(b, hour, 2)
	b = append(b, ':')
	b = appendDigits(b, minute, 2)
	b = append(b, ':')
	b = appendDigits(b, sec, 2)
	b = append(b, '.')
	b = appendDigits(b, t.Nanosecond()/1000, 6)
	return append(b, 'Z')
}

// appendDigits appends v in decimal, zero-padded to width digits.
func appendDigits(b []byte, v, width int) []byte {
	var buf [8]byte
	for i := width - 1; i >= 0; i-- {
		buf[i] = byte('0' + v%10)
		v /= 10
	}
	return append(b, buf[:width]...)
}

// jsonSafe marks the ASCII bytes that encoding/json writes as they are.
var jsonSafe = func() (safe [utf8.RuneSelf]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		safe[c] = c != '"' && c != '\\' && c != '<' && c != '>' && c != '&'
	}
	return safe
}()

// appendJSONString appends s as a JSON string, escaped as encoding/json escapes it
// (including <, >, & and U+2028/U+2029, so the output is safe inside HTML and JavaScript).
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if jsonSafe[c] {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// requestInfo is what the access log learns about a request as it passes through the
// layers; withRequestLog owns it, inner layers fill it in.
type requestInfo struct {
	id      string
	pattern string // set by patternRecorder; "" when no route matched
	userID  string // set once the token is verified
	base    *slog.Logger
	log     *slog.Logger // base with the request id, made on first use
}

type requestInfoKey struct{}

func withRequestInfo(ctx context.Context, info *requestInfo) context.Context {
	return context.WithValue(ctx, requestInfoKey{}, info)
}

func infoFrom(ctx context.Context) *requestInfo {
	info, _ := ctx.Value(requestInfoKey{}).(*requestInfo)
	return info
}

// logger returns the request's logger, which tags every line with the request id.
func logger(ctx context.Context) *slog.Logger {
	info := infoFrom(ctx)
	if info == nil {
		return slog.Default()
	}
	if info.log == nil {
		info.log = info.base.With("request_id", info.id)
	}
	return info.log
}
