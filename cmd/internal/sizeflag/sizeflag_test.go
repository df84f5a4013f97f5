package sizeflag

import (
	"strings"
	"testing"
)

func TestParseSpellings(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
	}{
		{"4194304", 4 << 20},
		{"4MiB", 4 << 20},
		{"4 MiB", 4 << 20},
		{"4mib", 4 << 20},
		{"4Mi", 4 << 20},
		{" 4MiB ", 4 << 20},
		{"4MB", 4_000_000},
		{"4M", 4_000_000},
		{"4m", 4_000_000},
		{"4 mb", 4_000_000},
		{"1.5GiB", 3 << 29},
		{"4100KiB", 4100 << 10},
		{"0", 0},
	} {
		got, err := Parse("--size", tc.in, "8MiB", 0, 1<<40)
		if err != nil || got != tc.want {
			t.Errorf("Parse(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"4 mebibytes", []string{`--size "4 mebibytes" is not a size`, "e.g. 8MiB", "KiB, MiB"}},
		{"", []string{`--size "" is not a size`, "e.g. 8MiB"}},
		{"-1", []string{`--size "-1" is not a size`}},
		{"MiB", []string{`is not a size`}},
		{"4MiB", []string{`--size "4MiB" (4194304 bytes) is below its minimum, 4100KiB`}},
		{"4000000", []string{`--size 4000000 is below its minimum, 4100KiB`}},
		{"2GiB", []string{`--size "2GiB" (2147483648 bytes) is above its maximum, 1GiB`}},
		{"99EiB", []string{`is not a size`}},
	} {
		_, err := Parse("--size", tc.in, "8MiB", 4100<<10, 1<<30)
		if err == nil {
			t.Errorf("Parse(%q): no error", tc.in)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("Parse(%q): %v; want it to contain %q", tc.in, err, w)
			}
		}
	}
}

// TestFormatParsesBack: Format is exact, and Parse reads it back.
func TestFormatParsesBack(t *testing.T) {
	for _, n := range []int64{0, 1, 1000, 4 << 10, 4100 << 10, 8 << 20, 1 << 30, 3 << 40, 1<<50 + 1} {
		s := Format(n)
		got, err := Parse("--size", s, "8MiB", 0, 1<<62)
		if err != nil || got != n {
			t.Errorf("Format(%d) = %q, which parses as %d, %v", n, s, got, err)
		}
	}
	if got := Format(4100 << 10); got != "4100KiB" {
		t.Errorf("Format(4100KiB) = %q", got)
	}
}
