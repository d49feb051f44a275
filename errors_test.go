package migrate

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/internal/handoff"
	"github.com/procmig/migrate/source"
	"github.com/procmig/migrate/target"
)

// TestErrors: the typed refusals, the peer's word, timeouts and host
// limits of packages source and target come out as this package's types,
// found by errors.As through the wrapping the work adds, with the text
// unchanged and the original type still inside.
func TestErrors(t *testing.T) {
	wrap := func(err error) error {
		return &handoff.SourceError{Session: "0123456789abcdef0123456789abcdef", Phase: handoff.PhaseFinal, Err: err}
	}
	for _, tc := range []struct {
		err   error
		check func(error) bool
	}{
		{&source.BadTargetError{PID: 7, Reason: "it lives in net namespaces other than migrate's"}, refusedAs(RefusedProcess, 7)},
		{&source.FreezerError{PID: 7, Reason: "process 9 shares cgroup /c with the tree"}, refusedAs(RefusedCgroup, 7)},
		{fmt.Errorf("collect: %w", &source.UnsupportedFDError{PID: 7, FD: 3, Kind: "file", Reason: "it holds a file lock"}), refusedAs(RefusedFD, 7)},
		{wrap(&source.UnsupportedMappingError{PID: 8, Name: "/dev/dri"}), refusedAs(RefusedMapping, 8)},
		{&source.AccessError{PID: 9}, refusedAs(RefusedAccess, 9)},
		{&target.PIDInUseError{PID: 10, Holder: "bash"}, refusedAs(RefusedPIDInUse, 10)},
		{&target.AffinityError{PID: 11, TID: 12}, refusedAs(RefusedAffinity, 11)},
		{&target.AttrError{PID: 13, Attr: "nice"}, refusedAs(RefusedAttribute, 13)},
		{&target.VDSOMismatchError{Reason: "size"}, refusedAs(RefusedVDSO, 0)},
		{wrap(&source.SeccompError{PID: 16, TID: 16, Filter: 0, Reason: "a user-space listener"}), refusedAs(RefusedSeccomp, 16)},
		{wrap(&source.LandlockError{PID: 17, TID: 18}), refusedAs(RefusedLandlock, 17)},
		{&target.LockError{PID: 17, FD: 3, Path: "/tmp/l", Holder: 99}, refusedAs(RefusedLock, 17)},
		{&target.CgroupError{PID: 18, Path: "/gone", Reason: "no such cgroup"}, refusedAs(RefusedCgroup, 18)},
		{&target.AuditError{PID: 21, Want: core.Audit{LoginUID: 1}}, refusedAs(RefusedAudit, 21)},
		{&target.ShmError{ID: 5, Key: 7, Reason: "its key is taken by segment 9"}, refusedAs(RefusedShm, 0)},
		// The target's ShmError in a live migration: its Abort's code.
		{wrap(&handoff.PeerError{Abort: true, Code: (&target.ShmError{}).AbortCode(), Text: "target: layout: System V segment 5 (key 0x7): its key is taken by segment 9"}), refusedAs(RefusedShm, 0)},
		{&target.InheritError{ID: "pipe:[5]", Reason: "the image holds no such object"}, refusedAs(RefusedInherit, 0)},
		{&source.InheritError{ID: "pipe:[5]", Reason: "no process of the migration holds it"}, refusedAs(RefusedInherit, 0)},
		{&target.TimeNamespaceError{Reason: "this kernel has none"}, refusedAs(RefusedClock, 0)},
		{&target.CPUFeatureError{Missing: "AVX-512", InUse: true}, refusedAs(RefusedCPU, 0)},
		{&source.NamespaceError{PID: 23, Kinds: []string{"mnt"}, Reason: "not carried"}, refusedAs(RefusedNamespace, 23)},
		{wrap(&source.UserNamespaceError{PID: 25, Problem: source.UserNSNested, Reason: "nested"}), refusedAs(RefusedUserNamespace, 25)},
		{&target.IPCError{What: "message queue", ID: 2, Err: errors.New("msgsnd")}, refusedAs(RefusedIPC, 0)},
		{&source.HostIPCError{PID: 7, What: "semaphore set", ID: 3}, refusedAs(RefusedIPC, 7)},
		{wrap(&source.UnsupportedMountError{PID: 22, Point: "/o", FSType: "overlay", Reason: "not rebuilt"}), refusedAs(RefusedMount, 22)},
		{fmt.Errorf("create processes: %w", &target.MountError{Point: "/b", Reason: "its host path is not here"}), refusedAs(RefusedMount, 0)},
		{&source.FilesNotSharedError{PID: 24, Files: []source.NotSharedFile{{PID: 24, Path: "/var/log/app.log", Why: "the target has no file there"}}}, refusedAs(RefusedFilesNotShared, 24)},
		{wrap(&handoff.PeerError{Abort: true, Code: (&target.FilesError{}).AbortCode(), Text: "target: synced files: /srv/x here is user 5's"}), refusedAs(RefusedFilesNotShared, 0)},
		{&target.CheckError{Diffs: []target.Difference{{PID: 19, What: "umask", Got: "022", Want: "077"}}}, refusedAs(RefusedDiffers, 0)},
		{wrap(&handoff.PeerError{Abort: true, Text: "target: prepare: pid 10 is already in use"}), func(err error) bool {
			var pe *PeerError
			return errors.As(err, &pe) && pe.Abort && pe.Text == "target: prepare: pid 10 is already in use"
		}},
		{wrap(fmt.Errorf("%w: no ready within 1m0s", handoff.ErrTimeout)), func(err error) bool {
			var te *TimeoutError
			return errors.As(err, &te) && te.Timeout() && errors.Is(err, handoff.ErrTimeout)
		}},
		{fmt.Errorf("dial: %w", context.DeadlineExceeded), func(err error) bool {
			var te *TimeoutError
			return errors.As(err, &te)
		}},
		// An undecided commit is that, whatever failed on the way.
		{&handoff.UndecidedError{PID: 14, Session: "s", Target: "t", Err: fmt.Errorf("no final answer: %w", context.DeadlineExceeded)}, func(err error) bool {
			var ue *UndecidedError
			var te *TimeoutError
			return errors.As(err, &ue) && ue.PID == 14 && ue.Session == "s" && ue.Target == "t" && !errors.As(err, &te)
		}},
		{&handoff.KillError{PID: 15, Err: errors.New("ESRCH")}, func(err error) bool {
			var ke *KillError
			return errors.As(err, &ke) && ke.PID == 15
		}},
		{&target.HostLimitError{What: "fs.nr_open", Need: 5000, Limit: 1024}, func(err error) bool {
			var hl *HostLimitError
			return errors.As(err, &hl) && hl.What == "fs.nr_open" && hl.Need == 5000 && hl.Limit == 1024
		}},
	} {
		got := wrapErr(tc.err)
		if !tc.check(got) {
			t.Errorf("%T %v: wrapped as %T", tc.err, tc.err, got)
		}
		if got.Error() != tc.err.Error() {
			t.Errorf("text changed:\n got %q\nwant %q", got.Error(), tc.err.Error())
		}
		if !errors.Is(got, tc.err) {
			t.Errorf("%T: the original is not inside", tc.err)
		}
	}
	plain := errors.New("boom")
	if wrapErr(plain) != plain || wrapErr(nil) != nil {
		t.Error("an error of no known kind is wrapped")
	}
}

func refusedAs(kind RefusalKind, pid int) func(error) bool {
	return func(err error) bool {
		var r *RefusedError
		return errors.As(err, &r) && r.Kind == kind && r.PID == pid
	}
}
