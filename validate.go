package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"unicode/utf8"
)

const (
	maxBodyBytes   = 64 << 10
	maxTitle       = 200
	maxDescription = 1000
	maxListLimit   = 1000
)

// Everything that decides whether a request is well-formed: bodies, query parameters,
// task ids, cursors' places in the request, and the headers a write may carry. The
// schema's CHECKs mirror the body rules as the database's own guard.

// readNewTask reads a create's body, which it also returns as sent: a title, and a
// description or none. completed is not taken: the server decides the initial state.
func readNewTask(w http.ResponseWriter, r *http.Request) (TaskPatch, []byte, error) {
	p, body, err := readTaskBody(w, r, false)
	if err == nil && p.Title == nil {
		err = unprocessable("title is required")
	}
	return p, body, err
}

// readPatch reads an update's body: at least one of title, description, completed.
func readPatch(w http.ResponseWriter, r *http.Request) (TaskPatch, error) {
	p, _, err := readTaskBody(w, r, true)
	if err == nil && p == (TaskPatch{}) {
		err = unprocessable("the body must set at least one of title, description, completed")
	}
	return p, err
}

func readTaskBody(w http.ResponseWriter, r *http.Request, allowCompleted bool) (TaskPatch, []byte, error) {
	body, err := readJSONBody(w, r)
	if err != nil {
		return TaskPatch{}, nil, err
	}
	fields, err := parseJSONObject(body)
	if err != nil {
		return TaskPatch{}, nil, err
	}
	p, err := decodeTaskFields(fields, allowCompleted)
	return p, body, err
}

// readJSONBody reads a request body that must be one JSON object and returns its
// members undecoded. It settles every status that depends on the bytes alone: 415 for
// the wrong content type, 413 past the size limit, 400 for anything that is not
// well-formed UTF-8 JSON (trailing data included), 422 for JSON that is not an object.
func readJSONBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	if r.ContentLength > maxBodyBytes {
		return nil, tooLarge(maxBodyBytes)
	}
	if mediaType, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mediaType != "application/json" {
		return nil, errNotJSON
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	if err != nil {
		var overLimit *http.MaxBytesError
		if errors.As(err, &overLimit) {
			return nil, tooLarge(maxBodyBytes)
		}
		return nil, badRequest("could not read the request body")
	}
	return body, nil
}

// parseJSONObject checks the bytes of a body that must be one JSON object and returns its
// members undecoded.
func parseJSONObject(body []byte) (map[string]json.RawMessage, error) {
	// encoding/json silently turns invalid UTF-8 and unpaired surrogate escapes into
	// U+FFFD; a client that sent them would get back text it never wrote.
	if !utf8.Valid(body) {
		return nil, badRequest("request body is not valid UTF-8")
	}
	if hasLoneSurrogate(body) {
		return nil, badRequest("request body has an unpaired UTF-16 surrogate escape")
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return nil, badRequest("request body is empty; expected a JSON object")
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil {
		var syntaxErr *json.SyntaxError
		if errors.As(err, &syntaxErr) {
			return nil, badRequest("request body is not valid JSON: %s", strings.TrimPrefix(syntaxErr.Error(), "json: "))
		}
		return nil, unprocessable("request body must be a JSON object")
	}
	if fields == nil { // the body was the literal null
		return nil, unprocessable("request body must be a JSON object")
	}
	return fields, nil
}

// hasLoneSurrogate reports whether a JSON text has a \uD800-\uDFFF escape that is not
// part of a high-low pair. It relies on the text being scanned from a value boundary:
// backslashes only occur inside strings, and "\\" is consumed as a unit.
func hasLoneSurrogate(b []byte) bool {
	pendingHigh := false
	for i := 0; i < len(b); i++ {
		if b[i] != '\\' || i+1 >= len(b) {
			if pendingHigh {
				return true
			}
			continue
		}
		if b[i+1] != 'u' || i+5 >= len(b) {
			if pendingHigh {
				return true
			}
			i++ // skip the escaped character, which may be a backslash
			continue
		}
		v, err := strconv.ParseUint(string(b[i+2:i+6]), 16, 16)
		if err != nil {
			return false // not valid JSON; the parser reports it
		}
		switch {
		case v >= 0xD800 && v < 0xDC00:
			if pendingHigh {
				return true
			}
			pendingHigh = true
		case v >= 0xDC00 && v < 0xE000:
			if !pendingHigh {
				return true
			}
			pendingHigh = false
		default:
			if pendingHigh {
				return true
			}
		}
		i += 5
	}
	return pendingHigh
}

// decodeTaskFields validates the members of a task body.
func decodeTaskFields(fields map[string]json.RawMessage, allowCompleted bool) (TaskPatch, error) {
	var p TaskPatch
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
			if isNull(raw) || json.Unmarshal(raw, &b) != nil {
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
	if isNull(raw) {
		if nullable {
			return nil, nil
		}
		return nil, unprocessable("%s must be a string", name)
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
	return &s, nil
}

func isNull(raw json.RawMessage) bool { return string(raw) == "null" }

// truncate shortens client-supplied text before it is echoed in an error detail.
func truncate(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	return string([]rune(s)[:n]) + "…"
}

// parseListQuery validates the list endpoint's query string. Unknown parameters are
// ignored, as most HTTP APIs do; a known one with an unknown value, or given twice, is a 400.
func parseListQuery(rawQuery string) (ListQuery, error) {
	q := ListQuery{Status: "all", Sort: "created", Desc: true}
	values, err := url.ParseQuery(rawQuery)
	if err != nil {
		return q, badRequest("malformed query string")
	}
	get := func(name string) (string, bool, error) {
		v, ok := values[name]
		if !ok {
			return "", false, nil
		}
		if len(v) > 1 {
			return "", false, badRequest("query parameter %s is given more than once", name)
		}
		return v[0], true, nil
	}
	oneOf := func(name string, allowed ...string) (string, bool, error) {
		v, ok, err := get(name)
		if err != nil || !ok {
			return "", ok, err
		}
		for _, a := range allowed {
			if v == a {
				return v, true, nil
			}
		}
		return "", false, badRequest("query parameter %s must be one of %s, got %q", name, strings.Join(allowed, ", "), truncate(v, 64))
	}
	if v, ok, err := oneOf("status", "all", "pending", "completed"); err != nil {
		return q, err
	} else if ok {
		q.Status = v
	}
	if v, ok, err := oneOf("sort", "created", "updated", "title"); err != nil {
		return q, err
	} else if ok {
		q.Sort = v
	}
	if v, ok, err := oneOf("order", "asc", "desc"); err != nil {
		return q, err
	} else if ok {
		q.Desc = v == "desc"
	}
	if v, ok, err := get("limit"); err != nil {
		return q, err
	} else if ok {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxListLimit || !isDigits(v) {
			return q, badRequest("query parameter limit must be an integer from 1 to %d, got %q", maxListLimit, truncate(v, 64))
		}
		q.Limit = n
	}
	if v, ok, err := get("offset"); err != nil {
		return q, err
	} else if ok {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 || !isDigits(v) {
			return q, badRequest("query parameter offset must be a non-negative integer, got %q", truncate(v, 64))
		}
		q.Offset = n
	}
	return q, nil
}

// parseChangesQuery reads /changes' since (a cursor; absent: a full sync) and limit.
func parseChangesQuery(rawQuery, userID string) (Cursor, int, error) {
	values, err := url.ParseQuery(rawQuery)
	if err != nil {
		return Cursor{}, 0, badRequest("malformed query string")
	}
	var from Cursor
	limit := maxListLimit
	for name, v := range values {
		switch {
		case name != "since" && name != "limit":
			continue // unknown parameters are ignored, as on lists
		case len(v) > 1:
			return from, 0, badRequest("query parameter %s is given more than once", name)
		case name == "since":
			if from, err = decodeCursor(userID, v[0]); err != nil {
				return from, 0, err
			}
		default:
			if limit, err = strconv.Atoi(v[0]); err != nil || limit < 1 || limit > maxListLimit || !isDigits(v[0]) {
				return from, 0, badRequest("query parameter limit must be an integer from 1 to %d, got %q", maxListLimit, truncate(v[0], 64))
			}
		}
	}
	return from, limit, nil
}

// parseStreamStart reads where an event stream starts: the Last-Event-ID an EventSource
// sends when it reconnects by itself, else the since parameter, else now (the caller
// asks the database).
func parseStreamStart(r *http.Request, userID string) (from Cursor, now bool, err error) {
	if id := r.Header.Get("Last-Event-ID"); id != "" {
		from, err = decodeCursor(userID, id)
		return from, false, err
	}
	switch since := r.URL.Query()["since"]; {
	case len(since) > 1:
		return from, false, badRequest("query parameter since is given more than once")
	case len(since) == 1:
		from, err = decodeCursor(userID, since[0])
		return from, false, err
	}
	return from, true, nil
}

// taskID is the request's {id}: the canonical decimal form of a positive 64-bit integer,
// spelled out in the path, and nothing else (no sign, leading zero, space, hex or
// percent-encoded digit), so that each task has exactly one URL.
func taskID(r *http.Request) (int64, error) {
	s := r.PathValue("id")
	id, err := strconv.ParseInt(s, 10, 64)
	spelled := strings.HasSuffix(strings.TrimSuffix(r.URL.EscapedPath(), "/complete"), "/tasks/"+s)
	if err != nil || id < 1 || !isDigits(s) || s[0] == '0' || !spelled {
		return 0, badRequest("task id must be a positive integer in decimal, got %q", truncate(s, 64))
	}
	return id, nil
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
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
	if len(values) > 1 || !visibleASCII(key, 255) {
		return nil, badRequest("Idempotency-Key must be one value of 1 to 255 visible ASCII characters")
	}
	canonical := strings.NewReplacer("{user_id}", url.PathEscape(r.PathValue("user_id")), "{id}", r.PathValue("id")).Replace(route(r.Pattern))
	h := sha256.New()
	fmt.Fprintf(h, "%s %s\n", r.Method, canonical)
	h.Write(body)
	k := &IdempotencyKey{Key: key}
	h.Sum(k.Request[:0])
	return k, nil
}

func visibleASCII(s string, maxLen int) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return s != "" && len(s) <= maxLen
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

// readCreateCondition checks a create's conditional headers: well-formed, and able to
// hold. If-Match cannot: the task it would name does not exist yet. If-None-Match always
// does, for the same reason.
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
	if err != nil || tags == nil {
		return false, err
	}
	for _, tag := range tags {
		if tag == "*" || strings.TrimPrefix(tag, "W/") == etag {
			return true, nil
		}
	}
	return false, nil
}

// entityTags splits a conditional header into its entity tags, "*" included; nil when
// absent. A header that is not "*" or a list of entity tags is a 400.
func entityTags(r *http.Request, header string) ([]string, error) {
	values := r.Header.Values(header)
	if len(values) == 0 {
		return nil, nil
	}
	var tags []string
	for _, v := range values {
		for _, tag := range strings.Split(v, ",") {
			tag = strings.TrimSpace(tag)
			opaque := strings.TrimPrefix(tag, "W/")
			switch {
			case tag == "*" && len(values) == 1 && strings.TrimSpace(v) == "*", len(opaque) >= 2 && opaque[0] == '"' && opaque[len(opaque)-1] == '"' && !strings.ContainsAny(opaque[1:len(opaque)-1], `" `):
				tags = append(tags, tag)
			default:
				return nil, badRequest(`%s must be * or a list of entity tags such as "123", got %q`, header, truncate(v, 64))
			}
		}
	}
	return tags, nil
}
