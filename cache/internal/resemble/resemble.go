// Package resemble finds chunks that resemble each other, so that
// compaction can put them in one compressed frame.
//
// Deduplication stores identical chunks once; it does nothing for chunks
// that differ in a few bytes: the next version of a file, a zip whose
// member names carry a version, a tar header with a new path every few
// KiB. A whole-stream compressor with a long window (`zstd --long`) finds
// those matches wherever they are; frames of a few MiB find them only if
// the similar chunks sit in the same frame. On the bench corpus (five
// releases of a Go project) compacting in ingest order stored 0.89× of
// the ingest tier while `zstd -3 --long=31` stored 0.49× (bench/RESULTS.md
// "Issue 17").
//
// The method is Broder's resemblance sketch as deduplicating storage
// systems use it for delta compression (Shilane et al., "WAN optimized
// replication of backup datasets using stream-informed delta
// compression", FAST 2012): a rolling hash over the chunk, positions chosen
// by content (so an insertion moves them with the bytes), per feature the
// maximum of a different linear transform of the hash over those
// positions, and super-features that hash pairs of features. Two chunks
// sharing a super-feature very likely share most of their content; Order
// places each chunk right after the group of the first earlier chunk it
// shares one with.
package resemble

import (
	"encoding/binary"
	"math/bits"
)

// Features per sketch and features per super-feature.
const (
	features   = 4
	perSuper   = 2
	SuperCount = features / perSuper
)

// Sketch is a chunk's super-features.
type Sketch [SuperCount]uint64

// sampleMask picks one position in 32 (on average) by its hash: enough
// positions for a stable maximum in chunks of 64 KiB and more, at a cost
// far below compressing the chunk.
const sampleMask = 1<<5 - 1

// transforms are the odd multipliers and offsets of the features' linear
// transforms (arbitrary constants: the first digits of pi and e).
var transforms = [features][2]uint64{
	{0x243f6a8885a308d3 | 1, 0x13198a2e03707344},
	{0xa4093822299f31d0 | 1, 0x082efa98ec4e6c89},
	{0x452821e638d01377 | 1, 0xbe5466cf34e90c6c},
	{0xb7e151628aed2a6b | 1, 0xbf7158809cf4f3c7},
}

// gear maps bytes to pseudo-random 64-bit values for the rolling hash
// (a SplitMix64 sequence: fixed, so sketches are comparable across runs;
// they are never stored).
var gear = func() (g [256]uint64) {
	x := uint64(0x9e3779b97f4a7c15)
	for i := range g {
		x += 0x9e3779b97f4a7c15
		z := x
		z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
		z = (z ^ z>>27) * 0x94d049bb133111eb
		g[i] = z ^ z>>31
	}
	return g
}()

// Of returns data's sketch. Chunks too short to sample (a few hundred
// bytes) get a sketch of zeros, which Order treats as resembling nothing.
func Of(data []byte) Sketch {
	var f [features]uint64
	var h uint64
	seen := false
	for _, b := range data {
		h = h<<1 + gear[b] // a window of the last 64 bytes
		if h&sampleMask != 0 {
			continue
		}
		seen = true
		for i, t := range transforms {
			if v := h*t[0] + t[1]; v > f[i] {
				f[i] = v
			}
		}
	}
	var s Sketch
	if !seen {
		return s
	}
	var buf [8 * perSuper]byte
	for j := range s {
		for k := range perSuper {
			binary.LittleEndian.PutUint64(buf[8*k:], f[j*perSuper+k])
		}
		s[j] = mix(buf[:]) | 1 // never 0: 0 is "no sketch"
	}
	return s
}

// mix hashes b (a multiply-rotate hash of 8-byte words: good enough to
// key a map, not for anything adversarial, and the keys here are only
// placement hints).
func mix(b []byte) uint64 {
	h := uint64(0xcbf29ce484222325)
	for ; len(b) >= 8; b = b[8:] {
		h ^= binary.LittleEndian.Uint64(b)
		h = bits.RotateLeft64(h*0x9e3779b97f4a7c15, 29)
	}
	return h
}

// Order returns the indexes of sketches (of chunks of the given sizes) in
// the order compaction should write them: each chunk joins the group of
// the first earlier chunk that shares a super-feature with it, groups are
// written in the order they began, and a chunk that resembles none starts
// its own group, so chunks that resemble nothing keep their order. A group
// takes at most maxBytes of chunks (about a frame): the next members of a
// long family of versions start a group of their own.
func Order(sketches []Sketch, sizes []int64, maxBytes int64) []int {
	type group struct {
		members []int
		bytes   int64
	}
	var groups []*group
	byFeature := make(map[uint64]*group, len(sketches)*SuperCount)
	for i, s := range sketches {
		var g *group
		for _, f := range s {
			if f == 0 {
				continue
			}
			if cand := byFeature[f]; cand != nil && cand.bytes+sizes[i] <= maxBytes {
				g = cand
				break
			}
		}
		if g == nil {
			g = &group{}
			groups = append(groups, g)
		}
		g.members = append(g.members, i)
		g.bytes += sizes[i]
		for _, f := range s {
			if f != 0 {
				byFeature[f] = g // the newest group with the feature
			}
		}
	}
	out := make([]int, 0, len(sketches))
	for _, g := range groups {
		out = append(out, g.members...)
	}
	return out
}
