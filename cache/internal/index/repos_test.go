package index

import (
	"errors"
	"reflect"
	"testing"

	"github.com/cairnbuild/cairn/cache/internal/cerr"
	"github.com/cairnbuild/cairn/internal/golden"
	"github.com/opencontainers/go-digest"
)

var goldenManifest = ManifestRecord{MediaType: "application/vnd.oci.image.manifest.v1+json",
	ArtifactType: "application/vnd.example", Size: 1234, Subject: digest.FromString("subject"),
	Annotations: map[string]string{"org.opencontainers.image.created": "2026-11-30T00:00:00Z"},
	Refs:        []Ref{{Digest: digest.FromString("config"), Size: 10}, {Digest: digest.FromString("child"), Manifest: true, Size: 500}}}

// The registry's index values and keys are pinned like the others.
func TestGoldenRepos(t *testing.T) {
	b, err := goldenManifest.Encode()
	if err != nil {
		t.Fatal(err)
	}
	stored := golden.Bytes(t, "manifest-record.json", b)
	mr, err := DecodeManifestRecord(stored)
	want := goldenManifest
	want.Version = manifestRecordVersion
	if err != nil || !reflect.DeepEqual(mr, want) {
		t.Errorf("stored manifest record decodes as %+v, %v", mr, err)
	}
	stored = golden.Hex(t, "link-time.hex", putUnix(goldenHits.Last))
	if string(stored) != string(putUnix(goldenHits.Last)) {
		t.Errorf("link time encoding changed")
	}
	d := digest.Digest("sha256:ab")
	if string(repoKey("a/b")) != "R/a/b" || string(linkKey(idxBlobLink, "a/b", string(d))) != "B/a/b\x00sha256:ab" ||
		string(linkKey(idxManLink, "a", string(d))) != "M/a\x00sha256:ab" || string(linkKey(idxTag, "a", "v1")) != "T/a\x00v1" ||
		string(linkKey(idxReferrer, "a", "s", "r")) != "F/a\x00s\x00r" {
		t.Errorf("registry index keys changed: a format change")
	}
	for _, bad := range [][]byte{nil, []byte("{"), []byte(`{"v":2}`)} {
		if _, err := DecodeManifestRecord(bad); !errors.Is(err, cerr.ErrDataLoss) {
			t.Errorf("DecodeManifestRecord(%q) = %v, want ErrDataLoss", bad, err)
		}
	}
}
