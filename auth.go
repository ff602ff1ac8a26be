package main

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"taskflow/internal/jwks"

	"github.com/golang-jwt/jwt/v5"
)

const (
	// clockLeeway absorbs clock drift between the frontend that signs and this service.
	clockLeeway = 30 * time.Second
	// maxTokenBytes bounds the work an unauthenticated client can ask for. Better Auth's
	// tokens, which carry the user record, are well under 2 KiB.
	maxTokenBytes = 8 << 10
	// maxUserIDBytes matches the tasks_user_id_check constraint in schema.sql.
	maxUserIDBytes = 255
)

// keyLookup finds the public key for a token signed with an asymmetric algorithm (the
// frontend's key set, internal/jwks); nil when JWT_JWKS_URL is unset. Generation changes
// whenever the set of keys does.
type keyLookup interface {
	PublicKey(kid, alg string) (any, error)
	Generation() uint64
}

// Authenticator verifies bearer tokens and yields the user id they were issued for.
type Authenticator struct {
	parser *jwt.Parser
	secret []byte    // HS256 key; nil when only JWKS is configured
	keys   keyLookup // nil when only HS256 is configured
	cache  *tokenCache
}

// verifiedTokens bounds the token cache: about 2 MiB at most.
const verifiedTokens = 10000

func newAuthenticator(secret []byte, keys keyLookup, issuer, audience string) *Authenticator {
	var methods []string
	if secret != nil {
		methods = append(methods, jwt.SigningMethodHS256.Alg())
	}
	if keys != nil {
		methods = append(methods, jwks.Algorithms...)
	}
	return &Authenticator{
		secret: secret,
		keys:   keys,
		cache:  newTokenCache(verifiedTokens),
		parser: jwt.NewParser(
			// The allow-list is what stops "alg: none" and algorithm confusion: a token
			// cannot choose a verification method the server did not configure.
			jwt.WithValidMethods(methods),
			jwt.WithIssuer(issuer),
			jwt.WithAudience(audience),
			jwt.WithExpirationRequired(),
			jwt.WithIssuedAt(),
			jwt.WithLeeway(clockLeeway),
			// Base64url must be canonical (RFC 4648 3.5): the unused bits of a segment's
			// last character are zero, so no token has two spellings.
			jwt.WithStrictDecoding(),
		),
	}
}

// key is the jwt.Keyfunc. HS256 is verified only with the shared secret, never with a
// JWKS key, so a public key can never be used as an HMAC secret.
func (a *Authenticator) key(t *jwt.Token) (any, error) {
	if _, ok := t.Header["crit"]; ok {
		// RFC 7515 4.1.11: a token whose crit names an extension the verifier does not
		// understand must be refused, and this verifier understands none.
		return nil, errCritical
	}
	alg := t.Method.Alg()
	if alg == jwt.SigningMethodHS256.Alg() {
		return a.secret, nil // the parser only lets HS256 through when a secret is set
	}
	kid, _ := t.Header["kid"].(string)
	return a.keys.PublicKey(kid, alg)
}

var (
	errCritical  = errors.New("token has a crit header this server does not understand")
	errTimeClaim = errors.New("token's exp, nbf or iat is not a number of seconds since 1970 up to year 9999")
)

// claims are the registered claims, read strictly. golang-jwt alone takes exp, nbf and
// iat given as strings ("1790000000"), and lets 1e19 overflow into the distant past.
type claims struct{ jwt.RegisteredClaims }

func (c *claims) UnmarshalJSON(b []byte) error {
	// The same field names as RegisteredClaims, so both match the same keys.
	var times struct {
		Exp json.RawMessage `json:"exp"`
		Nbf json.RawMessage `json:"nbf"`
		Iat json.RawMessage `json:"iat"`
	}
	if err := json.Unmarshal(b, &times); err != nil {
		return err
	}
	for _, raw := range []json.RawMessage{times.Exp, times.Nbf, times.Iat} {
		// A JSON string or null fails ParseFloat; the decoded JSON holds no other non-number.
		if f, err := strconv.ParseFloat(string(raw), 64); raw != nil && (err != nil || f < 0 || f > maxUnixTime) {
			return errTimeClaim
		}
	}
	return json.Unmarshal(b, &c.RegisteredClaims)
}

// maxUnixTime is 9999-12-31T23:59:59Z.
const maxUnixTime = 253402300799

// A caller is who a verified token speaks for, and until when.
type caller struct {
	userID  string
	expires time.Time
}

// authenticate verifies the request's bearer token and returns its caller, or a 401.
// Where fromQuery, a request without the header may send the token as the access_token
// query parameter instead.
func (a *Authenticator) authenticate(r *http.Request, fromQuery bool) (caller, error) {
	headers := r.Header.Values("Authorization")
	if len(headers) > 1 {
		// Which one counts could differ between this service and a proxy in front of it.
		return caller{}, badRequest("send one Authorization header, not %d", len(headers))
	}
	if len(headers) == 0 || headers[0] == "" {
		if !fromQuery {
			return caller{}, errNoToken
		}
		values, ok := r.URL.Query()["access_token"]
		if !ok {
			return caller{}, errNoToken
		}
		if len(values) != 1 || values[0] == "" {
			return caller{}, unauthorized("access_token must be given once, and not empty")
		}
		return a.verify(values[0])
	}
	scheme, token, _ := strings.Cut(headers[0], " ")
	token = strings.TrimSpace(token)
	if !strings.EqualFold(scheme, "Bearer") || token == "" {
		return caller{}, unauthorized("Authorization header must be: Bearer <token>")
	}
	return a.verify(token)
}

// verify checks a token's signature and claims and returns its caller.
func (a *Authenticator) verify(token string) (caller, error) {
	if len(token) > maxTokenBytes {
		return caller{}, unauthorized("token is too long")
	}
	var generation uint64
	if a.keys != nil {
		generation = a.keys.Generation()
	}
	if who, ok := a.cache.get(token, generation); ok {
		return who, nil
	}
	var claims claims
	if _, err := a.parser.ParseWithClaims(token, &claims, a.key); err != nil {
		return caller{}, unauthorized(tokenErrorDetail(err))
	}
	sub := claims.Subject
	if sub == "" || len(sub) > maxUserIDBytes || !utf8.ValidString(sub) || strings.IndexByte(sub, 0) >= 0 {
		return caller{}, unauthorized("token subject is not a valid user id")
	}
	who := caller{userID: sub, expires: claims.ExpiresAt.Time} // exp is required, so set
	a.cache.put(token, who, generation)
	return who, nil
}

// tokenErrorDetail says why a token was refused, precisely enough to debug a client
// and without echoing anything from the token.
func tokenErrorDetail(err error) string {
	switch {
	case errors.Is(err, errCritical):
		return errCritical.Error()
	case errors.Is(err, errTimeClaim):
		return errTimeClaim.Error()
	case errors.Is(err, jwt.ErrTokenMalformed):
		return "token is malformed"
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		// The parser reports a disallowed alg under the same sentinel as a bad
		// signature; only its text tells them apart.
		if strings.Contains(err.Error(), "signing method") {
			return "token signing algorithm is not accepted"
		}
		return "token signature is invalid"
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return "token lacks a required claim (exp, iss and aud are required)"
	case errors.Is(err, jwt.ErrTokenExpired):
		return "token has expired"
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return "token is not valid yet"
	case errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return "token is issued in the future"
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return "token issuer is not accepted"
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return "token audience is not accepted"
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		return "token cannot be verified: " + unverifiableReason(err)
	}
	return "token is invalid"
}

func unverifiableReason(err error) string {
	var reason jwks.KeyError
	if errors.As(err, &reason) {
		return string(reason)
	}
	return "its signing algorithm is not accepted"
}

// tokenCache remembers tokens that passed the full check, so that a client sending the
// same token on every call pays for one signature verification, not one per request: an
// Ed25519 check costs more than the SQL it guards (docs/performance.md, "The token cache").
//
// It never accepts what a full check would refuse:
//   - entries are keyed by the SHA-256 of the whole token, so any change is a miss;
//   - an entry is used only before the token's exp, without the leeway the full check
//     grants, and nbf and iat can only become more valid as time passes;
//   - every entry is dropped when the set of keys that verified it changes (generation),
//     so a key retired from the JWKS stops working at once for cached tokens too.
type tokenCache struct {
	mu      sync.RWMutex
	entries map[[sha256.Size]byte]cachedToken
	max     int
	now     func() time.Time
}

type cachedToken struct {
	caller
	generation uint64
}

func newTokenCache(max int) *tokenCache {
	return &tokenCache{entries: make(map[[sha256.Size]byte]cachedToken), max: max, now: time.Now}
}

func (c *tokenCache) get(token string, generation uint64) (caller, bool) {
	key := sha256.Sum256([]byte(token))
	c.mu.RLock()
	e, ok := c.entries[key]
	c.mu.RUnlock()
	if !ok {
		return caller{}, false
	}
	if e.generation != generation || !c.now().Before(e.expires) {
		c.mu.Lock()
		delete(c.entries, key)
		c.mu.Unlock()
		return caller{}, false
	}
	return e.caller, true
}

func (c *tokenCache) put(token string, who caller, generation uint64) {
	key := sha256.Sum256([]byte(token))
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.entries) >= c.max {
		// Evict about a tenth, in map order, which Go randomises: cheaper than tracking
		// recency, and a full cache only means more signature checks, never a wrong answer.
		n := c.max / 10
		for k := range c.entries {
			delete(c.entries, k)
			if n--; n <= 0 {
				break
			}
		}
	}
	c.entries[key] = cachedToken{caller: who, generation: generation}
}
