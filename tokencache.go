package main

import (
	"crypto/sha256"
	"sync"
	"time"
)

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
