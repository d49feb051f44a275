package handoff

// Post-copy: the process resumes on the target before all its pages are
// there. The handoff's sequence is the same up to Resumed; then, before
// the frozen original is killed, the source serves the missing pages
// (PostCopySource.FinishPostCopy) until the target says every page is in.
// Only then the original is killed: until then it stays frozen. If the
// link or either side dies before that, the process on the target cannot
// go on (a page it needs may never come): the target kills it, and the
// source leaves its original frozen (a *PostCopyError) for the operator,
// since neither copy is the process as it ran.

import "fmt"

// PostCopySource is a SourceActions that may end in post-copy.
type PostCopySource interface {
	// FinishPostCopy serves the pages the target's process still lacks,
	// after Resumed and before KillOriginal, until the target has them
	// all. It returns nil at once if the migration did not end in
	// post-copy.
	FinishPostCopy() error
}

// PostCopyTarget is a TargetActions that can serve post-copy: it echoes
// transport.FeaturePostCopy in its Hello when PostCopyReady says so.
type PostCopyTarget interface {
	PostCopyReady() bool
}

// PostCopyError: the process resumed on the target in post-copy, and the
// pages it still lacked could not all be brought over: the target kills
// its copy (it cannot go on without them), and the original is left
// frozen here, as it was at the freeze.
type PostCopyError struct {
	PID     int
	Session string
	Err     error
	Freeze  error // LeaveFrozen's error
}

func (e *PostCopyError) Error() string {
	s := fmt.Sprintf("post-copy of process %d (session %s) did not finish: %v. The process is lost: its copy on the target cannot run "+
		"without the pages it lacked and is killed there; the original is left frozen on this host as it was at the freeze "+
		"(kill it; resuming it would run the process again from the freeze)", e.PID, e.Session, e.Err)
	if e.Freeze != nil {
		s += fmt.Sprintf(" (warning: keeping it frozen failed: %v)", e.Freeze)
	}
	return s
}

func (e *PostCopyError) Unwrap() []error { return []error{e.Err, e.Freeze} }

// PostCopyState, in LiveState, says the migration ends in post-copy:
// the pages of Missing are not on the target. It drops what it has of
// them from the process it built, registers their areas with a
// userfaultfd, and fills them after the resume, from the source's
// background stream and its answers to requests.
type PostCopyState struct {
	// Missing are runs of whole pages, sorted, not overlapping, each in
	// one private anonymous area of the final layout.
	Missing []PageSpan `json:"missing"`
}

// PageSpan is the pages [Start, End).
type PageSpan struct {
	Start uint64 `json:"start"`
	End   uint64 `json:"end"`
}

// MaxMissingSpans caps PostCopyState.Missing.
const MaxMissingSpans = 4096
