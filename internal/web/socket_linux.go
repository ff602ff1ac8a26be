package web

import (
	"net"
	"syscall"
	"time"
)

// Bound caps c's send buffer at SendBuffer, and has the kernel end c when its peer
// acknowledges nothing of what was sent for timeout (TCP_USER_TIMEOUT), zero-window
// probes included: a client gone without a FIN, or one that stopped reading. Without
// it, TCP waits about 15 minutes, and a connection closed with unsent data lives on as
// an orphan in FIN-WAIT-1 for minutes more.
func Bound(c net.Conn, timeout time.Duration) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return
	}
	raw.Control(func(fd uintptr) { //nolint:errcheck // the callback cannot fail
		syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF, SendBuffer)                  //nolint:errcheck // best effort: the connection works without
		syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, tcpUserTimeout, int(timeout/time.Millisecond)) //nolint:errcheck // as above
	})
}

// tcpUserTimeout is TCP_USER_TIMEOUT, which package syscall does not name.
const tcpUserTimeout = 0x12
