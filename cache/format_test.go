package cache

import (
	"bytes"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// The index and backend formats must round-trip, and their parsers must
// reject (never panic on, never over-allocate for) anything else.

func FuzzLayerRecord(f *testing.F) {
	lr := &layerRecord{digest: digest.FromString("x"), size: 300, stored: 120, mediaType: DefaultMediaType,
		created: time.Unix(1700000000, 5).UTC(), recipe: []recipeEntry{{id: chunkID{1}, size: 100}, {id: chunkID{2}, size: 200}}}
	f.Add(lr.encode())
	f.Add([]byte{layerRecordVersion})
	f.Add([]byte{layerRecordVersion, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := decodeLayerRecord(lr.digest, b)
		if err != nil {
			return
		}
		if again := got.encode(); !bytes.Equal(again, b) {
			// Non-canonical varints decode too; the re-encoding must
			// decode to the same record.
			if got2, err := decodeLayerRecord(lr.digest, again); err != nil || len(got2.recipe) != len(got.recipe) {
				t.Fatalf("re-encoding does not decode: %v", err)
			}
		}
	})
}

func TestLayerRecordRoundTrip(t *testing.T) {
	lr := &layerRecord{digest: digest.FromString("x"), size: 300, stored: 120, mediaType: "m",
		created: time.Unix(1700000000, 5).UTC(), recipe: []recipeEntry{{id: chunkID{1}, size: 100}, {id: chunkID{2}, size: 200}}}
	got, err := decodeLayerRecord(lr.digest, lr.encode())
	if err != nil {
		t.Fatal(err)
	}
	if got.size != lr.size || got.stored != lr.stored || got.mediaType != lr.mediaType || !got.created.Equal(lr.created) ||
		len(got.recipe) != 2 || got.recipe[1] != lr.recipe[1] {
		t.Errorf("got %+v, want %+v", got, lr)
	}
	m, err := lr.manifest()
	if err != nil {
		t.Fatal(err)
	}
	back, err := parseManifest(m)
	if err != nil {
		t.Fatal(err)
	}
	if back.digest != lr.digest || back.size != lr.size || back.mediaType != lr.mediaType || !back.created.Equal(lr.created) ||
		len(back.recipe) != 2 || back.recipe[0] != lr.recipe[0] {
		t.Errorf("manifest round trip: %+v, want %+v", back, lr)
	}
	lr.size = 301 // sizes no longer add up
	m, _ = lr.manifest()
	if _, err := parseManifest(m); err == nil {
		t.Errorf("a manifest whose chunk sizes do not add up was accepted")
	}
}

func FuzzManifest(f *testing.F) {
	lr := &layerRecord{digest: digest.FromString("x"), size: 100, mediaType: DefaultMediaType,
		created: time.Unix(1700000000, 0).UTC(), recipe: []recipeEntry{{id: chunkID{1}, size: 100}}}
	m, _ := lr.manifest()
	f.Add(m)
	f.Add([]byte(`{"version":1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := parseManifest(b)
		if err != nil {
			return
		}
		var sum int64
		for _, e := range got.recipe {
			if e.size <= 0 || e.size > MaxChunkSize {
				t.Fatalf("accepted chunk size %d", e.size)
			}
			sum += e.size
		}
		if sum != got.size {
			t.Fatalf("accepted sizes adding up to %d for a layer of %d", sum, got.size)
		}
	})
}

func FuzzChunkHeader(f *testing.F) {
	hdr := make([]byte, chunkHeaderSize)
	putChunkHeader(hdr, 1234)
	f.Add(hdr)
	f.Add([]byte("CRNC"))
	f.Fuzz(func(t *testing.T, b []byte) {
		size, payload, err := parseChunkHeader(b)
		if err != nil {
			return
		}
		if size < 0 || size > MaxChunkSize || len(payload) != len(b)-chunkHeaderSize {
			t.Fatalf("accepted size %d, payload %d of %d", size, len(payload), len(b))
		}
	})
}

func FuzzStepRecord(f *testing.F) {
	r := StepRecord{Key: digest.FromString("k"), Next: digest.FromString("n"), Created: time.Unix(1, 0).UTC()}
	r.Step.Instruction = "RUN x"
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

func TestChunkKey(t *testing.T) {
	id := chunkID{0xab, 0xcd}
	key := chunkKey(id)
	if key[:10] != "chunks/ab/" {
		t.Errorf("chunkKey = %s", key)
	}
	back, ok := chunkIDFromKey(key)
	if !ok || back != id {
		t.Errorf("chunkIDFromKey(%s) = %v, %v", key, back, ok)
	}
	for _, bad := range []string{"chunks/ab", "chunks/cd/" + key[10:], "layers/sha256/x", key + "0"} {
		if _, ok := chunkIDFromKey(bad); ok {
			t.Errorf("chunkIDFromKey(%q) accepted", bad)
		}
	}
}
