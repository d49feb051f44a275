package kernel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/internal/raw"
)

// ProbeTCPRepair connects a TCP pair on loopback, exchanges a few bytes,
// puts both ends in repair mode, reads the sequence numbers of their send
// and receive queues, and checks that each end's send sequence is the
// other's receive sequence. Repair mode is turned off before the sockets
// are closed.
func ProbeTCPRepair(ctx context.Context) (string, error) {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp4", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	if d, ok := ctx.Deadline(); ok {
		ln.(*net.TCPListener).SetDeadline(d)
	}
	type accepted struct {
		c   net.Conn
		err error
	}
	ch := make(chan accepted, 1)
	go func() {
		c, err := ln.Accept()
		ch <- accepted{c, err}
	}()
	var d net.Dialer
	client, err := d.DialContext(ctx, "tcp4", ln.Addr().String())
	if err != nil {
		return "", err
	}
	defer client.Close()
	a := <-ch
	if a.err != nil {
		return "", a.err
	}
	server := a.c
	defer server.Close()
	deadline := time.Now().Add(5 * time.Second)
	client.SetDeadline(deadline)
	server.SetDeadline(deadline)

	// Data in both directions, read in full, so both ends agree on every
	// sequence number.
	if err := exchange(client, server, "hello"); err != nil {
		return "", err
	}
	if err := exchange(server, client, "hi"); err != nil {
		return "", err
	}
	cs, err := repairSeqs(client.(*net.TCPConn))
	if err != nil {
		return "", err
	}
	ss, err := repairSeqs(server.(*net.TCPConn))
	if err != nil {
		return "", err
	}
	if cs.send != ss.recv || ss.send != cs.recv {
		return "", unsupported(FeatureTCPRepair, fmt.Sprintf("sequence numbers do not match: client send %d recv %d, server send %d recv %d", cs.send, cs.recv, ss.send, ss.recv), nil)
	}
	return "TCP_REPAIR on a loopback pair, TCP_QUEUE_SEQ of both queues consistent", nil
}

func exchange(from, to net.Conn, msg string) error {
	if _, err := io.WriteString(from, msg); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(to, buf); err != nil {
		return err
	}
	if string(buf) != msg {
		return fmt.Errorf("loopback TCP carried %q, sent %q", buf, msg)
	}
	return nil
}

type tcpSeqs struct{ send, recv uint32 }

// repairSeqs turns repair mode on, reads the queue sequence numbers and
// turns it off again.
func repairSeqs(c *net.TCPConn) (tcpSeqs, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return tcpSeqs{}, err
	}
	var seqs tcpSeqs
	var opErr error
	err = rc.Control(func(fd uintptr) {
		s := int(fd)
		if err := unix.SetsockoptInt(s, unix.IPPROTO_TCP, unix.TCP_REPAIR, raw.TCP_REPAIR_ON); err != nil {
			what := "setsockopt TCP_REPAIR on"
			if errors.Is(err, unix.EPERM) {
				what += " (needs CAP_NET_ADMIN)"
			}
			opErr = unsupported(FeatureTCPRepair, what, err)
			return
		}
		defer func() {
			if err := unix.SetsockoptInt(s, unix.IPPROTO_TCP, unix.TCP_REPAIR, raw.TCP_REPAIR_OFF); err != nil && opErr == nil {
				opErr = unsupported(FeatureTCPRepair, "setsockopt TCP_REPAIR off", err)
			}
		}()
		for _, q := range []struct {
			queue int
			dst   *uint32
			name  string
		}{{raw.TCP_SEND_QUEUE, &seqs.send, "send"}, {raw.TCP_RECV_QUEUE, &seqs.recv, "recv"}} {
			if err := unix.SetsockoptInt(s, unix.IPPROTO_TCP, unix.TCP_REPAIR_QUEUE, q.queue); err != nil {
				opErr = unsupported(FeatureTCPRepair, "TCP_REPAIR_QUEUE "+q.name, err)
				return
			}
			v, err := unix.GetsockoptInt(s, unix.IPPROTO_TCP, unix.TCP_QUEUE_SEQ)
			if err != nil {
				opErr = unsupported(FeatureTCPRepair, "TCP_QUEUE_SEQ of the "+q.name+" queue", err)
				return
			}
			*q.dst = uint32(v)
		}
		if err := unix.SetsockoptInt(s, unix.IPPROTO_TCP, unix.TCP_REPAIR_QUEUE, raw.TCP_NO_QUEUE); err != nil {
			opErr = unsupported(FeatureTCPRepair, "TCP_REPAIR_QUEUE none", err)
		}
	})
	if err != nil {
		return tcpSeqs{}, err
	}
	return seqs, opErr
}
