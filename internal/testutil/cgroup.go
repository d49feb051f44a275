package testutil

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// cgroup2Mount is where cgroup2 is mounted with its root, from
// /proc/self/mountinfo ("" if nowhere). (core/proc, which says the same,
// imports testutil in its tests.)
func cgroup2Mount(t testing.TB) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if ok && len(f) >= 5 && len(g) >= 1 && g[0] == "cgroup2" && f[3] == "/" {
			return f[4]
		}
	}
	return ""
}

// FreezerCgroup creates a cgroup v2 of the test named name below the
// root of the cgroup2 hierarchy, and returns its directory and its path
// (as /proc/PID/cgroup names it). A cleanup thaws it and removes it once
// the processes in it are gone: call it before starting them (cleanups
// run last-in, first-out). It skips where cgroup2 is not mounted with
// its root, or its cgroups have no cgroup.freeze.
func FreezerCgroup(t testing.TB, name string) (dir, path string) {
	t.Helper()
	mount := cgroup2Mount(t)
	if mount == "" {
		Unavailable(t, "cgroup2 is not mounted (with its root) here")
	}
	path = fmt.Sprintf("/migrate-test-%d-%s", os.Getpid(), name)
	dir = filepath.Join(mount, path)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatalf("create cgroup: %v", err)
	}
	t.Cleanup(func() {
		os.WriteFile(filepath.Join(dir, "cgroup.freeze"), []byte("0"), 0)
		WaitFor(t, 10*time.Second, "cgroup "+dir+" to be empty and removed", func() bool {
			err := os.Remove(dir)
			return err == nil || errors.Is(err, os.ErrNotExist)
		})
	})
	if _, err := os.Stat(filepath.Join(dir, "cgroup.freeze")); err != nil {
		Unavailable(t, "the cgroup v2 freezer (cgroup.freeze): %v", err)
	}
	return dir, path
}

// JoinCgroup moves process pid into the cgroup v2 at dir.
func JoinCgroup(t testing.TB, dir string, pid int) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
		t.Fatalf("move process %d into cgroup %s: %v", pid, dir, err)
	}
}

// JoinCgroupIfAlive is JoinCgroup for a process that may have ended since
// it was listed (a child of a running service): one that has is left out.
func JoinCgroupIfAlive(t testing.TB, dir string, pid int) {
	t.Helper()
	err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0)
	if err != nil && !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("move process %d into cgroup %s: %v", pid, dir, err)
	}
}

// CgroupFrozen says what cgroup.events of the cgroup v2 at dir says of
// "frozen".
func CgroupFrozen(t testing.TB, dir string) bool {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.events"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "frozen "); ok {
			return v == "1"
		}
	}
	t.Fatalf("%s/cgroup.events has no frozen key: %q", dir, b)
	return false
}
