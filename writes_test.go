package main

import (
	"fmt"
	"net/http"
	"testing"

	"taskflow/internal/fair"
)

// TestWritesPastTheRateAre429: nothing written, Retry-After; a keyed retry of a write
// already made is still answered; another user writes on.
func TestWritesPastTheRateAre429(t *testing.T) {
	t.Parallel()
	s := testStore(t)
	svc := newTestService(s, discardLogger())
	svc.writeRate = fair.NewRate(5)
	api := &testAPI{handler: newHandler(discardLogger(), svc, []string{testOrigin})}
	me, other := api.newUser(t), api.newUser(t)
	key := map[string]string{"Idempotency-Key": "made-before-the-limit"}
	first := me.doWith(t, "POST", "/api/{me}/tasks", `{"title":"keyed"}`, key).wantStatus(http.StatusCreated)
	for range 9 {
		me.create(t, "within the burst")
	}
	for _, write := range []struct{ method, path, body string }{
		{"POST", "/api/{me}/tasks", `{"title":"one too many"}`},
		{"PUT", fmt.Sprintf("/api/{me}/tasks/%d", first.task().ID), `{"title":"changed"}`},
		{"PATCH", fmt.Sprintf("/api/{me}/tasks/%d/complete", first.task().ID), ""},
		{"DELETE", fmt.Sprintf("/api/{me}/tasks/%d", first.task().ID), ""},
	} {
		res := me.do(t, write.method, write.path, write.body).wantStatus(http.StatusTooManyRequests)
		if res.Header().Get("Retry-After") != "1" {
			t.Errorf("%s: Retry-After %q, want 1", write.method, res.Header().Get("Retry-After"))
		}
		res.detail()
	}
	again := me.doWith(t, "POST", "/api/{me}/tasks", `{"title":"keyed"}`, key).wantStatus(http.StatusCreated)
	if again.Header().Get("Idempotent-Replayed") != "true" {
		t.Error("a keyed retry of a write already made was refused by the limit")
	}
	me.doWith(t, "POST", "/api/{me}/tasks", `{"title":"new"}`, map[string]string{"Idempotency-Key": "not-made"}).wantStatus(http.StatusTooManyRequests)
	if got := me.do(t, "GET", "/api/{me}/tasks", "").wantStatus(http.StatusOK).tasks(); len(got) != 10 || got[0].Title != "within the burst" {
		t.Errorf("%d tasks after 10 writes went through, want 10 and none changed", len(got))
	}
	other.create(t, "not slowed")
}
