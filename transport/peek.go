package transport

import (
	"net"
	"syscall"
)

// peek copies the bytes waiting on c into buf, up to len(buf), leaving
// them to be read; it never blocks. It returns 0 if nothing waits or c is
// not a socket.
func peek(c net.Conn, buf []byte) int {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return 0
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0
	}
	n := 0
	rc.Control(func(fd uintptr) {
		m, _, err := syscall.Recvfrom(int(fd), buf, syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		if err == nil && m > 0 {
			n = m
		}
	})
	return n
}

// maxRecord is the largest TLS record: a 5-byte header and 2^14 bytes of
// plaintext (and a little more once encrypted, which a first record is
// not).
const maxRecord = 5 + 1<<14 + 256

// waitingStage is the stage of a connection that nobody has read from yet,
// from the bytes waiting on it: the handshake goroutine of a connection
// just accepted may not have run yet when a flood forces an eviction.
func waitingStage(c net.Conn, buf []byte) int32 {
	n := peek(c, buf)
	switch {
	case n == 0:
		return stageSilent
	case n < 5:
		return stagePartial
	}
	if rec := 5 + (int(buf[3])<<8 | int(buf[4])); n >= rec {
		return stageHello
	}
	return stagePartial
}
