// Package task is what a task is: the row the API stores and the JSON it sends, which
// the REST answers and the feed's events share, byte for byte.
package task

import (
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
)

// Task is one row of the tasks table. Its JSON is AppendJSON's; the tags read the JSON
// PostgreSQL makes of a row (an Idempotency-Key's remembered answer).
type Task struct {
	ID          int64     `json:"id"`
	UserID      string    `json:"user_id"`
	Title       string    `json:"title"`
	Description *string   `json:"description"`
	Completed   bool      `json:"completed"`
	CreatedAt   time.Time `json:"created_at"`
	UpdatedAt   time.Time `json:"updated_at"`
	Version     int64     `json:"version"` // new with every change: the task's ETag and its place in the feed
}

// Columns are a task's columns in the order Scan reads them.
const Columns = `id, user_id, title, description, completed, created_at, updated_at, version`

// Scan reads Columns into t, then any further columns into extra.
func Scan(row pgx.Row, t *Task, extra ...any) error {
	return row.Scan(append([]any{&t.ID, &t.UserID, &t.Title, &t.Description, &t.Completed, &t.CreatedAt, &t.UpdatedAt, &t.Version}, extra...)...)
}

// timeLayout is RFC 3339 in UTC with a fixed six-digit fraction, PostgreSQL's precision,
// so that clients may compare timestamps as strings.
const timeLayout = "2006-01-02T15:04:05.000000Z07:00" // Z07:00 prints Z for UTC

// AppendJSON encodes t as the contract's Task object: by hand, because encoding/json made
// lists much slower to serve (docs/performance.md, "The task encoder").
// TestAppendJSONIsTheContractsTask and FuzzAppendString hold it to the contract and to
// encoding/json's escaping.
func AppendJSON(b []byte, t *Task) []byte {
	b = strconv.AppendInt(append(b, `{"id":`...), t.ID, 10)
	b = AppendString(append(b, `,"user_id":`...), t.UserID)
	b = AppendString(append(b, `,"title":`...), t.Title)
	b = append(b, `,"description":`...)
	if t.Description == nil {
		b = append(b, "null"...)
	} else {
		b = AppendString(b, *t.Description)
	}
	b = strconv.AppendBool(append(b, `,"completed":`...), t.Completed)
	b = appendTimestamp(append(b, `,"created_at":"`...), t.CreatedAt)
	b = appendTimestamp(append(b, `","updated_at":"`...), t.UpdatedAt)
	b = strconv.AppendInt(append(b, `","version":`...), t.Version, 10)
	return append(b, '}')
}

// appendTimestamp appends t in UTC in timeLayout. It is time.AppendFormat unrolled for
// this one layout: with two timestamps per task, the general formatter was half the
// cost of encoding a list. TestAppendTimestamp holds it to time.Format.
func appendTimestamp(b []byte, t time.Time) []byte {
	t = t.UTC()
	year, month, day := t.Date()
	if year < 0 || year > 9999 {
		return t.AppendFormat(b, timeLayout)
	}
	hour, minute, sec := t.Clock()
	b = append(appendDigits(b, year, 4), '-')
	b = append(appendDigits(b, int(month), 2), '-')
	b = append(appendDigits(b, day, 2), 'T')
	b = append(appendDigits(b, hour, 2), ':')
	b = append(appendDigits(b, minute, 2), ':')
	b = append(appendDigits(b, sec, 2), '.')
	return append(appendDigits(b, t.Nanosecond()/1000, 6), 'Z')
}

// appendDigits appends v in decimal, zero-padded to width digits.
func appendDigits(b []byte, v, width int) []byte {
	var buf [8]byte
	for i := width - 1; i >= 0; i-- {
		buf[i] = byte('0' + v%10)
		v /= 10
	}
	return append(b, buf[:width]...)
}

// jsonSafe marks the ASCII bytes that encoding/json writes as they are.
var jsonSafe = func() (safe [utf8.RuneSelf]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		safe[c] = c != '"' && c != '\\' && c != '<' && c != '>' && c != '&'
	}
	return safe
}()

// AppendString appends s as a JSON string, escaped as encoding/json escapes it
// (including <, >, & and U+2028/U+2029, so the output is safe inside HTML and JavaScript).
func AppendString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if jsonSafe[c] {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		escape := ""
		switch {
		case r == utf8.RuneError && size == 1:
			escape = `\ufffd`
		case r == '\u2028' || r == '\u2029':
			escape = `\u202` + string(hex[r&0xF])
		}
		if escape != "" {
			b = append(append(b, s[start:i]...), escape...)
			start = i + size
		}
		i += size
	}
	return append(append(b, s[start:]...), '"')
}
