// etcd_resolve dials a gRPC target through etcd's own naming resolver
// (go.etcd.io/etcd/clientv3/naming/resolver, as Debian's golang-etcd-server-dev ships it) and
// prints, one JSON line per resolver update, the sorted addresses grpc-go would balance over.
// It never connects to them: the updates are read off a wrapped ClientConn and not passed on.
//
//	etcd_resolve ETCD_ENDPOINT TARGET      e.g. etcd_resolve http://127.0.0.1:2379 etcd:////services/pay/
//
// Built offline in GOPATH mode by tests/api/discovery.rs; it runs until SIGTERM or SIGINT.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"syscall"
	"time"

	"go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/clientv3/naming/resolver"
	"google.golang.org/grpc"
	gresolver "google.golang.org/grpc/resolver"
	"google.golang.org/grpc/serviceconfig"
)

type capture struct{}

func (capture) UpdateState(s gresolver.State) {
	addrs := make([]string, 0, len(s.Addresses))
	for _, a := range s.Addresses {
		addrs = append(addrs, a.Addr)
	}
	sort.Strings(addrs)
	line, _ := json.Marshal(addrs)
	fmt.Println(string(line))
}
func (capture) ReportError(err error)                    { fmt.Fprintln(os.Stderr, "resolver error:", err) }
func (capture) NewAddress(addresses []gresolver.Address) {}
func (capture) NewServiceConfig(string)                  {}
func (capture) ParseServiceConfig(string) *serviceconfig.ParseResult {
	return &serviceconfig.ParseResult{}
}

// builder builds etcd's resolver against the capture instead of grpc's own ClientConn.
type builder struct{ etcd gresolver.Builder }

func (b builder) Scheme() string { return b.etcd.Scheme() }
func (b builder) Build(t gresolver.Target, _ gresolver.ClientConn, o gresolver.BuildOptions) (gresolver.Resolver, error) {
	fmt.Fprintf(os.Stderr, "target endpoint %q\n", t.Endpoint)
	return b.etcd.Build(t, capture{}, o)
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: etcd_resolve ETCD_ENDPOINT TARGET")
		os.Exit(2)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{os.Args[1]}, DialTimeout: 5 * time.Second})
	if err != nil {
		fmt.Fprintln(os.Stderr, "etcd:", err)
		os.Exit(1)
	}
	defer cli.Close()
	etcdBuilder, err := resolver.NewBuilder(cli)
	if err != nil {
		fmt.Fprintln(os.Stderr, "resolver:", err)
		os.Exit(1)
	}
	conn, err := grpc.DialContext(context.Background(), os.Args[2],
		grpc.WithInsecure(), grpc.WithResolvers(builder{etcdBuilder}))
	if err != nil {
		fmt.Fprintln(os.Stderr, "dial:", err)
		os.Exit(1)
	}
	defer conn.Close()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	<-ctx.Done()
}
