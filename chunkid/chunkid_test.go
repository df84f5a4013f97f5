package chunkid

import (
	"errors"
	"strings"
	"testing"

	"github.com/zeebo/blake3"
)

func TestOf(t *testing.T) {
	sum := blake3.Sum256([]byte("chunk"))
	want := "blake3:" + strings.ToLower(strings.TrimSpace(hexOf(sum[:])))
	if got := Of([]byte("chunk")); string(got) != want {
		t.Fatalf("Of = %s, want %s", got, want)
	}
	// The BLAKE3 test vector for the empty input pins the algorithm.
	if got := Of(nil); got != "blake3:af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262" {
		t.Errorf("Of(nil) = %s", got)
	}
}

func hexOf(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&15])
	}
	return string(out)
}

func TestParse(t *testing.T) {
	good := Of([]byte("chunk"))
	if id, err := Parse(string(good)); err != nil || id.Digest() != good || id != Sum([]byte("chunk")) {
		t.Errorf("Parse(%s) = %v, %v", good, id, err)
	}
	hexPart := string(good[7:])
	for _, tc := range []struct{ in, want string }{
		{"", "want blake3:"},
		{hexPart, "want blake3:"},
		{"sha256:" + hexPart, `algorithm "sha256" not supported`},
		{"BLAKE3:" + hexPart, `algorithm "BLAKE3" not supported`},
		{"blake3:" + hexPart[:63], "63 hex digits"},
		{"blake3:" + hexPart + "0", "65 hex digits"},
		{"blake3:" + strings.ToUpper(hexPart), "not a lower-case hex digit"},
		{"blake3:" + hexPart[:63] + "g", "not a lower-case hex digit"},
		{"blake3:" + strings.Repeat("a", 1000), "1000 hex digits"},
	} {
		_, err := Parse(tc.in)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%.20q...) = %v, want ErrInvalid saying %q", tc.in, err, tc.want)
		}
		if err != nil && len(err.Error()) > 300 {
			t.Errorf("error of %d bytes for a long input", len(err.Error()))
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add(string(Of([]byte("x"))))
	f.Add("blake3:")
	f.Add("sha256:abc")
	f.Fuzz(func(t *testing.T, s string) {
		id, err := Parse(s)
		if err != nil {
			return
		}
		if string(id.Digest()) != s {
			t.Fatalf("Parse(%q) accepted a second spelling of %s", s, id.Digest())
		}
	})
}
