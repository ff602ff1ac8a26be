// Package jwks caches the public keys a Better Auth frontend publishes at /api/auth/jwks.
//
// Keys are fetched at start and refreshed in the background. A token with an unknown kid
// (the frontend rotated its key) triggers a refetch, at most one per minRefetch, so a
// flood of made-up kids costs at most one request to the frontend per interval; the
// request waits for that fetch at most unknownKidWait. Only one fetch runs at a time. A
// failed fetch keeps the keys already held: the frontend being down rejects nothing that
// was verifiable before.
//
// It uses the standard library only; the token check (auth.go at the top) asks it for
// keys through PublicKey and drops the tokens it cached when Generation changes.
package jwks

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Set is the frontend's key set, cached; see the package comment.
type Set struct {
	url            string
	client         *http.Client
	log            *slog.Logger
	Refresh        time.Duration // background refresh period
	MinRefetch     time.Duration // least time between two fetches caused by unknown kids
	UnknownKidWait time.Duration // how long a token with an unknown kid waits for a refetch

	mu   sync.RWMutex
	keys map[string]jwk
	set  []byte        // the document they came from
	gen  atomic.Uint64 // bumped when a fetch brings another document; see tokenCache

	fetchMu   sync.Mutex
	inflight  chan struct{} // closed when the running fetch ends; nil when none runs
	lastFetch time.Time     // when the last fetch started
	lastErr   error         // how the last fetch ended
}

// jwk is one usable key of the set.
type jwk struct {
	key  any      // ed25519.PublicKey, *ecdsa.PublicKey or *rsa.PublicKey
	algs []string // the token algorithms this key's type can verify
	alg  string   // the JWK's own "alg", "" when absent
}

// The token algorithms each supported key type verifies, and all of them together
// (Algorithms): the parser's allow-list when JWT_JWKS_URL is set.
var (
	algsEd25519 = []string{"EdDSA"}
	algsP256    = []string{"ES256"}
	algsP521    = []string{"ES512"}
	algsRSA     = []string{"RS256", "PS256"}
	Algorithms  = slices.Concat(algsEd25519, algsP256, algsP521, algsRSA)
)

const (
	jwksFetchTimeout = 5 * time.Second
	jwksMaxBytes     = 1 << 20
	minRSABits       = 2048
)

// KeyError is a key lookup failure whose text is safe to show the client.
type KeyError string

func (e KeyError) Error() string { return string(e) }

// New is the key set at url, empty until KeepFresh or a token fetches it.
func New(url string, log *slog.Logger) *Set {
	return &Set{
		url:            url,
		client:         &http.Client{Timeout: jwksFetchTimeout},
		log:            log,
		Refresh:        5 * time.Minute,
		MinRefetch:     10 * time.Second,
		UnknownKidWait: time.Second,
		keys:           map[string]jwk{},
	}
}

// KeepFresh keeps the key set fresh until ctx ends. Until the first fetch succeeds it retries
// every few seconds, so a frontend that starts after this service is picked up quickly.
func (j *Set) KeepFresh(ctx context.Context) {
	for {
		wait := j.Refresh
		if err := j.Fetch(); err != nil {
			// Retry sooner than the period, soonest while no key at all is held.
			wait = min(j.Refresh, 30*time.Second)
			if j.Len() == 0 {
				wait = min(j.Refresh, 5*time.Second)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// Len is how many usable keys the set holds.
func (j *Set) Len() int {
	j.mu.RLock()
	defer j.mu.RUnlock()
	return len(j.keys)
}

func (j *Set) lookup(kid string) (jwk, bool) {
	j.mu.RLock()
	defer j.mu.RUnlock()
	k, ok := j.keys[kid]
	return k, ok
}

// PublicKey is the key for kid, if it may verify a token signed with alg; a KeyError
// says why not.
func (j *Set) PublicKey(kid, alg string) (any, error) {
	if kid == "" {
		return nil, KeyError("the token has no kid")
	}
	k, ok := j.lookup(kid)
	if !ok {
		j.refetchForUnknownKid()
		if k, ok = j.lookup(kid); !ok {
			return nil, KeyError("no key with the token's kid")
		}
	}
	if k.alg != "" && k.alg != alg {
		return nil, KeyError("the token's alg differs from its key's alg")
	}
	if !slices.Contains(k.algs, alg) {
		return nil, KeyError("the token's alg does not fit its key's type")
	}
	return k.key, nil
}

// Fetch fetches the set, or joins the fetch under way, and says how it ended.
func (j *Set) Fetch() error {
	j.fetchMu.Lock()
	done := j.startFetchLocked()
	j.fetchMu.Unlock()
	<-done
	j.fetchMu.Lock()
	defer j.fetchMu.Unlock()
	return j.lastErr
}

// refetchForUnknownKid joins the running fetch, or starts one unless the last started
// within minRefetch, and waits for it at most unknownKidWait.
func (j *Set) refetchForUnknownKid() {
	j.fetchMu.Lock()
	done := j.inflight
	if done == nil {
		if time.Since(j.lastFetch) < j.MinRefetch {
			j.fetchMu.Unlock()
			return
		}
		done = j.startFetchLocked()
	}
	j.fetchMu.Unlock()
	select {
	case <-done:
	case <-time.After(j.UnknownKidWait):
	}
}

// startFetchLocked starts a fetch unless one is running and returns the channel closed
// when it ends. The caller holds fetchMu.
func (j *Set) startFetchLocked() chan struct{} {
	if j.inflight != nil {
		return j.inflight
	}
	done := make(chan struct{})
	j.inflight, j.lastFetch = done, time.Now()
	go func() {
		err := j.fetch()
		if err != nil {
			// keys_held 0 means tokens signed by the frontend's keys are refused until a
			// fetch succeeds; otherwise the keys already held go on verifying.
			j.log.Warn("JWKS fetch failed", "url", j.url, "keys_held", j.Len(), "err", err)
		}
		j.fetchMu.Lock()
		j.inflight, j.lastErr = nil, err
		j.fetchMu.Unlock()
		close(done)
	}()
	return done
}

// fetch downloads and parses the set and, if it holds at least one usable key, replaces
// the cached keys with it, so keys the frontend has retired stop verifying.
func (j *Set) fetch() error {
	ctx, cancel := context.WithTimeout(context.Background(), jwksFetchTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, j.url, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := j.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: status %d", j.url, resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, jwksMaxBytes+1))
	if err != nil {
		return err
	}
	if len(body) > jwksMaxBytes {
		return fmt.Errorf("GET %s: the key set is larger than %d bytes", j.url, jwksMaxBytes)
	}
	keys, skipped, err := parseJWKS(body)
	if err != nil {
		return err
	}
	for _, s := range skipped {
		j.log.Warn("JWKS key skipped", "url", j.url, "reason", s)
	}
	j.mu.Lock()
	if !bytes.Equal(j.set, body) {
		j.gen.Add(1)
	}
	j.keys, j.set = keys, body
	j.mu.Unlock()
	return nil
}

// Generation changes whenever the set of keys does.
func (j *Set) Generation() uint64 { return j.gen.Load() }

// parseJWKS returns the usable keys of a JWK Set by kid, and why the others were skipped.
// A set without a single usable key is an error, so that it never replaces a good one.
func parseJWKS(body []byte) (map[string]jwk, []string, error) {
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(body, &set); err != nil {
		return nil, nil, fmt.Errorf("the key set is not a JWK Set: %w", err)
	}
	keys := make(map[string]jwk, len(set.Keys))
	var skipped []string
	for i, raw := range set.Keys {
		kid, k, err := parseJWK(raw)
		if err != nil {
			skipped = append(skipped, fmt.Sprintf("key %d (kid %q): %v", i, kid, err))
			continue
		}
		if _, dup := keys[kid]; dup {
			// Which of two keys a kid names is ambiguous; verifying with either could be wrong.
			delete(keys, kid)
			skipped = append(skipped, fmt.Sprintf("key %d: kid %q appears twice", i, kid))
			continue
		}
		keys[kid] = k
	}
	if len(keys) == 0 {
		return nil, skipped, errors.New("the key set holds no usable key")
	}
	return keys, skipped, nil
}

func parseJWK(raw json.RawMessage) (string, jwk, error) {
	var p struct {
		Kty, Kid, Alg, Use, Crv string
		X, Y, N, E              string
	}
	if err := json.Unmarshal(raw, &p); err != nil {
		return "", jwk{}, err
	}
	if p.Kid == "" {
		return "", jwk{}, errors.New("no kid")
	}
	if p.Use != "" && p.Use != "sig" {
		return p.Kid, jwk{}, fmt.Errorf("use %q is not sig", p.Use)
	}
	k := jwk{alg: p.Alg}
	var err error
	switch {
	case p.Kty == "OKP" && p.Crv == "Ed25519":
		k.algs = algsEd25519
		var x []byte
		if x, err = b64(p.X, ed25519.PublicKeySize); err == nil {
			k.key = ed25519.PublicKey(x)
		}
	case p.Kty == "EC" && p.Crv == "P-256":
		k.algs = algsP256
		k.key, err = ecKey(elliptic.P256(), ecdh.P256(), p.X, p.Y)
	case p.Kty == "EC" && p.Crv == "P-521":
		k.algs = algsP521
		k.key, err = ecKey(elliptic.P521(), ecdh.P521(), p.X, p.Y)
	case p.Kty == "RSA":
		k.algs = algsRSA
		k.key, err = rsaKey(p.N, p.E)
	default:
		return p.Kid, jwk{}, fmt.Errorf("unsupported key type %q curve %q", p.Kty, p.Crv)
	}
	if err != nil {
		return p.Kid, jwk{}, err
	}
	if k.alg != "" && !slices.Contains(k.algs, k.alg) {
		return p.Kid, jwk{}, fmt.Errorf("alg %q does not fit key type %s", k.alg, p.Kty)
	}
	return p.Kid, k, nil
}

// ecKey builds an ECDSA public key, refusing points that are not on the curve (an
// invalid-curve point is a classic way to leak a signer's secrets, and always a bug).
func ecKey(curve elliptic.Curve, check ecdh.Curve, xs, ys string) (*ecdsa.PublicKey, error) {
	size := (curve.Params().BitSize + 7) / 8
	x, err := b64(xs, size)
	if err != nil {
		return nil, fmt.Errorf("x: %w", err)
	}
	y, err := b64(ys, size)
	if err != nil {
		return nil, fmt.Errorf("y: %w", err)
	}
	if _, err := check.NewPublicKey(append(append([]byte{4}, x...), y...)); err != nil {
		return nil, errors.New("the point is not on the curve")
	}
	return &ecdsa.PublicKey{Curve: curve, X: new(big.Int).SetBytes(x), Y: new(big.Int).SetBytes(y)}, nil
}

func rsaKey(ns, es string) (*rsa.PublicKey, error) {
	n, err := b64(ns, 0)
	if err != nil {
		return nil, fmt.Errorf("n: %w", err)
	}
	e, err := b64(es, 0)
	if err != nil || len(e) == 0 || len(e) > 4 {
		return nil, errors.New("e is not a valid exponent")
	}
	key := &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}
	if key.N.BitLen() < minRSABits {
		return nil, fmt.Errorf("RSA modulus of %d bits is below %d", key.N.BitLen(), minRSABits)
	}
	if key.E < 3 || key.E%2 == 0 {
		return nil, errors.New("e is not a valid exponent")
	}
	return key, nil
}

// b64 decodes base64url without padding, as JWKs encode their numbers; size > 0 demands
// exactly that many bytes.
func b64(s string, size int) ([]byte, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return nil, errors.New("not base64url")
	}
	if size > 0 && len(b) != size {
		return nil, fmt.Errorf("%d bytes, want %d", len(b), size)
	}
	return b, nil
}
