package target

import (
	"encoding/binary"
	"fmt"
	"os"
	"sort"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core/ptrace"
)

// The fds of the image reach the child in batches: the agent sends up to
// maxFDsPerMsg of its open files at once over a unix socket (SCM_RIGHTS),
// and one injected recvmsg in the child takes them all. The kernel gives
// received fds the lowest free numbers, in order: the fds are sent in
// ascending order, and a gap in their numbers is filled with fillers
// (duplicates of a spare fd of the agent) closed once all are in, one
// close_range a gap, and the recvmsg of several messages and the closes
// go in one batch of injected calls (receiveFDs). So every fd lands at its
// number: one stop for many fds instead of one to three an fd, which with hundreds of
// connections were most of the restore of the files. An fd past a gap too
// wide to fill (maxFill) is received alone and moved (dup3, close).

// maxFDsPerMsg is below SCM_MAX_FD (253), the most one message carries.
const maxFDsPerMsg = 250

// maxFill is the widest gap between two fd numbers filled with fillers.
const maxFill = 4096

// pendingFD is an fd to restore: its number, the agent's file for its
// description, and its close-on-exec flag.
type pendingFD struct {
	num     int
	file    *os.File
	cloexec bool
}

// installFDs gives the child each fd of want at its number.
//
// Preconditions: the numbers are free in the child, and the agent's pidfd
// (and every number above the highest of want) is out of their way.
func (r *restorer) installFDs(want []pendingFD) error {
	if len(want) == 0 {
		return nil
	}
	want = append([]pendingFD(nil), want...)
	sort.Slice(want, func(i, j int) bool { return want[i].num < want[j].num })
	for i := 1; i < len(want); i++ {
		if want[i].num == want[i-1].num {
			return fmt.Errorf("fd %d appears twice in the image", want[i].num)
		}
	}
	top := want[len(want)-1].num
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socketpair to pass the fds: %w", err)
	}
	send, recv := os.NewFile(uintptr(sp[0]), "fd-pass"), os.NewFile(uintptr(sp[1]), "fd-pass")
	defer send.Close()
	defer recv.Close()
	// The receiving end in the child, above every fd to restore.
	tmp, err := r.install(recv)
	if err != nil {
		return fmt.Errorf("the fd-passing socket: %w", err)
	}
	ret, err := r.p.SyscallBatch(r.p.Leader(), r.scratch+batchTable, []ptrace.Call{
		{Name: "fcntl(F_DUPFD_CLOEXEC)", Nr: unix.SYS_FCNTL, Args: [6]uint64{uint64(tmp), unix.F_DUPFD_CLOEXEC, uint64(top + 1)}},
		{Name: "close", Nr: unix.SYS_CLOSE, Args: [6]uint64{uint64(tmp)}},
	})
	if err != nil {
		if len(ret) > 0 && int64(ret[0]) >= 0 {
			r.sys("close", unix.SYS_CLOSE, ret[0])
		}
		return fmt.Errorf("move the fd-passing socket above fd %d: %w", top, err)
	}
	child := ret[0]
	defer r.sys("close", unix.SYS_CLOSE, child)
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		return fmt.Errorf("a filler fd: %w", err)
	}
	filler := os.NewFile(uintptr(efd), "filler")
	defer filler.Close()

	// The slots from 0 up: each fd to restore, fillers in the gaps.
	var slots []pendingFD
	var gaps [][2]int
	var alone []pendingFD // past a gap too wide to fill
	next := 0
	for _, w := range want {
		if len(alone) > 0 || w.num-next > maxFill {
			alone = append(alone, w)
			continue
		}
		if w.num > next {
			gaps = append(gaps, [2]int{next, w.num - 1})
		}
		for ; next < w.num; next++ {
			slots = append(slots, pendingFD{num: next, file: filler, cloexec: w.cloexec})
		}
		slots = append(slots, w)
		next = w.num + 1
	}
	// The messages, each of fds with the same close-on-exec flag.
	var msgs [][]pendingFD
	for start := 0; start < len(slots); {
		end := start + 1
		for end < len(slots) && end-start < maxFDsPerMsg && slots[end].cloexec == slots[start].cloexec {
			end++
		}
		msgs = append(msgs, slots[start:end])
		start = end
	}
	// Then the fillers closed, one close_range a gap.
	var closes []ptrace.Call
	for _, g := range gaps {
		closes = append(closes, ptrace.Call{Name: fmt.Sprintf("close_range(%d, %d) of the fillers", g[0], g[1]),
			Nr: unix.SYS_CLOSE_RANGE, Args: [6]uint64{uint64(g[0]), uint64(g[1])}})
	}
	for len(msgs) > 0 {
		chunk := msgs[:min(len(msgs), maxMsgsPerBatch)]
		var after *[]ptrace.Call
		if len(chunk) == len(msgs) {
			after = &closes // the last messages: the fillers' closes can follow
		}
		n, err := r.receiveFDs(int(send.Fd()), int(child), chunk, after)
		if err != nil {
			return err
		}
		msgs = msgs[n:]
	}
	for len(closes) > 0 {
		n := min(len(closes), maxCallsPerBatch)
		if _, err := r.p.SyscallBatch(r.p.Leader(), r.scratch+batchTable, closes[:n]); err != nil {
			return err
		}
		closes = closes[n:]
	}
	for _, w := range alone {
		if err := r.installAlone(int(send.Fd()), int(child), w); err != nil {
			return err
		}
	}
	return nil
}

// A batch of messages: up to maxMsgsPerBatch queued on the socket (a unix
// datagram socket queues net.unix.max_dgram_qlen, 10 by default; a send
// that finds the queue full ends the batch early), received by as many
// recvmsg in one batch of injected calls (ptrace.SyscallBatch), each
// message's struct msghdr, iovec, byte and control buffer in a slot of
// fdMsgSlot bytes of the scratch area from fdMsgs.
const (
	maxMsgsPerBatch  = 8
	maxCallsPerBatch = 150 // the table, from batchTable, stays below fdMsgs
	fdMsgs           = credArgs
	fdMsgSlot        = 1280 // ctrlOff + CmsgSpace(4*maxFDsPerMsg), rounded up
)

// receiveFDs sends msgs (up to maxMsgsPerBatch) over send, lets the
// child receive them on its socket child in one batch of injected calls
// and checks that each fd landed at its number. It returns how many
// messages were passed. If closes is not nil (msgs are the last to pass),
// as many of its calls as fit follow the messages when all were sent, and
// are taken out of it.
func (r *restorer) receiveFDs(send, child int, msgs [][]pendingFD, closes *[]ptrace.Call) (int, error) {
	fail := func(m []pendingFD, err error) error {
		if len(m) == 1 {
			return fmt.Errorf("fd %d: %w", m[0].num, err)
		}
		return fmt.Errorf("fds %d-%d: %w", m[0].num, m[len(m)-1].num, err)
	}
	le := binary.LittleEndian
	area := make([]byte, len(msgs)*fdMsgSlot)
	var calls []ptrace.Call
	sent := 0
	for i, m := range msgs {
		fds := make([]int, len(m))
		for j, p := range m {
			fds[j] = int(p.file.Fd())
		}
		err := unix.Sendmsg(send, []byte{0}, unix.UnixRights(fds...), nil, unix.MSG_DONTWAIT)
		if err == unix.EAGAIN && i > 0 {
			break // the queue is full: the rest in the next batch
		}
		if err != nil {
			return 0, fail(m, fmt.Errorf("send to the child: %w", err))
		}
		sent++
		slot := area[i*fdMsgSlot:]
		addr := r.scratch + fdMsgs + uint64(i*fdMsgSlot)
		// struct iovec { base, len }
		le.PutUint64(slot[iovOff:], addr+byteOff)
		le.PutUint64(slot[iovOff+8:], 1)
		// struct msghdr on x86-64: name, namelen (+pad), iov, iovlen,
		// control, controllen, flags (+pad).
		le.PutUint64(slot[16:], addr+iovOff)
		le.PutUint64(slot[24:], 1)
		le.PutUint64(slot[32:], addr+ctrlOff)
		le.PutUint64(slot[40:], uint64(unix.CmsgSpace(4*len(m))))
		flags := uint64(unix.MSG_DONTWAIT)
		if m[0].cloexec {
			flags |= unix.MSG_CMSG_CLOEXEC
		}
		calls = append(calls, ptrace.Call{Name: fmt.Sprintf("recvmsg of fds %d-%d", m[0].num, m[len(m)-1].num),
			Nr: unix.SYS_RECVMSG, Args: [6]uint64{uint64(child), addr + msgOff, flags}})
	}
	msgs, area = msgs[:sent], area[:sent*fdMsgSlot]
	if _, err := r.put(fdMsgs, area); err != nil {
		return 0, err
	}
	var after []ptrace.Call
	if closes != nil && sent == len(msgs) {
		n := min(len(*closes), maxCallsPerBatch-len(calls))
		after, *closes = (*closes)[:n], (*closes)[n:]
	}
	if _, err := r.p.SyscallBatch(r.p.Leader(), r.scratch+batchTable, append(calls, after...)); err != nil {
		return 0, fmt.Errorf("receive in the child: %w", err)
	}
	if _, err := ptrace.ReadMem(r.pid, r.scratch+fdMsgs, area); err != nil {
		return 0, err
	}
	for i, m := range msgs {
		slot := area[i*fdMsgSlot:]
		ctrlLen := uint64(unix.CmsgSpace(4 * len(m)))
		gotLen := le.Uint64(slot[40:])
		if mflags := le.Uint32(slot[48:]); mflags&unix.MSG_CTRUNC != 0 || gotLen > ctrlLen {
			return 0, fail(m, fmt.Errorf("the child received a truncated message (flags %#x, %d bytes of control data)", mflags, gotLen))
		}
		got, err := receivedFDs(slot[ctrlOff : ctrlOff+gotLen])
		if err != nil {
			return 0, fail(m, err)
		}
		if len(got) != len(m) {
			return 0, fail(m, fmt.Errorf("the child received %d fds of %d", len(got), len(m)))
		}
		// Every lower number is taken (by an fd or a filler): each fd
		// took its own.
		for j := range m {
			if got[j] != m[j].num {
				return 0, fail(m, fmt.Errorf("fd %d landed at %d in the child (a number in the way?)", m[j].num, got[j]))
			}
		}
	}
	return sent, nil
}

// Where installAlone (passFDs) puts struct msghdr, its iovec, the byte received and
// the control buffer in the scratch area.
const (
	msgOff  = 0
	iovOff  = 64
	byteOff = 96
	ctrlOff = 128
)

// installAlone passes w, an fd past a gap too wide to fill, to the
// child's socket child: it lands at the lowest free number and is moved
// to its own.
func (r *restorer) installAlone(send, child int, w pendingFD) error {
	fail := func(err error) error { return fmt.Errorf("fd %d: %w", w.num, err) }
	got, err := r.passFDs(send, child, []int{int(w.file.Fd())}, w.cloexec)
	if err != nil {
		return fail(err)
	}
	if len(got) != 1 {
		return fail(fmt.Errorf("the child received %d fds of 1", len(got)))
	}
	if got[0] == w.num {
		return nil
	}
	var cloexec uint64
	if w.cloexec {
		cloexec = unix.O_CLOEXEC
	}
	if _, err := r.sys("dup3", unix.SYS_DUP3, uint64(got[0]), uint64(w.num), cloexec); err != nil {
		return fail(err)
	}
	if _, err := r.sys("close", unix.SYS_CLOSE, uint64(got[0])); err != nil {
		return fail(err)
	}
	return nil
}

// passFDs sends the agent's fds over its end send of a unix socket whose
// other end is the child's fd child, makes the child receive them in one
// injected recvmsg (close-on-exec if cloexec) and returns their numbers
// there.
func (r *restorer) passFDs(send, child int, fds []int, cloexec bool) ([]int, error) {
	if err := unix.Sendmsg(send, []byte{0}, unix.UnixRights(fds...), nil, 0); err != nil {
		return nil, fmt.Errorf("send to the child: %w", err)
	}
	ctrlLen := unix.CmsgSpace(4 * len(fds))
	le := binary.LittleEndian
	// struct iovec { base, len }
	iov := make([]byte, 16)
	le.PutUint64(iov[0:], r.scratch+byteOff)
	le.PutUint64(iov[8:], 1)
	// struct msghdr on x86-64: name, namelen (+pad), iov, iovlen, control,
	// controllen, flags (+pad).
	msg := make([]byte, 56)
	le.PutUint64(msg[16:], r.scratch+iovOff)
	le.PutUint64(msg[24:], 1)
	le.PutUint64(msg[32:], r.scratch+ctrlOff)
	le.PutUint64(msg[40:], uint64(ctrlLen))
	if _, err := r.put(iovOff, iov); err != nil {
		return nil, err
	}
	if _, err := r.put(msgOff, msg); err != nil {
		return nil, err
	}
	if ctrlOff+ctrlLen > scratchLen {
		return nil, fmt.Errorf("%d fds do not fit in the scratch area", len(fds))
	}
	var flags uint64
	if cloexec {
		flags = unix.MSG_CMSG_CLOEXEC
	}
	if _, err := r.sys("recvmsg", unix.SYS_RECVMSG, uint64(child), r.scratch+msgOff, flags|unix.MSG_DONTWAIT); err != nil {
		return nil, fmt.Errorf("receive in the child: %w", err)
	}
	if _, err := ptrace.ReadMem(r.pid, r.scratch+msgOff, msg); err != nil {
		return nil, err
	}
	gotLen := le.Uint64(msg[40:])
	if mflags := le.Uint32(msg[48:]); mflags&unix.MSG_CTRUNC != 0 || gotLen > uint64(ctrlLen) {
		return nil, fmt.Errorf("the child received a truncated message (flags %#x, %d bytes of control data)", mflags, gotLen)
	}
	ctrl := make([]byte, gotLen)
	if _, err := ptrace.ReadMem(r.pid, r.scratch+ctrlOff, ctrl); err != nil {
		return nil, err
	}
	return receivedFDs(ctrl)
}

// receivedFDs parses the fd numbers out of a received control buffer.
func receivedFDs(ctrl []byte) ([]int, error) {
	msgs, err := unix.ParseSocketControlMessage(ctrl)
	if err != nil {
		return nil, fmt.Errorf("control data: %w", err)
	}
	var out []int
	for i := range msgs {
		fds, err := unix.ParseUnixRights(&msgs[i])
		if err != nil {
			return nil, fmt.Errorf("control data: %w", err)
		}
		out = append(out, fds...)
	}
	return out, nil
}
