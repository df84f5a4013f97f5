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
// positions. Two chunks sharing a feature very likely share much of their
// content; Order places each chunk in the group of the first earlier chunk
// it shares one with, and compaction writes a group into one frame.
package resemble

// Features is the size of a sketch. Eight, each its own super-feature: on
// the bench corpus pairs of features (the literature's super-features,
// fewer false matches) stored 10 % more than single ones, and sixteen
// single features 2 % more than eight (more chunks join a group by a
// weaker match).
const Features = 8

// Sketch is a chunk's features, each hashed on its own.
type Sketch [Features]uint64

// sampleMask picks one position in 32 (on average) by its hash: enough
// positions for a stable maximum in chunks of 64 KiB and more, at a cost
// far below compressing the chunk (1 in 8 and 1 in 128 stored the same
// within the noise of the bench).
const sampleMask = 1<<5 - 1

// transforms are the odd multipliers and the offsets of the features'
// linear transforms: a SplitMix64 sequence, fixed so that sketches are
// comparable across runs (they are never stored).
var transforms = func() (t [Features][2]uint64) {
	x := uint64(0x243f6a8885a308d3)
	for i := range t {
		for j := range t[i] {
			t[i][j] = splitmix(&x)
		}
		t[i][0] |= 1
	}
	return t
}()

// gear maps bytes to pseudo-random 64-bit values for the rolling hash.
var gear = func() (g [256]uint64) {
	x := uint64(0x9e3779b97f4a7c15)
	for i := range g {
		g[i] = splitmix(&x)
	}
	return g
}()

func splitmix(x *uint64) uint64 {
	*x += 0x9e3779b97f4a7c15
	z := *x
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return z ^ z>>31
}

// Of returns data's sketch. A chunk with no sampled position (empty, or
// a few dozen bytes) gets a sketch of zeros, which Order treats as
// resembling nothing.
func Of(data []byte) Sketch {
	var f [Features]uint64
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
	for i, v := range f {
		s[i] = mix(v, uint64(i)) | 1 // never 0: 0 is "no sketch"
	}
	return s
}

// mix hashes feature v of index i: features of different transforms must
// not collide in Order's map.
func mix(v, i uint64) uint64 {
	x := v ^ i*0x9e3779b97f4a7c15
	return splitmix(&x)
}

// Order returns the indexes of sketches (of chunks of the given sizes) in
// the order compaction should write them, in groups that should share a
// frame: each chunk joins the group of
// the first earlier chunk that shares a super-feature with it, groups are
// written in the order they began, and a chunk that resembles none starts
// its own group, so chunks that resemble nothing keep their order. A group
// takes at most maxBytes of chunks (about a frame): the next members of a
// long family of versions start a group of their own.
func Order(sketches []Sketch, sizes []int64, maxBytes int64) [][]int {
	type group struct {
		members []int
		bytes   int64
	}
	var groups []*group
	byFeature := make(map[uint64]*group, len(sketches)*Features)
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
	out := make([][]int, len(groups))
	for i, g := range groups {
		out[i] = g.members
	}
	return out
}
