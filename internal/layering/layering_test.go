package layering

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// module is cairn's module path; patterns starting with "./" are relative
// to it.
const module = "github.com/cairnbuild/cairn"

const (
	badger = "github.com/dgraph-io/badger/..."
	minio  = "github.com/minio/minio-go/..."
)

// A rule says that some packages of the module must not import others.
//
// Patterns are written as for the go command: "./cache/..." is package
// cache and every package below it in this module, "./server" that package
// alone. A pattern that does not start with "./" is an import path outside
// the module ("net/http/...", badger).
//
// A package may always import itself (an external test package does), and
// the standard library imports nothing of ours, so the walk stops there.
type rule struct {
	name   string   // what the rule says; failures quote it
	from   []string // the packages the rule holds for
	except []string // packages matched by from that it does not hold for
	forbid []string // what they must not import
	allow  []string // packages matched by forbid that they may import all the same
	// direct: only a package's own imports count. Otherwise a path through
	// other packages, ours or not, counts too: the client must not reach
	// badger through some package in between.
	direct bool
	// prodOnly: the rule does not hold for _test.go files. Otherwise test
	// files are held to it too, by their direct imports (the test-only
	// dependencies of a package are not in the graph go list reports).
	prodOnly bool
	// until is a package the rule waits for: while it does not exist, the
	// rule is skipped. A rule without one whose from matches no package
	// fails, so that a typo cannot make a rule pass by checking nothing.
	until string
}

// rules are the dependency rules of the design's Layout section, plus what
// follows from them for the packages it does not name (stepkey, proto,
// metrics).
//
// metrics holds the Prometheus decorators and collectors that are not tied
// to gRPC: it wraps a backend.Store, reads cache.Stats and decorates the
// step cache. It sits above the core (it imports cache), so the core must not
// import it, and it sits below the fronts, so it must not import them.
var rules = []rule{
	{
		name:   "backend knows nothing above it: it imports nothing of ours but backend's own packages",
		from:   []string{"./backend/..."},
		forbid: []string{"./..."},
		allow:  []string{"./backend/..."},
	},
	{
		name:   "chunker, chunkid, recompress and tarsplit are pure: they import nothing of ours",
		from:   []string{"./chunker/...", "./chunkid/...", "./recompress/...", "./tarsplit/..."},
		forbid: []string{"./..."},
	},
	{
		name:   "cache/internal/resemble (compaction's order) is pure: it imports nothing of ours",
		from:   []string{"./cache/internal/resemble/..."},
		forbid: []string{"./..."},
	},
	{
		name:   "transfer (the slots shared by the gRPC and registry fronts) is pure: it imports nothing of ours",
		from:   []string{"./transfer/..."},
		forbid: []string{"./..."},
	},
	{
		name:   "stepkey imports nothing of ours but chunkid, so that the client can compute step keys without the core",
		from:   []string{"./stepkey/..."},
		forbid: []string{"./..."},
		allow:  []string{"./chunkid"},
	},
	{
		name:   "proto is the generated API: it imports nothing of ours",
		from:   []string{"./proto/..."},
		forbid: []string{"./..."},
	},
	{
		name:   "the core knows nothing of its fronts: no server, registry, proto, cmd, client, auth or metrics",
		from:   []string{"./cache/..."},
		forbid: []string{"./server/...", "./registry/...", "./proto/...", "./cmd/...", "./client/...", "./auth/...", "./metrics/..."},
	},
	{
		// Direct only: badger itself brings in net/http (expvar) and
		// protobuf.
		name:   "the core speaks neither gRPC nor HTTP",
		from:   []string{"./cache/..."},
		forbid: []string{"google.golang.org/grpc/...", "net/http/..."},
		direct: true,
	},
	{
		// Direct only: everything reaches the internals through the
		// facade. Go refuses to build such an import as well; the rule
		// says so here, where the others are.
		name:   "nothing outside the core imports its internals",
		from:   []string{"./..."},
		except: []string{"./cache/..."},
		forbid: []string{"./cache/internal/..."},
		direct: true,
	},
	{
		// Direct only: the facade reaches badger through the index, as it
		// should. Tests of the core may open the DB to inject faults.
		name:     "only cache/internal/index imports badger",
		from:     []string{"./..."},
		except:   []string{"./cache/internal/index/..."},
		forbid:   []string{badger},
		direct:   true,
		prodOnly: true,
		until:    "./cache/internal/index",
	},
	{
		name:   "the client never imports the core, a front, or a store (no badger, no minio)",
		from:   []string{"./client/..."},
		forbid: []string{"./cache/...", "./server/...", "./registry/...", "./backend/...", "./metrics/...", "./cmd/...", badger, minio},
	},
	{
		name:   "server never imports registry: both only translate",
		from:   []string{"./server/..."},
		forbid: []string{"./registry/..."},
	},
	{
		name:   "registry never imports server: both only translate",
		from:   []string{"./registry/..."},
		forbid: []string{"./server/..."},
		until:  "./registry",
	},
	{
		name:   "metrics knows nothing of the fronts: no server, registry, proto, client or cmd",
		from:   []string{"./metrics/..."},
		forbid: []string{"./server/...", "./registry/...", "./proto/...", "./client/...", "./cmd/..."},
	},
	{
		name:   "auth imports nothing of the core, nor the fronts it plugs into",
		from:   []string{"./auth/..."},
		forbid: []string{"./cache/...", "./backend/...", "./server/...", "./registry/...", "./cmd/...", badger},
		until:  "./auth",
	},
}

// pkg is what go list -json says of one package.
type pkg struct {
	ImportPath   string
	Module       *struct{ Dir string }
	Standard     bool
	Imports      []string
	TestImports  []string
	XTestImports []string
	Error        *struct{ Err string }
}

func TestDependencyRules(t *testing.T) {
	graph, ours := load(t)
	for _, r := range rules {
		t.Run(r.name, func(t *testing.T) {
			if r.until != "" && graph[resolve(r.until)] == nil {
				t.Skipf("waits for package %s, which does not exist yet", short(resolve(r.until)))
			}
			matched := 0
			for _, p := range ours {
				if !r.holdsFor(p.ImportPath) {
					continue
				}
				matched++
				for _, v := range r.check(graph, p) {
					t.Errorf("%s\n\trule: %s", v, r.name)
				}
			}
			if matched == 0 {
				t.Errorf("rule %q holds for no package: its from patterns %v match nothing", r.name, r.from)
			}
		})
	}
}

// load runs go list over the module and returns every package in the
// import graph by path, and the module's own packages.
func load(t *testing.T) (map[string]*pkg, []*pkg) {
	// CI always has go: fail rather than skip, or a missing toolchain
	// would turn this test off unnoticed.
	if _, err := exec.LookPath("go"); err != nil {
		t.Fatalf("go is not on PATH: %v", err)
	}
	cmd := exec.Command("go", "list", "-e", "-deps", "-json", module+"/...")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.String())
	}
	graph := map[string]*pkg{}
	var ours []*pkg
	root := ""
	for dec := json.NewDecoder(bytes.NewReader(out)); ; {
		p := new(pkg)
		if err := dec.Decode(p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("go list output: %v", err)
		}
		graph[p.ImportPath] = p
		if within(p.ImportPath, module) {
			ours = append(ours, p)
			if p.Module != nil {
				root = p.Module.Dir
			}
			// A package go list could not load may hide imports.
			if p.Error != nil {
				t.Errorf("go list: %s: %s", short(p.ImportPath), p.Error.Err)
			}
		}
	}
	if len(ours) == 0 || root == "" {
		t.Fatalf("go list found no package of %s", module)
	}
	watchSources(t, root)
	return graph, ours
}

// watchSources opens every directory of the module under root. go test
// caches a passing result keyed on the files and directories the test
// opened, and go list ran in another process: without this, a new import
// would replay the cached pass instead of failing.
func watchSources(t *testing.T, root string) {
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && path != root {
			// What the go command ignores: .git, testdata, _foo.
			if name := d.Name(); name == "testdata" || strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_") {
				return filepath.SkipDir
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walking the module: %v", err)
	}
}

// holdsFor reports whether the rule applies to the package at path.
func (r rule) holdsFor(path string) bool {
	return matchAny(r.from, path) && !matchAny(r.except, path)
}

// forbids reports whether the rule forbids importing the package at path
// from the package at from.
func (r rule) forbids(from, path string) bool {
	return path != from && matchAny(r.forbid, path) && !matchAny(r.allow, path)
}

// check returns the rule's violations by p, one line each.
func (r rule) check(graph map[string]*pkg, p *pkg) []string {
	var bad []string
	if r.direct {
		for _, imp := range p.Imports {
			if r.forbids(p.ImportPath, imp) {
				bad = append(bad, short(p.ImportPath)+" imports "+short(imp))
			}
		}
	} else {
		bad = r.walk(graph, p)
	}
	if !r.prodOnly {
		for _, imp := range slices.Concat(p.TestImports, p.XTestImports) {
			if r.forbids(p.ImportPath, imp) {
				bad = append(bad, short(p.ImportPath)+" imports "+short(imp)+" in its tests")
			}
		}
	}
	return bad
}

// walk follows p's imports breadth first and returns each forbidden package
// it reaches, with the shortest path of imports to it. It does not walk
// past a forbidden package (whatever that one imports is its own affair)
// nor into the standard library.
func (r rule) walk(graph map[string]*pkg, p *pkg) []string {
	var bad []string
	via := map[string]string{p.ImportPath: ""} // package -> the one that imports it
	queue := []string{p.ImportPath}
	for len(queue) > 0 {
		cur := graph[queue[0]]
		queue = queue[1:]
		if cur == nil || cur.Standard {
			continue
		}
		for _, imp := range cur.Imports {
			if _, seen := via[imp]; seen {
				continue
			}
			via[imp] = cur.ImportPath
			if !r.forbids(p.ImportPath, imp) {
				queue = append(queue, imp)
				continue
			}
			line := short(p.ImportPath) + " imports " + short(imp)
			if cur.ImportPath != p.ImportPath {
				var path []string
				for q := imp; q != ""; q = via[q] {
					path = append(path, short(q))
				}
				slices.Reverse(path)
				line += " (" + strings.Join(path, " → ") + ")"
			}
			bad = append(bad, line)
		}
	}
	return bad
}

// resolve turns a pattern into an import path pattern.
func resolve(pattern string) string {
	if rest, ok := strings.CutPrefix(pattern, "./"); ok {
		if rest == "..." {
			return module + "/..."
		}
		return module + "/" + rest
	}
	return pattern
}

func matchAny(patterns []string, path string) bool {
	for _, pat := range patterns {
		pat = resolve(pat)
		if base, ok := strings.CutSuffix(pat, "/..."); ok {
			if within(path, base) {
				return true
			}
		} else if path == pat {
			return true
		}
	}
	return false
}

// within reports whether path is base or below it.
func within(path, base string) bool {
	return path == base || strings.HasPrefix(path, base+"/")
}

// short drops the module's path from one of its packages, for messages.
func short(path string) string {
	if path == module {
		return "."
	}
	return strings.TrimPrefix(path, module+"/")
}
