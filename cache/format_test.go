package cache

import (
	"bytes"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cairnbuild/cairn/internal/golden"

	"github.com/cairnbuild/cairn/cache/internal/index"
	"github.com/cairnbuild/cairn/chunkid"
	"github.com/cairnbuild/cairn/stepkey"
	"github.com/opencontainers/go-digest"
)

// The backend formats of the facade (layer manifests, step records) must
// round-trip, stay as pinned in testdata, and their parsers must reject
// (never panic on, never over-allocate for) anything else. Pack and index
// formats are pinned in their own packages.

func goldenLayer() *index.LayerRecord {
	return &index.LayerRecord{Digest: digest.FromString("x"), Size: 300, Stored: 120, MediaType: "m",
		Created: time.Unix(1700000000, 5).UTC(), Recipe: []index.RecipeEntry{{ID: chunkid.ID{1}, Size: 100}, {ID: chunkid.ID{2}, Size: 200}}}
}

func goldenStep() StepRecord {
	r := StepRecord{Key: digest.FromString("k"), Parent: digest.FromString("p"), Next: digest.FromString("n"),
		Step:    stepkey.Step{Instruction: "RUN make", InputsDigest: digest.FromString("i"), Platform: "linux/amd64", BuildArgs: []string{"A=1"}},
		Layer:   &LayerRef{Digest: digest.FromString("l"), DiffID: digest.FromString("d"), Size: 5, MediaType: DefaultMediaType},
		Config:  []byte(`{"Env":["A=1"]}`),
		Created: time.Unix(1700000000, 0).UTC()}
	return r
}

func TestGoldenManifest(t *testing.T) {
	lr := goldenLayer()
	m, err := marshalManifest(lr)
	if err != nil {
		t.Fatal(err)
	}
	back, err := parseManifest(golden.Bytes(t, "layer-manifest.json", m))
	if err != nil {
		t.Fatal(err)
	}
	if back.Digest != lr.Digest || back.Size != lr.Size || back.MediaType != lr.MediaType || !back.Created.Equal(lr.Created) ||
		len(back.Recipe) != 2 || back.Recipe[0] != lr.Recipe[0] || back.Recipe[1] != lr.Recipe[1] {
		t.Errorf("stored manifest parses as %+v, want %+v", back, lr)
	}
	lr.Size = 301 // sizes no longer add up
	m, _ = marshalManifest(lr)
	if _, err := parseManifest(m); err == nil {
		t.Errorf("a manifest whose chunk sizes do not add up was accepted")
	}
}

// A layer only the registry holds says so in its manifest, so that Reindex
// keeps it collectable; a manifest without the field (every layer stored
// before the field existed) is a root.
func TestGoldenUnrootedManifest(t *testing.T) {
	lr := goldenLayer()
	lr.Unrooted = true
	m, err := marshalManifest(lr)
	if err != nil {
		t.Fatal(err)
	}
	back, err := parseManifest(golden.Bytes(t, "unrooted-manifest.json", m))
	if err != nil {
		t.Fatal(err)
	}
	if !back.Unrooted {
		t.Errorf("an unrooted layer's manifest parses as rooted")
	}
	stored, err := os.ReadFile("testdata/layer-manifest.json")
	if err != nil {
		t.Fatal(err)
	}
	old, err := parseManifest(stored)
	if err != nil || old.Unrooted {
		t.Errorf("a manifest without the field parses as unrooted=%v (%v), want a root", old != nil && old.Unrooted, err)
	}
}

// A compressed blob stored as its content: the manifest carries the spec,
// and its chunks add up to the content's size, not the blob's.
func TestGoldenRebuiltManifest(t *testing.T) {
	lr := goldenLayer()
	lr.Digest, lr.Size, lr.MediaType = digest.FromString("gz"), 120, "application/vnd.oci.image.layer.v1.tar+gzip"
	lr.Rebuild = []byte(`{"encoder":"go-gzip","version":"go1.26.8","level":6,"header":{"os":255}}`)
	m, err := marshalManifest(lr)
	if err != nil {
		t.Fatal(err)
	}
	back, err := parseManifest(golden.Bytes(t, "rebuilt-manifest.json", m))
	if err != nil {
		t.Fatal(err)
	}
	if back.Size != 120 || back.RawSize() != lr.RawSize() || string(back.Rebuild) != string(lr.Rebuild) || len(back.Recipe) != 2 {
		t.Errorf("stored manifest parses as %+v", back)
	}
	lr.Rebuild = []byte(`{"encoder":"brotli","version":"1","level":6}`)
	m, _ = marshalManifest(lr)
	if _, err := parseManifest(m); err == nil {
		t.Errorf("a manifest naming an unknown encoder was accepted")
	}
}

// A split tar: the manifest carries the meta stream's chunks and the tar's
// size; the content chunks add up to less.
func TestGoldenTarManifest(t *testing.T) {
	lr := goldenLayer()
	lr.Digest, lr.Size = digest.FromString("tar"), 350
	lr.Tar = &index.TarLayout{Size: 350, Meta: []index.RecipeEntry{{ID: chunkid.ID{3}, Size: 60}}}
	m, err := marshalManifest(lr)
	if err != nil {
		t.Fatal(err)
	}
	back, err := parseManifest(golden.Bytes(t, "tar-manifest.json", m))
	if err != nil {
		t.Fatal(err)
	}
	if back.Size != 350 || back.Tar == nil || back.Tar.Size != 350 || len(back.Tar.Meta) != 1 || back.Tar.Meta[0] != lr.Tar.Meta[0] || len(back.Recipe) != 2 {
		t.Errorf("stored manifest parses as %+v", back)
	}
	// A gzip of that tar, rebuilt from it.
	rebuilt := *lr
	rebuilt.Digest, rebuilt.Size, rebuilt.MediaType = digest.FromString("tar.gz"), 120, "application/vnd.oci.image.layer.v1.tar+gzip"
	rebuilt.Rebuild = []byte(`{"encoder":"go-gzip","version":"go1.26.8","level":6,"header":{"os":255}}`)
	m, err = marshalManifest(&rebuilt)
	if err != nil {
		t.Fatal(err)
	}
	back, err = parseManifest(golden.Bytes(t, "rebuilt-tar-manifest.json", m))
	if err != nil || back.Size != 120 || back.RawSize() != 350 || back.Tar == nil || string(back.Rebuild) != string(rebuilt.Rebuild) {
		t.Errorf("stored rebuilt tar manifest parses as %+v, %v", back, err)
	}
	// A cairn from before these fields sees version 2 and skips it; a
	// version 1 manifest with them is refused.
	if old := strings.Replace(string(m), `"version":2`, `"version":1`, 1); old == string(m) {
		t.Error("a rebuilt tar's manifest is not version 2")
	} else if _, err := parseManifest([]byte(old)); err == nil {
		t.Error("a version 1 manifest with rebuild and tar fields was accepted")
	}
	for _, bad := range []index.TarLayout{{Size: 299, Meta: lr.Tar.Meta}, {Size: 361, Meta: lr.Tar.Meta}} {
		lr.Tar, lr.Size = &bad, bad.Size
		m, _ = marshalManifest(lr)
		if _, err := parseManifest(m); err == nil {
			t.Errorf("a split tar of %d bytes from 300 of content and 60 of meta was accepted", bad.Size)
		}
	}
}

func TestGoldenStep(t *testing.T) {
	r := goldenStep()
	b, err := r.marshal()
	if err != nil {
		t.Fatal(err)
	}
	back, err := unmarshalStep(golden.Bytes(t, "step-record.json", b))
	if err != nil {
		t.Fatal(err)
	}
	if back.Key != r.Key || back.Parent != r.Parent || back.Next != r.Next || back.Step.Instruction != r.Step.Instruction ||
		back.Step.InputsDigest != r.Step.InputsDigest || back.Step.Platform != r.Step.Platform || len(back.Step.BuildArgs) != 1 ||
		back.Layer == nil || *back.Layer != *r.Layer || !bytes.Equal(back.Config, r.Config) || !back.Created.Equal(r.Created) {
		t.Errorf("stored step record parses as %+v, want %+v", back, r)
	}
}

// A record of a namespace says so; its object and index entry live under
// a key derived from the namespace and the step's key, pinned here too.
func TestGoldenNamespacedStep(t *testing.T) {
	r := goldenStep()
	r.Namespace = "pr/1234"
	b, err := r.marshal()
	if err != nil {
		t.Fatal(err)
	}
	back, err := unmarshalStep(golden.Bytes(t, "step-record-namespaced.json", b))
	if err != nil {
		t.Fatal(err)
	}
	if back.Namespace != r.Namespace || back.Key != r.Key {
		t.Errorf("stored step record parses as namespace %q key %s, want %q %s", back.Namespace, back.Key, r.Namespace, r.Key)
	}
	if got := golden.Bytes(t, "step-store-key.txt", []byte(stepObjectKey(back.storeKey())+"\n")); string(got) != stepObjectKey(back.storeKey())+"\n" {
		t.Errorf("the store key of a namespaced record changed")
	}
	if stepStoreKey("", r.Key) != r.Key {
		t.Errorf("the default namespace's records are not stored under their step key")
	}
	bad := bytes.Replace(b, []byte(`"pr/1234"`), []byte(`"../x"`), 1)
	if _, err := unmarshalStep(bad); err == nil {
		t.Errorf("a record with an invalid namespace parsed")
	}
}

func FuzzManifest(f *testing.F) {
	m, _ := marshalManifest(goldenLayer())
	f.Add(m)
	f.Add([]byte(`{"version":1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := parseManifest(b)
		if err != nil {
			return
		}
		var sum int64
		for _, e := range got.Recipe {
			if e.Size <= 0 || e.Size > MaxChunkSize {
				t.Fatalf("accepted chunk size %d", e.Size)
			}
			sum += e.Size
		}
		if sum != got.Size {
			t.Fatalf("accepted sizes adding up to %d for a layer of %d", sum, got.Size)
		}
	})
}

func FuzzStepRecord(f *testing.F) {
	r := goldenStep()
	b, _ := r.marshal()
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		rec, err := unmarshalStep(b)
		if err != nil {
			return
		}
		if rec.Key.Validate() != nil {
			t.Fatalf("accepted key %q", rec.Key)
		}
	})
}

// ParseLayerDigest checks by hand what go-digest's Validate checks with a
// regular expression, and only sha256 and sha512.
func TestParseLayerDigest(t *testing.T) {
	good := digest.FromString("x")
	if err := ParseLayerDigest(good); err != nil {
		t.Errorf("%s: %v", good, err)
	}
	for _, bad := range []digest.Digest{"", "sha256", "sha256:", ":" + good[7:], good + "0", good[:70], "SHA256:" + good[7:],
		"sha256:" + digest.Digest(bytes.ToUpper([]byte(good[7:]))), "sha512:" + good[7:], "sha384:" + good[7:] + good[7:16], "md5:" + good[7:], "blake3:" + good[7:],
		"sha256:" + good[7:70] + "g"} {
		if err := ParseLayerDigest(bad); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("ParseLayerDigest(%q) = %v, want ErrInvalidArgument", bad, err)
		}
	}
}

func FuzzParseLayerDigest(f *testing.F) {
	f.Add(string(digest.FromString("x")))
	f.Add("sha256:")
	f.Fuzz(func(t *testing.T, s string) {
		err := ParseLayerDigest(digest.Digest(s))
		alg := digest.Digest(s).Algorithm()
		want := digest.Digest(s).Validate() == nil && (alg == digest.SHA256 || alg == digest.SHA512)
		if (err == nil) != want {
			t.Fatalf("ParseLayerDigest(%q) = %v; go-digest says valid sha256/sha512: %v", s, err, want)
		}
	})
}
