package target

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/core/ptrace"
)

// Securebits (linux/securebits.h).
const (
	secbitNoSetuidFixup = 1 << 2
	secbitKeepCaps      = 1 << 4
)

// capsetV3 is the header version of the 64-bit capset.
const capsetV3 = 0x20080522

// credArgs is the offset in the scratch area of the data of the calls
// that set a thread's credentials (setCreds), in one batch after the
// signal actions': two capset structures, then the groups.
const credArgs = stateArgs

// restoreCreds gives every thread its credentials: ids, groups,
// capabilities, securebits and no_new_privs, and then the process its
// dumpable flag. Credentials are per thread in the kernel and a raw system
// call changes only the caller's, so each thread runs its own.
//
// Preconditions: the threads are created and every injected system call
// that needs privilege is done (what follows is queueing signals to the
// process itself, closing its own fd and unmapping its own memory). The
// threads have the restorer's credentials (the husk was forked from it),
// and its securebits.
func (r *restorer) restoreCreds() error {
	own, err := unix.PrctlRetInt(unix.PR_GET_SECUREBITS, 0, 0, 0, 0)
	if err != nil {
		return fmt.Errorf("securebits of the restorer: %w", err)
	}
	last, err := capLastCap()
	if err != nil {
		return err
	}
	changed := false
	for i, t := range r.proc.Threads {
		th := r.p.Threads[i]
		want := &r.proc.Creds
		if t.Creds != nil {
			want = t.Creds
		}
		st, err := proc.ReadTaskStatus(r.pid, th.TID)
		if err != nil {
			return fmt.Errorf("thread %d: credentials: %w", t.TID, err)
		}
		cur := st.Creds()
		cur.Securebits = uint32(own)
		if r.userNS() != nil {
			// The kernel gave the root of a new user namespace (and so
			// every process forked from it) the default securebits, none.
			cur.Securebits = 0
		}
		if !cur.Equal(want) {
			changed = true
		}
		// The husk is dumpable; changing credentials made the process
		// fs.suid_dumpable (0 here). PR_SET_DUMPABLE takes 0 and 1
		// only. In the last thread's batch, after every change.
		var tail []ptrace.Call
		if d := r.proc.Dumpable; i == len(r.proc.Threads)-1 && (d == 0 || d == 1) && (changed || d == 0) {
			tail = append(tail, ptrace.Call{Name: "prctl(PR_SET_DUMPABLE)", Nr: unix.SYS_PRCTL, Args: [6]uint64{unix.PR_SET_DUMPABLE, uint64(d)}})
		}
		if err := r.setCreds(th, cur, want, last, tail); err != nil {
			return fmt.Errorf("thread %d: %w", t.TID, err)
		}
	}
	return nil
}

// capLastCap is the highest capability this kernel knows.
func capLastCap() (int, error) {
	b, err := proc.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return 0, fmt.Errorf("cap_last_cap: %w", err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || n < 0 || n > 63 {
		return 0, fmt.Errorf("cap_last_cap %q: not a capability number", b)
	}
	return n, nil
}

// capNames are the capabilities by number (linux/capability.h).
var capNames = [...]string{
	"chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid", "setuid",
	"setpcap", "linux_immutable", "net_bind_service", "net_broadcast", "net_admin", "net_raw",
	"ipc_lock", "ipc_owner", "sys_module", "sys_rawio", "sys_chroot", "sys_ptrace", "sys_pacct",
	"sys_admin", "sys_boot", "sys_nice", "sys_resource", "sys_time", "sys_tty_config", "mknod",
	"lease", "audit_write", "audit_control", "setfcap", "mac_override", "mac_admin", "syslog",
	"wake_alarm", "block_suspend", "audit_read", "perfmon", "bpf", "checkpoint_restore",
}

// capList names the capabilities of mask: CAP_SYS_RESOURCE, or the
// number of one newer than this build.
func capList(mask uint64) string {
	var s []string
	for ; mask != 0; mask &= mask - 1 {
		c := bits.TrailingZeros64(mask)
		if c < len(capNames) {
			s = append(s, "CAP_"+strings.ToUpper(capNames[c]))
		} else {
			s = append(s, "capability "+strconv.Itoa(c))
		}
	}
	return strings.Join(s, ", ")
}

// setCreds changes thread th's credentials from cur to want, in an order
// where each step keeps the right to do the next:
//
//  1. securebits NO_SETUID_FIXUP and KEEP_CAPS, so that changing the uids
//     does not touch the capabilities;
//  2. setgroups, setresgid, setresuid, setfsgid, setfsuid (CAP_SETGID,
//     CAP_SETUID);
//  3. capset of the inheritable set alone, while the bounding set is
//     still whole (the new inheritable set must lie in it);
//  4. the ambient set (each capability must be permitted and inheritable,
//     and SECBIT_NO_CAP_AMBIENT_RAISE not set yet);
//  5. PR_CAPBSET_DROP for each capability out of the bounding set, then the
//     final securebits, locks included (both need CAP_SETPCAP);
//  6. capset of all three sets, which drops CAP_SETPCAP and the rest;
//  7. PR_SET_NO_NEW_PRIVS.
//
// A step with nothing to change is not run: a thread that keeps the
// restorer's credentials costs no system call. The steps are injected in
// one batch, with tail after them. Capabilities the restorer
// does not have cannot be given: they are left out with a warning.
//
// cur are the thread's credentials; setCreds keeps them up to date.
func (r *restorer) setCreds(th *ptrace.Thread, cur, want *core.Creds, last int, tail []ptrace.Call) error {
	w := *want
	all := uint64(1)<<(last+1) - 1
	if lost := (w.CapPrm | w.CapBnd | w.CapInh) &^ all; lost != 0 {
		r.warnDiff(r.pid, th.TID, "credentials", "thread %d: %s unknown to this kernel: left out", th.TID, capList(lost))
	}
	w.CapPrm, w.CapBnd, w.CapInh = w.CapPrm&all, w.CapBnd&all, w.CapInh&all
	if lost := w.CapPrm &^ cur.CapPrm; lost != 0 {
		r.warnDiff(r.pid, th.TID, "credentials", "thread %d: permitted %s not restored: the restorer does not have it", th.TID, capList(lost))
	}
	if lost := w.CapBnd &^ cur.CapBnd; lost != 0 {
		r.warnDiff(r.pid, th.TID, "credentials", "thread %d: %s not restored in the bounding set: the restorer's lacks it", th.TID, capList(lost))
	}
	if lost := w.CapInh &^ (cur.CapInh | cur.CapBnd); lost != 0 {
		r.warnDiff(r.pid, th.TID, "credentials", "thread %d: inheritable %s not restored: out of the restorer's bounding set", th.TID, capList(lost))
	}
	w.CapPrm &= cur.CapPrm
	w.CapBnd &= cur.CapBnd
	w.CapInh &= cur.CapInh | cur.CapBnd
	w.CapEff &= w.CapPrm
	w.CapAmb &= w.CapPrm & w.CapInh

	// The calls are made in one batch (ptrace.SyscallBatch), their data
	// at credArgs: a failure anywhere fails the restore, which then never
	// lets the process run, so the calls after a failed one do no harm.
	var calls []ptrace.Call
	var data []byte
	call := func(name string, nr uintptr, args ...uint64) {
		c := ptrace.Call{Name: name, Nr: nr}
		copy(c.Args[:], args)
		calls = append(calls, c)
	}
	// put adds b to the data and returns its address in the tracee.
	put := func(b []byte) uint64 {
		addr := r.scratch + credArgs + uint64(len(data))
		data = append(data, b...)
		return addr
	}
	securebits := func(v uint32) {
		if cur.Securebits != v {
			call("prctl(PR_SET_SECUREBITS)", unix.SYS_PRCTL, unix.PR_SET_SECUREBITS, uint64(v))
			cur.Securebits = v
		}
	}
	capset := func(eff, prm, inh uint64) {
		if cur.CapEff == eff && cur.CapPrm == prm && cur.CapInh == inh {
			return
		}
		var b [8 + 24]byte
		le := binary.LittleEndian
		le.PutUint32(b[0:], capsetV3)
		for i, v := range []uint64{eff, prm, inh} {
			le.PutUint32(b[8+4*i:], uint32(v))
			le.PutUint32(b[8+12+4*i:], uint32(v>>32))
		}
		addr := put(b[:])
		call("capset", unix.SYS_CAPSET, addr, addr+8)
		cur.CapEff, cur.CapPrm, cur.CapInh = eff, prm, inh
		cur.CapAmb &= prm & inh // as the kernel does
	}

	ids := cur.UID != w.UID || cur.GID != w.GID || cur.FSUID != w.FSUID || cur.FSGID != w.FSGID ||
		!slices.Equal(cur.Groups, w.Groups)
	// The IDs the system calls take: inside the container's user
	// namespace, those the maps give for the image's (seen from
	// outside), which the comparisons use.
	in := &w
	if u := r.userNS(); u != nil && ids {
		var err error
		if in, err = innerCreds(u, &w); err != nil {
			return err
		}
		if u.SetGroups == "deny" && !slices.Equal(cur.Groups, w.Groups) {
			return fmt.Errorf("supplementary groups %v, the restorer's %v: setgroups is denied in the container's user namespace", w.Groups, cur.Groups)
		}
	}
	if ids {
		// 1.
		securebits(cur.Securebits | secbitNoSetuidFixup | secbitKeepCaps)
		// 2.
		if !slices.Equal(cur.Groups, w.Groups) {
			groups := make([]byte, 4*len(in.Groups))
			for i, g := range in.Groups {
				binary.LittleEndian.PutUint32(groups[4*i:], g)
			}
			call("setgroups", unix.SYS_SETGROUPS, uint64(len(in.Groups)), put(groups))
		}
		call("setresgid", unix.SYS_SETRESGID, uint64(in.GID[0]), uint64(in.GID[1]), uint64(in.GID[2]))
		call("setresuid", unix.SYS_SETRESUID, uint64(in.UID[0]), uint64(in.UID[1]), uint64(in.UID[2]))
		// setfs[ug]id report the old value, not an error: the check
		// below sees what they did.
		if w.FSGID != w.GID[1] {
			call("setfsgid", unix.SYS_SETFSGID, uint64(in.FSGID))
		}
		if w.FSUID != w.UID[1] {
			call("setfsuid", unix.SYS_SETFSUID, uint64(in.FSUID))
		}
	}
	// 3.
	capset(cur.CapEff, cur.CapPrm, w.CapInh)
	// 4.
	if cur.CapAmb != w.CapAmb {
		if cur.CapAmb&^w.CapAmb != 0 {
			call("prctl(PR_CAP_AMBIENT_CLEAR_ALL)", unix.SYS_PRCTL, unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
			cur.CapAmb = 0
		}
		for m := w.CapAmb &^ cur.CapAmb; m != 0; m &= m - 1 {
			c := bits.TrailingZeros64(m)
			call("prctl(PR_CAP_AMBIENT_RAISE, "+capList(1<<c)+")", unix.SYS_PRCTL, unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_RAISE, uint64(c), 0, 0)
		}
		cur.CapAmb = w.CapAmb
	}
	// 5.
	for m := cur.CapBnd &^ w.CapBnd; m != 0; m &= m - 1 {
		c := bits.TrailingZeros64(m)
		call("prctl(PR_CAPBSET_DROP, "+capList(1<<c)+")", unix.SYS_PRCTL, unix.PR_CAPBSET_DROP, uint64(c))
	}
	cur.CapBnd = w.CapBnd
	securebits(w.Securebits)
	// 6.
	capset(w.CapEff, w.CapPrm, w.CapInh)
	// 7.
	if w.NoNewPrivs && !cur.NoNewPrivs {
		call("prctl(PR_SET_NO_NEW_PRIVS)", unix.SYS_PRCTL, unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
		cur.NoNewPrivs = true
	} else if !w.NoNewPrivs && cur.NoNewPrivs {
		return fmt.Errorf("no_new_privs is set in the restorer and cannot be cleared")
	}
	calls = append(calls, tail...)
	if len(calls) > 0 {
		if ptrace.BatchTableSize(len(calls)) > credArgs-batchTable {
			return fmt.Errorf("%d calls to set the credentials: more than a batch holds", len(calls))
		}
		if len(data) > 0 {
			if _, err := r.put(credArgs, data); err != nil {
				return fmt.Errorf("credentials (%d supplementary groups): %w", len(in.Groups), err)
			}
		}
		if _, err := r.p.SyscallBatch(th, r.scratch+batchTable, calls); err != nil {
			return err
		}
	}
	// What the kernel shows must be what was asked.
	st, err := proc.ReadTaskStatus(r.pid, th.TID)
	if err != nil {
		return fmt.Errorf("credentials: %w", err)
	}
	got := st.Creds()
	if got.UID != w.UID || got.GID != w.GID || got.FSUID != w.FSUID || got.FSGID != w.FSGID {
		return fmt.Errorf("ids uid %v fsuid %d gid %v fsgid %d after setting them, want uid %v fsuid %d gid %v fsgid %d",
			got.UID, got.FSUID, got.GID, got.FSGID, w.UID, w.FSUID, w.GID, w.FSGID)
	}
	got.Securebits = w.Securebits // not shown in status
	if !got.Equal(&w) {
		return fmt.Errorf("credentials %+v after setting them, want %+v", *got, w)
	}
	return nil
}
