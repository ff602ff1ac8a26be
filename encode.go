package main

import (
	"strconv"
	"time"
	"unicode/utf8"
)

// timeLayout is RFC 3339 in UTC with a fixed six-digit fraction, PostgreSQL's precision,
// so that clients may compare timestamps as strings.
const timeLayout = "2006-01-02T15:04:05.000000Z07:00" // Z07:00 prints Z for UTC

// appendTask encodes t as the contract's Task object: by hand, because encoding/json made
// a 50-task list 40-60% slower to serve (docs/performance.md, "The task encoder").
// TestAppendTaskIsTheContractsTask and FuzzAppendJSONString hold it to the contract and
// to encoding/json's escaping.
func appendTask(b []byte, t *Task) []byte {
	b = append(b, `{"id":`...)
	b = strconv.AppendInt(b, t.ID, 10)
	b = append(b, `,"user_id":`...)
	b = appendJSONString(b, t.UserID)
	b = append(b, `,"title":`...)
	b = appendJSONString(b, t.Title)
	b = append(b, `,"description":`...)
	if t.Description == nil {
		b = append(b, "null"...)
	} else {
		b = appendJSONString(b, *t.Description)
	}
	b = append(b, `,"completed":`...)
	b = strconv.AppendBool(b, t.Completed)
	b = append(b, `,"created_at":"`...)
	b = appendTimestamp(b, t.CreatedAt)
	b = append(b, `","updated_at":"`...)
	b = appendTimestamp(b, t.UpdatedAt)
	b = append(b, `","version":`...)
	b = strconv.AppendInt(b, t.Version, 10)
	return append(b, '}')
}

// appendChange encodes a change of the feed: {"op":"upsert","task":{...}}, or
// {"op":"delete","id":N,"version":V}.
func appendChange(b []byte, c *Change) []byte {
	if c.Deleted {
		b = strconv.AppendInt(append(b, `{"op":"delete","id":`...), c.Task.ID, 10)
		return append(strconv.AppendInt(append(b, `,"version":`...), c.Task.Version, 10), '}')
	}
	return append(appendTask(append(b, `{"op":"upsert","task":`...), &c.Task), '}')
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
	b = appendDigits(b, year, 4)
	b = append(b, '-')
	b = appendDigits(b, int(month), 2)
	b = append(b, '-')
	b = appendDigits(b, day, 2)
	b = append(b, 'T')
	b = appendDigits(b, hour, 2)
	b = append(b, ':')
	b = appendDigits(b, minute, 2)
	b = append(b, ':')
	b = appendDigits(b, sec, 2)
	b = append(b, '.')
	b = appendDigits(b, t.Nanosecond()/1000, 6)
	return append(b, 'Z')
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

// appendJSONString appends s as a JSON string, escaped as encoding/json escapes it
// (including <, >, & and U+2028/U+2029, so the output is safe inside HTML and JavaScript).
func appendJSONString(b []byte, s string) []byte {
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
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
