package transport

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"hash/crc32"
	"io"
	"reflect"
	"runtime"
	"strings"
	"testing"
)

var sampleID = "00112233445566778899aabbccddeeff"

// sampleMsgs has one message of every type.
func sampleMsgs() []Msg {
	return []Msg{
		&Hello{Version: 1, SessionID: sampleID, Role: RoleSource, PID: 1234, Features: []string{"uffd-wp", "zstd", "tcp-repair"}},
		&Hello{Version: 3, SessionID: sampleID, Role: RoleTarget},
		&Layout{Round: 0, Body: json.RawMessage(`{"vmas":[{"start":4096,"end":8192,"prot":"rw-p"}]}`)},
		&RoundDone{Round: 7},
		&RoundDone{Round: 8, Body: json.RawMessage(`{"pages":123}`)},
		&Freeze{},
		&State{Body: json.RawMessage(`{"threads":[{"tid":1234}],"fds":[0,1,2]}`)},
		&Ready{},
		&Ready{Body: json.RawMessage(`{"warnings":["rlimit"]}`)},
		&Commit{},
		&Resumed{Body: json.RawMessage(`{"downtime_ms":12}`)},
		&Abort{Reason: "target: PID 1234 is taken"},
		&Abort{},
		&Abort{Reason: "target: layout: System V segment 5: its key is taken", Code: "sysv-shm"},
		&StatusQuery{SessionID: sampleID},
		&StatusReply{SessionID: sampleID, Outcome: OutcomeResumed},
		&StatusReply{SessionID: sampleID, Outcome: OutcomeUnknown},
		&Error{Code: "pid-in-use", Text: "PID 1234 is taken by sleep"},
		&FilesQuery{Body: json.RawMessage(`{"files":[{"path":"/var/log/app.log","ino":12}]}`)},
		&FilesReply{Body: json.RawMessage(`{"files":[{"exists":true}]}`)},
	}
}

func TestMsgRoundTrip(t *testing.T) {
	var stream bytes.Buffer
	msgs := sampleMsgs()
	seen := map[MsgType]bool{}
	for _, m := range msgs {
		if err := WriteMsg(&stream, m); err != nil {
			t.Fatalf("WriteMsg(%T): %v", m, err)
		}
		seen[m.MsgType()] = true
	}
	if len(seen) != len(msgTypes) {
		t.Errorf("samples cover %d of %d types", len(seen), len(msgTypes))
	}
	for _, want := range msgs {
		got, err := ReadMsg(&stream)
		if err != nil {
			t.Fatalf("ReadMsg: %v", err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("read %#v, wrote %#v", got, want)
		}
	}
	if _, err := ReadMsg(&stream); err != io.EOF {
		t.Fatalf("at the end: %v, want io.EOF", err)
	}
}

// frame builds a frame by hand, with correct CRCs unless told otherwise.
func frame(version, flags byte, typ MsgType, payload []byte) []byte {
	b := []byte{version, flags}
	b = binary.LittleEndian.AppendUint16(b, uint16(typ))
	b = binary.LittleEndian.AppendUint32(b, uint32(len(payload)))
	b = binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
	b = append(b, payload...)
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

// withLength rewrites the length field of a frame (and its header CRC).
func withLength(f []byte, n uint32) []byte {
	f = bytes.Clone(f)
	binary.LittleEndian.PutUint32(f[4:8], n)
	binary.LittleEndian.PutUint32(f[8:12], crc32.Checksum(f[:8], castagnoli))
	return f
}

func TestReadMsgErrors(t *testing.T) {
	valid, _ := AppendMsg(nil, &Commit{})
	hello := `{"version":1,"session_id":"` + sampleID + `","role":"source","pid":1}`
	for _, tc := range []struct {
		name string
		data []byte
		want error
		off  int64
	}{
		{"bad version", frame(2, 0, TypeCommit, []byte(`{}`)), ErrMsgVersion, 0},
		{"flags", frame(1, 1, TypeCommit, []byte(`{}`)), ErrMsgFlags, 1},
		{"header CRC", func() []byte { f := bytes.Clone(valid); f[4]++; return f }(), ErrMsgHeaderCRC, 8},
		{"payload CRC", func() []byte { f := bytes.Clone(valid); f[12] = '['; return f }(), ErrMsgChecksum, 14},
		{"trailer CRC", func() []byte { f := bytes.Clone(valid); f[len(f)-1]++; return f }(), ErrMsgChecksum, 14},
		{"unknown type", frame(1, 0, 99, []byte(`{}`)), ErrMsgType, 2},
		{"type zero", frame(1, 0, 0, []byte(`{}`)), ErrMsgType, 2},
		{"oversized small", withLength(frame(1, 0, TypeHello, nil), MaxSmallPayload+1), ErrMsgTooLarge, 4},
		{"oversized large", withLength(frame(1, 0, TypeState, nil), MaxMsgPayload+1), ErrMsgTooLarge, 4},
		{"huge length", withLength(frame(1, 0, TypeState, nil), 0xffffffff), ErrMsgTooLarge, 4},
		{"lying length", withLength(frame(1, 0, TypeState, []byte(`{"body":1}`)), MaxMsgPayload), ErrMsgTruncated, 26},
		{"empty payload", frame(1, 0, TypeCommit, nil), ErrMsgPayload, 12},
		{"null payload", frame(1, 0, TypeCommit, []byte(`null`)), ErrMsgPayload, 12},
		{"array payload", frame(1, 0, TypeCommit, []byte(`[]`)), ErrMsgPayload, 12},
		{"not JSON", frame(1, 0, TypeCommit, []byte(`{"body":`)), ErrMsgPayload, 12},
		{"unknown field", frame(1, 0, TypeCommit, []byte(`{"bogus":1}`)), ErrMsgPayload, 12},
		{"trailing data", frame(1, 0, TypeCommit, []byte(`{} {}`)), ErrMsgPayload, 12},
		{"wrong field type", frame(1, 0, TypeRoundDone, []byte(`{"round":-1}`)), ErrMsgPayload, 12},
		{"hello bad session", frame(1, 0, TypeHello, []byte(strings.Replace(hello, "00112233", "XX112233", 1))), ErrMsgInvalid, 12},
		{"hello bad role", frame(1, 0, TypeHello, []byte(strings.Replace(hello, "source", "admin", 1))), ErrMsgInvalid, 12},
		{"hello bad version", frame(1, 0, TypeHello, []byte(strings.Replace(hello, `"version":1`, `"version":0`, 1))), ErrMsgInvalid, 12},
		{"hello bad pid", frame(1, 0, TypeHello, []byte(strings.Replace(hello, `"pid":1`, `"pid":-5`, 1))), ErrMsgInvalid, 12},
		{"hello bad feature", frame(1, 0, TypeHello, []byte(strings.Replace(hello, `"pid":1`, `"pid":1,"features":["../x"]`, 1))), ErrMsgInvalid, 12},
		{"layout without body", frame(1, 0, TypeLayout, []byte(`{"round":1}`)), ErrMsgInvalid, 12},
		{"unknown outcome", frame(1, 0, TypeStatusReply, []byte(`{"session_id":"`+sampleID+`","outcome":"maybe"}`)), ErrMsgPayload, 12},
		{"error without code", frame(1, 0, TypeError, []byte(`{"code":"","text":"x"}`)), ErrMsgInvalid, 12},
		{"long abort reason", frame(1, 0, TypeAbort, []byte(`{"reason":"`+strings.Repeat("a", MaxTextLen+1)+`"}`)), ErrMsgInvalid, 12},
		{"truncated header", valid[:5], ErrMsgTruncated, 5},
		{"truncated payload", valid[:13], ErrMsgTruncated, 13},
		{"truncated trailer", valid[:len(valid)-1], ErrMsgTruncated, int64(len(valid) - 1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := ReadMsg(bytes.NewReader(tc.data))
			if m != nil {
				t.Fatalf("decoded %#v", m)
			}
			var me *MsgError
			if !errors.As(err, &me) || !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want a *MsgError with %v", err, tc.want)
			}
			if me.Offset != tc.off {
				t.Errorf("offset %d, want %d (%v)", me.Offset, tc.off, err)
			}
		})
	}
}

// TestReadMsgTruncatedEverywhere cuts a stream of frames at every byte:
// ReadMsg returns io.EOF exactly at frame boundaries and ErrMsgTruncated
// elsewhere.
func TestReadMsgTruncatedEverywhere(t *testing.T) {
	var full []byte
	var bounds = map[int]bool{0: true}
	for _, m := range sampleMsgs() {
		full, _ = AppendMsg(full, m)
		bounds[len(full)] = true
	}
	for cut := range len(full) {
		r := bytes.NewReader(full[:cut])
		var err error
		for err == nil {
			_, err = ReadMsg(r)
		}
		if bounds[cut] {
			if err != io.EOF {
				t.Fatalf("cut at frame boundary %d: %v", cut, err)
			}
		} else if !errors.Is(err, ErrMsgTruncated) {
			t.Fatalf("cut at %d: %v, want ErrMsgTruncated", cut, err)
		}
	}
}

// TestReadMsgFlips flips every bit of a frame: never a silent success.
func TestReadMsgFlips(t *testing.T) {
	valid, _ := AppendMsg(nil, &Hello{Version: 1, SessionID: sampleID, Role: RoleSource, PID: 77})
	for i := range len(valid) * 8 {
		f := bytes.Clone(valid)
		f[i/8] ^= 1 << (i % 8)
		m, err := ReadMsg(bytes.NewReader(f))
		if err == nil {
			t.Fatalf("bit %d flipped: decoded %#v", i, m)
		}
		var me *MsgError
		if !errors.As(err, &me) {
			t.Fatalf("bit %d flipped: %T %v", i, err, err)
		}
	}
}

// TestReadMsgLyingLengthAllocates: a frame that claims 16 MiB and ends
// after a few bytes costs little memory.
func TestReadMsgLyingLengthAllocates(t *testing.T) {
	f := withLength(frame(1, 0, TypeState, []byte(`{"body":1}`)), MaxMsgPayload)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for range 10 {
		if _, err := ReadMsg(bytes.NewReader(f)); !errors.Is(err, ErrMsgTruncated) {
			t.Fatal(err)
		}
	}
	runtime.ReadMemStats(&after)
	if per := (after.TotalAlloc - before.TotalAlloc) / 10; per > 256<<10 {
		t.Fatalf("%d bytes allocated per lying frame", per)
	}
}

func TestWriteMsgRefuses(t *testing.T) {
	for _, tc := range []struct {
		m    Msg
		want error
	}{
		{&Hello{Version: 1, SessionID: "short", Role: RoleSource}, ErrMsgInvalid},
		{&Error{Code: "Has Spaces"}, ErrMsgInvalid},
		{&State{Body: json.RawMessage(`{not json`)}, ErrMsgPayload},
		{&State{Body: json.RawMessage(`"` + strings.Repeat("x", MaxMsgPayload) + `"`)}, ErrMsgTooLarge},
		{&Abort{Reason: strings.Repeat("x", MaxTextLen+1)}, ErrMsgInvalid},
		{&Abort{Reason: "x", Code: "Bad Code"}, ErrMsgInvalid},
		{&StatusReply{SessionID: sampleID, Outcome: 9}, ErrMsgInvalid},
	} {
		var b bytes.Buffer
		if err := WriteMsg(&b, tc.m); !errors.Is(err, tc.want) {
			t.Errorf("WriteMsg(%T): %v, want %v", tc.m, err, tc.want)
		}
		if b.Len() != 0 {
			t.Errorf("WriteMsg(%T) wrote %d bytes of a bad message", tc.m, b.Len())
		}
	}
}
