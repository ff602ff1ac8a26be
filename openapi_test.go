package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// routeList records the patterns addRoutes registers.
type routeList []string

func (l *routeList) Handle(pattern string, _ http.Handler) { *l = append(*l, pattern) }

type openAPIDocument struct {
	OpenAPI string                                `json:"openapi"`
	Paths   map[string]map[string]json.RawMessage `json:"paths"`
}

// operations lists the document's routed operations as "METHOD /path" with their
// responses' status codes.
func (d openAPIDocument) operations(t *testing.T) map[string][]string {
	ops := map[string][]string{}
	for path, item := range d.Paths {
		for method, raw := range item {
			// A GET route answers HEAD too (TestEveryGETHasItsHEAD), and OPTIONS is the
			// CORS preflight, which the CORS wrapper answers before routing.
			if method == "parameters" || method == "options" || method == "head" {
				continue
			}
			var op struct {
				Responses map[string]json.RawMessage `json:"responses"`
			}
			if err := json.Unmarshal(raw, &op); err != nil {
				t.Fatalf("%s %s: %v", method, path, err)
			}
			var codes []string
			for code := range op.Responses {
				codes = append(codes, code)
			}
			slices.Sort(codes)
			ops[strings.ToUpper(method)+" "+path] = codes
		}
	}
	return ops
}

func readOpenAPI(t *testing.T) openAPIDocument {
	var doc openAPIDocument
	if err := json.Unmarshal(openAPIDoc, &doc); err != nil {
		t.Fatalf("openapi.json: %v", err)
	}
	return doc
}

func TestOpenAPIDescribesExactlyTheRoutes(t *testing.T) {
	t.Parallel()
	var registered routeList
	addRoutes(&registered, service{})
	doc := readOpenAPI(t)
	if !strings.HasPrefix(doc.OpenAPI, "3.1.") {
		t.Errorf("openapi %q, want 3.1.x", doc.OpenAPI)
	}
	var documented []string
	for op, codes := range doc.operations(t) {
		documented = append(documented, op)
		if len(codes) == 0 {
			t.Errorf("%s documents no responses", op)
		}
	}
	slices.Sort(registered)
	slices.Sort(documented)
	if !slices.Equal(registered, documented) {
		t.Errorf("registered routes:\n  %s\ndocumented operations:\n  %s",
			strings.Join(registered, "\n  "), strings.Join(documented, "\n  "))
	}
	// Every reference points at something the document has.
	var whole map[string]any
	json.Unmarshal(openAPIDoc, &whole)
	for _, m := range regexp.MustCompile(`"\$ref":\s*"#/([^"]+)"`).FindAllStringSubmatch(string(openAPIDoc), -1) {
		var at any = whole
		for _, part := range strings.Split(m[1], "/") {
			obj, _ := at.(map[string]any)
			at = obj[part]
		}
		if at == nil {
			t.Errorf("$ref #/%s points at nothing", m[1])
		}
	}
}

// TestTheAPIPageMatchesTheDocument holds docs/api.md, the page people read, to
// openapi.json, the one tools read: each operation has its section, and the section
// names each status the operation may answer.
func TestTheAPIPageMatchesTheDocument(t *testing.T) {
	t.Parallel()
	page, err := os.ReadFile("docs/api.md")
	if err != nil {
		t.Fatal(err)
	}
	sections := map[string]string{}
	parts := regexp.MustCompile("(?m)^### `([A-Z]+ [^`]+)`").Split(string(page), -1)
	for i, h := range regexp.MustCompile("(?m)^### `([A-Z]+ [^`]+)`").FindAllStringSubmatch(string(page), -1) {
		sections[h[1]] = parts[i+1]
	}
	for op, codes := range readOpenAPI(t).operations(t) {
		section, ok := sections[op]
		if !ok {
			t.Errorf("docs/api.md has no section ### `%s`", op)
			continue
		}
		for _, code := range codes {
			if !strings.Contains(section, code) {
				t.Errorf("docs/api.md, %s: status %s is not mentioned", op, code)
			}
		}
	}
}

// TestEveryGETHasItsHEAD: Go's mux answers HEAD on every GET route, with the GET's
// statuses and headers and no body.
func TestEveryGETHasItsHEAD(t *testing.T) {
	t.Parallel()
	for path, item := range readOpenAPI(t).Paths {
		get, ok := item["get"]
		if !ok {
			continue
		}
		head, ok := item["head"]
		if !ok {
			t.Errorf("%s: GET without HEAD", path)
			continue
		}
		var g, h struct {
			Responses map[string]map[string]any `json:"responses"`
		}
		json.Unmarshal(get, &g)
		json.Unmarshal(head, &h)
		for code, r := range g.Responses {
			hr, ok := h.Responses[code]
			switch {
			case !ok:
				t.Errorf("HEAD %s lacks the GET's %s", path, code)
			case hr["content"] != nil:
				t.Errorf("HEAD %s %s has a body", path, code)
			case fmt.Sprint(hr["headers"]) != fmt.Sprint(r["headers"]):
				t.Errorf("HEAD %s %s has other headers than the GET", path, code)
			}
		}
	}
}
