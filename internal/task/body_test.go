package task

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzDecodeTaskBody feeds arbitrary bodies through the decoder and validator: nothing
// may panic, every refusal must be a BodyError (a 400 or 422), and whatever is accepted must
// satisfy the contract's rules (and so the schema's constraints).
func FuzzDecodeTaskBody(f *testing.F) {
	for _, seed := range []string{
		`{"title":"x"}`, `{"title":" x ","description":null}`, `{"title":"x","completed":true}`,
		`{"title":"\ud83d\ude00"}`, `{"title":"\ud800"}`, "{\"title\":\"\xff\"}", `{"title":"a\u0000"}`,
		`{"title":"x"} x`, `[]`, `null`, `{}`, `{"Title":"x"}`, `{"description":5}`, "",
	} {
		f.Add([]byte(seed), true)
	}
	f.Fuzz(func(t *testing.T, body []byte, allowCompleted bool) {
		in, err := decode(body, allowCompleted)
		if err != nil {
			var bodyErr *BodyError
			if !errors.As(err, &bodyErr) {
				t.Fatalf("body %q: error %v, want a BodyError", body, err)
			}
			if !utf8.ValidString(bodyErr.Detail) {
				t.Fatalf("detail %q is not valid UTF-8", bodyErr.Detail)
			}
			return
		}
		if !utf8.Valid(body) {
			t.Fatalf("accepted invalid UTF-8 %q", body)
		}
		if in.Title != nil {
			s := *in.Title
			if n := utf8.RuneCountInString(s); n < 1 || n > MaxTitle || s != strings.TrimSpace(s) || strings.ContainsRune(s, 0) {
				t.Fatalf("accepted title %q", s)
			}
		}
		if in.Description != nil {
			if s := *in.Description; utf8.RuneCountInString(s) > MaxDescription || strings.ContainsRune(s, 0) {
				t.Fatalf("accepted description %q", s)
			}
		}
		if in.Completed != nil && !allowCompleted {
			t.Fatal("accepted completed on create")
		}
	})
}

func BenchmarkDecodeCreateBody(b *testing.B) {
	body := []byte(`{"title":"  Buy milk  ","description":"` + strings.Repeat("two litres, semi-skimmed ", 4) + `"}`)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := decode(body, false); err != nil {
			b.Fatal(err)
		}
	}
}
