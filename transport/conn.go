package transport

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"
)

// Control is a control channel over a stream of a session: it sends and
// receives control messages, one goroutine each. It satisfies
// internal/handoff's Conn, what both sides of the handoff speak over.
type Control struct {
	c       net.Conn
	sendMu  sync.Mutex
	closeMu sync.Once
}

// NewControl wraps the control stream c.
func NewControl(c net.Conn) *Control { return &Control{c: c} }

// Send writes one message.
func (k *Control) Send(m Msg) error {
	k.sendMu.Lock()
	defer k.sendMu.Unlock()
	return WriteMsg(k.c, m)
}

// Recv reads one message. It returns when one arrives, the link fails, or
// ctx is done (then with ctx's error).
func (k *Control) Recv(ctx context.Context) (Msg, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if d, ok := ctx.Deadline(); ok {
		k.c.SetReadDeadline(d)
	} else {
		k.c.SetReadDeadline(time.Time{})
	}
	stop := context.AfterFunc(ctx, func() { k.c.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	m, err := ReadMsg(k.c)
	if err != nil && ctx.Err() != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return nil, ctx.Err()
		}
	}
	return m, err
}

// Close closes the stream; a Recv blocked on it returns.
func (k *Control) Close() error {
	var err error
	k.closeMu.Do(func() { err = k.c.Close() })
	return err
}
