package main

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// TestCreateValidation sends every body through the whole handler stack. The refusals
// never reach the store, so they run without a database; the accepted bodies need one.
func TestCreateValidation(t *testing.T) {
	t.Parallel()
	store := noDatabase(t)
	if testStoreShared != nil {
		store = testStoreShared
	}
	api := newTestAPI(store)
	me := api.newUser(t)
	é := func(n int) string { return strings.Repeat("é", n) } // 2 bytes, 1 character

	tests := []struct {
		name      string
		body      string
		want      int
		wantTitle string // for 201
	}{
		{"a plain title", `{"title":"x"}`, 201, "x"},
		{"title of 200 two-byte characters", `{"title":"` + é(200) + `"}`, 201, é(200)},
		{"title of 200 four-byte characters", `{"title":"` + strings.Repeat("😀", 200) + `"}`, 201, strings.Repeat("😀", 200)},
		{"title of 200 characters inside white space", `{"title":"  ` + é(200) + "\\t\\n" + `"}`, 201, é(200)},
		{"title as an escaped surrogate pair", `{"title":"\ud83d\ude00"}`, 201, "😀"},
		{"title with inner white space kept", `{"title":" a  b "}`, 201, "a  b"},
		{"description of 1000 two-byte characters", `{"title":"x","description":"` + é(1000) + `"}`, 201, "x"},
		{"description null", `{"title":"x","description":null}`, 201, "x"},
		{"description empty", `{"title":"x","description":""}`, 201, "x"},

		{"title of 201 two-byte characters", `{"title":"` + é(201) + `"}`, 422, ""},
		{"empty title", `{"title":""}`, 422, ""},
		{"blank title", `{"title":" \t\n "}`, 422, ""},
		{"missing title", `{"description":"x"}`, 422, ""},
		{"empty object", `{}`, 422, ""},
		{"null title", `{"title":null}`, 422, ""},
		{"number title", `{"title":5}`, 422, ""},
		{"boolean title", `{"title":true}`, 422, ""},
		{"array title", `{"title":["x"]}`, 422, ""},
		{"object title", `{"title":{"a":1}}`, 422, ""},
		{"description of 1001 characters", `{"title":"x","description":"` + é(1001) + `"}`, 422, ""},
		{"number description", `{"title":"x","description":5}`, 422, ""},
		{"NUL in title", `{"title":"a\u0000b"}`, 422, ""},
		{"NUL in description", `{"title":"x","description":"\u0000"}`, 422, ""},
		{"unknown field", `{"title":"x","priority":1}`, 422, ""},
		{"field name in another case", `{"Title":"x"}`, 422, ""},
		{"completed on create", `{"title":"x","completed":false}`, 422, ""},
		{"an array", `[{"title":"x"}]`, 422, ""},
		{"a string", `"x"`, 422, ""},
		{"a number", `1`, 422, ""},
		{"null", `null`, 422, ""},

		{"invalid UTF-8", "{\"title\":\"\xff\xfe\"}", 400, ""},
		{"overlong UTF-8", "{\"title\":\"\xc0\xaf\"}", 400, ""},
		{"a lone high surrogate", `{"title":"\ud800"}`, 400, ""},
		{"a lone low surrogate", `{"title":"a\udc00b"}`, 400, ""},
		{"a reversed pair", `{"title":"\ude00\ud83d"}`, 400, ""},
		{"an escaped backslash, then text", `{"title":"\\ud800"}`, 201, `\ud800`},
		{"U+FFFD as sent", `{"title":"\ufffd \uFFFD �"}`, 201, "� � �"},
		{"a raw NUL byte", "{\"title\":\"a\x00b\"}", 400, ""},
		{"trailing data", `{"title":"x"} x`, 400, ""},
		{"two objects", `{"title":"x"}{"title":"y"}`, 400, ""},
		{"a trailing comma", `{"title":"x",}`, 400, ""},
		{"truncated", `{"title":"x"`, 400, ""},
		{"single quotes", `{'title':'x'}`, 400, ""},
		{"white space only", "  \n ", 400, ""},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s is %d", tt.name, tt.want), func(t *testing.T) {
			if tt.want == http.StatusCreated {
				testStore(t)
			}
			res := me.do(t, "POST", "/api/{me}/tasks", tt.body).wantStatus(tt.want)
			if tt.want != http.StatusCreated {
				res.detail()
				return
			}
			if got := res.task().Title; got != tt.wantTitle {
				t.Errorf("stored title %q, want %q", got, tt.wantTitle)
			}
		})
	}
	if testStoreShared == nil {
		return
	}
	created := 0
	for _, tt := range tests {
		if tt.want == http.StatusCreated {
			created++
		}
	}
	if got := me.do(t, "GET", "/api/{me}/tasks", "").Header().Get("X-Total-Count"); got != fmt.Sprint(created) {
		t.Errorf("%s tasks stored, want %d: a rejected request wrote something", got, created)
	}
}

func TestUpdateValidation(t *testing.T) {
	t.Parallel()
	me := newTestAPI(testStore(t)).newUser(t)
	task := me.create(t, "x")
	path := fmt.Sprintf("/api/{me}/tasks/%d", task.ID)
	for _, c := range []struct {
		body string
		want int
	}{
		{`{"completed":"yes"}`, 422},
		{`{"completed":null}`, 422},
		{`{"completed":1}`, 422},
		{`{"title":null}`, 422},
		{`{"title":""}`, 422},
		{`{"user_id":"someone-else"}`, 422},
		{`{"id":5}`, 422},
		{`{"created_at":"2000-01-01T00:00:00Z"}`, 422},
		{`{"title":"ok","completed":"no"}`, 422},
		{`{"title":"x"`, 400},
		{`{}`, 422},
		{`{"description":null}`, 200},
		{`{"completed":true,"title":"y","description":"z"}`, 200},
	} {
		res := me.do(t, "PUT", path, c.body).wantStatus(c.want)
		if c.want != http.StatusOK {
			res.detail()
		}
	}
	got := me.do(t, "GET", path, "").wantStatus(http.StatusOK).task()
	if got.Title != "y" || !got.Completed || *got.Description != "z" {
		t.Errorf("after the updates %+v", got)
	}
}

func TestBodyLimitsAndContentType(t *testing.T) {
	t.Parallel()
	api := newTestAPI(noDatabase(t))
	me := api.newUser(t)
	taskPath := "/api/" + me.id + "/tasks/1"

	big := `{"title":"x","description":"` + strings.Repeat("a", maxBodyBytes) + `"}`
	for _, c := range []struct{ method, path string }{{"POST", "/api/" + me.id + "/tasks"}, {"PUT", taskPath}} {
		api.do(t, request{method: c.method, path: c.path, body: big, token: me.token}).wantStatus(http.StatusRequestEntityTooLarge).detail()
		for _, ct := range []string{"text/plain", "application/x-www-form-urlencoded", "", "application/jsonx", "json"} {
			api.do(t, request{method: c.method, path: c.path, body: `{"title":"x"}`, token: me.token,
				header: map[string]string{"Content-Type": ct}}).wantStatus(http.StatusUnsupportedMediaType).detail()
		}
		// Accepted: these get as far as the store, which here has no database.
		for _, ct := range []string{"application/json; charset=utf-8", "Application/JSON", "application/json;charset=UTF-8"} {
			api.do(t, request{method: c.method, path: c.path, body: `{"title":"y"}`, token: me.token,
				header: map[string]string{"Content-Type": ct}}).wantStatus(http.StatusServiceUnavailable)
		}
	}
	// Exactly at the limit is accepted as far as size goes (it then fails validation).
	atLimit := `{"title":"x","description":"` + strings.Repeat("a", maxBodyBytes-len(`{"title":"x","description":""}`)) + `"}`
	me.do(t, "POST", "/api/{me}/tasks", atLimit).wantStatus(http.StatusUnprocessableEntity)
	// A chunked body of unknown length is cut at the limit too.
	api.do(t, request{method: "POST", path: "/api/" + me.id + "/tasks", body: big, token: me.token, chunked: true}).
		wantStatus(http.StatusRequestEntityTooLarge).detail()
}
