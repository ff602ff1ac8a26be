package main

import (
	"net/http"
	"strings"
	"testing"

	"taskflow/internal/testkit"
	"taskflow/internal/web"
)

func corsHeaders(h http.Header) []string {
	var names []string
	for name := range h {
		if strings.HasPrefix(name, "Access-Control-") {
			names = append(names, name)
		}
	}
	return names
}

func TestCORSAllowedOrigin(t *testing.T) {
	t.Parallel()
	api := newTestAPI(noDatabase(t))
	me := api.newUser(t)
	origin := map[string]string{"Origin": testOrigin}

	cases := []struct {
		name string
		req  request
		want int
	}{
		{"a successful request", request{method: "GET", path: "/healthz", header: origin}, http.StatusOK},
		{"a 401, so the app can read why", request{method: "GET", path: "/api/" + me.id + "/tasks", header: origin}, http.StatusUnauthorized},
		{"a 503 from the store", request{method: "GET", path: "/api/" + me.id + "/tasks/1", token: me.token, header: origin}, http.StatusServiceUnavailable},
		{"a 404 from the mux", request{method: "GET", path: "/nope", header: origin}, http.StatusNotFound},
		{"a 405 from the mux", request{method: "DELETE", path: "/api/" + me.id + "/tasks", token: me.token, header: origin}, http.StatusMethodNotAllowed},
	}
	for _, c := range cases {
		t.Run(c.name+" carries the CORS headers", func(t *testing.T) {
			res := api.do(t, c.req).wantStatus(c.want)
			h := res.Header()
			if h.Get("Access-Control-Allow-Origin") != testOrigin || h.Get("Access-Control-Allow-Credentials") != "true" {
				t.Errorf("Allow-Origin %q Allow-Credentials %q", h.Get("Access-Control-Allow-Origin"), h.Get("Access-Control-Allow-Credentials"))
			}
			if !strings.Contains(strings.Join(h.Values("Vary"), ","), "Origin") {
				t.Errorf("Vary %q lacks Origin", h.Values("Vary"))
			}
			for _, exposed := range []string{"X-Total-Count", "Location"} {
				if !strings.Contains(h.Get("Access-Control-Expose-Headers"), exposed) {
					t.Errorf("Expose-Headers %q lacks %s, so the frontend cannot read it", h.Get("Access-Control-Expose-Headers"), exposed)
				}
			}
		})
	}
}

func TestCORSPreflight(t *testing.T) {
	t.Parallel()
	api := newTestAPI(noDatabase(t))
	me := testkit.NewUserID()
	for _, method := range []string{"GET", "POST", "PUT", "PATCH", "DELETE"} {
		res := api.do(t, request{method: "OPTIONS", path: "/api/" + me + "/tasks/1", header: map[string]string{
			"Origin":                         testOrigin,
			"Access-Control-Request-Method":  method,
			"Access-Control-Request-Headers": "authorization, content-type",
		}}).wantStatus(http.StatusNoContent)
		h := res.Header()
		if h.Get("Access-Control-Allow-Origin") != testOrigin || h.Get("Access-Control-Allow-Credentials") != "true" {
			t.Errorf("preflight for %s: Allow-Origin %q Allow-Credentials %q", method, h.Get("Access-Control-Allow-Origin"), h.Get("Access-Control-Allow-Credentials"))
		}
		if !strings.Contains(h.Get("Access-Control-Allow-Methods"), method) {
			t.Errorf("Allow-Methods %q lacks %s", h.Get("Access-Control-Allow-Methods"), method)
		}
		for _, header := range []string{"Authorization", "Content-Type"} {
			if !strings.Contains(h.Get("Access-Control-Allow-Headers"), header) {
				t.Errorf("Allow-Headers %q lacks %s", h.Get("Access-Control-Allow-Headers"), header)
			}
		}
		if h.Get("Access-Control-Max-Age") == "" {
			t.Error("no Access-Control-Max-Age")
		}
		if res.Body.Len() != 0 {
			t.Errorf("preflight body %q", res.Body.String())
		}
	}
}

func TestCORSDisallowedOriginGetsNoCORSHeaders(t *testing.T) {
	t.Parallel()
	api := newTestAPI(noDatabase(t))
	me := api.newUser(t)
	for _, origin := range []string{"http://evil.example", "http://localhost:3001", "https://localhost:3000", "null", "http://localhost:3000.evil.example"} {
		res := api.do(t, request{method: "GET", path: "/api/" + me.id + "/tasks", token: me.token, header: map[string]string{"Origin": origin}})
		if names := corsHeaders(res.Header()); len(names) != 0 {
			t.Errorf("origin %s got %v", origin, names)
		}
		pre := api.do(t, request{method: "OPTIONS", path: "/api/" + me.id + "/tasks", header: map[string]string{
			"Origin": origin, "Access-Control-Request-Method": "DELETE",
		}})
		if names := corsHeaders(pre.Header()); len(names) != 0 || pre.Code == http.StatusNoContent {
			t.Errorf("preflight from %s: status %d, CORS headers %v", origin, pre.Code, names)
		}
	}
	if names := corsHeaders(api.do(t, request{method: "GET", path: "/healthz"}).Header()); len(names) != 0 {
		t.Errorf("a request without Origin got %v", names)
	}
}

func TestCORSEveryConfiguredOriginAndNeverAWildcard(t *testing.T) {
	t.Parallel()
	origins, err := web.ParseOrigins(" https://app.example.com/ , http://localhost:3000")
	if err != nil {
		t.Fatal(err)
	}
	h := web.CORS(origins, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	api := &testAPI{handler: h}
	for _, origin := range []string{"https://app.example.com", "http://localhost:3000"} {
		got := api.do(t, request{method: "GET", path: "/", header: map[string]string{"Origin": origin}}).Header().Get("Access-Control-Allow-Origin")
		if got != origin {
			t.Errorf("origin %s: Allow-Origin %q", origin, got)
		}
	}
	if _, err := web.ParseOrigins("*"); err == nil {
		t.Error("CORS_ORIGINS=* accepted alongside credentials")
	}
}

func TestOptionsWithoutPreflightIsA405(t *testing.T) {
	t.Parallel()
	api := newTestAPI(noDatabase(t))
	res := api.do(t, request{method: "OPTIONS", path: "/api/someone/tasks", header: map[string]string{"Origin": testOrigin}}).wantStatus(http.StatusMethodNotAllowed)
	res.detail()
}

func TestUnknownPathAndMethod(t *testing.T) {
	t.Parallel()
	api := newTestAPI(noDatabase(t))
	me := api.newUser(t)
	for _, path := range []string{"/", "/api", "/api/{me}", "/api/{me}/tasks/1/2", "/api/{me}/tasks/", "/nope",
		// Paths the mux would redirect to their clean form, with an HTML body.
		"/api//{me}/tasks", "/api/{me}//tasks", "/api/{me}/./tasks", "/api/x/../{me}/tasks", "//healthz"} {
		res := me.do(t, "GET", path, "").wantStatus(http.StatusNotFound)
		res.detail()
		if loc := res.Header().Get("Location"); loc != "" {
			t.Errorf("GET %s: Location %q on a 404", path, loc)
		}
	}
	for _, c := range []struct{ method, path, allow string }{
		{"DELETE", "/api/{me}/tasks", "GET, HEAD, POST"},
		{"POST", "/api/{me}/tasks/1", "DELETE, GET, HEAD, PUT"},
		{"GET", "/api/{me}/tasks/1/complete", "PATCH"},
		{"POST", "/healthz", "GET, HEAD"},
	} {
		res := me.do(t, c.method, c.path, "").wantStatus(http.StatusMethodNotAllowed)
		res.detail()
		if got := res.Header().Get("Allow"); got != c.allow {
			t.Errorf("%s %s: Allow %q, want %q", c.method, c.path, got, c.allow)
		}
	}
}

func TestPanicIs500AndTheServerGoesOn(t *testing.T) {
	t.Parallel()
	var logs strings.Builder
	log := slogTo(&logs)
	h := web.Log(log, web.Recover(web.CORS([]string{testOrigin}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/boom" {
			panic("kaboom")
		}
		w.WriteHeader(http.StatusOK)
	}))))
	api := &testAPI{handler: h}
	res := api.do(t, request{method: "GET", path: "/boom", header: map[string]string{"Origin": testOrigin}}).wantStatus(http.StatusInternalServerError)
	if d := res.detail(); d != "internal server error" {
		t.Errorf("detail %q", d)
	}
	if res.Header().Get("Access-Control-Allow-Origin") != testOrigin {
		t.Errorf("the 500 lost its CORS headers, so a browser could not read it")
	}
	if !strings.Contains(logs.String(), "kaboom") || !strings.Contains(logs.String(), "goroutine") {
		t.Errorf("the log lacks the panic and its stack:\n%s", logs.String())
	}
	api.do(t, request{method: "GET", path: "/fine"}).wantStatus(http.StatusOK)
}

func TestRequestIDIsKeptOrMade(t *testing.T) {
	t.Parallel()
	api := newTestAPI(noDatabase(t))
	if got := api.do(t, request{method: "GET", path: "/healthz", header: map[string]string{"X-Request-ID": "abc-123"}}).Header().Get("X-Request-ID"); got != "abc-123" {
		t.Errorf("X-Request-ID %q, want the client's abc-123", got)
	}
	for _, bad := range []string{"", "has space", strings.Repeat("x", 200), "new\nline", `quote"`} {
		got := api.do(t, request{method: "GET", path: "/healthz", header: map[string]string{"X-Request-ID": bad}}).Header().Get("X-Request-ID")
		if got == bad || len(got) == 0 || strings.Trim(got, "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") != "" {
			t.Errorf("for %q the server answered X-Request-ID %q, want a fresh sane id", bad, got)
		}
	}
}
