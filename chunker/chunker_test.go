package chunker

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/iotest"
)

var update = flag.Bool("update", false, "rewrite the golden vectors in testdata/")

// goldenSeed seeds the ChaCha8 stream behind every seeded input here,
// including the golden vectors: exactly 32 bytes.
const goldenSeed = "cairn/chunker golden vectors v1!"

// seeded returns n pseudo-random bytes: the ChaCha8 stream of math/rand/v2
// keyed by goldenSeed, with its first byte xor-ed with salt so that tests can
// ask for different streams.
func seeded(n int, salt byte) []byte {
	var seed [32]byte
	copy(seed[:], goldenSeed)
	seed[0] ^= salt
	b := make([]byte, n)
	_, _ = rand.NewChaCha8(seed).Read(b)
	return b
}

// refCut is the V1 boundary rule written as plainly as possible, one byte per
// step, to cross-check the unrolled loop in Cut.
func refCut(data []byte, p Params) int {
	n := min(len(data), p.Max)
	if len(data) <= p.Min {
		return len(data)
	}
	bitsAvg := 0
	for 1<<bitsAvg < p.Avg {
		bitsAvg++
	}
	m := func(k int) uint64 { // k one bits, bits 62 down to 63-k
		var v uint64
		for j := 0; j < k; j++ {
			v |= 1 << (62 - j)
		}
		return v
	}
	var fp uint64
	for i := p.Min; i < n; i++ {
		fp = fp<<1 + gear[data[i]]
		mk := m(bitsAvg - 2)
		if i < p.Avg {
			mk = m(bitsAvg + 2)
		}
		if fp&mk == 0 {
			return i + 1
		}
	}
	return n
}

// split cuts data with repeated calls to Cut.
func split(data []byte, p Params) []int {
	var sizes []int
	for len(data) > 0 {
		n := Cut(data, p)
		sizes = append(sizes, n)
		data = data[n:]
	}
	return sizes
}

// stream cuts r with a Chunker and checks, for every chunk, that it starts
// where the last one ended and lies within the bounds.
func stream(t testing.TB, r io.Reader, p Params) (sizes []int, all []byte) {
	t.Helper()
	c, err := New(r, p, nil)
	if err != nil {
		t.Fatal(err)
	}
	for {
		ch, err := c.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if ch.Offset != int64(len(all)) {
			t.Fatalf("chunk %d: offset %d, want %d", len(sizes), ch.Offset, len(all))
		}
		sizes = append(sizes, len(ch.Data))
		all = append(all, ch.Data...)
	}
	checkBounds(t, sizes, p)
	return sizes, all
}

func checkBounds(t testing.TB, sizes []int, p Params) {
	t.Helper()
	for i, n := range sizes {
		if n > p.Max || n <= 0 || (n < p.Min && i != len(sizes)-1) {
			t.Fatalf("chunk %d of %d has %d bytes, want within [%d, %d]", i, len(sizes), n, p.Min, p.Max)
		}
	}
}

// small are parameters that make many chunks out of little data.
var small = Params{Min: 256, Avg: 1 << 10, Max: 4 << 10}

func TestGearTable(t *testing.T) {
	h := sha256.New()
	for _, g := range gear {
		fmt.Fprintf(h, "%016x\n", g)
	}
	const want = "ee9315131bc64666dc6d7e976035526a8bae0c78eb875a01ecabff84b0f218e0"
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		t.Errorf("gear table hash %s, want %s: the V1 table changed", got, want)
	}
	for i := range gear {
		if gearLS[i] != gear[i]<<1 {
			t.Fatalf("gearLS[%d] = %x, want %x", i, gearLS[i], gear[i]<<1)
		}
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		p   Params
		ok  bool
		why string
	}{
		{V1, true, "the default"},
		{Params{64, 64, 64}, true, "smallest, all equal"},
		{Params{MinSizeLimit, 1 << 20, MaxSizeLimit}, true, "widest"},
		{Params{63, 64, 128}, false, "min below the limit"},
		{Params{64, 64, MaxSizeLimit + 1}, false, "max above the limit"},
		{Params{256, 128, 1024}, false, "min above avg"},
		{Params{64, 2048, 1024}, false, "avg above max"},
		{Params{64, 1000, 4096}, false, "avg not a power of two"},
		{Params{}, false, "zero value"},
	} {
		err := tc.p.Validate()
		if (err == nil) != tc.ok {
			t.Errorf("%s: %+v.Validate() = %v, want ok=%v", tc.why, tc.p, err, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalidParams) {
			t.Errorf("%s: error %v does not wrap ErrInvalidParams", tc.why, err)
		}
		if _, nerr := New(bytes.NewReader(nil), tc.p, nil); (nerr == nil) != tc.ok {
			t.Errorf("%s: New error %v, want ok=%v", tc.why, nerr, tc.ok)
		}
	}
	if _, err := New(bytes.NewReader(nil), V1, make([]byte, 2*V1.Max-1)); err == nil {
		t.Error("New accepted a buffer shorter than 2*Max")
	}
}

func TestCutMatchesReference(t *testing.T) {
	size := 4 << 20
	if testing.Short() {
		size = 1 << 20
	}
	data := seeded(size, 1)
	zeros := make([]byte, 1<<20)
	text := bytes.Repeat([]byte("package chunker // cuts streams\n\tfunc Cut() int {}\n"), 40000)
	for _, p := range []Params{small, {64, 64, 64}, {64, 128, 8192}, {100, 512, 600}, {1000, 1 << 12, 1 << 15}, V1} {
		for _, in := range [][]byte{data, zeros, text} {
			for off := 0; off < len(in); {
				view := in[off:min(len(in), off+p.Max+7)]
				got, want := Cut(view, p), refCut(view, p)
				if got != want {
					t.Fatalf("%+v at %d: Cut = %d, reference = %d", p, off, got, want)
				}
				// Every shorter view that still holds the cut gives the same cut.
				for _, k := range []int{want, want + 1, want + 3} {
					if k <= len(view) {
						if g := Cut(view[:k], p); g != want && k < p.Max {
							t.Fatalf("%+v at %d: Cut of %d bytes = %d, want %d", p, off, k, g, want)
						}
					}
				}
				off += want
			}
		}
	}
}

// randReader returns between 0 and max bytes per Read, at random.
type randReader struct {
	r   io.Reader
	rng *rand.Rand
	max int
}

func (r *randReader) Read(b []byte) (int, error) {
	n := r.rng.IntN(r.max + 1)
	if n == 0 {
		return 0, nil
	}
	return r.r.Read(b[:min(n, len(b))])
}

func TestStreamReadSizes(t *testing.T) {
	for _, tc := range []struct {
		name string
		p    Params
		n    int
	}{
		{"small", small, 1 << 20},
		{"V1", V1, 6 << 20},
	} {
		if testing.Short() {
			tc.n /= 2
		}
		data := seeded(tc.n, 2)
		want := split(data, tc.p)
		readers := map[string]func() io.Reader{
			"whole":    func() io.Reader { return bytes.NewReader(data) },
			"onebyte":  func() io.Reader { return iotest.OneByteReader(bytes.NewReader(data)) },
			"half":     func() io.Reader { return iotest.HalfReader(bytes.NewReader(data)) },
			"dataerr":  func() io.Reader { return iotest.DataErrReader(bytes.NewReader(data)) },
			"random":   func() io.Reader { return &randReader{bytes.NewReader(data), rand.New(rand.NewPCG(1, 2)), 3 * tc.p.Avg} },
			"random17": func() io.Reader { return &randReader{bytes.NewReader(data), rand.New(rand.NewPCG(3, 4)), 17} },
		}
		for name, mk := range readers {
			t.Run(tc.name+"/"+name, func(t *testing.T) {
				sizes, all := stream(t, mk(), tc.p)
				if !bytes.Equal(all, data) {
					t.Fatal("concatenated chunks differ from the input")
				}
				if fmt.Sprint(sizes) != fmt.Sprint(want) {
					t.Fatalf("boundaries depend on read sizes: got %d chunks, want %d", len(sizes), len(want))
				}
			})
		}
	}
}

func TestEdgeCases(t *testing.T) {
	p := V1
	for _, tc := range []struct {
		name string
		data []byte
		want []int // chunk sizes; nil: only check the invariants
	}{
		{"empty", nil, []int{}},
		{"one byte", []byte{7}, []int{1}},
		{"shorter than min", seeded(p.Min-1, 3), []int{p.Min - 1}},
		{"exactly min", seeded(p.Min, 3), []int{p.Min}},
		{"exactly max", seeded(p.Max, 3), nil},
		{"max+1", seeded(p.Max+1, 3), nil},
		{"all zero", make([]byte, 8<<20), nil},
		{"all 0xff", bytes.Repeat([]byte{0xff}, 4<<20), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sizes, all := stream(t, bytes.NewReader(tc.data), p)
			if !bytes.Equal(all, tc.data) {
				t.Fatal("concatenated chunks differ from the input")
			}
			if tc.want != nil && fmt.Sprint(sizes) != fmt.Sprint(tc.want) {
				t.Fatalf("sizes %v, want %v", sizes, tc.want)
			}
			if got := split(tc.data, p); fmt.Sprint(got) != fmt.Sprint(sizes) && len(tc.data) > 0 {
				t.Fatalf("Cut gives %v, Chunker %v", got, sizes)
			}
			t.Logf("%d bytes: %d chunks", len(tc.data), len(sizes))
		})
	}
}

// TestZeroRuns checks that long zero runs (tar padding, sparse files) cut
// at Max, not into a storm of small chunks, with the V1 table.
func TestZeroRuns(t *testing.T) {
	sizes := split(make([]byte, 4<<20), V1)
	for i, n := range sizes {
		if n != V1.Max {
			t.Fatalf("zero chunk %d has %d bytes, want %d", i, n, V1.Max)
		}
	}
}

// shared returns the fraction of b's bytes that lie in chunks a also has.
func shared(t *testing.T, a, b []byte, p Params) float64 {
	have := map[[32]byte]bool{}
	for _, n := range split(a, p) {
		have[sha256.Sum256(a[:n])] = true
		a = a[n:]
	}
	total, reused := len(b), 0
	for _, n := range split(b, p) {
		if have[sha256.Sum256(b[:n])] {
			reused += n
		}
		b = b[n:]
	}
	return float64(reused) / float64(total)
}

func TestStability(t *testing.T) {
	n, p := 64<<20, V1
	if testing.Short() {
		// Same chunks per byte of input, an eighth of the work.
		n, p = 8<<20, Params{Min: 8 << 10, Avg: 32 << 10, Max: 128 << 10}
	}
	orig := seeded(n, 4)
	edits := map[string]func() []byte{
		"insert near start": func() []byte { return append(append(append([]byte{}, orig[:1000]...), 0x42), orig[1000:]...) },
		"delete near start": func() []byte { return append(append([]byte{}, orig[:1000]...), orig[1001:]...) },
		"edit in middle": func() []byte {
			b := append([]byte{}, orig...)
			b[n/2] ^= 0xff
			return b
		},
		"insert 4 KiB in middle": func() []byte {
			return append(append(append([]byte{}, orig[:n/2]...), seeded(4<<10, 5)...), orig[n/2:]...)
		},
	}
	for name, edit := range edits {
		t.Run(name, func(t *testing.T) {
			f := shared(t, orig, edit(), p)
			t.Logf("%.4f%% of the bytes in shared chunks", 100*f)
			if f < 0.99 {
				t.Errorf("only %.4f%% of the bytes in shared chunks, want ≥ 99%%", 100*f)
			}
		})
	}
}

func TestGolden(t *testing.T) {
	const size = 32 << 20
	path := filepath.Join("testdata", "golden-v1.txt")
	data := seeded(size, 0)
	var got strings.Builder
	fmt.Fprintf(&got, "# chunker.V1 golden vectors: %d bytes of math/rand/v2 ChaCha8 keyed by %q,\n", size, goldenSeed)
	fmt.Fprintf(&got, "# cut with Params{Min: %d, Avg: %d, Max: %d}. One line per chunk: offset length sha256.\n", V1.Min, V1.Avg, V1.Max)
	fmt.Fprintf(&got, "# Regenerate with: go test ./chunker/ -run TestGolden -update (only for a new format version).\n")
	off := 0
	for _, n := range split(data, V1) {
		fmt.Fprintf(&got, "%d %d %x\n", off, n, sha256.Sum256(data[off:off+n]))
		off += n
	}
	if *update {
		if err := os.WriteFile(path, []byte(got.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if got.String() != string(want) {
		g, w := bufio.NewScanner(strings.NewReader(got.String())), bufio.NewScanner(bytes.NewReader(want))
		for line := 1; ; line++ {
			gok, wok := g.Scan(), w.Scan()
			if g.Text() != w.Text() || gok != wok {
				t.Fatalf("%s line %d: got %q, want %q: the V1 format changed; a new format needs a new version name", path, line, g.Text(), w.Text())
			}
		}
	}
	// The streaming chunker agrees with the file too.
	sizes, _ := stream(t, bytes.NewReader(data), V1)
	if fmt.Sprint(sizes) != fmt.Sprint(split(data, V1)) {
		t.Fatal("Chunker and Cut disagree on the golden input")
	}
}

func TestNoAllocs(t *testing.T) {
	data := seeded(4<<20, 6)
	r := bytes.NewReader(data)
	c, err := New(r, small, nil)
	if err != nil {
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(5, func() {
		r.Reset(data)
		c.Reset(r)
		for {
			if _, err := c.Next(); err != nil {
				break
			}
		}
	})
	if allocs != 0 {
		t.Errorf("%.1f allocations per stream, want 0", allocs)
	}
}

func TestReadError(t *testing.T) {
	boom := errors.New("boom")
	data := seeded(3*small.Max, 7)
	c, err := New(io.MultiReader(bytes.NewReader(data), iotest.ErrReader(boom)), small, nil)
	if err != nil {
		t.Fatal(err)
	}
	for {
		_, err := c.Next()
		if errors.Is(err, boom) {
			break
		}
		if err != nil {
			t.Fatalf("Next error %v, want %v", err, boom)
		}
	}
	c, _ = New(iotest.ErrReader(nil), small, nil) // (0, nil) forever
	if _, err := c.Next(); !errors.Is(err, io.ErrNoProgress) {
		t.Fatalf("Next on a reader that never progresses: %v, want io.ErrNoProgress", err)
	}
}

func TestReset(t *testing.T) {
	a, b := seeded(1<<20, 8), seeded(1<<19, 9)
	buf := make([]byte, 2*small.Max)
	c, err := New(bytes.NewReader(a), small, buf)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := c.Next(); err != nil {
			t.Fatal(err)
		}
	}
	c.Reset(bytes.NewReader(b))
	var got []int
	for {
		ch, err := c.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(ch.Data, b[ch.Offset:ch.Offset+int64(len(ch.Data))]) {
			t.Fatalf("chunk at %d differs from the input after Reset", ch.Offset)
		}
		got = append(got, len(ch.Data))
	}
	if want := split(b, small); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after Reset: %d chunks, want %d", len(got), len(want))
	}
}

// flakyReader fails every few reads with errFlaky and otherwise reads on.
type flakyReader struct {
	r io.Reader
	n int
}

var errFlaky = errors.New("flaky")

func (f *flakyReader) Read(b []byte) (int, error) {
	if f.n++; f.n%3 == 0 {
		return 0, errFlaky
	}
	return f.r.Read(b[:min(len(b), 1000)])
}

// TestReadErrorResume checks that a failed read loses nothing: Next after
// the error carries on as if it had not happened.
func TestReadErrorResume(t *testing.T) {
	data := seeded(200<<10, 13)
	c, err := New(&flakyReader{r: bytes.NewReader(data)}, small, nil)
	if err != nil {
		t.Fatal(err)
	}
	var got []int
	var all []byte
	for {
		ch, err := c.Next()
		if errors.Is(err, errFlaky) {
			continue
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, len(ch.Data))
		all = append(all, ch.Data...)
	}
	if !bytes.Equal(all, data) {
		t.Fatal("chunks differ from the input after read errors")
	}
	if want := split(data, small); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after read errors: %d chunks, want %d", len(got), len(want))
	}
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n += n
	return n, err
}

// TestReadsNoMoreThanNeeded checks that a slow reader (one that returns
// little per call, as a network stream does) is not waited on for more
// than Max bytes ahead of the chunk being cut.
func TestReadsNoMoreThanNeeded(t *testing.T) {
	data := seeded(1<<20, 14)
	cr := &countingReader{r: iotest.HalfReader(&randReader{bytes.NewReader(data), rand.New(rand.NewPCG(5, 6)), 200})}
	c, err := New(cr, small, nil)
	if err != nil {
		t.Fatal(err)
	}
	for {
		ch, err := c.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if ahead := cr.n - int(ch.Offset); ahead >= small.Max+200 {
			t.Fatalf("chunk at %d: %d bytes read ahead, want < Max+200", ch.Offset, ahead)
		}
	}
}
