// Package web is the HTTP plumbing below the routes, which knows nothing of tasks: the
// access log, panic recovery, CORS, the mux's own 404 and 405 as JSON, bodies written
// whole or streamed in bounded memory, and bounds on every connection's socket. Its
// rules:
//
//   - Every request gets an id (the client's X-Request-ID when it is a sane token), a
//     logger that carries it, and one access line when it ends, with the error behind a
//     4xx or 5xx. The refusals that come by the thousand (401, 429, 503: a flood, a
//     client past a limit, an outage) are the exception: the first after a quiet while
//     is logged, the rest counted, one line every 10 s. No line holds the token, the body
//     or the query string.
//   - A panic is a logged 500; the process goes on.
//   - CORS for an exact list of origins, with credentials: never "*", and a refused
//     origin gets no CORS header at all.
//   - Every error written here is {"detail": ...}.
//   - A body that fits 32 KiB goes in one write with its Content-Length; a longer one
//     streams 32 KiB at a time, and a client that does not take a part within the
//     stream's deadline is cut off: the connection is reset, so that it cannot be taken
//     for a whole answer, and the kernel frees what it held at once.
//   - A connection's socket holds at most SendBuffer of unsent answer, and one whose
//     client acknowledges nothing for the listener's timeout is ended by the kernel:
//     no client, by not reading, makes the kernel hold answers for it.
package web

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"
)

// WriteError answers {"detail": detail} with status, and tells the access log that cause
// was behind it. A client that hung up gets nothing: it is why the request gave up.
func WriteError(w http.ResponseWriter, r *http.Request, cause error, status int, detail string) {
	NoteError(r.Context(), cause)
	if r.Context().Err() != nil {
		w.WriteHeader(StatusClientClosed)
		return
	}
	WriteJSON(w, status, struct {
		Detail string `json:"detail"`
	}{detail})
}

// WriteJSON sends v as the whole body, ended by a newline as a terminal wants it.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		panic(err) // every value sent here is of a type that always encodes
	}
	WriteBody(w, status, append(body, '\n'))
}

// WriteBody sends a whole JSON body. Headers go first: after WriteHeader they are ignored.
func WriteBody(w http.ResponseWriter, status int, body []byte) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	w.Write(body) //nolint:errcheck // the client has gone; nothing left to tell it
}

// Serve serves until ctx ends, then lets the requests in flight finish within grace.
func Serve(ctx context.Context, srv *http.Server, ln net.Listener, grace time.Duration, log *slog.Logger) error {
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	select {
	case err := <-serveErr:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down: finishing requests in flight", "grace", grace.String())
	shutdownCtx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		srv.Close()
		return fmt.Errorf("requests still running after the %s of grace were cut off", grace)
	}
	if err := <-serveErr; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	log.Info("stopped")
	return nil
}
