package recompress

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
)

// vectors pins, for every encoder and level a Matcher tries, the SHA-256 of
// its output over VectorInput with VectorHeader. They were written by
// TestVectors -update with the encoders in go.mod and Go 1.26; an encoder
// whose output has changed since (a new Go release, a new klauspost/compress)
// no longer matches its vector, and Usable refuses it: cairn stores new
// blobs of that encoder as they came, and a recipe that names it is not
// rebuilt (Check) until someone materializes it with a cairn that still
// reproduces it.
var vectors = map[string]string{
	"go-gzip/0":        "0bfdbacf2079d4d40c7f59e2b53b59e0491ec32f98784ef9b1b8b202a9b94f57",
	"go-gzip/1":        "dd8de62f98ca9ae2f987b2fa28a3d04c79e3d94f914fb01ec195f32b7ac60ec1",
	"go-gzip/2":        "a1832cfa0ef7a4942ceb330ccfcade2ff014d2891edd4cc1691ec87046fe743e",
	"go-gzip/3":        "59d5497434fd81e8a9a29d7881f2200ef4008a529e192343fbb020e98321303f",
	"go-gzip/4":        "84c9ff301734e57805702926d4545ae66db2c932a95c785959ff4a13fbb7f365",
	"go-gzip/5":        "4ad58a293352dd0b3ea3c232636d295cfb9dc93684d4ef6713b94c608e9a0cae",
	"go-gzip/6":        "374b4b56e7dfff66bc5a34d045f50f2e3a9f417a3e549412a8e35560cde800aa",
	"go-gzip/7":        "6a1a577b729cf7eef43cd8ba81400445bf60bcad13987df0f88770c46472d87f",
	"go-gzip/8":        "fdb886e8a6f1cd22bf629dd29c8e13cd421c18d09647dca0266541104f5e199b",
	"go-gzip/9":        "ff1f5f2c7e4e97ff22f2096585df0a13001e4cb054a82c2d4a856988e9551160",
	"klauspost-gzip/0": "4b5ce1c8551c45bcc2b1ff3bf6d3b0b0af7cd6db72059635a6c21d1151a277d3",
	"klauspost-gzip/1": "9297694ad4f751b4a3c129275465045fcf8d5b26958cbbd5a2e1f9aed805af16",
	"klauspost-gzip/2": "a7afad4202675bee04203af5d716f4b07c9ec23744b485605f2fafd3078c7d7c",
	"klauspost-gzip/3": "7bca7874f822680b9fdb134bcade8f0444e7506ea5bca0c4997c1d70c0364836",
	"klauspost-gzip/4": "6c61e75494371d5d55a418b27d95b947452dd815bd92798907babfc26153174a",
	"klauspost-gzip/5": "ec8aa02112239235001968b3943aa9d7e56985c3dadeb02b68da7b93fc5bbf20",
	"klauspost-gzip/6": "38565cba53d277a895613931002554b052a49e2fd41ab117de9d05ee8d40089b",
	"klauspost-gzip/7": "a9fd2172e9cc35b32557d725368844c5dcd45759701b546594d58e5b0d9b2e0e",
	"klauspost-gzip/8": "1f47b7252809ce6a7aa2a4a5ed7cac19016f97ad2d58961f4b6fd6714601ae54",
	"klauspost-gzip/9": "ef002ab98542110a3ba9c26916d33f4838be7aff5d658b7eb352928e24f1f9be",
	"klauspost-zstd/1": "b869498dba07efd702a7d2cd53f872319c737d99a5275691b3460ebffbced8ec",
	"klauspost-zstd/2": "33075e28f51c1400e06bb29b506131b657f242a6ccae1ffed10767eda7fbceb2",
	"klauspost-zstd/3": "a24c309e15d6142f20e188b32c11dbf9b4ee21d434f166969569677364c23a2b",
	"klauspost-zstd/4": "d3515abb0daad81e1009ad7f7fa5c22a92234e67e72e192813006e45794993ce",
	"pgzip/0/1048576":  "855ba8cde43ab4fd5ad3a6f740bdc25e42bb42b106416ec78e90f1b6a171f684",
	"pgzip/1/1048576":  "387b5682dc700ca3de6e9115544c421104950361bae47b7e29b3f2ef97bfe4ad",
	"pgzip/2/1048576":  "3bbf03317d48f8c5fe214719c2efb7a5967ba9b90d6038c55c8d497fbe57a081",
	"pgzip/3/1048576":  "c1c6395bc66a5d83f8f600fc035c30785d11ce83d97a693f96ac652c5a5a403e",
	"pgzip/4/1048576":  "4f440bec9890e158532a8c46464b86aad41ff7be7d006892f2421bffad4f032d",
	"pgzip/5/1048576":  "21a252182ed7d4e4543a820496d653901769ddb00b1b4618b6dce9f39a9b0d81",
	"pgzip/6/1048576":  "e76feed409f1fa71b9d14051e9e585cd8dcd05ad4c229da5da3ed7ea255f3f29",
	"pgzip/7/1048576":  "1f40be21d92753878a370c9e903d1a2d310616f230ed6560d7450df8adc7ed60",
	"pgzip/8/1048576":  "53183755c47f5aa21c4d0cd29a6cc9b66ebfb23cceb2663e638491eefd446fd8",
	"pgzip/9/1048576":  "5b532d3a08b10be9e9de547a6cdda97eb4b233ef28308b8ca2b4af416ee02eb3",
}

// VectorHeader is the gzip header of every gzip vector: each field set, so
// that a change in how an encoder writes one shows.
var VectorHeader = GzipHeader{Name: "vector.tar", Comment: "cairn", ModTime: 1700000000, OS: 3, Extra: []byte("cairn\x00")}

// VectorInput is what the vectors compress: 1.25 MiB of tar-like text,
// repeated runs and incompressible bytes, so that pgzip's 1 MiB blocks and
// every kind of deflate and zstd block appear. It is generated, not
// stored: a fixed seed of a fixed generator (PCG, math/rand/v2, whose
// output is specified).
var VectorInput = sync.OnceValue(func() []byte {
	r := rand.New(rand.NewPCG(1, 2))
	words := strings.Fields("package main import func return if else for range go chan select struct interface map string int byte error nil true false var const type defer")
	var b strings.Builder
	for b.Len() < 1280<<10 {
		switch r.IntN(4) {
		case 0: // source-like lines
			for range 40 {
				for range 1 + r.IntN(8) {
					b.WriteString(words[r.IntN(len(words))])
					b.WriteByte(' ')
				}
				b.WriteString("\n")
			}
		case 1: // incompressible
			raw := make([]byte, 1+r.IntN(8<<10))
			for i := range raw {
				raw[i] = byte(r.Uint32())
			}
			b.Write(raw)
		case 2: // a long run
			b.WriteString(strings.Repeat(string(rune('a'+r.IntN(26))), r.IntN(4<<10)))
		case 3: // tar padding
			b.WriteString(strings.Repeat("\x00", 512-b.Len()%512))
		}
	}
	return []byte(b.String())[:1280<<10]
})

// VectorSum is the SHA-256 of s's output over VectorInput with
// VectorHeader, in hex.
func VectorSum(s Spec) (string, error) {
	if s.Format() == Gzip {
		h := VectorHeader
		s.Header = &h
	} else {
		s.Header = nil
	}
	hs := sha256.New()
	w, err := s.NewWriter(hs)
	if err != nil {
		return "", err
	}
	if _, err := w.Write(VectorInput()); err != nil {
		return "", err
	}
	if err := w.Close(); err != nil {
		return "", err
	}
	return hex.EncodeToString(hs.Sum(nil)), nil
}

var checked sync.Map // Spec.Key() → *checkResult

type checkResult struct {
	once sync.Once
	err  error
}

// Check says whether this binary's encoder for s still writes what it wrote
// when its vector was pinned. It is computed once per encoder and level.
func Check(s Spec) error {
	if err := s.validate(); err != nil {
		return err
	}
	v, _ := checked.LoadOrStore(s.Key(), &checkResult{})
	cr := v.(*checkResult)
	cr.once.Do(func() {
		want, ok := vectors[s.Key()]
		if !ok || want == "" {
			cr.err = fmt.Errorf("%w: no vector pinned for %s", ErrChanged, s.Key())
			return
		}
		got, err := VectorSum(s)
		if err != nil {
			cr.err = fmt.Errorf("%w: %s: %v", ErrChanged, s.Key(), err)
			return
		}
		if got != want {
			cr.err = fmt.Errorf("%w: %s in this build (%s) writes %s for its vector, pinned %s", ErrChanged, s.Key(), Version(s.Encoder), got[:16], want[:16])
		}
	})
	return cr.err
}

// Usable says whether Check passes for s.
func Usable(s Spec) bool { return Check(s) == nil }

// ErrChanged is an encoder whose output is no longer what it was when its
// vector was pinned: recipes that name it cannot be rebuilt by this
// binary.
var ErrChanged = fmt.Errorf("recompress: encoder output changed")

// Rebuild writes to w the compressed form of r's bytes that s describes.
// The caller checks the result against the blob's digest.
func Rebuild(s Spec, r io.Reader, w io.Writer) error {
	if err := Check(s); err != nil {
		return err
	}
	sw := &stickyWriter{w: w}
	enc, err := s.NewWriter(sw)
	if err != nil {
		return err
	}
	_, err = io.Copy(enc, readerUntil{r, sw}) // stops at the first write error
	// Close even after an error: pgzip stops its goroutines only in a
	// Close that sees no write error, which stickyWriter ensures.
	if cerr := enc.Close(); err == nil {
		err = cerr
	}
	if sw.err != nil {
		return sw.err
	}
	return err
}

// readerUntil reads r until w has failed.
type readerUntil struct {
	r io.Reader
	w *stickyWriter
}

func (u readerUntil) Read(p []byte) (int, error) {
	if u.w.err != nil {
		return 0, u.w.err
	}
	return u.r.Read(p)
}

// stickyWriter passes writes to w until the first error, which it keeps,
// and then drops them.
type stickyWriter struct {
	w   io.Writer
	err error
}

func (s *stickyWriter) Write(p []byte) (int, error) {
	if s.err == nil {
		if _, err := s.w.Write(p); err != nil {
			s.err = err
		}
	}
	return len(p), nil
}

// BreakVectorForTest makes Check fail for the encoder key names (as a
// changed encoder would) until restore is called. Tests only.
func BreakVectorForTest(key string) (restore func()) {
	old, had := vectors[key]
	vectors[key] = "0000000000000000000000000000000000000000000000000000000000000000"
	checked.Delete(key)
	return func() {
		if had {
			vectors[key] = old
		} else {
			delete(vectors, key)
		}
		checked.Delete(key)
	}
}
