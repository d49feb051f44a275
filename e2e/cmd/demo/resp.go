package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// conn is a RESP (redis protocol) connection: one command at a time, or
// several pipelined with send, flush and read.
type conn struct {
	c net.Conn
	r *bufio.Reader
	w *bufio.Writer
}

func newConn(c net.Conn) *conn {
	return &conn{c: c, r: bufio.NewReader(c), w: bufio.NewWriter(c)}
}

func (c *conn) Close() error { return c.c.Close() }

// redisError is an error reply ("-ERR ...").
type redisError string

func (e redisError) Error() string { return "redis: " + string(e) }

// send queues a command.
func (c *conn) send(args ...string) {
	fmt.Fprintf(c.w, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(c.w, "$%d\r\n%s\r\n", len(a), a)
	}
}

func (c *conn) flush() error { return c.w.Flush() }

// maxBulk caps a bulk reply (INFO is the largest we ask for).
const maxBulk = 1 << 20

// read reads one reply: a string (simple or bulk; "" and ok=false for a
// null bulk), an int64 (integer), or an error (an error reply is a
// redisError).
func (c *conn) read() (any, error) {
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
		return nil, redisError(body)
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

// do sends one command and reads its reply, within timeout.
func (c *conn) do(timeout time.Duration, args ...string) (any, error) {
	c.c.SetDeadline(time.Now().Add(timeout))
	defer c.c.SetDeadline(time.Time{})
	c.send(args...)
	if err := c.flush(); err != nil {
		return nil, err
	}
	return c.read()
}

// str runs a command whose reply is a string.
func (c *conn) str(args ...string) (string, error) {
	v, err := c.do(10*time.Second, args...)
	if err != nil {
		return "", fmt.Errorf("%s: %w", args[0], err)
	}
	s, ok := v.(string)
	if !ok {
		return "", fmt.Errorf("%s: reply %v, want a string", args[0], v)
	}
	return s, nil
}

// int runs a command whose reply is an integer.
func (c *conn) int(args ...string) (int64, error) {
	v, err := c.do(10*time.Second, args...)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", args[0], err)
	}
	n, ok := v.(int64)
	if !ok {
		return 0, fmt.Errorf("%s: reply %v, want an integer", args[0], v)
	}
	return n, nil
}

// info returns a field of INFO section.
func (c *conn) info(section, field string) (string, error) {
	s, err := c.str("INFO", section)
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
