package index

import (
	"testing"

	"github.com/dgraph-io/badger/v4"

	"github.com/cairnbuild/cairn/cache/internal/pack"
	"github.com/cairnbuild/cairn/chunkid"
)

// MoveChunks moves an entry only if it still names the copy the move was
// read from (pack, record offset and offset in the frame), keeps its
// references and touch, and takes the new copy's frame fields.
func TestMoveChunks(t *testing.T) {
	x, err := Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	a, b, to := pack.ID{1}, pack.ID{2}, pack.ID{3}
	id1, id2 := chunkid.Sum([]byte("one")), chunkid.Sum([]byte("two"))
	// Two chunks of one frame in pack a.
	frame := []pack.Entry{
		{ID: id1, Off: 0, Stored: 100, Size: 300, InFrame: 0, Frame: 500},
		{ID: id2, Off: 0, Stored: 100, Size: 200, InFrame: 300, Frame: 500},
	}
	if err := x.AddChunks(a, frame); err != nil {
		t.Fatal(err)
	}
	before, _, err := x.Chunks([]chunkid.ID{id1, id2})
	if err != nil {
		t.Fatal(err)
	}
	dest := pack.Entry{Off: 0, Stored: 150, Size: 300}
	for _, tc := range []struct {
		name string
		m    Move
		want bool
	}{
		{"from another pack", Move{ID: id1, From: b, FromOff: 0, FromInFrame: 0}, false},
		{"from another record", Move{ID: id1, From: a, FromOff: 16, FromInFrame: 0}, false},
		{"from another place in the frame", Move{ID: id1, From: a, FromOff: 0, FromInFrame: 300}, false},
		{"from where it is", Move{ID: id1, From: a, FromOff: 0, FromInFrame: 0}, true},
	} {
		m := tc.m
		m.To = dest
		m.To.ID = m.ID
		n, err := x.MoveChunks(to, []Move{m})
		if err != nil || (n == 1) != tc.want {
			t.Errorf("%s: moved %d, %v; want moved %v", tc.name, n, err, tc.want)
		}
	}
	got, _, err := x.Chunks([]chunkid.ID{id1, id2})
	if err != nil {
		t.Fatal(err)
	}
	want := before[0]
	want.Pack, want.Off, want.Stored, want.InFrame, want.Frame = to, 0, 150, 0, 0
	if got[0] != want {
		t.Errorf("moved entry %+v, want %+v", got[0], want)
	}
	if got[1] != before[1] {
		t.Errorf("its frame neighbour changed: %+v, was %+v", got[1], before[1])
	}
}

// An index of format 2 (packs of one record per chunk) opens and is
// marked 3, so that an older cairn refuses it once it may hold entries in
// frames; other formats are refused.
func TestFormatUpgrade(t *testing.T) {
	for _, tc := range []struct {
		found string
		ok    bool
	}{{"cairn-index-2", true}, {"cairn-index-3", true}, {"cairn-index-1", false}, {"cairn-index-4", false}} {
		dir := t.TempDir()
		x, err := Open(dir, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := x.update("set format", func(txn *badger.Txn) error { return txn.Set(idxFormat, []byte(tc.found)) }); err != nil {
			t.Fatal(err)
		}
		x.Close()
		x, err = Open(dir, nil)
		if (err == nil) != tc.ok {
			t.Fatalf("an index of format %q: %v", tc.found, err)
		}
		if err != nil {
			continue
		}
		var got string
		err = x.View("read format", func(tx *Tx) error {
			item, err := tx.txn.Get(idxFormat)
			if err != nil {
				return err
			}
			return item.Value(func(v []byte) error { got = string(v); return nil })
		})
		x.Close()
		if err != nil || got != Format {
			t.Errorf("an index of format %q is marked %q after Open (%v), want %q", tc.found, got, err, Format)
		}
	}
}

// Hints name the pack set last for a feature, count the features naming
// each pack, and PruneHints drops those naming packs refused, page by page.
func TestHints(t *testing.T) {
	x, err := Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	a, b := pack.ID{1}, pack.ID{2}
	if err := x.SetHints(a, []uint64{1, 2, 3}); err != nil {
		t.Fatal(err)
	}
	if err := x.SetHints(b, []uint64{3, 4}); err != nil { // 3 moves to b
		t.Fatal(err)
	}
	got, err := x.Hints([]uint64{1, 2, 3, 4, 5})
	if err != nil || len(got) != 2 || got[a] != 2 || got[b] != 2 {
		t.Fatalf("Hints = %v, %v; want a: 2, b: 2", got, err)
	}
	n, err := x.PruneHints(1, func(p pack.ID) bool { return p == a })
	if err != nil || n != 2 {
		t.Fatalf("PruneHints pruned %d, %v; want 2", n, err)
	}
	got, err = x.Hints([]uint64{1, 2, 3, 4, 5})
	if err != nil || len(got) != 1 || got[a] != 2 {
		t.Fatalf("after pruning b: %v, %v", got, err)
	}
}
