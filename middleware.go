package main

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strings"
	"time"
)

// responseRecorder remembers what was sent, for the access log, and turns the mux's own
// plain-text 404 and 405 answers (sent when no route matched) into the contract's JSON.
type responseRecorder struct {
	http.ResponseWriter
	info    *requestInfo
	status  int
	bytes   int
	discard bool // the mux's plain-text body is being replaced
}

func (rw *responseRecorder) WriteHeader(status int) {
	if rw.status != 0 {
		return
	}
	rw.status = status
	if rw.info.pattern == "" && (status == http.StatusNotFound || status == http.StatusMethodNotAllowed) {
		detail := "not found"
		if status == http.StatusMethodNotAllowed {
			detail = "method not allowed" // the mux has set Allow
		}
		rw.discard = true
		body := errorJSON(detail)
		writeBody(rw.ResponseWriter, status, body)
		rw.bytes += len(body)
		return
	}
	rw.ResponseWriter.WriteHeader(status)
}

func (rw *responseRecorder) Write(b []byte) (int, error) {
	if rw.status == 0 {
		rw.WriteHeader(http.StatusOK)
	}
	if rw.discard {
		return len(b), nil
	}
	n, err := rw.ResponseWriter.Write(b)
	rw.bytes += n
	return n, err
}

// withRequestLog gives every request an id (the client's X-Request-ID when it is a sane
// token), a logger that carries it, and one access log line. It never logs the token,
// the body or the query string.
func withRequestLog(base *slog.Logger, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		id := r.Header.Get("X-Request-ID")
		if !saneRequestID(id) {
			id = newRequestID()
		}
		w.Header().Set("X-Request-ID", id)
		info := &requestInfo{id: id, base: base}
		rw := &responseRecorder{ResponseWriter: w, info: info}
		next.ServeHTTP(rw, r.WithContext(withRequestInfo(r.Context(), info)))
		if rw.status == 0 {
			rw.status = http.StatusOK
		}
		base.LogAttrs(r.Context(), slog.LevelInfo, "request",
			slog.String("request_id", id),
			slog.String("method", r.Method),
			slog.String("route", info.pattern),
			slog.Int("status", rw.status),
			slog.Int("bytes", rw.bytes),
			slog.Float64("duration_ms", float64(time.Since(start).Microseconds())/1000),
			slog.String("user_id", info.userID),
		)
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

func newRequestID() string {
	var b [12]byte
	rand.Read(b[:]) //nolint:errcheck // crypto/rand.Read does not fail on Linux
	return hex.EncodeToString(b[:])
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
			if rw, ok := w.(*responseRecorder); ok && rw.status != 0 {
				return // the response is already under way; the client sees it cut short
			}
			writeError(w, r, errInternal)
		}()
		next.ServeHTTP(w, r)
	})
}

const (
	corsAllowMethods  = "GET, POST, PUT, PATCH, DELETE"
	corsAllowHeaders  = "Authorization, Content-Type, X-Request-ID"
	corsExposeHeaders = "Location, X-Total-Count, X-Request-ID"
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
				writeError(w, r, &apiError{http.StatusForbidden, "origin not allowed"})
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

// patternRecorder registers routes on a mux, noting each request's route pattern for
// the access log (http.Request.Pattern needs Go 1.23; go.mod says 1.22).
type patternRecorder struct{ mux *http.ServeMux }

func (p patternRecorder) Handle(pattern string, h http.Handler) {
	route := pattern
	if _, path, ok := strings.Cut(pattern, " "); ok {
		route = path
	}
	p.mux.Handle(pattern, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if info := infoFrom(r.Context()); info != nil {
			info.pattern = route
		}
		h.ServeHTTP(w, r)
	}))
}
