// Command init is /init of the test VMs booted under qemu. By default
// (the tracker test VM that scripts/vmtest.sh boots) it mounts the pseudo
// file systems, runs the statically built test binary /track.test (of
// source/track) with the tests the kernel command line names, prints a
// result line on the serial console and powers the VM off. With
// migrate.mode=node it makes the VM the other host of the e2e tests'
// live migrations instead (node.go): /migrate serve and an agent for the
// host's test, over qemu's user network.
//
// Kernel command line parameters (all optional):
//
//	migrate.mode=node      be a migration node (node.go), not run tests
//	migrate.lastpid=N      a node's next PIDs follow N
//	migrate.run=REGEXP     tests to run (-test.run), default "Track"
//	migrate.bench=REGEXP   benchmarks to run afterwards (-test.bench), default none
//	migrate.benchtime=T    -test.benchtime for them, default 10x
//	migrate.benchmb=N      size of the benchmark region (MIGRATE_TRACK_BENCH_MB)
//
// Output lines for the script to parse:
//
//	vmtest-kernel: RELEASE
//	vmtest-result: exit=N
//	vmtest-bench: exit=N
//
// It must be built with CGO_ENABLED=0: the initramfs holds no libc.
package main

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	setup()
	args := cmdline()
	mode := get(args, "migrate.mode", "test")
	if mode != "node" {
		// A node keeps the initramfs's /tmp (writable, like all of it):
		// the host's files are there at their paths.
		mount("tmpfs", "/tmp", "tmpfs")
	}
	var uts unix.Utsname
	unix.Uname(&uts)
	fmt.Printf("vmtest-kernel: %s\n", unix.ByteSliceToString(uts.Release[:]))
	if mode == "node" {
		node()
		powerOff()
	}

	run := get(args, "migrate.run", "Track")
	env := append(os.Environ(),
		"PATH=/bin:/usr/bin", "HOME=/tmp", "TMPDIR=/tmp",
		// The kernel of the VM has soft-dirty: its tests must not skip.
		"MIGRATE_REQUIRE_SOFTDIRTY=1",
	)
	code := runTest(env, "-test.run", run, "-test.v", "-test.count=1", "-test.timeout=240s")
	fmt.Printf("vmtest-result: exit=%d\n", code)

	if bench := get(args, "migrate.bench", ""); bench != "" {
		if mb := get(args, "migrate.benchmb", ""); mb != "" {
			env = append(env, "MIGRATE_TRACK_BENCH_MB="+mb)
		}
		code := runTest(env, "-test.run", "^$", "-test.bench", bench,
			"-test.benchtime", get(args, "migrate.benchtime", "10x"), "-test.count=1", "-test.timeout=240s")
		fmt.Printf("vmtest-bench: exit=%d\n", code)
	}
	powerOff()
}

// setup mounts the pseudo file systems and makes the console stdin,
// stdout and stderr.
func setup() {
	mount("proc", "/proc", "proc")
	mount("sysfs", "/sys", "sysfs")
	mount("devtmpfs", "/dev", "devtmpfs")
	if fd, err := unix.Open("/dev/console", unix.O_RDWR, 0); err == nil {
		for i := 0; i < 3; i++ {
			unix.Dup3(fd, i, 0)
		}
		if fd > 2 {
			unix.Close(fd)
		}
	}
}

func mount(src, dir, fs string) {
	os.MkdirAll(dir, 0o755)
	if err := unix.Mount(src, dir, fs, 0, ""); err != nil && err != unix.EBUSY {
		fmt.Fprintf(os.Stderr, "vmtest: mount %s: %v\n", dir, err)
	}
}

// runTest runs /track.test with args and returns its exit code.
func runTest(env []string, args ...string) int {
	cmd := exec.Command("/track.test", args...)
	cmd.Env = env
	cmd.Dir = "/tmp"
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	start := time.Now()
	err := cmd.Run()
	fmt.Printf("vmtest: %s took %v\n", strings.Join(args, " "), time.Since(start).Round(time.Millisecond))
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode()
		}
		fmt.Printf("vmtest: %v\n", err)
		return 127
	}
	return 0
}

// cmdline returns the key=value words of the kernel command line.
func cmdline() map[string]string {
	out := map[string]string{}
	b, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return out
	}
	for _, w := range strings.Fields(string(b)) {
		if k, v, ok := strings.Cut(w, "="); ok {
			out[k] = v
		}
	}
	return out
}

func get(m map[string]string, k, def string) string {
	if v, ok := m[k]; ok && v != "" {
		return v
	}
	return def
}

// powerOff ends the VM; qemu runs with -no-reboot, so a panic (if the
// power-off fails and init exits) ends it too.
func powerOff() {
	unix.Sync()
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
		fmt.Printf("vmtest: power off: %v\n", err)
	}
	os.Exit(0)
}
