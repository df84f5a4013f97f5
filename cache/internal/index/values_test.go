package index

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/cairnbuild/cairn/internal/golden"

	"github.com/cairnbuild/cairn/cache/internal/cerr"
	"github.com/cairnbuild/cairn/cache/internal/pack"
	"github.com/cairnbuild/cairn/chunkid"
	"github.com/opencontainers/go-digest"
)

var (
	goldenChunk = ChunkInfo{Size: 262144, Stored: 70001, Refs: 3, Added: 1700000000, Pack: pack.ID{0xab, 0xcd, 15: 0xef}, Off: 4190000}
	// A chunk in a frame of several (a compacted pack).
	goldenFramed = ChunkInfo{Size: 262144, Stored: 900001, Refs: 3, Added: 1700000000, Pack: pack.ID{0xab, 0xcd, 15: 0xef}, Off: 4190000,
		InFrame: 1 << 20, Frame: 4000000}
	goldenLayer = &LayerRecord{Digest: digest.FromString("layer"), Size: 300, Stored: 120,
		MediaType: "application/vnd.oci.image.layer.v1.tar", Created: time.Unix(1700000000, 5).UTC(),
		Recipe: []RecipeEntry{{ID: chunkid.Sum([]byte("a")), Size: 100}, {ID: chunkid.Sum([]byte("b")), Size: 200}}}
	goldenRebuilt = &LayerRecord{Digest: digest.FromString("gz"), Size: 150, Stored: 120,
		MediaType: "application/vnd.oci.image.layer.v1.tar+gzip", Created: time.Unix(1700000000, 5).UTC(),
		Recipe:  goldenLayer.Recipe,
		Rebuild: []byte(`{"encoder":"go-gzip","version":"go1.26.8","level":6,"header":{"os":255}}`)}
	goldenTar = &LayerRecord{Digest: digest.FromString("tar"), Size: 350, Stored: 150,
		MediaType: "application/vnd.oci.image.layer.v1.tar", Created: time.Unix(1700000000, 5).UTC(),
		Recipe: goldenLayer.Recipe, Tar: &TarLayout{Size: 350, Meta: []RecipeEntry{{ID: chunkid.Sum([]byte("m")), Size: 60}}}}
	goldenHits = Hits{N: 42, Last: time.Unix(1700000001, 7).UTC()}
)

// Every index value is pinned by a golden vector: the encoding of a fixed
// value must not change, and the stored bytes must decode to that value.
func TestGolden(t *testing.T) {
	stored := golden.Hex(t, "chunk-info.hex", goldenChunk.Encode())
	if ci, err := DecodeChunkInfo(stored); err != nil || ci != goldenChunk {
		t.Errorf("stored chunk info decodes as %+v, %v", ci, err)
	}
	stored = golden.Hex(t, "chunk-info-framed.hex", goldenFramed.Encode())
	if ci, err := DecodeChunkInfo(stored); err != nil || ci != goldenFramed {
		t.Errorf("stored framed chunk info decodes as %+v, %v", ci, err)
	}
	stored = golden.Hex(t, "layer-record.hex", goldenLayer.Encode())
	lr, err := DecodeLayerRecord(goldenLayer.Digest, stored)
	if err != nil || lr.Size != goldenLayer.Size || lr.Stored != goldenLayer.Stored || lr.MediaType != goldenLayer.MediaType ||
		!lr.Created.Equal(goldenLayer.Created) || len(lr.Recipe) != 2 || lr.Recipe[0] != goldenLayer.Recipe[0] || lr.Recipe[1] != goldenLayer.Recipe[1] {
		t.Errorf("stored layer record decodes as %+v, %v", lr, err)
	}
	stored = golden.Hex(t, "rebuilt-record.hex", goldenRebuilt.Encode())
	lr, err = DecodeLayerRecord(goldenRebuilt.Digest, stored)
	if err != nil || lr.Size != goldenRebuilt.Size || lr.RawSize() != 300 || string(lr.Rebuild) != string(goldenRebuilt.Rebuild) ||
		lr.MediaType != goldenRebuilt.MediaType || len(lr.Recipe) != 2 || lr.Recipe[1] != goldenRebuilt.Recipe[1] {
		t.Errorf("stored rebuilt record decodes as %+v, %v", lr, err)
	}
	stored = golden.Hex(t, "tar-record.hex", goldenTar.Encode())
	lr, err = DecodeLayerRecord(goldenTar.Digest, stored)
	if err != nil || lr.Size != 350 || lr.RawSize() != 350 || lr.Tar == nil || len(lr.Tar.Meta) != 1 || lr.Tar.Meta[0] != goldenTar.Tar.Meta[0] ||
		len(lr.Recipe) != 2 || lr.Rebuild != nil {
		t.Errorf("stored tar record decodes as %+v, %v", lr, err)
	}
	rebuiltTar := *goldenTar
	rebuiltTar.Size, rebuiltTar.Rebuild = 200, goldenRebuilt.Rebuild
	stored = golden.Hex(t, "rebuilt-tar-record.hex", rebuiltTar.Encode())
	if lr, err = DecodeLayerRecord(goldenTar.Digest, stored); err != nil || lr.Size != 200 || lr.RawSize() != 350 || string(lr.Rebuild) != string(goldenRebuilt.Rebuild) {
		t.Errorf("stored rebuilt tar record decodes as %+v, %v", lr, err)
	}
	stored = golden.Hex(t, "hits.hex", goldenHits.Encode())
	if h, err := DecodeHits(stored); err != nil || h != goldenHits {
		t.Errorf("stored hits decode as %+v, %v", h, err)
	}
	stored = golden.Hex(t, "access-time.hex", encodeTime(goldenHits.Last))
	if tm, err := decodeTime(stored); err != nil || !tm.Equal(goldenHits.Last) {
		t.Errorf("stored access time decodes as %v, %v", tm, err)
	}
	if string(chunkKey(chunkid.ID{1})[:2]) != "c/" || string(layerKey("sha256:x")) != "l/sha256:x" || string(accessKey("d")) != "a/d" ||
		string(stepKey("k")) != "k/k" || string(hitsKey("k")) != "h/k" || Format != "cairn-index-3" {
		t.Errorf("index keys changed: a format change")
	}
}

// A corrupt value is ErrDataLoss, never anything a caller would retry.
func TestCorruptValues(t *testing.T) {
	for name, decode := range map[string]func([]byte) error{
		"chunk": func(b []byte) error { _, err := DecodeChunkInfo(b); return err },
		"layer": func(b []byte) error { _, err := DecodeLayerRecord(goldenLayer.Digest, b); return err },
		"hits":  func(b []byte) error { _, err := DecodeHits(b); return err },
		"time":  func(b []byte) error { _, err := decodeTime(b); return err },
	} {
		for _, b := range [][]byte{nil, {0x80}, {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}} {
			if err := decode(b); !errors.Is(err, cerr.ErrDataLoss) {
				t.Errorf("%s %x: %v, want ErrDataLoss", name, b, err)
			}
		}
	}
	for _, full := range [][]byte{goldenLayer.Encode(), goldenRebuilt.Encode(), goldenTar.Encode()} {
		for _, b := range [][]byte{full[:len(full)-1], append(bytes.Clone(full), 0)} {
			if _, err := DecodeLayerRecord(goldenLayer.Digest, b); !errors.Is(err, cerr.ErrDataLoss) {
				t.Errorf("layer record of %d bytes (of %d): %v, want ErrDataLoss", len(b), len(full), err)
			}
		}
	}
}

func FuzzLayerRecord(f *testing.F) {
	f.Add(goldenLayer.Encode())
	f.Add(goldenRebuilt.Encode())
	f.Add(goldenTar.Encode())
	f.Add([]byte{layerRecordVersion})
	f.Add([]byte{layerRecordVersion, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := DecodeLayerRecord(goldenLayer.Digest, b)
		if err != nil {
			if !errors.Is(err, cerr.ErrDataLoss) {
				t.Fatalf("error %v is not ErrDataLoss", err)
			}
			return
		}
		var sum int64
		for _, e := range got.Recipe {
			sum += e.Size
		}
		if got.RawSize() != got.Size && got.Rebuild == nil {
			t.Fatalf("accepted chunks of %d bytes for a layer of %d", sum, got.Size)
		}
		if again, err := DecodeLayerRecord(goldenLayer.Digest, got.Encode()); err != nil || len(again.Recipe) != len(got.Recipe) || !bytes.Equal(again.Rebuild, got.Rebuild) {
			t.Fatalf("re-encoding does not decode: %v", err)
		}
	})
}

// Readers size buffers and slice packs by chunk index entries: whatever
// decodes must be within bounds.
func FuzzChunkInfo(f *testing.F) {
	f.Add(goldenChunk.Encode())
	f.Add(goldenFramed.Encode())
	f.Add([]byte{0x80})
	f.Fuzz(func(t *testing.T, b []byte) {
		ci, err := DecodeChunkInfo(b)
		if err != nil {
			if !errors.Is(err, cerr.ErrDataLoss) {
				t.Fatalf("error %v is not ErrDataLoss", err)
			}
			return
		}
		record := max(ci.Size, ci.Frame)
		if ci.Size < 1 || ci.Size > pack.MaxChunkSize || ci.Stored < pack.HeaderSize || uint64(ci.Stored) > pack.MaxRecordSize(uint64(record)) ||
			ci.Frame < 0 || ci.Frame > pack.MaxFrameSize || ci.InFrame < 0 || (ci.Frame > 0 && ci.InFrame+ci.Size > ci.Frame) || (ci.Frame == 0 && ci.InFrame != 0) ||
			ci.Refs < 0 || ci.Added < 0 || ci.Off < 0 || ci.Off+ci.Stored < 0 {
			t.Fatalf("accepted %+v", ci)
		}
		if again, err := DecodeChunkInfo(ci.Encode()); err != nil || again != ci {
			t.Fatalf("round trip of %+v: %+v, %v", ci, again, err)
		}
	})
}
