package recompress

import (
	"bytes"
	"io"
	"sync"

	stdgzip "compress/gzip"

	"github.com/klauspost/compress/zstd"
)

// Candidates are the specs a Matcher tries for a blob of format f whose
// first gzip member header is h (nil for zstd), most likely first: Go's
// compress/gzip at its default level (BuildKit, containerd, docker), at
// BestSpeed (go-containerregistry: crane, ko, kaniko), then its other
// levels; pgzip with its default 1 MiB blocks (containers/image: skopeo,
// podman, buildah); klauspost's gzip; klauspost's zstd at its default
// level (BuildKit's compression=zstd) and then the others.
func Candidates(f Format, h *GzipHeader) []Spec {
	var out []Spec
	add := func(enc string, level, block int) {
		s := Spec{Encoder: enc, Version: Version(enc), Level: level, BlockSize: block}
		if f == Gzip {
			hc := *h
			s.Header = &hc
		}
		out = append(out, s)
	}
	switch f {
	case Gzip:
		gzipLevels := []int{stdgzip.DefaultCompression, stdgzip.BestSpeed, 2, 3, 4, 5, 7, 8, 9, stdgzip.NoCompression}
		// DefaultCompression (-1) is level 6 in all three.
		gzipLevels[0] = 6
		for _, l := range gzipLevels {
			add(EncGo, l, 0)
		}
		for _, l := range gzipLevels {
			add(EncPgzip, l, 1<<20)
		}
		for _, l := range gzipLevels {
			add(EncKlauspost, l, 0)
		}
	case Zstd:
		for _, l := range []zstd.EncoderLevel{zstd.SpeedDefault, zstd.SpeedFastest, zstd.SpeedBetterCompression, zstd.SpeedBestCompression} {
			add(EncZstd, int(l), 0)
		}
	}
	return out
}

// Stages splits Candidates(f, h) in two: the encoders real clients use at
// their defaults (compress/gzip at 6 and 1, pgzip at its default, which
// klauspost's flate takes as 5, and at 6; zstd at SpeedDefault), then the
// rest. A push tries the first stage alone and starts the second only if
// the first is gone: fewer encoders running, in time and in memory (each
// takes about a megabyte, pgzip several).
func Stages(f Format, h *GzipHeader) [][]Spec {
	likely := map[string]bool{"go-gzip/6": true, "go-gzip/1": true, "pgzip/5/1048576": true, "pgzip/6/1048576": true,
		"klauspost-zstd/2": true}
	var first, rest []Spec
	for _, s := range Candidates(f, h) {
		if likely[s.Key()] {
			first = append(first, s)
		} else {
			rest = append(rest, s)
		}
	}
	return [][]Spec{first, rest}
}

// DefaultWindow bounds what a Matcher buffers: incoming bytes that a live
// candidate has not produced yet, and output a candidate produced before
// the same incoming bytes arrived. A candidate that falls further behind
// or runs further ahead than that is dropped.
const DefaultWindow = 8 << 20

// A Matcher compares the output of candidate encoders, fed the
// decompressed stream with Feed, against the compressed stream, fed with
// AddCompressed. Each candidate is dropped at its first differing byte, so
// losers cost little; memory stays within about twice the window whatever
// the blob's size. Feed and AddCompressed may run on different
// goroutines.
type Matcher struct {
	window int

	mu    sync.Mutex
	orig  []byte // compressed bytes from base on, kept while a live candidate needs them
	base  int64
	total int64 // compressed bytes received
	cands []*candidate
	live  int
}

type candidate struct {
	m       *Matcher
	spec    Spec
	enc     io.WriteCloser
	pos     int64  // output bytes produced and matched
	pending []byte // output produced ahead of the compressed bytes received
	dead    bool
	closed  bool
}

// NewMatcher starts the candidates. window ≤ 0 means DefaultWindow.
func NewMatcher(cands []Spec, window int) (*Matcher, error) {
	if window <= 0 {
		window = DefaultWindow
	}
	m := &Matcher{window: window}
	for _, s := range cands {
		if !Usable(s) {
			continue // its vector does not reproduce: never trust it
		}
		c := &candidate{m: m, spec: s}
		enc, err := s.NewWriter(c)
		if err != nil {
			m.Close()
			return nil, err
		}
		c.enc = enc
		m.cands = append(m.cands, c)
		m.live++
	}
	return m, nil
}

// Live is the number of candidates still matching.
func (m *Matcher) Live() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.live
}

// AddCompressed hands the matcher the next bytes of the compressed stream.
func (m *Matcher) AddCompressed(p []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.live == 0 {
		m.total += int64(len(p))
		m.base = m.total
		return
	}
	m.orig = append(m.orig, p...)
	m.total += int64(len(p))
	for _, c := range m.cands {
		if !c.dead && len(c.pending) > 0 {
			pend := c.pending
			c.pending = nil
			c.match(pend)
		}
	}
	m.trim()
}

// trim drops the compressed bytes every live candidate has passed, then
// candidates that lag a window behind. Called with mu held.
func (m *Matcher) trim() {
	for {
		low := m.total
		var laggard *candidate
		for _, c := range m.cands {
			if !c.dead && c.pos < low {
				low, laggard = c.pos, c
			}
		}
		drop := low - m.base
		if drop > 0 {
			m.orig = m.orig[drop:]
			m.base = low
		}
		if len(m.orig) <= m.window || laggard == nil {
			break
		}
		laggard.kill()
	}
	if m.live == 0 || len(m.orig) == 0 {
		m.orig = nil // let a large buffer go
	}
}

// match compares out, the candidate's next output, with the compressed
// stream. Called with mu held.
func (c *candidate) match(out []byte) {
	m := c.m
	avail := m.base + int64(len(m.orig)) - c.pos // compressed bytes received beyond pos
	n := min(int64(len(out)), avail)
	if n > 0 {
		have := m.orig[c.pos-m.base : c.pos-m.base+n]
		if !bytes.Equal(have, out[:n]) {
			c.kill()
			return
		}
		c.pos += n
	}
	if rest := out[n:]; len(rest) > 0 {
		if len(c.pending)+len(rest) > m.window {
			c.kill()
			return
		}
		c.pending = append(c.pending, rest...)
	}
}

func (c *candidate) kill() {
	if !c.dead {
		c.dead = true
		c.pending = nil
		c.m.live--
	}
}

// Write receives the candidate's output. A dead candidate's output is
// dropped without an error: an encoder that saw a write error may never
// finish (pgzip v1.2.6's Close then returns before it stops its
// goroutines), and Feed sends a dead candidate nothing more anyway.
func (c *candidate) Write(p []byte) (int, error) {
	m := c.m
	m.mu.Lock()
	defer m.mu.Unlock()
	if !c.dead {
		c.match(p)
		m.trim()
	}
	return len(p), nil
}

// Feed hands every live candidate the next decompressed bytes.
func (m *Matcher) Feed(p []byte) {
	for _, c := range m.alive() {
		if _, err := c.enc.Write(p); err != nil {
			m.mu.Lock()
			c.kill()
			m.mu.Unlock()
		}
	}
}

func (m *Matcher) alive() []*candidate {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]*candidate, 0, m.live)
	for _, c := range m.cands {
		if !c.dead {
			out = append(out, c)
		}
	}
	return out
}

// Finish is called after the whole decompressed stream was fed and the
// whole compressed stream added. It flushes the live candidates and
// returns the first, in the order they were given, whose output is the
// compressed stream exactly; ok is false if none is.
func (m *Matcher) Finish() (Spec, bool) {
	for _, c := range m.alive() {
		c.closed = true
		if err := c.enc.Close(); err != nil {
			m.mu.Lock()
			c.kill()
			m.mu.Unlock()
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, c := range m.cands {
		if !c.dead && len(c.pending) == 0 && c.pos == m.total {
			return c.spec, true
		}
	}
	return Spec{}, false
}

// Close stops every candidate that is still running.
func (m *Matcher) Close() {
	m.mu.Lock()
	for _, c := range m.cands {
		c.kill()
	}
	cands := m.cands
	m.cands = nil
	m.orig = nil
	m.mu.Unlock()
	for _, c := range cands {
		if !c.closed && c.enc != nil {
			c.closed = true
			_ = c.enc.Close() // dead: its output is dropped; this ends pgzip's goroutines
		}
	}
}
