package pack

import (
	"bytes"
	"context"
	"errors"
	"io"
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

// The stored formats are pinned: a chunk record header and a pack's table
// and footer.
func TestGolden(t *testing.T) {
	hdr := make([]byte, HeaderSize)
	PutHeader(hdr, 1234)
	stored := golden.Hex(t, "chunk-header.hex", hdr)
	if size, payload, err := ParseHeader(stored); err != nil || size != 1234 || len(payload) != 0 {
		t.Errorf("stored header parses as %d, %d payload bytes, %v", size, len(payload), err)
	}

	tail := AppendTable(nil, goldenEntries)
	stored = golden.Hex(t, "pack-table.hex", tail)
	packSize := int64(120 + len(stored))
	footer := stored[len(stored)-FooterSize:]
	n, err := ParseFooter(footer, packSize)
	if err != nil || n != 2 {
		t.Fatalf("stored footer: %d entries, %v", n, err)
	}
	got, err := ParseTable(stored[:len(stored)-FooterSize], footer, packSize)
	if err != nil || len(got) != 2 || got[0] != goldenEntries[0] || got[1] != goldenEntries[1] {
		t.Errorf("stored table parses as %+v, %v", got, err)
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

func parsePack(b []byte) ([]Entry, error) {
	if len(b) < FooterSize {
		return nil, errors.New("short")
	}
	footer := b[len(b)-FooterSize:]
	n, err := ParseFooter(footer, int64(len(b)))
	if err != nil {
		return nil, err
	}
	start := len(b) - FooterSize - n*EntrySize
	return ParseTable(b[start:len(b)-FooterSize], footer, int64(len(b)))
}

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
	// Entries must describe records back to back, ending at the table.
	for _, bad := range [][]Entry{
		{{ID: chunkid.ID{1}, Off: 0, Stored: 100, Size: 300}, {ID: chunkid.ID{2}, Off: 101, Stored: 19, Size: 1}},
		{{ID: chunkid.ID{1}, Off: 0, Stored: 120, Size: 0}},
		{{ID: chunkid.ID{1}, Off: 0, Stored: 120, Size: MaxChunkSize + 1}},
		{{ID: chunkid.ID{1}, Off: 0, Stored: 8, Size: 1}, {ID: chunkid.ID{2}, Off: 8, Stored: 112, Size: 1}},
		{{ID: chunkid.ID{1}, Off: 0, Stored: 119, Size: 1}},
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
		size, payload, err := ParseHeader(b)
		if err != nil {
			return
		}
		if size < 1 || size > MaxChunkSize || len(payload) != len(b)-HeaderSize {
			t.Fatalf("accepted size %d, payload %d of %d", size, len(payload), len(b))
		}
	})
}

func FuzzTable(f *testing.F) {
	f.Add(AppendTable(make([]byte, 120), []Entry{{ID: chunkid.ID{1}, Stored: 100, Size: 300}, {ID: chunkid.ID{2}, Off: 100, Stored: 20, Size: 7}}))
	f.Add(AppendTable(nil, nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) < FooterSize {
			return
		}
		footer := b[len(b)-FooterSize:]
		n, err := ParseFooter(footer, int64(len(b)))
		if err != nil {
			return
		}
		start := len(b) - FooterSize - n*EntrySize
		if start < 0 {
			t.Fatalf("footer of %d entries accepted in %d bytes", n, len(b))
		}
		entries, err := ParseTable(b[start:len(b)-FooterSize], footer, int64(len(b)))
		if err != nil {
			return
		}
		var next int64
		for _, e := range entries {
			if e.Off != next || e.Stored < HeaderSize || e.Size <= 0 || e.Size > MaxChunkSize {
				t.Fatalf("accepted entry %+v", e)
			}
			next += e.Stored
		}
		if next != int64(start) {
			t.Fatalf("records end at %d, table at %d", next, start)
		}
	})
}
