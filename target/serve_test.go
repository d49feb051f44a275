package target

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/procmig/migrate/internal/handoff"
	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/transport"
)

var serveSecret = []byte("60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752")

// startServe runs Serve on loopback with a shared secret until the test
// ends; it returns the service's address.
func startServe(t *testing.T, opts ServeOptions) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	addrc := make(chan string, 1)
	done := make(chan error, 1)
	opts.Listen = "127.0.0.1:0"
	if opts.Transport.Secret == nil {
		opts.Transport.Secret = serveSecret
	}
	opts.Ready = func(a net.Addr) { addrc <- a.String() }
	go func() { done <- Serve(ctx, opts) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	select {
	case a := <-addrc:
		return a
	case err := <-done:
		t.Fatalf("Serve: %v", err)
	}
	return ""
}

// queryOutcome asks the service at addr, on a new authenticated session,
// what became of a session it never saw.
func queryOutcome(t *testing.T, addr string) (transport.Outcome, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	sess, err := transport.Dial(ctx, addr, transport.Config{Secret: serveSecret})
	if err != nil {
		return 0, err
	}
	defer sess.Close()
	st, err := sess.OpenStream(transport.KindControl)
	if err != nil {
		return 0, err
	}
	c := transport.NewControl(st)
	defer c.Close()
	id := transport.NewSessionID()
	if err := c.Send(&transport.StatusQuery{SessionID: id}); err != nil {
		return 0, err
	}
	m, err := c.Recv(ctx)
	if err != nil {
		return 0, err
	}
	if a, ok := m.(*transport.Abort); ok {
		return 0, &peerAbort{a.Reason}
	}
	r, ok := m.(*transport.StatusReply)
	if !ok || r.SessionID != id {
		return 0, fmt.Errorf("answer %#v", m)
	}
	return r.Outcome, nil
}

// resources counts this process's goroutines and open fds.
func resources(t testing.TB) (goroutines, fds int) {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	return runtime.NumGoroutine(), len(ents)
}

// checkResources fails the test if, once it and its cleanups are done, its
// goroutines and fds do not settle back to what they were before.
// Register it first, so that its cleanup runs last.
func checkResources(t *testing.T) {
	t.Helper()
	// The runtime's network poller opens its fds (an epoll fd and an
	// eventfd, kept for the life of the process) at the first use of the
	// network: not the test's.
	if ln, err := net.Listen("tcp", "127.0.0.1:0"); err == nil {
		ln.Close()
	}
	g0, f0 := resources(t)
	t.Cleanup(func() {
		deadline := time.Now().Add(15 * time.Second)
		for {
			g, f := resources(t)
			if g <= g0 && f <= f0 {
				return
			}
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				buf = buf[:runtime.Stack(buf, true)]
				t.Errorf("goroutines %d -> %d, fds %d -> %d after the test:\n%s", g0, g, f0, f, buf)
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}

// TestServeSilentFlood: 300 connections that send nothing, from the
// address a real source dials from, do not keep its session out; the
// service logs them at a bounded rate and keeps no goroutine or fd of
// them.
func TestServeSilentFlood(t *testing.T) {
	checkResources(t)
	logs := &countHandler{}
	addr := startServe(t, ServeOptions{Logger: slog.New(logs)})
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range 300 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	out, err := queryOutcome(t, addr)
	if err != nil {
		t.Fatalf("a real session behind 300 silent connections: %v", err)
	}
	if out != transport.OutcomeUnknown {
		t.Errorf("outcome of an unknown session: %v", out)
	}
	if n := logs.count(slog.LevelInfo); n > 20 {
		t.Errorf("%d log records at Info or above, want a bounded few", n)
	}
}

// countHandler is a slog handler that counts records by level.
type countHandler struct {
	mu sync.Mutex
	n  map[slog.Level]int
}

func (h *countHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.n == nil {
		h.n = map[slog.Level]int{}
	}
	h.n[r.Level]++
	return nil
}
func (h *countHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *countHandler) WithGroup(string) slog.Handler      { return h }

// count is the number of records at level or above.
func (h *countHandler) count(level slog.Level) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for l, c := range h.n {
		if l >= level {
			n += c
		}
	}
	return n
}

// TestServeMaxSessions: a session beyond MaxSessions is told the service is
// busy (an Abort answers its first message); once a slot is free the next
// is served; nothing is left behind.
func TestServeMaxSessions(t *testing.T) {
	checkResources(t)
	addr := startServe(t, ServeOptions{MaxSessions: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// The first session holds the only slot: a migration the service
	// answered (so it is being served), whose layout never comes.
	hold, err := transport.Dial(ctx, addr, transport.Config{Secret: serveSecret})
	if err != nil {
		t.Fatal(err)
	}
	st, err := hold.OpenStream(transport.KindControl)
	if err != nil {
		t.Fatal(err)
	}
	c := transport.NewControl(st)
	if err := c.Send(&transport.Hello{Version: handoff.Version, SessionID: hold.ID(), Role: transport.RoleSource, PID: testutil.FreePID(t)}); err != nil {
		t.Fatal(err)
	}
	if m, err := c.Recv(ctx); err != nil {
		t.Fatal(err)
	} else if _, ok := m.(*transport.Hello); !ok {
		t.Fatalf("the service answered %v to a hello", m.MsgType())
	}
	_, err = queryOutcome(t, addr)
	var pe *peerAbort
	if !errors.As(err, &pe) {
		t.Fatalf("second session: %v, want an abort", err)
	}
	t.Logf("second session: %v", err)
	st.Close()
	hold.Close()
	waitFor(t, 10*time.Second, "a free slot", func() bool {
		_, err = queryOutcome(t, addr)
		return err == nil
	})
}

// waitFor polls try until it returns true or maxWait passes.
func waitFor(t testing.TB, maxWait time.Duration, what string, try func() bool) {
	t.Helper()
	deadline := time.Now().Add(maxWait)
	for !try() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", maxWait, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// peerAbort is an Abort the service answered with.
type peerAbort struct{ reason string }

func (e *peerAbort) Error() string { return "aborted: " + e.reason }
