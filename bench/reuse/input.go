package reuse

import (
	"archive/tar"
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Kind is what a path given to [Analyzer.AddPath] holds.
type Kind string

// The kinds of input.
const (
	KindOCILayout  Kind = "oci-layout"  // a directory with an oci-layout file
	KindDockerSave Kind = "docker-save" // a tar with manifest.json at its top
	KindLayer      Kind = "layer"       // anything else: one layer, plain, gzip or zstd
)

// Magic numbers of the compressed layer formats.
var (
	gzipMagic = []byte{0x1f, 0x8b}
	zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}
)

// blob is one layer as a registry would hold it: its stored (possibly
// compressed) bytes, and their digest when the input names it.
type blob struct {
	source string
	digest string // "sha256:…" of the stored bytes, or "" when unknown
	open   func() (io.ReadCloser, error)
}

// DetectKind reports what p holds, by looking at it, not at its name.
func DetectKind(p string) (Kind, error) {
	fi, err := os.Stat(p)
	if err != nil {
		return "", err
	}
	if fi.IsDir() {
		if _, err := os.Stat(filepath.Join(p, "oci-layout")); err != nil {
			return "", fmt.Errorf("%s: a directory but not an OCI image layout (no oci-layout file)", p)
		}
		return KindOCILayout, nil
	}
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	head := make([]byte, 4)
	n, _ := io.ReadFull(f, head)
	head = head[:n]
	if bytes.HasPrefix(head, gzipMagic) || bytes.HasPrefix(head, zstdMagic) {
		return KindLayer, nil
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return "", err
	}
	// Headers only: tar.Reader seeks over the entries' contents.
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err != nil {
			// io.EOF, or not a tar at all: either way one opaque layer.
			return KindLayer, nil
		}
		if cleanTarName(h.Name) == "manifest.json" {
			return KindDockerSave, nil
		}
	}
}

// blobs lists the layers that p holds, in image order.
func blobs(p string) ([]blob, error) {
	kind, err := DetectKind(p)
	if err != nil {
		return nil, err
	}
	switch kind {
	case KindOCILayout:
		return layoutBlobs(p)
	case KindDockerSave:
		bs, err := dockerSaveBlobs(p)
		if errors.Is(err, errNotDockerSave) {
			// A layer that happens to hold a manifest.json of its own.
			return []blob{{source: p, open: func() (io.ReadCloser, error) { return os.Open(p) }}}, nil
		}
		return bs, err
	default:
		return []blob{{source: p, open: func() (io.ReadCloser, error) { return os.Open(p) }}}, nil
	}
}

// layoutBlobs walks an OCI layout's index (nested indexes included) and
// lists the layers of every image in it.
func layoutBlobs(dir string) ([]blob, error) {
	lp, err := layout.FromPath(dir)
	if err != nil {
		return nil, fmt.Errorf("oci layout %s: %w", dir, err)
	}
	idx, err := lp.ImageIndex()
	if err != nil {
		return nil, fmt.Errorf("oci layout %s: %w", dir, err)
	}
	var out []blob
	var walk func(ii v1.ImageIndex, depth int) error
	walk = func(ii v1.ImageIndex, depth int) error {
		if depth > 8 {
			return errors.New("indexes nested deeper than 8")
		}
		im, err := ii.IndexManifest()
		if err != nil {
			return err
		}
		for _, d := range im.Manifests {
			switch {
			case d.MediaType.IsIndex():
				child, err := ii.ImageIndex(d.Digest)
				if err != nil {
					return fmt.Errorf("index %s: %w", d.Digest, err)
				}
				if err := walk(child, depth+1); err != nil {
					return err
				}
			case d.MediaType.IsImage():
				img, err := ii.Image(d.Digest)
				if err != nil {
					return fmt.Errorf("image %s: %w", d.Digest, err)
				}
				m, err := img.Manifest()
				if err != nil {
					return fmt.Errorf("image %s: %w", d.Digest, err)
				}
				for i, l := range m.Layers {
					if !l.MediaType.IsDistributable() {
						continue // a foreign layer: its blob is not in the layout
					}
					h := l.Digest
					out = append(out, blob{
						source: fmt.Sprintf("%s@%s[%d]", dir, shortDigest(d.Digest.String()), i),
						digest: h.String(),
						open:   func() (io.ReadCloser, error) { return lp.Blob(h) },
					})
				}
			}
		}
		return nil
	}
	if err := walk(idx, 0); err != nil {
		return nil, fmt.Errorf("oci layout %s: %w", dir, err)
	}
	return out, nil
}

// dockerSaveBlobs lists the layers of every image in a `docker save`
// tarball. go-containerregistry parses the manifest; the layers are read
// straight from the tar by path, since its Image needs a tag to pick an
// image and `docker save` of an image ID has none.
func dockerSaveBlobs(p string) ([]blob, error) {
	m, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(p) })
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	if errors.As(err, &syntax) || errors.As(err, &typ) || (err == nil && len(m) == 0) {
		return nil, errNotDockerSave
	}
	if err != nil {
		return nil, fmt.Errorf("docker save %s: %w", p, err)
	}
	var out []blob
	for i, d := range m {
		for j, lp := range d.Layers {
			name := lp
			var digest string
			// Docker ≥ 25 writes layers as OCI blobs: the path names the digest.
			if hex, ok := strings.CutPrefix(cleanTarName(lp), "blobs/sha256/"); ok && len(hex) == 64 {
				digest = "sha256:" + hex
			}
			out = append(out, blob{
				source: fmt.Sprintf("%s#%d[%d]", p, i, j),
				digest: digest,
				open:   func() (io.ReadCloser, error) { return openTarEntry(p, name) },
			})
		}
	}
	return out, nil
}

// errNotDockerSave: the tar has a manifest.json at its top, but not the
// one `docker save` writes.
var errNotDockerSave = errors.New("not a docker save manifest")

// openTarEntry opens the entry called name in the tar at p, following
// symbolic links inside the tar (older `docker save` links repeated layers).
func openTarEntry(p, name string) (io.ReadCloser, error) {
	want := cleanTarName(name)
	for hops := 0; hops < 8; hops++ {
		f, err := os.Open(p)
		if err != nil {
			return nil, err
		}
		tr := tar.NewReader(bufio.NewReaderSize(f, 64<<10))
		var link string
		for {
			h, err := tr.Next()
			if err != nil {
				f.Close()
				if err == io.EOF {
					return nil, fmt.Errorf("%s: no entry %q", p, name)
				}
				return nil, fmt.Errorf("%s: %w", p, err)
			}
			if cleanTarName(h.Name) != want {
				continue
			}
			if h.Typeflag == tar.TypeSymlink {
				link = cleanTarName(path.Join(path.Dir(want), h.Linkname))
				break
			}
			return struct {
				io.Reader
				io.Closer
			}{tr, f}, nil
		}
		f.Close()
		want = link
	}
	return nil, fmt.Errorf("%s: too many links resolving %q", p, name)
}

// cleanTarName drops the "./" and "/" that tar writers put in front.
func cleanTarName(n string) string {
	n = path.Clean("/" + n)
	return strings.TrimPrefix(n, "/")
}

func shortDigest(d string) string {
	_, hex, ok := strings.Cut(d, ":")
	if ok && len(hex) > 12 {
		return hex[:12]
	}
	return d
}
