package stepkey

import (
	"crypto/sha256"
	_ "crypto/sha512" // makes sha384 and sha512 digests validate (go-digest checks crypto.Hash.Available)
	"encoding/binary"
	"fmt"
	"hash"
	"slices"
	"strings"

	"github.com/opencontainers/go-digest"
)

// Version is the first field of every key's encoding. Changing the encoding
// or a normalization rule in a way that changes any key must bump it, which
// turns every stored step into a miss instead of a wrong hit.
const Version = "cairn-step-v1"

// Domain separators: Version, a NUL, the purpose, a NUL. A step key and the
// history digest of a metadata-only step therefore never hash the same bytes.
const (
	keyDomain  = Version + "\x00key\x00"
	nextDomain = Version + "\x00next\x00"
)

// MaxInstructionSize bounds the instruction text (heredocs included) that
// Normalize accepts. 1 MiB is far above any real Dockerfile instruction and
// keeps a malicious request from making the server hash megabytes per lookup.
const MaxInstructionSize = 1 << 20

// Step is one build step as a builder describes it. The zero value is not a
// valid step (the instruction is empty). A Step is a plain value: safe to copy
// and to share between goroutines.
type Step struct {
	// Instruction is the Dockerfile instruction as written, keyword included,
	// for example "run  apt-get update". See the package doc for how it is
	// normalized.
	Instruction string
	// InputsDigest is the client-computed digest of the content and metadata
	// of the files a COPY or ADD copies. It is required for COPY and ADD
	// (without it two different build contexts would share a key) and
	// optional for every other instruction (a RUN with a bind mount of the
	// context may set it).
	InputsDigest digest.Digest
	// Platform is the target platform, "os/arch" or "os/arch/variant"; ""
	// means unspecified. It is lower-cased.
	Platform string
	// BuildArgs are the "KEY=VALUE" build args this step sees. Their order
	// does not matter; a key given twice with different values is an error.
	BuildArgs []string
}

// Normalized returns s with its instruction normalized (see Normalize), its
// build args validated, de-duplicated and sorted by key, its inputs digest
// validated and its platform lower-cased and validated. Normalizing a
// normalized step returns it unchanged. Two steps have the same key exactly
// when their normalized forms are equal and they sit on the same parent.
func (s Step) Normalized() (Step, error) {
	ins, err := Normalize(s.Instruction)
	if err != nil {
		return Step{}, err
	}
	if err := validDigest("inputs digest", s.InputsDigest); err != nil {
		return Step{}, err
	}
	if s.InputsDigest == "" && needsInputs(ins) {
		return Step{}, fmt.Errorf("%w: %s needs an inputs digest (the digest of the copied content)", ErrInvalidStep, keyword(ins))
	}
	platform, err := normalizePlatform(s.Platform)
	if err != nil {
		return Step{}, err
	}
	args, err := normalizeBuildArgs(s.BuildArgs)
	if err != nil {
		return Step{}, err
	}
	return Step{Instruction: ins, InputsDigest: s.InputsDigest, Platform: platform, BuildArgs: args}, nil
}

// Key returns the cache key of step s on top of parent, the chain ID (see
// Next) of everything below the step; parent "" is scratch. The key is the
// SHA-256 of a versioned, domain-separated, length-prefixed encoding of
// (parent, normalized instruction, inputs digest, platform, build args), so
// no two different normalized steps can encode to the same bytes.
func Key(parent digest.Digest, s Step) (digest.Digest, error) {
	n, err := s.Normalized()
	if err != nil {
		return "", err
	}
	return NormalizedKey(parent, n)
}

// NormalizedKey is Key for a step that Normalized returned, without
// normalizing it again: a server that keys a whole chain normalizes each
// step once. n must come from Normalized (normalizing is idempotent, so Key
// of the same step gives the same key); anything else gives a key no one
// else derives.
func NormalizedKey(parent digest.Digest, n Step) (digest.Digest, error) {
	if err := validDigest("parent", parent); err != nil {
		return "", err
	}
	h := sha256.New()
	h.Write([]byte(keyDomain))
	writeField(h, string(parent))
	writeField(h, n.Instruction)
	writeField(h, string(n.InputsDigest))
	writeField(h, n.Platform)
	writeUint(h, uint64(len(n.BuildArgs)))
	for _, a := range n.BuildArgs {
		writeField(h, a)
	}
	return digest.NewDigest(digest.SHA256, h), nil
}

// ChainID is the OCI image spec's chain ID: diffID itself on scratch (parent
// ""), else sha256(parent + " " + diffID). Both digests are taken as given;
// validate them first (Key validates parents).
func ChainID(parent, diffID digest.Digest) digest.Digest {
	if parent == "" {
		return diffID
	}
	return digest.SHA256.FromString(string(parent) + " " + string(diffID))
}

// Next returns the parent of the step that follows the step with key key on
// top of parent. A step that made a layer (diffID != "") continues the OCI
// chain: ChainID(parent, diffID), so two different instructions that yield
// the same layer converge, as the filesystem is the same. A metadata-only step
// (ENV, LABEL, WORKDIR, ...; diffID "") changes no layer but still changes
// what follows, so it yields a domain-separated digest of (parent, key),
// which can never equal a chain ID.
func Next(parent, key digest.Digest, diffID digest.Digest) digest.Digest {
	if diffID != "" {
		return ChainID(parent, diffID)
	}
	h := sha256.New()
	h.Write([]byte(nextDomain))
	writeField(h, string(parent))
	writeField(h, string(key))
	return digest.NewDigest(digest.SHA256, h)
}

// writeField writes len(s) as 8 bytes big-endian, then s: fields cannot
// bleed into each other, whatever bytes they hold.
func writeField(h hash.Hash, s string) {
	writeUint(h, uint64(len(s)))
	h.Write([]byte(s))
}

func writeUint(h hash.Hash, n uint64) {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], n)
	h.Write(b[:])
}

// validDigest accepts "" (absent) or a digest go-digest validates: a known
// algorithm (sha256, sha384, sha512) and lower-case hex of the right length.
//
// The usual digests are checked by hand: go-digest's Validate runs a
// regular expression, a tenth of a step lookup's server CPU.
func validDigest(what string, d digest.Digest) error {
	if d == "" || isHexDigest(string(d)) {
		return nil
	}
	if err := d.Validate(); err != nil {
		return fmt.Errorf("%w: %s %q: %v", ErrInvalidStep, what, string(d), err)
	}
	return nil
}

// ValidDigest reports whether d is a digest go-digest validates: a known
// algorithm and lower-case hex of the right length. It checks sha256,
// sha384 and sha512 by hand (go-digest's Validate runs a regular
// expression, a tenth of a step lookup's server CPU) and anything else
// with go-digest.
func ValidDigest(d digest.Digest) bool {
	return isHexDigest(string(d)) || d.Validate() == nil
}

// isHexDigest reports whether s is sha256, sha384 or sha512 followed by
// the right number of lower-case hex digits: what go-digest's Validate
// accepts for those algorithms. Anything else goes to Validate, which
// accepts or explains.
func isHexDigest(s string) bool {
	var n int
	switch {
	case strings.HasPrefix(s, "sha256:"):
		s, n = s[7:], 64
	case strings.HasPrefix(s, "sha384:"):
		s, n = s[7:], 96
	case strings.HasPrefix(s, "sha512:"):
		s, n = s[7:], 128
	default:
		return false
	}
	if len(s) != n {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// needsInputs reports whether normalized instruction ins copies files from
// outside the parent's filesystem when it runs: COPY and ADD. ONBUILD COPY
// copies nothing until a later build triggers it.
func needsInputs(ins string) bool {
	switch keyword(ins) {
	case "COPY", "ADD":
		return true
	}
	return false
}

// keyword returns the keyword of a normalized instruction.
func keyword(ins string) string {
	kw, _, _ := strings.Cut(ins, " ")
	return kw
}

// normalizePlatform lower-cases p and checks it is os/arch or
// os/arch/variant, each part made of [a-z0-9._-]. Aliases (x86_64, aarch64,
// arm64/v8) are not mapped: a different spelling is a miss, never a wrong hit.
func normalizePlatform(p string) (string, error) {
	if p == "" {
		return "", nil
	}
	lp := strings.ToLower(p)
	parts := strings.Split(lp, "/")
	if len(parts) < 2 || len(parts) > 3 {
		return "", fmt.Errorf("%w: platform %q: want os/arch or os/arch/variant", ErrInvalidStep, p)
	}
	for _, part := range parts {
		if part == "" || strings.IndexFunc(part, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-')
		}) >= 0 {
			return "", fmt.Errorf("%w: platform %q: want os/arch or os/arch/variant of [a-z0-9._-]", ErrInvalidStep, p)
		}
	}
	return lp, nil
}

// normalizeBuildArgs validates KEY=VALUE args and returns them sorted by key
// with exact duplicates removed; nil when there are none.
func normalizeBuildArgs(args []string) ([]string, error) {
	if len(args) == 0 {
		return nil, nil
	}
	seen := make(map[string]string, len(args))
	out := make([]string, 0, len(args))
	for _, a := range args {
		k, v, ok := strings.Cut(a, "=")
		if !ok {
			return nil, fmt.Errorf("%w: build arg %q: want KEY=VALUE", ErrInvalidStep, a)
		}
		if k == "" || strings.ContainsAny(k, " \t\r\n\v\f\x00") {
			return nil, fmt.Errorf("%w: build arg %q: key must be non-empty and free of whitespace", ErrInvalidStep, a)
		}
		if prev, dup := seen[k]; dup {
			if prev != v {
				return nil, fmt.Errorf("%w: build arg %q given twice with different values", ErrInvalidStep, k)
			}
			continue
		}
		seen[k] = v
		out = append(out, a)
	}
	// Keys are unique now and hold no '=', so sorting by key equals sorting
	// the key part; compare keys only to keep "A=..." before "A_B=...".
	slices.SortFunc(out, func(a, b string) int {
		ka, _, _ := strings.Cut(a, "=")
		kb, _, _ := strings.Cut(b, "=")
		return strings.Compare(ka, kb)
	})
	return out, nil
}
