package main

import (
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// The per-request work that needs no database, with -benchmem so that an allocation
// regression shows in review: go test -run '^$' -bench . -benchmem

func BenchmarkVerifyHS256(b *testing.B) {
	auth := newAuthenticator([]byte(testSecret), nil, "taskflow-web", "taskflow-api")
	token := tokenFor(b, "k3Jd9xQ2mZ7pL0aBk3Jd9xQ2mZ7pL0aB")
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := auth.verify(token); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerifyHS256Full defeats the token cache: the cost of a token's first use.
func BenchmarkVerifyHS256Full(b *testing.B) {
	auth := newAuthenticator([]byte(testSecret), nil, "taskflow-web", "taskflow-api")
	token := tokenFor(b, "k3Jd9xQ2mZ7pL0aBk3Jd9xQ2mZ7pL0aB")
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		auth.cache = newTokenCache(1)
		if _, err := auth.verify(token); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkVerifyEdDSAFull(b *testing.B) {
	key := newTestKey(b, "bench", "EdDSA")
	srv := newJWKSServer(b, key)
	auth := newAuthenticator(nil, newTestJWKS(b, srv), "taskflow-web", "taskflow-api")
	token := key.sign(b, key.method, validClaims("k3Jd9xQ2mZ7pL0aBk3Jd9xQ2mZ7pL0aB"))
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		auth.cache = newTokenCache(1)
		if _, err := auth.verify(token); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkVerifyEdDSA(b *testing.B) {
	key := newTestKey(b, "bench", "EdDSA")
	srv := newJWKSServer(b, key)
	auth := newAuthenticator(nil, newTestJWKS(b, srv), "taskflow-web", "taskflow-api")
	token := key.sign(b, key.method, validClaims("k3Jd9xQ2mZ7pL0aBk3Jd9xQ2mZ7pL0aB"))
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := auth.verify(token); err != nil {
			b.Fatal(err)
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
