// Package migrate is the API for programs that embed migrate (a node
// agent, an orchestrator's driver): it checkpoints a running Linux process
// into a directory and restores it from there (Dump, Restore), moves one
// to another host while it runs (Migrate), accepts such moves there
// (Serve), and settles a move whose outcome the source could not learn
// (Recover). The migrate command is a thin user of it: each option is one
// of its flags, and the zero value of every option is that flag's default.
//
// Migrate and Serve report their progress as Events, to a callback in
// their options; failures are typed values (RefusedError, PeerError,
// TimeoutError, HostLimitError, UndecidedError, KillError) that wrap the
// error the work returned, with the same text.
//
// Like the command, it runs as root, on Linux x86-64.
package migrate

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/procmig/migrate/core/hook"
	"github.com/procmig/migrate/core/netaddr"
	"github.com/procmig/migrate/internal/handoff"
	"github.com/procmig/migrate/source"
	"github.com/procmig/migrate/target"
	"github.com/procmig/migrate/transport"
)

// DumpReport says what a dump did: the process, what was stored, where
// the time went (go doc github.com/procmig/migrate/source.DumpReport).
// It is what `migrate dump --json` prints.
type DumpReport = source.DumpReport

// RestoreReport says what a restore did: the PID of the restored process,
// what could not be restored exactly (Warnings), where the time went. It
// is what `migrate restore --json` prints.
type RestoreReport = target.RestoreReport

// Report says what a live migration did: its session, outcome, rounds,
// bytes and downtime. It is what `migrate --to --json` prints.
type Report = source.MigrateReport

// Renumbered is a process or thread of a container moved live whose PID
// outside the container is another on the target (TargetPID) than here
// (PID): its own was taken there (Report.Renumbered).
type Renumbered = source.Renumbered

// RoundReport is one round of pages: pages dirty and sent, bytes raw and
// on the wire, its time.
type RoundReport = source.RoundReport

// Transfer is how far a round of pages has gone while it runs: pages sent
// of those planned, and the time since it began.
type Transfer = source.Transfer

// StageReport is one stage of the page pipeline (read, compress, wire,
// apply): how long it worked and how fast it went.
type StageReport = source.StageReport

// Policy says when pre-copy stops and the process is frozen: after
// MaxRounds rounds, or once what is left could be sent within
// TargetDowntime, or when a round no longer shrinks the dirty set. The
// zero Policy is DefaultPolicy; change a copy of DefaultPolicy.
type Policy = source.Policy

// PostCopyReport is the post-copy phase of a migration that ended in one
// (Report.PostCopy).
type PostCopyReport = source.PostCopyReport

// CheckMode checks the name of a MigrateOptions.Mode.
func CheckMode(mode string) error {
	_, err := source.ParseMode(mode)
	return err
}

// DefaultPolicy is the pre-copy policy of the zero Policy (the defaults
// of --rounds and --target-downtime).
var DefaultPolicy = source.DefaultPolicy

// Metrics are the Prometheus metrics of a Serve (ServeOptions.Metrics);
// serve them with Metrics.Handler.
type Metrics = target.Metrics

// NewMetrics returns metrics for a Serve, registered in a registry of
// their own.
func NewMetrics() *Metrics { return target.NewMetrics() }

// DumpOptions configure Dump. The zero value dumps the process with its
// descendants, kills them once the image is written, and copies memory in
// one go while they are frozen.
type DumpOptions struct {
	// LeaveRunning lets the process run on after the dump (default: it
	// is killed). --leave-running.
	LeaveRunning bool
	// ProcessOnly dumps the process alone, without its descendants.
	// --tree=false.
	ProcessOnly bool
	// Force writes into a directory that is not empty, replacing an
	// image there (default: refused). --force.
	Force bool
	// Codec compresses the pages: "zstd", "s2" or "none"; "" is the
	// dumper's choice. --codec.
	Codec string
	// PreCopy copies memory in rounds while the process runs, then
	// freezes it for a short final round. --pre-copy.
	PreCopy bool
	// Tracker finds the pages written between pre-copy rounds: "auto"
	// (also "": the best the kernel offers), "uffd-wp", "soft-dirty" or
	// "hash". --tracker.
	Tracker string
	// Policy says when pre-copy stops; zero: DefaultPolicy. --rounds,
	// --target-downtime.
	Policy Policy
	// Logger receives progress and warnings; nil: discarded.
	Logger *slog.Logger
	// Transfer, if set, is told how far the pages have gone, every
	// quarter of a second while a round (or the one copy of a dump
	// without pre-copy) runs, from a goroutine of the dump's own; it
	// must not block.
	Transfer func(Transfer)
	// External names objects outside the dump its processes hold, as
	// /proc/PID/fd shows them ("pipe:[1234]", "socket:[5678]"): kept as
	// external, to be given at the restore (RestoreOptions.Inherit),
	// instead of refused. --external.
	External []string
	// CPUInUseOnly has the target check only the XSAVE components
	// (AVX, AVX-512...) the threads hold at the freeze, not every one the
	// source CPU offers: for a process known to use no other (started
	// with glibc.cpu.hwcaps tunables that mask AVX-512, say) moving to a
	// CPU that lacks them. A program that chose code for the source's CPU
	// dies of SIGILL there: the operator vouches it did not.
	// --cpu-check=in-use.
	CPUInUseOnly bool
}

// Dump freezes process pid and its descendants, writes their image to dir
// and kills them (or lets them run on: LeaveRunning). dir is created if
// it does not exist; it must be empty unless Force. If the dump fails, or
// ctx ends before it is done, the process is left running as it was and
// no image is left in dir.
func Dump(ctx context.Context, pid int, dir string, opts DumpOptions) (*DumpReport, error) {
	return dump(ctx, pid, dir, opts, source.Dump)
}

// dump is Dump with the dumper passed in (tests pass a fake).
func dump(ctx context.Context, pid int, dir string, opts DumpOptions, do func(context.Context, source.DumpOptions) (*source.DumpReport, error)) (*DumpReport, error) {
	undo, err := prepareDir(dir, opts.Force)
	if err != nil {
		return nil, err
	}
	rep, err := do(ctx, source.DumpOptions{
		PID:          pid,
		Dir:          dir,
		LeaveRunning: opts.LeaveRunning,
		Codec:        opts.Codec,
		PreCopy:      opts.PreCopy,
		Tree:         !opts.ProcessOnly,
		Tracker:      opts.Tracker,
		Policy:       opts.Policy,
		Logger:       logger(opts.Logger),
		Transfer:     opts.Transfer,
		External:     opts.External,
		CPUInUseOnly: opts.CPUInUseOnly,
	})
	if err != nil {
		undo()
		return nil, wrapErr(err)
	}
	return rep, nil
}

// RestoreOptions configure Restore.
type RestoreOptions struct {
	// Check compares the finished process with the image, as /proc shows
	// it, before it runs, and refuses the restore if it differs (a
	// difference the restore warns about too). --check.
	Check bool
	// Logger receives progress and warnings; nil: discarded.
	Logger *slog.Logger
	// Transfer, if set, is told how many pages were written into the
	// processes, of those the image holds (Round is 0), every quarter of
	// a second while they are, from a goroutine of the restore's own; it
	// must not block.
	Transfer func(Transfer)
	// Inherit gives the files that replace the objects outside the dump
	// its image names (DumpOptions.External): each one, and no other.
	// --inherit-fd ID=fd:N, ID=PATH (target.ParseInherit).
	Inherit []Inherit
	// ApplyCgroupLimits: a cgroup v2 cgroup of the image that this host
	// has with other limits than the image's gets the image's; by
	// default the restore is refused, naming the file and both values.
	// A cgroup this host lacks is created with the image's limits either
	// way. --cgroup-limits=apply.
	ApplyCgroupLimits bool
	// CgroupRoot, if set, is the cgroup v2 directory (from the
	// hierarchy's root) under which the processes' cgroups are made and
	// joined instead of at the image's paths. --cgroup-root.
	CgroupRoot string
	// VDSOProxy calls this kernel's vdso through a proxy at the old one's
	// address even where it is the image's (as on a kernel whose vdso
	// differs): for tests. --vdso-proxy (hidden).
	VDSOProxy bool
	// NetAttach, if set, is the bridge on which the host end of each veth
	// of a container's own network namespace is put; without it the
	// veth is left up, unattached, for a hook. --net-attach.
	NetAttach string
	// IgnoreCgroups leaves the processes in the restorer's cgroups: the
	// image's are not joined, made or compared (a host whose cgroup
	// hierarchies differ, as a VM's cgroup v2 from a host's v1). The
	// processes then run under this host's limits and accounting, and
	// /proc/PID/cgroup shows other paths. --cgroups ignore.
	IgnoreCgroups bool
}

// Inherit is a file a restore gives in place of an object outside the
// dump: an open file, or a path opened in the original's access mode.
type Inherit = target.Inherit

// ParseInherit parses the --inherit-fd forms ID=fd:N (fd N of the calling
// process) and ID=PATH.
func ParseInherit(s string) (Inherit, error) { return target.ParseInherit(s) }

// Restore recreates the process stored in dir, with its PID, and lets it
// run; RestoreReport.PID is its PID. The image is checked whole before
// anything is made; a failure leaves nothing behind. The process does not
// belong to the caller: its parent is init, or the caller's nearest child
// subreaper.
func Restore(ctx context.Context, dir string, opts RestoreOptions) (*RestoreReport, error) {
	var progress func(pages, planned uint64, elapsed time.Duration)
	if opts.Transfer != nil {
		progress = func(pages, planned uint64, elapsed time.Duration) {
			opts.Transfer(Transfer{Pages: pages, Planned: planned, Elapsed: elapsed})
		}
	}
	rep, err := target.Restore(ctx, target.RestoreOptions{Dir: dir, Logger: logger(opts.Logger), Check: opts.Check, Inherit: opts.Inherit, Progress: progress,
		ApplyCgroupLimits: opts.ApplyCgroupLimits, CgroupRoot: opts.CgroupRoot, VDSOProxy: opts.VDSOProxy, NetAttach: opts.NetAttach, IgnoreCgroups: opts.IgnoreCgroups})
	if err != nil {
		return nil, wrapErr(err)
	}
	return rep, nil
}

// Auth says how the two ends of a migration authenticate each other: a
// shared secret, mutual TLS, both, or (Insecure) nothing. Both ends must
// say the same. The zero Auth is refused.
type Auth struct {
	// Secret is the shared secret (LoadSecret reads a --secret-file).
	Secret []byte
	// CertFile, KeyFile and CAFile (PEM) select mutual TLS: this end's
	// certificate and key, and the CA the peer's certificate must chain
	// to. All three or none. --tls-cert, --tls-key, --tls-ca.
	CertFile, KeyFile, CAFile string
	// Insecure runs without authentication (a warning is logged).
	// --insecure.
	Insecure bool
}

func (a Auth) config(log *slog.Logger) transport.Config {
	return transport.Config{Secret: a.Secret, CertFile: a.CertFile, KeyFile: a.KeyFile, CAFile: a.CAFile, Insecure: a.Insecure, Logger: log}
}

// LoadSecret reads a shared secret from a file that only its owner may
// read (as --secret-file does).
func LoadSecret(path string) ([]byte, error) { return transport.LoadSecret(path) }

// MigrateOptions configure Migrate. The zero value (but Auth) migrates
// with the best dirty-page tracker, DefaultPolicy, no bandwidth cap and no
// hooks.
type MigrateOptions struct {
	Auth Auth
	// Tracker, Codec and Policy are as in DumpOptions. --tracker,
	// --codec, --rounds, --target-downtime.
	Tracker string
	Codec   string
	Policy  Policy
	// Bandwidth caps the page stream, in bytes a second; 0: no cap.
	// --bandwidth (in MB/s).
	Bandwidth int64
	// Streams is how many page streams each process's pages are spread
	// over, each compressed, sent and written on the target on its own;
	// 0 picks one a CPU, up to 4; at most MaxStreams.
	Streams int
	// ProcessOnly moves the process alone, and refuses it if it has
	// children; by default the process moves with all its descendants,
	// as they are when they are frozen (a process forked during pre-copy
	// joins, one that exits leaves; one that changes parent aborts with a
	// *source.TreeChangedError, the tree running on here). --tree=false.
	ProcessOnly bool
	// Inherit maps objects outside the tree that its processes hold
	// ("pipe:[1234]", "socket:[5678]", as /proc/PID/fd shows them) to the
	// absolute path on the target opened in place of each, in the access
	// mode of the original fd: their fds move as external instead of
	// being refused. --inherit-fd ID=PATH.
	Inherit map[string]string
	// Sync are files and directory trees (absolute paths) copied to the
	// target at the same paths while the process runs, and their last
	// changes in the frozen window: the files it writes there need no
	// shared storage. Any other file the processes write must be one the
	// target shares, or the migration is refused before it starts
	// (RefusedFilesNotShared). --sync PATH.
	Sync []string
	// Hooks are commands run at the source's stages of the migration,
	// each "STAGE=COMMAND" (sh -c), STAGE one of pre-freeze, post-dump,
	// post-resume, abort. --hook.
	Hooks []string
	// Addresses are service addresses, each "ADDR[/PLEN]@LINK", deleted
	// from LINK once the process is dumped (an abort adds them back).
	// --address.
	Addresses []string
	// OnEvent, if set, is called with each Event of the migration as it
	// happens, in order, from the goroutine that runs Migrate. From
	// EventFrozen to EventResumed or EventAborted the process is frozen:
	// OnEvent's time is downtime, so it should hand the event on, not
	// block.
	OnEvent func(Event)
	// Mode is how the migration ends: "precopy" ("", the default: every
	// page is on the target before the process runs there), "postcopy"
	// (after the first pre-copy round the process runs on the target
	// while its missing pages follow) or "auto" (post-copy only where
	// pre-copy would stop without converging). Post-copy's risk: if the
	// link or this side dies before the last page, the process is lost
	// (a *PostCopyLostError). --mode, --post-copy.
	Mode string
	// Logger receives progress and warnings; nil: discarded.
	Logger *slog.Logger
	// CPUInUseOnly has the target check only the XSAVE components
	// (AVX, AVX-512...) the threads hold at the freeze, not every one the
	// source CPU offers: for a process known to use no other (started
	// with glibc.cpu.hwcaps tunables that mask AVX-512, say) moving to a
	// CPU that lacks them. A program that chose code for the source's CPU
	// dies of SIGILL there: the operator vouches it did not.
	// --cpu-check=in-use.
	CPUInUseOnly bool
}

// Migrate moves process pid, with its descendants unless
// opts.ProcessOnly, to the Serve at target (HOST:PORT) while it runs:
// pre-copy rounds copy its memory, then it is frozen for a final round
// with its state, the target restores it with the same PID, and once the
// target says it runs, the original is killed.
//
// A nil error: the process runs on the target. Any failure before the
// commit leaves the original running as it was (an EventAborted says so).
// If the commit was sent and its outcome could not be learned, the error
// is an *UndecidedError: the original is left frozen for Recover; a
// *PostCopyLostError says post-copy did not finish and the process is
// lost; a *KillError says the process runs on the target but the original could
// not be killed. The Report is nil only if the migration failed before
// the target was asked.
func Migrate(ctx context.Context, pid int, target string, opts MigrateOptions) (*Report, error) {
	log := logger(opts.Logger)
	ev := emitter{f: opts.OnEvent, pid: pid}
	if opts.Streams < 0 || opts.Streams > MaxStreams {
		err := fmt.Errorf("%d page streams: want 1..%d, or 0 for one a CPU", opts.Streams, MaxStreams)
		ev.aborted(err)
		return nil, err
	}
	hs, err := hookSet(opts.Hooks, opts.Addresses, hook.Source, log)
	if err != nil {
		ev.aborted(err)
		return nil, err
	}
	var progress func(source.RoundReport)
	var transfer func(source.Transfer)
	if opts.OnEvent != nil {
		progress = func(r source.RoundReport) {
			ev.emit(Event{Kind: EventRoundFinished, Round: r.Round, Stats: &r})
		}
		transfer = ev.transfer
	}
	source.WarnStale(log)
	rep, err := source.Migrate(ctx, source.MigrateOptions{PID: pid, To: target, Transport: opts.Auth.config(log),
		Codec: opts.Codec, Tracker: opts.Tracker, Policy: opts.Policy, Logger: log, Progress: progress,
		Transfer: transfer, Notify: ev.milestone, Bandwidth: opts.Bandwidth, Streams: opts.Streams, Hooks: hs, Tree: !opts.ProcessOnly, Inherit: opts.Inherit,
		Mode: source.Mode(opts.Mode), Sync: opts.Sync, CPUInUseOnly: opts.CPUInUseOnly})
	if err != nil {
		err = wrapErr(err)
		if rep == nil || rep.Outcome == transport.OutcomeAborted.String() {
			if rep != nil {
				ev.session = rep.Session
			}
			ev.aborted(err)
		}
	}
	return rep, err
}

// RecoverOptions configure Recover.
type RecoverOptions struct {
	Auth Auth
	// Logger receives progress and warnings; nil: discarded.
	Logger *slog.Logger
}

// Recover settles a migration that ended in an *UndecidedError (as
// `migrate recover` does): it asks the target at HOST:PORT what became of
// session, then kills the frozen original pid if the target runs the
// process, or lets it run on if the migration was aborted; else it leaves
// it stopped and says so. It returns the target's answer ("resumed",
// "aborted", ...). It acts only on the process a record of that migration
// names (same PID, session and start time), and refuses any other.
func Recover(ctx context.Context, pid int, target, session string, opts RecoverOptions) (string, error) {
	log := logger(opts.Logger)
	out, err := source.Recover(ctx, target, session, pid, opts.Auth.config(log), log)
	return out, wrapErr(err)
}

// ServeOptions configure Serve. The zero value (but Auth) serves
// target.DefaultMaxSessions sessions at once, without hooks or metrics.
type ServeOptions struct {
	Auth Auth
	// MaxSessions caps the sessions served at once (migrations and status
	// questions); 0: 8. More are told the service is busy.
	// --max-sessions.
	MaxSessions int
	// Hooks are commands run at the target's stages of each migration,
	// each "STAGE=COMMAND" (sh -c), STAGE one of pre-resume, post-resume,
	// abort. --hook.
	Hooks []string
	// Addresses are service addresses, each "ADDR[/PLEN]@LINK", added to
	// LINK and announced just before each migrated process resumes (an
	// abort deletes them again). --address.
	Addresses []string
	// Metrics, if set, count the sessions and their outcomes, and hold
	// the service's health; the caller serves them (--metrics).
	Metrics *Metrics
	// Ready, if set, is called with the listener's address once the
	// service accepts sessions.
	Ready func(net.Addr)
	// OnEvent, if set, is called with each session's Events as they
	// happen; sessions run at once, each calls it from its own goroutine.
	// Between EventSessionRestored and EventSessionCommitted the process
	// is frozen: OnEvent's time is downtime.
	OnEvent func(Event)
	// XSAVEFeatures, if not zero, are the XSAVE features (bits of XCR0)
	// this host's CPU is taken to have, fewer than its own: a process
	// that used or may use others is refused at its first layout.
	// --xsave-features.
	XSAVEFeatures uint64
	// ApplyCgroupLimits and CgroupRoot are as in RestoreOptions, for
	// every process served. --cgroup-limits, --cgroup-root.
	ApplyCgroupLimits bool
	CgroupRoot        string
	// VDSOProxy is as in RestoreOptions, for every process served (tests).
	VDSOProxy bool
	// NetAttach is as in RestoreOptions, for every process served.
	// --net-attach.
	NetAttach string
	// IgnoreCgroups leaves the processes in the restorer's cgroups: the
	// image's are not joined, made or compared (a host whose cgroup
	// hierarchies differ, as a VM's cgroup v2 from a host's v1). The
	// processes then run under this host's limits and accounting, and
	// /proc/PID/cgroup shows other paths. --cgroups ignore.
	IgnoreCgroups bool
	// Logger receives the service's log; nil: discarded.
	Logger *slog.Logger
}

// Serve runs the target service on ln until ctx ends: it accepts
// migrations, builds each incoming process while its source copies
// memory, restores the rest when the source freezes it, and lets it run
// on commit. A process whose PID is taken here is refused before its
// source freezes anything (a container's processes get other PIDs outside
// it instead: Report.Renumbered), so the service usually runs as PID 1 of
// a PID namespace of its own (it then reaps the processes it restored).
// When ctx
// ends, sessions that have not committed are aborted (their sources
// resume their originals). Serve owns ln and closes it.
func Serve(ctx context.Context, ln net.Listener, opts ServeOptions) error {
	log := logger(opts.Logger)
	hs, err := hookSet(opts.Hooks, opts.Addresses, hook.Target, log)
	if err != nil {
		ln.Close()
		return err
	}
	var notify func(target.SessionEvent)
	if opts.OnEvent != nil {
		notify = func(s target.SessionEvent) {
			e := Event{Time: time.Now(), PID: s.PID, LocalPID: s.Here, Session: s.Session, Peer: s.Peer}
			switch s.Kind {
			case target.SessionStarted:
				e.Kind = EventSessionStarted
			case target.SessionRestored:
				e.Kind = EventSessionRestored
			case target.SessionCommitted:
				e.Kind = EventSessionCommitted
			case target.SessionAborted:
				e.Kind, e.Err = EventSessionAborted, wrapErr(s.Err)
			case target.SessionPostCopyDone:
				e.Kind, e.Err = EventSessionPostCopyDone, s.Err
			default:
				return
			}
			opts.OnEvent(e)
		}
	}
	return target.Serve(ctx, target.ServeOptions{Listener: ln, Transport: opts.Auth.config(log), Logger: log, Hooks: hs,
		MaxSessions: opts.MaxSessions, Metrics: opts.Metrics, Ready: opts.Ready, OnSession: notify, XCR0: opts.XSAVEFeatures,
		ApplyCgroupLimits: opts.ApplyCgroupLimits, CgroupRoot: opts.CgroupRoot, VDSOProxy: opts.VDSOProxy, NetAttach: opts.NetAttach, IgnoreCgroups: opts.IgnoreCgroups})
}

// hookSet parses the hooks of role and adds the address moves. A bad hook
// is a *hook.SpecError, a bad address a *netaddr.ParseError.
func hookSet(hooks, addrs []string, role hook.Role, log *slog.Logger) (*hook.Set, error) {
	hs, err := hook.Parse(hooks, role)
	if err != nil {
		return nil, err
	}
	hs.SetLogger(log)
	var as []netaddr.Addr
	for _, s := range addrs {
		a, err := netaddr.Parse(s)
		if err != nil {
			return nil, err
		}
		as = append(as, a)
	}
	if err := netaddr.NewMover(as, log).Install(hs); err != nil {
		return nil, err
	}
	return hs, nil
}

func logger(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}

// MaxStreams bounds MigrateOptions.Streams.
const MaxStreams = handoff.MaxPageStreams
