package twinreg

import (
	"context"
	"errors"
	"math/rand"
	"time"
)

// KeepAlive keeps one instance registered for as long as its context lives: it registers
// (retrying until the gateway accepts), heartbeats every ttl/3 with a little jitter, registers
// again when the gateway answers unknown_instance, waits Retry-After on 429 and 503, backs off
// with full jitter on connection errors, and deregisters (within DeregisterBudget) when the
// context ends. A request the gateway refuses for good (invalid_request, forbidden) ends it with
// that error.
type KeepAlive struct {
	Client   *Client
	Instance Instance
	// DeregisterBudget: time spent deregistering after the context ends; 10 s when zero.
	DeregisterBudget time.Duration
	// OnEvent, when set, is told of each registration ("registered"), each error, and the
	// deregistration ("deregistered").
	OnEvent func(event string, err error)
}

func (k *KeepAlive) event(e string, err error) {
	if k.OnEvent != nil {
		k.OnEvent(e, err)
	}
}

// Run blocks until ctx ends (then deregisters and returns nil, or the deregistration's error) or
// the gateway refuses the registration for good.
func (k *KeepAlive) Run(ctx context.Context) error {
	ttl := k.Instance.TTLSeconds
	if ttl == 0 {
		ttl = 30
	}
	period := time.Duration(ttl) * time.Second / 3
	var b backoff
	registered := false
	for ctx.Err() == nil {
		var err error
		if !registered {
			var r *Registration
			r, err = k.Client.Register(ctx, k.Instance)
			if err == nil {
				registered = true
				if r.TTLSeconds > 0 {
					period = time.Duration(r.TTLSeconds) * time.Second / 3
				}
				k.event("registered", nil)
			}
		} else {
			err = k.Client.Heartbeat(ctx, k.Instance.Service, k.Instance.ID)
			if IsUnknownInstance(err) {
				registered = false
				k.event("unknown", err)
				continue
			}
		}
		wait := period - time.Duration(rand.Int63n(int64(period/10)+1))
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			var e *Error
			if errors.As(err, &e) && e.Permanent() {
				k.event("refused", err)
				return err
			}
			k.event("error", err)
			wait = b.next()
			if errors.As(err, &e) && e.RetryAfter > 0 {
				wait = e.RetryAfter
			}
		} else {
			b.reset()
		}
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
	if !registered {
		return nil
	}
	budget := k.DeregisterBudget
	if budget == 0 {
		budget = 10 * time.Second
	}
	dctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()
	var b2 backoff
	for {
		_, err := k.Client.Deregister(dctx, k.Instance.Service, k.Instance.ID)
		var e *Error
		if err == nil || (errors.As(err, &e) && e.Permanent()) {
			k.event("deregistered", err)
			return err
		}
		select {
		case <-dctx.Done():
			k.event("deregistered", err)
			return err
		case <-time.After(b2.next()):
		}
	}
}

// backoff: exponential from 500 ms to 30 s, full jitter.
type backoff struct{ attempt int }

func (b *backoff) next() time.Duration {
	max := 500 * time.Millisecond << b.attempt
	if max > 30*time.Second || max <= 0 {
		max = 30 * time.Second
	} else {
		b.attempt++
	}
	return time.Duration(rand.Int63n(int64(max)) + 1)
}

func (b *backoff) reset() { b.attempt = 0 }
