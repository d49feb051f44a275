package source

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/internal/raw"
)

const (
	nsUTS = unix.CLONE_NEWUTS
	nsIPC = unix.CLONE_NEWIPC
)

// inIPC runs fn in the IPC namespace of the dump: the container's, when
// its root has one of its own (ss.ipcNS), else migrate's.
func (ss *session) inIPC(fn func() error) error {
	if ss.ipcNS == 0 {
		return fn()
	}
	return proc.InNamespace(ss.ipcNS, nsIPC, fn)
}

// readIPC reads the System V state of the IPC namespace of pid: its
// sysctls, semaphore sets and message queues (the messages copied with
// msgrcv(MSG_COPY), which leaves them in the queue).
func readIPC(pid int) (*core.IPCNamespace, error) {
	ipc := &core.IPCNamespace{Sysctls: map[string]string{}}
	err := proc.InNamespace(pid, nsIPC, func() error {
		for _, name := range core.IPCSysctls {
			b, err := proc.ReadFile("/proc/sys/kernel/" + name)
			if err != nil {
				return err
			}
			ipc.Sysctls[name] = string(trimNL(b))
		}
		ids, err := sysvIDs("/proc/sysvipc/sem")
		if err != nil {
			return err
		}
		for _, id := range ids {
			s, err := readSemSet(id)
			if err != nil {
				return err
			}
			ipc.Sems = append(ipc.Sems, *s)
		}
		if ids, err = sysvIDs("/proc/sysvipc/msg"); err != nil {
			return err
		}
		for _, id := range ids {
			q, err := readMsgQueue(id)
			if err != nil {
				return err
			}
			ipc.Msgs = append(ipc.Msgs, *q)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("IPC namespace of %d: %w", pid, err)
	}
	return ipc, nil
}

// sysvIDs lists the IDs (second column) of a /proc/sysvipc file, which
// shows the objects of the reader's IPC namespace.
func sysvIDs(path string) ([]int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var ids []int
	for i, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if i == 0 || len(f) < 2 {
			continue
		}
		id, err := strconv.Atoi(f[1])
		if err != nil {
			return nil, fmt.Errorf("%s: line %q", path, l)
		}
		ids = append(ids, id)
	}
	return ids, nil
}

func readSemSet(id int) (*core.SemSet, error) {
	var ds raw.SemidDS
	if err := raw.SemStat(id, &ds); err != nil {
		return nil, fmt.Errorf("semaphore set %d: semctl(IPC_STAT): %w", id, err)
	}
	s := &core.SemSet{ID: id, Key: ds.Perm.Key, Mode: ds.Perm.Mode & 0o777, UID: ds.Perm.Uid, GID: ds.Perm.Gid,
		Values: make([]uint16, ds.Nsems)}
	if err := raw.SemGetAll(id, s.Values); err != nil {
		return nil, fmt.Errorf("semaphore set %d: semctl(GETALL): %w", id, err)
	}
	return s, nil
}

func readMsgQueue(id int) (*core.MsgQueue, error) {
	var ds raw.MsqidDS
	if err := raw.MsgStat(id, &ds); err != nil {
		return nil, fmt.Errorf("message queue %d: msgctl(IPC_STAT): %w", id, err)
	}
	q := &core.MsgQueue{ID: id, Key: ds.Perm.Key, Mode: ds.Perm.Mode & 0o777, UID: ds.Perm.Uid, GID: ds.Perm.Gid, QBytes: ds.Qbytes}
	// No message is longer than all the queue holds.
	buf := make([]byte, 8+ds.Cbytes)
	for i := 0; i < int(ds.Qnum); i++ {
		n, err := raw.MsgCopy(id, i, buf)
		if errors.Is(err, unix.ENOSYS) {
			return nil, &NamespaceError{Kinds: []string{"ipc"}, Reason: fmt.Sprintf(
				"message queue %d holds %d messages, which this kernel cannot read without taking them (no MSG_COPY: CONFIG_CHECKPOINT_RESTORE)", id, ds.Qnum)}
		}
		if err != nil {
			return nil, fmt.Errorf("message queue %d: message %d: msgrcv(MSG_COPY): %w", id, i, err)
		}
		q.Messages = append(q.Messages, core.Message{Type: int64(binary.LittleEndian.Uint64(buf)), Text: append([]byte(nil), buf[8:8+n]...)})
	}
	return q, nil
}

// HostIPCError refuses a dump whose process uses a System V semaphore set
// or message queue of migrate's own IPC namespace (the host's): which of
// the host's objects belong to a service cannot be told in general, so
// none is carried, and one the process is seen to use (it made the last
// operation on it) would be missing or another after a restore
// elsewhere. A container's own IPC namespace is carried whole.
type HostIPCError struct {
	PID  int
	What string // "semaphore set", "message queue"
	ID   int
	Key  int32
}

func (e *HostIPCError) Error() string {
	return fmt.Sprintf("process %d uses System V %s %d (key %#x) of the host's IPC namespace (it made the last operation on it): "+
		"the host's semaphores and message queues are not carried (which belong to the service cannot be told); "+
		"run the service in an IPC namespace of its own (unshare --ipc), which migrate carries whole", e.PID, e.What, e.ID, uint32(e.Key))
}

// refuseHostIPC returns a *HostIPCError for a semaphore set or message
// queue of migrate's IPC namespace whose last operation was made by a
// process of pids (semctl GETPID of each semaphore; a queue's last
// sender and receiver), nil if there is none. Objects the processes use
// that no operation shows (one never operated on, or operated on last by
// another process) cannot be seen: the README says so.
func refuseHostIPC(pids map[int]bool) error {
	ids, err := sysvIDs("/proc/sysvipc/sem")
	if err != nil {
		return err
	}
	for _, id := range ids {
		var ds raw.SemidDS
		if err := raw.SemStat(id, &ds); err != nil {
			continue // removed since
		}
		for i := 0; i < int(ds.Nsems); i++ {
			// (otime: the set's last semop, by any process.)
			if pid, err := raw.SemGetPID(id, i); err == nil && pids[pid] && !startedAfter(pid, ds.Otime) {
				return &HostIPCError{PID: pid, What: "semaphore set", ID: id, Key: ds.Perm.Key}
			}
		}
	}
	if ids, err = sysvIDs("/proc/sysvipc/msg"); err != nil {
		return err
	}
	for _, id := range ids {
		var ds raw.MsqidDS
		if err := raw.MsgStat(id, &ds); err != nil {
			continue
		}
		for _, op := range []struct {
			pid int
			at  int64
		}{{int(ds.Lspid), ds.Stime}, {int(ds.Lrpid), ds.Rtime}} {
			if pids[op.pid] && !startedAfter(op.pid, op.at) {
				return &HostIPCError{PID: op.pid, What: "message queue", ID: id, Key: ds.Perm.Key}
			}
		}
	}
	return nil
}

// precheckHostIPC is refuseHostIPC for the processes pids (the root
// first) when they live in migrate's IPC namespace.
func precheckHostIPC(pids []int) error {
	if len(pids) == 0 {
		return nil
	}
	theirs, err := nsLink(strconv.Itoa(pids[0]), "ipc")
	if err != nil {
		return nil // gone: left to the dump
	}
	if mine, _ := nsLink("self", "ipc"); mine != theirs {
		return nil // a container's own: carried whole
	}
	set := make(map[int]bool, len(pids))
	for _, pid := range pids {
		set[pid] = true
	}
	return refuseHostIPC(set)
}

// startedAfter says whether process pid started after the second at (a
// System V object's last operation, in seconds since the epoch): the
// operation was then another's that had the PID before. Uncertain (in
// the same second, or unreadable) is false.
func startedAfter(pid int, at int64) bool {
	st, err := proc.ReadStat(pid)
	if err != nil {
		return false
	}
	b, err := proc.ReadFile("/proc/stat")
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "btime "); ok {
			boot, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			// USER_HZ is 100 on x86-64.
			return err == nil && boot+int64(st.StartTime/100) > at
		}
	}
	return false
}
