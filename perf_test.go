package main

import (
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// The per-request work that needs no database, with -benchmem so that an allocation
// regression shows in review: go test -run '^$' -bench . -benchmem

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
				for i := 0; i < b.N; i++ {
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

func BenchmarkDecodeCreateBody(b *testing.B) {
	body := []byte(`{"title":"  Buy milk  ","description":"` + strings.Repeat("two litres, semi-skimmed ", 4) + `"}`)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		fields, err := parseJSONObject(body)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := decodeTaskInput(fields, false); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEncodeList50(b *testing.B) {
	tasks := make([]Task, 50)
	now := time.Now()
	desc := strings.Repeat("d", 100)
	for i := range tasks {
		tasks[i] = Task{ID: int64(1000 + i), UserID: "k3Jd9xQ2mZ7pL0aBk3Jd9xQ2mZ7pL0aB", Title: "Task title number something",
			Completed: i%3 == 0, CreatedAt: now, UpdatedAt: now}
		if i%3 != 0 {
			tasks[i].Description = &desc
		}
	}
	w := httptest.NewRecorder()
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		w.Body.Reset()
		writeTasks(w, tasks)
	}
	b.SetBytes(int64(w.Body.Len()))
}
