package web

import (
	"fmt"
	"net/http"
	"strings"
)

// Entity tags in conditional headers, as RFC 9110 13.1 has them.

// A BadHeader is a request header that is not of the form it must be: a 400.
type BadHeader struct{ Detail string }

func (e *BadHeader) Error() string { return e.Detail }

// NoneMatch reports whether a GET's If-None-Match names etag, or is "*" (RFC 9110
// 13.1.2: compared weakly, so W/"1" names "1").
func NoneMatch(r *http.Request, etag string) (bool, error) {
	tags, err := EntityTags(r, "If-None-Match")
	for _, tag := range tags {
		if tag == "*" || strings.TrimPrefix(tag, "W/") == etag {
			return true, nil
		}
	}
	return false, err
}

// EntityTags splits a conditional header into its entity tags, "*" included; nil when
// absent. A header that is not "*" or a list of entity tags is a 400.
func EntityTags(r *http.Request, header string) ([]string, error) {
	values := r.Header.Values(header)
	var tags []string
	for _, v := range values {
		for _, tag := range strings.Split(v, ",") {
			tag = strings.TrimSpace(tag)
			opaque := strings.TrimPrefix(tag, "W/")
			quoted := len(opaque) >= 2 && opaque[0] == '"' && opaque[len(opaque)-1] == '"' && !strings.ContainsAny(opaque[1:len(opaque)-1], `" `)
			if !quoted && (tag != "*" || len(values) > 1 || strings.TrimSpace(v) != "*") {
				return nil, &BadHeader{fmt.Sprintf(`%s must be * or a list of entity tags such as "123", got %q`, header, v[:min(len(v), 64)])}
			}
			tags = append(tags, tag)
		}
	}
	return tags, nil
}
