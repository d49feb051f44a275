package transport

import (
	"context"
	"encoding/hex"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"runtime"
	"testing"
	"time"
)

// openFDs counts this process's open file descriptors.
func openFDs(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	return len(ents)
}

// checkFDs fails the test if, once it and its cleanups are done, the number
// of open fds does not settle back to what it was when it started.
func checkFDs(t testing.TB) {
	t.Helper()
	warmNetpoll(t)
	before := openFDs(t)
	t.Cleanup(func() {
		deadline := time.Now().Add(10 * time.Second)
		for openFDs(t) > before {
			if time.Now().After(deadline) {
				t.Errorf("fds: %d before the test, %d after", before, openFDs(t))
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}

// warmNetpoll makes the runtime open its network poller's fds (an epoll
// fd and an eventfd, kept for the life of the process), so that the first
// test to use the network is not charged with them.
func warmNetpoll(t testing.TB) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
}

// acceptSession accepts until a session comes (handshake errors are
// skipped) or ctx ends.
func acceptSession(ctx context.Context, l *Listener) <-chan accepted {
	ch := make(chan accepted, 1)
	go func() {
		for {
			s, err := l.Accept(ctx)
			if s != nil || ctx.Err() != nil {
				ch <- accepted{s, err}
				return
			}
		}
	}()
	return ch
}

// TestSilentFlood: hundreds of connections from the real source's own
// address that send nothing (or the first bytes of a TLS record, then
// nothing), opened before it dials, do not keep a real session out; the
// refusals are logged at a bounded rate; and once they are gone the
// listener holds no goroutine or fd more than before.
func TestSilentFlood(t *testing.T) {
	for _, tc := range []struct {
		name  string
		first []byte
	}{
		{"silent", nil},
		{"slow", []byte{0x16, 0x03}}, // a TLS handshake record, cut short
	} {
		t.Run(tc.name, func(t *testing.T) { testFlood(t, tc.first) })
	}
}

func testFlood(t *testing.T, first []byte) {
	checkGoroutines(t)
	checkFDs(t)
	const silent = 300
	logs := &logBuffer{}
	cfg := secretConfig()
	cfg.Logger = slog.New(logs)
	l := listen(t, cfg)
	addr := l.Addr().String()

	conns := make([]net.Conn, 0, silent)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range silent {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("silent connection %d: %v", len(conns), err)
		}
		conns = append(conns, c)
		if first != nil {
			c.Write(first)
		}
	}
	// Every silent connection has been taken from the accept queue (and
	// the oldest evicted) before the real one dials.
	waitFor(t, 10*time.Second, "the listener to accept the silent connections", func() bool {
		return l.accepted.Load() >= silent
	})

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ch := acceptSession(ctx, l)
	start := time.Now()
	client, err := Dial(ctx, addr, secretConfig())
	if err != nil {
		t.Fatalf("the real dialer, behind %d silent connections: %v", silent, err)
	}
	defer client.Close()
	a := <-ch
	if a.sess == nil {
		t.Fatalf("Accept: %v", a.err)
	}
	defer a.sess.Close()
	t.Logf("real session through %d silent connections in %v (%d goroutines)", silent, time.Since(start), runtime.NumGoroutine())

	logs.mu.Lock()
	n := len(logs.records)
	logs.mu.Unlock()
	if n > 10 {
		t.Errorf("%d log records for %d refused connections, want a bounded few", n, silent)
	}
}

// TestFloodDuringDial: connections keep coming, as fast as they can, while
// the real source dials (each sends nothing, or the first bytes of a TLS
// record, then stalls; 300 are kept open, the oldest closed): the real
// handshake, which gets further, still gets through.
func TestFloodDuringDial(t *testing.T) {
	for _, tc := range []struct {
		name  string
		first []byte
	}{
		{"silent", nil},
		{"slow", []byte{0x16, 0x03}},
		{"short hello", []byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01}}, // a record of 512 bytes, 1 sent
	} {
		t.Run(tc.name, func(t *testing.T) { testFloodDuringDial(t, tc.first) })
	}
}

func testFloodDuringDial(t *testing.T, first []byte) {
	checkGoroutines(t)
	checkFDs(t)
	l := listen(t, secretConfig())
	stop := startFlood(t, l.Addr().String(), first)
	defer stop()
	waitFor(t, 10*time.Second, "the flood to fill the handshake slots", func() bool {
		return l.accepted.Load() >= 2*DefaultMaxHandshakes
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ch := acceptSession(ctx, l)
	before := l.accepted.Load()
	client, err := Dial(ctx, l.Addr().String(), secretConfig())
	if err != nil {
		t.Fatalf("the real dialer, during the flood: %v", err)
	}
	defer client.Close()
	a := <-ch
	if a.sess == nil {
		t.Fatalf("Accept: %v", a.err)
	}
	defer a.sess.Close()
	t.Logf("real session while %d connections came", l.accepted.Load()-before)
}

// The flood comes from another process, as it would: this test binary,
// run with these variables set.
const (
	floodAddrEnv  = "MIGRATE_TEST_FLOOD_ADDR"
	floodFirstEnv = "MIGRATE_TEST_FLOOD_FIRST"
)

func TestMain(m *testing.M) {
	if addr := os.Getenv(floodAddrEnv); addr != "" {
		first, _ := hex.DecodeString(os.Getenv(floodFirstEnv))
		flood(addr, first)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// startFlood starts a process that opens connections to addr as fast as
// it can, each sending first and then nothing, 300 kept open; stop ends it.
func startFlood(t *testing.T, addr string, first []byte) (stop func()) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), floodAddrEnv+"="+addr, floodFirstEnv+"="+hex.EncodeToString(first))
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return func() {
		in.Close() // the flood stops at the end of its stdin
		cmd.Wait()
	}
}

// flood is the flooding process's work, until its stdin ends.
func flood(addr string, first []byte) {
	stop := make(chan struct{})
	go func() {
		io.Copy(io.Discard, os.Stdin)
		close(stop)
	}()
	var conns []net.Conn
	for {
		select {
		case <-stop:
			return
		default:
		}
		c, err := net.Dial("tcp", addr)
		if err != nil {
			continue
		}
		if first != nil {
			c.Write(first)
		}
		conns = append(conns, c)
		if len(conns) > 300 {
			conns[0].Close()
			conns = conns[1:]
		}
	}
}
