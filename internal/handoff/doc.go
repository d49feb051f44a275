// Package handoff is the live-migration protocol between a source and a
// target, both sides of it: the order of the control messages and what
// each side does between them (RunSource, RunTarget), the phases, the
// outcomes of a session and the one record that decides them on the target
// (Outcomes), the status questions that learn an uncertain outcome
// (QueryOutcome), the errors either side returns, their defaults, and the
// bodies a live migration puts in its Layout and State messages
// (LiveLayout, LiveState). DESIGN.md, "never two copies, never none", is
// the rule it implements; source.go and target.go draw each side's
// sequence.
//
// What it must not know: processes. The work of each side (copying pages,
// freezing, restoring, resuming) comes in through SourceActions and
// TargetActions, which the source and target packages implement; the
// control link comes in through Conn, which transport.Control implements.
// handoff never imports source or target, and they never import each
// other: this package is the only thing both sides share about the
// protocol (internal/deps checks it).
//
// What belongs where: transport owns the bytes (TCP, TLS, authentication,
// yamux, the streams) and the wire format of a control message (the frame,
// its checksums and caps, the message structs and their field checks,
// decoded strictly from outside input and fuzzed there: transport/doc.go
// draws the frame). handoff owns the protocol's sequence and the meaning of
// the messages: which may come when, what a side does when one comes out
// of place, how a session ends. So a change to the frame is made in
// transport; a change to who sends what when is made here, on both sides at
// once, and its tests (the fault-injection harness that drives the two
// state machines against each other, with a fault at every message, action
// and status question) run here without either side's process machinery.
package handoff
