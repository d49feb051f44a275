package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
)

// StreamKind is what a stream carries; it is the first byte the opening
// side writes on every stream.
type StreamKind uint8

const (
	// KindControl carries control messages (WriteMsg, ReadMsg). A session
	// has at most one.
	KindControl StreamKind = 1
	// KindPages carries a page stream; a session has several in parallel.
	KindPages StreamKind = 2
	// KindBulk carries bulk state (fds, socket queues).
	KindBulk StreamKind = 3
	// KindPostCopy carries post-copy's page requests and their answers
	// (pagestream.PostCopyMsg); its background pages go in a KindPages
	// stream.
	KindPostCopy StreamKind = 4
	// KindFiles carries the files a live migration copies
	// (internal/filesync's sync stream); a session has at most one.
	KindFiles StreamKind = 5
)

func (k StreamKind) String() string {
	switch k {
	case KindControl:
		return "control"
	case KindPages:
		return "pages"
	case KindBulk:
		return "bulk"
	case KindPostCopy:
		return "post-copy"
	case KindFiles:
		return "files"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

func (k StreamKind) valid() bool { return k >= KindControl && k <= KindFiles }

// Session is an authenticated connection to a peer, multiplexed into typed
// streams. By convention the dialer (the source) opens the streams and the
// listener accepts them; either side may open.
//
// A Session is safe for concurrent use. When the peer goes away (closes,
// breaks the connection, stops answering keepalives, or breaks the stream
// protocol) Done is closed and Err says why; every stream then fails.
type Session struct {
	id     string
	dialer bool
	mode   AuthMode
	tls    tls.ConnectionState
	raw    net.Conn
	mux    *yamux.Session
	logger *slog.Logger
	// kindTimeout bounds the wait for the kind byte of a new stream.
	kindTimeout time.Duration

	incoming chan *stream // accepted streams with their kind read
	done     chan struct{}
	control  atomic.Bool // a control stream was opened or accepted

	mu  sync.Mutex
	err error
}

// muxConn is the connection under yamux: the TLS connection, except that
// Close closes the TCP connection at once. tls.Conn.Close first sends a
// close_notify alert, which can block for seconds on a peer that stopped
// reading, exactly when a session is being torn down; yamux's own framing
// (and the control protocol above it) makes close_notify redundant.
type muxConn struct {
	*tls.Conn
	raw net.Conn
}

func (c muxConn) Close() error { return c.raw.Close() }

func newSession(tc *tls.Conn, raw net.Conn, s *settings, id string, dialer bool) (*Session, error) {
	logger := s.logger.With("session", id, "peer", raw.RemoteAddr().String())
	ycfg, err := yamuxConfig(s, logger)
	if err != nil {
		return nil, err
	}
	var mux *yamux.Session
	if dialer {
		mux, err = yamux.Client(muxConn{tc, raw}, ycfg)
	} else {
		mux, err = yamux.Server(muxConn{tc, raw}, ycfg)
	}
	if err != nil {
		return nil, fmt.Errorf("transport: yamux: %w", err)
	}
	sess := &Session{
		id:          id,
		dialer:      dialer,
		mode:        s.mode,
		tls:         tc.ConnectionState(),
		raw:         raw,
		mux:         mux,
		logger:      logger,
		kindTimeout: s.HandshakeTimeout,
		incoming:    make(chan *stream, ycfg.AcceptBacklog),
		done:        make(chan struct{}),
	}
	if s.mode == AuthNone {
		logger.Warn("transport: insecure session: the peer is not authenticated")
	} else {
		logger.Debug("transport: session established", "auth", s.mode.String(), "dialer", dialer)
	}
	go sess.acceptLoop()
	return sess, nil
}

// ID is the session ID the dialer chose: 32 hex digits.
func (s *Session) ID() string { return s.id }

// Peer is the address of the other end.
func (s *Session) Peer() net.Addr { return s.raw.RemoteAddr() }

// Auth is how the peer was authenticated; AuthNone means it was not
// (Config.Insecure).
func (s *Session) Auth() AuthMode { return s.mode }

// Dialer reports whether this end dialed.
func (s *Session) Dialer() bool { return s.dialer }

// ConnectionState is the TLS state of the connection (with certificates,
// PeerCertificates names the peer).
func (s *Session) ConnectionState() tls.ConnectionState { return s.tls }

// Done is closed when the session ends, for whatever reason; Err then says
// why.
func (s *Session) Done() <-chan struct{} { return s.done }

// Err is nil while the session lives, then why it ended: an error wrapping
// ErrSessionClosed, ErrPeerGone, ErrPeerTimeout or ErrProtocol.
func (s *Session) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.done:
		return s.err
	default:
		return nil
	}
}

// fail records why the session ends (the first reason wins) and ends it.
func (s *Session) fail(err error) {
	s.mu.Lock()
	if s.err == nil {
		s.err = err
	}
	s.mu.Unlock()
	s.mux.Close()
}

// Close ends the session and every stream at once; data not yet read by
// the peer may be lost. A protocol that needs its last messages to arrive
// waits for the peer's answer before closing.
func (s *Session) Close() error {
	s.fail(fmt.Errorf("%w (id %s)", ErrSessionClosed, s.id))
	<-s.done
	return nil
}

// deadErr is the error for an operation on a session that ended: Err, once
// the accept loop has recorded it (which it does as soon as yamux stops).
func (s *Session) deadErr() error {
	<-s.done
	return s.Err()
}

// muxErr classifies the error yamux ended the session with.
func muxErr(err error) error {
	switch {
	case err == nil, errors.Is(err, yamux.ErrSessionShutdown):
		return ErrSessionClosed
	case errors.Is(err, yamux.ErrKeepAliveTimeout), errors.Is(err, yamux.ErrConnectionWriteTimeout), errors.Is(err, yamux.ErrTimeout):
		return fmt.Errorf("%w: %w", ErrPeerTimeout, err)
	case errors.Is(err, yamux.ErrInvalidVersion), errors.Is(err, yamux.ErrInvalidMsgType),
		errors.Is(err, yamux.ErrDuplicateStream), errors.Is(err, yamux.ErrRecvWindowExceeded),
		errors.Is(err, yamux.ErrUnexpectedFlag):
		return fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	return fmt.Errorf("%w: %w", ErrPeerGone, err)
}

// acceptLoop takes the streams the peer opens, reads their kind byte, and
// queues them for AcceptStream, in the order they were opened. It runs for
// the life of the session, and closing done is its last act.
func (s *Session) acceptLoop() {
	defer func() {
		// Streams nobody accepted die with the session.
		for {
			select {
			case st := <-s.incoming:
				st.y.Close()
			default:
				close(s.done)
				return
			}
		}
	}()
	for {
		y, err := s.mux.AcceptStream()
		if err != nil {
			s.mu.Lock()
			if s.err == nil {
				s.err = muxErr(err)
			}
			err = s.err
			s.mu.Unlock()
			s.mux.Close()
			if errors.Is(err, ErrSessionClosed) {
				s.logger.Debug("transport: session closed")
			} else {
				s.logger.Info("transport: session ended", "err", err)
			}
			return
		}
		kind, err := s.readKind(y)
		if err != nil {
			y.Close()
			if s.mux.IsClosed() {
				continue // AcceptStream reports it
			}
			s.logger.Warn("transport: peer broke the stream protocol; closing the session", "err", err)
			s.fail(err)
			continue
		}
		st := &stream{y: y, kind: kind, s: s}
		select {
		case s.incoming <- st:
		case <-s.mux.CloseChan():
			y.Close()
		}
	}
}

// readKind reads and checks the kind byte of a stream the peer opened.
func (s *Session) readKind(y *yamux.Stream) (StreamKind, error) {
	var b [1]byte
	y.SetReadDeadline(time.Now().Add(s.kindTimeout))
	_, err := io.ReadFull(y, b[:])
	y.SetReadDeadline(time.Time{})
	if err != nil {
		if errors.Is(err, yamux.ErrTimeout) {
			return 0, fmt.Errorf("%w: stream %d sent no kind byte within %v", ErrProtocol, y.StreamID(), s.kindTimeout)
		}
		return 0, fmt.Errorf("%w: stream %d closed before its kind byte: %w", ErrProtocol, y.StreamID(), err)
	}
	kind := StreamKind(b[0])
	if !kind.valid() {
		return 0, fmt.Errorf("%w: stream %d has unknown kind %d", ErrProtocol, y.StreamID(), b[0])
	}
	if kind == KindControl && !s.control.CompareAndSwap(false, true) {
		return 0, fmt.Errorf("%w: stream %d is a second control stream", ErrProtocol, y.StreamID())
	}
	return kind, nil
}

// OpenStream opens a stream of the given kind. A session has at most one
// control stream, opened by either end.
func (s *Session) OpenStream(kind StreamKind) (net.Conn, error) {
	if !kind.valid() {
		return nil, fmt.Errorf("transport: cannot open a stream of unknown kind %d", uint8(kind))
	}
	if s.mux.IsClosed() {
		return nil, s.deadErr()
	}
	if kind == KindControl && !s.control.CompareAndSwap(false, true) {
		return nil, errors.New("transport: the session already has a control stream")
	}
	y, err := s.mux.OpenStream()
	if err != nil {
		if s.mux.IsClosed() {
			return nil, s.deadErr()
		}
		return nil, fmt.Errorf("transport: open %s stream: %w", kind, err)
	}
	st := &stream{y: y, kind: kind, s: s}
	if _, err := st.Write([]byte{byte(kind)}); err != nil {
		y.Close()
		return nil, err
	}
	return st, nil
}

// AcceptStream waits for the next stream the peer opens and returns it with
// its kind. It fails when ctx is done or the session ends (with Err).
func (s *Session) AcceptStream(ctx context.Context) (StreamKind, net.Conn, error) {
	select {
	case st := <-s.incoming:
		return st.kind, st, nil
	case <-ctx.Done():
		return 0, nil, ctx.Err()
	case <-s.done:
		return 0, nil, s.Err()
	}
}

// stream is a yamux stream with its kind. Its errors say what happened to
// the session: once the session has ended, Read and Write return Err (never
// io.EOF, so a peer that vanished mid-stream never looks like a clean end of
// stream), and a deadline error wraps os.ErrDeadlineExceeded.
type stream struct {
	y    *yamux.Stream
	kind StreamKind
	s    *Session
	wmu  sync.Mutex // one Write at a time: a Write is several frames
}

func (st *stream) err(op string, err error) error {
	if errors.Is(err, yamux.ErrTimeout) {
		return &net.OpError{Op: op, Net: "yamux", Err: os.ErrDeadlineExceeded}
	}
	if st.s.mux.IsClosed() {
		return fmt.Errorf("transport: %s on %s stream: %w", op, st.kind, st.s.deadErr())
	}
	if err == io.EOF {
		return io.EOF
	}
	return fmt.Errorf("transport: %s on %s stream: %w", op, st.kind, err)
}

// Read reads from the stream. io.EOF means the peer closed the stream
// cleanly, while the session lives.
func (st *stream) Read(b []byte) (int, error) {
	n, err := st.y.Read(b)
	if err != nil {
		return n, st.err("read", err)
	}
	return n, nil
}

// Write writes b in frames of at most maxFrame bytes. Concurrent Writes do
// not interleave.
func (st *stream) Write(b []byte) (int, error) {
	st.wmu.Lock()
	defer st.wmu.Unlock()
	total := 0
	for len(b) > 0 {
		chunk := b
		if len(chunk) > maxFrame {
			chunk = chunk[:maxFrame]
		}
		n, err := st.y.Write(chunk)
		total += n
		if err != nil {
			return total, st.err("write", err)
		}
		b = b[n:]
	}
	return total, nil
}

// Close closes the stream for writing and tells the peer (which reads
// io.EOF); reading goes on until the peer closes too.
func (st *stream) Close() error                       { return st.y.Close() }
func (st *stream) LocalAddr() net.Addr                { return st.y.LocalAddr() }
func (st *stream) RemoteAddr() net.Addr               { return st.y.RemoteAddr() }
func (st *stream) SetDeadline(t time.Time) error      { return st.y.SetDeadline(t) }
func (st *stream) SetReadDeadline(t time.Time) error  { return st.y.SetReadDeadline(t) }
func (st *stream) SetWriteDeadline(t time.Time) error { return st.y.SetWriteDeadline(t) }
