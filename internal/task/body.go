package task

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// The rules of a task's JSON body, as the contract's "Validation" has them. The schema's
// domains (schema.sql) hold the database to the same rules.
const (
	MaxTitle       = 200
	MaxDescription = 1000
)

// Patch holds the fields of a body; a nil pointer means "not given" (for an update:
// keep the stored value). SetDescription tells an absent description (keep) from an
// explicit null (clear).
type Patch struct {
	Title          *string
	SetDescription bool
	Description    *string
	Completed      *bool
}

// A BodyError says what is wrong with a body: malformed (400) or invalid (422, when
// Invalid), in words for the client.
type BodyError struct {
	Invalid bool
	Detail  string
}

func (e *BodyError) Error() string { return e.Detail }

func badRequest(format string, args ...any) error {
	return &BodyError{Detail: fmt.Sprintf(format, args...)}
}

func unprocessable(format string, args ...any) error {
	return &BodyError{Invalid: true, Detail: fmt.Sprintf(format, args...)}
}

// DecodeNew reads a create's body: a title, and a description or none. completed is
// not taken: the server decides the initial state.
func DecodeNew(body []byte) (Patch, error) {
	p, err := decode(body, false)
	if err == nil && p.Title == nil {
		err = unprocessable("title is required")
	}
	return p, err
}

// DecodePatch reads an update's body: at least one of title, description, completed.
func DecodePatch(body []byte) (Patch, error) {
	p, err := decode(body, true)
	if err == nil && p == (Patch{}) {
		err = unprocessable("the body must set at least one of title, description, completed")
	}
	return p, err
}

// decode validates a task body: 400 for anything that is not well-formed UTF-8 JSON
// (trailing data included), 422 for JSON that is not a valid task object. Keys match
// exactly: encoding/json alone would take "Title" for "title".
func decode(body []byte, allowCompleted bool) (Patch, error) {
	var p Patch
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
			if n := utf8.RuneCountInString(title); n < 1 || n > MaxTitle {
				return p, unprocessable("title must be 1 to %d characters after trimming white space, got %d", MaxTitle, n)
			}
			p.Title = &title
		case name == "description":
			s, err := decodeString(name, raw, true)
			if err != nil {
				return p, err
			}
			if s != nil && utf8.RuneCountInString(*s) > MaxDescription {
				return p, unprocessable("description must be at most %d characters", MaxDescription)
			}
			p.SetDescription, p.Description = true, s
		case name == "completed" && allowCompleted:
			var b bool
			if string(raw) == "null" || json.Unmarshal(raw, &b) != nil {
				return p, unprocessable("completed must be a boolean")
			}
			p.Completed = &b
		default:
			return p, unprocessable("unknown field %q", Truncate(name, 64))
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

// Truncate shortens client-supplied text before it is echoed in an error detail.
func Truncate(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	return string([]rune(s)[:n]) + "…"
}
