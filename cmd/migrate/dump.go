package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/procmig/migrate"
	"github.com/procmig/migrate/core/kernel"
	"github.com/procmig/migrate/core/ptrace"
	"github.com/procmig/migrate/source"
)

// ops are the library entry points the commands call; tests replace them.
type ops struct {
	dump    func(ctx context.Context, pid int, dir string, opts migrate.DumpOptions) (*migrate.DumpReport, error)
	restore func(ctx context.Context, dir string, opts migrate.RestoreOptions) (*migrate.RestoreReport, error)
	check   func(context.Context, kernel.CheckOptions) []kernel.Feature
	inject  func() error // the syscall injection probe
}

func realOps() ops {
	return ops{dump: migrate.Dump, restore: migrate.Restore, check: kernel.Check, inject: ptrace.ProbeInjection}
}

var codecs = []string{"zstd", "s2", "none"}

var dumpCmd = &command{
	name:    "dump",
	usage:   "--dir DIR [FLAGS] PID",
	summary: "freeze a process and write its image to a directory",
	desc: `
Freeze process PID and its descendants (every thread seized and
interrupted), write their image to DIR, then kill them, or let them run on
with --leave-running. Children come back with their PIDs, parents, process
groups and sessions, pipes between them and shared open files; zombies come
back as zombies. --tree=false dumps the process alone. The image
is the metadata file image.json, the page data pages.img, and the folder
files/ for contents that cannot be found again at restore (deleted files,
pipe buffers, memfds).

DIR is created if it does not exist. It must be empty, unless --force is
given: then an image already in DIR is removed first.

If the dump fails, or migrate gets SIGINT or SIGTERM before it is done, the
process is left running exactly as it was and no image is left in DIR.

With --pre-copy the process keeps running while its memory is copied in
rounds: the first round copies every page, each later round the pages
written since the previous one (found by the dirty-page tracker). Pre-copy
stops when the pages left could be copied within --target-downtime at the
speed measured so far, when a round no longer shrinks the dirty set, or
after --rounds rounds; then the process is frozen and a final round copies
what changed since, with the rest of its state. With --auto-converge, a
process that writes faster than its pages are copied is slowed down
instead of stopping pre-copy there (see the README). A tree is followed
as it runs: a process forked during pre-copy joins it at the next round
(with all its memory), one that exits leaves it, and the image holds the
tree as it was frozen.

Prints a one-line summary on stdout (--json: the full report as JSON); with
--pre-copy also one line per round.`,
	examples: `  migrate dump --dir /var/tmp/img 1234
  migrate dump --dir /var/tmp/img --leave-running --codec s2 "$(pidof redis-server)"
  migrate dump --dir /var/tmp/img --json 1234 | python3 -m json.tool
  migrate dump --dir /var/tmp/img --pre-copy --target-downtime 20ms 1234`,
	setup: func(fs *pflag.FlagSet) func(context.Context, *env, []string) error {
		var (
			dir          string
			leaveRunning bool
			codec        string
			asJSON       bool
			force        bool
			preCopy      bool
			tree         bool
			tracker      string
			rounds       int
			downtime     time.Duration
			external     []string
		)
		fs.StringVarP(&dir, "dir", "d", "", "write the image to `DIR` (required)")
		boolFlag(fs, &leaveRunning, "leave-running", "", "let the process run on after the dump instead of killing it")
		fs.StringVar(&codec, "codec", "", "compress pages with `CODEC`: zstd, s2 or none (default: the dumper's choice, named in the summary)")
		boolFlag(fs, &asJSON, "json", "", "print the dump report as JSON instead of the summary line")
		boolFlag(fs, &force, "force", "f", "write into a non-empty DIR, replacing an image there")
		tree = true
		treeFlag := fs.VarPF((*switchValue)(&tree), "tree", "", "dump the process with all its descendants; --tree=false: the process alone")
		treeFlag.NoOptDefVal, treeFlag.DefValue = "true", "true"
		boolFlag(fs, &preCopy, "pre-copy", "", "copy memory in rounds while the process runs, then freeze it for a short final round")
		fs.StringVar(&tracker, "tracker", "auto", "dirty-page tracker for --pre-copy: auto, uffd-wp, soft-dirty or hash")
		fs.IntVar(&rounds, "rounds", migrate.DefaultPolicy.MaxRounds, "at most `N` pre-copy rounds before the final one")
		fs.DurationVar(&downtime, "target-downtime", migrate.DefaultPolicy.TargetDowntime, "stop pre-copy once the rest can be sent in about `D`")
		var autoConverge bool
		boolFlag(fs, &autoConverge, "auto-converge", "", "with --pre-copy: when it stops converging, slow the processes down (stopped a growing share of each 50 ms while a round copies) rather than freeze with much left to copy")
		cpuCheck := cpuCheckFlag(fs)
		var freeze string
		fs.StringVar(&freeze, "freeze", "auto", "how the processes are stopped: auto (the cgroup freezer, then ptrace, where the tree is alone in a cgroup v2 of its own; ptrace only elsewhere), ptrace, or cgroup (refused where the freezer cannot be used)")
		fs.StringArrayVar(&external, "external", nil, "keep the fds of `ID`, an object outside the dump (pipe:[N] or socket:[N], as /proc/PID/fd and a refusal name it), as external: restore --inherit-fd gives it back (repeatable)")
		return func(ctx context.Context, e *env, args []string) error {
			pid, err := pidArg(args)
			if err != nil {
				return err
			}
			inUse, err := cpuCheck()
			if err != nil {
				return err
			}
			if err := migrate.CheckFreeze(freeze); err != nil {
				return usagef("bad --freeze: %v", err)
			}
			if dir == "" {
				return usagef("--dir is required")
			}
			if codec != "" && !contains(codecs, codec) {
				return usagef("bad --codec %q: want %s", codec, strings.Join(codecs, ", "))
			}
			if !contains(source.TrackerNames(), tracker) {
				return usagef("bad --tracker %q: want %s", tracker, strings.Join(source.TrackerNames(), ", "))
			}
			pol := migrate.DefaultPolicy
			pol.MaxRounds, pol.TargetDowntime, pol.AutoConverge = rounds, downtime, autoConverge
			if preCopy {
				if err := pol.Validate(); err != nil {
					return usagef("%v", err)
				}
			}
			var transfer func(migrate.Transfer)
			if !asJSON {
				transfer = e.transferStatus("dump round", true)
			}
			rep, err := e.ops.dump(ctx, pid, dir, migrate.DumpOptions{
				LeaveRunning: leaveRunning,
				ProcessOnly:  !tree,
				Force:        force,
				Codec:        codec,
				PreCopy:      preCopy,
				Tracker:      tracker,
				Policy:       pol,
				Logger:       e.logger,
				Transfer:     transfer,
				External:     external,
				CPUInUseOnly: inUse,
				Freeze:       freeze,
			})
			e.clearStatus()
			if err != nil {
				if ctx.Err() != nil {
					return fmt.Errorf("interrupted, process %d left running: %w", pid, err)
				}
				return err
			}
			if asJSON {
				return writeJSON(e.stdout, rep)
			}
			fmt.Fprintln(e.stdout, dumpSummary(rep, dir))
			if preCopy {
				printRounds(e.stdout, rep)
			}
			if len(rep.Stages) > 0 {
				fmt.Fprintln(e.stderr, stagesLine(rep.Stages))
			}
			return nil
		}
	},
}

// pidArg takes the one PID argument.
func pidArg(args []string) (int, error) {
	switch len(args) {
	case 0:
		return 0, usagef("missing PID")
	case 1:
	default:
		return 0, usagef("too many arguments: %q (want one PID)", args)
	}
	pid, err := strconv.Atoi(args[0])
	if err != nil || pid <= 0 {
		return 0, usagef("bad PID %q: want a positive number", args[0])
	}
	return pid, nil
}

func dumpSummary(r *migrate.DumpReport, dir string) string {
	total := msDuration(r.Total, r.TotalMS)
	frozen := msDuration(r.Frozen, r.FrozenMS)
	fate := "process killed"
	if r.LeftRunning {
		fate = "process left running"
	}
	comm := ""
	if r.Comm != "" {
		comm = " (" + r.Comm + ")"
	}
	codec := ""
	if r.Codec != "" {
		codec = " " + r.Codec
	}
	return fmt.Sprintf("dumped pid %d%s: %s, %s, %s, %s (%s raw, %s%s image) in %s (frozen %s) -> %s; %s",
		r.PID, comm,
		plural(r.Threads, "thread"), plural(r.VMAs, "vma"), plural(r.FDs, "fd"), plural(int(r.Pages), "page"),
		humanBytes(r.BytesRaw), humanBytes(uint64(max(r.BytesImage, 0))), codec,
		formatMS(total), formatMS(frozen), dir, fate)
}

// printRounds prints one line per round of a pre-copy dump.
func printRounds(w io.Writer, r *migrate.DumpReport) {
	fmt.Fprintf(w, "tracker %s\n", r.Tracker)
	fmt.Fprintf(w, "%5s %12s %12s %10s %10s %9s %9s  %s\n", "ROUND", "PAGES_DIRTY", "PAGES_SENT", "RAW", "WIRE", "MS", "HELD_MS", "NOTE")
	for _, rd := range r.Rounds {
		note := rd.Stop
		if rd.Frozen {
			note = "final, frozen"
		}
		if rd.Throttle > 0 {
			note = strings.TrimPrefix(note+fmt.Sprintf(", throttled %.0f%%", rd.Throttle*100), ", ")
		}
		fmt.Fprintf(w, "%5d %12d %12d %10s %10s %9.1f %9.1f  %s\n", rd.Round, rd.PagesDirty, rd.PagesSent,
			humanBytes(rd.BytesRaw), humanBytes(rd.BytesWire), rd.MS, rd.HeldMS, note)
	}
}

func writeJSON(w io.Writer, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
