package pack

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/cairnbuild/cairn/backend"
	"github.com/cairnbuild/cairn/cache/internal/cerr"
)

// tailGuess is how much of a pack's end ReadTable fetches first: the
// footer and a table of up to 290 entries, which holds every pack of chunks
// of the default sizes (about 60 per 4 MiB pack written by a push, about
// four times that in a compacted one); a larger table costs a second read.
const tailGuess = 16 << 10

// ReadTable reads the table of the pack stored under key, of size bytes,
// with one ranged read of its tail (two if the table is unusually large).
// A pack that is too short, fails its checksum or is missing is
// ErrDataLoss; a backend that cannot be reached is ErrUnavailable.
func ReadTable(ctx context.Context, store backend.Store, key string, size int64) ([]Entry, error) {
	if size < FooterSize {
		return nil, fmt.Errorf("%w: %s: %d bytes, too short for a pack", cerr.ErrDataLoss, key, size)
	}
	n := min(size, tailGuess)
	tail, err := readAt(ctx, store, key, size-n, n)
	if err != nil {
		return nil, err
	}
	footer := tail[len(tail)-FooterSize:]
	_, tableSize, err := ParseFooter(footer, size)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", cerr.ErrDataLoss, key, err)
	}
	tableLen := int64(tableSize)
	var table []byte
	if tableLen+FooterSize <= n {
		table = tail[n-FooterSize-tableLen : n-FooterSize]
	} else if table, err = readAt(ctx, store, key, size-FooterSize-tableLen, tableLen); err != nil {
		return nil, err
	}
	entries, err := ParseTable(table, footer, size)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", cerr.ErrDataLoss, key, err)
	}
	return entries, nil
}

func readAt(ctx context.Context, store backend.Store, key string, off, n int64) ([]byte, error) {
	b := make([]byte, n)
	got, err := readRange(ctx, store, key, off, b)
	if errors.Is(err, ErrShort) {
		return nil, fmt.Errorf("%w: %s: %d of %d bytes at %d", cerr.ErrDataLoss, key, got, n, off)
	}
	return b, err
}

// ErrShort reports a pack that ends before the bytes its index entries or
// table name.
var ErrShort = errors.New("pack shorter than its index entries say")

// ReadRange reads len(buf) bytes of pack p from off into buf and returns
// how many it got: all of them, or fewer and an error. A pack that is
// missing is ErrDataLoss, one that ends early ErrShort; a backend that
// cannot be reached is ErrUnavailable.
func ReadRange(ctx context.Context, store backend.Store, p ID, off int64, buf []byte) (int, error) {
	return readRange(ctx, store, Key(p), off, buf)
}

func readRange(ctx context.Context, store backend.Store, key string, off int64, buf []byte) (int, error) {
	rc, err := store.Open(ctx, key, off, int64(len(buf)))
	if err != nil {
		if errors.Is(err, backend.ErrNotFound) || errors.Is(err, backend.ErrInvalidRange) {
			return 0, fmt.Errorf("%w: pack %s: %w", cerr.ErrDataLoss, key, err)
		}
		return 0, cerr.Backend("read "+key, err)
	}
	defer rc.Close()
	n, err := io.ReadFull(rc, buf)
	if errors.Is(err, backend.ErrUnavailable) {
		// A body cut short by the network (S3 says so) is not a short
		// pack: only a plain end of the object is.
		return n, cerr.Backend("read "+key, err)
	}
	if err == io.ErrUnexpectedEOF || err == io.EOF {
		return n, ErrShort
	}
	if err != nil {
		return n, cerr.Backend("read "+key, err)
	}
	return n, nil
}
