// Package recompress stores a compressed blob as its uncompressed content
// plus the name of an encoder that turns that content back into the exact
// compressed bytes.
//
// Compressed bytes deduplicate badly: one changed file early in a layer
// changes every byte of its gzip that follows. Most layers, though, were
// written by one of a handful of deterministic encoders (Go's
// compress/gzip, klauspost's gzip, pgzip and zstd) at one of their levels.
// A Matcher runs the likely candidates over the decompressed stream while
// the blob arrives and compares their output with the incoming bytes,
// dropping each at its first differing byte; a candidate that reproduces
// the whole blob becomes its Spec. Rebuild runs a Spec again.
//
// An encoder's output may change between versions (Go 1.27 replaces
// compress/flate). Every encoder therefore has a pinned vector (vectors.go):
// Check refuses a Spec whose encoder no longer reproduces it, so a recipe
// can never rebuild wrong bytes silently; the blob digest is checked on
// every rebuild as well.
package recompress

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"sync"
	"time"

	stdgzip "compress/gzip"

	kgzip "github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/klauspost/pgzip"
)

// Format is a compression format cairn can look inside.
type Format string

const (
	None Format = ""
	Gzip Format = "gzip"
	Zstd Format = "zstd"
)

// Detect names the format of a stream from its first bytes (at least 4
// are needed; fewer is None).
func Detect(b []byte) Format {
	switch {
	case len(b) >= 3 && b[0] == 0x1f && b[1] == 0x8b && b[2] == 8:
		return Gzip
	case len(b) >= 4 && b[0] == 0x28 && b[1] == 0xb5 && b[2] == 0x2f && b[3] == 0xfd:
		return Zstd
	}
	return None
}

// The encoders a Spec can name.
const (
	EncGo        = "go-gzip"        // compress/gzip of the Go release cairn is built with
	EncKlauspost = "klauspost-gzip" // github.com/klauspost/compress/gzip
	EncPgzip     = "pgzip"          // github.com/klauspost/pgzip
	EncZstd      = "klauspost-zstd" // github.com/klauspost/compress/zstd, streaming writer
)

// Spec names an encoder and its parameters: enough to turn a blob's
// uncompressed content back into its exact compressed bytes.
type Spec struct {
	Encoder string `json:"encoder"`
	// Version is the implementation that reproduced the blob at ingest (a
	// Go release or a module version). It is informative: whether an
	// encoder still reproduces is decided by its vector (Check).
	Version string `json:"version"`
	Level   int    `json:"level"`
	// BlockSize is pgzip's block size.
	BlockSize int `json:"blockSize,omitempty"`
	// Header holds the gzip header fields the blob had.
	Header *GzipHeader `json:"header,omitempty"`
}

// GzipHeader is the part of a gzip member header an encoder copies from
// its caller. The XFL byte is not here: each encoder derives it from its
// level.
type GzipHeader struct {
	Name    string `json:"name,omitempty"`
	Comment string `json:"comment,omitempty"`
	ModTime uint32 `json:"mtime,omitempty"` // Unix seconds; 0 is unset
	OS      byte   `json:"os"`
	Extra   []byte `json:"extra,omitempty"`
}

// Format is the format s writes.
func (s Spec) Format() Format {
	if s.Encoder == EncZstd {
		return Zstd
	}
	return Gzip
}

// Key is the encoder and its output-shaping parameters, without the
// header: what a vector is pinned for.
func (s Spec) Key() string {
	if s.BlockSize != 0 {
		return fmt.Sprintf("%s/%d/%d", s.Encoder, s.Level, s.BlockSize)
	}
	return fmt.Sprintf("%s/%d", s.Encoder, s.Level)
}

func (s Spec) String() string {
	return s.Key() + " (" + s.Version + ")"
}

// Marshal is the stored form of s: JSON with fixed field order.
func (s Spec) Marshal() []byte {
	b, err := json.Marshal(s)
	if err != nil { // only plain fields: cannot happen
		panic(err)
	}
	return b
}

// ErrSpec is a stored spec that cairn cannot use.
var ErrSpec = errors.New("recompress: unusable encoder spec")

// Unmarshal parses and validates a stored spec.
func Unmarshal(b []byte) (Spec, error) {
	var s Spec
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return Spec{}, fmt.Errorf("%w: %v", ErrSpec, err)
	}
	if err := s.validate(); err != nil {
		return Spec{}, err
	}
	return s, nil
}

func (s Spec) validate() error {
	lo, hi := levels(s.Encoder)
	switch {
	case lo > hi:
		return fmt.Errorf("%w: unknown encoder %q", ErrSpec, s.Encoder)
	case s.Level < lo || s.Level > hi:
		return fmt.Errorf("%w: %s has no level %d", ErrSpec, s.Encoder, s.Level)
	case (s.Encoder == EncPgzip) != (s.BlockSize > 0):
		return fmt.Errorf("%w: block size %d for %s", ErrSpec, s.BlockSize, s.Encoder)
	case s.Encoder == EncPgzip && (s.BlockSize < 1<<12 || s.BlockSize > 64<<20):
		return fmt.Errorf("%w: pgzip block size %d", ErrSpec, s.BlockSize)
	case (s.Format() == Gzip) != (s.Header != nil):
		return fmt.Errorf("%w: %s with a gzip header: %v", ErrSpec, s.Encoder, s.Header != nil)
	}
	return nil
}

// levels is the range of levels an encoder accepts (lo > hi: unknown).
func levels(enc string) (lo, hi int) {
	switch enc {
	case EncGo, EncKlauspost, EncPgzip:
		return stdgzip.NoCompression, stdgzip.BestCompression
	case EncZstd:
		return int(zstd.SpeedFastest), int(zstd.SpeedBestCompression)
	}
	return 1, 0
}

// NewWriter returns s's encoder writing to w. Close flushes the trailer.
func (s Spec) NewWriter(w io.Writer) (io.WriteCloser, error) {
	if err := s.validate(); err != nil {
		return nil, err
	}
	switch s.Encoder {
	case EncGo:
		zw, err := stdgzip.NewWriterLevel(w, s.Level)
		if err != nil {
			return nil, err
		}
		h := s.Header
		zw.Header = stdgzip.Header{Name: h.Name, Comment: h.Comment, OS: h.OS, Extra: h.Extra, ModTime: modTime(h.ModTime)}
		return zw, nil
	case EncKlauspost:
		zw, err := kgzip.NewWriterLevel(w, s.Level)
		if err != nil {
			return nil, err
		}
		h := s.Header
		zw.Header = kgzip.Header{Name: h.Name, Comment: h.Comment, OS: h.OS, Extra: h.Extra, ModTime: modTime(h.ModTime)}
		return zw, nil
	case EncPgzip:
		zw, err := pgzip.NewWriterLevel(w, s.Level)
		if err != nil {
			return nil, err
		}
		// The output depends on the block size only; two blocks in flight
		// bound the memory a rebuild takes.
		if err := zw.SetConcurrency(s.BlockSize, 2); err != nil {
			return nil, err
		}
		h := s.Header
		zw.Header = pgzip.Header{Name: h.Name, Comment: h.Comment, OS: h.OS, Extra: h.Extra, ModTime: modTime(h.ModTime)}
		return zw, nil
	case EncZstd:
		// One goroutine: the streaming writer's output does not depend on
		// its concurrency, and a rebuild should not take every core.
		return zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.EncoderLevel(s.Level)), zstd.WithEncoderConcurrency(1))
	}
	return nil, fmt.Errorf("%w: unknown encoder %q", ErrSpec, s.Encoder)
}

func modTime(sec uint32) time.Time {
	if sec == 0 {
		return time.Time{}
	}
	return time.Unix(int64(sec), 0)
}

// pinnedModules are the encoder modules go.mod requires (a test checks):
// the versions recorded when the binary carries no module information.
var pinnedModules = map[string]string{
	"github.com/klauspost/compress": "v1.20.3",
	"github.com/klauspost/pgzip":    "v1.2.6",
}

// versions of the encoders in this binary, for Spec.Version.
var versions = sync.OnceValue(func() map[string]string {
	v := map[string]string{EncGo: runtime.Version()}
	mods := map[string]string{}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Replace != nil {
				d = d.Replace
			}
			mods[d.Path] = d.Path + "@" + d.Version
		}
	}
	get := func(path string) string {
		if s, ok := mods[path]; ok {
			return s
		}
		return path + "@" + pinnedModules[path]
	}
	v[EncKlauspost] = get("github.com/klauspost/compress")
	v[EncZstd] = v[EncKlauspost]
	v[EncPgzip] = get("github.com/klauspost/pgzip") + "+" + v[EncKlauspost]
	return v
})

// Version is the implementation of enc in this binary.
func Version(enc string) string { return versions()[enc] }

// HeaderOf is the part of a parsed gzip header that an encoder copies.
func HeaderOf(h stdgzip.Header) *GzipHeader {
	g := &GzipHeader{Name: h.Name, Comment: h.Comment, OS: h.OS, Extra: h.Extra}
	if !h.ModTime.IsZero() {
		g.ModTime = uint32(h.ModTime.Unix())
	}
	return g
}
