package web

import (
	"context"
	"crypto/rand"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// requestInfo is what the access log learns about a request as it passes through the
// layers; withRequestLog owns it, inner layers fill it in.
type requestInfo struct {
	id     string
	userID string // set once the token is verified
	err    error  // why the request failed, if it did
	base   *slog.Logger
	log    *slog.Logger // base tagged with id, made by logger when first needed
}

type requestInfoKey struct{}

func infoFrom(ctx context.Context) *requestInfo {
	info, _ := ctx.Value(requestInfoKey{}).(*requestInfo)
	return info
}

// Logger returns the request's logger, which tags every line with the request id. Most
// requests log nothing but their access line, so it is made only when asked for.
func Logger(ctx context.Context) *slog.Logger {
	info := infoFrom(ctx)
	if info == nil {
		return slog.Default()
	}
	if info.log == nil {
		info.log = info.base.With("request_id", info.id)
	}
	return info.log
}

// NoteUser and NoteError tell the access line whose request it was and why it failed.
func NoteUser(ctx context.Context, userID string) {
	if info := infoFrom(ctx); info != nil {
		info.userID = userID
	}
}

func NoteError(ctx context.Context, err error) {
	if info := infoFrom(ctx); info != nil {
		info.err = err
	}
}

// statusRecorder remembers the status and size of a response, for the access log.
type statusRecorder struct {
	http.ResponseWriter
	status int
	bytes  int
}

func (rw *statusRecorder) WriteHeader(status int) {
	if rw.status == 0 {
		rw.status = status
	}
	rw.ResponseWriter.WriteHeader(status)
}

func (rw *statusRecorder) Write(b []byte) (int, error) {
	if rw.status == 0 {
		rw.status = http.StatusOK
	}
	n, err := rw.ResponseWriter.Write(b)
	rw.bytes += n
	return n, err
}

// Unwrap lets http.ResponseController reach the connection to flush or take it over.
func (rw *statusRecorder) Unwrap() http.ResponseWriter { return rw.ResponseWriter }

// Log writes the access log of next; see the package comment.
func Log(base *slog.Logger, next http.Handler) http.Handler {
	refused := map[int]*refusals{
		http.StatusUnauthorized:       {log: base, what: "requests refused for their token (401)"},
		http.StatusTooManyRequests:    {log: base, what: "requests refused past a limit (429)"},
		http.StatusServiceUnavailable: {log: base, what: "requests refused (503)"},
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		if c, ok := r.Context().Value(connRequestsKey{}).(*connRequests); ok {
			c.served.Add(1)
		}
		id := r.Header.Get("X-Request-ID")
		if !saneRequestID(id) {
			id = rand.Text()
		}
		w.Header().Set("X-Request-ID", id)
		info := &requestInfo{id: id, base: base}
		rw := &statusRecorder{ResponseWriter: w}
		// Deferred, so that a handler that drops the connection is logged too.
		defer func() {
			status := rw.status
			if r.Context().Err() != nil {
				// The client went away before the handler was done (the context is
				// cancelled only then, or once ServeHTTP has returned).
				status = StatusClientClosed
			}
			if f := refused[status]; f != nil {
				f.add(Route(r.Pattern), info.err)
				return
			}
			level := slog.LevelInfo
			if status >= 500 {
				level = slog.LevelError
			}
			attrs := []slog.Attr{slog.String("request_id", id), slog.String("method", r.Method),
				slog.String("route", Route(r.Pattern)), slog.Int("status", status), slog.Int("bytes", rw.bytes),
				slog.Float64("duration_ms", float64(time.Since(start).Microseconds())/1000), slog.String("user_id", info.userID)}
			if info.err != nil && status >= 400 {
				attrs = append(attrs, slog.String("err", info.err.Error()))
			}
			base.LogAttrs(r.Context(), level, "request", attrs...)
		}()
		r = r.WithContext(context.WithValue(r.Context(), requestInfoKey{}, info))
		next.ServeHTTP(rw, r) // the mux sets r.Pattern
	})
}

// saneRequestID accepts what a proxy or client would plausibly send: a short token of
// URL-safe characters. Anything else could forge or break log lines, so it is replaced.
func saneRequestID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.' || c == ':') {
			return false
		}
	}
	return true
}

// Route is the path of a mux pattern such as "GET /healthz"; "" when no route matched.
func Route(pattern string) string {
	_, path, _ := strings.Cut(pattern, " ")
	return path
}

// refusals logs the first of a kind of refusal after a quiet while at once, and those
// that follow as one line with their count every refusalsLogEvery. (A database outage is
// also told by the breaker, once when it begins and once when it ends.)
type refusals struct {
	log     *slog.Logger
	what    string
	mu      sync.Mutex
	counted int         // since the last line
	flush   *time.Timer // pending while refusals are being counted
}

const refusalsLogEvery = 10 * time.Second

func (f *refusals) add(route string, cause error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.flush != nil {
		f.counted++
		return
	}
	f.log.Warn(f.what+"; further ones are counted", "route", route, "err", errText(cause))
	f.flush = time.AfterFunc(refusalsLogEvery, func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.counted == 0 {
			f.flush = nil // quiet again: the next one is logged at once
			return
		}
		f.log.Warn(f.what, "count", f.counted, "within", refusalsLogEvery.String())
		f.counted = 0
		f.flush.Reset(refusalsLogEvery)
	})
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// Watch has srv count the requests it answers by itself, which no handler
// and so no access line sees: a malformed request (400), headers over MaxHeaderBytes
// (431), an Expect (417) or Transfer-Encoding (501) it does not support, or one cut off
// half sent; and lets a handler reach its connection, to reset it when it cuts an
// answer short (JSONStream). net/http calls a connection active whenever it reads a request's bytes; a
// connection that read more requests than its handlers served answered the rest itself.
func Watch(srv *http.Server, log *slog.Logger) {
	refused := &refusals{log: log, what: "requests refused by the HTTP server itself (malformed, too large, unsupported)"}
	var conns sync.Map // net.Conn → *connRequests
	srv.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		cr := &connRequests{}
		conns.Store(c, cr)
		return context.WithValue(context.WithValue(ctx, connRequestsKey{}, cr), connKey{}, c)
	}
	srv.ConnState = func(c net.Conn, state http.ConnState) {
		v, ok := conns.Load(c)
		if !ok {
			return
		}
		cr := v.(*connRequests)
		switch state {
		case http.StateActive:
			cr.read.Add(1)
		case http.StateClosed, http.StateHijacked:
			conns.Delete(c)
			for range cr.read.Load() - cr.served.Load() {
				refused.add("", nil)
			}
		}
	}
}

type connRequestsKey struct{}

// connRequests counts a connection's requests: those read, and those a handler served.
type connRequests struct{ read, served atomic.Int32 }

// StatusClientClosed is what the access log records for a request whose client went
// away before the answer (nginx's convention): not an error of this service's.
const StatusClientClosed = 499
