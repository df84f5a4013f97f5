package ocimanifest

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

var (
	cfgD   = digest.FromString("config")
	layerD = digest.FromString("layer")
	childD = digest.FromString("child")
)

func image(mt, extra string) string {
	return fmt.Sprintf(`{"schemaVersion":2%s,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":2},`+
		`"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"%s","size":3},`+
		`{"mediaType":"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip","digest":"%s","size":4,"urls":["https://example.com/x"]}]%s}`,
		mt, cfgD, layerD, childD, extra)
}

func TestParse(t *testing.T) {
	m, err := Parse("application/vnd.oci.image.manifest.v1+json", []byte(image(`,"mediaType":"application/vnd.oci.image.manifest.v1+json"`, "")))
	if err != nil {
		t.Fatal(err)
	}
	want := []Ref{{cfgD, 2, false, true}, {layerD, 3, false, true}, {childD, 4, false, false}}
	if m.MediaType != OCIManifest || len(m.Refs) != 3 || m.Refs[0] != want[0] || m.Refs[1] != want[1] || m.Refs[2] != want[2] {
		t.Fatalf("got %+v", m)
	}
	// No mediaType in the body: the Content-Type says, or the shape.
	for _, ct := range []string{"application/vnd.docker.distribution.manifest.v2+json", ""} {
		m, err := Parse(ct, []byte(image("", "")))
		if err != nil {
			t.Fatalf("%q: %v", ct, err)
		}
		if wantMT := map[string]string{"": OCIManifest}[ct]; (wantMT != "" && m.MediaType != wantMT) || (ct != "" && m.MediaType != ct) {
			t.Fatalf("%q: media type %q", ct, m.MediaType)
		}
	}
	// An artifact: artifactType, subject, annotations.
	art := image(`,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/x.sig"`,
		fmt.Sprintf(`,"subject":{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":9},"annotations":{"a":"b"}`, childD))
	m, err = Parse("", []byte(art))
	if err != nil || m.ArtifactType != "application/x.sig" || m.Subject == nil || m.Subject.Digest != childD || m.Annotations["a"] != "b" {
		t.Fatalf("artifact: %+v %v", m, err)
	}
	// An index: manifest children are checked, blob children are not.
	idx := fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[`+
		`{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":1},`+
		`{"mediaType":"application/vnd.buildkit.cacheconfig.v0","digest":"%s","size":2}]}`, childD, cfgD)
	m, err = Parse("application/vnd.oci.image.index.v1+json", []byte(idx))
	if err != nil || len(m.Refs) != 2 || !m.Refs[0].Manifest || !m.Refs[0].Checked || m.Refs[1].Manifest || m.Refs[1].Checked {
		t.Fatalf("index: %+v %v", m, err)
	}
}

func TestParseRefuses(t *testing.T) {
	for name, tc := range map[string]struct {
		ct, body string
		want     error
	}{
		"not json":           {"", `{"schemaVersion":2`, ErrInvalid},
		"trailing garbage":   {"", image("", "") + "x", ErrInvalid},
		"schema 1":           {"application/vnd.docker.distribution.manifest.v1+prettyjws", `{"schemaVersion":1}`, ErrUnsupported},
		"schema 1 by shape":  {"", `{"schemaVersion":1,"fsLayers":[]}`, ErrUnsupported},
		"schemaVersion 3":    {"", strings.Replace(image("", ""), `"schemaVersion":2`, `"schemaVersion":3`, 1), ErrInvalid},
		"type mismatch":      {OCIIndex, image(`,"mediaType":"application/vnd.oci.image.manifest.v1+json"`, ""), ErrInvalid},
		"unknown type":       {"application/x-foo", image("", ""), ErrInvalid},
		"no config":          {OCIManifest, `{"schemaVersion":2,"layers":[]}`, ErrInvalid},
		"bad digest":         {"", strings.Replace(image("", ""), string(cfgD), "sha256:abc", 1), ErrInvalid},
		"md5 digest":         {"", strings.Replace(image("", ""), string(cfgD), "md5:"+strings.Repeat("0", 32), 1), ErrInvalid},
		"negative size":      {"", strings.Replace(image("", ""), `"size":2`, `"size":-1`, 1), ErrInvalid},
		"no descriptor type": {"", strings.Replace(image("", ""), `"mediaType":"application/vnd.oci.image.config.v1+json",`, ``, 1), ErrInvalid},
		"index with layers":  {OCIIndex, `{"schemaVersion":2,"manifests":[],"layers":[]}`, ErrInvalid},
		"bad content type":   {"a/b; ;", image("", ""), ErrInvalid},
		"nothing":            {"", `{}`, ErrInvalid},
		"array":              {"", `[]`, ErrInvalid},
	} {
		if _, err := Parse(tc.ct, []byte(tc.body)); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", name, err, tc.want)
		}
	}
}

// FuzzParse: whatever the input, Parse returns a manifest or ErrInvalid /
// ErrUnsupported, never panics, and every reference it returns is a valid
// sha256 or sha512 digest.
func FuzzParse(f *testing.F) {
	f.Add("", image("", ""))
	f.Add(OCIIndex, `{"schemaVersion":2,"manifests":[]}`)
	f.Fuzz(func(t *testing.T, ct, body string) {
		m, err := Parse(ct, []byte(body))
		if err != nil {
			if !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrUnsupported) {
				t.Fatalf("error %v wraps neither sentinel", err)
			}
			return
		}
		if !IsManifest(m.MediaType) {
			t.Fatalf("accepted media type %q", m.MediaType)
		}
		for _, r := range m.Refs {
			if r.Digest.Validate() != nil || r.Size < 0 {
				t.Fatalf("bad ref %+v", r)
			}
		}
	})
}
