package feed

import (
	"net"
	"syscall"
	"time"
)

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
