package pg

import (
	"net"
	"syscall"
)

// connAlive reports whether an idle pooled connection may still be used. When the server
// closes a connection (a restart, a failover, Neon or PgBouncer ending it with 57P01) the
// kernel has the FIN, and usually the FATAL message before it, long before pgx would
// notice: pgx only learns on its next read, after a statement was sent, when a write may
// no longer be retried. A non-blocking peek at the socket costs one system call and
// catches that before anything is sent; without it a fault test fails
// (docs/performance.md, "The liveness peek").
func connAlive(c net.Conn) bool {
	tlsConn, isTLS := c.(interface{ NetConn() net.Conn })
	if isTLS {
		c = tlsConn.NetConn()
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return true
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	// Control, not Read: Read takes the descriptor's read lock, which a pgx background
	// reader left blocked in Read may hold indefinitely, and the peek never waits anyway.
	alive := true
	raw.Control(func(fd uintptr) { //nolint:errcheck // the callback cannot fail
		var b [1]byte
		n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch {
		case err == syscall.EAGAIN || err == syscall.EWOULDBLOCK:
			// Nothing to read: the normal state of an idle connection.
		case err != nil, n == 0:
			alive = false // reset, or end of stream
		default:
			// PostgreSQL sends nothing to an idle session except a FATAL before closing it
			// (the pool's sessions never LISTEN; the wake-up listener has a connection of
			// its own). Under TLS, though, unread bytes may be a session ticket, so only a
			// plain connection is judged by them.
			alive = isTLS
		}
	})
	return alive
}
