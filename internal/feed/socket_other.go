//go:build !linux

package feed

import (
	"net"
	"time"
)

// Elsewhere than Linux, streams' sockets keep the system's defaults (socket_linux.go).
func tuneStream(net.Conn, time.Duration) {}
