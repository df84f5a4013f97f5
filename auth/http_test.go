package auth

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"
)

// httpFile: a pull request's token, a reader, an admin; anonymous reads
// public/*.
var httpFile = fmt.Sprintf(`
tokens:
  - name: pr-1
    sha256: %s
    scopes:
      - {actions: [read], namespaces: [main, pr/1]}
      - {actions: [write], namespaces: [pr/1]}
  - {name: reader, sha256: %s, scopes: [{actions: [read], namespaces: [main]}]}
  - {name: admin, sha256: %s, scopes: [{actions: [read, write, delete, admin], namespaces: ["*"]}]}
anonymous:
  - {actions: [read], namespaces: ["public/*"]}
`, HashToken("cairn_pr"), HashToken("cairn_reader"), HashToken("cairn_admin"))

// serveRegistry serves next behind the middleware, and the token endpoint,
// as the registry front will.
func serveRegistry(t *testing.T, file string, next http.Handler, opts HTTPOptions) (*httptest.Server, *HTTP) {
	t.Helper()
	c, err := ParseConfig([]byte(file))
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(c, Options{})
	if err != nil {
		t.Fatal(err)
	}
	h, err := NewHTTP(a, opts)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(TokenPath, h.TokenHandler())
	mux.Handle("/", h.Middleware(next, RegistryScope))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv, h
}

// okHandler answers 200 with the caller's name, or 201 for a PUT.
var okHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	id, ok := FromContext(r.Context())
	if !ok {
		http.Error(w, "no identity", http.StatusInternalServerError)
		return
	}
	if r.Method == http.MethodPut {
		w.WriteHeader(http.StatusCreated)
	}
	fmt.Fprintf(w, "%s %s", id.Name, r.URL.RawQuery)
})

type answer struct {
	status    int
	challenge string
	code      string // the registry error code of the body
	body      string
}

func do(t *testing.T, method, url, auth string) answer {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	a := answer{status: resp.StatusCode, challenge: resp.Header.Get("WWW-Authenticate"), body: string(b)}
	var e struct{ Errors []struct{ Code string } }
	if json.Unmarshal(b, &e) == nil && len(e.Errors) > 0 {
		a.code = e.Errors[0].Code
	}
	return a
}

func basic(token string) string {
	req, _ := http.NewRequest("GET", "/", nil)
	req.SetBasicAuth("anyone", token)
	return req.Header.Get("Authorization")
}

var challengeParam = regexp.MustCompile(`(\w+)="([^"]*)"`)

// fetchToken does what a client does with a challenge: asks the realm for
// its scope with Basic credentials.
func fetchToken(t *testing.T, challenge, creds string) string {
	t.Helper()
	params := map[string]string{}
	for _, m := range challengeParam.FindAllStringSubmatch(challenge, -1) {
		params[m[1]] = m[2]
	}
	u := params["realm"] + "?" + url.Values{"service": {params["service"]}, "scope": {params["scope"]}}.Encode()
	a := do(t, "GET", u, creds)
	if a.status != http.StatusOK {
		t.Fatalf("token endpoint: %d %s", a.status, a.body)
	}
	var tr tokenResponse
	if err := json.Unmarshal([]byte(a.body), &tr); err != nil {
		t.Fatal(err)
	}
	if tr.Token == "" || tr.Token != tr.AccessToken || tr.ExpiresIn != 300 || tr.IssuedAt == "" {
		t.Fatalf("token response %+v", tr)
	}
	return tr.Token
}

func TestChallengeDance(t *testing.T) {
	srv, _ := serveRegistry(t, httpFile, okHandler, HTTPOptions{})
	manifest := srv.URL + "/v2/pr/1/manifests/latest"

	// Every protected route challenges, not only /v2/.
	a := do(t, "PUT", manifest, "")
	want := `Bearer realm="` + srv.URL + `/token",service="cairn",scope="repository:pr/1:pull,push"`
	if a.status != 401 || a.challenge != want || a.code != "UNAUTHORIZED" {
		t.Fatalf("no credentials: %+v\nwant challenge %s", a, want)
	}
	tok := fetchToken(t, a.challenge, basic("cairn_pr"))
	if a := do(t, "PUT", manifest, "Bearer "+tok); a.status != 201 || a.body != "pr-1 " {
		t.Fatalf("with the bearer token: %+v", a)
	}
	// The token is for pr/1: main needs another, which the identity may
	// have (read): 401 insufficient_scope, so the client asks again.
	a = do(t, "GET", srv.URL+"/v2/main/manifests/latest", "Bearer "+tok)
	if a.status != 401 || !strings.Contains(a.challenge, `error="insufficient_scope"`) || !strings.Contains(a.challenge, `scope="repository:main:pull"`) {
		t.Errorf("token for pr/1 on main: %+v", a)
	}
	mainTok := fetchToken(t, a.challenge, basic("cairn_pr"))
	if a := do(t, "GET", srv.URL+"/v2/main/manifests/latest", "Bearer "+mainTok); a.status != 200 {
		t.Errorf("read main with its token: %+v", a)
	}
	// What the identity may not do is 403 DENIED, with any token.
	if a := do(t, "PUT", srv.URL+"/v2/main/manifests/latest", "Bearer "+mainTok); a.status != 403 || a.code != "DENIED" {
		t.Errorf("pr token writing main: %+v", a)
	}
	if a := do(t, "GET", srv.URL+"/v2/pr/2/blobs/sha256:00", "Bearer "+tok); a.status != 403 || a.code != "DENIED" {
		t.Errorf("pr token reading pr/2: %+v", a)
	}
}

func TestBasicAndAnonymous(t *testing.T) {
	srv, _ := serveRegistry(t, httpFile, okHandler, HTTPOptions{})
	for _, c := range []struct {
		method, path, auth string
		status             int
		code               string
		why                string
	}{
		{"GET", "/v2/public/x/manifests/v1", "", 200, "", "anonymous read of a public repository: no challenge"},
		{"HEAD", "/v2/public/x/blobs/sha256:00", "", 200, "", "HEAD is a read"},
		{"PUT", "/v2/public/x/manifests/v1", "", 401, "UNAUTHORIZED", "anonymous write: challenge"},
		{"GET", "/v2/main/tags/list", "", 401, "UNAUTHORIZED", "main is not public"},
		{"GET", "/v2/main/tags/list", basic("cairn_reader"), 200, "", "Basic with the token as password"},
		{"GET", "/v2/main/referrers/sha256:00", "Bearer cairn_reader", 200, "", "a cairn token as bearer"},
		{"POST", "/v2/main/blobs/uploads/", basic("cairn_reader"), 403, "DENIED", "reader may not push"},
		{"PATCH", "/v2/pr/1/blobs/uploads/abc", basic("cairn_pr"), 200, "", "PATCH is a push"},
		{"PUT", "/v2/pr/1/blobs/uploads/abc", basic("cairn_pr"), 201, "", "the pull request's own repository"},
		{"DELETE", "/v2/pr/1/manifests/v1", basic("cairn_pr"), 403, "DENIED", "push is not delete"},
		{"DELETE", "/v2/pr/1/manifests/v1", basic("cairn_admin"), 200, "", "admin token has delete"},
		{"GET", "/v2/main/tags/list", basic("cairn_wrong"), 401, "UNAUTHORIZED", "wrong token"},
		{"GET", "/v2/public/x/manifests/v1", basic("cairn_wrong"), 401, "UNAUTHORIZED", "wrong token is not anonymous"},
		{"GET", "/v2/main/tags/list", "Bearer cairnb1.e30.AAAA", 401, "UNAUTHORIZED", "forged bearer token"},
		{"GET", "/v2/main/tags/list", "Digest x", 401, "UNAUTHORIZED", "unknown scheme"},
		{"GET", "/v2/", "", 401, "UNAUTHORIZED", "base: challenged even with anonymous access, so that clients log in (they fetch an anonymous token if they have no credentials)"},
		{"GET", "/v2/", basic("cairn_reader"), 200, "", "base with a good token"},
		{"GET", "/v2/public/x/manifests/v1", basic("cairn_reader"), 200, "", "a token reads what anonymous clients may"},
		{"GET", "/v2/", basic("cairn_wrong"), 401, "UNAUTHORIZED", "base with a wrong token"},
	} {
		a := do(t, c.method, srv.URL+c.path, c.auth)
		if a.status != c.status || a.code != c.code && c.method != "HEAD" {
			t.Errorf("%s %s (%s): got %d %s, want %d %s: %s", c.method, c.path, c.auth, a.status, a.code, c.status, c.code, c.why)
		}
		if c.status == 401 && !strings.HasPrefix(a.challenge, "Bearer realm=") {
			t.Errorf("%s %s: 401 without a challenge", c.method, c.path)
		}
	}
}

func TestBaseWithoutAnonymous(t *testing.T) {
	file := httpFile[:strings.Index(httpFile, "anonymous:")]
	srv, _ := serveRegistry(t, file, okHandler, HTTPOptions{Realm: "https://cairn.example/"})
	a := do(t, "GET", srv.URL+"/v2/", "")
	if a.status != 401 || a.challenge != `Bearer realm="https://cairn.example/token",service="cairn"` {
		t.Errorf("base without anonymous access: %+v", a)
	}
	if a := do(t, "GET", srv.URL+"/v2/", basic("cairn_reader")); a.status != 200 {
		t.Errorf("base with a token: %+v", a)
	}
	// The token endpoint wants credentials when anonymous clients get
	// nothing.
	if a := do(t, "GET", srv.URL+"/token?scope=repository:main:pull", ""); a.status != 401 || !strings.HasPrefix(a.challenge, "Basic") {
		t.Errorf("token endpoint without credentials: %+v", a)
	}
}

func TestBearerExpiry(t *testing.T) {
	clock := newFakeClock()
	srv, _ := serveRegistry(t, httpFile, okHandler, HTTPOptions{Now: clock.Now, TokenTTL: time.Minute})
	a := do(t, "GET", srv.URL+"/v2/main/manifests/x", "")
	var tr tokenResponse
	b := do(t, "GET", srv.URL+"/token?service=cairn&scope=repository:main:pull", basic("cairn_reader"))
	json.Unmarshal([]byte(b.body), &tr)
	if a := do(t, "GET", srv.URL+"/v2/main/manifests/x", "Bearer "+tr.Token); a.status != 200 {
		t.Fatalf("fresh token: %+v", a)
	}
	clock.Advance(time.Minute)
	if got := do(t, "GET", srv.URL+"/v2/main/manifests/x", "Bearer "+tr.Token); got.status != 401 || !strings.Contains(got.challenge, `error="invalid_token"`) {
		t.Errorf("expired token: %+v", got)
	}
	_ = a
	// A token signed by another key (another process) is refused.
	_, other := serveRegistry(t, httpFile, okHandler, HTTPOptions{Now: clock.Now})
	foreign, _ := sign(other.opts.Key, &claims{Subject: "admin", IssuedAt: clock.Now().Unix(), Expires: clock.Now().Add(time.Hour).Unix(), Access: []grant{{Name: "main", Actions: []string{"pull"}}}})
	if got := do(t, "GET", srv.URL+"/v2/main/manifests/x", "Bearer "+foreign); got.status != 401 {
		t.Errorf("foreign token: %+v", got)
	}
}

func TestTokenGrantsSubset(t *testing.T) {
	srv, h := serveRegistry(t, httpFile, okHandler, HTTPOptions{})
	q := url.Values{"service": {"cairn"}, "scope": {"repository:main:pull,push,delete", "repository:pr/1:pull,push registry:catalog:*", "repository:pr/2:*"}}
	a := do(t, "GET", srv.URL+"/token?"+q.Encode(), basic("cairn_pr"))
	var tr tokenResponse
	if err := json.Unmarshal([]byte(a.body), &tr); err != nil || a.status != 200 {
		t.Fatalf("%+v", a)
	}
	if tr.Scope != "repository:main:pull repository:pr/1:pull,push" {
		t.Errorf("granted %q", tr.Scope)
	}
	c, err := verify(h.opts.Key, tr.Token, time.Now())
	if err != nil || c.Subject != "pr-1" || !c.covers("pr/1", Write) || c.covers("main", Write) || c.covers("pr/2", Read) {
		t.Errorf("claims %+v, %v", c, err)
	}
	// Anonymous: a token with what anonymous clients may do.
	a = do(t, "GET", srv.URL+"/token?scope=repository:public/x:pull,push", "")
	json.Unmarshal([]byte(a.body), &tr)
	if a.status != 200 || tr.Scope != "repository:public/x:pull" {
		t.Errorf("anonymous token: %+v", a)
	}
	if got := do(t, "GET", srv.URL+"/v2/public/x/manifests/v1", "Bearer "+tr.Token); got.status != 200 || got.body != "anonymous " {
		t.Errorf("anonymous bearer: %+v", got)
	}
	// Bad credentials at the token endpoint: 401.
	if a := do(t, "GET", srv.URL+"/token?scope=repository:main:pull", basic("cairn_wrong")); a.status != 401 {
		t.Errorf("bad credentials: %+v", a)
	}
}

func TestTokenPOST(t *testing.T) {
	srv, _ := serveRegistry(t, httpFile, okHandler, HTTPOptions{})
	for _, c := range []struct {
		form   url.Values
		status int
	}{
		{url.Values{"grant_type": {"password"}, "username": {"x"}, "password": {"cairn_pr"}, "scope": {"repository:pr/1:pull,push"}, "service": {"cairn"}, "client_id": {"containerd"}}, 200},
		{url.Values{"grant_type": {"refresh_token"}, "refresh_token": {"cairn_pr"}, "scope": {"repository:pr/1:pull"}}, 200},
		{url.Values{"grant_type": {"password"}, "username": {"x"}, "password": {"cairn_wrong"}}, 401},
		{url.Values{"grant_type": {"client_credentials"}}, 400},
	} {
		resp, err := http.PostForm(srv.URL+TokenPath, c.form)
		if err != nil {
			t.Fatal(err)
		}
		var tr tokenResponse
		json.NewDecoder(resp.Body).Decode(&tr)
		resp.Body.Close()
		if resp.StatusCode != c.status || c.status == 200 && (tr.AccessToken == "" || !strings.HasPrefix(tr.Scope, "repository:pr/1:pull")) {
			t.Errorf("%v: got %d %+v, want %d", c.form, resp.StatusCode, tr, c.status)
		}
	}
}

func TestMountNeedsReadOnSource(t *testing.T) {
	srv, _ := serveRegistry(t, httpFile, okHandler, HTTPOptions{})
	// pr-1 reads main: the mount stays.
	a := do(t, "POST", srv.URL+"/v2/pr/1/blobs/uploads/?mount=sha256:00&from=main", basic("cairn_pr"))
	if a.status != 200 || !strings.Contains(a.body, "from=main") {
		t.Errorf("mount from a readable repository: %+v", a)
	}
	// pr-1 does not read pr/2: the mount is dropped, an upload starts.
	a = do(t, "POST", srv.URL+"/v2/pr/1/blobs/uploads/?mount=sha256:00&from=pr/2", basic("cairn_pr"))
	if a.status != 200 || a.body != "pr-1 " {
		t.Errorf("mount from an unreadable repository: %+v", a)
	}
}

func TestHTTPAudit(t *testing.T) {
	var logs syncBuffer
	srv, _ := serveRegistry(t, httpFile, okHandler, HTTPOptions{Logger: newTestLogger(&logs)})
	do(t, "PUT", srv.URL+"/v2/pr/1/manifests/v1", basic("cairn_pr"))
	do(t, "GET", srv.URL+"/v2/pr/1/manifests/v1", basic("cairn_pr"))
	do(t, "PUT", srv.URL+"/v2/main/manifests/v1", basic("cairn_pr"))
	out := logs.String()
	if strings.Count(out, "msg=audit") != 1 || !strings.Contains(out, "who=pr-1") || !strings.Contains(out, "namespace=pr/1") || !strings.Contains(out, "status=201") || !strings.Contains(out, `what="PUT /v2/pr/1/manifests/v1"`) {
		t.Errorf("want one audit line for the PUT:\n%s", out)
	}
}

func TestRegistryScope(t *testing.T) {
	for _, c := range []struct {
		method, path string
		ns           string
		a            Action
		ok           bool
	}{
		{"GET", "/v2/", "", 0, false},
		{"GET", "/v2/_catalog", "", 0, false},
		{"GET", "/token", "", 0, false},
		{"GET", "/v2/a/manifests/latest", "a", Read, true},
		{"HEAD", "/v2/cache/app/blobs/sha256:00", "cache/app", Read, true},
		{"POST", "/v2/pr/1/blobs/uploads/", "pr/1", Write, true},
		{"PATCH", "/v2/pr/1/blobs/uploads/abc", "pr/1", Write, true},
		{"DELETE", "/v2/x/manifests/sha256:00", "x", Delete, true},
		{"GET", "/v2/x/tags/list", "x", Read, true},
		{"GET", "/v2/x/referrers/sha256:00", "x", Read, true},
		{"GET", "/v2/blobs/blobs/sha256:00", "blobs", Read, true},
		{"OPTIONS", "/v2/x/manifests/v1", "x", Write, true},
	} {
		r := httptest.NewRequest(c.method, c.path, nil)
		ns, a, ok := RegistryScope(r)
		if ns != c.ns || a != c.a || ok != c.ok {
			t.Errorf("%s %s: got %q %v %v, want %q %v %v", c.method, c.path, ns, a, ok, c.ns, c.a, c.ok)
		}
	}
}
