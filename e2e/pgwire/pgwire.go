// Package pgwire is a small PostgreSQL client for migrate's end-to-end
// programs: one connection (protocol 3.0, trust authentication only) that
// runs one simple query at a time and returns its rows as text. It is
// what a client of a migrated PostgreSQL needs to show that its
// connection, its backend and its data survived: no more (no prepared
// statements, no TLS, no passwords).
//
// It knows nothing of the cluster: the caller dials (from a node, say)
// and hands the connection over.
package pgwire

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"
)

// maxMsg bounds one message from the server (a row of the tests is
// small; a broken stream must not make the client allocate gigabytes).
const maxMsg = 16 << 20

// Error is an ErrorResponse of the server.
type Error struct {
	Severity, Code, Message string
}

func (e *Error) Error() string {
	return fmt.Sprintf("postgres: %s %s: %s", e.Severity, e.Code, e.Message)
}

// ErrProtocol says the server sent what this client cannot read.
var ErrProtocol = errors.New("pgwire: protocol error")

// Conn is one connection to PostgreSQL, in the ready state between
// queries. It is not safe for concurrent use.
type Conn struct {
	c net.Conn
	r *bufio.Reader
	w *bufio.Writer
	// BackendPID is the server process of the connection (BackendKeyData).
	BackendPID int32
	// Timeout, if set, bounds each query (a deadline on the connection).
	Timeout time.Duration
}

// Connect starts a session as user on database over c (already dialled),
// and waits until the server is ready for queries. c is closed on error.
func Connect(c net.Conn, user, database string) (*Conn, error) {
	pc := &Conn{c: c, r: bufio.NewReader(c), w: bufio.NewWriter(c)}
	var body []byte
	body = binary.BigEndian.AppendUint32(body, 3<<16) // protocol 3.0
	for _, kv := range [][2]string{{"user", user}, {"database", database}} {
		body = append(append(append(append(body, kv[0]...), 0), kv[1]...), 0)
	}
	body = append(body, 0)
	msg := binary.BigEndian.AppendUint32(nil, uint32(4+len(body)))
	if _, err := pc.w.Write(append(msg, body...)); err != nil {
		c.Close()
		return nil, err
	}
	if err := pc.w.Flush(); err != nil {
		c.Close()
		return nil, err
	}
	for {
		typ, b, err := pc.read()
		if err != nil {
			c.Close()
			return nil, err
		}
		switch typ {
		case 'R':
			if len(b) < 4 {
				c.Close()
				return nil, fmt.Errorf("%w: short authentication message", ErrProtocol)
			}
			if code := binary.BigEndian.Uint32(b); code != 0 {
				c.Close()
				return nil, fmt.Errorf("pgwire: the server asks for authentication method %d; only trust is supported", code)
			}
		case 'K':
			if len(b) < 8 {
				c.Close()
				return nil, fmt.Errorf("%w: short BackendKeyData", ErrProtocol)
			}
			pc.BackendPID = int32(binary.BigEndian.Uint32(b))
		case 'E':
			c.Close()
			return nil, parseError(b)
		case 'Z':
			return pc, nil
		case 'S', 'N':
		default:
			c.Close()
			return nil, fmt.Errorf("%w: message %q during startup", ErrProtocol, typ)
		}
	}
}

// Query runs sql (one or more statements) and returns the rows of the
// last one that returned rows, each value as text ("" for NULL). An
// error of the server comes as an *Error, after which the connection is
// ready again.
func (pc *Conn) Query(sql string) ([][]string, error) {
	if strings.IndexByte(sql, 0) >= 0 {
		return nil, errors.New("pgwire: a NUL byte in the query")
	}
	if pc.Timeout > 0 {
		pc.c.SetDeadline(time.Now().Add(pc.Timeout))
		defer pc.c.SetDeadline(time.Time{})
	}
	msg := []byte{'Q'}
	msg = binary.BigEndian.AppendUint32(msg, uint32(4+len(sql)+1))
	msg = append(append(msg, sql...), 0)
	if _, err := pc.w.Write(msg); err != nil {
		return nil, err
	}
	if err := pc.w.Flush(); err != nil {
		return nil, err
	}
	var rows [][]string
	var qerr error
	for {
		typ, b, err := pc.read()
		if err != nil {
			return nil, err
		}
		switch typ {
		case 'T':
			rows = nil // a new result
		case 'D':
			row, err := parseRow(b)
			if err != nil {
				return nil, err
			}
			rows = append(rows, row)
		case 'E':
			qerr = parseError(b)
		case 'Z':
			return rows, qerr
		case 'C', 'I', 'N', 'S':
		default:
			return nil, fmt.Errorf("%w: message %q in a query's answer", ErrProtocol, typ)
		}
	}
}

// Value runs sql and returns its one value (first row, first column).
func (pc *Conn) Value(sql string) (string, error) {
	rows, err := pc.Query(sql)
	if err != nil {
		return "", err
	}
	if len(rows) != 1 || len(rows[0]) < 1 {
		return "", fmt.Errorf("pgwire: %q returned %d rows, want one", sql, len(rows))
	}
	return rows[0][0], nil
}

// Close ends the session (Terminate) and closes the connection.
func (pc *Conn) Close() error {
	pc.w.Write([]byte{'X', 0, 0, 0, 4})
	pc.w.Flush()
	return pc.c.Close()
}

// read reads one message: its type and body.
func (pc *Conn) read() (byte, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(pc.r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n < 4 || n > maxMsg {
		return 0, nil, fmt.Errorf("%w: message %q of length %d", ErrProtocol, hdr[0], n)
	}
	b := make([]byte, n-4)
	if _, err := io.ReadFull(pc.r, b); err != nil {
		return 0, nil, err
	}
	return hdr[0], b, nil
}

// parseRow decodes a DataRow.
func parseRow(b []byte) ([]string, error) {
	if len(b) < 2 {
		return nil, fmt.Errorf("%w: short DataRow", ErrProtocol)
	}
	n := int(binary.BigEndian.Uint16(b))
	b = b[2:]
	row := make([]string, 0, n)
	for range n {
		if len(b) < 4 {
			return nil, fmt.Errorf("%w: short DataRow", ErrProtocol)
		}
		l := int32(binary.BigEndian.Uint32(b))
		b = b[4:]
		if l < 0 {
			row = append(row, "")
			continue
		}
		if int(l) > len(b) {
			return nil, fmt.Errorf("%w: DataRow value of %d bytes, %d left", ErrProtocol, l, len(b))
		}
		row = append(row, string(b[:l]))
		b = b[l:]
	}
	return row, nil
}

// parseError decodes an ErrorResponse (fields: a code byte and a
// NUL-terminated string each, then a NUL).
func parseError(b []byte) error {
	e := &Error{}
	for len(b) > 0 && b[0] != 0 {
		code := b[0]
		end := 1
		for end < len(b) && b[end] != 0 {
			end++
		}
		v := string(b[1:end])
		switch code {
		case 'S':
			e.Severity = v
		case 'C':
			e.Code = v
		case 'M':
			e.Message = v
		}
		if end >= len(b) {
			break
		}
		b = b[end+1:]
	}
	return e
}
