package transport

import (
	"encoding/json"
	"fmt"
	"strings"
	"unicode/utf8"
)

// MsgType is the type of a control message, the type field of its frame.
type MsgType uint16

// The control messages of the migration protocol. Their order and the
// contents of the opaque Body fields are internal/handoff's.
const (
	TypeHello       MsgType = 1  // both ways, first: who is talking
	TypeLayout      MsgType = 2  // source → target: the process layout (VMAs, files)
	TypeRoundDone   MsgType = 3  // source → target: every page of a round was sent
	TypeFreeze      MsgType = 4  // source → target: the process is frozen
	TypeState       MsgType = 5  // source → target: core state (registers, fds, ...)
	TypeReady       MsgType = 6  // target → source: restored, still stopped
	TypeCommit      MsgType = 7  // source → target: resume it
	TypeResumed     MsgType = 8  // target → source: it runs
	TypeAbort       MsgType = 9  // both ways: give up, before commit
	TypeStatusQuery MsgType = 10 // source → target: what became of a session?
	TypeStatusReply MsgType = 11 // target → source: its outcome
	TypeError       MsgType = 12 // both ways: a coded error
	TypeFilesQuery  MsgType = 13 // source → target, first: do you see these files?
	TypeFilesReply  MsgType = 14 // target → source: what it sees at their paths
)

func (t MsgType) String() string {
	if info, ok := msgTypes[t]; ok {
		return info.name
	}
	return fmt.Sprintf("type(%d)", uint16(t))
}

// Msg is a control message: one of the pointer types below. ReadMsg returns
// them as pointers (*Hello, *Layout, ...), and WriteMsg takes them so.
type Msg interface {
	MsgType() MsgType
	validate() error
}

type msgInfo struct {
	name string
	max  int // payload cap
	new  func() Msg
}

var msgTypes = map[MsgType]msgInfo{
	TypeHello:       {"hello", MaxSmallPayload, func() Msg { return new(Hello) }},
	TypeLayout:      {"layout", MaxMsgPayload, func() Msg { return new(Layout) }},
	TypeRoundDone:   {"round-done", MaxSmallPayload, func() Msg { return new(RoundDone) }},
	TypeFreeze:      {"freeze", MaxSmallPayload, func() Msg { return new(Freeze) }},
	TypeState:       {"state", MaxMsgPayload, func() Msg { return new(State) }},
	TypeReady:       {"ready", MaxSmallPayload, func() Msg { return new(Ready) }},
	TypeCommit:      {"commit", MaxSmallPayload, func() Msg { return new(Commit) }},
	TypeResumed:     {"resumed", MaxSmallPayload, func() Msg { return new(Resumed) }},
	TypeAbort:       {"abort", MaxSmallPayload, func() Msg { return new(Abort) }},
	TypeStatusQuery: {"status-query", MaxSmallPayload, func() Msg { return new(StatusQuery) }},
	TypeStatusReply: {"status-reply", MaxSmallPayload, func() Msg { return new(StatusReply) }},
	TypeError:       {"error", MaxSmallPayload, func() Msg { return new(Error) }},
	TypeFilesQuery:  {"files-query", MaxMsgPayload, func() Msg { return new(FilesQuery) }},
	TypeFilesReply:  {"files-reply", MaxMsgPayload, func() Msg { return new(FilesReply) }},
}

// Role is the part an end plays in a migration.
type Role string

const (
	RoleSource Role = "source"
	RoleTarget Role = "target"
)

// Limits checked on every message, read or written.
const (
	MaxFeatures   = 64   // entries in Hello.Features
	MaxNameLen    = 64   // a feature name, an error code
	MaxTextLen    = 4096 // Abort.Reason, Error.Text
	MaxPID        = 1 << 22
	MaxMsgVersion = 1<<16 - 1
)

// Hello opens the conversation, from each end.
type Hello struct {
	// Version is the migration protocol version the sender speaks (>= 1).
	Version int `json:"version"`
	// SessionID is the transport session's ID.
	SessionID string `json:"session_id"`
	Role      Role   `json:"role"`
	// PID is the process being migrated (source), or 0.
	PID int `json:"pid"`
	// Features are optional abilities, names of [a-z0-9._-].
	Features []string `json:"features,omitempty"`
}

// FeatureRoundAcks, in both Hellos, has the target answer each pre-copy
// round's RoundDone with a RoundDone of its own once every page of the
// round is in the process being built, and the source wait for the last
// one before it freezes: pages sent but not yet applied would otherwise
// be applied in the downtime.
const FeatureRoundAcks = "round-acks"

// FeaturePostCopy, in the source's Hello, says the migration may end in
// post-copy (its State then lists the pages still missing): the target
// readies a userfaultfd in the process it builds. The target echoes it if
// it can serve post-copy.
const FeaturePostCopy = "post-copy"

// FeatureSameVMAs, in the source's Hello, says its later layouts and its
// State may leave out the areas of a process that are those of the
// previous layout naming it (handoff.LiveLayout.SameVMAs,
// handoff.LiveState.SameVMAs); the target echoes it if it fills them in.
// Without it every layout and the State list every area.
const FeatureSameVMAs = "same-vmas"

// FeatureContainer, in the source's Hello, says the process is the init
// of a container (a PID namespace of its own), moved with its tree: the
// target may give its processes other PIDs outside the container where
// theirs are taken, so a PID taken there is judged at the first Layout
// (which says whether it is a container), not refused at the Hello.
const FeatureContainer = "container"

// HasFeature says whether h announces feature f.
func (h *Hello) HasFeature(f string) bool {
	for _, x := range h.Features {
		if x == f {
			return true
		}
	}
	return false
}

// Layout is the process layout for a round (the first, or a round that
// changed it).
type Layout struct {
	Round uint32          `json:"round"`
	Body  json.RawMessage `json:"body"`
}

// RoundDone says every page of Round has been sent on every page stream.
type RoundDone struct {
	Round uint32          `json:"round"`
	Body  json.RawMessage `json:"body,omitempty"`
}

// Freeze says the process is frozen; the final round and State follow.
type Freeze struct {
	Body json.RawMessage `json:"body,omitempty"`
}

// State carries the core state of the frozen process.
type State struct {
	Body json.RawMessage `json:"body"`
}

// Ready says the target has restored the process, still stopped.
type Ready struct {
	Body json.RawMessage `json:"body,omitempty"`
}

// Commit tells the target to resume the process.
type Commit struct {
	// Nonce is a random value the target's Resumed gives back: that
	// Resumed answers this commit (one sent before the target had it,
	// by a broken or hostile target, cannot name it).
	Nonce string          `json:"nonce,omitempty"`
	Body  json.RawMessage `json:"body,omitempty"`
}

// Resumed says the process runs on the target.
type Resumed struct {
	Nonce string          `json:"nonce,omitempty"` // the Commit's
	Body  json.RawMessage `json:"body,omitempty"`
}

// Abort ends the migration before commit.
type Abort struct {
	Reason string `json:"reason"`
	// Code, if set, says what kind of refusal it is (a short name of
	// [a-z0-9._-], as Error's), for the peer to type its error.
	Code string `json:"code,omitempty"`
}

// StatusQuery asks the target for the outcome of a session.
type StatusQuery struct {
	SessionID string `json:"session_id"`
}

// StatusReply answers a StatusQuery.
type StatusReply struct {
	SessionID string  `json:"session_id"`
	Outcome   Outcome `json:"outcome"`
}

// FilesQuery asks the target, first on a connection (a migration's Hello
// may follow), what it sees at the paths of the files the process writes
// (internal/filesync.Query is its Body).
type FilesQuery struct {
	Body json.RawMessage `json:"body"`
}

// FilesReply answers a FilesQuery (internal/filesync.Reply).
type FilesReply struct {
	Body json.RawMessage `json:"body"`
}

// Error is a coded error; Code is a short name of [a-z0-9._-].
type Error struct {
	Code string `json:"code"`
	Text string `json:"text"`
}

func (*Hello) MsgType() MsgType       { return TypeHello }
func (*Layout) MsgType() MsgType      { return TypeLayout }
func (*RoundDone) MsgType() MsgType   { return TypeRoundDone }
func (*Freeze) MsgType() MsgType      { return TypeFreeze }
func (*State) MsgType() MsgType       { return TypeState }
func (*Ready) MsgType() MsgType       { return TypeReady }
func (*Commit) MsgType() MsgType      { return TypeCommit }
func (*Resumed) MsgType() MsgType     { return TypeResumed }
func (*Abort) MsgType() MsgType       { return TypeAbort }
func (*StatusQuery) MsgType() MsgType { return TypeStatusQuery }
func (*StatusReply) MsgType() MsgType { return TypeStatusReply }
func (*Error) MsgType() MsgType       { return TypeError }
func (*FilesQuery) MsgType() MsgType  { return TypeFilesQuery }
func (*FilesReply) MsgType() MsgType  { return TypeFilesReply }

func (m *Hello) validate() error {
	if m.Version < 1 || m.Version > MaxMsgVersion {
		return fmt.Errorf("protocol version %d out of range", m.Version)
	}
	if !ValidSessionID(m.SessionID) {
		return fmt.Errorf("session ID %q is not 32 lower-case hex digits", clip(m.SessionID))
	}
	if m.Role != RoleSource && m.Role != RoleTarget {
		return fmt.Errorf("unknown role %q", clip(string(m.Role)))
	}
	if m.PID < 0 || m.PID > MaxPID {
		return fmt.Errorf("PID %d out of range", m.PID)
	}
	if len(m.Features) > MaxFeatures {
		return fmt.Errorf("%d features, at most %d", len(m.Features), MaxFeatures)
	}
	for _, f := range m.Features {
		if !validName(f) {
			return fmt.Errorf("bad feature name %q", clip(f))
		}
	}
	return nil
}

func (m *Layout) validate() error {
	if len(m.Body) == 0 {
		return fmt.Errorf("layout without a body")
	}
	return nil
}

func (m *RoundDone) validate() error { return nil }

func (m *FilesQuery) validate() error {
	if len(m.Body) == 0 {
		return fmt.Errorf("files query without a body")
	}
	return nil
}

func (m *FilesReply) validate() error {
	if len(m.Body) == 0 {
		return fmt.Errorf("files reply without a body")
	}
	return nil
}
func (m *Freeze) validate() error  { return nil }
func (m *Ready) validate() error   { return nil }
func (m *Commit) validate() error  { return nil }
func (m *Resumed) validate() error { return nil }

func (m *State) validate() error {
	if len(m.Body) == 0 {
		return fmt.Errorf("state without a body")
	}
	return nil
}

func (m *Abort) validate() error {
	if len(m.Reason) > MaxTextLen {
		return fmt.Errorf("reason is %d bytes, at most %d", len(m.Reason), MaxTextLen)
	}
	if m.Code != "" && !validName(m.Code) {
		return fmt.Errorf("bad abort code %q", clip(m.Code))
	}
	return nil
}

func (m *StatusQuery) validate() error {
	if !ValidSessionID(m.SessionID) {
		return fmt.Errorf("session ID %q is not 32 lower-case hex digits", clip(m.SessionID))
	}
	return nil
}

func (m *StatusReply) validate() error {
	if !ValidSessionID(m.SessionID) {
		return fmt.Errorf("session ID %q is not 32 lower-case hex digits", clip(m.SessionID))
	}
	if m.Outcome > OutcomeAborted {
		return fmt.Errorf("unknown outcome %d", uint8(m.Outcome))
	}
	return nil
}

func (m *Error) validate() error {
	if !validName(m.Code) {
		return fmt.Errorf("bad error code %q", clip(m.Code))
	}
	if len(m.Text) > MaxTextLen {
		return fmt.Errorf("text is %d bytes, at most %d", len(m.Text), MaxTextLen)
	}
	return nil
}

// validName: 1..MaxNameLen bytes of [a-z0-9._-].
func validName(s string) bool {
	if len(s) == 0 || len(s) > MaxNameLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// clip shortens a string from the network for an error message.
func clip(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}

// Outcome is what became of a session, as the target remembers it.
type Outcome uint8

const (
	OutcomeUnknown   Outcome = iota // no such session (or forgotten)
	OutcomeCommitted                // commit received; resume not (yet) confirmed
	OutcomeResumed                  // the process runs on the target
	OutcomeAborted                  // aborted: the husk is gone, the source keeps the process
)

var outcomeNames = [...]string{"unknown", "committed", "resumed", "aborted"}

func (o Outcome) String() string {
	if int(o) < len(outcomeNames) {
		return outcomeNames[o]
	}
	return fmt.Sprintf("outcome(%d)", uint8(o))
}

// MarshalText writes the outcome's name.
func (o Outcome) MarshalText() ([]byte, error) {
	if int(o) >= len(outcomeNames) {
		return nil, fmt.Errorf("unknown outcome %d", uint8(o))
	}
	return []byte(outcomeNames[o]), nil
}

// UnmarshalText reads an outcome's name.
func (o *Outcome) UnmarshalText(b []byte) error {
	for i, n := range outcomeNames {
		if string(b) == n {
			*o = Outcome(i)
			return nil
		}
	}
	return fmt.Errorf("unknown outcome %q", clip(string(b)))
}

// ClipText makes s fit a message's text field: valid UTF-8 of at most
// MaxTextLen bytes, cut at a rune boundary.
func ClipText(s string) string {
	s = strings.ToValidUTF8(s, "?")
	if len(s) <= MaxTextLen {
		return s
	}
	cut := MaxTextLen
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut]
}
