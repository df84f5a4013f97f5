package pack

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"slices"
	"testing"

	"github.com/cairnbuild/cairn/internal/golden"

	"github.com/cairnbuild/cairn/backend/mem"
	"github.com/cairnbuild/cairn/cache/internal/cerr"
	"github.com/cairnbuild/cairn/chunkid"
)

var goldenEntries = []Entry{
	{ID: chunkid.Sum([]byte("one")), Off: 0, Stored: 100, Size: 300},
	{ID: chunkid.Sum([]byte("two")), Off: 100, Stored: 20, Size: 1 << 20},
}

// Version 2: a record of one chunk, then a frame of three.
var goldenEntries2 = []Entry{
	{ID: chunkid.Sum([]byte("one")), Off: 0, Stored: 100, Size: 300},
	{ID: chunkid.Sum([]byte("two")), Off: 100, Stored: 50, Size: 1000, InFrame: 0, Frame: 1600},
	{ID: chunkid.Sum([]byte("three")), Off: 100, Stored: 50, Size: 500, InFrame: 1000, Frame: 1600},
	{ID: chunkid.Sum([]byte("four")), Off: 100, Stored: 50, Size: 100, InFrame: 1500, Frame: 1600},
}

// The stored formats are pinned: a record header of each codec and a
// pack's table and footer in each version (version 1 is still read).
func TestGolden(t *testing.T) {
	hdr := make([]byte, HeaderSize)
	PutHeader(hdr, 1234)
	stored := golden.Hex(t, "chunk-header.hex", hdr)
	if size, frame, payload, err := ParseHeader(stored); err != nil || size != 1234 || frame || len(payload) != 0 {
		t.Errorf("stored header parses as %d, frame %v, %d payload bytes, %v", size, frame, len(payload), err)
	}
	PutFrameHeader(hdr, 1600)
	stored = golden.Hex(t, "frame-header.hex", hdr)
	if size, frame, payload, err := ParseHeader(stored); err != nil || size != 1600 || !frame || len(payload) != 0 {
		t.Errorf("stored frame header parses as %d, frame %v, %d payload bytes, %v", size, frame, len(payload), err)
	}

	for _, tc := range []struct {
		file    string
		version byte
		entries []Entry
		records int64
	}{
		{"pack-table.hex", 1, goldenEntries, 120},
		{"pack-table-v2.hex", 2, goldenEntries2, 150},
	} {
		stored = golden.Hex(t, tc.file, appendTable(nil, tc.entries, tc.version))
		packSize := tc.records + int64(len(stored))
		footer := stored[len(stored)-FooterSize:]
		n, size, err := ParseFooter(footer, packSize)
		if err != nil || n != len(tc.entries) || size != len(stored)-FooterSize {
			t.Fatalf("%s: stored footer: %d entries in %d bytes, %v", tc.file, n, size, err)
		}
		got, err := ParseTable(stored[:len(stored)-FooterSize], footer, packSize)
		if err != nil || !slices.Equal(got, tc.entries) {
			t.Errorf("%s: stored table parses as %+v, %v", tc.file, got, err)
		}
	}
	if !bytes.Equal(AppendTable(nil, goldenEntries2), appendTable(nil, goldenEntries2, 2)) {
		t.Error("AppendTable does not write version 2")
	}
}

func TestKey(t *testing.T) {
	id := ID{0xab, 0xcd}
	key := Key(id)
	if key != "packs/ab/abcd0000000000000000000000000000" {
		t.Errorf("Key = %s", key)
	}
	back, ok := IDFromKey(key)
	if !ok || back != id {
		t.Errorf("IDFromKey(%s) = %v, %v", key, back, ok)
	}
	for _, bad := range []string{"packs/ab", "packs/cd/" + key[9:], "layers/sha256/x", key + "0", "chunks/ab/" + key[9:]} {
		if _, ok := IDFromKey(bad); ok {
			t.Errorf("IDFromKey(%q) accepted", bad)
		}
	}
}

func parsePack(b []byte) ([]Entry, error) { return Parse(b) }

func flip(b []byte, i int) []byte {
	c := bytes.Clone(b)
	c[i] ^= 0x40
	return c
}

// A pack's table round-trips, and every kind of damage to it is caught.
func TestTable(t *testing.T) {
	entries := []Entry{
		{ID: chunkid.ID{1}, Off: 0, Stored: 100, Size: 300},
		{ID: chunkid.ID{2}, Off: 100, Stored: 20, Size: 1 << 20},
	}
	records := make([]byte, 120)
	body := AppendTable(records, entries)
	got, err := parsePack(body)
	if err != nil || len(got) != 2 || got[0] != entries[0] || got[1] != entries[1] {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	tableAt := len(records)
	for _, tc := range []struct {
		reason string
		b      []byte
	}{
		{"flipped table byte", flip(body, tableAt+40)},
		{"bad magic", flip(body, len(body)-FooterSize)},
		{"other version", flip(body, len(body)-FooterSize+4)},
		{"count too high", flip(body, len(body)-8)},
		{"flipped checksum", flip(body, len(body)-1)},
		{"extra bytes before the table", append([]byte{0}, body...)},
		{"records missing", body[20:]},
	} {
		if _, err := parsePack(tc.b); err == nil {
			t.Errorf("%s: accepted", tc.reason)
		}
	}
	// A frame's chunks share its record and fill it.
	framed := []Entry{
		{ID: chunkid.ID{1}, Off: 0, Stored: 100, Size: 300, InFrame: 0, Frame: 400},
		{ID: chunkid.ID{2}, Off: 0, Stored: 100, Size: 100, InFrame: 300, Frame: 400},
		{ID: chunkid.ID{3}, Off: 100, Stored: 20, Size: 7},
	}
	if got, err := parsePack(AppendTable(bytes.Clone(records), framed)); err != nil || !slices.Equal(got, framed) {
		t.Fatalf("frames round trip: %+v, %v", got, err)
	}
	// Entries must describe records back to back, ending at the table,
	// and frames exactly filled by their chunks.
	for _, bad := range [][]Entry{
		{{ID: chunkid.ID{1}, Off: 0, Stored: 100, Size: 300}, {ID: chunkid.ID{2}, Off: 101, Stored: 19, Size: 1}},
		{{ID: chunkid.ID{1}, Off: 0, Stored: 120, Size: 0}},
		{{ID: chunkid.ID{1}, Off: 0, Stored: 120, Size: MaxChunkSize + 1}},
		{{ID: chunkid.ID{1}, Off: 0, Stored: 8, Size: 1}, {ID: chunkid.ID{2}, Off: 8, Stored: 112, Size: 1}},
		{{ID: chunkid.ID{1}, Off: 0, Stored: 119, Size: 1}},
		{{ID: chunkid.ID{1}, Off: 0, Stored: 120, Size: 1, InFrame: 1}},                                       // in a frame of none
		{{ID: chunkid.ID{1}, Off: 0, Stored: 120, Size: 300, Frame: 400}},                                     // frame not filled
		{{ID: chunkid.ID{1}, Off: 0, Stored: 120, Size: 300, InFrame: 200, Frame: 400}},                       // past the frame
		{{ID: chunkid.ID{1}, Off: 0, Stored: 120, Size: 300, Frame: MaxFrameSize + 1}},                        // frame too large
		{{ID: chunkid.ID{1}, Off: 0, Stored: 120, Size: 300, InFrame: 100, Frame: 400}},                       // frame starts inside
		{framed[0], {ID: chunkid.ID{2}, Off: 0, Stored: 100, Size: 100, InFrame: 200, Frame: 400}, framed[2]}, // overlap
		{framed[0], {ID: chunkid.ID{2}, Off: 0, Stored: 120, Size: 100, InFrame: 300, Frame: 400}},            // other record length
		{framed[0], {ID: chunkid.ID{2}, Off: 100, Stored: 20, Size: 7}},                                       // frame left unfilled
	} {
		if got, err := parsePack(AppendTable(bytes.Clone(records), bad)); err == nil {
			t.Errorf("table %+v accepted as %+v", bad, got)
		}
	}
}

// records returns n records of the given sizes, back to back, and their
// entries.
func records(sizes ...int) ([]byte, []Entry) {
	var body []byte
	var entries []Entry
	for i, s := range sizes {
		rec := make([]byte, HeaderSize+10)
		PutHeader(rec, s)
		entries = append(entries, Entry{ID: chunkid.Sum([]byte{byte(i)}), Off: int64(len(body)), Stored: int64(len(rec)), Size: int64(s)})
		body = append(body, rec...)
	}
	return body, entries
}

// Seal reads back what it wrote and refuses a pack whose entries do not
// describe its records.
func TestSeal(t *testing.T) {
	body, entries := records(100, 200, 300)
	sealed, err := Seal(bytes.Clone(body), entries)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := parsePack(sealed); err != nil || len(got) != 3 {
		t.Fatalf("sealed pack: %+v, %v", got, err)
	}
	for _, tc := range []struct {
		reason string
		edit   func(b []byte, e []Entry) ([]byte, []Entry)
	}{
		{"record header damaged", func(b []byte, e []Entry) ([]byte, []Entry) { b[e[1].Off] ^= 1; return b, e }},
		{"size differs from the header", func(b []byte, e []Entry) ([]byte, []Entry) { e[2].Size++; return b, e }},
		{"a record of one chunk said to be a frame", func(b []byte, e []Entry) ([]byte, []Entry) { e[2].Frame = e[2].Size; return b, e }},
		{"records and entries disagree", func(b []byte, e []Entry) ([]byte, []Entry) { return b[:len(b)-1], e }},
		{"no entries", func(b []byte, e []Entry) ([]byte, []Entry) { return nil, nil }},
	} {
		b, e := records(100, 200, 300)
		b, e = tc.edit(b, e)
		if _, err := Seal(b, e); err == nil {
			t.Errorf("%s: sealed", tc.reason)
		}
	}
}

// countingStore counts the reads ReadTable makes.
type countingStore struct {
	*mem.Store
	opens int
}

func (s *countingStore) Open(ctx context.Context, key string, off, n int64) (io.ReadCloser, error) {
	s.opens++
	return s.Store.Open(ctx, key, off, n)
}

// ReadTable learns a pack's contents from one ranged read of its tail, and
// reports a damaged or truncated pack as ErrDataLoss.
func TestReadTable(t *testing.T) {
	ctx := context.Background()
	store := &countingStore{Store: mem.New()}
	body, entries := records(1, 2, 3, 4)
	sealed, err := Seal(body, entries)
	if err != nil {
		t.Fatal(err)
	}
	put := func(key string, b []byte) {
		if err := store.Put(ctx, key, bytes.NewReader(b), int64(len(b))); err != nil {
			t.Fatal(err)
		}
	}
	put("p", sealed)
	got, err := ReadTable(ctx, store, "p", int64(len(sealed)))
	if err != nil || len(got) != 4 || got[3] != entries[3] {
		t.Fatalf("ReadTable: %+v, %v", got, err)
	}
	if store.opens != 1 {
		t.Errorf("ReadTable made %d reads, want 1", store.opens)
	}
	put("short", sealed[:len(sealed)-3])
	put("flipped", flip(sealed, len(sealed)-20))
	for key, size := range map[string]int64{"short": int64(len(sealed) - 3), "flipped": int64(len(sealed)), "missing": 100, "tiny": 3} {
		if _, err := ReadTable(ctx, store, key, size); !errors.Is(err, cerr.ErrDataLoss) {
			t.Errorf("%s: %v, want ErrDataLoss", key, err)
		}
	}
	// A table larger than the first read costs a second one and still
	// reads right.
	sizes := make([]int, 500)
	for i := range sizes {
		sizes[i] = 1 + i
	}
	body, entries = records(sizes...)
	sealed, err = Seal(body, entries)
	if err != nil {
		t.Fatal(err)
	}
	put("big", sealed)
	got, err = ReadTable(ctx, store, "big", int64(len(sealed)))
	if err != nil || len(got) != 500 || got[499] != entries[499] {
		t.Fatalf("ReadTable of 500 entries: %d, %v", len(got), err)
	}
}

func FuzzHeader(f *testing.F) {
	hdr := make([]byte, HeaderSize)
	PutHeader(hdr, 1234)
	f.Add(hdr)
	f.Add([]byte("CRNC"))
	f.Fuzz(func(t *testing.T, b []byte) {
		size, frame, payload, err := ParseHeader(b)
		if err != nil {
			return
		}
		if size < 1 || size > MaxChunkSize || (frame && size > MaxFrameSize) || len(payload) != len(b)-HeaderSize {
			t.Fatalf("accepted size %d, payload %d of %d", size, len(payload), len(b))
		}
	})
}

func FuzzTable(f *testing.F) {
	f.Add(AppendTable(make([]byte, 120), []Entry{{ID: chunkid.ID{1}, Stored: 100, Size: 300}, {ID: chunkid.ID{2}, Off: 100, Stored: 20, Size: 7}}))
	f.Add(appendTable(make([]byte, 120), goldenEntries, 1))
	f.Add(AppendTable(make([]byte, 150), goldenEntries2))
	f.Add(AppendTable(nil, nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) < FooterSize {
			return
		}
		footer := b[len(b)-FooterSize:]
		_, size, err := ParseFooter(footer, int64(len(b)))
		if err != nil {
			return
		}
		start := len(b) - FooterSize - size
		if start < 0 {
			t.Fatalf("footer of a %d-byte table accepted in %d bytes", size, len(b))
		}
		entries, err := ParseTable(b[start:len(b)-FooterSize], footer, int64(len(b)))
		if err != nil {
			return
		}
		var next int64
		for i, e := range entries {
			if e.Stored < HeaderSize || e.Size <= 0 || e.Size > MaxChunkSize || e.Frame > MaxFrameSize || e.InFrame+e.Size > max(e.Frame, e.Size) {
				t.Fatalf("accepted entry %+v", e)
			}
			if e.InFrame > 0 { // inside a frame: right after its predecessor
				if p := entries[i-1]; p.Off != e.Off || p.InFrame+p.Size != e.InFrame {
					t.Fatalf("accepted entry %+v after %+v", e, p)
				}
				continue
			}
			if e.Off != next {
				t.Fatalf("accepted entry %+v, records end at %d", e, next)
			}
			next += e.Stored
		}
		if next != int64(start) {
			t.Fatalf("records end at %d, table at %d", next, start)
		}
	})
}

// FuzzTableEntries reaches the entry checks that FuzzTable's inputs
// seldom do (their checksums fail first): the fuzzer writes the table's
// entries, the harness a footer that agrees with them (count, checksum)
// after records bytes of records, and what ParseTable accepts must be
// what readers rely on: records back to back up to the table, each
// frame's chunks consecutive and filling it, every slice in bounds.
func FuzzTableEntries(f *testing.F) {
	for _, es := range [][]Entry{goldenEntries2, {{ID: chunkid.ID{1}, Stored: 100, Size: 300}}} {
		var end int64
		for _, e := range es {
			end = max(end, e.Off+e.Stored)
		}
		tail := AppendTable(nil, es)
		f.Add(uint32(end), tail[:len(tail)-FooterSize])
	}
	f.Fuzz(func(t *testing.T, records uint32, table []byte) {
		if len(table)%EntrySize != 0 || len(table)/EntrySize > MaxChunks || records > 64<<20 {
			return
		}
		b := make([]byte, int(records), int(records)+len(table)+FooterSize)
		b = append(b, table...)
		b = append(b, packMagic...)
		b = append(b, packVersion, chunkHashBLAKE3, 0, 0)
		b = binary.LittleEndian.AppendUint32(b, uint32(len(table)/EntrySize))
		b = binary.LittleEndian.AppendUint32(b, crc32.Checksum(table, crc32c))
		entries, err := Parse(b)
		if err != nil {
			return
		}
		var next int64
		for i, e := range entries {
			if e.Stored < HeaderSize || e.Size <= 0 || e.Size > MaxChunkSize || e.Frame < 0 || e.Frame > MaxFrameSize ||
				e.InFrame < 0 || (e.Frame == 0 && e.InFrame != 0) || (e.Frame > 0 && e.InFrame+e.Size > e.Frame) {
				t.Fatalf("accepted entry %d: %+v", i, e)
			}
			if e.InFrame > 0 {
				p := entries[i-1]
				if p.Off != e.Off || p.Stored != e.Stored || p.Frame != e.Frame || p.InFrame+p.Size != e.InFrame {
					t.Fatalf("accepted entry %d %+v after %+v", i, e, p)
				}
				continue
			}
			if e.Off != next {
				t.Fatalf("accepted entry %d %+v: records end at %d", i, e, next)
			}
			next = e.Off + e.Stored
			if next > int64(records) {
				t.Fatalf("entry %d ends at %d, past the records (%d)", i, next, records)
			}
			if i > 0 {
				if p := entries[i-1]; p.Frame != 0 && p.InFrame+p.Size != p.Frame {
					t.Fatalf("entry %d starts a record while the frame before is unfilled: %+v", i, p)
				}
			}
		}
		if n := len(entries); n > 0 {
			if last := entries[n-1]; last.Frame != 0 && last.InFrame+last.Size != last.Frame {
				t.Fatalf("the last frame is unfilled: %+v", last)
			}
		}
		if next != int64(records) {
			t.Fatalf("records end at %d, the table starts at %d", next, records)
		}
	})
}
