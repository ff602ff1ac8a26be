package main

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"taskflow/internal/jwks"
	"taskflow/internal/testkit"

	"github.com/golang-jwt/jwt/v5"
)

// testKey is a signing key with the JWK that publishes its public half.
type testKey struct {
	kid    string
	method jwt.SigningMethod
	signer crypto.Signer
	jwk    map[string]any
}

func b64u(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func newTestKey(t testing.TB, kid, alg string) testKey {
	t.Helper()
	k := testKey{kid: kid, method: jwt.GetSigningMethod(alg)}
	switch alg {
	case "EdDSA":
		pub, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		k.signer = priv
		// Better Auth's shape: alg present, no use.
		k.jwk = map[string]any{"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "x": b64u(pub)}
	case "ES256", "ES512":
		curve, crv, size := elliptic.P256(), "P-256", 32
		if alg == "ES512" {
			curve, crv, size = elliptic.P521(), "P-521", 66
		}
		priv, err := ecdsa.GenerateKey(curve, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		k.signer = priv
		k.jwk = map[string]any{"kty": "EC", "crv": crv,
			"x": b64u(priv.X.FillBytes(make([]byte, size))), "y": b64u(priv.Y.FillBytes(make([]byte, size)))}
	case "RS256", "PS256":
		priv, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			t.Fatal(err)
		}
		k.signer = priv
		k.jwk = map[string]any{"kty": "RSA", "n": b64u(priv.N.Bytes()), "e": b64u([]byte{1, 0, 1})}
	default:
		t.Fatalf("no test key for %s", alg)
	}
	k.jwk["kid"] = kid
	return k
}

// sign makes a token for sub with this key, its kid, and the given algorithm.
func (k testKey) sign(t testing.TB, method jwt.SigningMethod, claims jwt.RegisteredClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(method, claims)
	tok.Header["kid"] = k.kid
	s, err := tok.SignedString(k.signer)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// jwksServer serves a mutable key set and counts the fetches.
type jwksServer struct {
	*httptest.Server
	mu      sync.Mutex
	body    string
	status  int
	hang    chan struct{} // non-nil: requests wait until it is closed
	fetches atomic.Int64
}

func newJWKSServer(t testing.TB, keys ...testKey) *jwksServer {
	s := &jwksServer{status: http.StatusOK}
	s.setKeys(keys...)
	s.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.fetches.Add(1)
		s.mu.Lock()
		body, status, hang := s.body, s.status, s.hang
		s.mu.Unlock()
		if hang != nil {
			select {
			case <-hang:
			case <-r.Context().Done():
			}
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		fmt.Fprint(w, body)
	}))
	s.Listener.Close()
	s.Listener = testkit.ListenLoopback(t)
	s.Start()
	t.Cleanup(func() {
		s.mu.Lock()
		if s.hang != nil {
			close(s.hang)
			s.hang = nil
		}
		s.mu.Unlock()
		s.Close()
	})
	return s
}

func (s *jwksServer) setKeys(keys ...testKey) {
	set := map[string][]map[string]any{"keys": {}}
	for _, k := range keys {
		set["keys"] = append(set["keys"], k.jwk)
	}
	b, _ := json.Marshal(set)
	s.setBody(http.StatusOK, string(b))
}

func (s *jwksServer) setBody(status int, body string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status, s.body = status, body
}

func (s *jwksServer) setHang(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if on && s.hang == nil {
		s.hang = make(chan struct{})
	}
	if !on && s.hang != nil {
		close(s.hang)
		s.hang = nil
	}
}

// newTestJWKS returns a key cache on srv that has fetched once, with test-sized intervals.
func newTestJWKS(t testing.TB, srv *jwksServer) *jwks.Set {
	t.Helper()
	j := jwks.New(srv.URL, discardLogger())
	j.MinRefetch = 200 * time.Millisecond
	j.UnknownKidWait = 300 * time.Millisecond
	j.Fetch() //nolint:errcheck // some tests start with a set that fails on purpose
	return j
}

func verifyWith(j *jwks.Set, secret []byte) *Authenticator {
	if j == nil {
		return newAuthenticator(secret, nil, "taskflow-web", "taskflow-api")
	}
	return newAuthenticator(secret, j, "taskflow-web", "taskflow-api")
}

func wantAccepted(t *testing.T, auth *Authenticator, token, sub string) {
	t.Helper()
	who, err := auth.verify(token)
	got := who.userID
	if err != nil || got != sub {
		t.Errorf("verify: sub %q, err %v; want %q accepted", got, err, sub)
	}
}

func wantRejected(t *testing.T, auth *Authenticator, token, why string) {
	t.Helper()
	if _, err := auth.verify(token); err == nil {
		t.Errorf("accepted a token that %s", why)
	} else if e, ok := err.(*apiError); !ok || e.status != http.StatusUnauthorized {
		t.Errorf("rejected with %v, want a 401", err)
	}
}

func TestJWKSAcceptsEveryKeyType(t *testing.T) {
	t.Parallel()
	algs := []string{"EdDSA", "ES256", "ES512", "RS256", "PS256"}
	var keys []testKey
	for _, alg := range algs {
		keys = append(keys, newTestKey(t, "kid-"+alg, alg))
	}
	srv := newJWKSServer(t, keys...)
	both := verifyWith(newTestJWKS(t, srv), []byte(testkit.Secret))
	me := testkit.NewUserID()
	for _, k := range keys {
		t.Run(k.method.Alg()+" is accepted", func(t *testing.T) {
			wantAccepted(t, both, k.sign(t, k.method, testkit.Claims(me)), me)
		})
	}
	t.Run("HS256 is accepted beside the JWKS", func(t *testing.T) {
		wantAccepted(t, both, testkit.Token(t, me), me)
	})
	t.Run("the claims are checked as for HS256", func(t *testing.T) {
		k := keys[0]
		c := testkit.Claims(me)
		c.ExpiresAt = jwt.NewNumericDate(time.Now().Add(-time.Hour))
		wantRejected(t, both, k.sign(t, k.method, c), "has expired")
		c = testkit.Claims(me)
		c.ExpiresAt = nil
		wantRejected(t, both, k.sign(t, k.method, c), "has no exp")
		c = testkit.Claims(me)
		c.Issuer = "evil"
		wantRejected(t, both, k.sign(t, k.method, c), "has another issuer")
		c = testkit.Claims(me)
		c.Audience = jwt.ClaimStrings{"other"}
		wantRejected(t, both, k.sign(t, k.method, c), "has another audience")
	})
	t.Run("a token tampered after signing is refused", func(t *testing.T) {
		wantRejected(t, both, tamper(keys[0].sign(t, keys[0].method, testkit.Claims(me))), "was tampered with")
	})
	t.Run("without a secret, HS256 is refused", func(t *testing.T) {
		wantRejected(t, verifyWith(newTestJWKS(t, srv), nil), testkit.Token(t, me), "is HS256 with no secret configured")
	})
}

func TestJWKSAlgorithmMustFitTheKey(t *testing.T) {
	t.Parallel()
	ed := newTestKey(t, "ed", "EdDSA")
	p256 := newTestKey(t, "p256", "ES256")
	p521 := newTestKey(t, "p521", "ES512")
	rsaKey := newTestKey(t, "rsa", "RS256")
	rsaPS := newTestKey(t, "rsa-ps-only", "PS256")
	rsaPS.jwk["alg"] = "PS256" // this key may only verify PS256
	srv := newJWKSServer(t, ed, p256, p521, rsaKey, rsaPS)
	auth := verifyWith(newTestJWKS(t, srv), []byte(testkit.Secret))
	me := testkit.NewUserID()
	claims := testkit.Claims(me)

	// A signer is needed that matches the header's alg, so each token is signed with a
	// key of the right type and then labelled with the kid of a key of another type.
	relabel := func(signedBy testKey, kid string) string {
		k := signedBy
		k.kid = kid
		return k.sign(t, k.method, claims)
	}
	cases := []struct{ name, token string }{
		{"ES256 with the kid of an Ed25519 key", relabel(p256, "ed")},
		{"EdDSA with the kid of a P-256 key", relabel(ed, "p256")},
		{"ES512 with the kid of a P-256 key", relabel(p521, "p256")},
		{"ES256 with the kid of a P-521 key", relabel(p256, "p521")},
		{"RS256 with the kid of an Ed25519 key", relabel(rsaKey, "ed")},
		{"RS256 with a key whose JWK says PS256", relabel(rsaKey, "rsa-ps-only")},
		{"no kid", func() string {
			tok := jwt.NewWithClaims(jwt.SigningMethodEdDSA, claims)
			s, _ := tok.SignedString(ed.signer)
			return s
		}()},
		{"HS256 keyed with a public key's bytes", func() string {
			tok := jwt.NewWithClaims(jwt.SigningMethodHS256, claims)
			tok.Header["kid"] = "ed"
			s, _ := tok.SignedString([]byte(ed.signer.Public().(ed25519.PublicKey)))
			return s
		}()},
		{"alg none with a valid kid", func() string {
			tok := jwt.NewWithClaims(jwt.SigningMethodNone, claims)
			tok.Header["kid"] = "ed"
			s, _ := tok.SignedString(jwt.UnsafeAllowNoneSignatureType)
			return s
		}()},
		{"RS384, not an accepted algorithm", rsaKey.sign(t, jwt.SigningMethodRS384, claims)},
		{"ES384, not an accepted algorithm", func() string {
			p384 := newTestKey(t, "p256", "ES256")
			priv, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
			p384.signer = priv
			return p384.sign(t, jwt.SigningMethodES384, claims)
		}()},
	}
	for _, c := range cases {
		t.Run(c.name+" is refused", func(t *testing.T) { wantRejected(t, auth, c.token, c.name) })
	}
	wantAccepted(t, auth, rsaPS.sign(t, jwt.SigningMethodPS256, claims), me)
}

func TestJWKSRotation(t *testing.T) {
	t.Parallel()
	oldKey, newKey := newTestKey(t, "2026-01", "EdDSA"), newTestKey(t, "2026-02", "EdDSA")
	srv := newJWKSServer(t, oldKey)
	j := newTestJWKS(t, srv)
	auth := verifyWith(j, nil)
	me := testkit.NewUserID()

	wantAccepted(t, auth, oldKey.sign(t, oldKey.method, testkit.Claims(me)), me)
	wantRejected(t, auth, newKey.sign(t, newKey.method, testkit.Claims(me)), "is signed by a key not yet published")

	// The frontend rotates: it publishes the new key beside the old one for a grace period.
	srv.setKeys(oldKey, newKey)
	time.Sleep(j.MinRefetch)
	wantAccepted(t, auth, newKey.sign(t, newKey.method, testkit.Claims(me)), me)
	wantAccepted(t, auth, oldKey.sign(t, oldKey.method, testkit.Claims(me)), me)

	// After the grace the old key is gone from the set; the next refresh forgets it.
	srv.setKeys(newKey)
	if err := j.Fetch(); err != nil {
		t.Fatal(err)
	}
	wantRejected(t, auth, oldKey.sign(t, oldKey.method, testkit.Claims(me)), "is signed by a retired key")
	wantAccepted(t, auth, newKey.sign(t, newKey.method, testkit.Claims(me)), me)
}

func TestJWKSBackgroundRefreshRetiresKeys(t *testing.T) {
	t.Parallel()
	oldKey, newKey := newTestKey(t, "a", "EdDSA"), newTestKey(t, "b", "EdDSA")
	srv := newJWKSServer(t, oldKey, newKey)
	j := jwks.New(srv.URL, discardLogger())
	j.Refresh = 50 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go j.KeepFresh(ctx)
	auth := verifyWith(j, nil)
	me := testkit.NewUserID()
	testkit.WaitFor(t, "the first fetch", func() bool { return j.Len() == 2 })
	srv.setKeys(newKey)
	testkit.WaitFor(t, "the refresh to drop the retired key", func() bool { return j.Len() == 1 })
	wantRejected(t, auth, oldKey.sign(t, oldKey.method, testkit.Claims(me)), "is signed by a retired key")
}

func TestJWKSDown(t *testing.T) {
	t.Parallel()
	known := newTestKey(t, "known", "EdDSA")
	srv := newJWKSServer(t, known)
	j := newTestJWKS(t, srv)
	auth := verifyWith(j, nil)
	me := testkit.NewUserID()
	unknown := newTestKey(t, "unknown", "EdDSA")

	for _, outage := range []struct {
		name  string
		start func()
	}{
		{"answering 500", func() { srv.setBody(http.StatusInternalServerError, "oops") }},
		{"hanging", func() { srv.setHang(true) }},
		{"gone", func() { srv.CloseClientConnections(); srv.Listener.Close() }},
	} {
		t.Run("with the JWKS server "+outage.name, func(t *testing.T) {
			outage.start()
			time.Sleep(j.MinRefetch) // let the unknown kid below trigger a fetch
			start := time.Now()
			wantRejected(t, auth, unknown.sign(t, unknown.method, testkit.Claims(me)), "has an unknown kid")
			if took := time.Since(start); took > j.UnknownKidWait+200*time.Millisecond {
				t.Errorf("an unknown kid took %v to refuse, want about unknownKidWait (%v)", took, j.UnknownKidWait)
			}
			start = time.Now()
			wantAccepted(t, auth, known.sign(t, known.method, testkit.Claims(me)), me)
			if took := time.Since(start); took > 50*time.Millisecond {
				t.Errorf("a cached key took %v while the JWKS server is %s", took, outage.name)
			}
			if j.Len() != 1 {
				t.Errorf("the cache holds %d keys, want the 1 it had", j.Len())
			}
		})
	}
}

func TestJWKSGarbageNeverReplacesGoodKeys(t *testing.T) {
	t.Parallel()
	good := newTestKey(t, "good", "EdDSA")
	srv := newJWKSServer(t, good)
	j := newTestJWKS(t, srv)
	me := testkit.NewUserID()
	weakRSA, _ := rsa.GenerateKey(rand.Reader, 1024)
	offCurve := newTestKey(t, "off", "ES256")
	offCurve.jwk["y"] = offCurve.jwk["x"]
	for name, body := range map[string]string{
		"not JSON":               "<html>login</html>",
		"JSON without keys":      `{"foo":1}`,
		"an empty set":           `{"keys":[]}`,
		"a 1024-bit RSA key":     fmt.Sprintf(`{"keys":[{"kty":"RSA","kid":"weak","n":%q,"e":"AQAB"}]}`, b64u(weakRSA.N.Bytes())),
		"a point off the curve":  mustJSON(map[string]any{"keys": []any{offCurve.jwk}}),
		"a short Ed25519 key":    `{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"short","x":"AAAA"}]}`,
		"an X25519 key":          `{"keys":[{"kty":"OKP","crv":"X25519","kid":"x","x":"` + b64u(make([]byte, 32)) + `"}]}`,
		"an encryption key":      `{"keys":[{"kty":"OKP","crv":"Ed25519","use":"enc","kid":"enc","x":"` + b64u(make([]byte, 32)) + `"}]}`,
		"an alg unfit for a key": `{"keys":[{"kty":"OKP","crv":"Ed25519","alg":"RS256","kid":"mix","x":"` + b64u(make([]byte, 32)) + `"}]}`,
		"bad base64":             `{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"b64","x":"!!!"}]}`,
		"more than 1 MiB":        `{"keys":[],"pad":"` + strings.Repeat("x", 1<<20) + `"}`,
	} {
		srv.setBody(http.StatusOK, body)
		if err := j.Fetch(); err == nil {
			t.Errorf("%s: the fetch succeeded", name)
		}
		wantAccepted(t, verifyWith(j, nil), good.sign(t, good.method, testkit.Claims(me)), me)
	}
}

func TestJWKSDuplicateKidIsDropped(t *testing.T) {
	t.Parallel()
	a, b, c := newTestKey(t, "same", "EdDSA"), newTestKey(t, "same", "EdDSA"), newTestKey(t, "other", "EdDSA")
	j := newTestJWKS(t, newJWKSServer(t, a, b, c))
	if j.Len() != 1 {
		t.Errorf("the cache holds %d keys, want only the unambiguous one", j.Len())
	}
	me := testkit.NewUserID()
	wantRejected(t, verifyWith(j, nil), a.sign(t, a.method, testkit.Claims(me)), "kid")
	wantAccepted(t, verifyWith(j, nil), c.sign(t, c.method, testkit.Claims(me)), me)
}

func TestJWKSRefetchIsRateLimited(t *testing.T) {
	t.Parallel()
	known := newTestKey(t, "known", "EdDSA")
	srv := newJWKSServer(t, known)
	j := newTestJWKS(t, srv)
	j.MinRefetch = time.Hour
	auth := verifyWith(j, nil)
	me := testkit.NewUserID()
	before := srv.fetches.Load()

	// burst verifies n tokens with made-up kids at once and counts those accepted.
	forger := newTestKey(t, "", "EdDSA")
	burst := func(auth *Authenticator, n int, prefix string) int32 {
		var accepted atomic.Int32
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				k := forger
				k.kid = fmt.Sprintf("%s-%d", prefix, i)
				if _, err := auth.verify(k.sign(t, k.method, testkit.Claims(me))); err == nil {
					accepted.Add(1)
				}
			}()
		}
		wg.Wait()
		return accepted.Load()
	}

	// A burst of tokens with made-up kids: at most one fetch, never one per token.
	if n := burst(auth, 200, "made-up"); n != 0 {
		t.Errorf("%d made-up kids were accepted", n)
	}
	// The cache started with a fetch in newTestJWKS, within minRefetch: no new fetch at all.
	if n := srv.fetches.Load() - before; n != 0 {
		t.Errorf("%d fetches for 200 unknown kids within minRefetch, want 0", n)
	}

	j2 := newTestJWKS(t, srv)
	j2.MinRefetch = 200 * time.Millisecond
	time.Sleep(j2.MinRefetch)
	auth2 := verifyWith(j2, nil)
	before = srv.fetches.Load()
	srv.setHang(true) // keep the one fetch running while the burst arrives
	burst(auth2, 50, "burst")
	srv.setHang(false)
	if n := srv.fetches.Load() - before; n != 1 {
		t.Errorf("%d fetches for a burst of 50 unknown kids, want 1", n)
	}
}

func TestRunStartsWhileTheJWKSIsDown(t *testing.T) {
	srv := newJWKSServer(t)
	srv.setBody(http.StatusServiceUnavailable, "starting")
	base, stop := startRun(t, map[string]string{"BETTER_AUTH_SECRET": "", "JWT_JWKS_URL": srv.URL})
	key := newTestKey(t, "late", "EdDSA")
	me := testkit.NewUserID()
	token := key.sign(t, key.method, testkit.Claims(me))
	if res, _ := httpDo(t, "GET", base+"/api/"+me+"/tasks", token, ""); res.StatusCode != http.StatusUnauthorized {
		t.Errorf("with no keys yet: %d, want 401", res.StatusCode)
	}
	srv.setKeys(key) // the frontend comes up
	testkit.WaitFor(t, "the key to be fetched", func() bool {
		res, _ := httpDo(t, "GET", base+"/api/"+me+"/tasks", token, "")
		return res.StatusCode == http.StatusOK
	})
	if err := stop(); err != nil {
		t.Errorf("run: %v", err)
	}
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}
