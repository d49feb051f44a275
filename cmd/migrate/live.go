package main

import (
	"context"
	"errors"
	"fmt"
	"github.com/procmig/migrate/core/hook"
	"github.com/procmig/migrate/core/netaddr"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/procmig/migrate"
	"github.com/procmig/migrate/target"
	"github.com/procmig/migrate/transport"
)

// authFlags are the flags that choose how the two ends authenticate.
type authFlags struct {
	secretFile, cert, key, ca string
	insecure                  bool
}

func (a *authFlags) add(fs *pflag.FlagSet) {
	fs.StringVar(&a.secretFile, "secret-file", "", "authenticate with the shared secret in `FILE` (both ends; mode 0600)")
	fs.StringVar(&a.cert, "tls-cert", "", "mutual TLS: this end's certificate `FILE` (PEM)")
	fs.StringVar(&a.key, "tls-key", "", "mutual TLS: this end's key `FILE` (PEM)")
	fs.StringVar(&a.ca, "tls-ca", "", "mutual TLS: the CA `FILE` (PEM) the peer's certificate must chain to")
	boolFlag(fs, &a.insecure, "insecure", "", "no authentication at all (both ends must say so; prints a warning)")
}

func (a *authFlags) config() (migrate.Auth, error) {
	var c migrate.Auth
	switch {
	case a.secretFile != "":
		s, err := migrate.LoadSecret(a.secretFile)
		if err != nil {
			return c, err
		}
		c.Secret = s
	case a.cert != "" || a.key != "" || a.ca != "":
	case a.insecure:
	default:
		return c, usagef("say how to authenticate: --secret-file FILE, --tls-cert/--tls-key/--tls-ca, or --insecure")
	}
	c.CertFile, c.KeyFile, c.CAFile, c.Insecure = a.cert, a.key, a.ca, a.insecure
	return c, nil
}

// defaultServeMemory is the service's soft heap limit: what an idle
// 4 GiB process's migration kept live (~45-64 MiB of frames in flight,
// stream windows and page sets) with room, so that migrate serve's
// resident memory stays near 100 MiB whatever the size of the process
// (without it, garbage let the heap double: 147 MiB peak for 4 GiB).
const defaultServeMemory int64 = 96 << 20

var serveCmd = &command{
	name:    "serve",
	usage:   "--listen ADDR [FLAGS]",
	summary: "accept live migrations (the target's service)",
	desc: `
Run the target service: accept migrations from 'migrate --to', build each
incoming process while its source copies memory, restore the rest when the
source freezes it, and let it run on commit. A process whose PID is taken
here is refused before its source freezes anything; a container's processes
and threads whose PIDs outside it are taken get free ones instead (the same
inside; the source's report lists them). Ctrl-C or SIGTERM aborts
the sessions that have not committed (their sources resume their originals)
and exits.

Run it as PID 1 of a PID namespace of its own to receive processes whose
PIDs are taken on this host: restored processes become its children, and it
reaps them when they exit.

Whoever holds the shared secret (or a certificate of the CA) can run any
program, as any user, on every host where 'migrate serve' runs with it: a
migration builds whatever process its source describes. Guard the secret
like root's password; 'migrate serve --gen-secret FILE' writes a good one.`,
	examples: `  migrate serve --gen-secret /etc/migrate/secret
  migrate serve --listen :7070 --secret-file /etc/migrate/secret
  unshare --pid --fork --mount-proc migrate serve --listen 10.0.0.2:7070 --secret-file s
  migrate serve --listen :7070 --secret-file s --address 10.0.0.100/32@eth0
  migrate serve --listen :7070 --secret-file s \
      --hook 'pre-resume=ip addr add 10.0.0.100/32 dev eth0 && setsid -f arping -q -U -c1 -I eth0 10.0.0.100 </dev/null >/dev/null 2>&1' \
      --hook 'abort=ip addr del 10.0.0.100/32 dev eth0 || true'`,
	setup: func(fs *pflag.FlagSet) func(context.Context, *env, []string) error {
		var listen string
		var auth authFlags
		var hooks []string
		var maxSessions int
		var genSecret string
		fs.StringVar(&listen, "listen", "", "listen on `ADDR` (HOST:PORT; required)")
		fs.StringVar(&genSecret, "gen-secret", "", "write a new shared secret (32 random bytes, 64 hex digits) to `FILE`, mode 0600, and exit; an existing FILE is never overwritten")
		fs.IntVar(&maxSessions, "max-sessions", target.DefaultMaxSessions, "serve at most `N` sessions at once (migrations and status questions); more are told the service is busy")
		auth.add(fs)
		fs.StringArrayVar(&hooks, "hook", nil, "run `STAGE=COMMAND` (sh -c) at a stage of each migration: pre-resume, post-resume, abort (repeatable; hooks, their environment and order: README)")
		var addrs []string
		addressFlag(fs, &addrs, "add it to LINK and announce it just before each migrated process resumes (an abort deletes it again)")
		var xsave uint64
		fs.Uint64Var(&xsave, "xsave-features", 0, "take this CPU's XSAVE features to be `MASK` (XCR0 bits, as `migrate check` prints them; fewer than the CPU's own): the features every host of a fleet has, so that a process that could not move on to each is refused here")
		var cg cgroupFlags
		cg.add(fs)
		var proxy bool
		vdsoProxyFlag(fs, &proxy)
		var attach string
		netAttachFlag(fs, &attach)
		memLimit := defaultServeMemory
		fs.Int64Var(&memLimit, "memory-limit", defaultServeMemory, "keep the service's Go heap near `BYTES` (a soft limit: its garbage is collected sooner near it; 0: Go's default, GOGC alone); GOMEMLIMIT in the environment wins")
		var metricsAddr string
		fs.StringVar(&metricsAddr, "metrics", "", "serve Prometheus metrics on http://`ADDR`/metrics and the service's health on /healthz (HOST:PORT; plain HTTP, no authentication: a loopback or management address)")
		return func(ctx context.Context, e *env, args []string) error {
			if memLimit < 0 {
				return usagef("bad --memory-limit %d", memLimit)
			}
			if memLimit > 0 && os.Getenv("GOMEMLIMIT") == "" {
				debug.SetMemoryLimit(memLimit)
			}
			if len(args) > 0 {
				return usagef("unexpected arguments %q", args)
			}
			if genSecret != "" {
				if err := transport.GenerateSecret(genSecret); err != nil {
					return err
				}
				fmt.Fprintf(e.stdout, "wrote a new shared secret to %s (mode 0600): copy it to every host, by a channel you trust\n", genSecret)
				return nil
			}
			if listen == "" {
				return usagef("--listen is required")
			}
			if maxSessions < 1 {
				return usagef("--max-sessions must be at least 1")
			}
			if err := checkHooks(hooks, addrs, hook.Target); err != nil {
				return err
			}
			if err := cg.check(); err != nil {
				return err
			}
			cfg, err := auth.config()
			if err != nil {
				return err
			}
			opts := migrate.ServeOptions{Auth: cfg, Logger: e.logger, Hooks: hooks, Addresses: addrs, MaxSessions: maxSessions, XSAVEFeatures: xsave,
				ApplyCgroupLimits: cg.limits == "apply", CgroupRoot: cg.root, VDSOProxy: proxy, NetAttach: attach, IgnoreCgroups: cg.mode == "ignore",
				Ready: func(a net.Addr) { fmt.Fprintf(e.stdout, "listening on %s\n", a) }}
			if metricsAddr != "" {
				stop, err := serveMetrics(metricsAddr, &opts, e)
				if err != nil {
					return err
				}
				defer stop()
			}
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("transport: listen: %w", err)
			}
			return migrate.Serve(ctx, ln, opts)
		}
	},
}

// serveMetrics serves the metrics of the target service on addr, over
// plain HTTP, until stop; the service then observes into them (opts).
func serveMetrics(addr string, opts *migrate.ServeOptions, e *env) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics: %w", err)
	}
	opts.Metrics = migrate.NewMetrics()
	srv := &http.Server{Handler: opts.Metrics.Handler(), ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(e.logger.Handler(), slog.LevelWarn)}
	e.logger.Info("serving metrics", "addr", "http://"+ln.Addr().String()+"/metrics")
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			e.logger.Error("metrics server stopped", "err", err)
		}
	}()
	return func() {
		// Scrapes in flight get a moment to finish; /healthz said
		// "stopping" since the service began to stop.
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if srv.Shutdown(ctx) != nil {
			srv.Close()
		}
		<-done
	}, nil
}

// toCmd is `migrate --to HOST:PORT PID`, also `migrate to HOST:PORT PID`.
var toCmd = &command{
	name:    "to",
	usage:   "HOST:PORT [FLAGS] PID   (or: migrate --to HOST:PORT [FLAGS] PID)",
	summary: "move a running process to a 'migrate serve' target (live migration)",
	desc: `
Move process PID to the target at HOST:PORT while it runs: pre-copy rounds
copy its memory, then it is frozen for a final round with its state, the
target restores it with the same PID, and once the target says it runs, the
original is killed. Any failure before the commit leaves the original
running as it was. The process moves with all its descendants (--tree,
the default), as they are when they are frozen: a process forked during
pre-copy joins, one that exits leaves; --tree=false moves a process
without children alone.

--post-copy (--mode postcopy) resumes the process on the target after the
first pre-copy round, before all its memory is there: the pages it lacks
follow in the background, and a page it touches first is fetched at once.
The downtime no longer depends on how fast it writes. --mode auto does so
only when pre-copy does not converge. THE RISK: until the last page is on
the target, the process depends on both hosts and the link between them;
if the link or this side dies before, the process is lost (the target
kills its copy, which cannot run without its pages, and the original
stays frozen here as it was at the freeze). The default, --mode precopy,
has no such risk. Post-copy moves a single process.`,
	examples: `  migrate --to 10.0.0.2:7070 --secret-file /etc/migrate/secret 1234
  migrate --to 10.0.0.2:7070 --insecure --json 1234`,
	setup: func(fs *pflag.FlagSet) func(context.Context, *env, []string) error {
		var (
			to       string
			auth     authFlags
			tracker  string
			codec    string
			rounds   int
			downtime time.Duration
			asJSON   bool
			bwlimit  float64
			streams  int
			hooks    []string
		)
		fs.StringVar(&to, "to", "", "the target's `HOST:PORT`")
		auth.add(fs)
		fs.StringVar(&tracker, "tracker", "auto", "dirty-page tracker: auto, uffd-wp, soft-dirty or hash")
		fs.StringVar(&codec, "codec", "", "compress pages with `CODEC`: zstd, s2 or none")
		fs.IntVar(&rounds, "rounds", migrate.DefaultPolicy.MaxRounds, "at most `N` pre-copy rounds")
		fs.DurationVar(&downtime, "target-downtime", migrate.DefaultPolicy.TargetDowntime, "freeze once the rest can be sent in about `D`")
		var autoConverge bool
		boolFlag(fs, &autoConverge, "auto-converge", "", "when pre-copy stops converging, slow the processes down (stopped a growing share of each 50 ms while a round sends) rather than freeze with much left to send")
		boolFlag(fs, &asJSON, "json", "", "print the final report as JSON, nothing else on stdout")
		var mode string
		var postCopy bool
		fs.StringVar(&mode, "mode", "precopy", "how the migration ends: precopy (every page moved before the process runs there), postcopy or auto (post-copy when pre-copy does not converge). Post-copy: if the link or this host dies before the last page, THE PROCESS IS LOST")
		boolFlag(fs, &postCopy, "post-copy", "", "same as --mode postcopy: the process runs on the target while its missing pages follow; if the link or this host dies before the last page, THE PROCESS IS LOST")
		fs.Float64Var(&bwlimit, "bandwidth", 0, "send pages at most `MBPS` megabytes a second (0: no limit)")
		fs.IntVar(&streams, "streams", 0, fmt.Sprintf("spread each process's pages over `N` page streams, each compressed, sent and written on the target in parallel (1..%d; 0: one a CPU, up to 4; fewer for a tree of many processes, at most 32 in all)", migrate.MaxStreams))
		fs.StringArrayVar(&hooks, "hook", nil, "run `STAGE=COMMAND` (sh -c) at a stage: pre-freeze, post-dump, post-resume, abort (repeatable; hooks, their environment and order: README)")
		tree := true
		treeFlag := fs.VarPF((*switchValue)(&tree), "tree", "", "move the process with all its descendants; --tree=false: the process alone (refused if it has children)")
		treeFlag.NoOptDefVal, treeFlag.DefValue = "true", "true"
		var addrs []string
		addressFlag(fs, &addrs, "delete it from LINK once the process is dumped (an abort adds it back and announces it)")
		var inh []string
		fs.StringArrayVar(&inh, "inherit-fd", nil, "move the fds of `ID=PATH`'s ID, an object outside the tree (pipe:[N] or socket:[N], as /proc/PID/fd and a refusal name it), as external: the target opens PATH, a path of its own (a FIFO, a file), in their place (repeatable)")
		var syncs []string
		cpuCheck := cpuCheckFlag(fs)
		fs.StringArrayVar(&syncs, "sync", nil, "copy `PATH` (a file, or a directory tree) to the target at the same path while the process runs, and its last changes in the frozen window: for files the process writes that the target does not share (repeatable; without it such a migration is refused)")
		return func(ctx context.Context, e *env, args []string) error {
			if streams < 0 || streams > migrate.MaxStreams {
				return usagef("bad --streams %d (1..%d, or 0 for one a CPU)", streams, migrate.MaxStreams)
			}
			if bwlimit < 0 {
				return usagef("bad --bandwidth %v", bwlimit)
			}
			inUse, err := cpuCheck()
			if err != nil {
				return err
			}
			if postCopy {
				if fs.Changed("mode") && mode != "postcopy" {
					return usagef("--post-copy and --mode %s disagree", mode)
				}
				mode = "postcopy"
			}
			if err := migrate.CheckMode(mode); err != nil {
				return usagef("bad --mode: %v", err)
			}
			for i, p := range syncs {
				abs, err := filepath.Abs(p)
				if err != nil {
					return usagef("bad --sync %q: %v", p, err)
				}
				syncs[i] = abs
			}
			var inherit map[string]string
			for _, s := range inh {
				id, path, ok := strings.Cut(s, "=")
				if !ok || id == "" || path == "" {
					return usagef("bad --inherit-fd %q: want ID=PATH", s)
				}
				if inherit == nil {
					inherit = map[string]string{}
				}
				if _, dup := inherit[id]; dup {
					return usagef("--inherit-fd %s given twice", id)
				}
				inherit[id] = path
			}
			if err := checkHooks(hooks, addrs, hook.Source); err != nil {
				return err
			}
			if to == "" && len(args) == 2 {
				to, args = args[0], args[1:]
			}
			if to == "" {
				return usagef("the target's HOST:PORT is required")
			}
			pid, err := pidArg(args)
			if err != nil {
				return err
			}
			cfg, err := auth.config()
			if err != nil {
				return err
			}
			pol := migrate.DefaultPolicy
			pol.MaxRounds, pol.TargetDowntime, pol.AutoConverge = rounds, downtime, autoConverge
			if err := pol.Validate(); err != nil {
				return usagef("%v", err)
			}
			var onEvent func(migrate.Event)
			if !asJSON {
				status := e.transferStatus("round", true)
				onEvent = func(ev migrate.Event) {
					switch {
					case ev.Kind == migrate.EventRoundFinished:
						printRoundLine(e.stderr, *ev.Stats)
					case ev.Kind == migrate.EventRoundProgress && status != nil:
						status(*ev.Transfer)
					}
				}
			}
			rep, err := migrate.Migrate(ctx, pid, to, migrate.MigrateOptions{Auth: cfg, Codec: codec, Tracker: tracker, Policy: pol,
				Logger: e.logger, OnEvent: onEvent, Bandwidth: int64(bwlimit * 1e6), Streams: streams, Hooks: hooks, Addresses: addrs, ProcessOnly: !tree, Inherit: inherit, Mode: mode, Sync: syncs, CPUInUseOnly: inUse})
			e.clearStatus()
			if asJSON {
				writeJSON(e.stdout, migrateJSON(rep, err))
			} else if rep != nil {
				if len(rep.Stages) > 0 {
					fmt.Fprintln(e.stderr, stagesLine(rep.Stages))
				}
				fmt.Fprintln(e.stdout, migrateSummary(rep))
				if len(rep.Renumbered) > 0 {
					fmt.Fprintln(e.stdout, renumberedLine(rep.Renumbered))
				}
				if pc := rep.PostCopy; pc != nil {
					fmt.Fprintln(e.stdout, postCopyLine(pc))
				}
			}
			return err
		}
	},
}

// failedMigration is the --json output of a migration that failed: its
// report (if it got that far), the error, and the kind of a refusal, so
// that a script tells "refused: cpu" from a broken connection without
// reading the message.
type failedMigration struct {
	*migrate.Report
	Error   string              `json:"error"`
	Refused migrate.RefusalKind `json:"refused,omitempty"`
}

// migrateJSON is what --json prints for a migration's outcome.
func migrateJSON(rep *migrate.Report, err error) any {
	if err == nil {
		return rep
	}
	f := failedMigration{Report: rep, Error: err.Error()}
	var re *migrate.RefusedError
	if errors.As(err, &re) {
		f.Refused = re.Kind
	}
	return f
}

func printRoundLine(w io.Writer, r migrate.RoundReport) {
	what := "pre-copy"
	if r.Frozen {
		what = "final, frozen"
	}
	rate, ratio := 0.0, 0.0
	if r.MS > 0 {
		rate = float64(r.BytesWire) / (r.MS / 1000) / 1e6
	}
	if r.BytesRaw > 0 {
		ratio = float64(r.BytesWire) / float64(r.BytesRaw)
	}
	est := ""
	if r.EstimateMS > 0 {
		est = fmt.Sprintf(", estimated downtime %.1f ms", r.EstimateMS)
	}
	if r.Throttle > 0 {
		est += fmt.Sprintf(", throttled (stopped %.0f%% of the time)", r.Throttle*100)
	}
	fmt.Fprintf(w, "round %d (%s): %d pages dirty, %d sent, %s raw, %s on the wire (ratio %.2f), %.1f ms, %.0f MB/s, process held %.1f ms%s\n",
		r.Round, what, r.PagesDirty, r.PagesSent, humanBytes(r.BytesRaw), humanBytes(r.BytesWire), ratio, r.MS, rate, r.HeldMS, est)
}

func migrateSummary(r *migrate.Report) string {
	comm := r.Comm
	if r.Processes > 1 {
		comm += fmt.Sprintf(", with %d descendants", r.Processes-1)
	}
	return fmt.Sprintf("migrated pid %d (%s) to %s: %s after %d rounds, %s on the wire (%s raw, RSS %s), downtime %s (target: %s), total %s (session %s)",
		r.PID, comm, r.Target, r.Outcome, len(r.Rounds), humanBytes(r.BytesWire), humanBytes(r.BytesRaw),
		humanBytes(r.RSSBytes), formatMS(r.DowntimeMS), formatMS(r.TargetDowntimeMS),
		formatMS(r.TotalMS), r.Session)
}

// renumberedLine says which PIDs outside a container the target gave
// others.
func renumberedLine(moves []migrate.Renumbered) string {
	var s []string
	for _, m := range moves {
		s = append(s, m.String())
	}
	return fmt.Sprintf("the container's PIDs were taken on the target: its processes and threads have other PIDs outside it there (%s), the same inside",
		strings.Join(s, " "))
}

// isTo says whether the arguments ask for a live migration: --to among
// the flags before the first plain argument.
func isTo(args []string) bool {
	for _, a := range args {
		if a == "--to" || strings.HasPrefix(a, "--to=") {
			return true
		}
		if !strings.HasPrefix(a, "-") {
			return false
		}
	}
	return false
}

var recoverCmd = &command{
	name:    "recover",
	usage:   "--to HOST:PORT --session ID [FLAGS] PID",
	summary: "settle a migration whose outcome the source could not learn",
	desc: `
When the link to the target fails after the commit and the source cannot
learn what became of the migration, 'migrate --to' leaves the original
process stopped and prints its session ID. 'migrate recover' asks the target
about that session: if the target runs the process, the original is killed;
if the migration was aborted, the original runs on (SIGCONT). If the target
cannot tell, the original stays stopped and the command says so (exit 1).
It acts only on the process that the migration's record in /run/migrate
names (same PID, session and start time), and refuses any other.`,
	examples: `  migrate recover --to 10.0.0.2:7070 --secret-file /etc/migrate/secret --session 3f9c... 1234`,
	setup: func(fs *pflag.FlagSet) func(context.Context, *env, []string) error {
		var to, session string
		var auth authFlags
		fs.StringVar(&to, "to", "", "the target's `HOST:PORT` (required)")
		fs.StringVar(&session, "session", "", "the migration's session `ID` (required)")
		auth.add(fs)
		return func(ctx context.Context, e *env, args []string) error {
			pid, err := pidArg(args)
			if err != nil {
				return err
			}
			if to == "" || session == "" {
				return usagef("--to and --session are required")
			}
			cfg, err := auth.config()
			if err != nil {
				return err
			}
			out, err := migrate.Recover(ctx, pid, to, session, migrate.RecoverOptions{Auth: cfg, Logger: e.logger})
			fmt.Fprintf(e.stdout, "session %s: %s\n", session, out)
			return err
		}
	},
}

// addressFlag adds --address, the service address a migration moves.
func addressFlag(fs *pflag.FlagSet, addrs *[]string, what string) {
	fs.StringArrayVar(addrs, "address", nil, "the service address `ADDR[/PLEN]@LINK` moves with the process: "+what+
		"; done in-process over netlink, before the hooks of the same stage (repeatable)")
}

// checkHooks checks the --hook and --address values of role, as
// migrate.Migrate and migrate.Serve will read them: a mistake is a usage
// error, found before anything else is done.
func checkHooks(hooks, addrs []string, role hook.Role) error {
	if _, err := hook.Parse(hooks, role); err != nil {
		return usagef("%v", err)
	}
	for _, s := range addrs {
		if _, err := netaddr.Parse(s); err != nil {
			return usagef("--address: %v", err)
		}
	}
	return nil
}

func postCopyLine(pc *migrate.PostCopyReport) string {
	state := "complete"
	if !pc.FinishedOnTarget {
		state = "NOT complete: the process is lost"
	}
	return fmt.Sprintf("post-copy (%s): %d pages missing at the resume, %d on demand (%d faults, latency %.2f ms average, %.2f ms at most), %d in the background, %s on the wire, %s after the resume",
		pc.Reason, pc.MissingPages, pc.OnDemandPages, pc.Faults, pc.FaultLatencyMS, pc.FaultLatencyMax, pc.BackgroundPages,
		humanBytes(pc.BytesWire), state+" "+formatMS(pc.CompleteMS))
}
