package main

import (
	"net"
	"syscall"
	"time"
)

// What the service asks of the kernel's sockets, on Linux (socket_other.go elsewhere):
// a peek at pooled database connections, and bounds on the sockets of event streams.

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
	// Control, not Read (withFD): Read takes the descriptor's read lock, which a pgx
	// background reader left blocked in Read may hold indefinitely, and the peek never
	// waits anyway.
	alive := true
	withFD(c, func(fd int) {
		var b [1]byte
		n, _, err := syscall.Recvfrom(fd, b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
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

// streamSendBuffer caps the kernel's send buffer of an event stream's socket (Linux
// doubles it for its own bookkeeping). Left to autotuning, a client that stops reading
// pinned 3.9 MB of kernel memory per stream; an event is at most 7 KiB.
const streamSendBuffer = 32 << 10

// tuneStream bounds what an event stream's socket may hold: its send buffer, and how long
// the kernel waits for a peer that acknowledges nothing (gone without a FIN: a laptop
// shut, a network dropped) before it ends the connection, which the heartbeat's writes
// then notice. Without it, TCP gives up after about 15 minutes.
func tuneStream(c net.Conn, userTimeout time.Duration) {
	withFD(c, func(fd int) {
		syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_SNDBUF, streamSendBuffer)                //nolint:errcheck // best effort: the stream works without
		syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, tcpUserTimeout, int(userTimeout/time.Millisecond)) //nolint:errcheck // as above
	})
}

// tcpUserTimeout is TCP_USER_TIMEOUT, which package syscall does not name.
const tcpUserTimeout = 0x12

func withFD(c net.Conn, f func(fd int)) {
	if sc, ok := c.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			raw.Control(func(fd uintptr) { f(int(fd)) }) //nolint:errcheck // the callback cannot fail
		}
	}
}
