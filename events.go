package migrate

import (
	"strconv"
	"time"

	"github.com/procmig/migrate/source"
)

// An Event is a step of a migration, as Migrate (MigrateOptions.OnEvent)
// or Serve (ServeOptions.OnEvent) takes it.
//
// Events go to a callback rather than a channel: the callback sees each
// one at the moment it happens, in order, and the migration never waits
// for a reader or drops an event because none came; a caller that wants
// a channel sends to its own from the callback.
type Event struct {
	Kind EventKind
	Time time.Time
	// PID is the process migrated.
	PID int
	// LocalPID is, in Serve's events, the process's PID on this host:
	// PID, unless it is a container's init whose PIDs outside were taken
	// here (its processes got others: Report.Renumbered on the source).
	LocalPID int
	// Session is the migration's session ID (what `migrate recover`
	// takes); empty on an EventAborted before the target was reached.
	Session string
	// Peer is the source's address (Serve's events).
	Peer string
	// Round is the round's number (EventRoundStarted,
	// EventRoundFinished), from 0; the last round is the frozen one.
	Round int
	// Stats are the round's figures (EventRoundFinished): pages dirty and
	// sent, bytes raw and on the wire, its time.
	Stats *RoundReport
	// Transfer is how far the round has gone (EventRoundProgress).
	Transfer *Transfer
	// Err is why the migration failed (EventAborted,
	// EventSessionAborted), as Migrate returns it.
	Err error
}

// EventKind says which step an Event is.
type EventKind int

// The events of Migrate, in order: EventRoundStarted and
// EventRoundFinished for each round (the last round after EventFrozen),
// with EventRoundProgress between them every quarter of a second while
// the round runs (from a goroutine of the migration's own, never at the
// same time as another event and never after the round's end),
// EventCommitted, EventResumed. A migration that fails and gives the
// original back ends with EventAborted instead, at any point (after
// EventCommitted too, if the target aborted); one whose commit's outcome
// could not be learned ends without either (Migrate's error, an
// *UndecidedError, says what to do).
//
// The events of Serve, for each migration, in order: EventSessionStarted,
// EventSessionRestored, EventSessionCommitted; or EventSessionAborted after
// any step before EventSessionCommitted.
const (
	EventRoundStarted  EventKind = iota + 1 // a round of pages begins
	EventRoundFinished                      // every page of the round was sent
	EventFrozen                             // every thread of the original is stopped
	EventCommitted                          // the commit is sent: the point of no return
	EventResumed                            // the process runs on the target; the original is killed next (after post-copy, once the target has every page)
	EventAborted                            // the migration failed; the original runs on (unless Err says resuming it failed)

	EventSessionStarted   // a source began a migration: the PID is free here
	EventSessionRestored  // the process is whole here, stopped: the source is told ready
	EventSessionCommitted // the source committed, and the process runs here
	EventSessionAborted   // the migration failed before the process ran here; nothing of it is left

	EventRoundProgress // a round runs: Transfer says how far it has gone

	// EventSessionPostCopyDone: a process that resumed here with pages
	// missing (post-copy) has them all; with Err, they could not all come
	// and the process was killed: the migration lost it.
	EventSessionPostCopyDone
)

var eventNames = map[EventKind]string{
	EventRoundStarted:        "round-started",
	EventRoundFinished:       "round-finished",
	EventFrozen:              "frozen",
	EventCommitted:           "committed",
	EventResumed:             "resumed",
	EventAborted:             "aborted",
	EventSessionStarted:      "session-started",
	EventSessionRestored:     "session-restored",
	EventSessionCommitted:    "session-committed",
	EventSessionAborted:      "session-aborted",
	EventRoundProgress:       "round-progress",
	EventSessionPostCopyDone: "session-post-copy-done",
}

func (k EventKind) String() string {
	if s, ok := eventNames[k]; ok {
		return s
	}
	return "event(" + strconv.Itoa(int(k)) + ")"
}

// emitter turns the source's milestones into Events for a callback.
type emitter struct {
	f       func(Event)
	pid     int
	session string
}

func (e *emitter) emit(ev Event) {
	if e.f == nil {
		return
	}
	ev.Time, ev.PID = time.Now(), e.pid
	if ev.Session == "" {
		ev.Session = e.session
	}
	e.f(ev)
}

func (e *emitter) milestone(m source.Milestone) {
	e.session = m.Session
	switch m.Kind {
	case source.MilestoneRound:
		e.emit(Event{Kind: EventRoundStarted, Round: m.Round})
	case source.MilestoneFrozen:
		e.emit(Event{Kind: EventFrozen})
	case source.MilestoneCommit:
		e.emit(Event{Kind: EventCommitted})
	case source.MilestoneResumed:
		e.emit(Event{Kind: EventResumed})
	}
}

func (e *emitter) transfer(t source.Transfer) {
	e.emit(Event{Kind: EventRoundProgress, Round: t.Round, Transfer: &t})
}

func (e *emitter) aborted(err error) { e.emit(Event{Kind: EventAborted, Err: err}) }
