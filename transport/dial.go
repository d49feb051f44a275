package transport

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"net"
	"time"
)

// Dial connects to a listener at addr (host:port), runs TLS 1.3 and the
// authentication exchange, and returns the session. ctx bounds the
// handshake only (together with HandshakeTimeout and AuthTimeout); the
// session outlives it. Errors are *HandshakeError, or wrap ErrConfig.
func Dial(ctx context.Context, addr string, cfg Config) (*Session, error) {
	s, err := cfg.settings()
	if err != nil {
		return nil, err
	}
	tc, err := s.clientTLS(addr)
	if err != nil {
		return nil, err
	}
	id := s.SessionID
	if id == "" {
		id = NewSessionID()
	}
	var idb [16]byte
	hex.Decode(idb[:], []byte(id))

	hctx, cancel := context.WithTimeout(ctx, s.HandshakeTimeout)
	defer cancel()
	var d net.Dialer
	raw, err := d.DialContext(hctx, "tcp", addr)
	if err != nil {
		return nil, &HandshakeError{Stage: "connect", Remote: addr, Err: err}
	}
	ok := false
	defer func() {
		if !ok {
			raw.Close()
		}
	}()
	remote := raw.RemoteAddr().String()

	conn := tls.Client(raw, tc)
	if err := conn.HandshakeContext(hctx); err != nil {
		if ae := certError(err); ae != nil {
			err = ae
		}
		return nil, &HandshakeError{Stage: "tls", Remote: remote, Err: err}
	}
	if p := conn.ConnectionState().NegotiatedProtocol; p != alpn {
		return nil, &HandshakeError{Stage: "tls", Remote: remote, Err: handshakeErr("the listener does not speak %s (ALPN %q)", alpn, p)}
	}

	if err := withDeadline(ctx, raw, s.AuthTimeout, func() error { return dialerAuth(conn, s, idb) }); err != nil {
		return nil, &HandshakeError{Stage: "auth", Remote: remote, Err: err}
	}
	sess, err := newSession(conn, raw, s, id, true)
	if err != nil {
		return nil, err
	}
	ok = true
	return sess, nil
}

// withDeadline runs f with a deadline on c of now+d, cut short if ctx ends,
// and clears the deadline afterwards. If ctx ended, its error is returned.
func withDeadline(ctx context.Context, c net.Conn, d time.Duration, f func() error) error {
	c.SetDeadline(time.Now().Add(d))
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		c.SetDeadline(time.Unix(1, 0))
		close(fired)
	})
	err := f()
	if !stop() {
		<-fired // never clear the deadline before it is set
		if err != nil {
			err = fmt.Errorf("%w (%w)", ctx.Err(), err)
		}
	}
	c.SetDeadline(time.Time{})
	return err
}
