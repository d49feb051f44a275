package transport

import (
	"context"
	"errors"
	"fmt"
	"os"
)

// Sentinel errors of the connection and session layer. Errors returned by
// Dial, Accept and the session carry one of these (test with errors.Is) and
// wrap the underlying cause.
var (
	// ErrAuth: the peer was not authenticated, or did not authenticate
	// us: different secrets, a man in the middle, a certificate not signed
	// by the CA, or the two ends asked for different authentication modes.
	// The error is an *AuthError that says which.
	ErrAuth = errors.New("transport: authentication failed")

	// ErrHandshake: the connection failed before it became a session for a
	// reason other than authentication: the peer is not a migrate peer,
	// speaks another handshake version, or sent a malformed handshake.
	ErrHandshake = errors.New("transport: handshake failed")

	// ErrConfig: the Config is unusable (no authentication mode chosen, a
	// file that cannot be read, a secret that is too short, ...).
	ErrConfig = errors.New("transport: bad configuration")

	// ErrProtocol: the peer broke the stream protocol after the handshake
	// (an unknown stream kind, a second control stream, a stream without
	// its kind byte). The session is closed.
	ErrProtocol = errors.New("transport: protocol violation by peer")

	// ErrPeerTimeout: the peer stopped answering keepalives or stopped
	// taking data; the session is closed.
	ErrPeerTimeout = errors.New("transport: peer stopped responding")

	// ErrPeerGone: the connection to the peer was closed or broken; the
	// session is closed.
	ErrPeerGone = errors.New("transport: connection to peer lost")

	// ErrSessionClosed: the session was closed on this side.
	ErrSessionClosed = errors.New("transport: session closed")
)

// AuthReason says why authentication failed.
type AuthReason uint8

const (
	// ReasonBadProof: the peer's proof of the secret does not match. The
	// two ends hold different secrets, or the connection passes through a
	// man in the middle (the proofs are bound to the TLS session, which is
	// not the same on both sides of an interceptor). The two cannot be told
	// apart, on purpose.
	ReasonBadProof AuthReason = iota + 1
	// ReasonRejected: the peer did not accept our proof (see ReasonBadProof).
	ReasonRejected
	// ReasonModeMismatch: the two ends were configured with different
	// authentication modes, for example one of them with Insecure.
	ReasonModeMismatch
	// ReasonCertificate: TLS certificate verification failed, here or at the
	// peer (a certificate not signed by the CA, a wrong server name, no
	// client certificate).
	ReasonCertificate
)

func (r AuthReason) String() string {
	switch r {
	case ReasonBadProof:
		return "the peer's proof of the shared secret does not match: the secrets differ, or a man in the middle intercepts the connection"
	case ReasonRejected:
		return "the peer rejected our proof of the shared secret: the secrets differ, or a man in the middle intercepts the connection"
	case ReasonModeMismatch:
		return "the two ends use different authentication modes"
	case ReasonCertificate:
		return "certificate verification failed"
	}
	return fmt.Sprintf("auth reason %d", uint8(r))
}

// AuthError is an authentication failure. errors.Is(err, ErrAuth) holds.
type AuthError struct {
	Reason AuthReason
	// Local and Peer are the authentication modes of the two ends, for
	// ReasonModeMismatch (Peer is what the peer announced).
	Local, Peer AuthMode
	// Err is the underlying error (the TLS error for ReasonCertificate).
	Err error
}

func (e *AuthError) Error() string {
	msg := "transport: authentication failed: " + e.Reason.String()
	if e.Reason == ReasonModeMismatch {
		msg += fmt.Sprintf(" (here %s, peer %s)", e.Local, e.Peer)
	}
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

func (e *AuthError) Is(target error) bool { return target == ErrAuth }
func (e *AuthError) Unwrap() error        { return e.Err }

// HandshakeError is the error of Dial, and of Accept for a connection that
// did not become a session. Stage is where it failed: "connect", "tls" or
// "auth". Err is an *AuthError, an error wrapping ErrHandshake, a timeout
// (errors.Is(err, os.ErrDeadlineExceeded)), or a network error.
type HandshakeError struct {
	Stage string
	// Remote is the peer's address.
	Remote string
	Err    error
}

func (e *HandshakeError) Error() string {
	return fmt.Sprintf("transport: handshake with %s failed at %s: %v", e.Remote, e.Stage, e.Err)
}

func (e *HandshakeError) Unwrap() error { return e.Err }

// Timeout reports whether the handshake failed because a step took too
// long (a deadline of the Config or of the caller's context).
func (e *HandshakeError) Timeout() bool {
	return errors.Is(e.Err, os.ErrDeadlineExceeded) || errors.Is(e.Err, context.DeadlineExceeded)
}

// Sentinel errors of the control-message codec. Every decoding error of
// ReadMsg is a *MsgError whose Err is one of these.
var (
	ErrMsgVersion   = errors.New("transport: unsupported control frame version")
	ErrMsgFlags     = errors.New("transport: unknown control frame flags")
	ErrMsgHeaderCRC = errors.New("transport: control frame header checksum mismatch")
	ErrMsgChecksum  = errors.New("transport: control frame checksum mismatch")
	ErrMsgTooLarge  = errors.New("transport: control frame too large")
	ErrMsgTruncated = errors.New("transport: control frame truncated")
	ErrMsgType      = errors.New("transport: unknown control message type")
	ErrMsgPayload   = errors.New("transport: malformed control message payload")
	ErrMsgInvalid   = errors.New("transport: invalid control message")
)

// MsgError is a control-message decoding (or encoding) error: what was wrong
// (Err, a sentinel above), where (Offset, the byte offset within the frame at
// which the problem was found: 0 for the header, 12 for the payload, ...),
// the message type if the header was sound (Type, else 0), and details.
type MsgError struct {
	Offset int64
	Type   MsgType
	Reason string
	Err    error
}

func (e *MsgError) Error() string {
	s := e.Err.Error()
	if e.Type != 0 {
		s += " (" + e.Type.String() + ")"
	}
	s += fmt.Sprintf(" at offset %d", e.Offset)
	if e.Reason != "" {
		s += ": " + e.Reason
	}
	return s
}

func (e *MsgError) Unwrap() error { return e.Err }

func msgErr(off int64, t MsgType, err error, format string, args ...any) *MsgError {
	return &MsgError{Offset: off, Type: t, Err: err, Reason: fmt.Sprintf(format, args...)}
}
