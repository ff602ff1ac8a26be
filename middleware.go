package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"net/http"
	"path"
	"runtime/debug"
	"strings"
	"time"
)

// requestInfo is what the access log learns about a request as it passes through the
// layers; withRequestLog owns it, inner layers fill it in.
type requestInfo struct {
	id     string
	userID string // set once the token is verified
	base   *slog.Logger
	log    *slog.Logger // base tagged with id, made by logger when first needed
	quiet  bool         // no access log line: the request is counted elsewhere (see writeError)
}

type requestInfoKey struct{}

func infoFrom(ctx context.Context) *requestInfo {
	info, _ := ctx.Value(requestInfoKey{}).(*requestInfo)
	return info
}

// logger returns the request's logger, which tags every line with the request id. Most
// requests log nothing but their access line, so it is made only when asked for.
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

// Unwrap lets http.ResponseController reach the connection to flush or set deadlines.
func (rw *statusRecorder) Unwrap() http.ResponseWriter { return rw.ResponseWriter }

// withRequestLog gives every request an id (the client's X-Request-ID when it is a sane
// token), a logger that carries it, and one access log line. It never logs the token,
// the body or the query string.
func withRequestLog(base *slog.Logger, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		id := r.Header.Get("X-Request-ID")
		if !saneRequestID(id) {
			id = rand.Text()
		}
		w.Header().Set("X-Request-ID", id)
		info := &requestInfo{id: id, base: base}
		rw := &statusRecorder{ResponseWriter: w}
		// Deferred, so that a handler that drops the connection is logged too.
		defer func() {
			if info.quiet {
				return
			}
			status := rw.status
			if r.Context().Err() != nil {
				// The client went away before the handler was done (the context is
				// cancelled only then, or once ServeHTTP has returned).
				status = statusClientClosed
			}
			base.LogAttrs(r.Context(), slog.LevelInfo, "request",
				slog.String("request_id", id),
				slog.String("method", r.Method),
				slog.String("route", route(r.Pattern)),
				slog.Int("status", status),
				slog.Int("bytes", rw.bytes),
				slog.Float64("duration_ms", float64(time.Since(start).Microseconds())/1000),
				slog.String("user_id", info.userID),
			)
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

// withRecover turns a panic into a logged 500 so one bad request cannot take the
// process down. http.ErrAbortHandler is net/http's own way to abort and passes through.
func withRecover(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			v := recover()
			if v == nil {
				return
			}
			if v == http.ErrAbortHandler {
				panic(v)
			}
			logger(r.Context()).Error("panic", "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
			if rw, ok := w.(*statusRecorder); ok && rw.status != 0 {
				panic(http.ErrAbortHandler) // the response is under way; cut it off visibly
			}
			writeError(w, r, errInternal)
		}()
		next.ServeHTTP(w, r)
	})
}

const (
	corsAllowMethods  = "GET, POST, PUT, PATCH, DELETE"
	corsAllowHeaders  = "Authorization, Content-Type, X-Request-ID, Idempotency-Key, If-Match, If-None-Match"
	corsExposeHeaders = "Location, X-Total-Count, X-Request-ID, ETag, Idempotent-Replayed"
	corsMaxAge        = "600"
)

// withCORS implements CORS for an exact allow-list of origins with credentials. It sits
// outside the mux because the mux would answer a preflight (OPTIONS) with 405, and
// outside authentication because browsers send preflights without the token.
func withCORS(origins []string, next http.Handler) http.Handler {
	allowed := make(map[string]bool, len(origins))
	for _, o := range origins {
		allowed[o] = true
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		// The answer depends on Origin whether or not this request has one, so caches
		// must key on it either way.
		h.Add("Vary", "Origin")
		origin := r.Header.Get("Origin")
		preflight := r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != ""
		if preflight {
			h.Add("Vary", "Access-Control-Request-Method")
			h.Add("Vary", "Access-Control-Request-Headers")
		}
		if origin == "" || !allowed[origin] {
			if preflight {
				writeError(w, r, &apiError{status: http.StatusForbidden, detail: "origin not allowed"})
				return
			}
			next.ServeHTTP(w, r)
			return
		}
		h.Set("Access-Control-Allow-Origin", origin)
		h.Set("Access-Control-Allow-Credentials", "true")
		if preflight {
			h.Set("Access-Control-Allow-Methods", corsAllowMethods)
			h.Set("Access-Control-Allow-Headers", corsAllowHeaders)
			h.Set("Access-Control-Max-Age", corsMaxAge)
			w.WriteHeader(http.StatusNoContent)
			return
		}
		h.Set("Access-Control-Expose-Headers", corsExposeHeaders)
		next.ServeHTTP(w, r)
	})
}

// withJSONErrors serves the mux, but gives the contract's JSON errors where the mux
// would answer by itself in plain text: 404 when no route matches, 405 (with the mux's
// Allow) when one matches another method. A path not in its clean form, which the mux
// would redirect with an HTML body, is a 404: every resource has exactly one URL.
func withJSONErrors(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !cleanPath(r.URL.EscapedPath()) {
			writeError(w, r, errNoRoute)
			return
		}
		mux.ServeHTTP(&muxErrorWriter{ResponseWriter: w, r: r}, r)
	})
}

// route is the path of a mux pattern such as "GET /healthz"; "" when no route matched.
func route(pattern string) string {
	_, path, _ := strings.Cut(pattern, " ")
	return path
}

var errNoRoute = &apiError{status: http.StatusNotFound, detail: "not found"}

// cleanPath reports whether p is already what the mux would clean it to.
func cleanPath(p string) bool {
	c := path.Clean(p)
	if strings.HasSuffix(p, "/") && c != "/" {
		c += "/"
	}
	return c == p
}

// muxErrorWriter replaces the body the mux writes when no route matched (r.Pattern is
// then empty) with the contract's error; handlers write through it untouched.
type muxErrorWriter struct {
	http.ResponseWriter
	r        *http.Request
	replaced bool
}

func (m *muxErrorWriter) WriteHeader(status int) {
	if m.r.Pattern != "" {
		m.ResponseWriter.WriteHeader(status)
		return
	}
	m.replaced = true
	if status == http.StatusMethodNotAllowed {
		writeError(m.ResponseWriter, m.r, &apiError{status: status, detail: "method not allowed"})
		return
	}
	writeError(m.ResponseWriter, m.r, errNoRoute)
}

func (m *muxErrorWriter) Write(b []byte) (int, error) {
	if m.replaced {
		return len(b), nil
	}
	return m.ResponseWriter.Write(b)
}

func (m *muxErrorWriter) Unwrap() http.ResponseWriter { return m.ResponseWriter }
