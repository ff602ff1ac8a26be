//go:build !linux

package web

import (
	"net"
	"time"
)

// Elsewhere than Linux, sockets keep the system's defaults (socket_linux.go).
func Bound(net.Conn, time.Duration) {}
