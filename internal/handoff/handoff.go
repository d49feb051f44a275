package handoff

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/procmig/migrate/transport"
)

// Version is the version of the handoff protocol both sides speak
// (transport.Hello.Version).
const Version = 2

// Phases of the handoff, as SourceError.Phase and TargetError.Phase name
// them. Each side names the steps it goes through; hello and ready are
// both's.
const (
	PhaseHello = "hello" // exchanging and checking the Hellos
	// PhaseReady: the State was sent; the target restores, answers Ready,
	// and waits for the Commit.
	PhaseReady = "ready"

	// The source's.
	PhasePreCopy = "pre-copy" // live rounds
	PhaseFreeze  = "freeze"   // freezing the original
	PhaseFinal   = "final"    // final round and core state
	PhaseCommit  = "commit"   // the commit and what became of it

	// The target's.
	PhasePrepare = "prepare" // creating the husk
	PhaseRounds  = "rounds"  // layouts and rounds of pages, the freeze
	PhaseRestore = "restore" // the final restore
	PhaseResume  = "resume"  // resuming after the commit
)

// DefaultHelloTimeout is how long each side waits for the other's Hello
// (the target: for the first message).
const DefaultHelloTimeout = 10 * time.Second

// Conn is the control channel of one transport session, carrying
// transport control messages. Send and Recv may run at the same time (one
// goroutine each), Close from anywhere; Close makes a blocked Recv return.
// Recv returns when a message arrives, the link fails, or ctx is done;
// after Send or Recv has failed, the handoff only closes the conn.
type Conn interface {
	Send(transport.Msg) error
	Recv(ctx context.Context) (transport.Msg, error)
	Close() error
}

// The transport's control channel is what a live migration hands over.
var _ Conn = (*transport.Control)(nil)

// ErrPeerProtocol: the peer sent a message the protocol does not allow
// where it came (out of order, duplicated, from the wrong role, for another
// session). The error wrapping it names the peer.
var ErrPeerProtocol = errors.New("handoff protocol violation")

// ErrTimeout: the peer did not send the next message in time. The error
// wrapping it names the peer and the message.
var ErrTimeout = errors.New("handoff timeout")

// PeerError is an Abort or an Error the peer sent.
type PeerError struct {
	Peer  transport.Role // who sent it
	Abort bool           // an Abort; else an Error with Code
	Code  string         // of an Error, or of an Abort that gave one (AbortCoder)
	Text  string         // the Abort's reason, the Error's text
}

func (e *PeerError) Error() string {
	if e.Abort {
		return fmt.Sprintf("the %s aborted: %s", e.Peer, e.Text)
	}
	return fmt.Sprintf("the %s reported an error (%s): %s", e.Peer, e.Code, e.Text)
}

// AbortCoder is an error that names the kind of refusal it is: the Abort
// sent for it carries the code, for the peer's PeerError.
type AbortCoder interface {
	AbortCode() string
}

// abortCode is the code of the first AbortCoder in err's chain, or "".
func abortCode(err error) string {
	var c AbortCoder
	if errors.As(err, &c) {
		return c.AbortCode()
	}
	return ""
}

// unexpected turns a message from peer that should not have come into an
// error: a *PeerError for Abort and Error, else a protocol violation.
func unexpected(peer transport.Role, m transport.Msg, want string) error {
	switch m := m.(type) {
	case *transport.Abort:
		return &PeerError{Peer: peer, Abort: true, Code: m.Code, Text: m.Reason}
	case *transport.Error:
		return &PeerError{Peer: peer, Code: m.Code, Text: m.Text}
	}
	return protocolErr(peer, "%v while expecting %s", m.MsgType(), want)
}

// protocolErr says that peer broke the protocol.
func protocolErr(peer transport.Role, format string, args ...any) error {
	return fmt.Errorf("%w by the %s: %s", ErrPeerProtocol, peer, fmt.Sprintf(format, args...))
}

// checkHello checks the peer's Hello: its role, session and version.
func checkHello(h *transport.Hello, peer transport.Role, session string) error {
	switch {
	case h.Role != peer:
		return protocolErr(peer, "hello from a %q, want a %s", h.Role, peer)
	case h.SessionID != session:
		return protocolErr(peer, "hello for session %s, this is %s", h.SessionID, session)
	case h.Version != Version:
		return protocolErr(peer, "it speaks handoff version %d, this side %d", h.Version, Version)
	}
	return nil
}

// orDefault sets *d to v if it is not positive: the defaults of a config.
func orDefault(d *time.Duration, v time.Duration) {
	if *d <= 0 {
		*d = v
	}
}
