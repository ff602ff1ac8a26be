package main

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"taskflow/internal/feed"
	"taskflow/internal/task"
	"taskflow/internal/web"
)

// What a request may ask: its body (whose rules are internal/task's), its query, its
// task id, its Idempotency-Key and its conditions. Anything else is a 400 or a 422.

const (
	maxBodyBytes = 64 << 10
	maxListLimit = 1000
)

// readNewTask reads a create's body, which it also returns as sent: a title, and a
// description or none. completed is not taken: the server decides the initial state.
func readNewTask(w http.ResponseWriter, r *http.Request) (task.Patch, []byte, error) {
	body, err := readJSONBody(w, r)
	if err != nil {
		return task.Patch{}, nil, err
	}
	p, err := task.DecodeNew(body)
	return p, body, err
}

// readPatch reads an update's body: at least one of title, description, completed.
func readPatch(w http.ResponseWriter, r *http.Request) (task.Patch, error) {
	body, err := readJSONBody(w, r)
	if err != nil {
		return task.Patch{}, err
	}
	return task.DecodePatch(body)
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
				return q, badRequest("query parameter %s must be one of %s, got %q", p.name, strings.ReplaceAll(p.allowed, " ", ", "), task.Truncate(s, 64))
			}
			p.set(s)
		}
	}
	if s, ok := v["limit"]; ok {
		if q.Limit, ok = decimal(s, 1, maxListLimit); !ok {
			return q, badRequest("query parameter limit must be an integer from 1 to %d, got %q", maxListLimit, task.Truncate(s, 64))
		}
	}
	if s, ok := v["offset"]; ok {
		n, ok := decimal(s, 0, math.MaxInt64)
		if !ok {
			return q, badRequest("query parameter offset must be a non-negative integer, got %q", task.Truncate(s, 64))
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
			return from, 0, badRequest("query parameter limit must be an integer from 1 to %d, got %q", maxListLimit, task.Truncate(s, 64))
		}
	}
	return from, limit, nil
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
		return 0, badRequest("task id must be a positive integer in decimal, got %q", task.Truncate(s, 64))
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
	match, err := web.EntityTags(r, "If-Match")
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
	none, err := web.EntityTags(r, "If-None-Match")
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

// readTarget reads the task a write is for and the conditions it is made on.
func readTarget(r *http.Request) (int64, Condition, error) {
	id, err := taskID(r)
	if err != nil {
		return 0, Condition{}, err
	}
	cond, err := readCondition(r)
	return id, cond, err
}
