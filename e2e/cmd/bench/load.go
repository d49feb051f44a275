package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/procmig/migrate/e2e/resp"
)

// reqLoad is a client's steady load of requests (the postgres and nginx
// scenarios'): conns connections, each sending its next request every
// every and checking the answer. A failed request closes its connection;
// the next one dials again (and counts as an error).
type reqLoad[C interface{ Close() error }] struct {
	dial func(context.Context) (C, error)
	// request sends request id (1, 2, ...) of connection conn over c and
	// checks its answer.
	request func(c C, conn, id int) error
	conns   int
	every   time.Duration

	mu     sync.Mutex
	window resp.Stats
	total  resp.Stats
	ok     int // answered right, all connections
}

func (l *reqLoad[C]) record(f func(*resp.Stats)) {
	l.mu.Lock()
	f(&l.window)
	l.mu.Unlock()
}

// Window returns what the client saw since the last Window.
func (l *reqLoad[C]) Window() resp.Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	w := l.window
	l.total.Add(w)
	l.window = resp.Stats{}
	return w
}

// Total returns what the client saw since it started.
func (l *reqLoad[C]) Total() resp.Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	t := l.total
	t.Add(l.window)
	return t
}

// answered is the count of requests answered right so far.
func (l *reqLoad[C]) answered() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ok
}

func (l *reqLoad[C]) WaitRequests(ctx context.Context, n int, maxWait time.Duration) error {
	return waitFor(ctx, maxWait, fmt.Sprintf("%d answers of the client", n), func() bool {
		return l.Total().Requests >= n
	})
}

// run runs the load until ctx ends.
func (l *reqLoad[C]) run(ctx context.Context) {
	var wg sync.WaitGroup
	for i := range max(l.conns, 1) {
		wg.Go(func() { l.conn(ctx, i) })
	}
	wg.Wait()
}

// conn is the loop of connection i.
func (l *reqLoad[C]) conn(ctx context.Context, i int) {
	var c C
	open := false
	defer func() {
		if open {
			c.Close()
		}
	}()
	var last time.Time
	id := 0
	tick := time.NewTicker(max(l.every, time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if !open {
			var err error
			if c, err = l.dial(ctx); err != nil {
				l.record(func(s *resp.Stats) { s.Errors++; s.LastErr = err })
				continue
			}
			open = true
			l.record(func(s *resp.Stats) { s.Connects++ })
		}
		id++
		err := l.request(c, i, id)
		now := time.Now()
		if !last.IsZero() {
			gap := now.Sub(last)
			l.record(func(s *resp.Stats) { s.MaxGap = max(s.MaxGap, gap) })
		}
		last = now
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			l.record(func(s *resp.Stats) { s.Errors++; s.LastErr = err })
			c.Close()
			open = false
			continue
		}
		l.mu.Lock()
		l.window.Requests++
		l.ok++
		l.mu.Unlock()
	}
}

// startLoad runs load's requests on w until w stops (stopLoad).
func (w *workload) startLoad(ctx context.Context, load interface {
	clientLoad
	run(context.Context)
}) {
	lctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		load.run(lctx)
	}()
	w.load = load
	w.stopLoad = func() {
		cancel()
		<-done
	}
}

// steady waits for the client's first 100 answers, and starts the window
// of what it sees from then: the start is not the steady state.
func (w *workload) steady(ctx context.Context) error {
	if err := w.load.WaitRequests(ctx, 100, 10*time.Second); err != nil {
		return err
	}
	w.load.Window()
	return nil
}
