package main

import (
	"strings"
	"testing"

	"github.com/cairnbuild/cairn/auth"
)

// token new prints a token once and a credentials file that the server
// accepts, whose entry authenticates that token with the scopes asked for.
func TestTokenNew(t *testing.T) {
	r := runClientCLI(t, nil, nil, "token", "new", "--name", "pr-1234", "--read", "main,pr/1234", "--write", "pr/1234")
	if r.code != exitOK {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	token := lines[len(lines)-1]
	if !strings.HasPrefix(token, "cairn_") || strings.Contains(r.stdout, token) {
		t.Fatalf("token %q (it must be on stderr only)", token)
	}
	cfg, err := auth.ParseConfig([]byte(r.stdout))
	if err != nil {
		t.Fatalf("the printed file: %v\n%s", err, r.stdout)
	}
	a, err := auth.New(cfg, auth.Options{})
	if err != nil {
		t.Fatal(err)
	}
	id, err := a.Authenticate(token)
	if err != nil {
		t.Fatal(err)
	}
	if id.Name != "pr-1234" || !id.Allowed(auth.Read, "main") || !id.Allowed(auth.Write, "pr/1234") || id.Allowed(auth.Write, "main") {
		t.Errorf("the token's identity: %+v", id)
	}
	for _, args := range [][]string{
		{"token", "new", "--read", "main"},
		{"token", "new", "--name", "x"},
		{"token", "new", "--name", "x", "--read", "pr-*"},
	} {
		if r := runClientCLI(t, nil, nil, args...); r.code == exitOK {
			t.Errorf("%v: exit 0, want an error", args)
		}
	}
}
