package web

import (
	"net"
	"net/http"
	"time"
)

// SendBuffer caps the kernel's send buffer of every connection (Linux doubles it for its
// own bookkeeping): what a client that stops reading can make the kernel hold for it.
// Left to autotuning, unread lists of one account held about a megabyte each
// (docs/operations.md). The price: a connection carries at most about twice this per
// round trip, which is plenty beside the service and slow across an ocean.
const SendBuffer = 32 << 10

// BoundedListener accepts connections whose sockets Bound bounds with timeout.
func BoundedListener(ln net.Listener, timeout time.Duration) net.Listener {
	return boundedListener{ln, timeout}
}

type boundedListener struct {
	net.Listener
	timeout time.Duration
}

func (l boundedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		Bound(c, l.timeout)
	}
	return c, err
}

// ResetOnClose has the next Close of c reset the connection instead of ending it in
// order, so that the kernel frees it and its unsent data at once: a connection the
// server cuts must not linger in FIN-WAIT-1 with a full send buffer, counted by no limit.
func ResetOnClose(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0) //nolint:errcheck // best effort: Close still closes
	}
}

// resetOnClose resets r's connection when the server closes it (Watch keeps it).
func resetOnClose(r *http.Request) {
	if c, ok := r.Context().Value(connKey{}).(net.Conn); ok {
		ResetOnClose(c)
	}
}

type connKey struct{}
