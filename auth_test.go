package main

import (
	"bytes"
	"encoding/base64"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

func signWith(t testing.TB, method jwt.SigningMethod, key any, claims jwt.RegisteredClaims) string {
	t.Helper()
	tok, err := jwt.NewWithClaims(method, claims).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestAuthRejections(t *testing.T) {
	t.Parallel()
	api := newTestAPI(noDatabase(t))
	me := newUserID(t)
	secret := []byte(testSecret)
	now := time.Now()
	with := func(change func(*jwt.RegisteredClaims)) jwt.RegisteredClaims {
		c := validClaims(me)
		change(&c)
		return c
	}
	hs256 := func(change func(*jwt.RegisteredClaims)) string {
		return signWith(t, jwt.SigningMethodHS256, secret, with(change))
	}
	valid := hs256(func(*jwt.RegisteredClaims) {})
	noneToken := signWith(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, validClaims(me))

	tests := []struct {
		name          string
		authorization string // the whole header; "" sends none
		wantDetail    string
	}{
		{"no header", "", "missing bearer token"},
		{"wrong scheme", "Basic " + valid, "Bearer <token>"},
		{"scheme without token", "Bearer", "Bearer <token>"},
		{"scheme and blank", "Bearer    ", "Bearer <token>"},
		{"garbage", "Bearer not-a-jwt", "malformed"},
		{"three garbage parts", "Bearer a.b.c", "malformed"},
		{"bad signature", "Bearer " + signWith(t, jwt.SigningMethodHS256, []byte("another-secret-of-at-least-32-bytes!!"), validClaims(me)), "signature is invalid"},
		{"tampered payload", "Bearer " + tamper(valid), "signature is invalid"},
		{"expired", "Bearer " + hs256(func(c *jwt.RegisteredClaims) { c.ExpiresAt = jwt.NewNumericDate(now.Add(-time.Minute)) }), "expired"},
		{"no exp", "Bearer " + hs256(func(c *jwt.RegisteredClaims) { c.ExpiresAt = nil }), "exp"},
		{"future nbf", "Bearer " + hs256(func(c *jwt.RegisteredClaims) { c.NotBefore = jwt.NewNumericDate(now.Add(time.Minute)) }), "not valid yet"},
		{"future iat", "Bearer " + hs256(func(c *jwt.RegisteredClaims) { c.IssuedAt = jwt.NewNumericDate(now.Add(time.Minute)) }), "issued in the future"},
		{"wrong iss", "Bearer " + hs256(func(c *jwt.RegisteredClaims) { c.Issuer = "evil" }), "issuer"},
		{"no iss", "Bearer " + hs256(func(c *jwt.RegisteredClaims) { c.Issuer = "" }), "required claim"},
		{"wrong aud", "Bearer " + hs256(func(c *jwt.RegisteredClaims) { c.Audience = jwt.ClaimStrings{"other-api"} }), "audience"},
		{"no aud", "Bearer " + hs256(func(c *jwt.RegisteredClaims) { c.Audience = nil }), "required claim"},
		{"no sub", "Bearer " + hs256(func(c *jwt.RegisteredClaims) { c.Subject = "" }), "subject"},
		{"alg none", "Bearer " + noneToken, "algorithm is not accepted"},
		{"HS384", "Bearer " + signWith(t, jwt.SigningMethodHS384, secret, validClaims(me)), "algorithm is not accepted"},
		{"HS512", "Bearer " + signWith(t, jwt.SigningMethodHS512, secret, validClaims(me)), "algorithm is not accepted"},
		{"oversized", "Bearer " + strings.Repeat("a", maxTokenBytes+1), "too long"},
	}
	for _, tt := range tests {
		t.Run(tt.name+" is 401", func(t *testing.T) {
			req := request{method: "GET", path: "/api/" + me + "/tasks", header: map[string]string{}}
			if tt.authorization != "" {
				req.header["Authorization"] = tt.authorization
			}
			res := api.do(t, req)
			res.wantStatus(http.StatusUnauthorized)
			wantChallenge := `Bearer error="invalid_token"`
			if tt.authorization == "" {
				wantChallenge = "Bearer"
			}
			if got := res.Header().Get("WWW-Authenticate"); got != wantChallenge {
				t.Errorf("WWW-Authenticate %q, want %q", got, wantChallenge)
			}
			if d := res.detail(); !strings.Contains(d, tt.wantDetail) {
				t.Errorf("detail %q, want it to mention %q", d, tt.wantDetail)
			}
		})
	}
}

func TestAuthAccepts(t *testing.T) {
	t.Parallel()
	auth := newAuthenticator([]byte(testSecret), nil, "taskflow-web", "taskflow-api")
	me := newUserID(t)
	now := time.Now()
	with := func(change func(*jwt.RegisteredClaims)) string {
		c := validClaims(me)
		change(&c)
		return signWith(t, jwt.SigningMethodHS256, []byte(testSecret), c)
	}
	tests := []struct {
		name          string
		authorization string
	}{
		{"a valid token", "Bearer " + with(func(*jwt.RegisteredClaims) {})},
		{"a lower-case scheme", "bearer " + with(func(*jwt.RegisteredClaims) {})},
		{"an upper-case scheme", "BEARER " + with(func(*jwt.RegisteredClaims) {})},
		{"an audience list that contains ours", "Bearer " + with(func(c *jwt.RegisteredClaims) { c.Audience = jwt.ClaimStrings{"x", "taskflow-api"} })},
		{"an exp a few seconds past, within the leeway", "Bearer " + with(func(c *jwt.RegisteredClaims) { c.ExpiresAt = jwt.NewNumericDate(now.Add(-5 * time.Second)) })},
		{"an nbf a few seconds ahead, within the leeway", "Bearer " + with(func(c *jwt.RegisteredClaims) { c.NotBefore = jwt.NewNumericDate(now.Add(5 * time.Second)) })},
		{"no iat", "Bearer " + with(func(c *jwt.RegisteredClaims) { c.IssuedAt = nil })},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", "/api/"+me+"/tasks", nil)
			r.Header.Set("Authorization", tt.authorization)
			if sub, err := auth.authenticate(r); err != nil || sub != me {
				t.Errorf("authenticate = %q, %v; want %q", sub, err, me)
			}
		})
	}
}

func TestAuthConfiguredIssuerAndAudience(t *testing.T) {
	t.Parallel()
	auth := newAuthenticator([]byte(testSecret), nil, "my-web", "my-api")
	me := newUserID(t)
	c := validClaims(me)
	if _, err := auth.verify(signWith(t, jwt.SigningMethodHS256, []byte(testSecret), c)); err == nil {
		t.Error("accepted the default issuer and audience")
	}
	c.Issuer, c.Audience = "my-web", jwt.ClaimStrings{"my-api"}
	if sub, err := auth.verify(signWith(t, jwt.SigningMethodHS256, []byte(testSecret), c)); err != nil || sub != me {
		t.Errorf("verify = %q, %v; want the configured issuer and audience accepted", sub, err)
	}
}

// tamper changes the payload's subject and keeps the original signature.
func tamper(token string) string {
	parts := strings.Split(token, ".")
	payload, _ := base64.RawURLEncoding.DecodeString(parts[1])
	payload = bytes.Replace(payload, []byte(`"sub":"`), []byte(`"sub":"x`), 1)
	parts[1] = base64.RawURLEncoding.EncodeToString(payload)
	return strings.Join(parts, ".")
}

func FuzzVerifyToken(f *testing.F) {
	auth := newAuthenticator([]byte(testSecret), nil, "taskflow-web", "taskflow-api")
	valid, _ := mintToken([]byte(testSecret), validClaims("fuzz-user"))
	for _, seed := range []string{valid, "", ".", "..", "a.b.c", "eyJhbGciOiJub25lIn0.e30.", valid + "x", strings.ToUpper(valid)} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, token string) {
		sub, err := auth.verify(token)
		if err == nil {
			// Forging an HS256 signature by chance is not going to happen: whatever
			// verifies must be the seed's own token, or one equivalent to it.
			if sub != "fuzz-user" {
				t.Fatalf("verify(%q) accepted subject %q", token, sub)
			}
			return
		}
		var apiErr *apiError
		if !errors.As(err, &apiErr) || apiErr.status != http.StatusUnauthorized {
			t.Fatalf("verify(%q) = %v, want a 401 apiError", token, err)
		}
	})
}

const benchSub = "k3Jd9xQ2mZ7pL0aBk3Jd9xQ2mZ7pL0aB"

// BenchmarkVerify measures auth.verify(token) per token kind. "cached" is the steady
// state of a returning client; "full" defeats the token cache, measuring a token's
// first use.
func BenchmarkVerify(b *testing.B) {
	for _, kind := range []struct {
		name  string
		setup func(b *testing.B) (*Authenticator, string)
	}{
		{"HS256", func(b *testing.B) (*Authenticator, string) {
			return newAuthenticator([]byte(testSecret), nil, "taskflow-web", "taskflow-api"), tokenFor(b, benchSub)
		}},
		{"EdDSA", func(b *testing.B) (*Authenticator, string) {
			key := newTestKey(b, "bench", "EdDSA")
			auth := newAuthenticator(nil, newTestJWKS(b, newJWKSServer(b, key)), "taskflow-web", "taskflow-api")
			return auth, key.sign(b, key.method, validClaims(benchSub))
		}},
	} {
		for _, full := range []bool{false, true} {
			name := kind.name + "/cached"
			if full {
				name = kind.name + "/full"
			}
			b.Run(name, func(b *testing.B) {
				auth, token := kind.setup(b)
				b.ReportAllocs()
				for b.Loop() {
					if full {
						auth.cache = newTokenCache(1)
					}
					if _, err := auth.verify(token); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
