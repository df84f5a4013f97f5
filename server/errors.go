package server

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/opencontainers/go-digest"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cairnbuild/cairn/auth"
	"github.com/cairnbuild/cairn/backend"
	"github.com/cairnbuild/cairn/cache"
	"github.com/cairnbuild/cairn/chunkid"
	cairnv1 "github.com/cairnbuild/cairn/proto/cairn/v1"
	"github.com/cairnbuild/cairn/stepkey"
)

// Errors the server itself raises at the edge, before the cache sees a
// request. toStatus maps them like the cache's sentinels.
var (
	// errInvalidDigest reports a malformed digest or an unknown algorithm.
	errInvalidDigest = errors.New("invalid digest")
	// errInvalidArgument reports any other bad input found at the edge.
	errInvalidArgument = errors.New("invalid argument")
	// errTooMany reports a list longer than the API allows.
	errTooMany = errors.New("too many entries")
	// errStreamIdle is the cause of a stream's context when the client sent
	// nothing for longer than Options.StreamIdleTimeout.
	errStreamIdle = errors.New("no message from the client within the idle timeout")
	// errSendIdle is the cause of a download's context when the client took
	// nothing for longer than Options.SendIdleTimeout: it stopped reading.
	errSendIdle = errors.New("the client read nothing within the send idle timeout")
)

// fieldError names the request field an edge error is about; toStatus puts
// it in ErrorInfo.metadata["field"].
type fieldError struct {
	field string
	err   error
}

func (e *fieldError) Error() string { return e.field + ": " + e.err.Error() }
func (e *fieldError) Unwrap() error { return e.err }

func fieldErr(field string, err error) error { return &fieldError{field: field, err: err} }

// toStatus is the one mapping from the errors of the cache, the backend and
// this package to gRPC status errors. Every error a handler returns goes
// through it. The status carries a google.rpc.ErrorInfo with domain
// cairnv1.ErrorDomain, a reason clients can branch on, and the offending
// field when known. Errors that already are gRPC statuses (a broken client
// stream) keep their code. (A status gRPC itself sends, such as
// ResourceExhausted for a message above the size limit, carries no
// ErrorInfo: gRPC writes it before the handler sees the error.)
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	code, reason := classify(err)
	if code == codes.Unknown {
		if st, ok := status.FromError(err); ok {
			return st.Err()
		}
		code, reason = codes.Internal, cairnv1.ReasonInternal
	}
	info := &errdetails.ErrorInfo{Reason: reason, Domain: cairnv1.ErrorDomain}
	var fe *fieldError
	if errors.As(err, &fe) {
		info.Metadata = map[string]string{"field": fe.field}
	}
	st := status.New(code, err.Error())
	if withInfo, derr := st.WithDetails(info); derr == nil {
		st = withInfo
	}
	return st.Err()
}

// classify returns the code and reason of err, or codes.Unknown if err is
// none of the errors the mapping knows.
func classify(err error) (codes.Code, string) {
	switch {
	// The cause of a cancelled stream first: it explains the context error
	// that follows from it.
	case errors.Is(err, errStreamIdle), errors.Is(err, errSendIdle):
		return codes.DeadlineExceeded, cairnv1.ReasonStreamIdle
	case errors.Is(err, errInvalidDigest):
		return codes.InvalidArgument, cairnv1.ReasonInvalidDigest
	case errors.Is(err, cache.ErrDigestMismatch):
		return codes.InvalidArgument, cairnv1.ReasonDigestMismatch
	case errors.Is(err, cache.ErrInvalidArgument), errors.Is(err, errInvalidArgument),
		errors.Is(err, stepkey.ErrInvalidStep):
		return codes.InvalidArgument, cairnv1.ReasonInvalidArgument
	case errors.Is(err, cache.ErrNotFound):
		return codes.NotFound, cairnv1.ReasonNotFound
	case errors.Is(err, cache.ErrOutOfRange):
		return codes.OutOfRange, cairnv1.ReasonOutOfRange
	case errors.Is(err, auth.ErrUnauthenticated):
		return codes.Unauthenticated, cairnv1.ReasonUnauthenticated
	case errors.Is(err, auth.ErrPermissionDenied):
		return codes.PermissionDenied, cairnv1.ReasonPermissionDenied
	case errors.Is(err, cache.ErrStepDiverged):
		return codes.FailedPrecondition, cairnv1.ReasonStepDiverged
	case errors.Is(err, cache.ErrFailedPrecondition):
		return codes.FailedPrecondition, cairnv1.ReasonFailedPrecondition
	case errors.Is(err, cache.ErrDataLoss):
		return codes.DataLoss, cairnv1.ReasonDataLoss
	case errors.Is(err, cache.ErrResourceExhausted), errors.Is(err, errTooMany):
		return codes.ResourceExhausted, cairnv1.ReasonResourceExhausted
	case errors.Is(err, context.Canceled):
		return codes.Canceled, cairnv1.ReasonCanceled
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded, cairnv1.ReasonDeadlineExceeded
	case errors.Is(err, cache.ErrUnavailable), errors.Is(err, backend.ErrUnavailable):
		return codes.Unavailable, cairnv1.ReasonUnavailable
	}
	return codes.Unknown, ""
}

// withCause replaces err by the cause of ctx's cancellation when that cause
// is one of ours (an idle timeout), so the client learns why.
func withCause(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if cause := context.Cause(ctx); cause != nil && (errors.Is(cause, errStreamIdle) || errors.Is(cause, errSendIdle)) {
		return cause
	}
	return err
}

// statusReason returns the cairn ErrorInfo reason of a status error, or "".
func statusReason(err error) string {
	st, ok := status.FromError(err)
	if !ok {
		return ""
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == cairnv1.ErrorDomain {
			return info.GetReason()
		}
	}
	return ""
}

// parseDigest validates a digest from the wire. An empty string is an
// error unless optional. Unknown algorithms and malformed hex are
// errInvalidDigest, tagged with the field.
func parseDigest(field, s string, optional bool) (digest.Digest, error) {
	if s == "" {
		if optional {
			return "", nil
		}
		return "", fieldErr(field, fmt.Errorf("%w: empty", errInvalidDigest))
	}
	if stepkey.ValidDigest(digest.Digest(s)) { // without go-digest's regular expression
		return digest.Digest(s), nil
	}
	_, err := digest.Parse(s) // for its explanation
	return "", fieldErr(field, fmt.Errorf("%w: %s: %v", errInvalidDigest, clip(s), err))
}

// parseChunkDigest validates a chunk digest (blake3:<hex>, which
// digest.Parse does not know; see cache.ChunkDigest).
func parseChunkDigest(field, s string) (chunkid.ID, error) {
	if s == "" {
		return chunkid.ID{}, fieldErr(field, fmt.Errorf("%w: empty", errInvalidDigest))
	}
	id, err := chunkid.Parse(s)
	if err != nil {
		// "invalid digest" and what chunkid says after its own "invalid
		// chunk digest".
		return chunkid.ID{}, fieldErr(field, fmt.Errorf("%w%s", errInvalidDigest, strings.TrimPrefix(err.Error(), chunkid.ErrInvalid.Error())))
	}
	return id, nil
}

// parseChunkDigests validates a list of chunk digests, at most limit of
// them.
func parseChunkDigests(field string, ss []string, limit int) ([]chunkid.ID, error) {
	if len(ss) > limit {
		return nil, fieldErr(field, fmt.Errorf("%w: %d digests, at most %d per request", errTooMany, len(ss), limit))
	}
	ds := make([]chunkid.ID, len(ss))
	for i, s := range ss {
		d, err := parseChunkDigest(fmt.Sprintf("%s[%d]", field, i), s)
		if err != nil {
			return nil, err
		}
		ds[i] = d
	}
	return ds, nil
}

// maxMediaTypeLen is RFC 6838's limit: 127 characters for type and subtype
// each, plus the slash.
const maxMediaTypeLen = 255

// checkMediaType accepts "" (the default) or a plausible media type:
// printable ASCII without spaces, one '/', at most maxMediaTypeLen bytes.
// Stored verbatim, it must not be able to carry anything else.
func checkMediaType(field, mt string) error {
	if mt == "" {
		return nil
	}
	bad := len(mt) > maxMediaTypeLen || strings.Count(mt, "/") != 1
	for i := 0; i < len(mt) && !bad; i++ {
		bad = mt[i] <= ' ' || mt[i] > '~'
	}
	if bad {
		return fieldErr(field, fmt.Errorf("%w: media type %s", errInvalidArgument, clip(mt)))
	}
	return nil
}

// clip quotes s for an error message, cut to a length a client can read.
func clip(s string) string {
	const n = 100
	if len(s) > n {
		return fmt.Sprintf("%q... (%d bytes)", s[:n], len(s))
	}
	return fmt.Sprintf("%q", s)
}
