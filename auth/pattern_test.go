package auth

import "testing"

func TestPatternMatch(t *testing.T) {
	for _, c := range []struct {
		pattern, ns string
		want        bool
		why         string
	}{
		{"main", "main", true, "exact"},
		{"main", "main/x", false, "exact is not a prefix"},
		{"main", "mainline", false, "exact is not a string prefix"},
		{"pr/1234", "pr/1234", true, "exact with a slash"},
		{"pr/*", "pr/1234", true, "one level below"},
		{"pr/*", "pr/1234/x", true, "any depth"},
		{"pr/*", "pr", false, "not the prefix itself"},
		{"pr/*", "pr/", false, "an empty child is no namespace"},
		{"pr/*", "prefix/1", false, "segment boundary"},
		{"cache/app/*", "cache/app/x", true, "deeper prefix"},
		{"cache/app/*", "cache/apple/x", false, "segment boundary, deeper"},
		{"*", "anything/at/all", true, "all"},
		{"*", "", true, "all includes the default namespace"},
	} {
		p, err := parsePattern(c.pattern)
		if err != nil {
			t.Fatalf("%q: %v", c.pattern, err)
		}
		if got := p.match(c.ns); got != c.want {
			t.Errorf("%q matches %q: got %v, want %v (%s)", c.pattern, c.ns, got, c.want, c.why)
		}
		if p.String() != c.pattern {
			t.Errorf("%q prints as %q", c.pattern, p.String())
		}
	}
}

func TestPatternInvalid(t *testing.T) {
	for _, s := range []string{"", "/", "a//b", "/a", "a/", "pr-*", "*/main", "a/*/b", "**", "a/**", "a b", "a\n", "ä", "a/*x"} {
		if _, err := parsePattern(s); err == nil {
			t.Errorf("%q: accepted, want an error", s)
		}
	}
}
