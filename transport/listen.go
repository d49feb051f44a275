package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// Listener accepts sessions. Every connection is handshaken (TLS, then
// authentication) on its own goroutine, at most MaxHandshakes at once and
// each within HandshakeTimeout+AuthTimeout, so a slow or hostile peer never
// holds up the others.
type Listener struct {
	s  *settings
	tc *tls.Config
	ln net.Listener

	results chan result
	sem     chan struct{} // one slot per handshake in progress
	closed  chan struct{}
	fatal   chan struct{} // closed when accepting failed for good; see fatalErr
	wg      sync.WaitGroup

	mu        sync.Mutex
	pending   map[net.Conn]struct{} // connections being handshaken
	fatalErr  error
	closeOnce sync.Once
}

type result struct {
	sess *Session
	err  error
}

// Listen listens on addr (host:port; ":0" picks a port, see Addr).
func Listen(addr string, cfg Config) (*Listener, error) {
	s, err := cfg.settings()
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("transport: listen: %w", err)
	}
	l := &Listener{
		s:       s,
		tc:      s.serverTLS(),
		ln:      ln,
		results: make(chan result, 16),
		sem:     make(chan struct{}, s.MaxHandshakes),
		closed:  make(chan struct{}),
		fatal:   make(chan struct{}),
		pending: make(map[net.Conn]struct{}),
	}
	if s.mode == AuthNone {
		s.logger.Warn("transport: listening without authentication (insecure): anyone who reaches this address can connect", "addr", ln.Addr().String())
	}
	l.wg.Add(1)
	go l.acceptLoop()
	return l, nil
}

// Addr is the address the listener listens on.
func (l *Listener) Addr() net.Addr { return l.ln.Addr() }

// Accept waits for the next session. A connection that fails its handshake
// is returned as a *HandshakeError (errors.Is(err, ErrAuth) for an
// authentication failure) so the caller can log it; the listener goes on,
// and the caller calls Accept again. After Close, Accept returns an error
// wrapping net.ErrClosed.
func (l *Listener) Accept(ctx context.Context) (*Session, error) {
	select {
	case r := <-l.results:
		return r.sess, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-l.closed:
		return nil, fmt.Errorf("transport: listener: %w", net.ErrClosed)
	case <-l.fatal:
		return nil, l.fatalErr
	}
}

// Close stops listening, aborts the handshakes in progress and closes the
// sessions nobody accepted. Sessions returned by Accept live on.
func (l *Listener) Close() error {
	var err error
	l.closeOnce.Do(func() {
		close(l.closed)
		err = l.ln.Close()
		l.mu.Lock()
		for c := range l.pending {
			c.Close()
		}
		l.mu.Unlock()
		l.wg.Wait()
		// Nothing sends on results any more.
		for len(l.results) > 0 {
			if r := <-l.results; r.sess != nil {
				r.sess.Close()
			}
		}
	})
	return err
}

func (l *Listener) acceptLoop() {
	defer l.wg.Done()
	var backoff time.Duration
	for {
		c, err := l.ln.Accept()
		if err != nil {
			select {
			case <-l.closed:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				l.fatalErr = fmt.Errorf("transport: accept: %w", err)
				close(l.fatal)
				return
			}
			// Out of fds and the like: wait and try again.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			l.s.logger.Warn("transport: accept failed; retrying", "err", err, "retry_in", backoff)
			select {
			case <-time.After(backoff):
			case <-l.closed:
				return
			}
			continue
		}
		backoff = 0
		select {
		case l.sem <- struct{}{}:
		default:
			l.s.logger.Warn("transport: too many handshakes in progress; connection dropped", "remote", c.RemoteAddr().String())
			c.Close()
			continue
		}
		l.mu.Lock()
		select {
		case <-l.closed:
			l.mu.Unlock()
			c.Close()
			return
		default:
		}
		l.pending[c] = struct{}{}
		l.mu.Unlock()
		l.wg.Add(1)
		go l.handshake(c)
	}
}

// handshake turns one connection into a session, or reports why not.
func (l *Listener) handshake(c net.Conn) {
	defer l.wg.Done()
	sess, err := l.serverHandshake(c)
	<-l.sem
	l.mu.Lock()
	delete(l.pending, c)
	l.mu.Unlock()
	if err != nil {
		c.Close()
		l.s.logger.Info("transport: connection refused", "err", err)
		select {
		case l.results <- result{err: err}:
		default: // nobody is accepting; it was logged
		}
		return
	}
	select {
	case l.results <- result{sess: sess}:
	case <-l.closed:
		sess.Close()
	}
}

func (l *Listener) serverHandshake(c net.Conn) (*Session, error) {
	remote := c.RemoteAddr().String()
	conn := tls.Server(c, l.tc)
	ctx, cancel := context.WithTimeout(context.Background(), l.s.HandshakeTimeout)
	defer cancel()
	if err := conn.HandshakeContext(ctx); err != nil {
		if ae := certError(err); ae != nil {
			err = ae
		}
		return nil, &HandshakeError{Stage: "tls", Remote: remote, Err: err}
	}
	if p := conn.ConnectionState().NegotiatedProtocol; p != alpn {
		return nil, &HandshakeError{Stage: "tls", Remote: remote, Err: handshakeErr("the dialer does not speak %s (ALPN %q)", alpn, p)}
	}
	var id string
	err := withDeadline(context.Background(), c, l.s.AuthTimeout, func() error {
		var err error
		id, err = listenerAuth(conn, l.s)
		return err
	})
	if err != nil {
		return nil, &HandshakeError{Stage: "auth", Remote: remote, Err: err}
	}
	return newSession(conn, c, l.s, id, false)
}
