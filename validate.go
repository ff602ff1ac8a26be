package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"unicode/utf8"

	"taskflow/internal/feed"
	"taskflow/internal/web"
)

// Whether a request is well-formed: bodies, query parameters, task ids, cursors, and the
// headers a write may carry. The schema's CHECKs mirror the body rules as the database's
// own guard.

const (
	maxBodyBytes   = 64 << 10
	maxTitle       = 200
	maxDescription = 1000
	maxListLimit   = 1000
)

// readNewTask reads a create's body, which it also returns as sent: a title, and a
// description or none. completed is not taken: the server decides the initial state.
func readNewTask(w http.ResponseWriter, r *http.Request) (TaskPatch, []byte, error) {
	body, err := readJSONBody(w, r)
	if err != nil {
		return TaskPatch{}, nil, err
	}
	p, err := decodeTask(body, false)
	if err == nil && p.Title == nil {
		err = unprocessable("title is required")
	}
	return p, body, err
}

// readPatch reads an update's body: at least one of title, description, completed.
func readPatch(w http.ResponseWriter, r *http.Request) (TaskPatch, error) {
	body, err := readJSONBody(w, r)
	if err != nil {
		return TaskPatch{}, err
	}
	p, err := decodeTask(body, true)
	if err == nil && p == (TaskPatch{}) {
		err = unprocessable("the body must set at least one of title, description, completed")
	}
	return p, err
}

// readJSONBody reads a body sent as JSON, within the size limit.
func readJSONBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	if r.ContentLength > maxBodyBytes {
		return nil, tooLarge(maxBodyBytes)
	}
	if mediaType, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mediaType != "application/json" {
		return nil, errNotJSON
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	var overLimit *http.MaxBytesError
	switch {
	case errors.As(err, &overLimit):
		return nil, tooLarge(maxBodyBytes)
	case err != nil:
		return nil, badRequest("could not read the request body")
	}
	return body, nil
}

// decodeTask validates a task body: 400 for anything that is not well-formed UTF-8 JSON
// (trailing data included), 422 for JSON that is not a valid task object. Keys match
// exactly: encoding/json alone would take "Title" for "title".
func decodeTask(body []byte, allowCompleted bool) (TaskPatch, error) {
	var p TaskPatch
	// encoding/json silently turns invalid UTF-8 into U+FFFD; a client that sent it would
	// get back text it never wrote.
	if !utf8.Valid(body) {
		return p, badRequest("request body is not valid UTF-8")
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return p, badRequest("request body is empty; expected a JSON object")
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil || fields == nil {
		var syntaxErr *json.SyntaxError
		if errors.As(err, &syntaxErr) {
			return p, badRequest("request body is not valid JSON: %s", strings.TrimPrefix(syntaxErr.Error(), "json: "))
		}
		return p, unprocessable("request body must be a JSON object")
	}
	for name, raw := range fields {
		switch {
		case name == "title":
			s, err := decodeString(name, raw, false)
			if err != nil {
				return p, err
			}
			title := strings.TrimSpace(*s)
			if n := utf8.RuneCountInString(title); n < 1 || n > maxTitle {
				return p, unprocessable("title must be 1 to %d characters after trimming white space, got %d", maxTitle, n)
			}
			p.Title = &title
		case name == "description":
			s, err := decodeString(name, raw, true)
			if err != nil {
				return p, err
			}
			if s != nil && utf8.RuneCountInString(*s) > maxDescription {
				return p, unprocessable("description must be at most %d characters", maxDescription)
			}
			p.SetDescription, p.Description = true, s
		case name == "completed" && allowCompleted:
			var b bool
			if string(raw) == "null" || json.Unmarshal(raw, &b) != nil {
				return p, unprocessable("completed must be a boolean")
			}
			p.Completed = &b
		default:
			return p, unprocessable("unknown field %q", truncate(name, 64))
		}
	}
	return p, nil
}

// decodeString decodes a JSON string member, or null when nullable.
func decodeString(name string, raw json.RawMessage, nullable bool) (*string, error) {
	if string(raw) == "null" && nullable {
		return nil, nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		if nullable {
			return nil, unprocessable("%s must be a string or null", name)
		}
		return nil, unprocessable("%s must be a string", name)
	}
	if strings.IndexByte(s, 0) >= 0 {
		return nil, unprocessable("%s must not contain NUL characters", name)
	}
	// An unpaired surrogate escape (\ud800) also becomes U+FFFD; the body is valid UTF-8,
	// so a U+FFFD that the text does not spell, raw or as \ufffd, is one of those.
	if n := strings.Count(s, "\uFFFD"); n > 0 && n > strings.Count(string(raw), "\uFFFD")+strings.Count(strings.ToLower(string(raw)), `\ufffd`) {
		return nil, badRequest("%s has an unpaired UTF-16 surrogate escape", name)
	}
	return &s, nil
}

// truncate shortens client-supplied text before it is echoed in an error detail.
func truncate(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	return string([]rune(s)[:n]) + "…"
}

// queryValues reads the known parameters of a query string. Unknown ones are ignored, as
// most HTTP APIs do; a known one given twice is a 400.
func queryValues(rawQuery string, known ...string) (map[string]string, error) {
	values, err := url.ParseQuery(rawQuery)
	if err != nil {
		return nil, badRequest("malformed query string")
	}
	m := map[string]string{}
	for _, name := range known {
		switch v := values[name]; len(v) {
		case 0:
		case 1:
			m[name] = v[0]
		default:
			return nil, badRequest("query parameter %s is given more than once", name)
		}
	}
	return m, nil
}

// parseListQuery validates the list's query: an unknown value of a known parameter is a 400.
func parseListQuery(rawQuery string) (ListQuery, error) {
	q := ListQuery{Status: "all", Sort: "created", Desc: true}
	v, err := queryValues(rawQuery, "status", "sort", "order", "limit", "offset")
	if err != nil {
		return q, err
	}
	for _, p := range []struct {
		name, allowed string
		set           func(string)
	}{
		{"status", "all pending completed", func(s string) { q.Status = s }},
		{"sort", "created updated title", func(s string) { q.Sort = s }},
		{"order", "asc desc", func(s string) { q.Desc = s == "desc" }},
	} {
		if s, ok := v[p.name]; ok {
			if !strings.Contains(" "+p.allowed+" ", " "+s+" ") {
				return q, badRequest("query parameter %s must be one of %s, got %q", p.name, strings.ReplaceAll(p.allowed, " ", ", "), truncate(s, 64))
			}
			p.set(s)
		}
	}
	if s, ok := v["limit"]; ok {
		if q.Limit, ok = decimal(s, 1, maxListLimit); !ok {
			return q, badRequest("query parameter limit must be an integer from 1 to %d, got %q", maxListLimit, truncate(s, 64))
		}
	}
	if s, ok := v["offset"]; ok {
		n, ok := decimal(s, 0, math.MaxInt64)
		if !ok {
			return q, badRequest("query parameter offset must be a non-negative integer, got %q", truncate(s, 64))
		}
		q.Offset = int64(n)
	}
	return q, nil
}

// parseChangesQuery reads /changes' since (a cursor; absent: a full sync) and limit.
func parseChangesQuery(rawQuery, userID string) (from feed.Cursor, limit int, err error) {
	v, err := queryValues(rawQuery, "since", "limit")
	if err != nil {
		return from, 0, err
	}
	if s, ok := v["since"]; ok {
		if from, err = feed.DecodeCursor(userID, s); err != nil {
			return from, 0, err
		}
	}
	limit = maxListLimit
	if s, ok := v["limit"]; ok {
		if limit, ok = decimal(s, 1, maxListLimit); !ok {
			return from, 0, badRequest("query parameter limit must be an integer from 1 to %d, got %q", maxListLimit, truncate(s, 64))
		}
	}
	return from, limit, nil
}

// parseStreamStart reads where an event stream starts: the Last-Event-ID an EventSource
// sends when it reconnects by itself, else the since parameter, else now (nil).
func parseStreamStart(r *http.Request, userID string) (*feed.Cursor, error) {
	text := r.Header.Get("Last-Event-ID")
	if text == "" {
		v, err := queryValues(r.URL.RawQuery, "since")
		since, ok := v["since"]
		if err != nil || !ok {
			return nil, err
		}
		text = since
	}
	from, err := feed.DecodeCursor(userID, text)
	if err != nil {
		return nil, err
	}
	return &from, nil
}

// decimal accepts an integer in [lo, hi] written in plain decimal digits: no sign, space,
// or other base.
func decimal(s string, lo, hi int) (int, bool) {
	n, err := strconv.Atoi(s)
	return n, err == nil && n >= lo && n <= hi && strings.Trim(s, "0123456789") == ""
}

// taskID is the request's {id}: a positive 64-bit integer in canonical decimal, spelled
// out in the path, and nothing else (no sign, leading zero, space, hex or percent-encoded
// digit), so that each task has exactly one URL.
func taskID(r *http.Request) (int64, error) {
	s := r.PathValue("id")
	id, ok := decimal(s, 1, math.MaxInt64)
	spelled := strings.HasSuffix(strings.TrimSuffix(r.URL.EscapedPath(), "/complete"), "/tasks/"+s)
	if !ok || s[0] == '0' || !spelled {
		return 0, badRequest("task id must be a positive integer in decimal, got %q", truncate(s, 64))
	}
	return int64(id), nil
}

// readIdempotencyKey returns the request's Idempotency-Key, nil without one, with the
// fingerprint of the request: its method, canonical path (the user and the task id as
// this API spells them, however the client did) and body.
func readIdempotencyKey(r *http.Request, body []byte) (*IdempotencyKey, error) {
	values := r.Header.Values("Idempotency-Key")
	if len(values) == 0 {
		return nil, nil
	}
	key := values[0]
	if len(values) > 1 || len(key) > 255 || key == "" || strings.IndexFunc(key, func(c rune) bool { return c < '!' || c > '~' }) >= 0 {
		return nil, badRequest("Idempotency-Key must be one value of 1 to 255 visible ASCII characters")
	}
	canonical := strings.NewReplacer("{user_id}", url.PathEscape(r.PathValue("user_id")), "{id}", r.PathValue("id")).Replace(web.Route(r.Pattern))
	h := sha256.New()
	fmt.Fprintf(h, "%s %s\n", r.Method, canonical)
	h.Write(body)
	k := &IdempotencyKey{Key: key}
	h.Sum(k.Request[:0])
	return k, nil
}

// readCondition reads a write's If-Match and If-None-Match, compared as RFC 9110 13.1.1-2
// has them: If-Match strongly, character for character, so that only "N" exactly names
// version N ("+N", "0N" and W/"N" name none); If-None-Match weakly. "*" in If-Match
// allows any existing task, in If-None-Match none.
func readCondition(r *http.Request) (Condition, error) {
	var c Condition
	match, err := entityTags(r, "If-Match")
	if err != nil {
		return c, err
	}
	if match != nil && match[0] != "*" {
		c.Match = []int64{}
		for _, tag := range match {
			if v, ok := tagVersion(tag); ok {
				c.Match = append(c.Match, v)
			}
		}
	}
	none, err := entityTags(r, "If-None-Match")
	for _, tag := range none {
		if tag == "*" {
			c.Match = []int64{}
		} else if v, ok := tagVersion(strings.TrimPrefix(tag, "W/")); ok {
			c.NoneMatch = append(c.NoneMatch, v)
		}
	}
	return c, err
}

// readCreateCondition checks a create's conditions: well-formed, and able to hold.
// If-Match cannot: the task it would name does not exist yet. If-None-Match always does.
func readCreateCondition(r *http.Request) error {
	_, err := readCondition(r)
	if err == nil && len(r.Header.Values("If-Match")) > 0 {
		err = errCreateIfMatch
	}
	return err
}

// tagVersion is the version a strong entity tag names, spelled exactly as taskETag does.
func tagVersion(tag string) (int64, bool) {
	v, err := strconv.ParseInt(strings.Trim(tag, `"`), 10, 64)
	return v, err == nil && taskETag(v) == tag
}

// noneMatch reports whether a GET's If-None-Match names etag, or is "*" (RFC 9110
// 13.1.2: compared weakly, so W/"1" names "1").
func noneMatch(r *http.Request, etag string) (bool, error) {
	tags, err := entityTags(r, "If-None-Match")
	for _, tag := range tags {
		if tag == "*" || strings.TrimPrefix(tag, "W/") == etag {
			return true, nil
		}
	}
	return false, err
}

// entityTags splits a conditional header into its entity tags, "*" included; nil when
// absent. A header that is not "*" or a list of entity tags is a 400.
func entityTags(r *http.Request, header string) ([]string, error) {
	values := r.Header.Values(header)
	var tags []string
	for _, v := range values {
		for _, tag := range strings.Split(v, ",") {
			tag = strings.TrimSpace(tag)
			opaque := strings.TrimPrefix(tag, "W/")
			quoted := len(opaque) >= 2 && opaque[0] == '"' && opaque[len(opaque)-1] == '"' && !strings.ContainsAny(opaque[1:len(opaque)-1], `" `)
			if !quoted && (tag != "*" || len(values) > 1 || strings.TrimSpace(v) != "*") {
				return nil, badRequest(`%s must be * or a list of entity tags such as "123", got %q`, header, truncate(v, 64))
			}
			tags = append(tags, tag)
		}
	}
	return tags, nil
}
