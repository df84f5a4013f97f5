package cairnv1

// The google.rpc.ErrorInfo every cairn error carries: Domain in the domain
// field, one of the Reason constants in the reason field. Clients branch on
// the reason, not on the message text. The list, with the gRPC code each one
// comes with, is in layer.proto's LayerService comment.
const (
	// ErrorDomain is ErrorInfo.domain for every cairn error.
	ErrorDomain = "cairn.build"

	// ReasonInvalidDigest: a malformed digest or an unknown algorithm
	// (InvalidArgument).
	ReasonInvalidDigest = "INVALID_DIGEST"
	// ReasonDigestMismatch: data did not hash to the declared digest;
	// nothing was stored (InvalidArgument).
	ReasonDigestMismatch = "DIGEST_MISMATCH"
	// ReasonInvalidArgument: any other bad input (InvalidArgument).
	ReasonInvalidArgument = "INVALID_ARGUMENT"
	// ReasonNotFound: no such layer, chunk, repository, tag or manifest
	// (NotFound).
	ReasonNotFound = "NOT_FOUND"
	// ReasonOutOfRange: an offset beyond the end of a layer (OutOfRange).
	ReasonOutOfRange = "OUT_OF_RANGE"
	// ReasonFailedPrecondition: for example a chunk a commit names is not
	// stored, or a step's layer is not committed (FailedPrecondition).
	ReasonFailedPrecondition = "FAILED_PRECONDITION"
	// ReasonUnauthenticated: the call needs credentials (a token) and had
	// none, or ones the server does not know (Unauthenticated).
	ReasonUnauthenticated = "UNAUTHENTICATED"
	// ReasonPermissionDenied: the credentials do not allow the call: an
	// action or a namespace their scopes do not cover (PermissionDenied).
	ReasonPermissionDenied = "PERMISSION_DENIED"
	// ReasonStepDiverged: a step record refused because its namespace
	// holds a record for the same step naming another layer; records are
	// immutable (FailedPrecondition).
	ReasonStepDiverged = "STEP_DIVERGED"
	// ReasonDataLoss: stored data failed verification (DataLoss).
	ReasonDataLoss = "DATA_LOSS"
	// ReasonUnavailable: the blob store is down; retry later (Unavailable).
	ReasonUnavailable = "UNAVAILABLE"
	// ReasonResourceExhausted: a list above the server's limits
	// (ResourceExhausted). A message above the size limit fails with
	// ResourceExhausted from gRPC itself, without an ErrorInfo.
	ReasonResourceExhausted = "RESOURCE_EXHAUSTED"
	// ReasonStreamIdle: the client sent nothing on an upload stream, or
	// read nothing of a download, for longer than the server's idle
	// timeout (DeadlineExceeded).
	ReasonStreamIdle = "STREAM_IDLE"
	// ReasonCanceled: the call was canceled, by the client or by a server
	// shutting down (Canceled).
	ReasonCanceled = "CANCELED"
	// ReasonDeadlineExceeded: the call's deadline passed (DeadlineExceeded).
	ReasonDeadlineExceeded = "DEADLINE_EXCEEDED"
	// ReasonInternal: a bug or an unexpected failure (Internal).
	ReasonInternal = "INTERNAL"
)

// Limits of the API that clients size their messages by.
const (
	// MaxDataMessageBytes is the most blob data PullLayer puts in one
	// message, and what clients should put in one PushLayer message.
	MaxDataMessageBytes = 1 << 20
	// MaxChunksPerRequest bounds the digests of FindMissingChunks and
	// GetChunks and the chunk list of CommitLayer: a 16 GiB layer at the
	// 256 KiB average chunk, about 5 MiB of digests.
	MaxChunksPerRequest = 1 << 16
	// MaxChainSteps bounds the steps of one LookupChain call.
	MaxChainSteps = 1000
	// DefaultMaxRecvMsgBytes is the server's default receive limit per
	// message: room for the largest chunk (4 MiB) and a full chunk list.
	DefaultMaxRecvMsgBytes = 8 << 20
	// MinClientRecvMsgBytes is the receive limit a client needs for
	// GetChunks: the largest chunk (4 MiB) plus the message's framing.
	MinClientRecvMsgBytes = 4<<20 + 64<<10
)
