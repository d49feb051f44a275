// Package resp is a small redis client for migrate's end-to-end programs:
// a RESP2 connection that runs one command at a time (Conn), and a steady
// load that writes and reads keys over long-lived connections and measures
// the longest time between two replies (Load), which is what a client of
// a migrated redis sees of the migration.
//
// It knows nothing of the cluster: the caller dials (from a node, say) and
// hands over the connection.
package resp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// Conn is a RESP connection: one command at a time.
type Conn struct {
	c net.Conn
	r *bufio.Reader
	w *bufio.Writer
}

// NewConn wraps an open connection.
func NewConn(c net.Conn) *Conn {
	return &Conn{c: c, r: bufio.NewReader(c), w: bufio.NewWriter(c)}
}

// Close closes the connection.
func (c *Conn) Close() error { return c.c.Close() }

// Error is an error reply ("-ERR ...").
type Error string

func (e Error) Error() string { return "redis: " + string(e) }

// maxBulk caps a bulk reply (INFO is the largest one asked for).
const maxBulk = 1 << 20

// send queues a command.
func (c *Conn) send(args ...string) {
	fmt.Fprintf(c.w, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(c.w, "$%d\r\n%s\r\n", len(a), a)
	}
}

// read reads one reply: a string (simple or bulk; nil for a null bulk),
// an int64 (integer), or an error (an error reply is an Error).
func (c *Conn) read() (any, error) {
	line, err := c.r.ReadString('\n')
	if err != nil {
		return nil, err
	}
	if len(line) < 3 || !strings.HasSuffix(line, "\r\n") {
		return nil, fmt.Errorf("redis: malformed reply %q", line)
	}
	body := line[1 : len(line)-2]
	switch line[0] {
	case '+':
		return body, nil
	case '-':
		return nil, Error(body)
	case ':':
		return strconv.ParseInt(body, 10, 64)
	case '$':
		n, err := strconv.Atoi(body)
		if err != nil || n > maxBulk {
			return nil, fmt.Errorf("redis: bad bulk length %q", body)
		}
		if n < 0 {
			return nil, nil
		}
		b := make([]byte, n+2)
		if _, err := io.ReadFull(c.r, b); err != nil {
			return nil, err
		}
		return string(b[:n]), nil
	}
	return nil, fmt.Errorf("redis: unexpected reply %q", line)
}

// Do sends one command and reads its reply, within timeout.
func (c *Conn) Do(timeout time.Duration, args ...string) (any, error) {
	c.c.SetDeadline(time.Now().Add(timeout))
	defer c.c.SetDeadline(time.Time{})
	c.send(args...)
	if err := c.w.Flush(); err != nil {
		return nil, err
	}
	return c.read()
}

// commandTimeout bounds Str, Int and Info. DEBUG POPULATE of a million
// keys takes a second or two.
const commandTimeout = 60 * time.Second

// Str runs a command whose reply is a string.
func (c *Conn) Str(args ...string) (string, error) {
	v, err := c.Do(commandTimeout, args...)
	if err != nil {
		return "", fmt.Errorf("%s: %w", args[0], err)
	}
	s, ok := v.(string)
	if !ok {
		return "", fmt.Errorf("%s: reply %v, want a string", args[0], v)
	}
	return s, nil
}

// Int runs a command whose reply is an integer.
func (c *Conn) Int(args ...string) (int64, error) {
	v, err := c.Do(commandTimeout, args...)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", args[0], err)
	}
	n, ok := v.(int64)
	if !ok {
		return 0, fmt.Errorf("%s: reply %v, want an integer", args[0], v)
	}
	return n, nil
}

// Info returns a field of an INFO section.
func (c *Conn) Info(section, field string) (string, error) {
	s, err := c.Str("INFO", section)
	if err != nil {
		return "", err
	}
	for _, l := range strings.Split(s, "\r\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			return v, nil
		}
	}
	return "", errors.New("INFO " + section + " has no " + field)
}

// DialReady connects with dial, retrying every 50 ms for up to maxWait,
// until the server answers PING (it may still be starting, or moving).
func DialReady(ctx context.Context, dial func(context.Context) (net.Conn, error), maxWait time.Duration) (*Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, maxWait)
	defer cancel()
	for {
		nc, err := dial(ctx)
		if err == nil {
			c := NewConn(nc)
			if _, err = c.Str("PING"); err == nil {
				return c, nil
			}
			c.Close()
		}
		if serr := sleep(ctx, 50*time.Millisecond); serr != nil {
			return nil, fmt.Errorf("redis not ready: %w", errors.Join(err, serr))
		}
	}
}
