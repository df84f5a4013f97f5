package resemble

import (
	"math/rand/v2"
	"slices"
	"testing"
)

func random(seed uint64, n int) []byte {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)}).Read(b)
	return b
}

// shares reports whether a and b have a feature in common.
func shares(a, b Sketch) bool {
	for _, f := range a {
		if f != 0 && slices.Contains(b[:], f) {
			return true
		}
	}
	return false
}

// Versions of a chunk (a few bytes changed, bytes inserted at the front,
// the end cut) share features with it; unrelated chunks share none.
func TestSketch(t *testing.T) {
	base := random(1, 256<<10)
	edited := slices.Clone(base)
	r := rand.New(rand.NewPCG(1, 1))
	for range 20 {
		edited[r.IntN(len(edited))] ^= 0xff
	}
	shifted := append(random(2, 1000), base...)
	cut := base[:200<<10]
	s := Of(base)
	for name, v := range map[string][]byte{"edited": edited, "shifted": shifted, "cut": cut} {
		if !shares(s, Of(v)) {
			t.Errorf("%s: no feature in common with the original", name)
		}
	}
	for seed := range uint64(50) {
		if o := random(100+seed, 256<<10); shares(s, Of(o)) {
			t.Errorf("an unrelated chunk (seed %d) shares a feature", 100+seed)
		}
	}
	if Of(base) != s {
		t.Error("the sketch of the same bytes differs")
	}
	if Of(nil) != (Sketch{}) {
		t.Error("no bytes have a sketch")
	}
}

// Order groups each chunk with the earlier chunks it resembles, keeps the
// order of groups and of chunks that resemble nothing, caps groups, and
// returns every index once.
func TestOrder(t *testing.T) {
	a, b := random(1, 128<<10), random(2, 128<<10)
	va := slices.Clone(a)
	va[5000] ^= 1
	vb := slices.Clone(b)
	vb[7000] ^= 1
	va2 := slices.Clone(va)
	va2[9000] ^= 1
	chunks := [][]byte{a, b, random(3, 128<<10), va, vb, va2}
	var sketches []Sketch
	var sizes []int64
	for _, c := range chunks {
		sketches = append(sketches, Of(c))
		sizes = append(sizes, int64(len(c)))
	}
	got := Order(sketches, sizes, 1<<20)
	want := [][]int{{0, 3, 5}, {1, 4}, {2}}
	if !slices.EqualFunc(got, want, slices.Equal) {
		t.Errorf("Order = %v, want %v", got, want)
	}
	// A group full at two chunks: the third version starts its own.
	got = Order(sketches, sizes, 2*128<<10)
	want = [][]int{{0, 3}, {1, 4}, {2}, {5}}
	if !slices.EqualFunc(got, want, slices.Equal) {
		t.Errorf("Order with a cap of two chunks = %v, want %v", got, want)
	}
}

func BenchmarkSketch(b *testing.B) {
	data := random(1, 1<<20)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		Of(data)
	}
}
