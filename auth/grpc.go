package auth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// A MethodRule says what a gRPC method needs. Every method a server serves
// has one, in a table keyed by full method name ("/cairn.v1.CacheService/
// Lookup"); [CheckTable] keeps the table and the services in step.
type MethodRule struct {
	// Action is what the method does.
	Action Action
	// Namespaced: the method acts on namespaces named in its request. The
	// interceptor then only requires that the caller may do Action
	// somewhere; the handler calls [Check] with each namespace it touches,
	// and writes the [Audit] line for a write or delete.
	//
	// Otherwise the method acts on no namespace, or on all of them, and
	// the interceptor decides alone: Read and Write need Action in at
	// least one namespace (content-addressed data: reading needs the
	// digest, and a write cannot change what a digest names); Delete and
	// Admin need Action over "*", since they touch what every namespace
	// shares (gc, reindex, removing a chunk). The interceptor writes the
	// audit line of such calls.
	Namespaced bool
	// Public: anyone may call the method, without credentials (health
	// checks). Credentials that are sent must still be valid.
	Public bool
}

// authorization is the metadata key of the token: "Bearer <token>".
const authorization = "authorization"

// UnaryServerInterceptor returns an interceptor that authenticates each
// call, applies table (see [MethodRule]; a method missing from it is
// refused, so a new method is closed until someone decides its rule) and
// puts the caller's [Identity] in the handler's context.
//
// A call without an "authorization: Bearer <token>" header is made by the
// anonymous identity; if the file gives anonymous clients nothing, it is
// refused with UNAUTHENTICATED. A bad token is UNAUTHENTICATED (after the
// caller's slowdown, keyed by its peer address); a good token without the
// scope, PERMISSION_DENIED. A handler error wrapping [ErrUnauthenticated]
// or [ErrPermissionDenied] that is not already a status gets the matching
// code. log receives the audit lines (nil: none).
func UnaryServerInterceptor(a *Authenticator, table map[string]MethodRule, log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		ctx, id, rule, err := authorizeRPC(ctx, a, table, info.FullMethod)
		if err != nil {
			return nil, err
		}
		resp, err := handler(ctx, req)
		err = statusOf(err)
		auditRPC(log, id, rule, info.FullMethod, err)
		return resp, err
	}
}

// StreamServerInterceptor is [UnaryServerInterceptor] for streaming
// methods.
func StreamServerInterceptor(a *Authenticator, table map[string]MethodRule, log *slog.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ctx, id, rule, err := authorizeRPC(ss.Context(), a, table, info.FullMethod)
		if err != nil {
			return err
		}
		err = statusOf(handler(srv, &identityStream{ServerStream: ss, ctx: ctx}))
		auditRPC(log, id, rule, info.FullMethod, err)
		return err
	}
}

// identityStream is a ServerStream whose context carries the identity.
type identityStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *identityStream) Context() context.Context { return s.ctx }

// authorizeRPC applies the table to one call and returns the handler's
// context.
func authorizeRPC(ctx context.Context, a *Authenticator, table map[string]MethodRule, method string) (context.Context, *Identity, MethodRule, error) {
	rule, ok := table[method]
	if !ok {
		return nil, nil, rule, status.Errorf(codes.PermissionDenied, "method %s not in the auth table", method)
	}
	token, sent, err := bearerFromMetadata(ctx)
	if err != nil {
		return nil, nil, rule, status.Error(codes.Unauthenticated, err.Error())
	}
	var id *Identity
	if sent {
		client := ""
		if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
			client = ClientKey(p.Addr.String())
		}
		if id, err = a.Login(ctx, client, token); err != nil {
			return nil, nil, rule, status.Errorf(codes.Unauthenticated, "%v (method %s)", err, method)
		}
	} else {
		id = a.Anonymous()
	}
	if !rule.Public {
		if err := allowRPC(id, rule); err != nil {
			return nil, nil, rule, statusOf(fmt.Errorf("%w (method %s)", err, method))
		}
	}
	return NewContext(ctx, id), id, rule, nil
}

// allowRPC is the interceptor's own check of a rule, before the handler's.
func allowRPC(id *Identity, r MethodRule) error {
	if r.Namespaced || r.Action == Read || r.Action == Write {
		if id.AllowedAny(r.Action) {
			return nil
		}
		return deny(id, r.Action, "")
	}
	if id.AllowedAll(r.Action) {
		return nil
	}
	return deny(id, r.Action, "*")
}

// bearerFromMetadata returns the token of the authorization header; sent
// is false when there is none.
func bearerFromMetadata(ctx context.Context) (token string, sent bool, err error) {
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get(authorization)
	switch len(vals) {
	case 0:
		return "", false, nil
	case 1:
	default:
		return "", true, errors.New("more than one authorization header")
	}
	scheme, token, ok := strings.Cut(vals[0], " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(token) == "" {
		return "", true, errors.New(`malformed authorization header: want "Bearer <token>"`)
	}
	return strings.TrimSpace(token), true, nil
}

// statusOf gives an auth error of a handler its gRPC code; other errors,
// and statuses, pass unchanged.
func statusOf(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	switch {
	case errors.Is(err, ErrUnauthenticated):
		return status.Error(codes.Unauthenticated, err.Error())
	case errors.Is(err, ErrPermissionDenied):
		return status.Error(codes.PermissionDenied, err.Error())
	}
	return err
}

// auditRPC writes the audit line of a call whose rule the interceptor
// decides alone; namespaced calls are audited by their handlers.
func auditRPC(log *slog.Logger, id *Identity, r MethodRule, method string, err error) {
	if r.Namespaced || r.Public || r.Action == Read {
		return
	}
	Audit(log, id, r.Action, method, "", slog.String("code", status.Code(err).String()))
}

// CheckTable reports every method of services without a rule in table,
// every rule for no method of services, and rules without an action: a
// server's test calls it so that adding a method without deciding who may
// call it fails.
func CheckTable(table map[string]MethodRule, services []grpc.ServiceDesc) error {
	var names []string
	for _, s := range services {
		for _, m := range s.Methods {
			names = append(names, "/"+s.ServiceName+"/"+m.MethodName)
		}
		for _, m := range s.Streams {
			names = append(names, "/"+s.ServiceName+"/"+m.StreamName)
		}
	}
	return checkNames(table, names)
}

// CheckServer is [CheckTable] over the services registered on s (a
// *grpc.Server), health and reflection included.
func CheckServer(table map[string]MethodRule, s interface {
	GetServiceInfo() map[string]grpc.ServiceInfo
}) error {
	var names []string
	for svc, info := range s.GetServiceInfo() {
		for _, m := range info.Methods {
			names = append(names, "/"+svc+"/"+m.Name)
		}
	}
	return checkNames(table, names)
}

func checkNames(table map[string]MethodRule, names []string) error {
	var errs []error
	slices.Sort(names)
	for _, n := range names {
		r, ok := table[n]
		switch {
		case !ok:
			errs = append(errs, fmt.Errorf("method %s has no auth rule", n))
		case !r.Public && (r.Action < Read || r.Action > Admin):
			errs = append(errs, fmt.Errorf("method %s: rule has no valid action", n))
		}
	}
	var extra []string
	for n := range table {
		if !slices.Contains(names, n) {
			extra = append(extra, n)
		}
	}
	slices.Sort(extra)
	for _, n := range extra {
		errs = append(errs, fmt.Errorf("auth rule for %s, which no service has", n))
	}
	return errors.Join(errs...)
}

// PerRPCToken returns call credentials sending token as
// "authorization: Bearer <token>" on every call, for the client library
// (grpc.WithPerRPCCredentials). With requireTLS, gRPC refuses to send it
// over a connection without TLS, so that a token cannot leak in clear text
// by mistake; pass false only for loopback or tests.
func PerRPCToken(token string, requireTLS bool) credentials.PerRPCCredentials {
	return perRPCToken{header: "Bearer " + token, tls: requireTLS}
}

type perRPCToken struct {
	header string
	tls    bool
}

func (t perRPCToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{authorization: t.header}, nil
}

func (t perRPCToken) RequireTransportSecurity() bool { return t.tls }
