package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"taskflow/internal/pg"
	"taskflow/internal/task"
	"taskflow/internal/web"
	"testing"
)

func TestUnexpectedErrorIsGeneric500(t *testing.T) {
	t.Parallel()
	var logs strings.Builder
	h := web.Log(slogTo(&logs), handlerFunc(func(http.ResponseWriter, *http.Request) error {
		return fmt.Errorf(`ERROR: relation "secret_table" does not exist (SQLSTATE 42P01)`)
	}))
	r := httptest.NewRequest("GET", "/x", nil)
	r.Header.Set("X-Request-ID", "req-1")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	res := response{w, t}
	res.wantStatus(http.StatusInternalServerError)
	if d := res.detail(); strings.Contains(d, "secret_table") {
		t.Errorf("detail %q leaks the cause", d)
	}
	if line := logs.String(); !strings.Contains(line, "secret_table") || !strings.Contains(line, "req-1") || !strings.Contains(line, "level=ERROR") {
		t.Errorf("the access line lacks the cause, the request id or its level: %s", line)
	}
}

func TestStoreErrorsMapToTheirStatus(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		err  error
		want int
	}{
		{ErrNotFound, http.StatusNotFound},
		{fmt.Errorf("%w: dial tcp: connection refused", pg.ErrUnavailable), http.StatusServiceUnavailable},
		{fmt.Errorf("%w: check violation", pg.ErrRejected), http.StatusUnprocessableEntity},
		{unauthorized("no"), http.StatusUnauthorized},
		{errors.New("anything else"), http.StatusInternalServerError},
	} {
		err := c.err
		h := web.Log(discardLogger(), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { writeError(w, r, err) }))
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest("GET", "/", nil))
		res := response{w, t}
		res.wantStatus(c.want)
		if d := res.detail(); strings.Contains(d, "refused") || strings.Contains(d, "violation") {
			t.Errorf("%v: detail %q leaks the cause", c.err, d)
		}
	}
}

func TestAClientThatLeftGetsNothingAndIsLoggedAs499(t *testing.T) {
	t.Parallel()
	var logs strings.Builder
	h := web.Log(slogTo(&logs), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, r, fmt.Errorf("%w: %w", pg.ErrUnavailable, r.Context().Err()))
	}))
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // as net/http does when the client's connection closes
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest("GET", "/api/u/tasks", nil).WithContext(ctx))
	if w.Body.Len() != 0 {
		t.Errorf("body %q for a client that has gone", w.Body.String())
	}
	if !strings.Contains(logs.String(), "status=499") || strings.Contains(logs.String(), "WARN") {
		t.Errorf("log %q, want one access line with status 499 and no warning", logs.String())
	}
}

// TestAListCutShortKeepsNoListHeaders: an error before a list's first bytes is answered
// as an error, without the ETag and X-Total-Count of the list it did not send.
func TestAListCutShortKeepsNoListHeaders(t *testing.T) {
	t.Parallel()
	w := httptest.NewRecorder()
	list := web.NewJSONStream(w, httptest.NewRequest("GET", "/", nil), 0)
	buf := web.GetBuffer()
	*buf = append(*buf, '[')
	list.Begin(http.Header{"Etag": {`"1"`}, "X-Total-Count": {"3"}}, buf)
	list.Add(true, func(b []byte) []byte { return task.AppendJSON(b, &task.Task{ID: 1}) })
	failure := errors.New("the third row failed")
	if err := list.End("]", failure); err != failure {
		t.Fatalf("end = %v, want the error back to answer with", err)
	}
	if w.Header().Get("ETag") != "" || w.Header().Get("X-Total-Count") != "" || w.Body.Len() != 0 {
		t.Errorf("headers %v, body %q", w.Header(), w.Body)
	}
}
