package main

import (
	"bytes"
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

var errTooLarge = &apiError{status: http.StatusRequestEntityTooLarge, detail: fmt.Sprintf("request body is larger than %d bytes", maxBodyBytes)}

// readTaskBody reads and validates a create or update body. allowCompleted is false for
// create, where the server, not the client, decides the initial state.
func readTaskBody(w http.ResponseWriter, r *http.Request, allowCompleted bool) (TaskPatch, error) {
	fields, err := readJSONObject(w, r)
	if err != nil {
		return TaskPatch{}, err
	}
	return decodeTaskFields(fields, allowCompleted)
}

// readJSONObject reads a request body that must be one JSON object and returns its
// members undecoded. It settles every status that depends on the bytes alone: 415 for
// the wrong content type, 413 past the size limit, 400 for anything that is not
// well-formed UTF-8 JSON (trailing data included), 422 for JSON that is not an object.
func readJSONObject(w http.ResponseWriter, r *http.Request) (map[string]json.RawMessage, error) {
	if r.ContentLength > maxBodyBytes {
		return nil, errTooLarge
	}
	if mediaType, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mediaType != "application/json" {
		return nil, &apiError{status: http.StatusUnsupportedMediaType, detail: "Content-Type must be application/json"}
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return nil, errTooLarge
		}
		return nil, badRequest("could not read the request body")
	}
	return parseJSONObject(body)
}

// parseJSONObject is the byte-level half of readJSONObject, apart so that it can be fuzzed.
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

// parseTaskID accepts the canonical decimal form of a positive 64-bit integer and
// nothing else (no sign, leading zero, space or hex), so each task has exactly one URL.
func parseTaskID(s string) (int64, error) {
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil || id < 1 || !isDigits(s) || s[0] == '0' {
		return 0, badRequest("task id must be a positive integer, got %q", truncate(s, 64))
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
