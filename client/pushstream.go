package client

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"

	cairnv1 "github.com/cairnbuild/cairn/proto/cairn/v1"
)

// compressed says whether a stream starting with head is gzip or zstd: the
// server then stores it as its uncompressed content plus the encoder that
// rebuilds it, which needs the whole stream, not chunks cut here.
func compressed(head []byte) bool {
	switch {
	case len(head) >= 3 && head[0] == 0x1f && head[1] == 0x8b && head[2] == 8: // gzip
		return true
	case len(head) >= 4 && head[0] == 0x28 && head[1] == 0xb5 && head[2] == 0x2f && head[3] == 0xfd: // zstd
		return true
	}
	return false
}

// streamPieceBytes is the data of one PushLayer message.
const streamPieceBytes = 1 << 20

// pushStream sends the blob whole over PushLayer: the server decompresses
// it, stores and deduplicates its content, and keeps the compressed bytes
// only if no encoder it knows reproduces them. Compressed bytes hardly
// deduplicate as chunks, so sending them whole costs little.
func (c *Client) pushStream(ctx context.Context, wd *watchdog, r io.Reader, opts PushOptions) (PushResult, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	const sending = "sending the layer"
	endWait := wd.begin(sending)
	stream, err := c.layers.PushLayer(ctx)
	endWait()
	if err != nil {
		return PushResult{}, wrapErr("push", err)
	}
	hdr := &cairnv1.PushLayerHeader{ExpectedDigest: opts.ExpectedDigest.String(), MediaType: opts.MediaType}
	if opts.Size > 0 {
		hdr.SizeBytes = &opts.Size
	}
	endWait = wd.begin(sending)
	err = stream.Send(&cairnv1.PushLayerRequest{Content: &cairnv1.PushLayerRequest_Header{Header: hdr}})
	endWait()
	if err != nil {
		_, rerr := stream.CloseAndRecv()
		return PushResult{}, wrapErr("push", errors.Join(err, rerr))
	}
	buf := make([]byte, streamPieceBytes)
	var total int64
	for {
		n, rerr := io.ReadFull(r, buf)
		if n > 0 {
			total += int64(n)
			if opts.Progress != nil {
				opts.Progress(total)
			}
			endWait := wd.begin(sending)
			err := stream.Send(&cairnv1.PushLayerRequest{Content: &cairnv1.PushLayerRequest_Data{Data: buf[:n]}})
			endWait()
			if err != nil {
				// The server ended the stream: its status says why.
				_, serr := stream.CloseAndRecv()
				if serr == nil {
					serr = err
				}
				return PushResult{}, wrapErr("push", serr)
			}
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			return PushResult{}, fmt.Errorf("push: read: %w", rerr) // cancel aborts the stream: nothing committed
		}
	}
	endWait = wd.begin("the server stores the layer")
	resp, err := stream.CloseAndRecv()
	endWait()
	if err != nil {
		return PushResult{}, wrapErr("push", err)
	}
	info := layerInfo(resp.GetLayer())
	return PushResult{LayerInfo: info, BytesSent: total}, nil
}

// peekCompressed reads the first bytes of r and says whether they start a
// gzip or zstd stream; the reader returned yields r's bytes from the start.
func peekCompressed(r io.Reader) (io.Reader, bool) {
	br := bufio.NewReaderSize(r, 4096)
	head, _ := br.Peek(4)
	return br, compressed(head)
}
