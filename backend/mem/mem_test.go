package mem_test

import (
	"testing"

	"github.com/cairnbuild/cairn/backend"
	"github.com/cairnbuild/cairn/backend/backendtest"
	"github.com/cairnbuild/cairn/backend/mem"
)

func TestConformance(t *testing.T) {
	backendtest.RunWithOptions(t, func(*testing.T) backend.Store { return mem.New() }, backendtest.Options{
		// mem keeps every object in memory by design.
		LargeObjectSize: -1,
	})
}

func BenchmarkStore(b *testing.B) {
	backendtest.Bench(b, mem.New())
}
