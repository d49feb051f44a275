package transport

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"
)

// checkGoroutines fails the test if, once it and its cleanups are done, the
// number of goroutines does not settle back to what it was when it started.
// Register it first, so that its cleanup runs last.
func checkGoroutines(t testing.TB) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(10 * time.Second)
		for runtime.NumGoroutine() > before {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				n := runtime.Stack(buf, true)
				t.Errorf("goroutines: %d before the test, %d after:\n%s", before, runtime.NumGoroutine(), buf[:n])
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
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

var testSecret = []byte("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08")

func secretConfig() Config { return Config{Secret: testSecret} }

// logBuffer is a slog handler that keeps records, for tests that check
// what was logged.
type logBuffer struct {
	mu      sync.Mutex
	records []slog.Record
}

func (l *logBuffer) Enabled(context.Context, slog.Level) bool { return true }
func (l *logBuffer) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	l.records = append(l.records, r)
	l.mu.Unlock()
	return nil
}
func (l *logBuffer) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logBuffer) WithGroup(string) slog.Handler      { return l }

// warnings returns the messages logged at Warn or above.
func (l *logBuffer) warnings() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, r := range l.records {
		if r.Level >= slog.LevelWarn {
			out = append(out, r.Message)
		}
	}
	return out
}

// listen starts a listener on loopback and closes it at cleanup.
func listen(t testing.TB, cfg Config) *Listener {
	t.Helper()
	l, err := Listen("127.0.0.1:0", cfg)
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// accepted is the outcome of one Accept.
type accepted struct {
	sess *Session
	err  error
}

func acceptAsync(l *Listener) <-chan accepted {
	ch := make(chan accepted, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		s, err := l.Accept(ctx)
		ch <- accepted{s, err}
	}()
	return ch
}

// connect dials addr and accepts on l; both results are returned, and
// sessions are closed at cleanup.
func connect(t testing.TB, l *Listener, addr string, dcfg Config) (client *Session, clientErr error, server *Session, serverErr error) {
	t.Helper()
	ch := acceptAsync(l)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	client, clientErr = Dial(ctx, addr, dcfg)
	a := <-ch
	if client != nil {
		t.Cleanup(func() { client.Close() })
	}
	if a.sess != nil {
		t.Cleanup(func() { a.sess.Close() })
	}
	return client, clientErr, a.sess, a.err
}

// pair connects a client and a server session or fails the test.
func pair(t testing.TB, lcfg, dcfg Config) (client, server *Session) {
	t.Helper()
	l := listen(t, lcfg)
	c, cerr, s, serr := connect(t, l, l.Addr().String(), dcfg)
	if cerr != nil || serr != nil {
		t.Fatalf("connect: dial: %v; accept: %v", cerr, serr)
	}
	return c, s
}

// authReason returns the reason of the *AuthError in err, or 0.
func authReason(err error) AuthReason {
	var ae *AuthError
	if errors.As(err, &ae) {
		return ae.Reason
	}
	return 0
}

// pki is a test CA that issues certificates into a directory.
type pki struct {
	dir    string
	cert   *x509.Certificate
	key    *ecdsa.PrivateKey
	caFile string
}

func newPKI(t testing.TB, name string) *pki {
	t.Helper()
	dir := t.TempDir()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	p := &pki{dir: dir, cert: cert, key: key, caFile: filepath.Join(dir, "ca.pem")}
	writePEM(t, p.caFile, "CERTIFICATE", der)
	return p
}

// issue makes a certificate for the given names (DNS names or IPs), usable
// by servers and clients, and returns a Config using it with this CA.
func (p *pki) issue(t testing.TB, cn string, names ...string) Config {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.cert, &key.PublicKey, p.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile := filepath.Join(p.dir, cn+".pem")
	keyFile := filepath.Join(p.dir, cn+".key")
	writePEM(t, certFile, "CERTIFICATE", der)
	writePEM(t, keyFile, "PRIVATE KEY", kder)
	return Config{CertFile: certFile, KeyFile: keyFile, CAFile: p.caFile}
}

func writePEM(t testing.TB, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// proxy relays TCP connections from its own loopback address to a target.
// It can freeze (stop moving bytes, keeping the connections open, like a
// peer that hangs or a network that drops everything) and kill (close
// every connection at once).
type proxy struct {
	ln     net.Listener
	target string
	// wrap, if set, turns the two legs into something else before relaying
	// (the man in the middle terminates TLS on both).
	wrap func(client, server net.Conn) (net.Conn, net.Conn, error)

	// delay, if set, holds every chunk that long before relaying it (one
	// way), like a long link: the RTT is twice the delay.
	delay time.Duration

	mu     sync.Mutex
	conns  []net.Conn
	frozen bool
	thaw   chan struct{}
	wg     sync.WaitGroup
}

func newProxy(t testing.TB, target string) *proxy { return startProxy(t, target, nil, 0) }

func startProxy(t testing.TB, target string, wrap func(client, server net.Conn) (net.Conn, net.Conn, error), delay time.Duration) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target, wrap: wrap, delay: delay, thaw: make(chan struct{})}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(p.close)
	return p
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			s, err := net.Dial("tcp", p.target)
			if err != nil {
				c.Close()
				return
			}
			p.track(c, s)
			a, b := net.Conn(c), net.Conn(s)
			if p.wrap != nil {
				if a, b, err = p.wrap(c, s); err != nil {
					c.Close()
					s.Close()
					return
				}
			}
			done := make(chan struct{}, 2)
			go func() { p.relay(b, a); done <- struct{}{} }()
			go func() { p.relay(a, b); done <- struct{}{} }()
			<-done
			c.Close()
			s.Close()
			<-done
		}()
	}
}

func (p *proxy) track(cs ...net.Conn) {
	p.mu.Lock()
	p.conns = append(p.conns, cs...)
	p.mu.Unlock()
}

// relay copies src to dst, holding each chunk while the proxy is frozen.
func (p *proxy) relay(dst, src net.Conn) {
	if p.delay > 0 {
		p.relayDelayed(dst, src)
		return
	}
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			frozen, thaw := p.frozen, p.thaw
			p.mu.Unlock()
			if frozen {
				<-thaw
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// relayDelayed copies src to dst, each chunk p.delay after it was read;
// reading goes on meanwhile, so the link holds a delay's worth of bytes in
// flight, as a real one does.
func (p *proxy) relayDelayed(dst, src net.Conn) {
	type chunk struct {
		at time.Time
		b  []byte
	}
	line := make(chan chunk, 1<<14)
	go func() {
		defer close(line)
		for {
			buf := make([]byte, 64<<10)
			n, err := src.Read(buf)
			if n > 0 {
				line <- chunk{time.Now().Add(p.delay), buf[:n]}
			}
			if err != nil {
				return
			}
		}
	}()
	for c := range line {
		time.Sleep(time.Until(c.at))
		if _, err := dst.Write(c.b); err != nil {
			src.Close()
			for range line {
			}
			return
		}
	}
}

// freeze stops the relay: bytes in flight stay where they are, and the
// connections stay open.
func (p *proxy) freeze() {
	p.mu.Lock()
	p.frozen = true
	p.mu.Unlock()
}

// kill closes every connection (with RST) and thaws the relays.
func (p *proxy) kill() {
	p.mu.Lock()
	for _, c := range p.conns {
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
		c.Close()
	}
	p.conns = nil
	if p.frozen {
		p.frozen = false
		close(p.thaw)
		p.thaw = make(chan struct{})
	}
	p.mu.Unlock()
}

func (p *proxy) close() {
	p.ln.Close()
	p.kill()
	p.wg.Wait()
}

// newMITM starts a man in the middle: a proxy that terminates TLS with the
// dialer using its own certificate, opens its own TLS session to the
// listener, and relays the plaintext. It knows no secret.
func newMITM(t testing.TB, target string) *proxy {
	cert, err := ephemeralCert()
	if err != nil {
		t.Fatal(err)
	}
	return startProxy(t, target, func(client, server net.Conn) (net.Conn, net.Conn, error) {
		tc := tls.Server(client, &tls.Config{MinVersion: tls.VersionTLS13, NextProtos: []string{alpn}, Certificates: []tls.Certificate{cert}})
		if err := tc.Handshake(); err != nil {
			return nil, nil, err
		}
		ts := tls.Client(server, &tls.Config{MinVersion: tls.VersionTLS13, NextProtos: []string{alpn}, InsecureSkipVerify: true, Certificates: []tls.Certificate{cert}})
		if err := ts.Handshake(); err != nil {
			return nil, nil, err
		}
		return tc, ts, nil
	}, 0)
}

// rng is xorshift64*: fast, deterministic test data.
type rng uint64

func (r *rng) next() uint64 {
	x := uint64(*r)
	x ^= x >> 12
	x ^= x << 25
	x ^= x >> 27
	*r = rng(x)
	return x * 2685821657736338717
}

func (r *rng) fill(b []byte) {
	for i := 0; i+8 <= len(b); i += 8 {
		v := r.next()
		b[i], b[i+1], b[i+2], b[i+3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
		b[i+4], b[i+5], b[i+6], b[i+7] = byte(v>>32), byte(v>>40), byte(v>>48), byte(v>>56)
	}
}

// readAll reads r to its end (io.EOF) and returns the bytes and the error.
func readAll(r io.Reader) ([]byte, error) {
	var b bytes.Buffer
	_, err := io.Copy(&b, r)
	return b.Bytes(), err
}
