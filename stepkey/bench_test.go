package stepkey

import (
	"strings"
	"testing"
)

func BenchmarkKey(b *testing.B) {
	s := Step{
		Instruction: "RUN --mount=type=cache,target=/var/cache/apt apt-get update && \\\n    apt-get install -y --no-install-recommends git ca-certificates \"${EXTRA}\"",
		Platform:    "linux/amd64",
		BuildArgs:   []string{"EXTRA=curl", "HTTP_PROXY=http://proxy:3128"},
	}
	for b.Loop() {
		if _, err := Key(l1, s); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkNormalizeLargest checks that the largest accepted instruction
// normalizes in linear time.
func BenchmarkNormalizeLargest(b *testing.B) {
	in := "RUN " + strings.Repeat(`a  "b"  ${c}  `, (MaxInstructionSize-8)/14)
	b.SetBytes(int64(len(in)))
	for b.Loop() {
		if _, err := Normalize(in); err != nil {
			b.Fatal(err)
		}
	}
}
