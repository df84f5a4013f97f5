package registry

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/cairnbuild/cairn/auth"
	"github.com/cairnbuild/cairn/auth/authtest"
	"github.com/cairnbuild/cairn/backend/mem"
	"github.com/cairnbuild/cairn/cache"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
)

// TestAuthRoutes calls every route of the registry as four callers over a
// real HTTP server and checks each outcome: anonymous (the credentials
// file lets anonymous clients read public/* only), a reader of cache/app,
// a pull request's token (reads cache/app, writes pr/app) and an admin.
// A route without a row fails the test, so a new route is not left open
// by accident.
func TestAuthRoutes(t *testing.T) {
	a, tokens := authtest.New(t, `[{actions: [read], namespaces: [public/*]}]`, map[string]string{
		"reader": `[{actions: [read], namespaces: [cache/app]}]`,
		"pr":     `[{actions: [read], namespaces: [cache/app, pr/app]}, {actions: [write], namespaces: [pr/app]}]`,
		"admin":  `[{actions: [read, write, delete, admin], namespaces: ["*"]}]`,
	})
	ah, err := auth.NewHTTP(a, auth.HTTPOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c, err := cache.Open(context.Background(), cache.Options{Dir: t.TempDir(), Backend: mem.New()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(New(c, Options{Auth: ah}).WithMetrics(m))
	t.Cleanup(srv.Close)

	type outcome int
	const (
		ok outcome = iota
		unauthorized
		forbidden
	)
	names := [...]string{"allowed", "401", "403"}
	d := digest.FromString("x").String()
	read := [4]outcome{unauthorized, ok, ok, ok}
	admin := [4]outcome{unauthorized, forbidden, forbidden, ok}
	matrix := []struct {
		kind, method, path string
		want               [4]outcome // anonymous, reader, pr, admin
	}{
		// The base route challenges a client without credentials, so
		// that it logs in (anonymously, through /token, if it has none).
		{"base", http.MethodGet, "/v2/", [4]outcome{unauthorized, ok, ok, ok}},
		{"base", http.MethodHead, "/v2/", [4]outcome{unauthorized, ok, ok, ok}},
		{"catalog", http.MethodGet, "/v2/_catalog", admin},
		{"tags", http.MethodGet, "/v2/cache/app/tags/list", read},
		{"blob", http.MethodGet, "/v2/cache/app/blobs/" + d, read},
		{"blob", http.MethodHead, "/v2/cache/app/blobs/" + d, read},
		{"blob", http.MethodDelete, "/v2/cache/app/blobs/" + d, admin},
		{"uploads", http.MethodPost, "/v2/cache/app/blobs/uploads/", admin},
		{"upload", http.MethodGet, "/v2/cache/app/blobs/uploads/x", read},
		{"upload", http.MethodPatch, "/v2/cache/app/blobs/uploads/x", admin},
		{"upload", http.MethodPut, "/v2/cache/app/blobs/uploads/x?digest=" + d, admin},
		{"upload", http.MethodDelete, "/v2/cache/app/blobs/uploads/x", admin},
		{"manifest", http.MethodGet, "/v2/cache/app/manifests/v1", read},
		{"manifest", http.MethodHead, "/v2/cache/app/manifests/v1", read},
		{"manifest", http.MethodPut, "/v2/cache/app/manifests/v1", admin},
		{"manifest", http.MethodDelete, "/v2/cache/app/manifests/v1", admin},
		{"referrers", http.MethodGet, "/v2/cache/app/referrers/" + d, read},
		// The pull request writes its own repository, and nothing else.
		{"uploads", http.MethodPost, "/v2/pr/app/blobs/uploads/", [4]outcome{unauthorized, forbidden, ok, ok}},
		// Anonymous clients read public/*, and so does every token.
		{"manifest", http.MethodGet, "/v2/public/base/manifests/v1", [4]outcome{ok, ok, ok, ok}},
	}
	covered := map[string]bool{}
	for _, m := range matrix {
		covered[m.kind+" "+m.method] = true
	}
	for kind, methods := range routes {
		for method := range methods {
			if !covered[kind+" "+method] {
				t.Errorf("route %s %s has no row in the auth matrix", method, kind)
			}
		}
	}
	callers := []string{"anonymous", "reader", "pr", "admin"}
	for _, m := range matrix {
		for i, who := range callers {
			req, err := http.NewRequest(m.method, srv.URL+m.path, strings.NewReader(""))
			if err != nil {
				t.Fatal(err)
			}
			if who != "anonymous" {
				req.SetBasicAuth("ci", tokens[who])
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			got := ok
			switch resp.StatusCode {
			case http.StatusUnauthorized:
				got = unauthorized
				if !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer ") {
					t.Errorf("%s %s as %s: 401 without a Bearer challenge: %q", m.method, m.path, who, resp.Header.Get("WWW-Authenticate"))
				}
			case http.StatusForbidden:
				got = forbidden
			}
			if got != m.want[i] {
				t.Errorf("%s %s as %s: %d (%s), want %s", m.method, m.path, who, resp.StatusCode, names[got], names[m.want[i]])
			}
		}
	}
	// The refusals are counted like any answer.
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	refused := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "cairn_registry_requests_total" {
			continue
		}
		for _, mt := range mf.GetMetric() {
			for _, l := range mt.GetLabel() {
				if l.GetName() == "status" && (l.GetValue() == "401" || l.GetValue() == "403") {
					refused[l.GetValue()] += mt.GetCounter().GetValue()
				}
			}
		}
	}
	if refused["401"] == 0 || refused["403"] == 0 {
		t.Errorf("cairn_registry_requests_total counts %v refusals, want 401s and 403s", refused)
	}
}
