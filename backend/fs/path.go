package fs

import (
	"strings"

	"github.com/cairnbuild/cairn/backend"
)

const (
	// dirSuffix ends every directory name. It is not a key character, so
	// the directory for prefix "x/" never collides with the object "x".
	dirSuffix = "+"

	// tmpMark separates a temporary file's final name from its random
	// suffix; not a key character, so no object is ever named like one.
	tmpMark = "~"

	// tmpRandLen is the length of the random hex suffix of a temporary file.
	tmpRandLen = 16

	// MaxSegmentLen is backend.MaxSegmentLen: with the temporary suffix
	// (17 bytes) a segment stays under the common 255-byte name limit.
	MaxSegmentLen = backend.MaxSegmentLen
)

// objectPath maps a key to its file name relative to the store's root,
// slash-separated. It is the only place that turns a key into a path.
func objectPath(key string) (string, error) {
	if err := backend.ValidateKey(key); err != nil {
		return "", err
	}
	segs := strings.Split(key, "/")
	var b strings.Builder
	b.Grow(len(key) + len(segs))
	for i, seg := range segs {
		if i > 0 {
			b.WriteByte('/')
		}
		b.WriteString(seg)
		if i < len(segs)-1 {
			b.WriteString(dirSuffix)
		}
	}
	return b.String(), nil
}

// dirPath maps a key prefix ending in '/' (or "") to the directory that
// holds its objects: "a/b/" -> "a+/b+", "" -> ".".
func dirPath(dirKey string) string {
	if dirKey == "" {
		return "."
	}
	segs := strings.Split(strings.TrimSuffix(dirKey, "/"), "/")
	return strings.Join(segs, dirSuffix+"/") + dirSuffix
}

// keyFromPath is the inverse of objectPath; ok is false for names that no
// key maps to (temporary files, foreign files).
func keyFromPath(name string) (key string, ok bool) {
	segs := strings.Split(name, "/")
	for i := range segs[:len(segs)-1] {
		s, found := strings.CutSuffix(segs[i], dirSuffix)
		if !found {
			return "", false
		}
		segs[i] = s
	}
	key = strings.Join(segs, "/")
	if p, err := objectPath(key); err != nil || p != name {
		return "", false
	}
	return key, true
}

// isTemp reports whether a file name is one of our temporary files.
func isTemp(name string) bool {
	i := strings.LastIndex(name, tmpMark)
	if i < 0 || len(name)-i-1 != tmpRandLen {
		return false
	}
	for _, c := range name[i+1:] {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}
