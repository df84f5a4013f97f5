package client

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDependencies keeps the package cheap for builders to import: the API
// and the chunker, never the server's storage.
func TestDependencies(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Skipf("go list: %v", err)
	}
	for _, dep := range strings.Fields(string(out)) {
		for _, banned := range []string{
			"github.com/cairnbuild/cairn/cache",
			"github.com/cairnbuild/cairn/server",
			"github.com/cairnbuild/cairn/backend",
			"github.com/dgraph-io/badger",
			"github.com/minio/minio-go",
		} {
			if strings.HasPrefix(dep, banned) {
				t.Errorf("client depends on %s", dep)
			}
		}
	}
}
