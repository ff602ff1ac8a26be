package main

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
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

// arg is the snapshot as a statement's argument: NULL when zero.
func (s snapshot) arg() any {
	if s.xmin == 0 {
		return nil
	}
	return s.String()
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
	database    string   // the database's identity (changes_durable in schema.sql)
	incarnation string   // the database's when the cursor was made (changes_incarnation)
	durable     uint64   // a transaction id then known to be on disk (changes_durable)
	since       snapshot // every change it shows was delivered; zero: none was (a full sync)
	upto        snapshot // while a batch (since, upto] is paged, the batch's end; else zero
	after       int64    // while paged, the last task id of the batch delivered
}

// set places the cursor where everything a snapshot shows, given in pg_snapshot's text
// form, was delivered, in a database and incarnation given as sqlIncarnation reads them.
func (c *Cursor) set(snapshotText, incarnation string) error {
	s, err := parseSnapshot(snapshotText)
	*c = Cursor{since: s}
	return errors.Join(err, c.setIncarnation(incarnation))
}

// setIncarnation reads "database/incarnation/durable".
func (c *Cursor) setIncarnation(text string) error {
	parts := strings.Split(text, "/")
	if len(parts) != 3 {
		return errBadCursor
	}
	var err error
	c.database, c.incarnation = parts[0], parts[1]
	c.durable, err = strconv.ParseUint(parts[2], 10, 64)
	return err
}

// from is a cursor at since, in c's database and incarnation.
func (c Cursor) from(since snapshot) Cursor {
	return Cursor{database: c.database, incarnation: c.incarnation, durable: c.durable, since: since}
}

// Encode is the cursor as the opaque string clients hold: its format, a tag of the user it
// belongs to, the database and incarnation, and the snapshots as PostgreSQL writes them,
// in base64url.
func (c Cursor) Encode(userID string) string {
	return base64.RawURLEncoding.EncodeToString(fmt.Appendf(nil, "1|%x|%s/%s/%d|%s|%s|%d",
		userTag(userID), c.database, c.incarnation, c.durable, c.since, c.upto, c.after))
}

// decodeCursor reads a cursor given by userID; one that is malformed, or that belongs to
// another user, is an error for a 400.
func decodeCursor(userID, text string) (Cursor, error) {
	var c Cursor
	b, err := base64.RawURLEncoding.DecodeString(text)
	parts := strings.Split(string(b), "|")
	if err != nil || len(parts) != 6 || parts[0] != "1" || parts[1] != fmt.Sprintf("%x", userTag(userID)) {
		return c, errBadCursor
	}
	var errs [4]error
	errs[3] = c.setIncarnation(parts[2])
	c.since, errs[0] = parseSnapshot(parts[3])
	c.upto, errs[1] = parseSnapshot(parts[4])
	c.after, errs[2] = strconv.ParseInt(parts[5], 10, 64)
	usable := func(s snapshot) bool { return s.xmin == 0 && s.xmax == 0 && s.xip == nil || s.valid() }
	if errors.Join(errs[:]...) != nil || !usable(c.since) || !usable(c.upto) || c.after < 0 || (c.upto.xmin == 0) != (c.after == 0) {
		return c, errBadCursor
	}
	return c, nil
}

// userTag ties a cursor to its user, so that one sent by another is refused.
func userTag(userID string) []byte {
	sum := sha256.Sum256([]byte(userID))
	return sum[:4]
}

// sqlIncarnation is the database's identity, its incarnation for the feed and its id known
// on disk (changes_durable and changes_incarnation in schema.sql), in a cursor's form
// ("database/token/xid"); the token is "" just after a crash, until incarnate makes one.
const sqlIncarnation = `(SELECT database || '/' || coalesce((SELECT token FROM changes_incarnation), '') || '/' || xid FROM changes_durable)`

// sqlMarkDurable, in a statement that commits, moves the id known on disk on to its own.
const sqlMarkDurable = `UPDATE changes_durable SET xid = greatest(xid, pg_current_xact_id())`

// incarnate gives the database an incarnation if it has none. The first reader after a
// crash does it; a cursor made before then has none, which sqlChanges never trusts.
func (s *db) incarnate(ctx context.Context) error {
	return s.row(ctx, func(r pgx.Row) error { return r.Scan(nil) },
		`WITH made AS (INSERT INTO changes_incarnation (token) VALUES (md5(random()::text || clock_timestamp()::text))
    ON CONFLICT DO NOTHING RETURNING 1), marked AS (`+sqlMarkDurable+`) SELECT count(*) FROM made`)
}
