package feed

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The feed's errors (test with errors.Is).
var (
	// ErrCursorExpired: the cursor is older than the feed keeps (CHANGES_RETENTION), or
	// not from this database's history.
	ErrCursorExpired = errors.New("the cursor is older than the feed keeps")
	// ErrBadCursor: the cursor is not one this API gave to this user.
	ErrBadCursor = errors.New("the cursor is not one this API gave to this user")
)

// A snapshot is a pg_snapshot: it shows the transactions below xmin, and those below xmax
// that are not in xip (still running when it was taken). The zero snapshot shows nothing.
type snapshot struct {
	xmin, xmax uint64
	xip        []uint64
}

// String is the snapshot in pg_snapshot's text form, "xmin:xmax:xip,...".
func (s snapshot) String() string {
	xip := make([]string, len(s.xip))
	for i, x := range s.xip {
		xip[i] = strconv.FormatUint(x, 10)
	}
	return fmt.Sprintf("%d:%d:%s", s.xmin, s.xmax, strings.Join(xip, ","))
}

func (s snapshot) zero() bool { return s.xmin == 0 && s.xmax == 0 && s.xip == nil }

// arg is the snapshot as a statement's argument: NULL when zero.
func (s snapshot) arg() *string {
	if s.zero() {
		return nil
	}
	text := s.String()
	return &text
}

func parseSnapshot(text string) (snapshot, error) {
	var s snapshot
	parts := strings.SplitN(text, ":", 3)
	if len(parts) != 3 {
		return s, fmt.Errorf("malformed snapshot %q", text)
	}
	ids := []string{parts[0], parts[1]}
	if parts[2] != "" {
		ids = append(ids, strings.Split(parts[2], ",")...)
	}
	for i, id := range ids {
		v, err := strconv.ParseUint(id, 10, 64)
		if err != nil {
			return s, err
		}
		switch i {
		case 0:
			s.xmin = v
		case 1:
			s.xmax = v
		default:
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
	database    string   // the database's identity (changes_durable)
	incarnation string   // the database's when the cursor was made (changes_incarnation)
	durable     uint64   // a transaction id then known to be on disk (changes_durable)
	since       snapshot // every change it shows was delivered; zero: none was (a full sync)
	upto        snapshot // while a batch (since, upto] is paged, the batch's end; else zero
	after       place    // while paged, the last change of the batch delivered
}

// A place orders the changes of a batch as the (user_id, created_at, id) index does, so
// that each page starts where the last ended: catching up reads each row once, however
// many pages it takes.
type place struct {
	created int64 // microseconds since 1970, PostgreSQL's precision
	id      int64
}

// earliestPlace is PostgreSQL's earliest timestamptz (4713 BC) in microseconds since
// 1970: a place before it would fail the statement that reads it.
const earliestPlace = -210866803200000000

func placeOf(created time.Time, id int64) place { return place{created.UnixMicro(), id} }

// time is the place's created_at as a statement's argument.
func (p place) time() time.Time { return time.UnixMicro(p.created).UTC() }

// set places the cursor where everything a snapshot shows, given in pg_snapshot's text
// form, was delivered, in a database and incarnation given as SQLIncarnation reads them.
func (c *Cursor) set(snapshotText, incarnation string) error {
	s, err := parseSnapshot(snapshotText)
	if err != nil {
		return err
	}
	*c = Cursor{since: s}
	return c.setIncarnation(incarnation)
}

// setIncarnation reads "database/incarnation/durable": two MD5s in hex (the incarnation
// "" just after a crash) and a transaction id.
func (c *Cursor) setIncarnation(text string) error {
	parts := strings.Split(text, "/")
	if len(parts) != 3 || !md5Hex(parts[0]) || parts[1] != "" && !md5Hex(parts[1]) {
		return ErrBadCursor
	}
	var err error
	c.database, c.incarnation = parts[0], parts[1]
	c.durable, err = strconv.ParseUint(parts[2], 10, 64)
	return err
}

func md5Hex(s string) bool {
	_, err := hex.DecodeString(s)
	return len(s) == 32 && err == nil && strings.ToLower(s) == s
}

// from is a cursor at since, in c's database and incarnation.
func (c Cursor) from(since snapshot) Cursor {
	return Cursor{database: c.database, incarnation: c.incarnation, durable: c.durable, since: since}
}

// within is the cursor inside the batch (c.since, upto], after the change at p.
func (c Cursor) within(upto snapshot, p place) Cursor {
	c.upto, c.after = upto, p
	return c
}

// Encode is the cursor as the opaque string clients hold: its format, a tag of the user it
// belongs to, the database and incarnation, the snapshots as PostgreSQL writes them, and
// the place in a batch, in base64url.
func (c Cursor) Encode(userID string) string {
	return base64.RawURLEncoding.EncodeToString(fmt.Appendf(nil, "2|%x|%s/%s/%d|%s|%s|%d|%d",
		userTag(userID), c.database, c.incarnation, c.durable, c.since, c.upto, c.after.created, c.after.id))
}

// DecodeCursor reads a cursor given by userID; one that is malformed, or that belongs to
// another user, is ErrBadCursor. A cursor of the first format, which placed a page by
// task id alone, starts its batch again: the changes already sent come again, and
// versions sort them out.
func DecodeCursor(userID, text string) (Cursor, error) {
	var c Cursor
	b, err := base64.RawURLEncoding.DecodeString(text)
	parts := strings.Split(string(b), "|")
	if err != nil || len(parts) < 6 || parts[1] != fmt.Sprintf("%x", userTag(userID)) ||
		!(parts[0] == "1" && len(parts) == 6 || parts[0] == "2" && len(parts) == 7) {
		return c, ErrBadCursor
	}
	var errs [5]error
	errs[0] = c.setIncarnation(parts[2])
	c.since, errs[1] = parseSnapshot(parts[3])
	c.upto, errs[2] = parseSnapshot(parts[4])
	if parts[0] == "1" {
		c.upto = snapshot{}
		_, errs[3] = strconv.ParseUint(parts[5], 10, 63)
	} else {
		c.after.created, errs[3] = strconv.ParseInt(parts[5], 10, 64)
		c.after.id, errs[4] = strconv.ParseInt(parts[6], 10, 64)
	}
	usable := func(s snapshot) bool { return s.zero() || s.valid() }
	for _, err := range errs {
		if err != nil {
			return Cursor{}, ErrBadCursor
		}
	}
	if !usable(c.since) || !usable(c.upto) || c.after.id < 0 || c.after.created < earliestPlace ||
		c.upto.zero() != (c.after == place{}) {
		return Cursor{}, ErrBadCursor
	}
	return c, nil
}

// userTag ties a cursor to its user, so that one sent by another is refused.
func userTag(userID string) []byte {
	sum := sha256.Sum256([]byte(userID))
	return sum[:4]
}

// CursorAt is the cursor of a list: everything the snapshot shows (pg_snapshot's text
// form) was delivered, in the database and incarnation SQLIncarnation read with it.
func CursorAt(snapshotText, incarnation string) (Cursor, error) {
	var c Cursor
	err := c.set(snapshotText, incarnation)
	return c, err
}

// Incarnated reports whether the cursor was made in a known incarnation; one made just
// after a crash was not, and the reader who made it must call Feed.Incarnate.
func (c Cursor) Incarnated() bool { return c.incarnation != "" }
