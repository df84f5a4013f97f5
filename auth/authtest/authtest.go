// Package authtest builds credentials for the fronts' tests: an
// Authenticator over a file of fresh tokens, so that a test states only
// who may do what.
package authtest

import (
	"fmt"
	"sort"
	"testing"

	"github.com/cairnbuild/cairn/auth"
)

// New returns an Authenticator whose credentials file gives each name in
// scopes a fresh token with those scopes (a YAML flow list, for example
// `[{actions: [read], namespaces: [main]}]`), and anonymous clients the
// scopes of anonymous (a YAML flow list; "" for none), with the tokens by
// name.
func New(t testing.TB, anonymous string, scopes map[string]string) (*auth.Authenticator, map[string]string) {
	t.Helper()
	file := ""
	if anonymous != "" {
		file += "anonymous: " + anonymous + "\n"
	}
	file += "tokens:\n"
	names := make([]string, 0, len(scopes))
	for name := range scopes {
		names = append(names, name)
	}
	sort.Strings(names)
	tokens := make(map[string]string, len(scopes))
	for _, name := range names {
		tok, hash, err := auth.NewToken()
		if err != nil {
			t.Fatal(err)
		}
		tokens[name] = tok
		file += fmt.Sprintf("  - name: %s\n    sha256: %s\n    scopes: %s\n", name, hash, scopes[name])
	}
	cfg, err := auth.ParseConfig([]byte(file))
	if err != nil {
		t.Fatalf("%v\n%s", err, file)
	}
	a, err := auth.New(cfg, auth.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return a, tokens
}
