package main

import (
	"fmt"
	"net/http"
	"strconv"

	"taskflow/internal/task"
	"taskflow/internal/web"
)

// What the service sends back over HTTP: errors, tasks with their ETags, the ETags of
// lists. Writing bodies is internal/web's.

// writeError sends err as {"detail": ...}, with the status errors.go gives it; the access
// log learns the cause.
func writeError(w http.ResponseWriter, r *http.Request, err error) {
	api, _ := apiErrorFor(err)
	h := w.Header()
	if api.challenge != "" {
		h.Set("WWW-Authenticate", api.challenge)
	}
	if api.retryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(api.retryAfter))
	}
	web.WriteError(w, r, err, api.status, api.detail)
}

// writeTask sends one task with its ETag. A replayed answer (the first answer to an
// Idempotency-Key, sent again) says so.
func writeTask(w http.ResponseWriter, status int, t task.Task, replayed bool) {
	h := w.Header()
	h.Set("ETag", taskETag(t.Version))
	if replayed {
		h.Set("Idempotent-Replayed", "true")
	}
	buf := web.GetBuffer()
	defer web.PutBuffer(buf)
	*buf = append(task.AppendJSON(*buf, &t), '\n')
	web.WriteBody(w, status, *buf)
}

// taskETag is a task's strong ETag: its version, which every change replaces.
func taskETag(version int64) string { return `"` + strconv.FormatInt(version, 10) + `"` }

// listETag is a list's: the count and version digest of the tasks its filter matches
// (see ListHead), which change whenever the page could, and the query, so that two pages
// never share one.
func listETag(h ListHead, q ListQuery) string {
	order := "asc"
	if q.Desc {
		order = "desc"
	}
	return fmt.Sprintf(`"%d.%x.%s.%s.%s.%d.%d"`, h.Total, uint64(h.Digest), q.Status, q.Sort, order, q.Limit, q.Offset)
}

// writeNotModified answers a GET whose If-None-Match names the current ETag.
func writeNotModified(w http.ResponseWriter, etag string) {
	w.Header().Set("ETag", etag)
	w.WriteHeader(http.StatusNotModified)
}
