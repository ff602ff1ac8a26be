//go:build !linux

package main

import (
	"net"
	"time"
)

// Elsewhere than Linux, pooled connections are taken on trust, and streams' sockets keep
// the system's defaults (socket_linux.go).

func connAlive(net.Conn) bool { return true }

func tuneStream(net.Conn, time.Duration) {}
