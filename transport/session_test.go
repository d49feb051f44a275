package transport

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// exchange runs a short conversation over a session pair: a control stream
// with Hello both ways, two page streams and a bulk stream, each carrying
// a message the other end checks.
func exchange(t *testing.T, client, server *Session) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	ctl, err := client.OpenStream(KindControl)
	if err != nil {
		t.Fatalf("open control: %v", err)
	}
	hello := &Hello{Version: 1, SessionID: client.ID(), Role: RoleSource, PID: 4242, Features: []string{"uffd-wp", "s2"}}
	if err := WriteMsg(ctl, hello); err != nil {
		t.Fatalf("WriteMsg: %v", err)
	}
	kind, sctl, err := server.AcceptStream(ctx)
	if err != nil || kind != KindControl {
		t.Fatalf("AcceptStream: kind %v, err %v; want control", kind, err)
	}
	m, err := ReadMsg(sctl)
	if err != nil {
		t.Fatalf("ReadMsg: %v", err)
	}
	if h, ok := m.(*Hello); !ok || h.PID != 4242 || h.SessionID != server.ID() || h.Role != RoleSource {
		t.Fatalf("server read %#v", m)
	}
	if err := WriteMsg(sctl, &Hello{Version: 1, SessionID: server.ID(), Role: RoleTarget}); err != nil {
		t.Fatal(err)
	}
	if m, err := ReadMsg(ctl); err != nil || m.(*Hello).Role != RoleTarget {
		t.Fatalf("client read %#v, %v", m, err)
	}

	kinds := []StreamKind{KindPages, KindPages, KindBulk}
	for i, k := range kinds {
		c, err := client.OpenStream(k)
		if err != nil {
			t.Fatalf("open %v: %v", k, err)
		}
		go func() {
			c.Write([]byte{byte(i)})
			c.Close()
		}()
	}
	for range kinds {
		k, s, err := server.AcceptStream(ctx)
		if err != nil {
			t.Fatalf("AcceptStream: %v", err)
		}
		b, err := readAll(s)
		if err != nil || len(b) != 1 || kinds[b[0]] != k {
			t.Fatalf("stream of kind %v carried %v, %v", k, b, err)
		}
		s.Close()
	}
	ctl.Close()
	sctl.Close()
}

func TestModes(t *testing.T) {
	ca := newPKI(t, "test CA")
	serverCert := ca.issue(t, "server", "127.0.0.1", "localhost")
	clientCert := ca.issue(t, "client", "source.example")
	withSecret := func(c Config) Config { c.Secret = testSecret; return c }
	for _, tc := range []struct {
		name     string
		lcfg     Config
		dcfg     Config
		mode     AuthMode
		insecure bool
	}{
		{"secret", secretConfig(), secretConfig(), AuthSecret, false},
		{"certificates", serverCert, clientCert, AuthCert, false},
		{"certificates+secret", withSecret(serverCert), withSecret(clientCert), AuthCert | AuthSecret, false},
		{"insecure", Config{Insecure: true}, Config{Insecure: true}, AuthNone, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkGoroutines(t)
			var llog, dlog logBuffer
			tc.lcfg.Logger = slog.New(&llog)
			tc.dcfg.Logger = slog.New(&dlog)
			client, server := pair(t, tc.lcfg, tc.dcfg)
			if client.ID() != server.ID() || !ValidSessionID(client.ID()) {
				t.Errorf("session IDs %q and %q", client.ID(), server.ID())
			}
			if client.Auth() != tc.mode || server.Auth() != tc.mode {
				t.Errorf("Auth: client %v, server %v; want %v", client.Auth(), server.Auth(), tc.mode)
			}
			if !client.Dialer() || server.Dialer() {
				t.Errorf("Dialer: client %v, server %v", client.Dialer(), server.Dialer())
			}
			if client.Peer() == nil || server.Peer() == nil {
				t.Errorf("no peer address")
			}
			if tc.mode&AuthCert != 0 {
				if pc := server.ConnectionState().PeerCertificates; len(pc) == 0 || pc[0].Subject.CommonName != "client" {
					t.Errorf("server sees peer certificates %v", pc)
				}
			}
			warned := len(llog.warnings()) > 0 && len(dlog.warnings()) > 0
			if warned != tc.insecure {
				t.Errorf("warnings: listener %q, dialer %q; insecure %v", llog.warnings(), dlog.warnings(), tc.insecure)
			}
			exchange(t, client, server)
			client.Close()
			select {
			case <-server.Done():
			case <-time.After(5 * time.Second):
				t.Fatal("server session still open 5 s after the client closed")
			}
			if !errors.Is(client.Err(), ErrSessionClosed) || !errors.Is(server.Err(), ErrPeerGone) {
				t.Errorf("Err: client %v, server %v", client.Err(), server.Err())
			}
		})
	}
}

func TestSessionIDChosenByDialer(t *testing.T) {
	checkGoroutines(t)
	id := NewSessionID()
	d := secretConfig()
	d.SessionID = id
	client, server := pair(t, secretConfig(), d)
	if client.ID() != id || server.ID() != id {
		t.Fatalf("IDs %q, %q; want %q", client.ID(), server.ID(), id)
	}
	d.SessionID = "not-hex"
	if _, err := Dial(context.Background(), "127.0.0.1:1", d); !errors.Is(err, ErrConfig) {
		t.Fatalf("bad session ID: %v, want ErrConfig", err)
	}
}

// TestParallelPages sends 256 MiB over four page streams at once and checks
// every byte.
func TestParallelPages(t *testing.T) {
	checkGoroutines(t)
	client, server := pair(t, secretConfig(), secretConfig())
	const streams = 4
	const perStream = 64 << 20
	start := time.Now()
	sent, got, err := transfer(client, server, streams, perStream, nil)
	if err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(start)
	for i := range streams {
		if sent[i] != got[i] {
			t.Errorf("stream %d: sent CRC %#08x, received %#08x", i, sent[i], got[i])
		}
	}
	t.Logf("%d MiB over %d streams in %v: %.0f MB/s", streams*perStream>>20, streams, elapsed, float64(streams*perStream)/elapsed.Seconds()/1e6)
}

// transfer sends n bytes of pseudo-random data on each of streams page
// streams in parallel and returns the CRC32C of what was sent and received
// per stream. With a nil pattern, the data is generated as it is sent;
// else each stream sends pattern (a multiple of 1 MiB) over and over,
// starting at a different offset, which keeps the generator's cost out of
// a benchmark.
func transfer(client, server *Session, streams, n int, pattern []byte) (sent, got []uint32, err error) {
	sent = make([]uint32, streams)
	got = make([]uint32, streams)
	var wg sync.WaitGroup
	errs := make(chan error, 2*streams)
	for i := range streams {
		c, err := client.OpenStream(KindPages)
		if err != nil {
			return nil, nil, err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			var hdr [4]byte
			binary.LittleEndian.PutUint32(hdr[:], uint32(i))
			if _, err := c.Write(hdr[:]); err != nil {
				errs <- err
				return
			}
			r := rng(i + 1)
			buf := make([]byte, 1<<20)
			crc := uint32(0)
			for left, off := n, i<<20; left > 0; left -= len(buf) {
				b := buf[:min(left, len(buf))]
				if pattern == nil {
					r.fill(b)
				} else {
					off %= len(pattern)
					b = pattern[off : off+len(b)]
					off += len(b)
				}
				crc = crc32.Update(crc, castagnoli, b)
				if _, err := c.Write(b); err != nil {
					errs <- err
					return
				}
			}
			sent[i] = crc
		}()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for range streams {
		kind, s, err := server.AcceptStream(ctx)
		if err != nil {
			return nil, nil, err
		}
		if kind != KindPages {
			return nil, nil, errors.New("stream of the wrong kind")
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer s.Close()
			var hdr [4]byte
			if _, err := io.ReadFull(s, hdr[:]); err != nil {
				errs <- err
				return
			}
			i := binary.LittleEndian.Uint32(hdr[:])
			buf := make([]byte, 1<<20)
			crc, total := uint32(0), 0
			for {
				k, err := s.Read(buf)
				crc = crc32.Update(crc, castagnoli, buf[:k])
				total += k
				if err == io.EOF {
					break
				}
				if err != nil {
					errs <- err
					return
				}
			}
			if total != n {
				errs <- errors.New("short stream")
				return
			}
			got[i] = crc
		}()
	}
	wg.Wait()
	close(errs)
	return sent, got, <-errs
}

// BenchmarkStreams measures throughput over loopback with TLS: four page
// streams in parallel, 64 MiB each per iteration, with the default stream
// window (16 MiB) and with yamux's own default (256 KiB) for comparison.
//
//	go test -run '^$' -bench Streams -benchtime 5x ./transport
func BenchmarkStreams(b *testing.B) {
	pattern := make([]byte, 16<<20)
	r := rng(1)
	r.fill(pattern)
	for _, window := range []uint32{DefaultStreamWindow, 256 << 10} {
		b.Run(fmt.Sprintf("window=%dKiB", window>>10), func(b *testing.B) {
			cfg := secretConfig()
			cfg.StreamWindow = window
			client, server := pair(b, cfg, cfg)
			const streams = 4
			const perStream = 64 << 20
			b.SetBytes(streams * perStream)
			b.ResetTimer()
			start := time.Now()
			for range b.N {
				sent, got, err := transfer(client, server, streams, perStream, pattern)
				if err != nil {
					b.Fatal(err)
				}
				if !slices.Equal(sent, got) {
					b.Fatalf("checksums: sent %x, received %x", sent, got)
				}
			}
			b.ReportMetric(float64(b.N*streams*perStream)/time.Since(start).Seconds()/1e6, "MB/s")
		})
	}
}

// BenchmarkStreamsRTT is BenchmarkStreams over a link with a 10 ms RTT
// (a delaying proxy): there a stream carries at most window/RTT, which is
// why the stream window is 16 MiB and not yamux's 256 KiB.
//
//	go test -run '^$' -bench StreamsRTT -benchtime 3x ./transport
func BenchmarkStreamsRTT(b *testing.B) {
	pattern := make([]byte, 16<<20)
	r := rng(1)
	r.fill(pattern)
	for _, window := range []uint32{DefaultStreamWindow, 256 << 10} {
		b.Run(fmt.Sprintf("window=%dKiB", window>>10), func(b *testing.B) {
			cfg := secretConfig()
			cfg.StreamWindow = window
			l := listen(b, cfg)
			p := startProxy(b, l.Addr().String(), nil, 5*time.Millisecond)
			client, cerr, server, serr := connect(b, l, p.addr(), cfg)
			if cerr != nil || serr != nil {
				b.Fatal(cerr, serr)
			}
			const streams = 4
			const perStream = 16 << 20
			b.SetBytes(streams * perStream)
			b.ResetTimer()
			start := time.Now()
			for range b.N {
				sent, got, err := transfer(client, server, streams, perStream, pattern)
				if err != nil {
					b.Fatal(err)
				}
				if !slices.Equal(sent, got) {
					b.Fatalf("checksums: sent %x, received %x", sent, got)
				}
			}
			b.ReportMetric(float64(b.N*streams*perStream)/time.Since(start).Seconds()/1e6, "MB/s")
		})
	}
}

// TestPeerDisappears cuts the connection in the middle of a stream: reads
// and writes fail promptly with ErrPeerGone, never io.EOF, and both
// sessions end.
func TestPeerDisappears(t *testing.T) {
	for _, how := range []string{"connection reset", "peer closes the session"} {
		t.Run(how, func(t *testing.T) {
			checkGoroutines(t)
			l := listen(t, secretConfig())
			p := newProxy(t, l.Addr().String())
			client, cerr, server, serr := connect(t, l, p.addr(), secretConfig())
			if cerr != nil || serr != nil {
				t.Fatal(cerr, serr)
			}
			c, err := client.OpenStream(KindPages)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.Write(make([]byte, 1<<20)); err != nil {
				t.Fatal(err)
			}
			_, s, err := server.AcceptStream(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(s, make([]byte, 1<<20)); err != nil {
				t.Fatal(err)
			}

			// The client keeps writing, the server keeps reading.
			writeErr := make(chan error, 1)
			go func() {
				buf := make([]byte, 64<<10)
				for {
					if _, err := c.Write(buf); err != nil {
						writeErr <- err
						return
					}
				}
			}()
			readErr := make(chan error, 1)
			go func() {
				_, err := io.Copy(io.Discard, s)
				if err == nil {
					err = io.EOF // io.Copy turns io.EOF into nil
				}
				readErr <- err
			}()
			time.Sleep(100 * time.Millisecond)
			cut := time.Now()
			if how == "connection reset" {
				p.kill()
			} else {
				server.Close()
			}
			for name, ch := range map[string]chan error{"client write": writeErr, "server read": readErr} {
				select {
				case err := <-ch:
					if err == io.EOF {
						t.Errorf("%s: io.EOF, want an error", name)
					}
					if how == "connection reset" && !errors.Is(err, ErrPeerGone) {
						t.Errorf("%s: %v, want ErrPeerGone", name, err)
					}
				case <-time.After(3 * time.Second):
					t.Fatalf("%s still blocked 3 s after the cut", name)
				}
			}
			for name, sess := range map[string]*Session{"client": client, "server": server} {
				select {
				case <-sess.Done():
				case <-time.After(3 * time.Second):
					t.Fatalf("%s session still open 3 s after the cut", name)
				}
			}
			if !errors.Is(client.Err(), ErrPeerGone) {
				t.Errorf("client Err %v, want ErrPeerGone", client.Err())
			}
			t.Logf("detected after %v; client: %v", time.Since(cut), client.Err())
			if _, err := c.Read(make([]byte, 1)); err == nil || err == io.EOF {
				t.Errorf("read after the session ended: %v", err)
			}
			if _, err := client.OpenStream(KindBulk); !errors.Is(err, ErrPeerGone) {
				t.Errorf("OpenStream after the session ended: %v", err)
			}
			if _, _, err := client.AcceptStream(context.Background()); !errors.Is(err, ErrPeerGone) {
				t.Errorf("AcceptStream after the session ended: %v", err)
			}
		})
	}
}

// TestSilentPeer freezes the network between the ends (bytes stop moving,
// connections stay open), once while idle and once in the middle of a
// transfer, with the default keepalive settings: both ends must notice
// within seconds.
func TestSilentPeer(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for keepalives to time out")
	}
	checkGoroutines(t)
	type run struct {
		name           string
		client, server *Session
		p              *proxy
	}
	var runs []*run
	for _, name := range []string{"idle", "busy"} {
		l := listen(t, secretConfig())
		p := newProxy(t, l.Addr().String())
		client, cerr, server, serr := connect(t, l, p.addr(), secretConfig())
		if cerr != nil || serr != nil {
			t.Fatal(cerr, serr)
		}
		runs = append(runs, &run{name, client, server, p})
	}
	busy := runs[1]
	c, err := busy.client.OpenStream(KindPages)
	if err != nil {
		t.Fatal(err)
	}
	_, s, err := busy.server.AcceptStream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	go io.Copy(io.Discard, s)
	writeErr := make(chan error, 1)
	go func() {
		buf := make([]byte, 1<<20)
		for {
			if _, err := c.Write(buf); err != nil {
				writeErr <- err
				return
			}
		}
	}()
	time.Sleep(200 * time.Millisecond)

	start := time.Now()
	for _, r := range runs {
		r.p.freeze()
	}
	const limit = 15 * time.Second
	for _, r := range runs {
		for side, sess := range map[string]*Session{"client": r.client, "server": r.server} {
			select {
			case <-sess.Done():
				t.Logf("%s %s: ended after %v: %v", r.name, side, time.Since(start).Round(time.Millisecond), sess.Err())
				if !errors.Is(sess.Err(), ErrPeerTimeout) && !errors.Is(sess.Err(), ErrPeerGone) {
					t.Errorf("%s %s: Err %v, want ErrPeerTimeout", r.name, side, sess.Err())
				}
			case <-time.After(limit - time.Since(start)):
				t.Fatalf("%s %s: session still open %v after the peer went silent", r.name, side, limit)
			}
		}
	}
	select {
	case err := <-writeErr:
		if err == nil || err == io.EOF {
			t.Errorf("write on a dead session: %v", err)
		}
	case <-time.After(3 * time.Second):
		t.Errorf("write still blocked after the session ended")
	}
	for _, r := range runs {
		r.p.kill()
	}
}

// TestStreamProtocol plays a peer that breaks the stream protocol after
// authenticating: the session ends with ErrProtocol on the receiving side.
func TestStreamProtocol(t *testing.T) {
	for _, tc := range []struct {
		name string
		send func(t *testing.T, c *Session)
	}{
		{"unknown kind", func(t *testing.T, c *Session) {
			y, err := c.mux.OpenStream()
			if err != nil {
				t.Fatal(err)
			}
			y.Write([]byte{9})
		}},
		{"kind zero", func(t *testing.T, c *Session) {
			y, _ := c.mux.OpenStream()
			y.Write([]byte{0})
		}},
		{"second control stream", func(t *testing.T, c *Session) {
			for range 2 {
				y, _ := c.mux.OpenStream()
				y.Write([]byte{byte(KindControl)})
			}
		}},
		{"no kind byte", func(t *testing.T, c *Session) {
			c.mux.OpenStream()
		}},
		{"closed before its kind", func(t *testing.T, c *Session) {
			y, _ := c.mux.OpenStream()
			y.Close()
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkGoroutines(t)
			lcfg := secretConfig()
			lcfg.HandshakeTimeout = 500 * time.Millisecond // the wait for a kind byte
			client, server := pair(t, lcfg, secretConfig())
			tc.send(t, client)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			var err error
			for err == nil {
				var s net.Conn
				_, s, err = server.AcceptStream(ctx)
				if s != nil {
					s.Close() // the first control stream
				}
			}
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("AcceptStream: %v, want ErrProtocol", err)
			}
			t.Logf("server: %v", err)
			select {
			case <-client.Done():
			case <-time.After(5 * time.Second):
				t.Fatal("the offending client's session is still open")
			}
		})
	}
}

func TestStreamMisuse(t *testing.T) {
	checkGoroutines(t)
	client, server := pair(t, secretConfig(), secretConfig())
	if _, err := client.OpenStream(StreamKind(7)); err == nil {
		t.Error("opened a stream of kind 7")
	}
	if _, err := client.OpenStream(KindControl); err != nil {
		t.Fatal(err)
	}
	if _, err := client.OpenStream(KindControl); err == nil {
		t.Error("opened a second control stream")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if kind, _, err := server.AcceptStream(ctx); err != nil || kind != KindControl {
		t.Fatalf("AcceptStream: %v %v", kind, err)
	}
	if _, err := server.OpenStream(KindControl); err == nil {
		t.Error("the listener opened a control stream next to the dialer's")
	}
}

func TestStreamDeadline(t *testing.T) {
	checkGoroutines(t)
	client, server := pair(t, secretConfig(), secretConfig())
	c, err := client.OpenStream(KindBulk)
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, err = c.Read(make([]byte, 1))
	var ne net.Error
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read past the deadline: %v", err)
	}
	if client.Err() != nil || server.Err() != nil {
		t.Fatal("a deadline ended the session")
	}
	// The stream still works.
	c.SetReadDeadline(time.Time{})
	_, s, err := server.AcceptStream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	s.Write([]byte("x"))
	if _, err := c.Read(make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
}

func TestAcceptStreamContext(t *testing.T) {
	checkGoroutines(t)
	_, server := pair(t, secretConfig(), secretConfig())
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, _, err := server.AcceptStream(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("AcceptStream: %v", err)
	}
}

// TestConcurrentControlWrites: large control messages written from two
// goroutines at once arrive whole, one after the other.
func TestConcurrentControlWrites(t *testing.T) {
	checkGoroutines(t)
	client, server := pair(t, secretConfig(), secretConfig())
	c, err := client.OpenStream(KindControl)
	if err != nil {
		t.Fatal(err)
	}
	body := func(b byte) json.RawMessage {
		return json.RawMessage(`"` + strings.Repeat(string(rune(b)), 1<<20) + `"`)
	}
	var wg sync.WaitGroup
	for _, b := range []byte{'a', 'b'} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 5 {
				if err := WriteMsg(c, &State{Body: body(b)}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	_, s, err := server.AcceptStream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// Let both writers block on a full window, in the middle of a frame.
	time.Sleep(100 * time.Millisecond)
	for i := range 10 {
		m, err := ReadMsg(s)
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		st := m.(*State)
		if !bytes.Equal(st.Body, body(st.Body[1])) {
			t.Fatalf("message %d is mixed", i)
		}
	}
	wg.Wait()
}
