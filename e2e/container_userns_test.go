package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/source"
	"github.com/procmig/migrate/transport"
)

// TestContainerUserNSRefusals: user namespaces are not carried, and each
// way a process may meet one is refused by name before anything is
// frozen (a source.UserNamespaceError saying which), the container
// running on untraced: a rootless container (a user namespace of its
// own, a child of migrate's), one nested below another user namespace,
// one whose user namespace a process outside it entered, a tree whose
// child lives in another user namespace than the root, and a container
// init in migrate's user namespace whose namespaces another one owns.
func TestContainerUserNSRefusals(t *testing.T) {
	testutil.RequireRoot(t)
	nsenter, err := exec.LookPath("nsenter")
	if err != nil {
		testutil.Unavailable(t, "nsenter (util-linux) is not installed: %v", err)
	}
	refused := func(t *testing.T, pid int, problem source.UserNSProblem) *source.UserNamespaceError {
		t.Helper()
		_, err := source.Dump(context.Background(), source.DumpOptions{PID: pid, Dir: t.TempDir(), Tree: true, Logger: testLogger(t)})
		var ue *source.UserNamespaceError
		if !errors.As(err, &ue) || ue.Problem != problem {
			t.Fatalf("dump of %d: %v, want a UserNamespaceError %s", pid, err, problem)
		}
		t.Logf("refused: %v", err)
		checkRunningUntraced(t, pid)
		return ue
	}
	userNS := func(pid int) string {
		l, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/user", pid))
		return l
	}
	t.Run("own", func(t *testing.T) {
		c := startContainer(t, "box-userns", []string{"--user", "--map-root-user"}, nil)
		if userNS(c.init) == userNS(os.Getpid()) {
			t.Fatalf("the container's init %d is in migrate's user namespace", c.init)
		}
		if ue := refused(t, c.init, source.UserNSOwn); ue.PID != c.init {
			t.Fatalf("refused process %d, want the init %d", ue.PID, c.init)
		}
		c.WaitTick(t, short, c.LastTick(t)+3)
	})
	t.Run("live", func(t *testing.T) {
		// `migrate --to` refuses it as the dump does, before a round.
		addr := startServe(t)
		c := startContainer(t, "box-userlive", []string{"--user", "--map-root-user"}, nil)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		rounds := 0
		_, err := source.Migrate(ctx, source.MigrateOptions{PID: c.init, To: addr, Transport: transport.Config{Insecure: true},
			Logger: testLogger(t), Progress: func(source.RoundReport) { rounds++ }})
		var ue *source.UserNamespaceError
		if !errors.As(err, &ue) || ue.Problem != source.UserNSOwn || ue.PID != c.init {
			t.Fatalf("migration of %d: %v, want a UserNamespaceError own", c.init, err)
		}
		t.Logf("refused: %v", err)
		if rounds != 0 {
			t.Errorf("%d rounds ran before the refusal", rounds)
		}
		checkRunningUntraced(t, c.init)
		c.WaitTick(t, short, c.LastTick(t)+3)
	})
	t.Run("nested", func(t *testing.T) {
		// The first unshare makes a user namespace and execs the
		// second, which makes the container's, a child of the first.
		unshare, args := containerArgs(t, "box-usernested", []string{"--user", "--map-root-user"}, nil)
		c := adoptContainer(t, testutil.Start(t, unshare, append([]string{"--user", "--map-root-user", "--", unshare}, args...)...))
		refused(t, c.init, source.UserNSNested)
		c.WaitTick(t, short, c.LastTick(t)+3)
	})
	t.Run("shared", func(t *testing.T) {
		c := startContainer(t, "box-usershared", []string{"--user", "--map-root-user"}, nil)
		// nsenter enters the user namespace alone and execs sleep.
		s := testutil.Start(t, nsenter, "--target", fmt.Sprint(c.init), "--user", "--", "sleep", "600")
		testutil.WaitFor(t, short, "nsenter in the container's user namespace", func() bool {
			return userNS(s.PID) == userNS(c.init)
		})
		if ue := refused(t, c.init, source.UserNSShared); ue.Other != s.PID {
			t.Fatalf("refusal names process %d, want the outsider %d", ue.Other, s.PID)
		}
		c.WaitTick(t, short, c.LastTick(t)+3)
	})
	t.Run("mixed", func(t *testing.T) {
		unshare, err := exec.LookPath("unshare")
		if err != nil {
			testutil.Unavailable(t, "unshare (util-linux) is not installed: %v", err)
		}
		// A plain tree: the sleeper, whose child (unshare, exec'd to a
		// sleep) lives in a user namespace of its own.
		p := testutil.Start(t, "/bin/sh", "-c", unshare+" --user --map-root-user sleep 600 & wait")
		var child int
		testutil.WaitFor(t, short, "the child in a user namespace", func() bool {
			kids := childrenOf(t, p.PID)
			if len(kids) == 1 && userNS(kids[0]) != userNS(p.PID) {
				child = kids[0]
			}
			return child != 0
		})
		// Before the shell's cleanup: the shell reaps its child and exits.
		t.Cleanup(func() { unix.Kill(child, unix.SIGKILL); p.Reap(t) })
		if ue := refused(t, p.PID, source.UserNSMixed); ue.PID != child || ue.Other != p.PID {
			t.Fatalf("refused process %d (other %d), want %d (root %d)", ue.PID, ue.Other, child, p.PID)
		}
	})
	t.Run("owner", func(t *testing.T) {
		unshare, err := exec.LookPath("unshare")
		if err != nil {
			testutil.Unavailable(t, "unshare (util-linux) is not installed: %v", err)
		}
		// unshare's sleep holds a user namespace and a mount namespace it
		// owns; nsenter puts the process (exec'd to a sleep) in that
		// mount namespace alone, in migrate's user namespace. A mount
		// namespace of its own is carried, but the restore would make it
		// owned by migrate's user namespace.
		holder := testutil.Start(t, unshare, "--user", "--map-root-user", "--mount", "sleep", "600")
		testutil.WaitFor(t, short, "the namespaces' holder", func() bool {
			return userNS(holder.PID) != userNS(os.Getpid())
		})
		p := testutil.Start(t, nsenter, fmt.Sprintf("--mount=/proc/%d/ns/mnt", holder.PID), "--", "sleep", "600")
		mnt := func(pid int) string { l, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid)); return l }
		testutil.WaitFor(t, short, "nsenter in the mount namespace", func() bool {
			return mnt(p.PID) == mnt(holder.PID)
		})
		if ue := refused(t, p.PID, source.UserNSOwner); ue.Kind != "mnt" || ue.PID != p.PID {
			t.Fatalf("refusal names process %d's %s namespace, want %d's mnt", ue.PID, ue.Kind, p.PID)
		}
	})
}
