package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// ErrEvicted: a connection's handshake was cut short to make room for a
// newer one (Config.MaxHandshakes were in progress, and this one had got
// least far in its handshake, and was the oldest of those).
var ErrEvicted = errors.New("transport: handshake evicted to make room for a newer connection")

// Listener accepts sessions. Every connection is handshaken (TLS, then
// authentication) on its own goroutine, each within
// HandshakeTimeout+AuthTimeout, and must send its first bytes within
// FirstByteTimeout. At most MaxHandshakes are in progress at once: a new
// connection beyond that evicts the one that got least far (nothing
// received; part of the TLS hello; the hello; TLS done), the oldest of
// those, so that silent or stalled connections, however many and however
// fast they come, never keep out a real peer, which sends its TLS hello
// at once: only peers that do as much as it does compete with it.
type Listener struct {
	s  *settings
	tc *tls.Config
	ln net.Listener

	results chan result
	closed  chan struct{}
	fatal   chan struct{} // closed when accepting failed for good; see fatalErr
	wg      sync.WaitGroup
	refused refusalLog
	// accepted counts the connections taken from the accept queue.
	accepted atomic.Int64

	mu        sync.Mutex
	pending   map[*pendingConn]struct{} // connections being handshaken
	peekBuf   []byte                    // for evictLocked
	seq       uint64                    // of the last pending connection
	fatalErr  error
	closeOnce sync.Once
}

type result struct {
	sess *Session
	err  error
}

// pendingConn is a connection being handshaken. It notes how far the
// handshake has come (see stage), and lifts the first-byte deadline when
// the first bytes arrive.
type pendingConn struct {
	net.Conn
	seq     uint64       // arrival order
	born    time.Time    // when it was accepted
	stage   atomic.Int32 // stageSilent ... stageTLS
	evicted atomic.Bool

	// Read by the handshake goroutine alone: the first TLS record's
	// header, to tell when the whole record (the client's hello) is in.
	hdr    [5]byte
	got    int // bytes of the first record read so far
	recLen int // its length, header included, once the header is in
}

// freshGrace is how long a connection that has sent nothing yet ranks with
// those that sent part of their hello: the time a real dialer may take to
// compute its hello and send it across (half a round trip).
const freshGrace = 250 * time.Millisecond

// How far a pending handshake has come. Eviction takes the connection at
// the lowest stage, the oldest of them: a peer that stalls early never
// pushes out one that got further, and a real dialer, which sends its
// hello at once and answers within a round trip, only ever waits in
// stages that stalled peers must pass too, doing the same work.
const (
	stageSilent  = iota // nothing received
	stagePartial        // part of the first TLS record
	stageHello          // the whole first record (the client's hello)
	stageTLS            // TLS done, authenticating
)

func (p *pendingConn) Read(b []byte) (int, error) {
	if p.stage.Load() >= stageHello {
		return p.Conn.Read(b)
	}
	n, err := p.Conn.Read(b)
	if n > 0 {
		if p.stage.CompareAndSwap(stageSilent, stagePartial) {
			p.Conn.SetReadDeadline(time.Time{})
		}
		p.note(b[:n])
	}
	return n, err
}

// note follows the first TLS record through the bytes read.
func (p *pendingConn) note(b []byte) {
	for _, c := range b {
		if p.got < len(p.hdr) {
			p.hdr[p.got] = c
		}
		p.got++
		if p.got == len(p.hdr) {
			p.recLen = len(p.hdr) + (int(p.hdr[3])<<8 | int(p.hdr[4]))
		}
		if p.recLen > 0 && p.got >= p.recLen {
			p.stage.Store(stageHello)
			return
		}
	}
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
	return newListener(ln, s), nil
}

// NewListener accepts sessions on ln, which it owns from now on: Close
// closes it, and so does NewListener if cfg is unusable.
func NewListener(ln net.Listener, cfg Config) (*Listener, error) {
	s, err := cfg.settings()
	if err != nil {
		ln.Close()
		return nil, err
	}
	return newListener(ln, s), nil
}

func newListener(ln net.Listener, s *settings) *Listener {
	l := &Listener{
		s:       s,
		tc:      s.serverTLS(),
		ln:      ln,
		results: make(chan result, 16),
		closed:  make(chan struct{}),
		fatal:   make(chan struct{}),
		pending: make(map[*pendingConn]struct{}),
		refused: refusalLog{log: s.logger, every: refusalLogInterval},
	}
	if s.mode == AuthNone {
		s.logger.Warn("transport: listening without authentication (insecure): anyone who reaches this address can connect", "addr", ln.Addr().String())
	}
	l.wg.Add(1)
	go l.acceptLoop()
	return l
}

// Addr is the address the listener listens on.
func (l *Listener) Addr() net.Addr { return l.ln.Addr() }

// Accept waits for the next session. A connection that fails its handshake
// is returned as a *HandshakeError (errors.Is(err, ErrAuth) for an
// authentication failure, ErrEvicted for one cut short to make room) so
// the caller can count it; the listener has logged it already (at most
// one record a second, see refusalLog). The listener goes on, and the
// caller calls Accept again. After Close, Accept returns an error wrapping
// net.ErrClosed.
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
		for p := range l.pending {
			p.Close()
		}
		l.mu.Unlock()
		l.wg.Wait()
		// Nothing sends on results any more.
		for len(l.results) > 0 {
			if r := <-l.results; r.sess != nil {
				r.sess.Close()
			}
		}
		l.refused.flush()
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
		l.accepted.Add(1)
		// The first bytes (the TLS hello) must come soon; a real dialer
		// sends them at once. pendingConn lifts the deadline when they do.
		c.SetReadDeadline(time.Now().Add(l.s.FirstByteTimeout))
		l.mu.Lock()
		select {
		case <-l.closed:
			l.mu.Unlock()
			c.Close()
			return
		default:
		}
		if len(l.pending) >= l.s.MaxHandshakes {
			l.evictLocked()
		}
		l.seq++
		p := &pendingConn{Conn: c, seq: l.seq, born: time.Now()}
		l.pending[p] = struct{}{}
		l.mu.Unlock()
		l.wg.Add(1)
		go l.handshake(p)
	}
}

// evictLocked closes the pending connection that got least far in its
// handshake (see stageSilent), the oldest of them. Its handshake
// goroutine then fails at once and reports ErrEvicted.
//
// Preconditions: l.mu is held and l.pending is not empty.
func (l *Listener) evictLocked() {
	var victim *pendingConn
	var vstage int32
	now := time.Now()
	for p := range l.pending {
		st := p.stage.Load()
		if st == stageSilent {
			if l.peekBuf == nil {
				l.peekBuf = make([]byte, maxRecord)
			}
			st = waitingStage(p.Conn, l.peekBuf)
		}
		if st == stageSilent && now.Sub(p.born) < freshGrace {
			// Its hello may be on its way: a real dialer computes it
			// after the TCP handshake, and it takes half a round trip.
			st = stagePartial
		}
		if victim == nil || st < vstage || st == vstage && p.seq < victim.seq {
			victim, vstage = p, st
		}
	}
	victim.evicted.Store(true)
	delete(l.pending, victim)
	victim.Close()
}

// handshake turns one connection into a session, or reports why not.
func (l *Listener) handshake(p *pendingConn) {
	defer l.wg.Done()
	sess, err := l.serverHandshake(p)
	l.mu.Lock()
	delete(l.pending, p)
	l.mu.Unlock()
	if err != nil {
		p.Close()
		if p.evicted.Load() {
			err = &HandshakeError{Stage: "tls", Remote: p.RemoteAddr().String(), Err: ErrEvicted}
		}
		l.refused.note(err)
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

func (l *Listener) serverHandshake(p *pendingConn) (*Session, error) {
	remote := p.RemoteAddr().String()
	conn := tls.Server(p, l.tc)
	ctx, cancel := context.WithTimeout(context.Background(), l.s.HandshakeTimeout)
	defer cancel()
	if err := conn.HandshakeContext(ctx); err != nil {
		if ae := certError(err); ae != nil {
			err = ae
		}
		return nil, &HandshakeError{Stage: "tls", Remote: remote, Err: err}
	}
	p.stage.Store(stageTLS)
	if pr := conn.ConnectionState().NegotiatedProtocol; pr != alpn {
		return nil, &HandshakeError{Stage: "tls", Remote: remote, Err: handshakeErr("the dialer does not speak %s (ALPN %q)", alpn, pr)}
	}
	var id string
	err := withDeadline(context.Background(), p.Conn, l.s.AuthTimeout, func() error {
		var err error
		id, err = listenerAuth(conn, l.s)
		return err
	})
	if err != nil {
		return nil, &HandshakeError{Stage: "auth", Remote: remote, Err: err}
	}
	// Authenticated: no longer pending, so never evicted from here on.
	if !l.leave(p) {
		return nil, &HandshakeError{Stage: "auth", Remote: remote, Err: ErrEvicted}
	}
	return newSession(conn, p.Conn, l.s, id, false)
}

// leave takes p off the pending handshakes, unless it was evicted.
func (l *Listener) leave(p *pendingConn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if p.evicted.Load() {
		return false
	}
	delete(l.pending, p)
	return true
}

// refusalLogInterval is the least time between two log records of refused
// connections.
const refusalLogInterval = time.Second

// refusalLog logs refused connections at a bounded rate: the first at
// once, then at most one record per interval, which counts the refusals
// held back since the last record. A flood of hostile connections thus
// costs a line a second, not a line each.
type refusalLog struct {
	log   interface{ Warn(string, ...any) }
	every time.Duration

	mu      sync.Mutex
	last    time.Time // of the last record
	held    int       // refusals since then, not logged
	evicted int       // of which evictions
}

func (r *refusalLog) note(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	if errors.Is(err, ErrEvicted) {
		r.evicted++
	}
	if !r.last.IsZero() && now.Sub(r.last) < r.every {
		r.held++
		return
	}
	r.last = now
	r.log.Warn("transport: connection refused", "err", err, "more_refused", r.held, "evicted", r.evicted)
	r.held, r.evicted = 0, 0
}

// flush logs the count of refusals held back, if any.
func (r *refusalLog) flush() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.held > 0 {
		r.log.Warn("transport: connections refused", "count", r.held, "evicted", r.evicted)
		r.held, r.evicted = 0, 0
	}
}
