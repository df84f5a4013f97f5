// Package backend defines the blob store that cairn keeps chunk packs and
// metadata in, and the contract every implementation honours.
//
// Implementations live in subpackages: fs (a local directory, the embedded
// default), s3 (any S3-compatible service through minio-go), mem (a fake for
// tests) and retry (a decorator that retries transient failures). The
// conformance suite in backendtest runs against each of them.
package backend

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Store is a flat namespace of immutable blobs addressed by key.
//
// Contract, for every implementation:
//   - Safe for concurrent use by multiple goroutines.
//   - Every method takes the caller's context first and returns promptly
//     once it is cancelled, with an error that wraps ctx.Err().
//   - Keys are checked with ValidateKey before any I/O; a bad key is an
//     error wrapping ErrInvalidKey and touches nothing.
//   - A missing object is an error for which errors.Is(err, ErrNotFound).
//   - Put stores exactly size bytes read from r, starting at the reader's
//     current position (a decorator that retries seeks back to it). If r yields fewer or more
//     bytes, Put fails with an error wrapping ErrSizeMismatch and leaves
//     nothing behind (a previous object under key, if any, is untouched).
//     A Put that succeeds is durable and atomically visible: readers see
//     either the old object or the whole new one, never a part.
//   - Delete of a missing key succeeds (it is idempotent).
//   - A failure of the service itself (down, refusing connections, timing
//     out) wraps ErrUnavailable so that callers can tell it from bad input.
type Store interface {
	// Put writes exactly size bytes from r under key, replacing any object
	// already there.
	Put(ctx context.Context, key string, r io.Reader, size int64) error

	// Open returns a reader over length bytes of the object starting at
	// offset. A length < 0 means "to the end". A range that runs past the
	// end is cut at the end; offset == size yields an empty reader and
	// offset > size is an error wrapping ErrInvalidRange.
	Open(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error)

	// Stat returns the object's size.
	Stat(ctx context.Context, key string) (Info, error)

	// Delete removes the object; deleting a missing key is not an error.
	Delete(ctx context.Context, key string) error

	// List calls fn for every object whose key starts with prefix, in no
	// particular order. An error from fn stops the listing and is returned.
	List(ctx context.Context, prefix string, fn func(Info) error) error
}

// Info describes a stored object.
type Info struct {
	Key  string
	Size int64
}

var (
	// ErrNotFound reports that no object exists under a key.
	ErrNotFound = errors.New("backend: object not found")
	// ErrInvalidKey reports a key that ValidateKey rejects.
	ErrInvalidKey = errors.New("backend: invalid key")
	// ErrSizeMismatch reports a Put whose reader did not yield the declared size.
	ErrSizeMismatch = errors.New("backend: size mismatch")
	// ErrInvalidRange reports an Open whose offset lies beyond the object.
	ErrInvalidRange = errors.New("backend: invalid range")
	// ErrUnavailable reports that the storage service could not be reached
	// or failed in a way that may pass (5xx, refused, reset, timed out).
	ErrUnavailable = errors.New("backend: unavailable")
)

// MaxKeyLen bounds keys well below the 1024-byte S3 limit.
const MaxKeyLen = 512

// MaxSegmentLen bounds each '/'-separated segment, so that a key valid on
// one store is valid on all: the fs store adds a few bytes to each segment
// and file systems allow 255-byte names.
const MaxSegmentLen = 200

// ValidateKey reports whether key is acceptable to every Store: 1 to
// MaxKeyLen bytes of [A-Za-z0-9._-] in '/'-separated segments of at most
// MaxSegmentLen bytes, with no empty,
// "." or ".." segment and no leading or trailing '/'. These rules keep a key
// from ever naming a file outside an fs store and mean the same object on
// every backend.
func ValidateKey(key string) error {
	if key == "" {
		return fmt.Errorf("%w: empty", ErrInvalidKey)
	}
	if len(key) > MaxKeyLen {
		return fmt.Errorf("%w: %d bytes, longer than %d", ErrInvalidKey, len(key), MaxKeyLen)
	}
	for i := 0; i < len(key); i++ {
		c := key[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9',
			c == '.', c == '_', c == '-', c == '/':
		default:
			return fmt.Errorf("%w: %q: byte %#x at %d is not allowed", ErrInvalidKey, key, c, i)
		}
	}
	for _, seg := range strings.Split(key, "/") {
		switch seg {
		case "":
			return fmt.Errorf("%w: %q: empty path segment", ErrInvalidKey, key)
		case ".", "..":
			return fmt.Errorf("%w: %q: %q segment", ErrInvalidKey, key, seg)
		}
		if len(seg) > MaxSegmentLen {
			return fmt.Errorf("%w: %q: segment of %d bytes, longer than %d", ErrInvalidKey, key, len(seg), MaxSegmentLen)
		}
	}
	return nil
}

// ValidatePrefix checks a List prefix: empty (everything) or a string that
// would be a valid key prefix. A trailing '/' is allowed.
func ValidatePrefix(prefix string) error {
	if prefix == "" {
		return nil
	}
	return ValidateKey(strings.TrimSuffix(prefix, "/") + suffixIfDir(prefix))
}

// suffixIfDir keeps ValidateKey's segment rules meaningful for "dir/"
// prefixes without accepting "//".
func suffixIfDir(prefix string) string {
	if strings.HasSuffix(prefix, "/") {
		return "/x"
	}
	return ""
}

// ClampRange resolves an Open range against an object of the given size:
// it returns the number of bytes to read, or ErrInvalidRange.
func ClampRange(key string, size, offset, length int64) (int64, error) {
	if offset < 0 || offset > size {
		return 0, fmt.Errorf("%w: %s: offset %d, size %d", ErrInvalidRange, key, offset, size)
	}
	n := size - offset
	if length >= 0 && length < n {
		n = length
	}
	return n, nil
}
