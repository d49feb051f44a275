package target

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/procmig/migrate/internal/filesync"
)

// answerFiles answers a source's question, before a migration, about the
// files its process writes (handoff.TargetConfig.Files): what this host
// sees at their paths, looked at without writing or following a symlink.
func answerFiles(_ context.Context, body json.RawMessage) (json.RawMessage, error) {
	q, err := filesync.DecodeQuery(body)
	if err != nil {
		return nil, err
	}
	return json.Marshal(filesync.Answer(q))
}

// FilesError: a file the source copies (`migrate --to --sync`) that this
// host refuses to write (another owner's file at its path, a symlink on
// the way, a directory of the source's tree missing here): the source
// gets it as a refusal.
type FilesError struct {
	Err error
}

func (e *FilesError) Error() string { return "synced files: " + e.Err.Error() }
func (e *FilesError) Unwrap() error { return e.Err }

// AbortCode names the refusal in the abort a live migration's source gets.
func (e *FilesError) AbortCode() string { return "files-not-shared" }

// syncIn writes the files the source copies (handoff.LiveLayout.Sync),
// from their stream, while the rounds go on.
type syncIn struct {
	a    *filesync.Applier
	conn io.ReadCloser
	done chan struct{} // closed when the applier is done with the stream
	err  error         // then: nil after the end record

	mu      sync.Mutex
	applied int64         // the last round record applied (-1: none yet)
	tick    chan struct{} // closed at the next round record
}

// newSyncIn prepares to write the trees roots, from the first layout.
func newSyncIn(roots []string, tag string) (*syncIn, error) {
	a, err := filesync.NewApplier(roots, tag)
	if err != nil {
		if errors.Is(err, filesync.ErrRefused) {
			return nil, &FilesError{Err: err}
		}
		return nil, err
	}
	return &syncIn{a: a, done: make(chan struct{}), applied: -1, tick: make(chan struct{})}, nil
}

// run applies the stream conn until its end record.
func (s *syncIn) run(conn io.ReadCloser, roots []string) {
	s.conn = conn
	go func() {
		defer close(s.done)
		err := s.a.Apply(filesync.NewReader(conn, roots), func(n uint32) {
			s.mu.Lock()
			s.applied = int64(n)
			close(s.tick)
			s.tick = make(chan struct{})
			s.mu.Unlock()
		})
		if errors.Is(err, filesync.ErrRefused) {
			err = &FilesError{Err: err}
		}
		s.err = err
	}()
}

// wait returns once the files of round n are written (the source sends
// them before the round's RoundDone), or the stream ended (its end
// record comes in the frozen window, a final round's RoundDone may come
// first): a synced file refused here aborts the pre-copy, and the
// source's last pre-copy round, acknowledged, leaves only the frozen
// window's changes to write.
func (s *syncIn) wait(ctx context.Context, n uint32) error {
	if s == nil || s.conn == nil {
		return nil
	}
	for {
		s.mu.Lock()
		applied, tick := s.applied, s.tick
		s.mu.Unlock()
		if applied >= int64(n) {
			return nil
		}
		select {
		case <-tick:
		case <-s.done:
			return s.err
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
}

// commit waits for the stream's end and puts the files in place.
// Preconditions: the source is frozen (the State came).
func (s *syncIn) commit(ctx context.Context) error {
	if s.conn == nil {
		return errors.New("synced files: no stream")
	}
	select {
	case <-s.done:
		if s.err != nil {
			return fmt.Errorf("synced files: %w", s.err)
		}
	case <-ctx.Done():
		return context.Cause(ctx)
	}
	if err := s.a.Commit(); err != nil {
		return &FilesError{Err: err}
	}
	return nil
}

// close ends the stream and releases the files; discard removes what
// was written (unless committed).
func (s *syncIn) close(discard bool) {
	if s == nil {
		return
	}
	if s.conn != nil {
		s.conn.Close()
		<-s.done // the applier is done with the files
	}
	if discard {
		s.a.Discard()
	}
	s.a.Close()
}
