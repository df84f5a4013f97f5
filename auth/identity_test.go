package auth

import (
	"context"
	"encoding/hex"
	"errors"
	"testing"
)

// mustPolicy compiles a config for tests.
func mustPolicy(t *testing.T, yaml string) *policy {
	t.Helper()
	c, err := ParseConfig([]byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	p, err := c.compile(noLines)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

const prFile = `
tokens:
  - name: pr-1234
    sha256: ` + "1111111111111111111111111111111111111111111111111111111111111111" + `
    scopes:
      - {actions: [read], namespaces: [main, pr/1234]}
      - {actions: [write], namespaces: [pr/1234]}
  - name: admin
    sha256: ` + "2222222222222222222222222222222222222222222222222222222222222222" + `
    scopes:
      - {actions: [read, write, delete, admin], namespaces: ["*"]}
  - name: gc-app
    sha256: ` + "3333333333333333333333333333333333333333333333333333333333333333" + `
    scopes:
      - {actions: [admin], namespaces: ["cache/app/*"]}
anonymous:
  - {actions: [read], namespaces: ["public/*"]}
`

func TestIdentityAllowed(t *testing.T) {
	p := mustPolicy(t, prFile)
	pr, admin, gcApp, anon := p.byName["pr-1234"], p.byName["admin"], p.byName["gc-app"], p.anonymous
	for _, c := range []struct {
		id   *Identity
		a    Action
		ns   string
		want bool
	}{
		{pr, Read, "main", true},
		{pr, Read, "pr/1234", true},
		{pr, Write, "pr/1234", true},
		{pr, Write, "main", false},
		{pr, Read, "pr/999", false},
		{pr, Delete, "pr/1234", false},
		{admin, Delete, "anything", true},
		{anon, Read, "public/x", true},
		{anon, Read, "main", false},
		{anon, Write, "public/x", false},
		{gcApp, Admin, "cache/app/x", true},
		{nil, Read, "main", false},
	} {
		if got := c.id.Allowed(c.a, c.ns); got != c.want {
			t.Errorf("%s %s %q: got %v, want %v", c.id, c.a, c.ns, got, c.want)
		}
	}
	if !pr.AllowedAny(Write) || pr.AllowedAny(Delete) || !anon.AllowedAny(Read) || anon.AllowedAny(Write) {
		t.Error("AllowedAny wrong")
	}
	if !admin.AllowedAll(Admin) || gcApp.AllowedAll(Admin) || pr.AllowedAll(Read) {
		t.Error("AllowedAll wrong: admin over cache/app/* is not admin over everything")
	}
}

func TestCheck(t *testing.T) {
	p := mustPolicy(t, prFile)
	ctx := NewContext(context.Background(), p.byName["pr-1234"])
	if err := Check(ctx, Write, "pr/1234"); err != nil {
		t.Errorf("write own namespace: %v", err)
	}
	if err := Check(ctx, Write, "main"); !errors.Is(err, ErrPermissionDenied) {
		t.Errorf("write main: got %v, want permission denied", err)
	}
	anonCtx := NewContext(context.Background(), p.anonymous)
	if err := Check(anonCtx, Read, "main"); !errors.Is(err, ErrUnauthenticated) {
		t.Errorf("anonymous read main: got %v, want unauthenticated", err)
	}
	if err := Check(context.Background(), Read, "public/x"); !errors.Is(err, ErrUnauthenticated) {
		t.Errorf("no identity: got %v, want unauthenticated", err)
	}
}

func sha256Of(token string) (sum [32]byte) {
	b, _ := hex.DecodeString(HashToken(token))
	copy(sum[:], b)
	return sum
}
