package chunker

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"
)

// FuzzChunker checks the chunker's invariants on arbitrary input, small
// parameters (so that short inputs hold many chunks) and arbitrary read
// sizes: the unrolled Cut agrees with the one-byte reference rule, every
// chunk but the last lies within [Min, Max], the Chunker finds the same
// boundaries as Cut whatever the reads return, and the chunks put together
// give the input back.
//
//	go test -run '^$' -fuzz '^FuzzChunker$' -fuzztime 1m -fuzzminimizetime 3s ./chunker/
//
// (Minimizing a new input at the default 60 s shows as minutes of "0/sec".)
func FuzzChunker(f *testing.F) {
	f.Add([]byte{}, uint8(0), uint8(0), uint8(0), uint64(1))
	f.Add([]byte{1, 2, 3}, uint8(1), uint8(2), uint8(3), uint64(2))
	f.Add(seeded(5000, 10), uint8(0), uint8(2), uint8(2), uint64(3))
	f.Add(seeded(20000, 11), uint8(2), uint8(4), uint8(1), uint64(4))
	f.Add(seeded(3000, 12), uint8(1), uint8(0), uint8(0), uint64(5))
	f.Add(make([]byte, 10000), uint8(0), uint8(3), uint8(2), uint64(6))
	f.Add(bytes.Repeat([]byte{0xff}, 7000), uint8(2), uint8(1), uint8(2), uint64(7))
	f.Add(bytes.Repeat([]byte("func main() {}\n"), 800), uint8(1), uint8(1), uint8(1), uint64(8))
	f.Fuzz(func(t *testing.T, data []byte, minShift, avgShift, maxShift uint8, seed uint64) {
		avg := 64 << (avgShift % 5) // 64 B to 1 KiB
		p := Params{Min: max(MinSizeLimit, avg>>(minShift%3)), Avg: avg, Max: avg << (maxShift % 3)}
		if err := p.Validate(); err != nil {
			t.Fatal(err)
		}
		want := split(data, p)
		checkBounds(t, want, p)
		off := 0
		for i, n := range want {
			if r := refCut(data[off:], p); r != n {
				t.Fatalf("%+v: chunk %d at %d: Cut = %d, reference = %d", p, i, off, n, r)
			}
			off += n
		}
		rng := rand.New(rand.NewPCG(seed, 0))
		r := &randReader{bytes.NewReader(data), rng, 1 + rng.IntN(3*p.Max)}
		sizes, all := stream(t, r, p)
		if !bytes.Equal(all, data) {
			t.Fatalf("%+v: concatenated chunks differ from the input", p)
		}
		if fmt.Sprint(sizes) != fmt.Sprint(want) {
			t.Fatalf("%+v: Chunker cut %v, Cut %v", p, sizes, want)
		}
	})
}
