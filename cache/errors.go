package cache

import "github.com/cairnbuild/cairn/cache/internal/cerr"

// The sentinels below are what callers branch on with errors.Is. Every error
// the Cache returns wraps one of them (or a context error) together with the
// operation that failed; the server maps each to one gRPC code. They are the
// core's own (package cerr), so errors from every part of it match.
var (
	// ErrNotFound reports a layer, chunk or step the cache does not hold.
	ErrNotFound = cerr.ErrNotFound
	// ErrInvalidArgument reports bad input: a malformed or unsupported
	// digest, a truncated stream, a malformed chunk list, an oversized value.
	// Nothing was changed.
	ErrInvalidArgument = cerr.ErrInvalidArgument
	// ErrDigestMismatch reports data that does not hash to the digest it was
	// declared with. Nothing was committed. It is also an ErrInvalidArgument.
	ErrDigestMismatch = cerr.ErrDigestMismatch
	// ErrSizeMismatch reports a stream shorter or longer than its declared
	// size. Nothing was committed. It is also an ErrInvalidArgument.
	ErrSizeMismatch = cerr.ErrSizeMismatch
	// ErrOutOfRange reports a read offset beyond the end of a layer.
	ErrOutOfRange = cerr.ErrOutOfRange
	// ErrFailedPrecondition reports a request the cache's state does not
	// allow yet: a commit that names a chunk not uploaded, a step record for
	// a layer not committed.
	ErrFailedPrecondition = cerr.ErrFailedPrecondition
	// ErrDataLoss reports stored data that is missing or fails verification,
	// or an index value that does not decode: never "unavailable, retry".
	// The cache never returns wrong bytes in its place.
	ErrDataLoss = cerr.ErrDataLoss
	// ErrUnavailable reports a backend or index that cannot serve right now
	// (backend.ErrUnavailable is translated to it); retrying may help.
	ErrUnavailable = cerr.ErrUnavailable
	// ErrResourceExhausted reports a request larger than the cache accepts
	// in one piece.
	ErrResourceExhausted = cerr.ErrResourceExhausted
	// ErrClosed reports a call on a closed Cache. It is also ErrUnavailable.
	ErrClosed = cerr.ErrClosed
)

func backendErr(op string, err error) error { return cerr.Backend(op, err) }
