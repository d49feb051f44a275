package resp

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"time"
)

// Load is a steady load on redis: Conns long-lived connections, each
// starting a request every Interval, a request being a SET of a key and a
// GET of the same key, whose reply must be the value just written. A
// failed request (an error reply, a wrong value, a broken connection, no
// reply within Timeout) counts as an error; the connection is closed and
// made again. Every reply is timed: the longest time between two replies
// on one connection (across errors and reconnections) is the gap a client
// saw, the time the service did not answer it.
//
// Set the fields before Run; then Run in a goroutine, and Window or Total
// from others.
type Load struct {
	// Dial opens a connection to redis (required).
	Dial func(ctx context.Context) (net.Conn, error)
	// Conns is the number of connections (default 1).
	Conns int
	// Interval is the time between the starts of two requests on a
	// connection (default 1 ms). A late request does not make the next
	// ones come faster.
	Interval time.Duration
	// Keys, if not zero, is the number of keys DEBUG POPULATE made
	// (key:0 ... key:Keys-1): each request writes one of them, at random
	// (the connections write disjoint ones). With zero, each connection
	// writes a key of its own, load:N.
	Keys int
	// Timeout bounds one command (default 5 s).
	Timeout time.Duration
	// MaxDuration stops Run after this long at the latest (default 30
	// minutes): the load ends even if its caller forgets to.
	MaxDuration time.Duration

	mu     sync.Mutex
	window Stats
	total  Stats
}

// Stats are what a load saw.
type Stats struct {
	Requests int           // answered right (a SET and its GET)
	Errors   int           // failed requests and failed connects
	Connects int           // connections made
	MaxGap   time.Duration // longest time between two replies on one connection
	LastErr  error         // the last error, if any
}

// Add adds o's counts to s, keeping the longer gap and o's error if any.
func (s *Stats) Add(o Stats) {
	s.Requests += o.Requests
	s.Errors += o.Errors
	s.Connects += o.Connects
	s.MaxGap = max(s.MaxGap, o.MaxGap)
	if o.LastErr != nil {
		s.LastErr = o.LastErr
	}
}

// Total returns the stats since Run started.
func (l *Load) Total() Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	t := l.total
	t.Add(l.window)
	return t
}

// Window returns the stats since the previous call of Window (or since
// Run started), and starts a new window. A gap that spans two windows
// counts in the one where it ends.
func (l *Load) Window() Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	w := l.window
	l.total.Add(w)
	l.window = Stats{}
	return w
}

func (l *Load) record(f func(*Stats)) {
	l.mu.Lock()
	f(&l.window)
	l.mu.Unlock()
}

// Run runs the load until ctx ends or MaxDuration has passed.
func (l *Load) Run(ctx context.Context) {
	if l.Dial == nil {
		l.record(func(s *Stats) { s.Errors++; s.LastErr = errors.New("resp: Load.Dial is nil") })
		return
	}
	if l.Conns <= 0 {
		l.Conns = 1
	}
	if l.Interval <= 0 {
		l.Interval = time.Millisecond
	}
	if l.Timeout <= 0 {
		l.Timeout = 5 * time.Second
	}
	if l.MaxDuration <= 0 {
		l.MaxDuration = 30 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, l.MaxDuration)
	defer cancel()
	var wg sync.WaitGroup
	for i := range l.Conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.conn(ctx, i)
		}()
	}
	wg.Wait()
}

// WaitRequests waits until at least n requests have been answered since
// Run started, for at most maxWait.
func (l *Load) WaitRequests(ctx context.Context, n int, maxWait time.Duration) error {
	deadline := time.Now().Add(maxWait)
	for {
		t := l.Total()
		if t.Requests >= n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the load is stuck: %d requests answered, %d errors (last: %v)", t.Requests, t.Errors, t.LastErr)
		}
		if err := sleep(ctx, 10*time.Millisecond); err != nil {
			return err
		}
	}
}

// conn is the loop of connection i.
func (l *Load) conn(ctx context.Context, i int) {
	var c *Conn
	defer func() {
		if c != nil {
			c.Close()
		}
	}()
	rng := rand.New(rand.NewPCG(uint64(i), uint64(time.Now().UnixNano())))
	var last time.Time // the last reply
	replied := func() {
		now := time.Now()
		if !last.IsZero() {
			gap := now.Sub(last)
			l.record(func(s *Stats) { s.MaxGap = max(s.MaxGap, gap) })
		}
		last = now
	}
	fail := func(err error) {
		if ctx.Err() != nil {
			return // the end, not a failure
		}
		l.record(func(s *Stats) { s.Errors++; s.LastErr = err })
		if c != nil {
			c.Close()
			c = nil
		}
		sleep(ctx, 20*time.Millisecond)
	}
	next := time.Now()
	for n := 1; ctx.Err() == nil; n++ {
		if c == nil {
			dctx, cancel := context.WithTimeout(ctx, l.Timeout)
			nc, err := l.Dial(dctx)
			cancel()
			if err != nil {
				fail(fmt.Errorf("connect: %w", err))
				continue
			}
			c = NewConn(nc)
			l.record(func(s *Stats) { s.Connects++ })
		}
		key := "load:" + strconv.Itoa(i)
		if l.Keys > 0 {
			per := max(l.Keys/l.Conns, 1)
			key = "key:" + strconv.Itoa(i+l.Conns*rng.IntN(per))
		}
		val := "v" + strconv.Itoa(i) + "-" + strconv.Itoa(n)
		if err := l.request(c, key, val, replied); err != nil {
			fail(err)
			continue
		}
		l.record(func(s *Stats) { s.Requests++ })
		next = next.Add(l.Interval)
		if now := time.Now(); now.After(next) {
			next = now // late: no burst to catch up
		}
		sleep(ctx, time.Until(next))
	}
}

// request writes val to key and reads it back.
func (l *Load) request(c *Conn, key, val string, replied func()) error {
	r, err := c.Do(l.Timeout, "SET", key, val)
	if err != nil {
		return fmt.Errorf("SET: %w", err)
	}
	replied()
	if r != "OK" {
		return fmt.Errorf("SET %s: reply %v", key, r)
	}
	r, err = c.Do(l.Timeout, "GET", key)
	if err != nil {
		return fmt.Errorf("GET: %w", err)
	}
	replied()
	if r != val {
		return fmt.Errorf("GET %s: %v, want %s", key, r, val)
	}
	return nil
}

// sleep waits d, or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
