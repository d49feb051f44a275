package source

import (
	"context"
	"log/slog"
	"time"
)

// DumpOptions configure a dump to a directory.
type DumpOptions struct {
	PID          int
	Dir          string
	LeaveRunning bool   // let the process run on after the dump (default: kill it)
	Codec        string // page codec: "zstd", "s2" or "none"; "" picks the default
	// PreCopy copies memory in rounds while the process runs, then freezes
	// it for a final round with only what changed since.
	PreCopy bool
	// Tree dumps the process with all its descendants (the CLI's default).
	Tree    bool
	Tracker string // dirty tracker for pre-copy: "auto" (also ""), "uffd-wp", "soft-dirty", "hash"
	Policy  Policy // when pre-copy stops; zero: DefaultPolicy
	Logger  *slog.Logger
	// Transfer, if set, is told how far each round of pages has gone,
	// every quarter of a second while it runs, from a goroutine of its
	// own: it must not block.
	Transfer func(Transfer)
	// External names objects outside the dump held by its processes, as
	// /proc/PID/fd shows them ("pipe:[1234]", "socket:[5678]"): an fd of
	// one is kept as external (core.FDExternal), which the restore must
	// be given (--inherit-fd), instead of being refused.
	External []string
	// CPUInUseOnly has the target check only the XSAVE components
	// (AVX, AVX-512...) the threads hold at the freeze, not every one the
	// source CPU offers: for a process known to use no other (started
	// with glibc.cpu.hwcaps tunables that mask AVX-512, say) moving to a
	// CPU that lacks them. A program that chose code for the source's CPU
	// dies of SIGILL there: the operator vouches it did not.
	// --cpu-check=in-use.
	CPUInUseOnly bool
	// Freeze says how the processes are stopped: FreezeAuto (""), the
	// cgroup freezer where the tree is alone in its cgroup v2, then
	// ptrace; FreezePtrace; FreezeCgroup, refused where the freezer
	// cannot be used. --freeze.
	Freeze FreezeMode

	// live: a live migration's dump, which refuses what only an offline
	// dump carries (file locks: the original keeps them until it ends).
	live bool

	// testHook, when set (by tests in this package), is called at named
	// stages of the dump; an error it returns fails the dump there, so that
	// every rollback path can be exercised.
	testHook func(stage string) error
}

// DumpReport says what a dump did.
type DumpReport struct {
	PID         int    `json:"pid"`
	Dir         string `json:"dir"`
	Comm        string `json:"comm"`
	Processes   int    `json:"processes"` // in the tree, zombies included
	Threads     int    `json:"threads"`
	VMAs        int    `json:"vmas"`
	FDs         int    `json:"fds"`
	Pages       uint64 `json:"pages"`      // pages stored
	ZeroPages   uint64 `json:"zero_pages"` // of which all-zero (not compressed)
	BytesRaw    uint64 `json:"bytes_raw"`  // page bytes before compression
	BytesImage  int64  `json:"bytes_image"`
	Codec       string `json:"codec"`
	LeftRunning bool   `json:"left_running"`
	// Stages is where the pages' time went: read, compress, write (see
	// StageReport).
	Stages   []StageReport `json:"stages,omitempty"`
	Frozen   time.Duration `json:"-"`
	Total    time.Duration `json:"-"`
	FrozenMS float64       `json:"frozen_ms"`
	TotalMS  float64       `json:"total_ms"`
	MemoryMS float64       `json:"memory_ms"` // time spent reading and writing pages
	// BytesWire is what the page stream took on its way out (here: the
	// size of the page file).
	BytesWire uint64 `json:"bytes_wire"`
	// Tracker is the dirty tracker pre-copy used ("" without pre-copy).
	Tracker string `json:"tracker,omitempty"`
	// Rounds lists the rounds: pre-copy ones, then the frozen final one.
	Rounds []RoundReport `json:"rounds"`
	// Steps says where the time went.
	Steps []Step `json:"steps"`
	// Freezer is what stopped the processes: "cgroup" (the cgroup
	// freezer, then ptrace) or "ptrace"; FreezeMS how long stopping
	// every thread of the tree took.
	Freezer  string  `json:"freezer"`
	FreezeMS float64 `json:"freeze_ms"`
}

// Step is the duration of one step of a dump.
type Step struct {
	Name string  `json:"name"`
	MS   float64 `json:"ms"`
}

// ProcessSteps is where the time of the frozen window's work on one
// process of a tree went (the steps of the report add up that of every
// process, and what is done for the tree as a whole).
type ProcessSteps struct {
	PID   int    `json:"pid"`
	Steps []Step `json:"steps"`
}

// Dump checkpoints the process opts.PID into opts.Dir.
func Dump(ctx context.Context, opts DumpOptions) (*DumpReport, error) {
	return dump(ctx, opts)
}
