// Package golden pins stored formats in tests: a test encodes a fixed
// value, compares the bytes with a file in its testdata folder, and decodes
// the file's bytes back, so that an encoder and a decoder changed together
// still fail. `go test ./... -run Golden -update` rewrites the files, for a
// deliberate format change.
package golden

import (
	"bytes"
	"encoding/hex"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// Bytes compares got with testdata/name, byte for byte, and returns the
// stored bytes (got, with -update) for the test to decode.
func Bytes(t testing.TB, name string, got []byte) []byte {
	t.Helper()
	return check(t, name, got, got, func(b []byte) ([]byte, error) { return b, nil })
}

// Hex is Bytes for binary formats, stored as hex, 32 bytes a line, so that
// a format change shows in a diff.
func Hex(t testing.TB, name string, got []byte) []byte {
	t.Helper()
	var text strings.Builder
	for rest := got; len(rest) > 0; rest = rest[min(32, len(rest)):] {
		text.WriteString(hex.EncodeToString(rest[:min(32, len(rest))]) + "\n")
	}
	return check(t, name, got, []byte(text.String()), func(b []byte) ([]byte, error) {
		return hex.DecodeString(strings.ReplaceAll(string(b), "\n", ""))
	})
}

func check(t testing.TB, name string, got, file []byte, parse func([]byte) ([]byte, error)) []byte {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, file, 0o644); err != nil {
			t.Fatal(err)
		}
		return got
	}
	stored, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	want, err := parse(stored)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s: encoding changed (a format change):\n got %x\nwant %x", name, got, want)
	}
	return want
}
