package auth

import (
	"bytes"
	"encoding/hex"
	"reflect"
	"strings"
	"testing"

	"github.com/cairnbuild/cairn/internal/golden"
)

func TestParseConfigErrors(t *testing.T) {
	h1 := strings.Repeat("a", 64)
	h2 := strings.Repeat("b", 64)
	tok := func(name, hash, scopes string) string {
		return "tokens:\n  - name: " + name + "\n    sha256: " + hash + "\n    scopes:\n" + scopes
	}
	ok := "      - {actions: [read], namespaces: [main]}\n"
	for _, c := range []struct {
		name, file string
		want       []string // substrings of the error
	}{
		{"empty", "", []string{"empty"}},
		{"grants nothing", "tokens: []\n", []string{"grants nothing"}},
		{"unknown top field", "tokenz: []\n", []string{"line 1", "tokenz"}},
		{"unknown token field", tok("a", h1, ok) + "    expires: never\n", []string{"line 6", "expires"}},
		{"unknown scope field", tok("a", h1, "      - {actions: [read], namespaces: [main], why: x}\n"), []string{"why"}},
		{"empty name", tok(`""`, h1, ok), []string{"line 2", "tokens[0]", "name: empty"}},
		{"reserved name", tok("anonymous", h1, ok), []string{"reserved"}},
		{"name with space", tok(`"a b"`, h1, ok), []string{"not allowed"}},
		{"short hash", tok("a", "abcd", ok), []string{"tokens[0]", `"a"`, "64 hex digits"}},
		{"bad hex", tok("a", strings.Repeat("g", 64), ok), []string{"not hex"}},
		{"hash of empty token", tok("a", hex.EncodeToString(emptyHash[:]), ok), []string{"empty token"}},
		{"unknown action", tok("a", h1, "      - {actions: [pull], namespaces: [main]}\n"), []string{`unknown action "pull"`}},
		{"duplicate action", tok("a", h1, "      - {actions: [read, read], namespaces: [main]}\n"), []string{"twice"}},
		{"no actions", tok("a", h1, "      - {actions: [], namespaces: [main]}\n"), []string{"actions: none"}},
		{"no namespaces", tok("a", h1, "      - {actions: [read]}\n"), []string{"namespaces: none"}},
		{"no scopes", tok("a", h1, ""), []string{"scopes: none"}},
		{"bad pattern", tok("a", h1, "      - {actions: [read], namespaces: [\"pr-*\"]}\n"), []string{"scopes[0]", `"pr-*"`}},
		{"duplicate name", tok("a", h1, ok) + "  - {name: a, sha256: " + h2 + ", scopes: [{actions: [read], namespaces: [main]}]}\n", []string{"line 6", "tokens[1]", "earlier token"}},
		{"duplicate hash", tok("a", h1, ok) + "  - {name: b, sha256: " + h1 + ", scopes: [{actions: [read], namespaces: [main]}]}\n", []string{"tokens[1]", `same hash as token "a"`}},
		{"bad anonymous", "anonymous:\n  - {actions: [read], namespaces: [\"a//b\"]}\n", []string{"line 2", "anonymous[0]"}},
		{"two documents", tok("a", h1, ok) + "---\ntokens: []\n", []string{"more than one"}},
		{"wrong type", "tokens: {a: b}\n", []string{"line 1"}},
	} {
		_, err := ParseConfig([]byte(c.file))
		if err == nil {
			t.Errorf("%s: accepted, want an error", c.name)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q does not say %q", c.name, err, w)
			}
		}
	}
}

func TestParseConfigAllErrors(t *testing.T) {
	// Every bad entry is reported, not only the first, so that one edit
	// fixes a file.
	file := "tokens:\n  - {name: a, sha256: x, scopes: [{actions: [read], namespaces: [main]}]}\n  - {name: b, sha256: y, scopes: [{actions: [read], namespaces: [main]}]}\n"
	_, err := ParseConfig([]byte(file))
	if err == nil || !strings.Contains(err.Error(), "line 2") || !strings.Contains(err.Error(), "line 3") {
		t.Errorf("got %v, want errors for lines 2 and 3", err)
	}
}

// goldenConfig is the file of the golden vector: every feature of the
// format once.
var goldenConfig = &Config{
	Tokens: []TokenConfig{
		{Name: "ci-main", SHA256: HashToken("cairn_golden-ci-main"), Scopes: []ScopeConfig{
			{Actions: []string{"read", "write"}, Namespaces: []string{"main", "cache/app/*"}},
		}},
		{Name: "pr-1234", SHA256: HashToken("cairn_golden-pr-1234"), Scopes: []ScopeConfig{
			{Actions: []string{"read"}, Namespaces: []string{"main", "pr/1234"}},
			{Actions: []string{"write"}, Namespaces: []string{"pr/1234"}},
		}},
		{Name: "ops", SHA256: HashToken("cairn_golden-ops"), Scopes: []ScopeConfig{
			{Actions: []string{"read", "write", "delete", "admin"}, Namespaces: []string{"*"}},
		}},
	},
	Anonymous: []ScopeConfig{{Actions: []string{"read"}, Namespaces: []string{"public/*"}}},
}

// TestGoldenCredentials pins the credentials file format and the token
// hash: a file written today must keep meaning the same.
func TestGoldenCredentials(t *testing.T) {
	if got, want := HashToken("cairn_golden-ci-main"), "2231058e90787ecd8a2768f0fed6e31ee13b3fea36c0dea3beaa9011cb70984e"; got != want {
		t.Errorf("HashToken: got %s, want %s", got, want)
	}
	b, err := goldenConfig.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	stored := golden.Bytes(t, "credentials.yaml", b)
	c, err := ParseConfig(stored)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c, goldenConfig) {
		t.Errorf("decoded golden file:\n got %+v\nwant %+v", c, goldenConfig)
	}
	p, err := c.compile(noLines)
	if err != nil {
		t.Fatal(err)
	}
	id := p.byHash[sha256Of("cairn_golden-pr-1234")]
	if id == nil || id.Name != "pr-1234" || !id.Allowed(Write, "pr/1234") || id.Allowed(Write, "main") {
		t.Errorf("golden pr token: %+v", id)
	}
}

func TestNewToken(t *testing.T) {
	tok, hash, err := NewToken()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(tok, "cairn_") || len(tok) != len("cairn_")+43 {
		t.Errorf("token %q: want cairn_ and 43 base64url characters", tok)
	}
	if hash != HashToken(tok) {
		t.Errorf("hash %s is not HashToken(token)", hash)
	}
	tok2, _, _ := NewToken()
	if tok2 == tok {
		t.Error("two tokens alike")
	}
	c := &Config{Tokens: []TokenConfig{{Name: "n", SHA256: hash, Scopes: []ScopeConfig{{Actions: []string{"read"}, Namespaces: []string{"*"}}}}}}
	b, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(b, []byte(tok)) {
		t.Error("the file holds the token")
	}
	if _, err := ParseConfig(b); err != nil {
		t.Errorf("a marshaled entry does not parse: %v", err)
	}
}

// FuzzParseConfig: the parser never panics, and a file it accepts
// round-trips through Marshal to the same config.
func FuzzParseConfig(f *testing.F) {
	b, _ := goldenConfig.Marshal()
	f.Add(b)
	f.Add([]byte(prFile))
	f.Add([]byte("anonymous:\n  - {actions: [read], namespaces: ['*']}\n"))
	f.Add([]byte("tokens: [{name: a, sha256: x}]"))
	f.Add([]byte("&a [*a]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseConfig(data)
		if err != nil {
			return
		}
		out, err := c.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		c2, err := ParseConfig(out)
		if err != nil {
			t.Fatalf("accepted %q, but not its re-encoding %q: %v", data, out, err)
		}
		// Compared encoded: nil and empty lists mean the same.
		if out2, _ := c2.Marshal(); !bytes.Equal(out, out2) {
			t.Fatalf("round trip changed the config:\n%s\n%s", out, out2)
		}
	})
}
