package e2e

// Containers started by runc (issue 14): runc is built from its Go module
// (cached under the user's cache directory), its container runs the
// counter workload in a root filesystem made of the host's directories,
// with runc's own mounts (proc, /dev with its device nodes, devpts,
// /dev/shm, mqueue, a read-only sysfs, the cgroup hierarchies, masked
// and read-only paths), capabilities, no_new_privs and rlimits.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/e2e/cluster"
	"github.com/procmig/migrate/internal/testutil"
)

// runcVersion is the runc module the tests build.
const runcVersion = "v1.5.3"

var runcOnce struct {
	sync.Once
	path, why string
}

// runcBinary returns runc, built once from its Go module into the user's
// cache directory (migrate-runc/runc-VERSION), without seccomp (no
// libseccomp needed); the test is skipped, naming why, where it cannot be
// built.
func runcBinary(t *testing.T) string {
	t.Helper()
	runcOnce.Do(func() {
		cache, err := os.UserCacheDir()
		if err != nil {
			runcOnce.why = fmt.Sprintf("no cache directory: %v", err)
			return
		}
		dir := filepath.Join(cache, "migrate-runc")
		bin := filepath.Join(dir, "runc-"+runcVersion)
		if _, err := os.Stat(bin); err == nil {
			runcOnce.path = bin
			return
		}
		goBin, err := exec.LookPath("go")
		if err != nil {
			if goBin, err = exec.LookPath("/usr/local/go/bin/go"); err != nil {
				runcOnce.why = "go is not installed, to build runc"
				return
			}
		}
		tmp, err := os.MkdirTemp("", "migrate-runc-")
		if err != nil {
			runcOnce.why = err.Error()
			return
		}
		defer os.RemoveAll(tmp)
		cmd := exec.Command(goBin, "install", "github.com/opencontainers/runc@"+runcVersion)
		cmd.Env = append(os.Environ(), "GOBIN="+tmp, "GOFLAGS=-mod=mod", "CGO_ENABLED=1")
		if out, err := cmd.CombinedOutput(); err != nil {
			runcOnce.why = fmt.Sprintf("runc %s could not be built (go install, with cgo): %v\n%s", runcVersion, err, out)
			return
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			runcOnce.why = err.Error()
			return
		}
		if err := os.Rename(filepath.Join(tmp, "runc"), bin); err != nil {
			runcOnce.why = err.Error()
			return
		}
		runcOnce.path = bin
	})
	if runcOnce.path == "" {
		testutil.Unavailable(t, "%s", runcOnce.why)
	}
	return runcOnce.path
}

// runcContainer is a container runc started.
type runcContainer struct {
	runc, state, id string
	init            int    // its init here
	log             string // the workload's output (in its root filesystem)
	root            string // the root filesystem's host directory
}

// runcBundle makes the bundle of a runc container that runs workload
// prog with args in a root filesystem of the host's directories (usr,
// and bin, lib, lib64, sbin where they are not symbolic links) bound
// read-only, the workload's directory at /w, its output in /log; runc's
// default spec otherwise, without a terminal and a network namespace
// (with a cgroup namespace if cgroupNS). edit, if set, edits the spec.
func runcBundle(t *testing.T, runc, prog string, args []string, cgroupNS bool) string {
	t.Helper()
	bundle := t.TempDir()
	root := filepath.Join(bundle, "rootfs")
	var mounts []map[string]any
	for _, d := range []string{"usr", "bin", "lib", "lib64", "sbin", "w"} {
		fi, err := os.Lstat("/" + d)
		switch {
		case d == "w":
			mounts = append(mounts, map[string]any{"destination": "/w", "type": "bind", "source": filepath.Dir(prog), "options": []string{"rbind", "ro"}})
		case err != nil:
			continue
		case fi.Mode()&os.ModeSymlink != 0:
			l, _ := os.Readlink("/" + d)
			if err := os.MkdirAll(root, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(l, filepath.Join(root, d)); err != nil {
				t.Fatal(err)
			}
			continue
		default:
			mounts = append(mounts, map[string]any{"destination": "/" + d, "type": "bind", "source": "/" + d, "options": []string{"rbind", "ro"}})
		}
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command(runc, "spec", "--bundle", bundle).CombinedOutput(); err != nil {
		t.Fatalf("runc spec: %v: %s", err, out)
	}
	file := filepath.Join(bundle, "config.json")
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var spec map[string]any
	if err := json.Unmarshal(b, &spec); err != nil {
		t.Fatal(err)
	}
	process := spec["process"].(map[string]any)
	process["terminal"] = false
	// Its output in its root filesystem: a file runc's caller opened
	// would be outside it (refused).
	cmdline := "exec " + strings.Join(append([]string{"/w/" + filepath.Base(prog)}, args...), " ") + " </w/" + filepath.Base(prog) + " >/log 2>&1"
	process["args"] = []string{"/bin/sh", "-c", cmdline}
	spec["root"].(map[string]any)["readonly"] = false
	linux := spec["linux"].(map[string]any)
	var nss []any
	for _, ns := range linux["namespaces"].([]any) {
		if ns.(map[string]any)["type"] != "network" {
			nss = append(nss, ns)
		}
	}
	if cgroupNS {
		nss = append(nss, map[string]any{"type": "cgroup"})
	}
	linux["namespaces"] = nss
	for _, m := range mounts {
		spec["mounts"] = append(spec["mounts"].([]any), m)
	}
	if b, err = json.MarshalIndent(spec, "", "\t"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return bundle
}

// startRunc runs the bundle's container detached (runc run -d, its state
// under a directory of the test's), and waits for the workload's first
// line. The test (a subreaper) is the init's parent once runc exits; the
// container is deleted at the end.
func startRunc(t *testing.T, runc, bundle, id string) *runcContainer {
	t.Helper()
	c := &runcContainer{runc: runc, state: t.TempDir(), id: id, root: filepath.Join(bundle, "rootfs")}
	c.log = filepath.Join(c.root, "log")
	pidFile := filepath.Join(t.TempDir(), "pid")
	t.Cleanup(func() {
		if out, err := exec.Command(runc, "--root", c.state, "delete", "--force", id).CombinedOutput(); err != nil {
			t.Logf("runc delete %s: %v: %s", id, err, out)
		}
	})
	if out, err := exec.Command(runc, "--root", c.state, "run", "--detach", "--bundle", bundle, "--pid-file", pidFile, id).CombinedOutput(); err != nil {
		t.Fatalf("runc run: %v: %s", err, out)
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fmt.Sscan(string(b), &c.init); err != nil {
		t.Fatalf("runc's pid file: %q", b)
	}
	testutil.WaitFor(t, short, "the workload's log "+c.log, func() bool {
		_, err := os.Stat(c.log)
		return err == nil
	})
	return c
}

// TestRuncDumpRestore: a runc container running the counter workload is
// dumped and restored (Check compares it with its image): it counts on
// with the same memory (its heap's checksum), the same mount table as it
// sees it, and the same no_new_privs, capability bounding set and
// namespaces.
func TestRuncDumpRestore(t *testing.T) {
	testutil.RequireRoot(t)
	for _, cgroupNS := range []bool{false, true} {
		name := map[bool]string{false: "plain", true: "cgroupns"}[cgroupNS]
		t.Run(name, func(t *testing.T) {
			runc := runcBinary(t)
			prog := testutil.Build(t, "counter")
			bundle := runcBundle(t, runc, prog, []string{"-m", "8"}, cgroupNS)
			c := startRunc(t, runc, bundle, fmt.Sprintf("migrate-test-%d-%s", os.Getpid(), name))
			p := testutil.Adopt(t, c.init, c.log)
			ready := logLineFrom(t, c.log, 0, "ready ")
			p.WaitTick(t, short, 3)
			mountinfo := func() string {
				b, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", c.init))
				if err != nil {
					t.Fatal(err)
				}
				return normalMountinfo(string(b))
			}
			status := func() string {
				var keep []string
				for _, f := range []string{"NoNewPrivs", "CapBnd", "CapEff", "Seccomp"} {
					keep = append(keep, f+"="+testutil.StatusField(t, c.init, f))
				}
				return strings.Join(keep, " ")
			}
			beforeMounts, beforeStatus := mountinfo(), status()
			dir, img := dumpInit(t, c.init, p)
			if img.Mounts == nil || !img.Mounts.Pivoted || (cgroupNS && (img.Namespaces == nil || img.Namespaces.Cgroup == nil)) {
				t.Fatalf("the image: mounts %+v, namespaces %+v", img.Mounts, img.Namespaces)
			}
			last := p.LastTick(t)
			r := restoreOK(t, dir, c.log)
			r.WaitTick(t, short, last+3)
			if got := mountinfo(); got != beforeMounts {
				t.Errorf("the container's mount table, normalised, was\n%s\nis\n%s", beforeMounts, got)
			}
			if got := status(); got != beforeStatus {
				t.Errorf("the init's status: %s, was %s", got, beforeStatus)
			}
			n := len(testutil.LogLines(t, c.log))
			if err := unix.Kill(c.init, unix.SIGUSR1); err != nil {
				t.Fatal(err)
			}
			if sum := logLineFrom(t, c.log, n, "sum "); "ready pid=1 sum="+strings.TrimPrefix(sum, "sum ") != ready {
				t.Errorf("the heap's checksum after the restore: %q, at the start %q", sum, ready)
			}
		})
	}
}

// TestRuncLive: a runc container (started by runc on node A, in its
// namespaces) moves live to node B and back: the counter counts on with
// the same heap, and its mount table and status stay.
func TestRuncLive(t *testing.T) {
	runc := runcBinary(t)
	c := newCluster(t, cluster.Options{})
	for _, n := range []*cluster.Node{c.A, c.B} {
		mountCgroupsIn(t, n)
	}
	prog := testutil.Build(t, "counter")
	bundle := runcBundle(t, runc, prog, []string{"-m", "8"}, true)
	id := fmt.Sprintf("migrate-test-%d-live", os.Getpid())
	state := t.TempDir()
	log := filepath.Join(bundle, "rootfs", "log")
	pidFile := filepath.Join(t.TempDir(), "pid")
	var hostPID int
	t.Cleanup(func() {
		// The container ends where it is (it moved), then runc forgets it.
		if hostPID != 0 {
			unix.Kill(hostPID, unix.SIGKILL)
			testutil.WaitFor(t, short, "the container's end", func() bool {
				st, err := testutil.State(hostPID)
				return err != nil || st == 'Z'
			})
		}
		if out, err := c.A.Command(runc, "--root", state, "delete", "--force", id).CombinedOutput(); err != nil {
			t.Logf("runc delete %s: %v: %s", id, err, out)
		}
	})
	if out, err := c.A.Command(runc, "--root", state, "run", "--detach", "--bundle", bundle, "--pid-file", pidFile, id).CombinedOutput(); err != nil {
		t.Fatalf("runc run on node A: %v: %s", err, out)
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	var nodePID int
	if _, err := fmt.Sscan(string(b), &nodePID); err != nil {
		t.Fatalf("runc's pid file: %q", b)
	}
	find := func(n *cluster.Node) cluster.ProcInfo {
		procs, err := n.Find("counter")
		if err != nil || len(procs) != 1 {
			t.Fatalf("the counter on node %s: %+v, %v", n, procs, err)
		}
		return procs[0]
	}
	hostPID = find(c.A).PID
	testutil.WaitFor(t, short, "the workload's log "+log, func() bool {
		_, err := os.Stat(log)
		return err == nil
	})
	ready := logLineFrom(t, log, 0, "ready ")
	waitLogTick(t, log, 3)
	look := func(pid int) string {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
		if err != nil {
			t.Fatal(err)
		}
		s := normalMountinfo(string(b))
		for _, f := range []string{"NoNewPrivs", "CapBnd", "CapEff"} {
			s += "\n" + f + "=" + testutil.StatusField(t, pid, f)
		}
		return s
	}
	before := look(hostPID)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, hop := range [][2]*cluster.Node{{c.A, c.B}, {c.B, c.A}} {
		from, to := hop[0], hop[1]
		res, err := c.Migrate(ctx, from, to, nodePID)
		if err != nil {
			t.Fatalf("migrate %s -> %s: %v\nstderr:\n%s", from, to, err, res.Stderr)
		}
		if res.Outcome != "resumed" {
			t.Fatalf("report: %+v", res)
		}
		t.Logf("%s -> %s: %d rounds, downtime %.1f ms, total %.1f ms", from, to, len(res.Rounds), res.DowntimeMS, res.TotalMS)
		hostPID = find(to).PID
		// As the node sees it: the init is 1 inside the container.
		levels := strings.Fields(testutil.StatusField(t, hostPID, "NSpid"))
		if len(levels) < 3 {
			t.Fatalf("the init's PIDs %v: not in a container in a node", levels)
		}
		fmt.Sscan(levels[len(levels)-2], &nodePID)
		waitLogTick(t, log, lastLogTick(t, log)+5)
		if got := look(hostPID); got != before {
			t.Errorf("after %s -> %s the container is\n%s\nwas\n%s", from, to, got, before)
		}
		n := len(testutil.LogLines(t, log))
		if err := unix.Kill(hostPID, unix.SIGUSR1); err != nil {
			t.Fatal(err)
		}
		if sum := logLineFrom(t, log, n, "sum "); "ready pid=1 sum="+strings.TrimPrefix(sum, "sum ") != ready {
			t.Errorf("the heap's checksum after %s -> %s: %q, at the start %q", from, to, sum, ready)
		}
	}
	// For comparison, the same workload outside a container.
	plain, err := c.A.Start(cluster.StartOptions{}, prog, "-m", "8")
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Stop()
	logLineFrom(t, plain.Log, 0, "ready ")
	res, err := c.Migrate(ctx, c.A, c.B, plain.NSPID)
	if err != nil {
		t.Fatalf("migrate the plain counter: %v\nstderr:\n%s", err, res.Stderr)
	}
	t.Logf("the same counter outside a container, a -> b: %d rounds, downtime %.1f ms, total %.1f ms", len(res.Rounds), res.DowntimeMS, res.TotalMS)
}

// mountCgroupsIn mounts the host's cgroup hierarchies (their roots) in
// node n's mount namespace, where `ip netns exec` left a sysfs without
// them: runc there makes and joins its container's cgroups, and the
// node's migrate finds them. A tmpfs at /sys/fs/cgroup holds them, as on
// the host.
func mountCgroupsIn(t *testing.T, n *cluster.Node) {
	t.Helper()
	mounts, err := proc.ReadCgroupMounts()
	if err != nil {
		t.Fatal(err)
	}
	script := "set -e; mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup"
	for _, m := range mounts {
		if m.Root != "/" || !strings.HasPrefix(m.Dir, "/sys/fs/cgroup/") {
			continue
		}
		fstype, opts := "cgroup", m.Controllers
		if m.Controllers == "" {
			fstype, opts = "cgroup2", "rw"
		}
		script += fmt.Sprintf("; mkdir -p %s; mount -t %s -o %s %s %s", m.Dir, fstype, opts, fstype, m.Dir)
	}
	if out, err := n.Command("sh", "-c", script).CombinedOutput(); err != nil {
		testutil.Unavailable(t, "the host's cgroup hierarchies in node %s: %v: %s", n, err, out)
	}
}
