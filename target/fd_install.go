package target

import (
	"encoding/binary"
	"fmt"
	"os"
	"sort"

	"golang.org/x/sys/unix"

	"migrate/core/ptrace"
)

// The fds of the image reach the child in batches: the agent sends up to
// maxFDsPerMsg of its open files at once over a unix socket (SCM_RIGHTS),
// and one injected recvmsg in the child takes them all. The kernel gives
// received fds the lowest free numbers, in order, and the fds to restore
// are taken in ascending order: those before any gap in the numbers land
// where they belong; the others are moved (dup3, close). One injected
// call for a batch, instead of one or three an fd: with hundreds of
// connections the injections were most of the restore of the files.

// maxFDsPerMsg is below SCM_MAX_FD (253), the most one message carries.
const maxFDsPerMsg = 250

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
	child, err := r.sys("fcntl(F_DUPFD_CLOEXEC)", unix.SYS_FCNTL, uint64(tmp), unix.F_DUPFD_CLOEXEC, uint64(top+1))
	if err != nil {
		r.sys("close", unix.SYS_CLOSE, uint64(tmp))
		return fmt.Errorf("move the fd-passing socket above fd %d: %w", top, err)
	}
	if _, err := r.sys("close", unix.SYS_CLOSE, uint64(tmp)); err != nil {
		return err
	}
	defer r.sys("close", unix.SYS_CLOSE, child)
	for start := 0; start < len(want); {
		end := start + 1
		for end < len(want) && end-start < maxFDsPerMsg && want[end].cloexec == want[start].cloexec {
			end++
		}
		if err := r.installBatch(int(send.Fd()), int(child), want[start:end]); err != nil {
			return err
		}
		start = end
	}
	return nil
}

// Where installBatch puts struct msghdr, its iovec, the byte received and
// the control buffer in the scratch area.
const (
	msgOff  = 0
	iovOff  = 64
	byteOff = 96
	ctrlOff = 128
)

// installBatch passes batch (all with the same close-on-exec flag) to the
// child's socket child in one message and moves each fd to its number.
func (r *restorer) installBatch(send, child int, batch []pendingFD) error {
	first, last := batch[0].num, batch[len(batch)-1].num
	fail := func(err error) error {
		if first == last {
			return fmt.Errorf("fd %d: %w", first, err)
		}
		return fmt.Errorf("fds %d-%d: %w", first, last, err)
	}
	fds := make([]int, len(batch))
	for i, p := range batch {
		fds[i] = int(p.file.Fd())
	}
	if err := unix.Sendmsg(send, []byte{0}, unix.UnixRights(fds...), nil, 0); err != nil {
		return fail(fmt.Errorf("send to the child: %w", err))
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
		return fail(err)
	}
	if _, err := r.put(msgOff, msg); err != nil {
		return fail(err)
	}
	if ctrlOff+ctrlLen > scratchLen {
		return fail(fmt.Errorf("%d fds do not fit in the scratch area", len(fds)))
	}
	var flags uint64
	if batch[0].cloexec {
		flags = unix.MSG_CMSG_CLOEXEC
	}
	if _, err := r.sys("recvmsg", unix.SYS_RECVMSG, uint64(child), r.scratch+msgOff, flags|unix.MSG_DONTWAIT); err != nil {
		return fail(fmt.Errorf("receive in the child: %w", err))
	}
	if _, err := ptrace.ReadMem(r.pid, r.scratch+msgOff, msg); err != nil {
		return fail(err)
	}
	gotLen := le.Uint64(msg[40:])
	if mflags := le.Uint32(msg[48:]); mflags&unix.MSG_CTRUNC != 0 || gotLen > uint64(ctrlLen) {
		return fail(fmt.Errorf("the child received a truncated message (flags %#x, %d bytes of control data)", mflags, gotLen))
	}
	ctrl := make([]byte, gotLen)
	if _, err := ptrace.ReadMem(r.pid, r.scratch+ctrlOff, ctrl); err != nil {
		return fail(err)
	}
	got, err := receivedFDs(ctrl)
	if err != nil {
		return fail(err)
	}
	if len(got) != len(batch) {
		return fail(fmt.Errorf("the child received %d fds of %d", len(got), len(batch)))
	}
	// From the last: the i-th received took the i-th lowest free number,
	// at most the i-th number to restore, so a move never lands on a
	// received fd still to move.
	var cloexec uint64
	if batch[0].cloexec {
		cloexec = unix.O_CLOEXEC
	}
	for i := len(batch) - 1; i >= 0; i-- {
		if got[i] == batch[i].num {
			continue
		}
		if _, err := r.sys("dup3", unix.SYS_DUP3, uint64(got[i]), uint64(batch[i].num), cloexec); err != nil {
			return fmt.Errorf("fd %d: %w", batch[i].num, err)
		}
		if _, err := r.sys("close", unix.SYS_CLOSE, uint64(got[i])); err != nil {
			return fmt.Errorf("fd %d: %w", batch[i].num, err)
		}
	}
	return nil
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
