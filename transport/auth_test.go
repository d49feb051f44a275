package transport

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// mustFailAuth checks that both ends failed with an *AuthError for the
// given reasons (0: any reason).
func mustFailAuth(t *testing.T, cerr, serr error, creason, sreason AuthReason) {
	t.Helper()
	for _, side := range []struct {
		name   string
		err    error
		reason AuthReason
	}{{"dialer", cerr, creason}, {"listener", serr, sreason}} {
		if !errors.Is(side.err, ErrAuth) {
			t.Errorf("%s: %v, want ErrAuth", side.name, side.err)
			continue
		}
		var he *HandshakeError
		if !errors.As(side.err, &he) {
			t.Errorf("%s: %T is not a *HandshakeError", side.name, side.err)
		}
		if side.reason != 0 && authReason(side.err) != side.reason {
			t.Errorf("%s: reason %v, want %v", side.name, authReason(side.err), side.reason)
		}
		t.Logf("%s: %v", side.name, side.err)
	}
}

func TestWrongSecret(t *testing.T) {
	checkGoroutines(t)
	l := listen(t, secretConfig())
	d := Config{Secret: []byte("b5bb9d8014a0f9b1d61e21e796d78dccdf1352f23cd32812f4850b878ae4944c")}
	_, cerr, _, serr := connect(t, l, l.Addr().String(), d)
	// The listener proves itself first: the dialer finds the proof bad.
	mustFailAuth(t, cerr, serr, ReasonBadProof, ReasonRejected)

	// The listener goes on serving the right peers.
	_, cerr, _, serr = connect(t, l, l.Addr().String(), secretConfig())
	if cerr != nil || serr != nil {
		t.Fatalf("after a failed attempt: %v, %v", cerr, serr)
	}
}

// TestManInTheMiddle puts a proxy between the ends that terminates TLS on
// both sides with its own certificate and relays the bytes: it knows no
// secret, and the proofs, bound to two different TLS sessions, fail.
func TestManInTheMiddle(t *testing.T) {
	checkGoroutines(t)
	l := listen(t, secretConfig())
	p := newMITM(t, l.Addr().String())
	_, cerr, _, serr := connect(t, l, p.addr(), secretConfig())
	mustFailAuth(t, cerr, serr, ReasonBadProof, ReasonRejected)
}

// fakeListener accepts one TLS connection and runs serve on it; it returns
// its address.
func fakeListener(t *testing.T, serve func(c *tls.Conn)) string {
	t.Helper()
	cert, err := ephemeralCert()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{MinVersion: tls.VersionTLS13, NextProtos: []string{alpn}, Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		serve(c.(*tls.Conn))
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
	return ln.Addr().String()
}

// TestImpostorListener: a listener without the secret (TLS, the migrate
// ALPN, a well-formed reply with a made-up proof) receives no proof from
// the dialer, nothing derived from the secret that it could attack
// offline: the dialer checks the listener's proof first, refuses it, and
// says so with a status byte and zeros.
func TestImpostorListener(t *testing.T) {
	checkGoroutines(t)
	sent := make(chan []byte, 1)
	addr := fakeListener(t, func(c *tls.Conn) {
		var hello [28]byte // the header of every version's hello
		if _, err := io.ReadFull(c, hello[:]); err != nil {
			sent <- nil
			return
		}
		var reply [replySize]byte
		copy(reply[:], authMagic[:])
		reply[8], reply[9] = hello[8], hello[9]
		copy(reply[12:], bytes.Repeat([]byte{0xab}, proofSize))
		c.Write(reply[:])
		// Everything else the dialer sends, until it hangs up.
		rest, _ := io.ReadAll(c)
		sent <- rest
	})
	_, err := Dial(context.Background(), addr, secretConfig())
	if !errors.Is(err, ErrAuth) || authReason(err) != ReasonBadProof {
		t.Fatalf("Dial: %v, want ErrAuth, bad proof", err)
	}
	rest := <-sent
	if len(rest) == 0 || rest[0] != statusProof {
		t.Fatalf("after its hello the dialer sent %x, want status %d first", rest, statusProof)
	}
	if !bytes.Equal(rest[1:], make([]byte, len(rest)-1)) {
		t.Fatalf("the dialer sent %x to an impostor: something derived from the secret", rest)
	}
}

// TestDialerProofChecked plays a dialer without the secret to the end: its
// made-up proof is refused, and no session is made.
func TestDialerProofChecked(t *testing.T) {
	checkGoroutines(t)
	l := listen(t, secretConfig())
	ch := acceptAsync(l)
	c, err := tls.Dial("tcp", l.Addr().String(), &tls.Config{MinVersion: tls.VersionTLS13, NextProtos: []string{alpn}, InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var hello [helloSize]byte
	copy(hello[:], authMagic[:])
	hello[8], hello[9] = authVersion, byte(AuthSecret)
	c.Write(hello[:])
	var reply [replySize]byte
	if _, err := io.ReadFull(c, reply[:]); err != nil {
		t.Fatal(err)
	}
	if reply[10] != statusOK {
		t.Fatalf("reply status %d", reply[10])
	}
	var final [finalSize]byte
	copy(final[1:], bytes.Repeat([]byte{1}, proofSize))
	c.Write(final[:])
	verdict, err := io.ReadAll(c)
	if len(verdict) != 1 || verdict[0] != statusProof {
		t.Fatalf("verdict %x (%v), want %d", verdict, err, statusProof)
	}
	if a := <-ch; !errors.Is(a.err, ErrAuth) || authReason(a.err) != ReasonBadProof {
		t.Fatalf("Accept: %v", a.err)
	}
}

// TestInsecureBothEnds: running without authentication takes an explicit
// Insecure on both ends; one alone is refused on both.
func TestInsecureBothEnds(t *testing.T) {
	checkGoroutines(t)
	insecure := Config{Insecure: true}
	t.Run("insecure dialer, secret listener", func(t *testing.T) {
		l := listen(t, secretConfig())
		_, cerr, _, serr := connect(t, l, l.Addr().String(), insecure)
		mustFailAuth(t, cerr, serr, ReasonModeMismatch, ReasonModeMismatch)
		var ae *AuthError
		if errors.As(cerr, &ae) && (ae.Local != AuthNone || ae.Peer != AuthSecret) {
			t.Errorf("dialer sees modes %v (here) and %v (peer)", ae.Local, ae.Peer)
		}
	})
	t.Run("secret dialer, insecure listener", func(t *testing.T) {
		l := listen(t, insecure)
		_, cerr, _, serr := connect(t, l, l.Addr().String(), secretConfig())
		mustFailAuth(t, cerr, serr, ReasonModeMismatch, ReasonModeMismatch)
	})
	t.Run("no mode chosen", func(t *testing.T) {
		if _, err := Listen("127.0.0.1:0", Config{}); !errors.Is(err, ErrConfig) {
			t.Errorf("Listen: %v, want ErrConfig", err)
		}
		if _, err := Dial(context.Background(), "127.0.0.1:1", Config{}); !errors.Is(err, ErrConfig) {
			t.Errorf("Dial: %v, want ErrConfig", err)
		}
	})
	t.Run("insecure and a secret", func(t *testing.T) {
		c := secretConfig()
		c.Insecure = true
		if _, err := Listen("127.0.0.1:0", c); !errors.Is(err, ErrConfig) {
			t.Errorf("Listen: %v, want ErrConfig", err)
		}
	})
	t.Run("short secret", func(t *testing.T) {
		if _, err := Listen("127.0.0.1:0", Config{Secret: []byte("short")}); !errors.Is(err, ErrConfig) {
			t.Errorf("Listen: %v, want ErrConfig", err)
		}
	})
}

func TestCertificates(t *testing.T) {
	ca := newPKI(t, "test CA")
	other := newPKI(t, "other CA")
	server := ca.issue(t, "server", "127.0.0.1", "localhost")
	client := ca.issue(t, "client", "source.example")
	otherClient := other.issue(t, "intruder", "intruder.example")
	otherServer := other.issue(t, "impostor", "127.0.0.1")

	// trusting returns c with its CA file replaced by p's.
	trusting := func(c Config, p *pki) Config { c.CAFile = p.caFile; return c }
	for _, tc := range []struct {
		name       string
		lcfg, dcfg Config
	}{
		// Each end trusts only its own CA: the dialer rejects the
		// listener's certificate.
		{"different CAs", server, trusting(otherClient, other)},
		// The dialer trusts the right CA, but its certificate is from
		// another: the listener rejects it.
		{"client certificate from another CA", server, trusting(otherClient, ca)},
		// The listener's certificate is from another CA.
		{"server certificate from another CA", trusting(otherServer, ca), client},
		// Right CA, wrong name.
		{"wrong server name", server, func() Config { c := client; c.ServerName = "elsewhere.example"; return c }()},
		// A dialer with a secret and no certificate.
		{"no client certificate", server, func() Config { c := secretConfig(); return c }()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkGoroutines(t)
			l := listen(t, tc.lcfg)
			_, cerr, _, serr := connect(t, l, l.Addr().String(), tc.dcfg)
			mustFailAuth(t, cerr, serr, ReasonCertificate, ReasonCertificate)
		})
	}
	t.Run("missing file", func(t *testing.T) {
		c := server
		c.KeyFile = filepath.Join(t.TempDir(), "nothing")
		if _, err := Listen("127.0.0.1:0", c); !errors.Is(err, ErrConfig) {
			t.Errorf("Listen: %v, want ErrConfig", err)
		}
		c = server
		c.CAFile = ""
		if _, err := Listen("127.0.0.1:0", c); !errors.Is(err, ErrConfig) {
			t.Errorf("Listen without a CA: %v, want ErrConfig", err)
		}
	})
}

// TestHostileConnections: connections that are not migrate peers fail
// their handshake with an error that names it, within the deadlines, and
// the listener goes on.
func TestHostileConnections(t *testing.T) {
	checkGoroutines(t)
	lcfg := secretConfig()
	lcfg.HandshakeTimeout = 300 * time.Millisecond
	lcfg.AuthTimeout = 300 * time.Millisecond
	l := listen(t, lcfg)
	addr := l.Addr().String()
	next := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s, err := l.Accept(ctx)
		if s != nil {
			s.Close()
			t.Fatal("a hostile connection became a session")
		}
		t.Logf("Accept: %v", err)
		return err
	}
	var he *HandshakeError

	t.Run("not TLS", func(t *testing.T) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
		if err := next(); !errors.As(err, &he) || he.Stage != "tls" || errors.Is(err, ErrAuth) {
			t.Errorf("got %v", err)
		}
	})
	t.Run("silent TCP", func(t *testing.T) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := next(); !errors.As(err, &he) || !he.Timeout() {
			t.Errorf("got %v, want a timeout", err)
		}
	})
	tlsDial := func(t *testing.T, protos ...string) *tls.Conn {
		c, err := tls.Dial("tcp", addr, &tls.Config{MinVersion: tls.VersionTLS13, NextProtos: protos, InsecureSkipVerify: true})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	t.Run("silent after TLS", func(t *testing.T) {
		c := tlsDial(t, alpn)
		defer c.Close()
		if err := next(); !errors.As(err, &he) || he.Stage != "auth" || !he.Timeout() {
			t.Errorf("got %v, want an auth timeout", err)
		}
	})
	t.Run("no ALPN", func(t *testing.T) {
		c := tlsDial(t)
		defer c.Close()
		if err := next(); !errors.Is(err, ErrHandshake) {
			t.Errorf("got %v, want ErrHandshake", err)
		}
	})
	t.Run("garbage hello", func(t *testing.T) {
		c := tlsDial(t, alpn)
		defer c.Close()
		c.Write(bytes.Repeat([]byte{0x5a}, helloSize))
		if err := next(); !errors.Is(err, ErrHandshake) {
			t.Errorf("got %v, want ErrHandshake", err)
		}
	})
	t.Run("other version", func(t *testing.T) {
		c := tlsDial(t, alpn)
		defer c.Close()
		var hello [helloSize]byte
		copy(hello[:], authMagic[:])
		hello[8], hello[9] = 99, byte(AuthSecret)
		c.Write(hello[:])
		if err := next(); !errors.Is(err, ErrHandshake) {
			t.Errorf("got %v, want ErrHandshake", err)
		}
	})
	t.Run("short hello", func(t *testing.T) {
		c := tlsDial(t, alpn)
		c.Write(authMagic[:])
		c.CloseWrite()
		defer c.Close()
		if err := next(); !errors.Is(err, ErrHandshake) {
			t.Errorf("got %v, want ErrHandshake", err)
		}
	})
	// After all that, a real peer gets through.
	_, cerr, _, serr := connect(t, l, addr, secretConfig())
	if cerr != nil || serr != nil {
		t.Fatalf("real peer: %v, %v", cerr, serr)
	}
}

func TestDialTimeouts(t *testing.T) {
	checkGoroutines(t)
	t.Run("refused", func(t *testing.T) {
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		addr := ln.Addr().String()
		ln.Close()
		_, err := Dial(context.Background(), addr, secretConfig())
		var he *HandshakeError
		if !errors.As(err, &he) || he.Stage != "connect" {
			t.Fatalf("got %v", err)
		}
	})
	// A listener that accepts and says nothing, at the TCP level and after
	// TLS.
	silent := func(t *testing.T, doTLS bool) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		cert, _ := ephemeralCert()
		done := make(chan struct{})
		go func() {
			defer close(done)
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			if doTLS {
				tc := tls.Server(c, &tls.Config{MinVersion: tls.VersionTLS13, NextProtos: []string{alpn}, Certificates: []tls.Certificate{cert}})
				tc.Handshake()
			}
			io.Copy(io.Discard, c)
		}()
		t.Cleanup(func() { ln.Close(); <-done })
		return ln.Addr().String()
	}
	for _, tc := range []struct {
		name  string
		tls   bool
		stage string
	}{{"silent TCP", false, "tls"}, {"silent after TLS", true, "auth"}} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := secretConfig()
			cfg.HandshakeTimeout = 300 * time.Millisecond
			cfg.AuthTimeout = 300 * time.Millisecond
			start := time.Now()
			s, err := Dial(context.Background(), silent(t, tc.tls), cfg)
			if s != nil {
				s.Close()
			}
			var he *HandshakeError
			if !errors.As(err, &he) || !he.Timeout() || he.Stage != tc.stage {
				t.Fatalf("got %v, want a timeout at %s", err, tc.stage)
			}
			if d := time.Since(start); d > 3*time.Second {
				t.Errorf("took %v", d)
			}
		})
	}
	t.Run("context cancelled during auth", func(t *testing.T) {
		addr := silent(t, true)
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(200*time.Millisecond, cancel)
		_, err := Dial(ctx, addr, secretConfig())
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v, want context.Canceled", err)
		}
	})
}

func TestListenerClose(t *testing.T) {
	checkGoroutines(t)
	l, err := Listen("127.0.0.1:0", secretConfig())
	if err != nil {
		t.Fatal(err)
	}
	// A connection in the middle of its handshake, and a session nobody
	// accepted.
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	client, err := Dial(context.Background(), l.Addr().String(), secretConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	l.Close()
	if _, err := l.Accept(context.Background()); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v", err)
	}
	select {
	case <-client.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("a session nobody accepted outlived its listener")
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestLoadSecret(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, mode)
		return p
	}
	good := write("good", "  "+string(testSecret)+"\n", 0o600)
	s, err := LoadSecret(good)
	if err != nil || !bytes.Equal(s, testSecret) {
		t.Fatalf("LoadSecret: %q, %v", s, err)
	}
	for _, tc := range []struct{ name, path string }{
		{"world readable", write("open", string(testSecret), 0o644)},
		{"short", write("short", "tiny\n", 0o600)},
		{"one repeated byte", write("repeated", strings.Repeat("x", 64)+"\n", 0o600)},
		{"missing", filepath.Join(dir, "none")},
		{"directory", dir},
	} {
		if _, err := LoadSecret(tc.path); !errors.Is(err, ErrConfig) {
			t.Errorf("%s: %v, want ErrConfig", tc.name, err)
		}
	}
}
