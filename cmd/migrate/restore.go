package main

import (
	"context"
	"fmt"

	"github.com/spf13/pflag"

	"github.com/procmig/migrate"
)

var restoreCmd = &command{
	name:    "restore",
	usage:   "--dir DIR [FLAGS]",
	summary: "recreate a process from an image directory",
	desc: `
Recreate the process stored in DIR with its original PID, memory, registers,
signal state and open files, and let it run. The whole image is checked
before anything is created: a missing or damaged file (a blob whose size or
SHA-256 differs, a symlink, a FIFO or a device in place of a file), a
version this build does not read, a value out of range, a mapped file
that changed since the dump, or a thread bound to a CPU this host does not
have is refused with an error naming the problem, and nothing is left
behind. The page data is checked at its two ends before anything is
created (a pages.img cut short is refused then) and frame by frame as
it is read (checksums, sizes, order, contents): a damaged frame stops the
restore before the process ever runs, and what was built is killed. A scheduling attribute, oom_score_adj or other process attribute
the kernel will not set as the image has it fails the restore, naming
it, rather than give back a process that differs; --check also compares
the finished process with the image, as /proc shows it, before it runs
(a difference the restore warns about, such as a lowered hard limit,
fails it then). SIGINT or SIGTERM stops
the restore in any step and kills what it had built.

The restored process does not belong to migrate: it outlives it, and its
parent becomes init (or the nearest child subreaper). migrate exits 0 only
once the process runs.

Prints the PID on its own line on stdout; details and warnings (what could
not be restored exactly, such as a hard rlimit above this host's) go to
stderr. With --json the full report goes to stdout instead.`,
	examples: `  migrate restore --dir /var/tmp/img
  pid=$(migrate restore --dir /var/tmp/img) && grep State /proc/"$pid"/status`,
	setup: func(fs *pflag.FlagSet) func(context.Context, *env, []string) error {
		var (
			dir    string
			asJSON bool
			check  bool
			inh    []string
			cg     cgroupFlags
			proxy  bool
			attach string
		)
		fs.StringVarP(&dir, "dir", "d", "", "read the image from `DIR` (required)")
		boolFlag(fs, &check, "check", "", "before the process runs, compare it with the image as /proc shows it (threads, credentials, signals, scheduling, cgroups, memory layout, fds, locks) and refuse the restore if it differs")
		cg.add(fs)
		vdsoProxyFlag(fs, &proxy)
		netAttachFlag(fs, &attach)
		boolFlag(fs, &asJSON, "json", "", "print the restore report as JSON instead of the PID")
		fs.StringArrayVar(&inh, "inherit-fd", nil, "give the process `ID=fd:N` (fd N of migrate, as a shell opens it: 3>pipe) or ID=PATH (opened in the original's mode) in place of ID, an object outside its dump that the image names (dump --external; repeatable)")
		return func(ctx context.Context, e *env, args []string) error {
			if len(args) > 0 {
				return usagef("unexpected arguments: %q", args)
			}
			if dir == "" {
				return usagef("--dir is required")
			}
			if err := cg.check(); err != nil {
				return err
			}
			var inherit []migrate.Inherit
			for _, s := range inh {
				in, err := migrate.ParseInherit(s)
				if err != nil {
					return usagef("%v", err)
				}
				inherit = append(inherit, in)
			}
			var transfer func(migrate.Transfer)
			if !asJSON {
				transfer = e.transferStatus("restore", false)
			}
			rep, err := e.ops.restore(ctx, dir, migrate.RestoreOptions{Logger: e.logger, Check: check, Inherit: inherit, Transfer: transfer,
				ApplyCgroupLimits: cg.limits == "apply", CgroupRoot: cg.root, VDSOProxy: proxy, NetAttach: attach, IgnoreCgroups: cg.mode == "ignore"})
			e.clearStatus()
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(e.stdout, rep)
			}
			for _, w := range rep.Warnings {
				fmt.Fprintf(e.stderr, "migrate: restore: warning: %s\n", w)
			}
			comm := ""
			if rep.Comm != "" {
				comm = " (" + rep.Comm + ")"
			}
			timens := ""
			if rep.TimeNamespace != nil {
				timens = fmt.Sprintf(", in a time namespace (%v) that keeps its clocks", *rep.TimeNamespace)
			}
			if rep.VDSOProxy {
				timens += ", calling this kernel's vdso through a proxy of its old one"
			}
			fmt.Fprintf(e.stderr, "restored pid %d%s from %s: %s in %s%s\n",
				rep.PID, comm, dir, plural(int(rep.Pages), "page"), formatMS(msDuration(rep.Total, rep.TotalMS)), timens)
			fmt.Fprintln(e.stdout, rep.PID)
			return nil
		}
	},
}

// cgroupFlags are the flags of restore and serve for the processes'
// cgroup v2 cgroups.
type cgroupFlags struct{ limits, root, mode string }

func (c *cgroupFlags) add(fs *pflag.FlagSet) {
	fs.StringVar(&c.limits, "cgroup-limits", "check", "`check|apply`: a cgroup v2 cgroup of the image that this host has with other limits (memory.*, cpu.max, cpu.weight, pids.max) refuses the restore, naming the file and both values (check), or gets the image's (apply); one it lacks is created with them")
	fs.StringVar(&c.root, "cgroup-root", "", "make and join the processes' cgroup v2 cgroups under `DIR` (from the hierarchy's root, as /proc/PID/cgroup shows it) instead of at the image's paths")
	fs.StringVar(&c.mode, "cgroups", "keep", "`keep|ignore`: put the processes in the image's cgroups, refusing what this host lacks (keep), or leave them in this one's, under its limits and accounting, /proc/PID/cgroup showing other paths (ignore: a host whose cgroup hierarchies differ, as a VM's cgroup v2 from a host's v1)")
}

// vdsoProxyFlag adds the hidden --vdso-proxy of restore and serve: the
// vdso proxy even on the dumping kernel (migrate.RestoreOptions.VDSOProxy),
// for tests.
func vdsoProxyFlag(fs *pflag.FlagSet, v *bool) {
	fs.BoolVar(v, "vdso-proxy", false, "call this kernel's vdso through a proxy at the old one's address even where it is the image's (tests)")
	fs.MarkHidden("vdso-proxy")
}

// netAttachFlag is --net-attach of restore and serve.
func netAttachFlag(fs *pflag.FlagSet, bridge *string) {
	fs.StringVar(bridge, "net-attach", "", "put the host end of each veth of a container's own network namespace on bridge `BRIDGE` (up); without it the host end is left up, unattached, for a hook (MIGRATE_NET_HOST names it)")
}

func (c *cgroupFlags) check() error {
	if c.limits != "check" && c.limits != "apply" {
		return usagef("--cgroup-limits %q: check or apply", c.limits)
	}
	if c.mode != "keep" && c.mode != "ignore" {
		return usagef("--cgroups %q: keep or ignore", c.mode)
	}
	return nil
}

// cpuCheckFlag adds --cpu-check of dump and migrate --to; the returned
// func says whether it is in-use (migrate.DumpOptions.CPUInUseOnly).
func cpuCheckFlag(fs *pflag.FlagSet) func() (bool, error) {
	v := fs.String("cpu-check", "offered", "which of the source CPU's XSAVE features (AVX, AVX-512...) the target must have: `offered` (every one: a program picks its code by the CPU it starts on) or in-use (only those the threads hold at the freeze: for a process known to use no other, such as one started with glibc.cpu.hwcaps tunables masking AVX-512; one that chose code for this CPU dies of SIGILL there)")
	return func() (bool, error) {
		switch *v {
		case "offered":
			return false, nil
		case "in-use":
			return true, nil
		}
		return false, usagef("bad --cpu-check %q: offered or in-use", *v)
	}
}
