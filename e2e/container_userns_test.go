package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"reflect"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/e2e/cluster"
	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/source"
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
	t.Run("own", func(t *testing.T) {
		// A process of its own user namespace outside a container (not
		// the init of a PID namespace of its own).
		unshare, err := exec.LookPath("unshare")
		if err != nil {
			testutil.Unavailable(t, "unshare (util-linux) is not installed: %v", err)
		}
		p := testutil.Start(t, unshare, "--user", "--map-root-user", "sleep", "600")
		testutil.WaitFor(t, short, "sleep in its user namespace", func() bool {
			return userNS(p.PID) != userNS(os.Getpid()) && execd(p.PID, "sleep")
		})
		if ue := refused(t, p.PID, source.UserNSOwn); ue.PID != p.PID {
			t.Fatalf("refused process %d, want %d", ue.PID, p.PID)
		}
	})
	t.Run("time", func(t *testing.T) {
		// A time namespace of its own in a rootless container: the restore
		// makes one in the husk, outside the user namespace.
		c := startContainer(t, "box-usertime", []string{"--user", "--map-root-user", "--time"}, nil)
		if ue := refused(t, c.init, source.UserNSUnsupported); ue.Kind != "time" {
			t.Fatalf("refusal names the %s namespace, want time", ue.Kind)
		}
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
			return userNS(holder.PID) != userNS(os.Getpid()) && execd(holder.PID, "sleep")
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

// userNSView is what the test compares of a process of a container with
// a user namespace of its own, before the dump and after the restore:
// the maps and setgroups of its user namespace, its credentials as seen
// from outside (here) and from inside (by a reader in its user
// namespace), and who owns its namespaces.
type userNSView struct {
	maps, outside, inside string
	owned                 []string
}

// credLines are the credential lines of a /proc/PID/status.
func credLines(status string) string {
	var out []string
	for _, l := range strings.Split(status, "\n") {
		for _, p := range []string{"Uid:", "Gid:", "Groups:", "CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:", "NoNewPrivs:"} {
			if strings.HasPrefix(l, p) {
				out = append(out, strings.Join(strings.Fields(l), " "))
			}
		}
	}
	return strings.Join(out, "; ")
}

func viewUserNS(t *testing.T, pid int) userNSView {
	t.Helper()
	var v userNSView
	for _, f := range []string{"uid_map", "gid_map", "setgroups"} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", pid, f))
		if err != nil {
			t.Fatal(err)
		}
		v.maps += f + ": " + strings.Join(strings.Fields(string(b)), " ") + "; "
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	v.outside = credLines(string(b))
	nsenter, err := exec.LookPath("nsenter")
	if err != nil {
		testutil.Unavailable(t, "nsenter (util-linux) is not installed: %v", err)
	}
	out, err := exec.Command(nsenter, "--target", fmt.Sprint(pid), "--user", "--preserve-credentials", "--", "cat", fmt.Sprintf("/proc/%d/status", pid)).CombinedOutput()
	if err != nil {
		t.Fatalf("read %d's status from its user namespace: %v: %s", pid, err, out)
	}
	v.inside = credLines(string(out))
	user, err := proc.NamespaceOf(fmt.Sprintf("/proc/%d/ns/user", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, kind := range []string{"cgroup", "ipc", "mnt", "pid", "uts"} {
		mine, _ := os.Readlink("/proc/self/ns/" + kind)
		its, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", pid, kind))
		if mine == its {
			continue
		}
		owner, err := proc.NamespaceIoctl(fmt.Sprintf("/proc/%d/ns/%s", pid, kind), unix.NS_GET_USERNS)
		if err != nil {
			t.Fatal(err)
		}
		v.owned = append(v.owned, fmt.Sprintf("%s owned by its user namespace: %v", kind, owner == user))
	}
	return v
}

// TestContainerUserNSDumpRestore: a container in a user namespace of its
// own (unshare --user --map-root-user, with a mount namespace and its
// proc, or without) is dumped and restored: the same maps and setgroups,
// its namespaces owned by its new user namespace, the same credentials
// seen from outside and from inside, the same PIDs inside and out, host
// name, semaphores and messages, its own checks passing.
func TestContainerUserNSDumpRestore(t *testing.T) {
	testutil.RequireRoot(t)
	for _, tc := range []struct {
		name  string
		extra []string
	}{
		{"map-root-user", []string{"--user", "--map-root-user"}},
		{"mount-proc", []string{"--user", "--map-root-user", "--mount-proc"}},
		{"cgroup", []string{"--user", "--map-root-user", "--cgroup"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			host := "box-userns"
			c := startContainer(t, host, tc.extra, nil)
			before := containerViews(t, c.init)
			if userNS(c.init) == userNS(os.Getpid()) {
				t.Fatalf("the container's init %d is in migrate's user namespace", c.init)
			}
			dir := t.TempDir()
			if _, err := source.Dump(context.Background(), source.DumpOptions{PID: c.init, Dir: dir, Logger: testLogger(t)}); err != nil {
				t.Fatalf("dump the container's init %d: %v", c.init, err)
			}
			c.Reap(t)
			last := len(testutil.LogLines(t, c.Log))
			img, err := core.ReadImage(dir)
			if err != nil {
				t.Fatal(err)
			}
			if img.Namespaces == nil || img.Namespaces.User == nil {
				t.Fatalf("the image has no user namespace: %+v", img.Namespaces)
			}
			r := restoreOK(t, dir, c.Log)
			r.WaitTick(t, short, lastLogTick(t, c.Log)+5)
			// (The child's PID outside may differ: moveOuter.)
			child := onlyChild(t, c.init)
			checkContainerInside(t, c.Log, c.init, child, host, last)
			if got := containerViews(t, c.init); !reflect.DeepEqual(got, before) {
				t.Errorf("after the restore:\n%+v\nwant\n%+v", got, before)
			}
			if userNS(c.init) == userNS(os.Getpid()) || userNS(child) != userNS(c.init) {
				t.Errorf("user namespaces after the restore: init %s, child %s, migrate's %s", userNS(c.init), userNS(child), userNS(os.Getpid()))
			}
			containerReport(t, c.Log, c.init, host)
			r.WaitExit(t, short)
		})
	}
}

// execd says whether pid runs comm: unshare, which writes its new user
// namespace's maps after making it, has exec'd the command it was given.
func execd(pid int, comm string) bool {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return string(b) == comm+"\n"
}

func userNS(pid int) string {
	l, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/user", pid))
	return l
}

// TestContainerUserNSMaps: containers whose user namespace maps a range
// (0 to 100000 outside, 65536 IDs) with setgroups allowed, written by the
// starter (no newuidmap): the container workload as root inside (100000
// outside), and a multithreaded program as uid 1000 inside (101000
// outside, no capability), the child of a shell, PID 1. Each is dumped
// and restored with the same maps, credentials outside and inside,
// PIDs, threads and TIDs, and runs on.
func TestContainerUserNSMaps(t *testing.T) {
	testutil.RequireRoot(t)
	// start runs path in new namespaces (flags besides the user and PID
	// ones), as uid inside; without flags in a session of its own (the
	// container workload makes its own).
	start := func(t *testing.T, uid uint32, flags uintptr, path string, args ...string) *testutil.Proc {
		m := []syscall.SysProcIDMap{{ContainerID: 0, HostID: 100000, Size: 65536}}
		return testutil.StartWith(t, testutil.Options{Dir: "/", Setsid: flags == 0, Attr: func(a *syscall.SysProcAttr) {
			a.Cloneflags = syscall.CLONE_NEWUSER | syscall.CLONE_NEWPID | flags
			a.UidMappings, a.GidMappings, a.GidMappingsEnableSetgroups = m, m, true
			a.Credential = &syscall.Credential{Uid: uid, Gid: uid}
		}}, path, args...)
	}
	// churn, while it runs, has this process make and end threads (each
	// takes a PID here): the PIDs outside the restore asks the kernel
	// for are taken now and then.
	churn := func() func() {
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			for {
				select {
				case <-stop:
					return
				default:
				}
				ended := make(chan struct{})
				go func() {
					runtime.LockOSThread() // never unlocked: the thread ends with it
					close(ended)
				}()
				<-ended
			}
		}()
		return func() { close(stop); <-done }
	}
	dumpRestore := func(t *testing.T, p *testutil.Proc, withChurn bool) *testutil.Proc {
		t.Helper()
		before := containerViews(t, p.PID)
		t.Logf("before: %+v", before[1])
		dir := t.TempDir()
		if _, err := source.Dump(context.Background(), source.DumpOptions{PID: p.PID, Dir: dir, Logger: testLogger(t)}); err != nil {
			t.Fatalf("dump %d: %v", p.PID, err)
		}
		p.Reap(t)
		stop := func() {}
		if withChurn {
			stop = churn()
		}
		r := restoreOK(t, dir, p.Log)
		stop()
		if got := containerViews(t, p.PID); !reflect.DeepEqual(got, before) {
			t.Errorf("after the restore:\n%+v\nwant\n%+v", got, before)
		}
		return r
	}
	t.Run("root", func(t *testing.T) {
		p := start(t, 0, syscall.CLONE_NEWUTS|syscall.CLONE_NEWIPC, testutil.Build(t, "container"), "box-maps")
		p.WaitLine(t, short, 0, "ready pid=1 child=2")
		p.WaitTick(t, short, 3)
		last := len(testutil.LogLines(t, p.Log))
		r := dumpRestore(t, p, false)
		r.WaitTick(t, short, lastLogTick(t, p.Log)+5)
		checkContainerInside(t, p.Log, p.PID, onlyChild(t, p.PID), "box-maps", last)
		containerReport(t, p.Log, p.PID, "box-maps")
		r.WaitExit(t, short)
	})
	for _, withChurn := range []bool{false, true} {
		t.Run(fmt.Sprintf("uid1000-threads-churn=%v", withChurn), func(t *testing.T) {
			// A shell is the init (the dump's kill of a multithreaded init
			// of a PID namespace is another matter), prog_threads its child.
			p := start(t, 1000, 0, "/bin/sh", "-c", testutil.Build(t, "prog_threads")+" & wait")
			p.WaitTick(t, short, 3)
			// The TIDs inside of prog_threads's threads.
			tids := func(prog int) []int {
				ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", prog))
				var out []int
				for _, e := range ents {
					b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", prog, e.Name()))
					for _, l := range strings.Split(string(b), "\n") {
						if f := strings.Fields(l); len(f) > 0 && f[0] == "NSpid:" {
							n, _ := strconv.Atoi(f[len(f)-1])
							out = append(out, n)
						}
					}
				}
				slices.Sort(out)
				return out
			}
			want := tids(onlyChild(t, p.PID))
			if len(want) < 2 {
				t.Fatalf("prog_threads has threads %v", want)
			}
			r := dumpRestore(t, p, withChurn)
			if got := tids(onlyChild(t, p.PID)); !reflect.DeepEqual(got, want) {
				t.Errorf("threads after the restore: %v, want %v", got, want)
			}
			r.WaitTick(t, short, lastLogTick(t, p.Log)+5)
			for _, l := range testutil.LogLines(t, p.Log) {
				if strings.HasPrefix(l, "FAIL") {
					t.Fatalf("prog_threads: %q", l)
				}
			}
		})
	}
}

// TestContainerUserNSLive: a container in a user namespace of its own
// (with its mount namespace and proc) moves live from node A to node B and
// back, with the same maps, setgroups, owners and credentials outside and
// inside after each hop.
func TestContainerUserNSLive(t *testing.T) {
	c := newCluster(t, cluster.Options{})
	var want map[int]userNSView
	view := func(init int) map[int]userNSView { return containerViews(t, init) }
	liveContainer(t, c, "box-userlive", []string{"--user", "--map-root-user", "--mount-proc"},
		func(init int) { want = view(init) },
		func(init int) {
			if got := view(init); !reflect.DeepEqual(got, want) {
				t.Errorf("after the hop:\n%+v\nwant\n%+v", got, want)
			}
		})
}

// onlyChild is the one child of process pid.
func onlyChild(t *testing.T, pid int) int {
	t.Helper()
	kids := childrenOf(t, pid)
	if len(kids) != 1 {
		t.Fatalf("process %d has children %v, want one", pid, kids)
	}
	return kids[0]
}

// containerViews are the views of a container's init and its one child,
// by their PIDs inside (those outside may differ after a restore or a
// move to another node).
func containerViews(t *testing.T, init int) map[int]userNSView {
	t.Helper()
	return map[int]userNSView{1: viewUserNS(t, init), 2: viewUserNS(t, onlyChild(t, init))}
}
