package transport

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"reflect"
	"strconv"
)

// Control frame format; the package comment draws the layout.
const (
	// MsgVersion is the control frame version this package writes and the
	// only one it reads.
	MsgVersion = 1

	// MaxMsgPayload caps the payload of the large messages (Layout,
	// State); MaxSmallPayload caps every other message.
	MaxMsgPayload   = 16 << 20
	MaxSmallPayload = 64 << 10

	msgHeaderSize  = 12
	msgTrailerSize = 4
	// readChunk is how much payload ReadMsg allocates ahead of the bytes
	// it has actually received: a frame that claims 16 MiB and sends ten
	// bytes costs 64 KiB, not 16 MiB.
	readChunk = 64 << 10
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// WriteMsg writes m as one frame. It writes the frame with a single Write.
// Deadlines are the caller's: set them on w.
func WriteMsg(w io.Writer, m Msg) error {
	b, err := AppendMsg(nil, m)
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// AppendMsg appends the frame of m to b.
func AppendMsg(b []byte, m Msg) ([]byte, error) {
	if m == nil || reflect.ValueOf(m).IsNil() {
		return b, msgErr(0, 0, ErrMsgInvalid, "nil message")
	}
	t := m.MsgType()
	info, ok := msgTypes[t]
	if !ok {
		return b, msgErr(0, t, ErrMsgType, "cannot encode type %d", uint16(t))
	}
	if err := m.validate(); err != nil {
		return b, msgErr(0, t, ErrMsgInvalid, "%v", err)
	}
	payload, ok, err := appendBodyMsg(nil, m)
	if !ok {
		payload, err = json.Marshal(m)
	}
	if err != nil {
		return b, msgErr(0, t, ErrMsgPayload, "encode: %v", err)
	}
	if len(payload) > info.max {
		return b, msgErr(0, t, ErrMsgTooLarge, "payload %d bytes, at most %d", len(payload), info.max)
	}
	start := len(b)
	b = append(b, MsgVersion, 0)
	b = binary.LittleEndian.AppendUint16(b, uint16(t))
	b = binary.LittleEndian.AppendUint32(b, uint32(len(payload)))
	b = binary.LittleEndian.AppendUint32(b, crc32.Checksum(b[start:start+8], castagnoli))
	b = append(b, payload...)
	b = binary.LittleEndian.AppendUint32(b, crc32.Checksum(b[start:], castagnoli))
	return b, nil
}

// ReadMsg reads one frame from r and decodes it. It reads exactly the
// frame's bytes, so further frames (or other data) can follow. At a clean
// end of r, before the first byte of a frame, it returns io.EOF; any other
// failure is a *MsgError with the offset within the frame and a sentinel,
// or an error of r wrapped in one. Deadlines are the caller's: set them on
// r.
func ReadMsg(r io.Reader) (Msg, error) {
	var hdr [msgHeaderSize]byte
	if n, err := io.ReadFull(r, hdr[:]); err != nil {
		if n == 0 && err == io.EOF {
			return nil, io.EOF
		}
		return nil, readErr(int64(n), 0, err, "header")
	}
	if hdr[0] != MsgVersion {
		return nil, msgErr(0, 0, ErrMsgVersion, "version %d, want %d", hdr[0], MsgVersion)
	}
	if got, want := binary.LittleEndian.Uint32(hdr[8:12]), crc32.Checksum(hdr[:8], castagnoli); got != want {
		return nil, msgErr(8, 0, ErrMsgHeaderCRC, "header CRC %#08x, computed %#08x", got, want)
	}
	if hdr[1] != 0 {
		return nil, msgErr(1, 0, ErrMsgFlags, "flags %#02x", hdr[1])
	}
	t := MsgType(binary.LittleEndian.Uint16(hdr[2:4]))
	info, ok := msgTypes[t]
	if !ok {
		return nil, msgErr(2, 0, ErrMsgType, "type %d", uint16(t))
	}
	n := binary.LittleEndian.Uint32(hdr[4:8])
	if int64(n) > int64(info.max) {
		return nil, msgErr(4, t, ErrMsgTooLarge, "payload %d bytes, at most %d", n, info.max)
	}
	// The buffer grows (doubling) only as bytes arrive.
	want := msgHeaderSize + int(n) + msgTrailerSize
	buf := make([]byte, msgHeaderSize, min(want, msgHeaderSize+readChunk))
	copy(buf, hdr[:])
	for len(buf) < want {
		if len(buf) == cap(buf) {
			nb := make([]byte, len(buf), min(want, 2*cap(buf)))
			copy(nb, buf)
			buf = nb
		}
		m, err := io.ReadFull(r, buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+m]
		if err != nil {
			return nil, readErr(int64(len(buf)), t, err, "payload")
		}
	}
	body := buf[msgHeaderSize : msgHeaderSize+int(n)]
	trailer := buf[msgHeaderSize+int(n):]
	if got, want := binary.LittleEndian.Uint32(trailer), crc32.Checksum(buf[:msgHeaderSize+int(n)], castagnoli); got != want {
		return nil, msgErr(int64(msgHeaderSize+n), t, ErrMsgChecksum, "CRC %#08x, computed %#08x", got, want)
	}

	m := info.new()
	if err := decodeStrict(body, m); err != nil {
		return nil, msgErr(msgHeaderSize, t, ErrMsgPayload, "%v", err)
	}
	if err := m.validate(); err != nil {
		return nil, msgErr(msgHeaderSize, t, ErrMsgInvalid, "%v", err)
	}
	return m, nil
}

func readErr(off int64, t MsgType, err error, what string) error {
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return msgErr(off, t, ErrMsgTruncated, "stream ends in the %s", what)
	}
	return &MsgError{Offset: off, Type: t, Reason: "reading the " + what, Err: err}
}

// The state and the layouts are the big messages (tens to hundreds of
// KiB for a tree), and a live migration sends the last layout and the
// state in its downtime: their payloads are written and read with their
// body as it is (appendBodyMsg, readBodyMsg), checked by json.Valid
// alone, not by the generic encoder and decoder, which went over the
// body two and three times (encoding compacted it, decoding tokenized and
// copied it). The payload is the one json.Marshal makes but for the body,
// which is not compacted; readBodyMsg takes only that exact form and
// leaves any other to decodeStrict's generic path, with the same result.

const (
	bodyPrefix  = `{"body":`
	roundPrefix = `{"round":`
	roundBody   = `,"body":`
)

// appendBodyMsg appends the payload of a State or a Layout with a body to
// b; ok false for another message (or one without a body), which
// json.Marshal encodes. A body that is not valid JSON is an error, as
// json.Marshal's.
func appendBodyMsg(b []byte, m Msg) (_ []byte, ok bool, err error) {
	var body json.RawMessage
	switch m := m.(type) {
	case *State:
		if body = m.Body; len(body) == 0 {
			return b, false, nil
		}
		b = append(b, bodyPrefix...)
	case *Layout:
		if body = m.Body; len(body) == 0 {
			return b, false, nil
		}
		b = append(b, roundPrefix...)
		b = strconv.AppendUint(b, uint64(m.Round), 10)
		b = append(b, roundBody...)
	default:
		return b, false, nil
	}
	if !json.Valid(body) {
		return b, true, fmt.Errorf("the body is not valid JSON")
	}
	b = append(b, body...)
	return append(b, '}'), true, nil
}

// readBodyMsg decodes p into m if m is a State or a Layout and p has the
// form appendBodyMsg writes; ok false leaves it to the generic decoder.
// The body is p's bytes (ReadMsg gives each message a buffer of its own).
func readBodyMsg(p []byte, m Msg) (ok bool) {
	var rest []byte
	switch m.(type) {
	case *State:
		r, found := bytes.CutPrefix(p, []byte(bodyPrefix))
		if !found {
			return false
		}
		rest = r
	case *Layout:
		r, found := bytes.CutPrefix(p, []byte(roundPrefix))
		if !found {
			return false
		}
		// A JSON number without a sign, fraction, exponent or leading
		// zero that fits in a uint32.
		n := 0
		for n < len(r) && n < 11 && r[n] >= '0' && r[n] <= '9' {
			n++
		}
		if n == 0 || (n > 1 && r[0] == '0') {
			return false
		}
		v, err := strconv.ParseUint(string(r[:n]), 10, 32)
		if err != nil {
			return false
		}
		r, found = bytes.CutPrefix(r[n:], []byte(roundBody))
		if !found {
			return false
		}
		m.(*Layout).Round = uint32(v)
		rest = r
	default:
		return false
	}
	body, found := bytes.CutSuffix(rest, []byte("}"))
	if !found || len(body) == 0 || isJSONSpace(body[0]) || isJSONSpace(body[len(body)-1]) || !json.Valid(body) {
		if l, ok := m.(*Layout); ok {
			l.Round = 0
		}
		return false
	}
	switch m := m.(type) {
	case *State:
		m.Body = body
	case *Layout:
		m.Body = body
	}
	return true
}

func isJSONSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// decodeStrict decodes one JSON object into m: an object (not null or
// another value), no unknown fields, no trailing data.
func decodeStrict(b []byte, m Msg) error {
	if readBodyMsg(b, m) {
		return nil
	}
	return decodeGeneric(b, m)
}

// decodeGeneric is decodeStrict for any payload, by encoding/json.
func decodeGeneric(b []byte, m Msg) error {
	if t := bytes.TrimLeft(b, " \t\r\n"); len(t) == 0 || t[0] != '{' {
		return fmt.Errorf("payload is not a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(m); err != nil {
		return err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("data after the JSON object")
	}
	return nil
}
