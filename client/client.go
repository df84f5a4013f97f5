package client

import (
	"context"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	cairnv1 "github.com/cairnbuild/cairn/proto/cairn/v1"
)

// maxRecvMsgBytes is the receive limit the client sets on its calls: a
// whole chunk (4 MiB) travels in one GetChunks message, above gRPC's
// default 4 MiB limit; the rest is headroom for framing and recipes.
const maxRecvMsgBytes = 16 << 20

// Client talks to one cairn server. It is safe for concurrent use.
type Client struct {
	conn     *grpc.ClientConn // owned, closed by Close; nil if given to New
	layers   cairnv1.LayerServiceClient
	cache    cairnv1.CacheServiceClient
	registry cairnv1.RegistryServiceClient
}

// Dial returns a Client for the server at addr ("host:port"). Without
// options it uses a plaintext connection; opts are appended to the
// defaults, so they can replace the credentials: WithTLS for a server that
// serves TLS.
// Dial does not wait for the server: a server that is down shows up as
// ErrUnavailable on the first call. Close the Client when done.
func Dial(ctx context.Context, addr string, opts ...grpc.DialOption) (*Client, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	all := append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxRecvMsgBytes)),
		grpc.WithInitialWindowSize(16 << 20),
		grpc.WithInitialConnWindowSize(32 << 20),
		grpc.WithReadBufferSize(1 << 20),
		grpc.WithWriteBufferSize(1 << 20),
	}, opts...)
	conn, err := grpc.NewClient(addr, all...)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	c := New(conn)
	c.conn = conn
	return c, nil
}

// New returns a Client on a connection the caller owns (and closes). The
// connection must allow received messages of at least
// cairnv1.MinClientRecvMsgBytes for Pull with a chunk cache directory.
func New(conn grpc.ClientConnInterface) *Client {
	return &Client{
		layers:   cairnv1.NewLayerServiceClient(conn),
		cache:    cairnv1.NewCacheServiceClient(conn),
		registry: cairnv1.NewRegistryServiceClient(conn),
	}
}

// Close closes the connection Dial opened; for a Client from New it does
// nothing.
func (c *Client) Close() error {
	if c.conn == nil {
		return nil
	}
	return c.conn.Close()
}
