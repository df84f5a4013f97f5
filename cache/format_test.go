package cache

import (
	"bytes"
	"errors"
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

func TestPackKey(t *testing.T) {
	id := packID{0xab, 0xcd}
	key := packKey(id)
	if key != "packs/ab/abcd0000000000000000000000000000" {
		t.Errorf("packKey = %s", key)
	}
	back, ok := packIDFromKey(key)
	if !ok || back != id {
		t.Errorf("packIDFromKey(%s) = %v, %v", key, back, ok)
	}
	for _, bad := range []string{"packs/ab", "packs/cd/" + key[9:], "layers/sha256/x", key + "0", "chunks/ab/" + key[9:]} {
		if _, ok := packIDFromKey(bad); ok {
			t.Errorf("packIDFromKey(%q) accepted", bad)
		}
	}
}

// A pack's table round-trips, and every kind of damage to it is caught.
func TestPackTable(t *testing.T) {
	entries := []packEntry{
		{id: chunkID{1}, off: 0, stored: 100, size: 300},
		{id: chunkID{2}, off: 100, stored: 20, size: 1 << 20},
	}
	records := make([]byte, 120)
	body := appendPackTable(records, entries)
	parse := func(b []byte) ([]packEntry, error) {
		if len(b) < packFooterSize {
			return nil, errors.New("short")
		}
		footer := b[len(b)-packFooterSize:]
		n, err := parsePackFooter(footer, int64(len(b)))
		if err != nil {
			return nil, err
		}
		start := len(b) - packFooterSize - n*packEntrySize
		return parsePackTable(b[start:len(b)-packFooterSize], footer, int64(len(b)))
	}
	got, err := parse(body)
	if err != nil || len(got) != 2 || got[0] != entries[0] || got[1] != entries[1] {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	tableAt := len(records)
	for _, tc := range []struct {
		reason string
		b      []byte
	}{
		{"flipped table byte", flip(body, tableAt+40)},
		{"bad magic", flip(body, len(body)-packFooterSize)},
		{"other version", flip(body, len(body)-packFooterSize+4)},
		{"count too high", flip(body, len(body)-8)},
		{"flipped checksum", flip(body, len(body)-1)},
		{"extra bytes before the table", append([]byte{0}, body...)},
		{"records missing", body[20:]},
	} {
		if _, err := parse(tc.b); err == nil {
			t.Errorf("%s: accepted", tc.reason)
		}
	}
	// Entries must describe records back to back, ending at the table.
	for _, bad := range [][]packEntry{
		{{id: chunkID{1}, off: 0, stored: 100, size: 300}, {id: chunkID{2}, off: 101, stored: 19, size: 1}},
		{{id: chunkID{1}, off: 0, stored: 120, size: 0}},
		{{id: chunkID{1}, off: 0, stored: 120, size: MaxChunkSize + 1}},
		{{id: chunkID{1}, off: 0, stored: 8, size: 1}, {id: chunkID{2}, off: 8, stored: 112, size: 1}},
		{{id: chunkID{1}, off: 0, stored: 119, size: 1}},
	} {
		if got, err := parse(appendPackTable(bytes.Clone(records), bad)); err == nil {
			t.Errorf("table %+v accepted as %+v", bad, got)
		}
	}
}

func FuzzPackTable(f *testing.F) {
	f.Add(appendPackTable(make([]byte, 120), []packEntry{{id: chunkID{1}, stored: 100, size: 300}, {id: chunkID{2}, off: 100, stored: 20, size: 7}}))
	f.Add(appendPackTable(nil, nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) < packFooterSize {
			return
		}
		footer := b[len(b)-packFooterSize:]
		n, err := parsePackFooter(footer, int64(len(b)))
		if err != nil {
			return
		}
		start := len(b) - packFooterSize - n*packEntrySize
		if start < 0 {
			t.Fatalf("footer of %d entries accepted in %d bytes", n, len(b))
		}
		entries, err := parsePackTable(b[start:len(b)-packFooterSize], footer, int64(len(b)))
		if err != nil {
			return
		}
		var next int64
		for _, e := range entries {
			if e.off != next || e.stored < chunkHeaderSize || e.size <= 0 || e.size > MaxChunkSize {
				t.Fatalf("accepted entry %+v", e)
			}
			next += e.stored
		}
		if next != int64(start) {
			t.Fatalf("records end at %d, table at %d", next, start)
		}
	})
}

// Chunk digests follow package chunkid (tested there); the cache reports
// a bad one as ErrInvalidArgument.
func TestParseChunkID(t *testing.T) {
	good := ChunkDigest([]byte("chunk"))
	if id, err := parseChunkID(good); err != nil || id.Digest() != good {
		t.Errorf("parseChunkID(%s) = %s, %v", good, id, err)
	}
	for _, bad := range []digest.Digest{"", "sha256:" + good[7:], good + "0"} {
		if _, err := parseChunkID(bad); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("parseChunkID(%q) = %v, want ErrInvalidArgument", bad, err)
		}
	}
}

// Readers size buffers and slice packs by chunk index entries: whatever
// decodes must be within bounds.
func FuzzChunkInfo(f *testing.F) {
	f.Add(chunkInfo{size: 1000, stored: 400, refs: 2, added: 1, pack: packID{1}, off: 77}.encode())
	f.Add([]byte{0x80})
	f.Fuzz(func(t *testing.T, b []byte) {
		ci, err := decodeChunkInfo(b)
		if err != nil {
			if !errors.Is(err, ErrDataLoss) {
				t.Fatalf("error %v is not ErrDataLoss", err)
			}
			return
		}
		if ci.size < 1 || ci.size > MaxChunkSize || ci.stored < chunkHeaderSize || uint64(ci.stored) > maxRecordSize(uint64(ci.size)) ||
			ci.refs < 0 || ci.added < 0 || ci.off < 0 || ci.off+ci.stored < 0 {
			t.Fatalf("accepted %+v", ci)
		}
		if again, err := decodeChunkInfo(ci.encode()); err != nil || again != ci {
			t.Fatalf("round trip of %+v: %+v, %v", ci, again, err)
		}
	})
}
