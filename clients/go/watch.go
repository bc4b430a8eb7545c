package twinreg

import (
	"context"
	"fmt"
	"io"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/proto"

	"twinreg.dev/go/twinregv1"
)

// Dial opens a gRPC connection to the gateway with the client's certificate (same port as REST).
// Its messages are encoded with google.golang.org/protobuf, which the generated stubs need: grpc-go
// before 1.35 (Debian 12 ships 1.33) encodes with the older github.com/golang/protobuf otherwise.
func (c *Client) Dial(ctx context.Context, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	opts = append([]grpc.DialOption{
		grpc.WithTransportCredentials(credentials.NewTLS(c.tls.Clone())),
		grpc.WithDefaultCallOptions(grpc.ForceCodec(codec{})),
	}, opts...)
	return grpc.DialContext(ctx, c.base.Host, opts...)
}

// codec is gRPC's "proto" codec on google.golang.org/protobuf.
type codec struct{}

func (codec) Marshal(v interface{}) ([]byte, error) {
	m, ok := v.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("twinreg: %T is not a protobuf message", v)
	}
	return proto.Marshal(m)
}

func (codec) Unmarshal(data []byte, v interface{}) error {
	m, ok := v.(proto.Message)
	if !ok {
		return fmt.Errorf("twinreg: %T is not a protobuf message", v)
	}
	return proto.Unmarshal(data, m)
}

func (codec) Name() string { return "proto" }

// Watch streams a service's instance changes (ADDED, MODIFIED, DELETED, EMPTY, and PROGRESS frames
// while nothing changes) from resumeIndex (0: a snapshot first) until ctx ends or the stream
// fails; each event is passed to each, which may stop the watch by returning false. It returns nil
// when ctx ended or each stopped it.
func (c *Client) Watch(ctx context.Context, conn *grpc.ClientConn, service string, resumeIndex uint64, each func(*twinregv1.WatchEvent) bool) error {
	stream, err := twinregv1.NewRegistryClient(conn).Watch(ctx, &twinregv1.WatchRequest{Service: service, ResumeIndex: resumeIndex})
	if err != nil {
		return err
	}
	for {
		e, err := stream.Recv()
		if err == io.EOF || ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return err
		}
		if !each(e) {
			return nil
		}
	}
}
