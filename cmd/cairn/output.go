package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// createTempOutput checks out, where a command is to write a file (pull's
// -o), and creates the temp file beside it that is renamed to out once
// complete. It runs before any download, so a directory, or a path whose
// directory does not exist, fails at once; its errors name out as the user
// gave it, never the hidden temp file.
func createTempOutput(out string) (*os.File, error) {
	if st, err := os.Stat(out); err == nil && st.IsDir() {
		return nil, fmt.Errorf("-o %s is a directory: name a file, e.g. -o %s", out, filepath.Join(out, "layer.tar"))
	}
	dir := filepath.Dir(out)
	st, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("-o %s: directory %s does not exist", out, dir)
	case err != nil:
		return nil, fmt.Errorf("-o %s: %w", out, pathErr(err))
	case !st.IsDir():
		return nil, fmt.Errorf("-o %s: %s is not a directory", out, dir)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(out)+".cairn-*")
	if err != nil {
		return nil, fmt.Errorf("-o %s: cannot create a file in %s: %w", out, dir, pathErr(err))
	}
	return tmp, nil
}

// pathErr drops the path of a *fs.PathError, for a message that names the
// path itself.
func pathErr(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
