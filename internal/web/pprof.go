//go:build pprof

package web

import (
	"net/http"
	_ "net/http/pprof" // registers /debug/pprof on http.DefaultServeMux
	"os"
)

// A build for profiling (go build -tags pprof) serves Go's profiles on PPROF_ADDR, a
// loopback address, beside the API; docs/performance.md profiles each operation so.
func init() {
	if addr := os.Getenv("PPROF_ADDR"); addr != "" {
		go http.ListenAndServe(addr, nil) //nolint:errcheck // a profile that cannot be served is no profile
	}
}
