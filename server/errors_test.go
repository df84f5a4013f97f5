package server

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cairnbuild/cairn/backend"
	"github.com/cairnbuild/cairn/cache"
	cairnv1 "github.com/cairnbuild/cairn/proto/cairn/v1"
	"github.com/cairnbuild/cairn/stepkey"
)

func TestToStatus(t *testing.T) {
	wrap := func(err error) error { return fmt.Errorf("cache: push: %w", err) }
	tests := []struct {
		name   string
		err    error
		code   codes.Code
		reason string
		field  string
	}{
		{"mismatch before invalid argument", wrap(cache.ErrDigestMismatch), codes.InvalidArgument, cairnv1.ReasonDigestMismatch, ""},
		{"invalid argument", wrap(cache.ErrInvalidArgument), codes.InvalidArgument, cairnv1.ReasonInvalidArgument, ""},
		{"invalid step", wrap(stepkey.ErrInvalidStep), codes.InvalidArgument, cairnv1.ReasonInvalidArgument, ""},
		{"edge digest names its field", fieldErr("digest", fmt.Errorf("%w: x", errInvalidDigest)), codes.InvalidArgument, cairnv1.ReasonInvalidDigest, "digest"},
		{"not found", wrap(cache.ErrNotFound), codes.NotFound, cairnv1.ReasonNotFound, ""},
		{"out of range", wrap(cache.ErrOutOfRange), codes.OutOfRange, cairnv1.ReasonOutOfRange, ""},
		{"failed precondition", wrap(cache.ErrFailedPrecondition), codes.FailedPrecondition, cairnv1.ReasonFailedPrecondition, ""},
		{"data loss", wrap(cache.ErrDataLoss), codes.DataLoss, cairnv1.ReasonDataLoss, ""},
		// A corrupt index value, as the cache reports one: the decode
		// error in ErrDataLoss, under the operation.
		{"corrupt index value", fmt.Errorf("cache: lookup step: %w", fmt.Errorf("%w: step x: %w", cache.ErrDataLoss, errors.New("unexpected end of JSON input"))),
			codes.DataLoss, cairnv1.ReasonDataLoss, ""},
		// Data loss is never "retry later", even in an error that also
		// says unavailable (a layer found corrupt while the index was
		// failing).
		{"data loss wins over unavailable", fmt.Errorf("%w: %w", cache.ErrUnavailable, wrap(cache.ErrDataLoss)), codes.DataLoss, cairnv1.ReasonDataLoss, ""},
		{"data loss wins over a backend unavailable", fmt.Errorf("%w: %w", wrap(cache.ErrDataLoss), backend.ErrUnavailable), codes.DataLoss, cairnv1.ReasonDataLoss, ""},
		{"cache unavailable", wrap(cache.ErrUnavailable), codes.Unavailable, cairnv1.ReasonUnavailable, ""},
		{"closed cache is unavailable", wrap(cache.ErrClosed), codes.Unavailable, cairnv1.ReasonUnavailable, ""},
		{"backend unavailable unwrapped by the cache", wrap(backend.ErrUnavailable), codes.Unavailable, cairnv1.ReasonUnavailable, ""},
		{"resource exhausted", wrap(cache.ErrResourceExhausted), codes.ResourceExhausted, cairnv1.ReasonResourceExhausted, ""},
		{"too many at the edge", fieldErr("digests", errTooMany), codes.ResourceExhausted, cairnv1.ReasonResourceExhausted, "digests"},
		{"client cancelled", wrap(context.Canceled), codes.Canceled, cairnv1.ReasonCanceled, ""},
		{"deadline", wrap(context.DeadlineExceeded), codes.DeadlineExceeded, cairnv1.ReasonDeadlineExceeded, ""},
		{"idle stream", fmt.Errorf("%w: %w", errStreamIdle, context.Canceled), codes.DeadlineExceeded, cairnv1.ReasonStreamIdle, ""},
		{"status passes through", wrap(status.Error(codes.Aborted, "stream reset")), codes.Aborted, "", ""},
		{"anything else is internal", errors.New("boom"), codes.Internal, cairnv1.ReasonInternal, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantStatus(t, toStatus(tt.err), tt.code, tt.reason, tt.field)
		})
	}
	if toStatus(nil) != nil {
		t.Error("toStatus(nil) != nil")
	}
}

func TestParseDigest(t *testing.T) {
	const hex = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	tests := []struct {
		in       string
		optional bool
		ok       bool
		why      string
	}{
		{"sha256:" + hex, false, true, "canonical"},
		{"", true, true, "empty and optional"},
		{"", false, false, "empty and required"},
		{"md5:" + hex[:32], false, false, "unknown algorithm"},
		{"sha256:" + hex[:63], false, false, "short hex"},
		{"sha256:" + hex[:63] + "G", false, false, "not hex"},
		{"SHA256:" + hex, false, false, "upper-case algorithm"},
		{hex, false, false, "no algorithm"},
	}
	for _, tt := range tests {
		_, err := parseDigest("d", tt.in, tt.optional)
		if (err == nil) != tt.ok {
			t.Errorf("%s: parseDigest(%q) error %v, want ok=%v", tt.why, tt.in, err, tt.ok)
		}
		if err != nil && !errors.Is(err, errInvalidDigest) {
			t.Errorf("%s: error %v is not errInvalidDigest", tt.why, err)
		}
	}
}
