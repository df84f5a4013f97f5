package client

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/opencontainers/go-digest"
)

// chunkDir is a local directory of chunks, uncompressed, one file per chunk
// at <dir>/<algorithm>/<first 2 hex>/<hex>. Files appear atomically (temp
// file, rename), so a crash leaves at worst a stray temp file, never a
// short chunk under its final name; every read is verified anyway, since the
// directory may be shared, copied or damaged. Safe for concurrent use, also
// by several processes.
type chunkDir struct {
	root string
}

func (d chunkDir) path(id digest.Digest) string {
	hex := id.Encoded()
	return filepath.Join(d.root, string(id.Algorithm()), hex[:2], hex)
}

// get returns the chunk's bytes, or ok == false if the directory does not
// hold a good copy. A copy that fails verification is removed.
func (d chunkDir) get(id digest.Digest) (data []byte, ok bool, err error) {
	p := d.path(id)
	data, err = os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("chunk cache: %w", err)
	}
	if verifyChunk(id, data) != nil {
		// A damaged copy is a miss: fetch it again and overwrite.
		_ = os.Remove(p)
		return nil, false, nil
	}
	return data, true, nil
}

// has reports whether a file exists for the chunk (not verified: get
// verifies when the bytes are used).
func (d chunkDir) has(id digest.Digest) bool {
	_, err := os.Stat(d.path(id))
	return err == nil
}

// put stores data under id atomically. The caller has verified data.
func (d chunkDir) put(id digest.Digest, data []byte) error {
	p := d.path(id)
	dir := filepath.Dir(p)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("chunk cache: %w", err)
	}
	f, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return fmt.Errorf("chunk cache: %w", err)
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, p)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("chunk cache: %w", err)
	}
	return nil
}
