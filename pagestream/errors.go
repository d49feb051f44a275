package pagestream

import (
	"errors"
	"fmt"
)

// Sentinel errors. Every error the Reader returns for a bad stream is a
// *FrameError whose Err is one of these, so callers can test the kind with
// errors.Is and still see where in the stream it happened. Errors from the
// underlying io.Reader are wrapped in a *FrameError unchanged (a short read is
// reported as ErrTruncated).
var (
	ErrBadMagic      = errors.New("pagestream: bad magic")
	ErrBadVersion    = errors.New("pagestream: unsupported version")
	ErrBadHeader     = errors.New("pagestream: bad stream header")
	ErrChecksum      = errors.New("pagestream: checksum mismatch")
	ErrTruncated     = errors.New("pagestream: truncated stream")
	ErrFrameTooLarge = errors.New("pagestream: frame too large")
	ErrOutOfOrder    = errors.New("pagestream: round out of order")
	ErrSequence      = errors.New("pagestream: frame sequence gap")
	ErrUnknownFrame  = errors.New("pagestream: unknown frame type")
	ErrUnknownCodec  = errors.New("pagestream: unknown codec")
	ErrMalformed     = errors.New("pagestream: malformed frame")
	ErrCorrupt       = errors.New("pagestream: corrupt compressed data")
	ErrBadAddress    = errors.New("pagestream: bad page address")
	ErrTotals        = errors.New("pagestream: end frame totals mismatch")

	// ErrClosed is returned by a Writer or Reader used after Close or Abort.
	ErrClosed = errors.New("pagestream: closed")
	// ErrAborted is what a Writer's methods return after Abort.
	ErrAborted = errors.New("pagestream: writer aborted")
)

// FrameError is a decoding error: what was wrong (Err, a sentinel above or
// an error of the underlying reader), where (Offset, the byte offset in the
// stream of the stream header or frame that is bad), and the details
// (Reason).
type FrameError struct {
	Offset int64
	Reason string
	Err    error
}

func (e *FrameError) Error() string {
	if e.Reason == "" {
		return fmt.Sprintf("%v at offset %d", e.Err, e.Offset)
	}
	return fmt.Sprintf("%v at offset %d: %s", e.Err, e.Offset, e.Reason)
}

func (e *FrameError) Unwrap() error { return e.Err }

func frameErr(off int64, err error, format string, args ...any) *FrameError {
	return &FrameError{Offset: off, Reason: fmt.Sprintf(format, args...), Err: err}
}
