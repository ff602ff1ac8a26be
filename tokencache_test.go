package main

import (
	"testing"
	"time"

	"taskflow/internal/testkit"
)

func TestTokenCacheServesOnlyBeforeExp(t *testing.T) {
	c := newTokenCache(10)
	now := time.Now()
	c.now = func() time.Time { return now }
	exp := now.Add(time.Minute)
	c.put("tok", caller{userID: "alice", expires: exp}, 1)

	if who, ok := c.get("tok", 1); !ok || who.userID != "alice" {
		t.Fatalf("get before exp = %+v, %v; want alice", who, ok)
	}
	if _, ok := c.get("tok", 2); ok {
		t.Error("served after the key set changed")
	}
	c.put("tok", caller{userID: "alice", expires: exp}, 1)
	now = exp // the full check would still allow its leeway; the cache does not
	if _, ok := c.get("tok", 1); ok {
		t.Error("served at exp")
	}
	if _, ok := c.get("other", 1); ok {
		t.Error("served a token never put")
	}
}

func TestTokenCacheIsBounded(t *testing.T) {
	c := newTokenCache(100)
	exp := time.Now().Add(time.Hour)
	for i := 0; i < 1000; i++ {
		c.put(string(rune('a'+i%26))+time.Duration(i).String(), caller{userID: "u", expires: exp}, 0)
	}
	if n := len(c.entries); n > 100 {
		t.Errorf("%d entries, want at most 100", n)
	}
}

func TestCachedTokenOfARetiredKeyIsRefused(t *testing.T) {
	t.Parallel()
	oldKey, newKey := newTestKey(t, "old", "EdDSA"), newTestKey(t, "new", "EdDSA")
	srv := newJWKSServer(t, oldKey, newKey)
	j := newTestJWKS(t, srv)
	auth := verifyWith(j, nil)
	me := testkit.NewUserID()
	token := oldKey.sign(t, oldKey.method, testkit.Claims(me))
	wantAccepted(t, auth, token, me) // now cached

	if err := j.Fetch(); err != nil { // the same set again: the cache stays
		t.Fatal(err)
	}
	if _, ok := auth.cache.get(token, j.Generation()); !ok {
		t.Error("an unchanged key set emptied the cache")
	}

	srv.setKeys(newKey)
	if err := j.Fetch(); err != nil {
		t.Fatal(err)
	}
	wantRejected(t, auth, token, "was cached but its key has been retired")
}
