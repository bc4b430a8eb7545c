// Package twinreg is a client of the twinreg gateway: register, heartbeat, drain and deregister
// service instances over REST with mutual TLS (standard library HTTP), list and long-poll a
// service's instances, and follow one with the gRPC Watch stream (the generated stubs in
// twinreg.dev/go/twinregv1). KeepAlive runs the whole life of one instance: register, heartbeat
// every ttl/3, register again when the gateway forgets it, honour Retry-After, and deregister when
// its context ends.
package twinreg

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"time"
)

// Config says where the gateway is and which certificate to present.
type Config struct {
	// URL of the gateway (or its load balancer), e.g. https://twinreg:8443.
	URL string
	// CertFile and KeyFile: the client certificate and its key (PEM). Its identity (first URI
	// SAN, else DNS SAN, else CN) decides which services it may write.
	CertFile, KeyFile string
	// CAFile: the CA bundle that signed the gateway's certificate (PEM).
	CAFile string
	// Timeout of one request (not of a long poll, which adds its wait); 10 s when zero.
	Timeout time.Duration
}

// Client talks to one gateway. It is safe for concurrent use.
type Client struct {
	base    *url.URL
	http    *http.Client
	tls     *tls.Config
	timeout time.Duration
}

// New loads the certificates once and returns a client with a keep-alive connection pool.
func New(c Config) (*Client, error) {
	base, err := url.Parse(c.URL)
	if err != nil || base.Scheme != "https" || base.Host == "" {
		return nil, fmt.Errorf("twinreg: URL %q must be https://host:port", c.URL)
	}
	cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("twinreg: client certificate %s / key %s: %w", c.CertFile, c.KeyFile, err)
	}
	caPEM, err := os.ReadFile(c.CAFile)
	if err != nil {
		return nil, fmt.Errorf("twinreg: CA bundle: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("twinreg: CA bundle %s holds no PEM certificate", c.CAFile)
	}
	tlsConf := &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, MinVersion: tls.VersionTLS12}
	timeout := c.Timeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	transport := &http.Transport{
		TLSClientConfig:     tlsConf.Clone(),
		ForceAttemptHTTP2:   true,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     90 * time.Second,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
	}
	return &Client{base: base, http: &http.Client{Transport: transport}, tls: tlsConf, timeout: timeout}, nil
}

// Error is an answer of the gateway other than 2xx: its error code ("invalid_request",
// "forbidden", "unknown_instance", "payload_too_large", "unavailable", "rate_limited", ...), the
// field at fault, and when to retry.
type Error struct {
	Status     int
	Code       string
	Message    string
	Field      string
	RetryAfter time.Duration
	// Each registry's outcome, when the request reached them.
	Registries map[string]Outcome
}

func (e *Error) Error() string {
	s := "twinreg: " + e.Code
	if e.Code == "" {
		s = fmt.Sprintf("twinreg: HTTP %d without an error body", e.Status)
	}
	if e.Field != "" {
		s += " (field " + e.Field + ")"
	}
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}

// Permanent says whether retrying the same request cannot succeed (bad input, a refusal).
func (e *Error) Permanent() bool {
	switch e.Code {
	case "invalid_request", "forbidden", "payload_too_large", "not_found":
		return true
	}
	return false
}

// IsUnknownInstance says whether err means the gateway does not know the instance (register it
// again).
func IsUnknownInstance(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == "unknown_instance"
}

// Outcome is what one registry did with a request.
type Outcome struct {
	OK        bool   `json:"ok"`
	LatencyMS uint64 `json:"latency_ms,omitempty"`
	Error     string `json:"error,omitempty"`
	Restored  bool   `json:"restored,omitempty"`
	Coalesced bool   `json:"coalesced,omitempty"`
}

// Instance is what registers.
type Instance struct {
	Service    string            `json:"-"`
	ID         string            `json:"-"`
	Address    string            `json:"address"`
	Port       int               `json:"port"`
	Tags       []string          `json:"tags,omitempty"`
	Meta       map[string]string `json:"meta,omitempty"`
	TTLSeconds int               `json:"ttl_seconds,omitempty"`
}

// Registration is the answer to a register.
type Registration struct {
	Registered bool               `json:"registered"`
	TTLSeconds int                `json:"ttl_seconds"`
	Degraded   bool               `json:"degraded"`
	Registries map[string]Outcome `json:"registries"`
}

// Listed is one instance of a list.
type Listed struct {
	ID         string            `json:"id"`
	Address    string            `json:"address"`
	Port       int               `json:"port"`
	Tags       []string          `json:"tags"`
	Meta       map[string]string `json:"meta"`
	TTLSeconds int               `json:"ttl_seconds"`
	Drained    bool              `json:"drained"`
	Sources    []string          `json:"sources"`
}

// Listing is a service's instances and the content index of that set.
type Listing struct {
	Service    string             `json:"service"`
	Index      uint64             `json:"index"`
	Instances  []Listed           `json:"instances"`
	Registries map[string]Outcome `json:"registries"`
}

func instancePath(service, id string) string {
	return "/v1/services/" + url.PathEscape(service) + "/instances/" + url.PathEscape(id)
}

// Register writes the instance to both registries (an idempotent upsert).
func (c *Client) Register(ctx context.Context, i Instance) (*Registration, error) {
	var out Registration
	err := c.do(ctx, c.timeout, http.MethodPut, instancePath(i.Service, i.ID), i, &out)
	return &out, err
}

// Heartbeat renews the instance; an error for which IsUnknownInstance is true means: register
// again.
func (c *Client) Heartbeat(ctx context.Context, service, id string) error {
	return c.do(ctx, c.timeout, http.MethodPut, instancePath(service, id)+"/heartbeat", nil, nil)
}

// Deregister removes the instance (idempotent); whether a registry held it.
func (c *Client) Deregister(ctx context.Context, service, id string) (bool, error) {
	var out struct {
		Existed bool `json:"existed"`
	}
	err := c.do(ctx, c.timeout, http.MethodDelete, instancePath(service, id), nil, &out)
	return out.Existed, err
}

// Drain takes the instance out of native discovery (it stays registered and heartbeating).
func (c *Client) Drain(ctx context.Context, service, id string) error {
	return c.do(ctx, c.timeout, http.MethodPut, instancePath(service, id)+"/drain", nil, nil)
}

// Undrain brings a drained instance back into native discovery.
func (c *Client) Undrain(ctx context.Context, service, id string) error {
	return c.do(ctx, c.timeout, http.MethodDelete, instancePath(service, id)+"/drain", nil, nil)
}

// Instances lists a service. With index != 0 it long-polls: it answers when the set differs from
// the one that produced index, or after wait with the same index.
func (c *Client) Instances(ctx context.Context, service string, index uint64, wait time.Duration) (*Listing, error) {
	path := "/v1/services/" + url.PathEscape(service) + "/instances"
	timeout := c.timeout
	if index != 0 {
		path += "?index=" + strconv.FormatUint(index, 10) + "&wait=" + strconv.Itoa(int(wait/time.Second)) + "s"
		timeout += wait
	}
	var out Listing
	err := c.do(ctx, timeout, http.MethodGet, path, nil, &out)
	return &out, err
}

func (c *Client) do(ctx context.Context, timeout time.Duration, method, path string, body, out any) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base.String()+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		e := &Error{Status: resp.StatusCode, RetryAfter: retryAfter(resp.Header.Get("Retry-After"))}
		var shape struct {
			Error      string             `json:"error"`
			Message    string             `json:"message"`
			Field      string             `json:"field"`
			Registries map[string]Outcome `json:"registries"`
		}
		if json.Unmarshal(data, &shape) == nil {
			e.Code, e.Message, e.Field, e.Registries = shape.Error, shape.Message, shape.Field, shape.Registries
		}
		return e
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("twinreg: unreadable %s %s answer: %w", method, path, err)
		}
	}
	return nil
}

func retryAfter(v string) time.Duration {
	if s, err := strconv.Atoi(v); err == nil && s >= 0 {
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := time.Until(t); d > 0 {
			return d
		}
	}
	return 0
}
