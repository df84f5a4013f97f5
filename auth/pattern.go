package auth

import (
	"fmt"
	"strings"
)

// A pattern selects namespaces. It is one of:
//
//   - "*": every namespace;
//   - "prefix/*": every namespace below prefix, at any depth ("pr/*"
//     matches "pr/1234" and "pr/1234/x", not "pr" itself nor "prefix");
//   - anything else: that namespace exactly.
//
// There is no other wildcard: patterns that read like globs ("pr-*",
// "*/main") are refused, so that a file cannot grant more or less than its
// writer thought.
type pattern struct {
	all    bool   // "*"
	prefix string // "pr/" for "pr/*"; empty unless a prefix pattern
	exact  string // the namespace, for an exact pattern
}

// parsePattern validates a pattern of the credentials file.
func parsePattern(s string) (pattern, error) {
	if s == "*" {
		return pattern{all: true}, nil
	}
	if base, ok := strings.CutSuffix(s, "/*"); ok {
		if err := validNamespace(base); err != nil {
			return pattern{}, fmt.Errorf("namespace pattern %q: %w", s, err)
		}
		return pattern{prefix: base + "/"}, nil
	}
	if err := validNamespace(s); err != nil {
		return pattern{}, fmt.Errorf("namespace pattern %q: %w", s, err)
	}
	return pattern{exact: s}, nil
}

// match reports whether the pattern selects namespace ns.
func (p pattern) match(ns string) bool {
	switch {
	case p.all:
		return true
	case p.prefix != "":
		return len(ns) > len(p.prefix) && strings.HasPrefix(ns, p.prefix)
	}
	return ns == p.exact
}

// String returns the pattern as the file writes it.
func (p pattern) String() string {
	switch {
	case p.all:
		return "*"
	case p.prefix != "":
		return p.prefix + "*"
	}
	return p.exact
}

// validNamespace checks the namespace part of a pattern: slash-separated
// segments of letters, digits, '.', '_' and '-', none empty. That covers
// registry repository names ("cache/app") and step namespaces ("pr/1234"),
// and keeps '*' and spaces out, which could only be mistakes.
func validNamespace(s string) error {
	if s == "" {
		return fmt.Errorf("empty")
	}
	for seg := range strings.SplitSeq(s, "/") {
		if seg == "" {
			return fmt.Errorf("empty path segment")
		}
		for _, r := range seg {
			switch {
			case 'a' <= r && r <= 'z', 'A' <= r && r <= 'Z', '0' <= r && r <= '9', r == '.', r == '_', r == '-':
			case r == '*':
				return fmt.Errorf("'*' is allowed only as the whole pattern or as a last segment (prefix/*)")
			default:
				return fmt.Errorf("character %q not allowed (letters, digits, '.', '_', '-' and '/')", r)
			}
		}
	}
	return nil
}
