package pagestream

// Post-copy's request stream. After a post-copy migration's process
// resumes on the target, its pages not yet sent come in two ways: a page
// stream (this package's format) the source sends in the background, and
// answers to the target's requests for the pages its process faults on,
// on a request stream of their own so that an answer never waits behind
// the background. The request stream carries, both ways, fixed-size
// little-endian records:
//
// Target to source, a message (PostCopyMsgSize bytes):
//
//	off size field
//	  0    1 kind: 1 request, 2 done, 3 applied
//	  1    3 reserved, 0
//	  4    4 request: pages, 1..MaxRequestPages; else 0
//	  8    8 request: address of the first page, page-aligned; done: pages
//	         the target's process faulted on; applied: the background
//	         stream's pages taken in so far
//	 16    8 done: the faults' summed latency, in microseconds; else 0
//	 24    8 done: the longest fault latency, in microseconds; else 0
//
// An applied lets the source keep little of the background in flight, so
// that an answer never queues behind much of it.
//
// Source to target, a reply to each request, in order: a header
// (ReplyHeaderSize bytes), then the pages unless they are all zeros:
//
//	off size field
//	  0    8 address of the first page, as requested
//	  8    4 pages, as requested
//	 12    4 flags: bit 0 all the pages are zeros (no data follows)
//	 16    4 CRC of the data (0 with bit 0)
//	 20    4 reserved, 0
//
// A done says every missing page is in place: the source stops and closes
// the stream.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// Sizes of the request stream's records.
const (
	PostCopyMsgSize = 32
	ReplyHeaderSize = 24
	// MaxRequestPages caps the pages of one request (and reply).
	MaxRequestPages = 256
)

// Kinds of PostCopyMsg.
const (
	MsgRequest uint8 = 1
	MsgDone    uint8 = 2
	MsgApplied uint8 = 3
)

// ReplyZero is the reply flag of pages that are all zeros.
const ReplyZero = 1

// ErrBadPostCopyMsg: a record of the request stream does not decode.
var ErrBadPostCopyMsg = errors.New("pagestream: bad post-copy record")

// PostCopyMsg is a target's message on the request stream.
type PostCopyMsg struct {
	Kind  uint8
	Pages uint32 // request
	Addr  uint64 // request
	// Done: what the target saw of its process's faults.
	Faults, LatencySumUS, LatencyMaxUS uint64
	// Applied: the background's pages taken in so far.
	Applied uint64
}

// Encode appends the message's record to b.
func (m PostCopyMsg) Encode(b []byte) []byte {
	var r [PostCopyMsgSize]byte
	le := binary.LittleEndian
	r[0] = m.Kind
	switch m.Kind {
	case MsgRequest:
		le.PutUint32(r[4:], m.Pages)
		le.PutUint64(r[8:], m.Addr)
	case MsgDone:
		le.PutUint64(r[8:], m.Faults)
		le.PutUint64(r[16:], m.LatencySumUS)
		le.PutUint64(r[24:], m.LatencyMaxUS)
	case MsgApplied:
		le.PutUint64(r[8:], m.Applied)
	}
	return append(b, r[:]...)
}

// DecodePostCopyMsg decodes and checks one record.
func DecodePostCopyMsg(r []byte) (PostCopyMsg, error) {
	if len(r) != PostCopyMsgSize {
		return PostCopyMsg{}, fmt.Errorf("%w: %d bytes, want %d", ErrBadPostCopyMsg, len(r), PostCopyMsgSize)
	}
	le := binary.LittleEndian
	if r[1] != 0 || r[2] != 0 || r[3] != 0 {
		return PostCopyMsg{}, fmt.Errorf("%w: reserved bytes set", ErrBadPostCopyMsg)
	}
	m := PostCopyMsg{Kind: r[0]}
	switch m.Kind {
	case MsgRequest:
		m.Pages, m.Addr = le.Uint32(r[4:]), le.Uint64(r[8:])
		if err := checkRun(m.Addr, m.Pages); err != nil {
			return PostCopyMsg{}, err
		}
		if le.Uint64(r[16:]) != 0 || le.Uint64(r[24:]) != 0 {
			return PostCopyMsg{}, fmt.Errorf("%w: a request with the fields of a done", ErrBadPostCopyMsg)
		}
	case MsgDone:
		if le.Uint32(r[4:]) != 0 {
			return PostCopyMsg{}, fmt.Errorf("%w: a done with pages", ErrBadPostCopyMsg)
		}
		m.Faults, m.LatencySumUS, m.LatencyMaxUS = le.Uint64(r[8:]), le.Uint64(r[16:]), le.Uint64(r[24:])
	case MsgApplied:
		if le.Uint32(r[4:]) != 0 || le.Uint64(r[16:]) != 0 || le.Uint64(r[24:]) != 0 {
			return PostCopyMsg{}, fmt.Errorf("%w: an applied with other fields", ErrBadPostCopyMsg)
		}
		m.Applied = le.Uint64(r[8:])
	default:
		return PostCopyMsg{}, fmt.Errorf("%w: kind %d", ErrBadPostCopyMsg, m.Kind)
	}
	return m, nil
}

// checkRun checks a run of pages from addr of a request or reply.
func checkRun(addr uint64, pages uint32) error {
	switch {
	case addr%PageSize != 0:
		return fmt.Errorf("%w: address %#x is not page-aligned", ErrBadPostCopyMsg, addr)
	case pages == 0 || pages > MaxRequestPages:
		return fmt.Errorf("%w: %d pages, want 1..%d", ErrBadPostCopyMsg, pages, MaxRequestPages)
	case addr > math.MaxUint64-uint64(pages)*PageSize:
		return fmt.Errorf("%w: pages at %#x pass the end of the address space", ErrBadPostCopyMsg, addr)
	}
	return nil
}

// ReplyHeader heads the source's reply to a request.
type ReplyHeader struct {
	Addr  uint64
	Pages uint32
	Zero  bool   // all zeros: no data follows
	CRC   uint32 // of the data
}

// DataLen is the length of the data that follows the header.
func (h ReplyHeader) DataLen() int {
	if h.Zero {
		return 0
	}
	return int(h.Pages) * PageSize
}

// Encode appends the header to b.
func (h ReplyHeader) Encode(b []byte) []byte {
	var r [ReplyHeaderSize]byte
	le := binary.LittleEndian
	le.PutUint64(r[0:], h.Addr)
	le.PutUint32(r[8:], h.Pages)
	if h.Zero {
		le.PutUint32(r[12:], ReplyZero)
	} else {
		le.PutUint32(r[16:], h.CRC)
	}
	return append(b, r[:]...)
}

// DecodeReplyHeader decodes and checks a reply's header.
func DecodeReplyHeader(r []byte) (ReplyHeader, error) {
	if len(r) != ReplyHeaderSize {
		return ReplyHeader{}, fmt.Errorf("%w: reply header of %d bytes, want %d", ErrBadPostCopyMsg, len(r), ReplyHeaderSize)
	}
	le := binary.LittleEndian
	h := ReplyHeader{Addr: le.Uint64(r[0:]), Pages: le.Uint32(r[8:]), CRC: le.Uint32(r[16:])}
	flags := le.Uint32(r[12:])
	switch {
	case flags&^ReplyZero != 0:
		return ReplyHeader{}, fmt.Errorf("%w: reply flags %#x", ErrBadPostCopyMsg, flags)
	case le.Uint32(r[20:]) != 0:
		return ReplyHeader{}, fmt.Errorf("%w: reply reserved bytes set", ErrBadPostCopyMsg)
	}
	h.Zero = flags&ReplyZero != 0
	if h.Zero && h.CRC != 0 {
		return ReplyHeader{}, fmt.Errorf("%w: a zero reply with a CRC", ErrBadPostCopyMsg)
	}
	if err := checkRun(h.Addr, h.Pages); err != nil {
		return ReplyHeader{}, err
	}
	return h, nil
}

// CheckReplyData checks the data of a reply against its header's CRC.
func CheckReplyData(h ReplyHeader, data []byte) error {
	if len(data) != h.DataLen() {
		return fmt.Errorf("%w: %d bytes of data, want %d", ErrBadPostCopyMsg, len(data), h.DataLen())
	}
	if !h.Zero && crc32c(data) != h.CRC {
		return fmt.Errorf("%w: the reply's data at %#x fails its CRC", ErrBadPostCopyMsg, h.Addr)
	}
	return nil
}

// ReplyCRC is the CRC a reply's header carries for data.
func ReplyCRC(data []byte) uint32 { return crc32c(data) }
