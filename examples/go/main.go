// Command client is a twinreg client using only the Go standard library (Go 1.19 or newer).
//
// It registers one service instance with a twinreg gateway over mutual TLS, heartbeats it every
// ttl/3, long-polls the instance list of a peer service, and deregisters on SIGTERM or SIGINT.
//
// Output contract (stable, one event per line, meant to be parsed):
//
//	stdout  registered <service>/<id> ttl=<seconds>s degraded=<true|false>
//	        peer <peer>: <n> instances [<id> <host>:<port>, ...] index=<index>
//	        deregistered <service>/<id> existed=<true|false>
//	stderr  diagnostics (retries, degraded answers, errors); no secrets, only file paths.
//
// Exit status: 0 after a clean deregistration (or a stop before any registration succeeded), 1
// when deregistering a registered instance failed (the registries' TTL then removes it), 2 for a configuration error or a request the gateway refuses for
// good (400, 403, 413: a retry cannot fix those).
//
// Every setting is a flag or an environment variable (the flag wins). The variables use the
// TWREG_ prefix, not TWINREG_: the gateway reads TWINREG_* as configuration and rejects unknown
// keys, so the two must not share a shell's namespace.
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	longPollWait     = 30 * time.Second // how long the gateway may hold a long poll
	requestTimeout   = 10 * time.Second // register, deregister, and the slack on a long poll
	deregisterBudget = 10 * time.Second // time spent trying to deregister on shutdown
	backoffBase      = 500 * time.Millisecond
	backoffCap       = 30 * time.Second
)

// ---- output ----

var outMu sync.Mutex

// emit prints one event line on stdout (unbuffered, so a supervisor or a test sees it at once).
func emit(format string, args ...any) {
	outMu.Lock()
	defer outMu.Unlock()
	fmt.Fprintf(os.Stdout, format+"\n", args...)
}

func logf(format string, args ...any) {
	outMu.Lock()
	defer outMu.Unlock()
	fmt.Fprintf(os.Stderr, "twinreg-client: "+format+"\n", args...)
}

// ---- configuration ----

type config struct {
	URL, Cert, Key, CA string
	Service, ID        string
	Address            string
	Port, TTL          int
	Tags               []string
	Meta               map[string]string
	Watch              string
}

// listFlag is a repeatable flag; its default comes from a comma-separated variable.
type listFlag struct {
	values []string
	set    bool
}

func (l *listFlag) String() string { return strings.Join(l.values, ",") }

func (l *listFlag) Set(v string) error {
	if !l.set {
		l.values, l.set = nil, true // the first flag replaces the environment's list
	}
	l.values = append(l.values, v)
	return nil
}

func splitList(s string) []string {
	var out []string
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}

func envInt(name string, def int) int {
	if v := os.Getenv(name); v != "" {
		if n, err := strconv.Atoi(v); err == nil {
			return n
		}
		return -1 // reported as out of range below
	}
	return def
}

func defaultID() string {
	host, _ := os.Hostname()
	id := strings.Map(func(r rune) rune {
		if r < 128 && (r == '.' || r == '_' || r == '-' || r >= '0' && r <= '9' ||
			r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			return r
		}
		return '-'
	}, host)
	if len(id) > 128 {
		id = id[:128]
	}
	return id
}

func parseConfig(args []string) (*config, error) {
	fs := flag.NewFlagSet("client", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Register with twinreg, heartbeat, watch a peer service, deregister on SIGTERM.\n"+
			"Every flag has a TWREG_* environment variable; the flag wins.\n\nUsage of %s:\n", os.Args[0])
		fs.PrintDefaults()
	}
	c := &config{}
	id := os.Getenv("TWREG_ID")
	if id == "" {
		id = defaultID()
	}
	fs.StringVar(&c.URL, "url", os.Getenv("TWREG_URL"), "gateway URL, https://host:port (TWREG_URL)")
	fs.StringVar(&c.Cert, "cert", os.Getenv("TWREG_CERT"), "client certificate PEM (TWREG_CERT)")
	fs.StringVar(&c.Key, "key", os.Getenv("TWREG_KEY"), "client private key PEM (TWREG_KEY)")
	fs.StringVar(&c.CA, "ca", os.Getenv("TWREG_CA"), "CA bundle that signed the gateway's certificate (TWREG_CA)")
	fs.StringVar(&c.Service, "service", os.Getenv("TWREG_SERVICE"), "service to register; the certificate must allow it (TWREG_SERVICE)")
	fs.StringVar(&c.ID, "id", id, "instance id (TWREG_ID; default: the host name)")
	fs.StringVar(&c.Address, "address", os.Getenv("TWREG_ADDRESS"), "address peers dial, IP or host name (TWREG_ADDRESS)")
	fs.IntVar(&c.Port, "port", envInt("TWREG_PORT", 0), "port peers dial (TWREG_PORT)")
	fs.IntVar(&c.TTL, "ttl", envInt("TWREG_TTL", 30), "seconds without a heartbeat before the registries drop the instance, 5-3600 (TWREG_TTL)")
	fs.StringVar(&c.Watch, "watch", os.Getenv("TWREG_WATCH"), "peer service whose instances to watch (TWREG_WATCH; optional)")
	tags := &listFlag{values: splitList(os.Getenv("TWREG_TAGS"))}
	meta := &listFlag{values: splitList(os.Getenv("TWREG_META"))}
	fs.Var(tags, "tag", "a tag, repeatable (TWREG_TAGS, comma-separated)")
	fs.Var(meta, "meta", "KEY=VALUE metadata, repeatable (TWREG_META, comma-separated)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	var missing []string
	for _, f := range []struct {
		name string
		ok   bool
	}{
		{"-url", c.URL != ""}, {"-cert", c.Cert != ""}, {"-key", c.Key != ""}, {"-ca", c.CA != ""},
		{"-service", c.Service != ""}, {"-id", c.ID != ""}, {"-address", c.Address != ""},
		{"-port", c.Port != 0},
	} {
		if !f.ok {
			missing = append(missing, f.name)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("missing %s (or their TWREG_* variables)", strings.Join(missing, ", "))
	}
	if c.Port < 1 || c.Port > 65535 {
		return nil, errors.New("-port must be 1-65535")
	}
	if c.TTL < 5 || c.TTL > 3600 {
		return nil, errors.New("-ttl must be 5-3600 seconds")
	}
	c.Tags = append([]string{}, tags.values...)
	c.Meta = map[string]string{}
	for _, kv := range meta.values {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("-meta must be KEY=VALUE, got %q", kv)
		}
		c.Meta[k] = v
	}
	return c, nil
}

// tlsConfig verifies the gateway against the CA bundle (host name included) and presents the
// client certificate. Errors name the files, never their contents.
func tlsConfig(c *config) (*tls.Config, error) {
	caPEM, err := os.ReadFile(c.CA)
	if err != nil {
		return nil, fmt.Errorf("cannot read CA bundle: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("no certificate found in CA bundle %s", c.CA)
	}
	pair, err := tls.LoadX509KeyPair(c.Cert, c.Key)
	if err != nil {
		return nil, fmt.Errorf("cannot load client certificate %s / key %s: %v", c.Cert, c.Key, err)
	}
	return &tls.Config{
		RootCAs:      roots,
		Certificates: []tls.Certificate{pair},
		MinVersion:   tls.VersionTLS12,
	}, nil
}

// ---- the gateway's answers ----

// apiError is a non-2xx answer from the gateway.
type apiError struct {
	Status     int           `json:"-"`
	Code       string        `json:"error"`
	Message    string        `json:"message"`
	Field      string        `json:"field"`
	RetryAfter time.Duration `json:"-"` // 0 when the answer had no usable Retry-After
}

func (e *apiError) Error() string {
	if e.Code == "" {
		return fmt.Sprintf("HTTP %d, no error body", e.Status)
	}
	s := fmt.Sprintf("HTTP %d %s: %s", e.Status, e.Code, e.Message)
	if e.Field != "" {
		s += " (field " + e.Field + ")"
	}
	return s
}

// permanent says whether retrying the same request cannot succeed.
func (e *apiError) permanent() bool {
	switch e.Status {
	case 400, 403, 405, 413:
		return true
	}
	return false
}

type registryOutcome struct {
	OK    bool   `json:"ok"`
	Error string `json:"error"`
}

type writeAnswer struct {
	TTLSeconds int                        `json:"ttl_seconds"`
	Degraded   bool                       `json:"degraded"`
	Existed    bool                       `json:"existed"`
	Registries map[string]registryOutcome `json:"registries"`
}

func (a *writeAnswer) failed() string {
	var bad []string
	for name, r := range a.Registries {
		if !r.OK {
			bad = append(bad, name+": "+r.Error)
		}
	}
	sort.Strings(bad)
	if len(bad) == 0 {
		return "no detail"
	}
	return strings.Join(bad, ", ")
}

type instance struct {
	ID      string `json:"id"`
	Address string `json:"address"`
	Port    int    `json:"port"`
}

type listAnswer struct {
	Index     uint64     `json:"index"`
	Instances []instance `json:"instances"`
}

func parseRetryAfter(v string) time.Duration {
	if v == "" {
		return 0
	}
	var d time.Duration
	if secs, err := strconv.ParseFloat(v, 64); err == nil {
		d = time.Duration(secs * float64(time.Second))
	} else if t, err := http.ParseTime(v); err == nil {
		d = time.Until(t)
	}
	if d < 0 {
		return 0
	}
	if d > 5*time.Minute {
		return 5 * time.Minute
	}
	return d
}

// ---- HTTP ----

type gateway struct {
	base string // https://host:port[/prefix]
	http *http.Client
}

func newGateway(rawURL string, tlsConf *tls.Config) (*gateway, error) {
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("gateway URL must be https://host[:port], got %q", rawURL)
	}
	transport := &http.Transport{
		TLSClientConfig:     tlsConf,
		ForceAttemptHTTP2:   true, // heartbeats and the long poll share one connection
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout: 5 * time.Second,
		IdleConnTimeout:     90 * time.Second,
		MaxIdleConnsPerHost: 2,
	}
	// No client-wide timeout: every request carries its own deadline in its context.
	return &gateway{base: strings.TrimRight(u.String(), "/"), http: &http.Client{Transport: transport}}, nil
}

// do sends one request. A non-2xx answer is an *apiError; anything else is a transport error.
func (g *gateway) do(ctx context.Context, timeout time.Duration, method, path string, body, out any) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var reader io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		reader = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, g.base+path, reader)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := g.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		e := &apiError{Status: resp.StatusCode, RetryAfter: parseRetryAfter(resp.Header.Get("Retry-After"))}
		_ = json.Unmarshal(raw, e) // an answer without a JSON body still has its status
		e.Status = resp.StatusCode
		return e
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			return fmt.Errorf("undecodable answer: %v", err)
		}
	}
	return nil
}

// ---- retries ----

var rng = struct {
	sync.Mutex
	*rand.Rand
}{Rand: rand.New(rand.NewSource(time.Now().UnixNano()))}

// uniform returns a random duration in [lo, hi).
func uniform(lo, hi time.Duration) time.Duration {
	rng.Lock()
	defer rng.Unlock()
	return lo + time.Duration(rng.Float64()*float64(hi-lo))
}

// backoff is exponential backoff with full jitter: a random delay in [0, min(cap, base*2^n)).
type backoff struct {
	base, cap time.Duration
	attempt   int
}

func (b *backoff) next() time.Duration {
	ceiling := b.base << uint(b.attempt)
	if ceiling > b.cap || ceiling <= 0 {
		ceiling = b.cap
	}
	if b.attempt < 16 {
		b.attempt++
	}
	return uniform(0, ceiling)
}

func (b *backoff) reset() { b.attempt = 0 }

// retryDelay is how long to wait after err: the Retry-After of a 503, else the backoff.
func retryDelay(err error, b *backoff) time.Duration {
	d := b.next() // grows even when Retry-After is used, for when it stops coming
	var ae *apiError
	if errors.As(err, &ae) && ae.Status == 503 && ae.RetryAfter > 0 {
		return ae.RetryAfter
	}
	return d
}

// sleep waits for d or until ctx is done; it reports whether the full delay elapsed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// describe shortens a transport error for a log line.
func describe(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err.Error()
	}
	return err.Error()
}

// ---- registration ----

type fatalError struct{ error }

type registration struct {
	gw         *gateway
	cfg        *config
	path       string
	name       string
	registered bool // the gateway confirmed a registration at least once
}

func (r *registration) body() any {
	return map[string]any{
		"address":     r.cfg.Address,
		"port":        r.cfg.Port,
		"tags":        r.cfg.Tags,
		"meta":        r.cfg.Meta,
		"ttl_seconds": r.cfg.TTL,
	}
}

// register registers until it succeeds or ctx is done (then it returns ctx's error).
func (r *registration) register(ctx context.Context) error {
	b := &backoff{base: backoffBase, cap: backoffCap}
	for {
		var ans writeAnswer
		err := r.gw.do(ctx, requestTimeout, http.MethodPut, r.path, r.body(), &ans)
		if err == nil {
			r.registered = true
			emit("registered %s ttl=%ds degraded=%t", r.name, ans.TTLSeconds, ans.Degraded)
			if ans.Degraded {
				logf("register %s degraded: %s", r.name, ans.failed())
			}
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var ae *apiError
		if errors.As(err, &ae) && ae.permanent() {
			return fatalError{fmt.Errorf("register %s refused: %v", r.name, ae)}
		}
		d := retryDelay(err, b)
		logf("register %s: %s; retrying in %.1fs", r.name, describe(err), d.Seconds())
		if !sleep(ctx, d) {
			return ctx.Err()
		}
	}
}

// heartbeat beats every ttl/3 until ctx is done, registering again when the gateway has
// forgotten the instance and retrying transient failures sooner than the next beat.
func (r *registration) heartbeat(ctx context.Context) error {
	interval := time.Duration(r.cfg.TTL) * time.Second / 3
	timeout := interval // a beat that takes longer than this is late anyway
	if timeout < 2*time.Second {
		timeout = 2 * time.Second
	} else if timeout > requestTimeout {
		timeout = requestTimeout
	}
	b := &backoff{base: backoffBase, cap: interval}
	delay := interval
	for sleep(ctx, delay) {
		var ans writeAnswer
		err := r.gw.do(ctx, timeout, http.MethodPut, r.path+"/heartbeat", nil, &ans)
		if ctx.Err() != nil {
			return nil
		}
		var ae *apiError
		switch {
		case err == nil:
			if ans.Degraded {
				logf("heartbeat %s degraded: %s", r.name, ans.failed())
			}
			b.reset()
			// A little jitter so a fleet started together does not beat in lockstep.
			delay = uniform(interval*9/10, interval)
		case errors.As(err, &ae) && ae.Status == 404 && ae.Code == "unknown_instance":
			logf("heartbeat %s: the gateway no longer knows it; registering again", r.name)
			if err := r.register(ctx); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
			b.reset()
			delay = interval
		default:
			delay = retryDelay(err, b)
			logf("heartbeat %s: %s; retrying in %.1fs", r.name, describe(err), delay.Seconds())
		}
	}
	return nil
}

// deregister reports whether the gateway confirmed the deregistration. Once registered, it
// retries transient failures for deregisterBudget. Never registered (stopped while still
// trying), it makes a single attempt: a request the gateway received may have landed, but
// nothing is known to need cleaning up.
func (r *registration) deregister() bool {
	budget := deregisterBudget
	if !r.registered {
		budget = requestTimeout
	}
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()
	b := &backoff{base: backoffBase, cap: 2 * time.Second}
	for {
		var ans writeAnswer
		err := r.gw.do(ctx, requestTimeout, http.MethodDelete, r.path, nil, &ans)
		if err == nil {
			emit("deregistered %s existed=%t", r.name, ans.Existed)
			return true
		}
		var ae *apiError
		if errors.As(err, &ae) && ae.permanent() {
			logf("deregister %s: %v", r.name, ae)
			return false
		}
		d := retryDelay(err, b)
		if deadline, _ := ctx.Deadline(); !r.registered || time.Now().Add(d).After(deadline) {
			logf("deregister %s failed: %s; the registries' TTL will expire it", r.name, describe(err))
			return false
		}
		logf("deregister %s: %s; retrying in %.1fs", r.name, describe(err), d.Seconds())
		sleep(ctx, d)
	}
}

// ---- watching a peer ----

func hostPort(address string, port int) string {
	return net.JoinHostPort(address, strconv.Itoa(port)) // brackets IPv6 literals
}

func peerLine(peer string, a *listAnswer) string {
	list := append([]instance(nil), a.Instances...)
	sort.Slice(list, func(i, j int) bool { return list[i].ID < list[j].ID })
	parts := make([]string, len(list))
	for i, in := range list {
		parts[i] = in.ID + " " + hostPort(in.Address, in.Port)
	}
	return fmt.Sprintf("peer %s: %d instances [%s] index=%d", peer, len(list), strings.Join(parts, ", "), a.Index)
}

// watch long-polls the peer's instance list and prints one line per change until ctx is done.
//
// The index is an opaque content hash of the instance set, not a counter: it is only compared
// for equality and sent back. An answer without a valid index resets it to 0, which makes the
// next request answer at once with the current index.
func watch(ctx context.Context, gw *gateway, peer string) {
	base := "/v1/services/" + url.PathEscape(peer) + "/instances"
	b := &backoff{base: backoffBase, cap: backoffCap}
	var index uint64   // sent with the next request; 0 asks for an immediate answer
	var printed uint64 // index of the last line printed, so a reset does not repeat an unchanged set
	for ctx.Err() == nil {
		path := base
		if index != 0 {
			path = fmt.Sprintf("%s?index=%d&wait=%ds", base, index, int(longPollWait/time.Second))
		}
		started := time.Now()
		var ans listAnswer
		err := gw.do(ctx, longPollWait+requestTimeout, http.MethodGet, path, nil, &ans)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			var ae *apiError
			if errors.As(err, &ae) && ae.Status == 400 && ae.Field == "index" {
				index = 0 // the gateway does not accept our index: start over
			}
			// 403 or 404 will not heal by itself, but the watch is secondary to staying
			// registered: keep trying (the backoff soon reaches its cap) and say why.
			d := retryDelay(err, b)
			logf("watch %s: %s; retrying in %.1fs", peer, describe(err), d.Seconds())
			sleep(ctx, d)
			continue
		}
		b.reset()
		switch {
		case ans.Index == 0:
			logf("watch %s: answer without a valid index; starting over", peer)
			index = 0
			sleep(ctx, uniform(time.Second, 2*time.Second))
			continue
		case ans.Index != printed:
			outMu.Lock()
			if ctx.Err() == nil {
				fmt.Fprintln(os.Stdout, peerLine(peer, &ans))
			}
			outMu.Unlock()
			printed = ans.Index
		case index != 0 && time.Since(started) < time.Second:
			// Unchanged yet answered early (e.g. a replica shutting down ends its long polls):
			// pause briefly instead of spinning.
			sleep(ctx, uniform(500*time.Millisecond, 1500*time.Millisecond))
		}
		index = ans.Index
	}
}

// ---- main ----

func main() { os.Exit(run()) }

func run() int {
	cfg, err := parseConfig(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		logf("%v", err)
		return 2
	}
	tlsConf, err := tlsConfig(cfg)
	if err != nil {
		logf("%v", err)
		return 2
	}
	gw, err := newGateway(cfg.URL, tlsConf)
	if err != nil {
		logf("%v", err)
		return 2
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	signals := make(chan os.Signal, 2)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		s := <-signals
		name := "SIGTERM"
		if s == syscall.SIGINT {
			name = "SIGINT"
		}
		logf("%s: stopping", name)
		cancel()
		<-signals
		logf("second signal: exiting without waiting for deregistration")
		os.Exit(1)
	}()

	var watching sync.WaitGroup
	if cfg.Watch != "" {
		watching.Add(1)
		go func() {
			defer watching.Done()
			watch(ctx, gw, cfg.Watch)
		}()
	}

	reg := &registration{
		gw:   gw,
		cfg:  cfg,
		path: "/v1/services/" + url.PathEscape(cfg.Service) + "/instances/" + url.PathEscape(cfg.ID),
		name: cfg.Service + "/" + cfg.ID,
	}
	err = reg.register(ctx)
	if err == nil {
		err = reg.heartbeat(ctx)
	}
	var fatal fatalError
	if errors.As(err, &fatal) {
		logf("%v", fatal.error)
		return 2
	}
	<-ctx.Done() // register and heartbeat return early only when stopping
	watching.Wait()
	// Heartbeats have ended. Deregister even if registration never answered, since a request
	// the gateway received may have landed; deregistering is idempotent.
	if reg.deregister() || !reg.registered {
		return 0
	}
	return 1
}
