// Package auth decides who may do what in which namespace, for both of
// cairn's fronts.
//
// A credentials file (see [Config]) names tokens, stored as SHA-256 hashes,
// and gives each a list of scopes: actions ([Read], [Write], [Delete],
// [Admin]) over namespace patterns ("main", "pr/*", "*"). It may also give
// anonymous clients some scopes. An [Authenticator] loads the file, reloads
// it when it changes, and turns a presented token into an [Identity]; a
// [Limiter] inside it slows down clients whose logins keep failing.
//
// The fronts plug in without knowing the file:
//
//   - gRPC: [UnaryServerInterceptor] and [StreamServerInterceptor] check each
//     method against a table of [MethodRule] (a method missing from the
//     table is refused) and put the identity in the context; a handler whose
//     method acts on a namespace calls [Check] with it. [CheckTable] makes a
//     test fail when a method is added without a rule. [PerRPCToken] is the
//     client side.
//   - HTTP (the OCI registry): [HTTP.Middleware] accepts Basic credentials
//     (the password is the token) and bearer tokens issued by
//     [HTTP.TokenHandler], following the registry token flow that docker,
//     containerd, BuildKit, crane and skopeo already speak.
//
// Both fronts answer "no or bad credentials" ([ErrUnauthenticated]: 401,
// UNAUTHENTICATED) apart from "authenticated but not allowed"
// ([ErrPermissionDenied]: 403, PERMISSION_DENIED), and write one [Audit]
// line per write, delete and admin call.
//
// The package imports nothing of cairn's core or fronts, so that the rules
// stay in one place that can be read and tested alone.
package auth
