//go:build linux

package raw

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// System V IPC values x/sys/unix lacks (linux/ipc.h, linux/sem.h,
// linux/msg.h).
const (
	GETPID      = 11
	GETALL      = 13
	SETALL      = 17
	MSG_NOERROR = 0o10000
	MSG_COPY    = 0o40000
)

// SemidDS is struct semid64_ds (x86-64).
type SemidDS struct {
	Perm  unix.SysvIpcPerm
	Otime int64
	_     uint64
	Ctime int64
	_     uint64
	Nsems uint64
	_     [2]uint64
}

// MsqidDS is struct msqid64_ds (x86-64).
type MsqidDS struct {
	Perm   unix.SysvIpcPerm
	Stime  int64
	Rtime  int64
	Ctime  int64
	Cbytes uint64
	Qnum   uint64
	Qbytes uint64
	Lspid  int32
	Lrpid  int32
	_      [2]uint64
}

func semctl(id, num, cmd int, arg unsafe.Pointer) (int, error) {
	r, _, e := unix.Syscall6(unix.SYS_SEMCTL, uintptr(id), uintptr(num), uintptr(cmd), uintptr(arg), 0, 0)
	if e != 0 {
		return int(r), e
	}
	return int(r), nil
}

// SemGet is semget(2).
func SemGet(key int32, nsems, flags int) (int, error) {
	r, _, e := unix.Syscall(unix.SYS_SEMGET, uintptr(key), uintptr(nsems), uintptr(flags))
	if e != 0 {
		return -1, e
	}
	return int(r), nil
}

// SemStat is semctl(IPC_STAT).
func SemStat(id int, ds *SemidDS) error {
	_, err := semctl(id, 0, unix.IPC_STAT, unsafe.Pointer(ds))
	return err
}

// SemSet is semctl(IPC_SET): the owner and mode of ds.
func SemSet(id int, ds *SemidDS) error {
	_, err := semctl(id, 0, unix.IPC_SET, unsafe.Pointer(ds))
	return err
}

// SemGetAll is semctl(GETALL) into vals (one per semaphore of the set).
func SemGetAll(id int, vals []uint16) error {
	if len(vals) == 0 {
		return nil
	}
	_, err := semctl(id, 0, GETALL, unsafe.Pointer(&vals[0]))
	return err
}

// SemGetPID is semctl(GETPID): the PID (in the caller's PID namespace)
// of the last process to operate on semaphore num of set id, 0 if none.
func SemGetPID(id, num int) (int, error) {
	return semctl(id, num, GETPID, nil)
}

// SemSetAll is semctl(SETALL) from vals.
func SemSetAll(id int, vals []uint16) error {
	if len(vals) == 0 {
		return nil
	}
	_, err := semctl(id, 0, SETALL, unsafe.Pointer(&vals[0]))
	return err
}

// SemRemove is semctl(IPC_RMID).
func SemRemove(id int) error {
	_, err := semctl(id, 0, unix.IPC_RMID, nil)
	return err
}

func msgctl(id, cmd int, ds *MsqidDS) error {
	_, _, e := unix.Syscall(unix.SYS_MSGCTL, uintptr(id), uintptr(cmd), uintptr(unsafe.Pointer(ds)))
	if e != 0 {
		return e
	}
	return nil
}

// MsgGet is msgget(2).
func MsgGet(key int32, flags int) (int, error) {
	r, _, e := unix.Syscall(unix.SYS_MSGGET, uintptr(key), uintptr(flags), 0)
	if e != 0 {
		return -1, e
	}
	return int(r), nil
}

// MsgStat is msgctl(IPC_STAT).
func MsgStat(id int, ds *MsqidDS) error { return msgctl(id, unix.IPC_STAT, ds) }

// MsgSet is msgctl(IPC_SET): the owner, mode and size limit of ds.
func MsgSet(id int, ds *MsqidDS) error { return msgctl(id, unix.IPC_SET, ds) }

// MsgRemove is msgctl(IPC_RMID).
func MsgRemove(id int) error { return msgctl(id, unix.IPC_RMID, nil) }

// MsgCopy reads, without removing it, message index (0 the oldest) of
// queue id (msgrcv with MSG_COPY and IPC_NOWAIT) into buf, which holds
// the type in its first 8 bytes and the text after: it returns the
// text's length.
func MsgCopy(id, index int, buf []byte) (int, error) {
	if len(buf) < 8 {
		return 0, unix.EINVAL
	}
	r, _, e := unix.Syscall6(unix.SYS_MSGRCV, uintptr(id), uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)-8),
		uintptr(index), uintptr(MSG_COPY|unix.IPC_NOWAIT), 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// MsgSend is msgsnd(2) with IPC_NOWAIT of buf: the type in its first 8
// bytes, the text after.
func MsgSend(id int, buf []byte) error {
	if len(buf) < 8 {
		return unix.EINVAL
	}
	_, _, e := unix.Syscall6(unix.SYS_MSGSND, uintptr(id), uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)-8), uintptr(unix.IPC_NOWAIT), 0, 0)
	if e != 0 {
		return e
	}
	return nil
}
