package web

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"path"
	"runtime/debug"
	"strings"
)

// Recover turns a panic into a logged 500 so one bad request cannot take the
// process down. http.ErrAbortHandler is net/http's own way to abort and passes through.
func Recover(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			v := recover()
			if v == nil {
				return
			}
			if v == http.ErrAbortHandler {
				panic(v)
			}
			Logger(r.Context()).Error("panic", "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
			if rw, ok := w.(*statusRecorder); ok && rw.status != 0 {
				panic(http.ErrAbortHandler) // the response is under way; cut it off visibly
			}
			WriteError(w, r, fmt.Errorf("panic: %v", v), http.StatusInternalServerError, "internal server error")
		}()
		next.ServeHTTP(w, r)
	})
}

const (
	corsAllowMethods  = "GET, POST, PUT, PATCH, DELETE"
	corsAllowHeaders  = "Authorization, Content-Type, X-Request-ID, Idempotency-Key, If-Match, If-None-Match, Last-Event-ID"
	corsExposeHeaders = "Location, X-Total-Count, X-Request-ID, ETag, Idempotent-Replayed, X-Cursor, Retry-After"
	corsMaxAge        = "600"
)

// CORS implements CORS for an exact allow-list of origins with credentials. It sits
// outside the mux because the mux would answer a preflight (OPTIONS) with 405, and
// outside authentication because browsers send preflights without the token.
func CORS(origins []string, next http.Handler) http.Handler {
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
		} else if strings.HasPrefix(r.URL.Path, "/api/") {
			// A user's tasks, and the errors about them (a refused origin's too), are for
			// that user only.
			h.Set("Cache-Control", "no-store")
		}
		if origin == "" || !allowed[origin] {
			if preflight {
				WriteError(w, r, errOriginRefused, http.StatusForbidden, "origin not allowed")
				return
			}
			if origin != "" {
				r = r.WithContext(context.WithValue(r.Context(), refusedOriginKey{}, true))
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

// errOriginRefused is why a preflight from an origin not listed was refused.
var errOriginRefused = errors.New("origin not allowed")

type refusedOriginKey struct{}

// ParseOrigins reads a comma-separated list of origins for CORS. Browsers send Origin as
// scheme://host[:port], so an entry of any other shape could never match and is reported
// instead of ignored.
func ParseOrigins(list string) ([]string, error) {
	var origins []string
	for _, o := range strings.Split(list, ",") {
		o = strings.TrimSuffix(strings.TrimSpace(o), "/")
		if o == "" {
			continue
		}
		if o == "*" {
			return nil, errors.New("cannot be *: credentials are allowed, so origins must be listed exactly")
		}
		u, err := url.Parse(o)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Path != "" || u.RawQuery != "" || u.User != nil {
			return nil, fmt.Errorf("entry %q must look like https://app.example.com or http://localhost:3000", o)
		}
		origins = append(origins, strings.ToLower(o))
	}
	if len(origins) == 0 {
		return nil, errors.New("lists no origin")
	}
	return origins, nil
}

// RefusedOrigin reports whether the request came from a browser page of an origin that
// CORS refused: the page cannot read the answer. A handler whose answer would hold
// something until the page goes away (an event stream) refuses it outright.
func RefusedOrigin(r *http.Request) bool {
	refused, _ := r.Context().Value(refusedOriginKey{}).(bool)
	return refused
}

// JSONErrors serves the mux, but gives the contract's JSON errors where the mux
// would answer by itself in plain text: 404 when no route matches, 405 (with the mux's
// Allow) when one matches another method. A path not in its clean form, which the mux
// would redirect with an HTML body, is a 404: every resource has exactly one URL.
func JSONErrors(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !cleanPath(r.URL.EscapedPath()) {
			WriteError(w, r, errNoRoute, http.StatusNotFound, "not found")
			return
		}
		mux.ServeHTTP(&muxErrorWriter{ResponseWriter: w, r: r}, r)
	})
}

// cleanPath reports whether p is already what the mux would clean it to.
func cleanPath(p string) bool {
	c := path.Clean(p)
	if strings.HasSuffix(p, "/") && c != "/" {
		c += "/"
	}
	return c == p
}

var (
	errNoRoute  = errors.New("no route")
	errNoMethod = errors.New("method not allowed")
)

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
		WriteError(m.ResponseWriter, m.r, errNoMethod, http.StatusMethodNotAllowed, "method not allowed")
		return
	}
	WriteError(m.ResponseWriter, m.r, errNoRoute, http.StatusNotFound, "not found")
}

func (m *muxErrorWriter) Write(b []byte) (int, error) {
	if m.replaced {
		return len(b), nil
	}
	return m.ResponseWriter.Write(b)
}

func (m *muxErrorWriter) Unwrap() http.ResponseWriter { return m.ResponseWriter }
