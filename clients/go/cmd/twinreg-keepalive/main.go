// Command twinreg-keepalive keeps one instance registered with twinreg until SIGTERM or SIGINT,
// and follows a peer service with the gRPC Watch stream: the twinreg.dev/go library as a program.
// One event per line on stdout:
//
//	registered <service>/<id>
//	event <peer> <ADDED|MODIFIED|DELETED|EMPTY> <id> index=<index>
//	deregistered <service>/<id>
//
// With -check it first shows how the library reports a refused request (a port of 0, and a write
// to another service) and prints "error <code> <field>" for each.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"

	twinreg "twinreg.dev/go"
	"twinreg.dev/go/twinregv1"
)

var outMu sync.Mutex

func emit(format string, args ...any) {
	outMu.Lock()
	defer outMu.Unlock()
	fmt.Printf(format+"\n", args...)
}

func main() {
	var c twinreg.Config
	var i twinreg.Instance
	var peer string
	var check bool
	flag.StringVar(&c.URL, "url", "", "gateway URL, https://host:port")
	flag.StringVar(&c.CertFile, "cert", "", "client certificate (PEM)")
	flag.StringVar(&c.KeyFile, "key", "", "client key (PEM)")
	flag.StringVar(&c.CAFile, "ca", "", "CA bundle of the gateway's certificate (PEM)")
	flag.StringVar(&i.Service, "service", "", "service")
	flag.StringVar(&i.ID, "id", "", "instance id")
	flag.StringVar(&i.Address, "address", "", "address clients dial")
	flag.IntVar(&i.Port, "port", 0, "port")
	flag.IntVar(&i.TTLSeconds, "ttl", 30, "TTL in seconds")
	flag.StringVar(&peer, "peer", "", "a service to watch")
	flag.BoolVar(&check, "check", false, "show how refused requests are reported first")
	flag.Parse()
	client, err := twinreg.New(c)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	if check {
		bad := i
		bad.Port = 0
		report(client.Register(ctx, bad))
		other := i
		other.Service = "not-" + i.Service
		report(client.Register(ctx, other))
	}
	if peer != "" {
		conn, err := client.Dial(ctx)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		defer conn.Close()
		go func() {
			err := client.Watch(ctx, conn, peer, 0, func(e *twinregv1.WatchEvent) bool {
				if e.Type != twinregv1.WatchEvent_PROGRESS {
					id := ""
					if e.Instance != nil {
						id = e.Instance.Id
					}
					emit("event %s %s %s index=%d", peer, e.Type, id, e.Index)
				}
				return true
			})
			if err != nil {
				fmt.Fprintln(os.Stderr, "watch:", err)
			}
		}()
	}
	k := twinreg.KeepAlive{Client: client, Instance: i, OnEvent: func(event string, err error) {
		switch event {
		case "registered":
			emit("registered %s/%s", i.Service, i.ID)
		case "deregistered":
			emit("deregistered %s/%s", i.Service, i.ID)
		default:
			fmt.Fprintln(os.Stderr, event+":", err)
		}
	}}
	if err := k.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func report(_ *twinreg.Registration, err error) {
	if e, ok := err.(*twinreg.Error); ok {
		emit("error %s %s", e.Code, e.Field)
		return
	}
	emit("error none %v", err)
}
