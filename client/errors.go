package client

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/genproto/googleapis/rpc/errdetails"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	cairnv1 "github.com/cairnbuild/cairn/proto/cairn/v1"
)

// Sentinel errors. Every error a Client method returns for a failed call
// wraps exactly one of them (or a context error), so callers branch with
// errors.Is and never look at gRPC codes.
var (
	// ErrNotFound: the named layer (or chunk), or the named repository, tag
	// or manifest of the registry front, does not exist on the server.
	ErrNotFound = errors.New("not found")
	// ErrMiss: a step lookup found no cached step. It is not a failure: the
	// builder runs the step and records it.
	ErrMiss = errors.New("cache miss")
	// ErrInvalidArgument: the request was malformed (a bad digest, an
	// unknown instruction keyword, a size that does not match).
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrDigestMismatch: the bytes do not hash to the expected digest. It
	// also matches ErrInvalidArgument.
	ErrDigestMismatch = fmt.Errorf("%w: digest mismatch", ErrInvalidArgument)
	// ErrOutOfRange: a read started past the end of the layer.
	ErrOutOfRange = errors.New("out of range")
	// ErrFailedPrecondition: the server's state does not allow the call (a
	// commit that names a chunk the server lacks, a step whose layer is not
	// committed).
	ErrFailedPrecondition = errors.New("failed precondition")
	// ErrDiverged: a step record refused because its namespace holds a
	// record for the same step naming another layer (records are
	// immutable). It also matches ErrFailedPrecondition.
	ErrDiverged = fmt.Errorf("%w: step diverged", ErrFailedPrecondition)
	// ErrUnauthenticated: the server wants credentials (a token) and got
	// none, or ones it does not know.
	ErrUnauthenticated = errors.New("unauthenticated")
	// ErrPermissionDenied: the credentials are good but do not allow the
	// call (a namespace or an action their scopes do not cover).
	ErrPermissionDenied = errors.New("permission denied")
	// ErrDataLoss: stored data failed verification, on the server or in
	// the local chunk cache.
	ErrDataLoss = errors.New("data loss")
	// ErrUnavailable: the server (or its storage) cannot be reached now;
	// retrying later may work.
	ErrUnavailable = errors.New("unavailable")
	// ErrResourceExhausted: a size limit or quota was hit (a message too
	// large, the server out of space).
	ErrResourceExhausted = errors.New("resource exhausted")
	// ErrServer: any other failure reported by the server.
	ErrServer = errors.New("server error")
	// ErrIdle: a Pull or Push waited for the server longer than its idle
	// timeout (IdleOptions.Timeout) with no data moving, and gave up. The
	// server may be overloaded or unreachable; the error says what the
	// call waited for.
	ErrIdle = errors.New("no data from the server")
)

// Error is the error returned for a failed RPC. It keeps the server's
// message and the operation for people, and wraps the sentinel for code.
type Error struct {
	Op      string     // the client operation, e.g. "push"
	Code    codes.Code // the gRPC code the server sent
	Message string     // the server's message
	kind    error      // one of the sentinels above
}

func (e *Error) Error() string {
	msg := e.Message
	if msg == "" {
		msg = e.kind.Error()
	}
	return fmt.Sprintf("%s: %s", e.Op, msg)
}

// Unwrap returns the sentinel the error matches.
func (e *Error) Unwrap() error { return e.kind }

// kindOf maps a gRPC code to a sentinel, the inverse of the server's one
// mapping of domain errors to codes.
func kindOf(c codes.Code) error {
	switch c {
	case codes.NotFound:
		return ErrNotFound
	case codes.InvalidArgument:
		return ErrInvalidArgument
	case codes.OutOfRange:
		return ErrOutOfRange
	case codes.FailedPrecondition:
		return ErrFailedPrecondition
	case codes.DataLoss:
		return ErrDataLoss
	case codes.Unavailable:
		return ErrUnavailable
	case codes.ResourceExhausted:
		return ErrResourceExhausted
	case codes.Unauthenticated:
		return ErrUnauthenticated
	case codes.PermissionDenied:
		return ErrPermissionDenied
	default:
		return ErrServer
	}
}

// wrapErr turns an error from a gRPC call into an *Error (or passes through
// a context error and nil). op names the operation for the message.
func wrapErr(op string, err error) error {
	if err == nil {
		return nil
	}
	var ce *Error
	if errors.As(err, &ce) {
		return err
	}
	s, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("%s: %w", op, err)
	}
	switch s.Code() {
	case codes.Canceled:
		return fmt.Errorf("%s: %w", op, context.Canceled)
	case codes.DeadlineExceeded:
		if msg := s.Message(); msg != context.DeadlineExceeded.Error() {
			return fmt.Errorf("%s: %w (%s)", op, context.DeadlineExceeded, msg)
		}
		return fmt.Errorf("%s: %w", op, context.DeadlineExceeded)
	}
	kind := kindOf(s.Code())
	msg := s.Message()
	switch {
	case s.Code() == codes.InvalidArgument && reason(s) == cairnv1.ReasonDigestMismatch:
		kind = ErrDigestMismatch
	case s.Code() == codes.FailedPrecondition && reason(s) == cairnv1.ReasonStepDiverged:
		kind = ErrDiverged
	}
	return &Error{Op: op, Code: s.Code(), Message: msg, kind: kind}
}

// reason returns the cairn ErrorInfo reason a status carries, or "".
func reason(s *status.Status) string {
	for _, d := range s.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == cairnv1.ErrorDomain {
			return info.GetReason()
		}
	}
	return ""
}
