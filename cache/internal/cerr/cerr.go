// Package cerr holds the error sentinels of cairn's core. Package cache
// re-exports each one under the same name; the internal packages wrap them,
// so that errors.Is works the same whichever part of the core failed.
package cerr

import (
	"context"
	"errors"
	"fmt"

	"github.com/cairnbuild/cairn/backend"
)

// Their messages carry no "cache: " prefix: every error of the core says
// which operation failed ("cache: record step: invalid argument: ..."),
// so a prefix here would repeat it.
var (
	// ErrNotFound reports a layer, chunk or step the cache does not hold.
	ErrNotFound = errors.New("not found")
	// ErrInvalidArgument reports bad input: a malformed or unsupported
	// digest, a truncated stream, a malformed chunk list, an oversized value.
	// Nothing was changed.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrDigestMismatch reports data that does not hash to the digest it was
	// declared with. Nothing was committed. It is also an ErrInvalidArgument.
	ErrDigestMismatch error = digestMismatch{}
	// ErrSizeMismatch reports a stream shorter or longer than its declared
	// size. Nothing was committed. It is also an ErrInvalidArgument.
	ErrSizeMismatch = fmt.Errorf("%w: size mismatch", ErrInvalidArgument)
	// ErrOutOfRange reports a read offset beyond the end of a layer.
	ErrOutOfRange = errors.New("offset out of range")
	// ErrFailedPrecondition reports a request the cache's state does not
	// allow yet: a commit that names a chunk not uploaded, a step record for
	// a layer not committed.
	ErrFailedPrecondition = errors.New("failed precondition")
	// ErrDataLoss reports stored data that is missing or fails verification,
	// or an index value that does not decode. The cache never returns wrong
	// bytes in its place.
	ErrDataLoss = errors.New("data loss")
	// ErrUnavailable reports a backend or index that cannot serve right now
	// (backend.ErrUnavailable is translated to it); retrying may help.
	ErrUnavailable = errors.New("unavailable")
	// ErrResourceExhausted reports a request larger than the cache accepts
	// in one piece (for example a layer with more chunks than one index
	// transaction can hold).
	ErrResourceExhausted = errors.New("resource exhausted")
	// ErrClosed reports a call on a closed Cache. It is also ErrUnavailable.
	ErrClosed error = closedError{}
)

type digestMismatch struct{}

func (digestMismatch) Error() string { return "digest mismatch" }

// Is makes ErrDigestMismatch match ErrInvalidArgument too.
func (digestMismatch) Is(target error) bool { return target == ErrInvalidArgument }

type closedError struct{}

func (closedError) Error() string { return "closed" }

// Is makes ErrClosed match ErrUnavailable too.
func (closedError) Is(target error) bool { return target == ErrUnavailable }

// Backend translates a backend error into the core's vocabulary, keeping
// the original in the chain: a missing object becomes ErrNotFound (callers
// that expected the object turn it into ErrDataLoss), an unreachable service
// ErrUnavailable.
func Backend(op string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, backend.ErrNotFound):
		return fmt.Errorf("%s: %w: %w", op, ErrNotFound, err)
	case errors.Is(err, backend.ErrUnavailable):
		return fmt.Errorf("%s: %w: %w", op, ErrUnavailable, err)
	case errors.Is(err, backend.ErrInvalidKey), errors.Is(err, backend.ErrInvalidRange):
		return fmt.Errorf("%s: %w: %w", op, ErrInvalidArgument, err)
	}
	return fmt.Errorf("%s: %w", op, err)
}

// IsContext reports whether err is a context's cancellation or deadline.
func IsContext(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// Known reports whether err already carries one of the sentinels (or a
// context error), so that a translator does not relabel it.
func Known(err error) bool {
	for _, s := range []error{ErrNotFound, ErrInvalidArgument, ErrOutOfRange, ErrFailedPrecondition,
		ErrDataLoss, ErrUnavailable, ErrResourceExhausted} {
		if errors.Is(err, s) {
			return true
		}
	}
	return IsContext(err)
}
