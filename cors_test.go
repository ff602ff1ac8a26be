package main

import (
	"net/http"
	"strings"
	"testing"
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
	api := newTestAPI(t)
	me := api.newUser()
	origin := map[string]string{"Origin": testOrigin}

	cases := []struct {
		name string
		req  request
		want int
	}{
		{"a successful request", request{method: "GET", path: "/api/" + me.id + "/tasks", token: me.token, header: origin}, http.StatusOK},
		{"a 401, so the app can read why", request{method: "GET", path: "/api/" + me.id + "/tasks", header: origin}, http.StatusUnauthorized},
		{"a 404", request{method: "GET", path: "/api/" + me.id + "/tasks/999999999", token: me.token, header: origin}, http.StatusNotFound},
		{"a 405 from the mux", request{method: "DELETE", path: "/api/" + me.id + "/tasks", token: me.token, header: origin}, http.StatusMethodNotAllowed},
	}
	for _, c := range cases {
		t.Run(c.name+" carries the CORS headers", func(t *testing.T) {
			res := api.do(c.req).wantStatus(c.want)
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
	api := newTestAPI(t)
	me := newUserID(t)
	for _, method := range []string{"GET", "POST", "PUT", "PATCH", "DELETE"} {
		res := api.do(request{method: "OPTIONS", path: "/api/" + me + "/tasks/1", header: map[string]string{
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
	api := newTestAPI(t)
	me := api.newUser()
	for _, origin := range []string{"http://evil.example", "http://localhost:3001", "https://localhost:3000", "null", "http://localhost:3000.evil.example"} {
		res := api.do(request{method: "GET", path: "/api/" + me.id + "/tasks", token: me.token, header: map[string]string{"Origin": origin}})
		if names := corsHeaders(res.Header()); len(names) != 0 {
			t.Errorf("origin %s got %v", origin, names)
		}
		pre := api.do(request{method: "OPTIONS", path: "/api/" + me.id + "/tasks", header: map[string]string{
			"Origin": origin, "Access-Control-Request-Method": "DELETE",
		}})
		if names := corsHeaders(pre.Header()); len(names) != 0 || pre.Code == http.StatusNoContent {
			t.Errorf("preflight from %s: status %d, CORS headers %v", origin, pre.Code, names)
		}
	}
	if names := corsHeaders(api.do(request{method: "GET", path: "/healthz"}).Header()); len(names) != 0 {
		t.Errorf("a request without Origin got %v", names)
	}
}

func TestCORSEveryConfiguredOriginAndNeverAWildcard(t *testing.T) {
	t.Parallel()
	origins, err := parseOrigins(" https://app.example.com/ , http://localhost:3000")
	if err != nil {
		t.Fatal(err)
	}
	h := withCORS(origins, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	api := &testAPI{t: t, handler: h}
	for _, origin := range []string{"https://app.example.com", "http://localhost:3000"} {
		got := api.do(request{method: "GET", path: "/", header: map[string]string{"Origin": origin}}).Header().Get("Access-Control-Allow-Origin")
		if got != origin {
			t.Errorf("origin %s: Allow-Origin %q", origin, got)
		}
	}
	if _, err := parseOrigins("*"); err == nil {
		t.Error("CORS_ORIGINS=* accepted alongside credentials")
	}
}

func TestOptionsWithoutPreflightIsA405(t *testing.T) {
	t.Parallel()
	api := newTestAPI(t)
	res := api.do(request{method: "OPTIONS", path: "/api/someone/tasks", header: map[string]string{"Origin": testOrigin}}).wantStatus(http.StatusMethodNotAllowed)
	res.detail()
}
