package tarsplit

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// split returns the content and meta streams of b.
func split(t testing.TB, b []byte) (content, meta []byte) {
	t.Helper()
	var m bytes.Buffer
	s := NewSplitter(bytes.NewReader(b), &m)
	c, err := io.ReadAll(s)
	if err != nil {
		t.Fatalf("split: %v", err)
	}
	return c, m.Bytes()
}

// roundTrip splits b, joins it back, and also reads it from every offset
// in offs; each must give b's bytes exactly.
func roundTrip(t testing.TB, b []byte, offs ...int64) (content, meta []byte) {
	t.Helper()
	content, meta = split(t, b)
	var out bytes.Buffer
	if _, err := Join(&out, bytes.NewReader(meta), bytes.NewReader(content)); err != nil {
		t.Fatalf("join: %v", err)
	}
	if !bytes.Equal(out.Bytes(), b) {
		t.Fatalf("joined %d bytes differ from the %d split", out.Len(), len(b))
	}
	for _, off := range offs {
		var opened int64 = -1
		j, err := NewJoinerAt(bytes.NewReader(meta), func(o int64) (io.Reader, error) {
			opened = o
			return bytes.NewReader(content[o:]), nil
		}, off)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(j)
		if err != nil {
			t.Fatalf("join from %d: %v", off, err)
		}
		if !bytes.Equal(got, b[off:]) {
			t.Fatalf("join from %d: %d bytes, not the tar's %d from there", off, len(got), len(b)-int(off))
		}
		_ = opened
	}
	return content, meta
}

type entry struct {
	hdr  tar.Header
	data []byte
}

func writeTar(t testing.TB, format tar.Format, entries []entry, close bool) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range entries {
		h := e.hdr
		h.Format = format
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.data))
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("%s: %v", h.Name, err)
		}
		if _, err := tw.Write(e.data); err != nil {
			t.Fatal(err)
		}
	}
	if close {
		if err := tw.Close(); err != nil {
			t.Fatal(err)
		}
	} else {
		tw.Flush()
	}
	return b.Bytes()
}

func text(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	words := strings.Fields("package func return if else for range struct interface map chan go select defer")
	var b bytes.Buffer
	for b.Len() < n {
		b.WriteString(words[r.IntN(len(words))])
		b.WriteByte(" \n"[r.IntN(2)])
	}
	return b.Bytes()[:n]
}

func sampleEntries(mtime time.Time) []entry {
	long := strings.Repeat("very-long-directory-name/", 12) + "file.txt"
	return []entry{
		{hdr: tar.Header{Name: "dir/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: mtime}},
		{hdr: tar.Header{Name: "dir/a.txt", ModTime: mtime}, data: text(1, 70000)},
		{hdr: tar.Header{Name: "dir/empty", ModTime: mtime}},
		{hdr: tar.Header{Name: long, ModTime: mtime, PAXRecords: nil}, data: text(2, 1000)},
		{hdr: tar.Header{Name: "dir/link", Typeflag: tar.TypeLink, Linkname: "dir/a.txt", ModTime: mtime}},
		{hdr: tar.Header{Name: "dir/sym", Typeflag: tar.TypeSymlink, Linkname: "a.txt", ModTime: mtime}},
		{hdr: tar.Header{Name: "dev/null", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3, ModTime: mtime}},
		{hdr: tar.Header{Name: "dev/sda", Typeflag: tar.TypeBlock, Devmajor: 8, ModTime: mtime}},
		{hdr: tar.Header{Name: "fifo", Typeflag: tar.TypeFifo, ModTime: mtime}},
		{hdr: tar.Header{Name: "big.bin", ModTime: mtime, Uname: "root", Gname: "root"}, data: text(3, 1<<20+17)},
		{hdr: tar.Header{Name: "ünïcödé/файл", ModTime: mtime}, data: text(4, 511)},
	}
}

// Real tars of every header format round-trip, from the start and from
// offsets inside headers, contents and the end marker.
func TestRoundTripFormats(t *testing.T) {
	mtime := time.Unix(1700000000, 0)
	for _, f := range []tar.Format{tar.FormatUSTAR, tar.FormatPAX, tar.FormatGNU, tar.FormatUnknown} {
		entries := sampleEntries(mtime)
		if f == tar.FormatUSTAR {
			// USTAR has no room for these.
			entries = append(entries[:3:3], entries[4:]...)
			entries[len(entries)-1].hdr.Name = "plain-name"
		}
		t.Run(f.String(), func(t *testing.T) {
			b := writeTar(t, f, entries, true)
			content, meta := roundTrip(t, b, 0, 1, 511, 512, 513, 70000, int64(len(b))-1024, int64(len(b))-1, int64(len(b)))
			var want int
			for _, e := range entries {
				want += len(e.data)
			}
			if len(content) != want {
				t.Errorf("content stream of %d bytes, the files hold %d", len(content), want)
			}
			t.Logf("%s: tar %d bytes, content %d, meta %d", f, len(b), len(content), len(meta))
		})
	}
}

// The point: the same files with other timestamps (and owners) give the
// same content stream.
func TestTimestampsOnlyChangeMeta(t *testing.T) {
	a := writeTar(t, tar.FormatPAX, sampleEntries(time.Unix(1700000000, 0)), true)
	b := writeTar(t, tar.FormatPAX, sampleEntries(time.Unix(1800000000, 123456789)), true)
	ca, ma := roundTrip(t, a)
	cb, mb := roundTrip(t, b)
	if !bytes.Equal(ca, cb) {
		t.Fatal("the content streams differ")
	}
	if bytes.Equal(ma, mb) {
		t.Fatal("the meta streams are the same: the timestamps went to the content")
	}
}

// Archives that end oddly: no end marker, one zero block, zeros beyond the
// marker, garbage after it, truncated inside a header or a file.
func TestOddEnds(t *testing.T) {
	entries := sampleEntries(time.Unix(1700000000, 0))[:3]
	whole := writeTar(t, tar.FormatPAX, entries, true)
	open := writeTar(t, tar.FormatPAX, entries, false)
	cases := map[string][]byte{
		"no end marker":        open,
		"one zero block":       append(bytes.Clone(open), make([]byte, 512)...),
		"zeros beyond":         append(bytes.Clone(whole), make([]byte, 10240)...),
		"garbage after":        append(bytes.Clone(whole), "not a tar at all"...),
		"truncated in header":  open[:len(open)-1024+100],
		"truncated in content": whole[:2000],
		"empty":                {},
		"one byte":             {'x'},
		"only zeros":           make([]byte, 2048),
		"not a tar":            text(9, 100000),
		"bad checksum later": func() []byte {
			b := bytes.Clone(whole)
			b[512*3+148] ^= 1 // a later header's checksum
			return b
		}(),
	}
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			roundTrip(t, b, 0, int64(len(b))/2, int64(len(b)))
		})
	}
}

// GNU tar's sparse files, and whatever else the system's tar writes.
func TestGNUTarSparse(t *testing.T) {
	gnutar, err := exec.LookPath("tar")
	if err != nil {
		t.Skip("no tar on PATH")
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	os.MkdirAll(src, 0o755)
	f, err := os.Create(filepath.Join(src, "sparse"))
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt(text(5, 5000), 0)
	f.WriteAt(text(6, 7000), 3<<20)
	f.WriteAt([]byte("end"), 8<<20)
	f.Close()
	os.WriteFile(filepath.Join(src, "plain"), text(7, 30000), 0o644)
	for _, format := range []string{"gnu", "posix", "oldgnu"} {
		t.Run(format, func(t *testing.T) {
			out := filepath.Join(dir, format+".tar")
			cmd := exec.Command(gnutar, "--sparse", "--format="+format, "-C", src, "-cf", out, ".")
			if b, err := cmd.CombinedOutput(); err != nil {
				t.Skipf("tar --format=%s: %v %s", format, err, b)
			}
			b, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			content, _ := roundTrip(t, b, 0, 1000, int64(len(b))-5000)
			if len(content) > 2<<20 {
				t.Errorf("content of %d bytes: the sparse file's holes went in", len(content))
			}
		})
	}
}

func TestLooksLikeTar(t *testing.T) {
	b := writeTar(t, tar.FormatPAX, sampleEntries(time.Unix(1, 0)), true)
	if !LooksLikeTar(b[:512]) {
		t.Error("a tar's first block is not a tar header")
	}
	for name, blk := range map[string][]byte{
		"short": b[:100], "zeros": make([]byte, 512), "text": text(1, 512),
		"flipped": func() []byte { c := bytes.Clone(b[:512]); c[0] ^= 1; return c }(),
	} {
		if LooksLikeTar(blk) {
			t.Errorf("%s looks like a tar", name)
		}
	}
}

// A malformed meta stream, or a content stream of the wrong length, is an
// error from Join, never a short or long tar given as whole.
func TestJoinRefusesBadStreams(t *testing.T) {
	b := writeTar(t, tar.FormatPAX, sampleEntries(time.Unix(1, 0)), true)
	content, meta := split(t, b)
	for name, tc := range map[string]struct{ meta, content []byte }{
		"no version":            {nil, content},
		"other version":         {append([]byte{2}, meta[1:]...), content},
		"meta cut":              {meta[:len(meta)/2], content},
		"content short":         {meta, content[:len(content)-1]},
		"content long":          {meta, append(bytes.Clone(content), 'x')},
		"huge record len":       {append([]byte{1}, 0xff, 0xff, 0xff, 0xff, 0x0f), content},
		"record len overflows":  {append([]byte{1}, bytes.Repeat([]byte{0xff}, 10)...), content},
		"content len overflows": {append([]byte{1, 0}, bytes.Repeat([]byte{0x80}, 11)...), content},
		"huge content len":      {[]byte{1, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f}, content},
	} {
		_, err := Join(io.Discard, bytes.NewReader(tc.meta), bytes.NewReader(tc.content))
		if !errors.Is(err, ErrFormat) {
			t.Errorf("%s: %v, want ErrFormat", name, err)
		}
	}
}

// A source that fails is the split's error, not meta.
func TestSourceErrors(t *testing.T) {
	b := writeTar(t, tar.FormatPAX, sampleEntries(time.Unix(1, 0)), true)
	boom := errors.New("client went away")
	for _, at := range []int{0, 100, 600, 70000, len(b) - 10} {
		s := NewSplitter(io.MultiReader(bytes.NewReader(b[:at]), failing{boom}), io.Discard)
		if _, err := io.ReadAll(s); !errors.Is(err, boom) {
			t.Errorf("source failing at %d: %v", at, err)
		}
	}
}

type failing struct{ err error }

func (f failing) Read([]byte) (int, error) { return 0, f.err }

// Anything at all splits and joins back.
func FuzzRoundTrip(f *testing.F) {
	f.Add(writeTar(f, tar.FormatPAX, sampleEntries(time.Unix(1, 0))[:4], true))
	f.Add(writeTar(f, tar.FormatGNU, sampleEntries(time.Unix(1, 0))[:3], false))
	f.Add([]byte("not a tar"))
	f.Add(make([]byte, 1024))
	f.Fuzz(func(t *testing.T, b []byte) {
		roundTrip(t, b, int64(len(b))/3)
	})
}

// A meta stream from anywhere never makes Join panic or loop.
func FuzzJoin(f *testing.F) {
	b := writeTar(f, tar.FormatPAX, sampleEntries(time.Unix(1, 0))[:4], true)
	content, meta := split(f, b)
	f.Add(meta, content[:100])
	f.Fuzz(func(t *testing.T, meta, content []byte) {
		_, _ = Join(io.Discard, bytes.NewReader(meta), bytes.NewReader(content))
	})
}

// A few KiB of tar that claims a sparse file of 2^62 bytes: archive/tar
// would hand out its holes for a year. The split stops at the sparse
// header and keeps the rest as meta.
func TestSparseBomb(t *testing.T) {
	pax := paxRecord("GNU.sparse.numblocks", "1") + paxRecord("GNU.sparse.map", "0,1") + paxRecord("GNU.sparse.size", "4611686018427387904")
	var b []byte
	b = append(b, rawHeader("PaxHeaders/f", 'x', int64(len(pax)))...)
	b = append(b, padBlock([]byte(pax))...)
	b = append(b, rawHeader("f", '0', 1)...)
	b = append(b, padBlock([]byte("A"))...)
	b = append(b, make([]byte, 1024)...)
	done := make(chan struct{})
	go func() {
		defer close(done)
		roundTrip(t, b)
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the split of a 3 KiB sparse bomb is still running after 30 s")
	}
}

// rawHeader is a USTAR header block written by hand (archive/tar refuses
// to write GNU.sparse records).
func rawHeader(name string, typ byte, size int64) []byte {
	b := make([]byte, 512)
	copy(b[0:], name)
	copy(b[100:], "0000644\x00")
	copy(b[108:], "0000000\x00")
	copy(b[116:], "0000000\x00")
	copy(b[124:], fmt.Sprintf("%011o\x00", size))
	copy(b[136:], "00000000000\x00")
	b[156] = typ
	copy(b[257:], "ustar\x00")
	copy(b[263:], "00")
	for i := 148; i < 156; i++ {
		b[i] = ' '
	}
	var sum int
	for _, c := range b {
		sum += int(c)
	}
	copy(b[148:], fmt.Sprintf("%06o\x00 ", sum))
	return b
}

func paxRecord(k, v string) string {
	l := len(k) + len(v) + 3
	for {
		s := fmt.Sprint(l) + " " + k + "=" + v + "\n"
		if len(s) == l {
			return s
		}
		l = len(s)
	}
}

func padBlock(b []byte) []byte {
	if r := len(b) % 512; r != 0 {
		b = append(b, make([]byte, 512-r)...)
	}
	return b
}

// A meta stream whose reader fails (an unavailable backend) is that
// failure, not a malformed stream.
func TestJoinPassesReadErrors(t *testing.T) {
	b := writeTar(t, tar.FormatPAX, sampleEntries(time.Unix(1, 0)), true)
	content, meta := split(t, b)
	boom := errors.New("backend unavailable")
	for _, at := range []int{0, 1, len(meta) / 2} {
		_, err := Join(io.Discard, io.MultiReader(bytes.NewReader(meta[:at]), failing{boom}), bytes.NewReader(content))
		if !errors.Is(err, boom) || errors.Is(err, ErrFormat) {
			t.Errorf("meta failing at %d: %v; want the backend's error, not ErrFormat", at, err)
		}
	}
}

// joinFrom joins the tar from offset, starting at checkpoint cp, with the
// meta stream cut at metaEnd: what a range read does.
func joinFrom(meta, content []byte, cp Checkpoint, metaEnd, offset int64) ([]byte, error) {
	j, err := NewJoinerFrom(bytes.NewReader(meta[cp.Meta:metaEnd]), func(o int64) (io.Reader, error) {
		if o > int64(len(content)) {
			return nil, fmt.Errorf("content opened at %d of %d", o, len(content))
		}
		return bytes.NewReader(content[o:]), nil
	}, cp, offset)
	if err != nil {
		return nil, err
	}
	return io.ReadAll(j)
}

// checkCheckpoints splits b, takes its checkpoints every `every` meta
// bytes, checks where they are, and joins from each of them (from the
// first, the last two and sample others of a longer list) at offsets
// from the checkpoint itself to the next one's, to the tar's end and, with
// the meta stream cut at a later checkpoint, to that checkpoint: each join
// must be the tar's bytes from its offset exactly.
func checkCheckpoints(t testing.TB, b []byte, every int64, rng *rand.Rand, sample int) []Checkpoint {
	t.Helper()
	content, meta := split(t, b)
	points, err := Checkpoints(bytes.NewReader(meta), every)
	if err != nil {
		t.Fatalf("Checkpoints: %v", err)
	}
	if first := points[0]; first != (Checkpoint{Meta: 1}) {
		t.Fatalf("first checkpoint %+v, want the stream's start", first)
	}
	if last, end := points[len(points)-1], (Checkpoint{int64(len(b)), int64(len(meta)), int64(len(content))}); last != end {
		t.Fatalf("last checkpoint %+v, want the stream's end %+v", last, end)
	}
	for i := 1; i < len(points); i++ {
		p, q := points[i-1], points[i]
		if q.Tar < p.Tar || q.Content < p.Content || q.Meta <= p.Meta || q.Content-p.Content > q.Tar-p.Tar {
			t.Fatalf("checkpoints %d and %d out of order: %+v, %+v", i-1, i, p, q)
		}
		if i < len(points)-1 && (q.Meta-p.Meta < every || q.Meta-p.Meta > every+maxMetaRecord+2*10) {
			t.Fatalf("checkpoints %d and %d %d meta bytes apart, every %d", i-1, i, q.Meta-p.Meta, every)
		}
	}
	tarLen, metaLen := int64(len(b)), int64(len(meta))
	// Every checkpoint of a short list; of a long one (a join from each to
	// the end would be quadratic) the first, the last two and sample others.
	try := make([]int, len(points))
	for i := range try {
		try[i] = i
	}
	if len(try) > sample+3 {
		rng.Shuffle(len(try)-3, func(i, j int) { try[i+1], try[j+1] = try[j+1], try[i+1] })
		try = append(try[:sample+1], len(points)-2, len(points)-1)
	}
	for _, i := range try {
		cp := points[i]
		next := tarLen
		if i+1 < len(points) {
			next = points[i+1].Tar
		}
		offs := []int64{cp.Tar, min(cp.Tar+1, tarLen), max(next-1, cp.Tar), next}
		for range 3 {
			offs = append(offs, cp.Tar+rng.Int64N(next-cp.Tar+1))
		}
		for k, off := range offs {
			if k == 0 || k == len(offs)-1 { // to the end: once at the checkpoint, once past it
				got, err := joinFrom(meta, content, cp, metaLen, off)
				if err != nil || !bytes.Equal(got, b[off:]) {
					t.Fatalf("join from checkpoint %d %+v at %d: %d bytes, %v; want the tar's %d from there", i, cp, off, len(got), err, tarLen-off)
				}
			}
			// Cut at a later checkpoint, the join ends there, exactly.
			e := points[i+rng.IntN(min(len(points)-i, 4))]
			if e.Tar < off {
				continue
			}
			got, err := joinFrom(meta, content, cp, e.Meta, off)
			if err != nil || !bytes.Equal(got, b[off:e.Tar]) {
				t.Fatalf("join from %+v at %d, meta cut at %+v: %d bytes, %v; want %d", cp, off, e, len(got), err, e.Tar-off)
			}
		}
	}
	return points
}

// manySmallFiles is a tar of n small files (0 to 3 KiB, some with long
// names in PAX records): a meta stream about as long as its content.
func manySmallFiles(t testing.TB, n int) []byte {
	rng := rand.New(rand.NewPCG(uint64(n), 2))
	entries := make([]entry, n)
	for i := range entries {
		name := fmt.Sprintf("dir%d/file%d", i%37, i)
		if i%50 == 0 {
			name = strings.Repeat("long/", 30) + name
		}
		entries[i] = entry{hdr: tar.Header{Name: name, ModTime: time.Unix(int64(i), 0)}, data: text(uint64(i), rng.IntN(3<<10))}
	}
	return writeTar(t, tar.FormatPAX, entries, true)
}

// A join from any checkpoint, at any offset past it, is the tar's bytes
// from that offset: real tars, odd ends, checkpoints dense and sparse.
func TestJoinFromCheckpoints(t *testing.T) {
	rng := rand.New(rand.NewPCG(13, 13))
	tars := map[string][]byte{
		"formats":     writeTar(t, tar.FormatPAX, sampleEntries(time.Unix(1700000000, 0)), true),
		"gnu":         writeTar(t, tar.FormatGNU, sampleEntries(time.Unix(1700000000, 0)), true),
		"small files": manySmallFiles(t, 1500),
		"no end":      writeTar(t, tar.FormatPAX, sampleEntries(time.Unix(1, 0))[:3], false),
		"garbage":     append(writeTar(t, tar.FormatPAX, sampleEntries(time.Unix(1, 0))[:3], true), text(8, 3<<20)...),
		"not a tar":   text(9, 100000),
		"empty":       {},
	}
	for name, b := range tars {
		t.Run(name, func(t *testing.T) {
			for _, every := range []int64{1, 700, 64 << 10, 1 << 30} {
				points := checkCheckpoints(t, b, every, rng, 40)
				t.Logf("every %d: %d checkpoints", every, len(points))
			}
		})
	}
}

// A meta stream the join refuses, the checkpoint walk refuses as well, and
// a meta reader's failure is that failure, not ErrFormat.
func TestCheckpointsRefuseBadStreams(t *testing.T) {
	b := writeTar(t, tar.FormatPAX, sampleEntries(time.Unix(1, 0)), true)
	_, meta := split(t, b)
	for name, m := range map[string][]byte{
		"no version":            nil,
		"other version":         append([]byte{2}, meta[1:]...),
		"meta cut":              meta[:len(meta)/2],
		"cut in a count":        {1, 0},
		"huge record len":       {1, 0xff, 0xff, 0xff, 0xff, 0x0f},
		"record len overflows":  append([]byte{1}, bytes.Repeat([]byte{0xff}, 10)...),
		"content len overflows": append([]byte{1, 0}, bytes.Repeat([]byte{0x80}, 11)...),
		"huge content len":      {1, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f},
	} {
		if _, err := Checkpoints(bytes.NewReader(m), 100); !errors.Is(err, ErrFormat) {
			t.Errorf("%s: %v, want ErrFormat", name, err)
		}
	}
	boom := errors.New("backend unavailable")
	for _, at := range []int{0, 1, len(meta) / 2} {
		_, err := Checkpoints(io.MultiReader(bytes.NewReader(meta[:at]), failing{boom}), 100)
		if !errors.Is(err, boom) || errors.Is(err, ErrFormat) {
			t.Errorf("meta failing at %d: %v; want the backend's error, not ErrFormat", at, err)
		}
	}
	if _, err := NewJoinerFrom(bytes.NewReader(meta), nil, Checkpoint{Tar: 10, Meta: 1}, 9); err == nil {
		t.Error("a join from a checkpoint past its offset started")
	}
}

// Anything that splits joins back from any of its checkpoints, at any
// offset.
func FuzzJoinFromCheckpoint(f *testing.F) {
	f.Add(writeTar(f, tar.FormatPAX, sampleEntries(time.Unix(1, 0))[:4], true), uint16(600), uint64(1))
	f.Add(manySmallFiles(f, 12), uint16(1), uint64(2))
	f.Add([]byte("not a tar"), uint16(0), uint64(3))
	f.Fuzz(func(t *testing.T, b []byte, every uint16, seed uint64) {
		checkCheckpoints(t, b, int64(every), rand.New(rand.NewPCG(seed, 0)), 6)
	})
}

// The checkpoint walk and the join agree on any meta stream: the walk
// refuses what the join refuses, and where the walk succeeds, the join over
// that much content yields the tar length the walk found, and so does each
// join from a checkpoint.
func FuzzCheckpoints(f *testing.F) {
	b := writeTar(f, tar.FormatPAX, sampleEntries(time.Unix(1, 0))[:4], true)
	_, meta := split(f, b)
	f.Add(meta, uint16(100))
	f.Add([]byte{1, 0, 0x80, 0x00, 0x81, 0x00, 0x05}, uint16(1))
	f.Add([]byte{1}, uint16(0))
	f.Fuzz(func(t *testing.T, meta []byte, every uint16) {
		points, err := Checkpoints(bytes.NewReader(meta), int64(every))
		if err != nil {
			if !errors.Is(err, ErrFormat) {
				t.Fatalf("Checkpoints: %v, want ErrFormat", err)
			}
			if _, jerr := Join(io.Discard, bytes.NewReader(meta), bytes.NewReader(make([]byte, 1<<16))); jerr == nil {
				t.Fatalf("the walk refuses the meta stream (%v), the join does not", err)
			}
			return
		}
		end := points[len(points)-1]
		if end.Content > 1<<16 {
			return // too much content to make up
		}
		content := make([]byte, end.Content)
		for i := range content {
			content[i] = byte(i)
		}
		var whole bytes.Buffer
		if _, err := Join(&whole, bytes.NewReader(meta), bytes.NewReader(content)); err != nil {
			t.Fatalf("the walk accepts the meta stream, the join does not: %v", err)
		}
		if int64(whole.Len()) != end.Tar || end.Meta != int64(len(meta)) {
			t.Fatalf("the join gives %d bytes, the walk's end is %+v", whole.Len(), end)
		}
		for k := range min(len(points), 12) { // the first and last, and some between
			cp := points[(len(points)-1)*k/max(min(len(points), 12)-1, 1)]
			got, err := joinFrom(meta, content, cp, int64(len(meta)), cp.Tar)
			if err != nil || !bytes.Equal(got, whole.Bytes()[cp.Tar:]) {
				t.Fatalf("join from %+v: %d bytes, %v", cp, len(got), err)
			}
		}
	})
}
