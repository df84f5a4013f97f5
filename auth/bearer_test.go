package auth

import (
	"strings"
	"testing"
	"time"
)

// FuzzBearer: verify and parseScopes never panic on what a client sends,
// and verify accepts nothing not signed with the key.
func FuzzBearer(f *testing.F) {
	key := []byte(strings.Repeat("k", 32))
	now := time.Unix(1_700_000_000, 0)
	good, _ := sign(key, &claims{Subject: "a", IssuedAt: now.Unix(), Expires: now.Unix() + 60, Access: []grant{{Name: "main", Actions: []string{"pull"}}}})
	f.Add(good, "repository:main:pull,push")
	f.Add("cairnb1.", "repository:a:b:c:pull registry:catalog:*")
	f.Add("cairnb1..", "")
	f.Fuzz(func(t *testing.T, token, scope string) {
		if _, err := parseScopes([]string{scope}); err != nil && !strings.Contains(err.Error(), "too many") {
			t.Fatal(err)
		}
		if _, err := verify(key, token, now); err == nil && token != good {
			t.Fatalf("accepted %q, which was never signed", token)
		}
	})
}
