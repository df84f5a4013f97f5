package registry

import "testing"

func TestAcceptsZstd(t *testing.T) {
	for h, want := range map[string]bool{
		"": false, "gzip": false, "zstd": true, "gzip, zstd": true, "ZSTD": true, "zstd;q=0": false, "zstd; q=0.5": true,
		"br;q=1, zstd;q=0.0": false, "zstdx": false, "*": false,
	} {
		if got := acceptsZstd(h); got != want {
			t.Errorf("acceptsZstd(%q) = %v", h, got)
		}
	}
}
