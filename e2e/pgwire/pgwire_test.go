package pgwire

import (
	"encoding/binary"
	"net"
	"slices"
	"testing"
)

// FuzzDecode: no DataRow or ErrorResponse body makes the decoders panic.
func FuzzDecode(f *testing.F) {
	f.Add([]byte{0, 2, 0, 0, 0, 1, 'a', 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte("SERROR\x00C42P01\x00Mno such table\x00\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		parseRow(b)
		parseError(b)
	})
}

// TestQuery: a session with a fake server: startup, a query's rows (a
// NULL among them), an error, and the connection ready again.
func TestQuery(t *testing.T) {
	cl, sv := net.Pipe()
	defer cl.Close()
	msg := func(typ byte, body []byte) []byte {
		return append(binary.BigEndian.AppendUint32([]byte{typ}, uint32(4+len(body))), body...)
	}
	row := func(vals ...*string) []byte {
		b := binary.BigEndian.AppendUint16(nil, uint16(len(vals)))
		for _, v := range vals {
			if v == nil {
				b = binary.BigEndian.AppendUint32(b, 0xffffffff)
				continue
			}
			b = append(binary.BigEndian.AppendUint32(b, uint32(len(*v))), *v...)
		}
		return b
	}
	s := func(v string) *string { return &v }
	go func() {
		defer sv.Close()
		buf := make([]byte, 1024)
		sv.Read(buf) // the startup message
		var out []byte
		out = append(out, msg('R', []byte{0, 0, 0, 0})...)
		out = append(out, msg('S', []byte("server_version\x0015\x00"))...)
		out = append(out, msg('K', []byte{0, 0, 0x30, 0x39, 1, 2, 3, 4})...)
		out = append(out, msg('Z', []byte{'I'})...)
		sv.Write(out)
		sv.Read(buf) // the query
		out = msg('T', []byte{0, 0})
		out = append(out, msg('D', row(s("1"), nil))...)
		out = append(out, msg('D', row(s("2"), s("b")))...)
		out = append(out, msg('C', []byte("SELECT 2\x00"))...)
		out = append(out, msg('Z', []byte{'I'})...)
		sv.Write(out)
		sv.Read(buf)
		out = msg('E', []byte("SERROR\x00C42P01\x00Mrelation \"x\" does not exist\x00\x00"))
		out = append(out, msg('Z', []byte{'I'})...)
		sv.Write(out)
	}()
	pc, err := Connect(cl, "postgres", "postgres")
	if err != nil {
		t.Fatal(err)
	}
	if pc.BackendPID != 12345 {
		t.Errorf("backend pid %d, want 12345", pc.BackendPID)
	}
	rows, err := pc.Query("select")
	if err != nil || len(rows) != 2 || !slices.Equal(rows[0], []string{"1", ""}) || !slices.Equal(rows[1], []string{"2", "b"}) {
		t.Errorf("rows %q, %v", rows, err)
	}
	_, err = pc.Query("select * from x")
	if e, ok := err.(*Error); !ok || e.Code != "42P01" {
		t.Errorf("error %v (%T), want code 42P01", err, err)
	}
}
