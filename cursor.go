package main

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// A snapshot is a pg_snapshot: it shows the transactions below xmin, and those below xmax
// that are not in xip (still running when it was taken). The zero snapshot shows nothing.
type snapshot struct {
	xmin, xmax uint64
	xip        []uint64
}

// String is the snapshot in pg_snapshot's text form, "xmin:xmax:xip,...".
func (s snapshot) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d:%d:", s.xmin, s.xmax)
	for i, x := range s.xip {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.FormatUint(x, 10))
	}
	return b.String()
}

func parseSnapshot(text string) (snapshot, error) {
	var s snapshot
	parts := strings.Split(text, ":")
	if len(parts) != 3 {
		return s, fmt.Errorf("malformed snapshot %q", text)
	}
	var err1, err2 error
	s.xmin, err1 = strconv.ParseUint(parts[0], 10, 64)
	s.xmax, err2 = strconv.ParseUint(parts[1], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return s, err
	}
	if parts[2] != "" {
		for _, x := range strings.Split(parts[2], ",") {
			v, err := strconv.ParseUint(x, 10, 64)
			if err != nil {
				return s, err
			}
			s.xip = append(s.xip, v)
		}
	}
	return s, nil
}

// valid is what PostgreSQL requires of a snapshot: xmin <= xip < xmax, xip sorted, and
// every id a normal transaction's (the low 32 bits of 0 to 2 are kept for others).
func (s snapshot) valid() bool {
	normal := func(x uint64) bool { return uint32(x) >= 3 }
	return normal(s.xmin) && normal(s.xmax) && s.xmin <= s.xmax && slices.IsSorted(s.xip) &&
		(len(s.xip) == 0 || s.xip[0] >= s.xmin && s.xip[len(s.xip)-1] < s.xmax) && !slices.ContainsFunc(s.xip, func(x uint64) bool { return !normal(x) })
}

// A Cursor is a place in one user's feed.
type Cursor struct {
	since snapshot // every change it shows was delivered; zero: none was (a full sync)
	upto  snapshot // while a batch (since, upto] is paged, the batch's end; else zero
	after int64    // while paged, the last task id of the batch delivered
}

// set places the cursor where everything a snapshot shows, given in pg_snapshot's text
// form, was delivered.
func (c *Cursor) set(snapshotText string) error {
	s, err := parseSnapshot(snapshotText)
	*c = Cursor{since: s}
	return err
}

// cursorFormat heads every encoded cursor, so that a later format can tell it apart.
const cursorFormat = 1

// Encode is the cursor as the opaque string clients hold: its format, a tag of the user
// it belongs to, and the snapshots as varints relative to their xmin, in base64url.
func (c Cursor) Encode(userID string) string {
	b := append([]byte{cursorFormat}, userTag(userID)...)
	for _, s := range []snapshot{c.since, c.upto} {
		b = binary.AppendUvarint(b, s.xmin)
		b = binary.AppendUvarint(b, s.xmax-s.xmin)
		b = binary.AppendUvarint(b, uint64(len(s.xip)))
		for _, x := range s.xip {
			b = binary.AppendUvarint(b, x-s.xmin)
		}
	}
	b = binary.AppendUvarint(b, uint64(c.after))
	return base64.RawURLEncoding.EncodeToString(b)
}

// decodeCursor reads a cursor given by userID; one that is malformed, or that belongs to
// another user, is an error for a 400.
func decodeCursor(userID, text string) (Cursor, error) {
	var c Cursor
	bad := badRequest("the cursor is not one this API gave to this user")
	b, err := base64.RawURLEncoding.DecodeString(text)
	if err != nil || len(text) > 4096 || len(b) < 5 || b[0] != cursorFormat || string(b[1:5]) != string(userTag(userID)) {
		return c, bad
	}
	b = b[5:]
	next := func() uint64 {
		v, n := binary.Uvarint(b)
		if n <= 0 {
			b = nil
			err = bad
			return 0
		}
		b = b[n:]
		return v
	}
	for _, s := range []*snapshot{&c.since, &c.upto} {
		s.xmin = next()
		s.xmax = s.xmin + next()
		n := next()
		if n > uint64(len(b)) { // each xip takes at least a byte
			return c, bad
		}
		for range n {
			s.xip = append(s.xip, s.xmin+next())
		}
		if err == nil && s.xmin != 0 && !s.valid() {
			err = bad
		}
	}
	after := next()
	if err != nil || len(b) != 0 || after > 1<<63-1 || (c.upto.xmin == 0) != (after == 0) {
		return c, bad
	}
	c.after = int64(after)
	return c, nil
}

// userTag ties a cursor to its user, so that one sent by another is refused.
func userTag(userID string) []byte {
	sum := sha256.Sum256([]byte(userID))
	return sum[:4]
}
