package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/procmig/migrate/e2e/cluster"
	"github.com/procmig/migrate/e2e/resp"
)

// opTimeout bounds one request: a connection that stalls longer counts as
// an error, and the client connects again.
const opTimeout = 5 * time.Second

// client writes a counter and reads it back, over one connection, every
// few milliseconds, from the client node: SET counter N, GET counter must
// answer N. It measures the longest time between two answered requests.
// On an error it counts it, and connects again.
type client struct {
	node *cluster.Node
	addr string

	gate sync.Mutex // held by the loop around each request, and by pause

	mu    sync.Mutex
	st    clientStats
	conn  *resp.Conn
	since time.Time // of the last answered request
}

type clientStats struct {
	ops        int           // requests answered right (a SET and its GET)
	errors     int           // failed requests (and failed connects)
	connects   int           // connections made
	maxGap     time.Duration // longest time between two answered requests
	maxGapAt   time.Time
	last       int64 // the last value written and read back
	lastErr    error
	firstErrAt time.Time
}

func (cl *client) snapshot() clientStats {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return cl.st
}

func (cl *client) status() string {
	s := cl.snapshot()
	out := fmt.Sprintf("%d requests answered, %d errors, %d connections, longest gap between answers %.1f ms, counter at %d",
		s.ops, s.errors, s.connects, float64(s.maxGap.Microseconds())/1000, s.last)
	if s.lastErr != nil {
		out += fmt.Sprintf(" (last error: %v)", s.lastErr)
	}
	return out
}

// run runs the client until ctx ends.
func (cl *client) run(ctx context.Context) {
	defer func() {
		cl.mu.Lock()
		if cl.conn != nil {
			cl.conn.Close()
			cl.conn = nil
		}
		cl.mu.Unlock()
	}()
	for n := int64(1); ctx.Err() == nil; {
		cl.gate.Lock()
		err := cl.once(ctx, n)
		cl.gate.Unlock()
		if err == nil {
			n++
		} else if ctx.Err() == nil {
			cl.mu.Lock()
			cl.st.errors++
			cl.st.lastErr = err
			if cl.st.firstErrAt.IsZero() {
				cl.st.firstErrAt = time.Now()
			}
			if cl.conn != nil {
				cl.conn.Close()
				cl.conn = nil
			}
			cl.mu.Unlock()
			sleep(ctx, 20*time.Millisecond)
			continue
		}
		sleep(ctx, *interval)
	}
}

// once connects if need be, writes n and reads it back.
func (cl *client) once(ctx context.Context, n int64) error {
	cl.mu.Lock()
	c := cl.conn
	cl.mu.Unlock()
	if c == nil {
		dctx, cancel := context.WithTimeout(ctx, opTimeout)
		nc, err := cl.node.Dial(dctx, "tcp", cl.addr)
		cancel()
		if err != nil {
			return err
		}
		c = resp.NewConn(nc)
		cl.mu.Lock()
		cl.conn = c
		cl.st.connects++
		cl.mu.Unlock()
	}
	v := strconv.FormatInt(n, 10)
	if r, err := c.Do(opTimeout, "SET", "counter", v); err != nil {
		return fmt.Errorf("SET: %w", err)
	} else if r != "OK" {
		return fmt.Errorf("SET: reply %v", r)
	}
	r, err := c.Do(opTimeout, "GET", "counter")
	if err != nil {
		return fmt.Errorf("GET: %w", err)
	}
	if r != v {
		return fmt.Errorf("GET counter: %v, want %s", r, v)
	}
	now := time.Now()
	cl.mu.Lock()
	if !cl.since.IsZero() {
		if gap := now.Sub(cl.since); gap > cl.st.maxGap {
			cl.st.maxGap, cl.st.maxGapAt = gap, now
		}
	}
	cl.since = now
	cl.st.ops++
	cl.st.last = n
	cl.mu.Unlock()
	return nil
}

// pause stops the client between two requests and closes its connection;
// resume lets it go on (connecting again).
func (cl *client) pause() {
	cl.gate.Lock()
	cl.mu.Lock()
	if cl.conn != nil {
		cl.conn.Close()
		cl.conn = nil
	}
	cl.mu.Unlock()
}

func (cl *client) resume() { cl.gate.Unlock() }

// waitOps waits (up to 10 s) until the client has had n requests answered.
func (cl *client) waitOps(ctx context.Context, n int) error {
	deadline := time.Now().Add(10 * time.Second)
	for cl.snapshot().ops < n {
		if time.Now().After(deadline) {
			return errors.New("the client is stuck: " + cl.status())
		}
		if err := sleep(ctx, 10*time.Millisecond); err != nil {
			return err
		}
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
