package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
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

// jsonArray sends a JSON array element by element, holding at most about listBuffer bytes:
// a list that fits goes out in one write with a Content-Length, like any other response,
// and a longer one streams, chunked, as its elements come.
type jsonArray struct {
	w      http.ResponseWriter
	status int
	buf    bytes.Buffer
	enc    *json.Encoder
	sent   bool // the status line and headers are out
}

const listBuffer = 32 << 10

func newJSONArray(w http.ResponseWriter) *jsonArray {
	a := &jsonArray{w: w}
	a.enc = json.NewEncoder(&a.buf)
	return a
}

// begin opens the array; the headers set so far go with the status when the first bytes do.
func (a *jsonArray) begin(status int) error {
	a.status = status
	a.w.Header().Set("Content-Type", "application/json")
	a.buf.WriteByte('[')
	return nil
}

// add appends one element; an error means the client stopped taking them.
func (a *jsonArray) add(v any) error {
	if a.buf.Len() > 1 || a.sent {
		a.buf.WriteByte(',')
	}
	if err := a.enc.Encode(v); err != nil {
		return err
	}
	if a.buf.Len() < listBuffer {
		return nil
	}
	if !a.sent {
		a.w.WriteHeader(a.status)
		a.sent = true
	}
	_, err := a.w.Write(a.buf.Bytes())
	a.buf.Reset()
	return err
}

// end closes the array and sends what is left. Given the error that cut the list short, it
// returns that error to be sent as the response when nothing is out yet, and otherwise
// drops the connection: a client must not mistake a truncated list for a whole one.
func (a *jsonArray) end(err error) error {
	switch {
	case err != nil && a.sent:
		panic(http.ErrAbortHandler)
	case err != nil:
		return err
	}
	a.buf.WriteByte(']')
	if !a.sent {
		a.w.Header().Set("Content-Length", strconv.Itoa(a.buf.Len()))
		a.w.WriteHeader(a.status)
	}
	a.w.Write(a.buf.Bytes()) //nolint:errcheck // as in writeJSON
	return nil
}
