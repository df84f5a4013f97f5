package cache

import (
	"errors"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

// The registry's backend keys are a stored format: Reindex finds
// repositories by them.
func TestRepoKeys(t *testing.T) {
	d := digest.FromString("x")
	for _, tc := range []struct{ key, repo, kind, rest string }{
		{blobLinkKey("a/b", d), "a/b", "_blobs", "sha256/" + d.Encoded()},
		{manifestLinkKey("a", d), "a", "_manifests", "sha256/" + d.Encoded()},
		{tagKey("x/y/z", "v1.0"), "x/y/z", "_tags", "v1.0"},
	} {
		if !strings.HasPrefix(tc.key, "repos/"+tc.repo+"/"+tc.kind+"/") {
			t.Errorf("key %q: a format change", tc.key)
		}
		repo, kind, rest, ok := parseRepoKey(tc.key)
		if !ok || repo != tc.repo || kind != tc.kind || rest != tc.rest {
			t.Errorf("parseRepoKey(%q) = %q %q %q %v", tc.key, repo, kind, rest, ok)
		}
	}
	if blobLinkKey("a/b", d) != "repos/a/b/_blobs/sha256/"+d.Encoded() || tagKey("a", "t") != "repos/a/_tags/t" {
		t.Error("registry backend keys changed: a format change")
	}
	for _, bad := range []string{"repos/a", "repos/_tags/x", "layers/sha256/x"} {
		if _, _, _, ok := parseRepoKey(bad); ok {
			t.Errorf("parseRepoKey(%q) accepted", bad)
		}
	}
}

func TestRepoNames(t *testing.T) {
	for _, ok := range []string{"a", "a/b", "a-b/c_d/e.f", "a__b", "a--b", strings.Repeat("a", 200), strings.Repeat("ab/", 80) + "c"} {
		if err := ValidRepoName(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "A", "a/", "/a", "a//b", "a/../b", "..", "a/.b", "a_", "a___b", "a:b", "a\x00b", strings.Repeat("a", 201), strings.Repeat("ab/", 85) + "c", "a/_blobs"} {
		if err := ValidRepoName(bad); !errors.Is(err, ErrNameInvalid) || !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("%q: %v", bad, err)
		}
	}
	for _, ok := range []string{"v1", "_x", "latest", "A.b-c_d", strings.Repeat("t", 128)} {
		if err := ValidTag(ok); err != nil {
			t.Errorf("tag %q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", ".x", "-x", "a:b", "a/b", strings.Repeat("t", 129), "a\x00"} {
		if err := ValidTag(bad); !errors.Is(err, ErrTagInvalid) || !errors.Is(err, ErrNameInvalid) {
			t.Errorf("tag %q: %v", bad, err)
		}
	}
}
