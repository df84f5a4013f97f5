package client

import (
	"crypto/tls"

	"github.com/cairnbuild/cairn/auth"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// WithTLS is the Dial option for a server that serves TLS (`cairn serve
// --tls-cert`): the connection is verified with cfg, which holds the CAs
// the server's certificate must chain to (RootCAs; nil: the system's) and,
// for a server that requires client certificates (--tls-client-ca), the
// client's certificate. It replaces Dial's default plaintext credentials.
// Build cfg from files with tlsfiles.Client in cmd/cairn's way, or by hand:
//
//	pool := x509.NewCertPool()
//	pool.AppendCertsFromPEM(caPEM)
//	c, err := client.Dial(ctx, "cairn.internal:7070", client.WithTLS(&tls.Config{RootCAs: pool}))
func WithTLS(cfg *tls.Config) grpc.DialOption {
	return grpc.WithTransportCredentials(credentials.NewTLS(cfg))
}

// WithToken sends token ("cairn_...", from cairn token new) with every
// call, as "authorization: Bearer <token>", to a server with a credentials
// file (cairn serve --auth-file). It needs WithTLS: over a plaintext
// connection every call fails, since a token sent in clear text can be
// read and replayed. WithTokenOverPlaintext is for a server on loopback.
func WithToken(token string) grpc.DialOption {
	return grpc.WithPerRPCCredentials(auth.PerRPCToken(token, true))
}

// WithTokenOverPlaintext is WithToken without the TLS requirement: for a
// server on this host's loopback address, where no one else sees the
// traffic.
func WithTokenOverPlaintext(token string) grpc.DialOption {
	return grpc.WithPerRPCCredentials(auth.PerRPCToken(token, false))
}
