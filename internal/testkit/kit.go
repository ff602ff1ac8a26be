// Package testkit is what the service's tests and its load harnesses (load/) share: free
// ports, tokens, the built binary, a database of their own, a database link that fails on
// demand, PgBouncer, a Server-Sent Events reader, and a client that follows the feed of
// changes as a browser should. No code of the service imports it.
package testkit

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"math/big"
	mathrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Secret is the HS256 secret of every test server.
const Secret = "test-secret-that-is-at-least-32-bytes-long"

// ListenLoopback listens on a free loopback port below Linux's ephemeral range
// (32768-60999): a server there, once stopped, could be dialled by a client the kernel
// gave that same port, which would then be connected to itself.
func ListenLoopback(t testing.TB) net.Listener {
	t.Helper()
	for range 100 {
		if ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", 10000+mathrand.IntN(22000))); err == nil {
			return ln
		}
	}
	t.Fatal("no free loopback port below 32768")
	return nil
}

// FreePort returns a loopback port below 32768 that was free a moment ago.
func FreePort(t testing.TB) string {
	t.Helper()
	ln := ListenLoopback(t)
	defer ln.Close()
	return fmt.Sprint(ln.Addr().(*net.TCPAddr).Port)
}

// WaitFor polls cond for up to 10 seconds.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// WaitOK waits until a GET of url answers 200.
func WaitOK(t testing.TB, url string) {
	t.Helper()
	WaitFor(t, url, func() bool {
		res, err := http.Get(url)
		if err == nil {
			res.Body.Close()
		}
		return err == nil && res.StatusCode == http.StatusOK
	})
}

// NewUserID returns a fresh id shaped like Better Auth's: 32 random alphanumerics.
func NewUserID() string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 32)
	for i := range b {
		n, _ := rand.Int(rand.Reader, big.NewInt(int64(len(alphabet))))
		b[i] = alphabet[n.Int64()]
	}
	return string(b)
}

// Claims are claims a test server accepts for userID, for 15 minutes; tests change a copy.
func Claims(userID string) jwt.RegisteredClaims {
	now := time.Now()
	return jwt.RegisteredClaims{Subject: userID, Issuer: "taskflow-web", Audience: jwt.ClaimStrings{"taskflow-api"},
		IssuedAt: jwt.NewNumericDate(now), ExpiresAt: jwt.NewNumericDate(now.Add(15 * time.Minute))}
}

// Sign signs claims with Secret.
func Sign(t testing.TB, c jwt.RegisteredClaims) string {
	token, err := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString([]byte(Secret))
	if err != nil {
		t.Fatal(err)
	}
	return token
}

// Token is a token of userID, valid for 15 minutes, signed with Secret.
func Token(t testing.TB, userID string) string { return Sign(t, Claims(userID)) }

// ShortToken is a token of userID that expires after d: its stream ends then.
func ShortToken(t testing.TB, userID string, d time.Duration) string {
	c := Claims(userID)
	c.ExpiresAt = jwt.NewNumericDate(time.Now().Add(d))
	return Sign(t, c)
}

var built struct {
	once sync.Once
	bin  string
	err  error
}

// Binary builds the service once per test process and returns the binary's path.
func Binary(t testing.TB) string {
	t.Helper()
	built.once.Do(func() {
		dir, err := os.MkdirTemp("", "taskflow-test-bin")
		if err != nil {
			built.err = err
			return
		}
		built.bin = filepath.Join(dir, "taskflow-api")
		cmd := exec.Command("go", "build", "-o", built.bin, ".")
		cmd.Dir = Root(t)
		if out, err := cmd.CombinedOutput(); err != nil {
			built.err = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if built.err != nil {
		t.Fatal(built.err)
	}
	return built.bin
}

// RemoveBinary removes what Binary built; a TestMain calls it after the tests.
func RemoveBinary() {
	if built.bin != "" {
		os.RemoveAll(filepath.Dir(built.bin))
	}
}

// Root is the module's root: where the service's source, deploy/ and scripts/ are.
func Root(t testing.TB) string {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil || strings.TrimSpace(string(out)) == "" {
		t.Fatalf("go env GOMOD: %v", err)
	}
	return filepath.Dir(strings.TrimSpace(string(out)))
}

// EnvOr, EnvList and EnvDuration read a knob of make soak, make bench and the like.
func EnvOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func EnvList(name, def string) []string { return strings.Split(EnvOr(name, def), ",") }

func EnvDuration(t testing.TB, name string, def time.Duration) time.Duration {
	d, err := time.ParseDuration(EnvOr(name, def.String()))
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return d
}

func Ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }

// Percentile is the p-th percentile of sorted durations, 0 when there are none.
func Percentile(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[len(sorted)*p/100]
}

// ProcStatus is a size field of /proc/<pid>/status (VmRSS, VmHWM, ...) in bytes.
func ProcStatus(t testing.TB, pid int, field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, field+":") {
			kb, _ := strconv.ParseInt(strings.Fields(line)[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// PeakRSS is a process's peak resident memory (VmHWM); ResetPeakRSS starts a new peak.
func PeakRSS(t testing.TB, pid int) int64 { return ProcStatus(t, pid, "VmHWM") }

func ResetPeakRSS(t testing.TB, pid int) {
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0); err != nil {
		t.Fatal(err)
	}
}

// SyncBuffer is a strings.Builder safe for a server's goroutines to write and a test to read.
type SyncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// LargestTaskBody is a create body of the largest task in JSON: 200 and 1000 characters
// of U+0001, which JSON escapes the longest (\u0001).
func LargestTaskBody() string {
	b, _ := json.Marshal(map[string]string{"title": strings.Repeat("\x01", 200), "description": strings.Repeat("\x01", 1000)})
	return string(b)
}
