package main

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"taskflow/internal/testkit"

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
	me := testkit.NewUserID()
	secret := []byte(testkit.Secret)
	now := time.Now()
	with := func(change func(*jwt.RegisteredClaims)) jwt.RegisteredClaims {
		c := testkit.Claims(me)
		change(&c)
		return c
	}
	hs256 := func(change func(*jwt.RegisteredClaims)) string {
		return signWith(t, jwt.SigningMethodHS256, secret, with(change))
	}
	valid := hs256(func(*jwt.RegisteredClaims) {})
	noneToken := signWith(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, testkit.Claims(me))

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
		{"bad signature", "Bearer " + signWith(t, jwt.SigningMethodHS256, []byte("another-secret-of-at-least-32-bytes!!"), testkit.Claims(me)), "signature is invalid"},
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
		{"HS384", "Bearer " + signWith(t, jwt.SigningMethodHS384, secret, testkit.Claims(me)), "algorithm is not accepted"},
		{"HS512", "Bearer " + signWith(t, jwt.SigningMethodHS512, secret, testkit.Claims(me)), "algorithm is not accepted"},
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
	auth := newAuthenticator([]byte(testkit.Secret), nil, "taskflow-web", "taskflow-api")
	me := testkit.NewUserID()
	now := time.Now()
	with := func(change func(*jwt.RegisteredClaims)) string {
		c := testkit.Claims(me)
		change(&c)
		return signWith(t, jwt.SigningMethodHS256, []byte(testkit.Secret), c)
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
			if who, err := auth.authenticate(r, false); err != nil || who.userID != me {
				t.Errorf("authenticate = %+v, %v; want %q", who, err, me)
			}
		})
	}
}

func TestAuthConfiguredIssuerAndAudience(t *testing.T) {
	t.Parallel()
	auth := newAuthenticator([]byte(testkit.Secret), nil, "my-web", "my-api")
	me := testkit.NewUserID()
	c := testkit.Claims(me)
	if _, err := auth.verify(signWith(t, jwt.SigningMethodHS256, []byte(testkit.Secret), c)); err == nil {
		t.Error("accepted the default issuer and audience")
	}
	c.Issuer, c.Audience = "my-web", jwt.ClaimStrings{"my-api"}
	if who, err := auth.verify(signWith(t, jwt.SigningMethodHS256, []byte(testkit.Secret), c)); err != nil || who.userID != me {
		t.Errorf("verify = %+v, %v; want the configured issuer and audience accepted", who, err)
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
	auth := newAuthenticator([]byte(testkit.Secret), nil, "taskflow-web", "taskflow-api")
	valid, _ := mintToken([]byte(testkit.Secret), testkit.Claims("fuzz-user"))
	for _, seed := range []string{valid, "", ".", "..", "a.b.c", "eyJhbGciOiJub25lIn0.e30.", valid + "x", strings.ToUpper(valid)} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, token string) {
		who, err := auth.verify(token)
		sub := who.userID
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
			return newAuthenticator([]byte(testkit.Secret), nil, "taskflow-web", "taskflow-api"), testkit.Token(b, benchSub)
		}},
		{"EdDSA", func(b *testing.B) (*Authenticator, string) {
			key := newTestKey(b, "bench", "EdDSA")
			auth := newAuthenticator(nil, newTestJWKS(b, newJWKSServer(b, key)), "taskflow-web", "taskflow-api")
			return auth, key.sign(b, key.method, testkit.Claims(benchSub))
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

// TestStrictTokenParsing holds the verifier to the letter of RFC 7515 and RFC 7519 where
// golang-jwt alone is lenient. None of these tokens could be forged without the key; a
// verifier should still accept exactly one spelling of exactly the tokens it means to.
func TestStrictTokenParsing(t *testing.T) {
	t.Parallel()
	auth := newAuthenticator([]byte(testkit.Secret), nil, "taskflow-web", "taskflow-api")
	me := testkit.NewUserID()
	// signRaw signs a header and a payload given as JSON text, as a careless or hostile
	// issuer holding the key could.
	signRaw := func(header, payload string) string {
		signing := b64u([]byte(header)) + "." + b64u([]byte(payload))
		sig, err := jwt.SigningMethodHS256.Sign(signing, []byte(testkit.Secret))
		if err != nil {
			t.Fatal(err)
		}
		return signing + "." + b64u(sig)
	}
	exp := time.Now().Add(time.Hour).Unix()
	payload := func(extra string) string {
		return fmt.Sprintf(`{"sub":%q,"iss":"taskflow-web","aud":"taskflow-api","exp":%d%s}`, me, exp, extra)
	}
	header := `{"alg":"HS256","typ":"JWT"}`
	if who, err := auth.verify(signRaw(header, payload(""))); err != nil || who.userID != me {
		t.Fatalf("the well-formed token: %+v, %v", who, err)
	}

	rejected := map[string]string{
		"an unknown crit extension": signRaw(`{"alg":"HS256","crit":["x-unknown"],"x-unknown":1}`, payload("")),
		"exp as a string":           signRaw(header, fmt.Sprintf(`{"sub":%q,"iss":"taskflow-web","aud":"taskflow-api","exp":"%d"}`, me, exp)),
		"exp as null":               signRaw(header, fmt.Sprintf(`{"sub":%q,"iss":"taskflow-web","aud":"taskflow-api","exp":null}`, me)),
		"exp past year 9999":        signRaw(header, fmt.Sprintf(`{"sub":%q,"iss":"taskflow-web","aud":"taskflow-api","exp":1e19}`, me)),
		"nbf of 1e19":               signRaw(header, payload(`,"nbf":1e19`)),
		"iat of 1e19":               signRaw(header, payload(`,"iat":1e19`)),
		"a negative iat":            signRaw(header, payload(`,"iat":-1`)),
		"nbf as a string":           signRaw(header, payload(`,"nbf":"0"`)),
	}
	// A 32-byte signature is 43 base64url characters; the last carries 4 bits of data and
	// 2 unused ones, which canonical encoding sets to zero. Three other characters decode
	// to the same signature.
	valid := signRaw(header, payload(""))
	last := valid[len(valid)-1]
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	pos := strings.IndexByte(alphabet, last)
	for i := 1; i < 4; i++ {
		other := alphabet[pos&^3+(pos+i)&3]
		rejected[fmt.Sprintf("a non-canonical last character %c for %c", other, last)] = valid[:len(valid)-1] + string(other)
	}
	for name, token := range rejected {
		t.Run(name+" is refused", func(t *testing.T) {
			_, err := auth.verify(token)
			var apiErr *apiError
			if !errors.As(err, &apiErr) || apiErr.status != http.StatusUnauthorized {
				t.Errorf("verify = %v, want a 401", err)
			}
		})
	}
}

func TestTwoAuthorizationHeadersAre400(t *testing.T) {
	t.Parallel()
	api := newTestAPI(noDatabase(t))
	me := api.newUser(t)
	r := httptest.NewRequest("GET", "/api/"+me.id+"/tasks", nil)
	r.Header.Add("Authorization", "Bearer "+me.token)
	r.Header.Add("Authorization", "Bearer "+testkit.Token(t, testkit.NewUserID()))
	w := httptest.NewRecorder()
	api.handler.ServeHTTP(w, r)
	res := response{w, t}
	res.wantStatus(http.StatusBadRequest)
	if d := res.detail(); !strings.Contains(d, "one Authorization header") {
		t.Errorf("detail %q", d)
	}
}

func TestAuthenticatedResponsesAreNotStored(t *testing.T) {
	t.Parallel()
	api := newTestAPI(noDatabase(t))
	me := api.newUser(t)
	for _, req := range []request{
		{method: "GET", path: "/api/" + me.id + "/tasks"},                                                                                                               // 401
		{method: "GET", path: "/api/someone-else/tasks", token: me.token},                                                                                               // 403
		{method: "GET", path: "/api/" + me.id + "/tasks/x", token: me.token},                                                                                            // 400
		{method: "GET", path: "/api/" + me.id + "/tasks/1", token: me.token},                                                                                            // 503 here
		{method: "POST", path: "/api/" + me.id + "/tasks", body: "{}", token: me.token},                                                                                 // 422
		{method: "GET", path: "/api/" + me.id + "/events", token: me.token, header: map[string]string{"Origin": "https://evil.example", "Accept": "text/event-stream"}}, // 403
	} {
		if got := api.do(t, req).Header().Get("Cache-Control"); got != "no-store" {
			t.Errorf("%s %s: Cache-Control %q, want no-store", req.method, req.path, got)
		}
	}
}
