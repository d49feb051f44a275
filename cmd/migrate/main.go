// Command migrate moves a running Linux process to another host (`migrate
// --to`, to a `migrate serve`), and checkpoints one into a directory and
// restores it from there (`dump`, `restore`). This package holds flags,
// output and exit codes only. Dump, restore, --to, recover and serve call
// package migrate (the API, at the module's root), which drives packages
// source (the dumping side) and target (the restoring side and the
// service); `show` reads images with core, `check` probes with
// core/kernel and core/ptrace, and --hook and --address are checked with
// core/hook and core/netaddr.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/internal/osthread"
	"github.com/procmig/migrate/source"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
	// exitDenied: the user may not do this (migrate runs set-user-ID, or
	// the user may not trace the process).
	exitDenied = 3
)

// The main goroutine keeps the main thread to itself (see
// internal/osthread): whatever runs elsewhere never leaves the thread-group
// leader, which the kernel consults for the whole process, changed.
func init() { osthread.KeepMain() }

func main() {
	if err := refuseSetID(); err != nil {
		fmt.Fprintf(os.Stderr, "migrate: %v\n", err)
		os.Exit(exitDenied)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], newEnv(os.Stdout, newStatusWriter(os.Stderr)))
	stop()
	os.Exit(code)
}

// refuseSetID refuses to run set-user-ID or set-group-ID: migrate would
// act with the file owner's privilege on behalf of whoever runs it (move,
// stop or kill root's processes). Its checks of who may move a process
// look at the real ids, which must then be the effective ones.
// File capabilities count too: the kernel marks any such exec secure
// (AT_SECURE).
func refuseSetID() error {
	if os.Getuid() != os.Geteuid() || os.Getgid() != os.Getegid() {
		return fmt.Errorf("refusing to run set-user-ID or set-group-ID (real uid %d gid %d, effective uid %d gid %d): run it as root instead",
			os.Getuid(), os.Getgid(), os.Geteuid(), os.Getegid())
	}
	auxv, _ := unix.Auxv()
	for _, kv := range auxv {
		if kv[0] == atSecure && kv[1] != 0 {
			return fmt.Errorf("refusing to run with privilege its user does not have (set-user-ID, set-group-ID or file capabilities): run it as root instead")
		}
	}
	return nil
}

// atSecure is AT_SECURE, set in the auxiliary vector of a privileged exec.
const atSecure = 23

// env is what a command may touch: its output streams, its logger, and the
// library entry points (replaced in tests).
type env struct {
	stdout, stderr io.Writer
	logger         *slog.Logger
	level          *slog.LevelVar
	ops            ops
}

func newEnv(stdout, stderr io.Writer) *env {
	level := new(slog.LevelVar)
	level.Set(slog.LevelWarn)
	return &env{
		stdout: stdout,
		stderr: stderr,
		level:  level,
		logger: slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level})),
		ops:    realOps(),
	}
}

// usageError is a mistake in the command line: exit status 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// commonFlags are accepted before the command and after it.
type commonFlags struct {
	verbose   int
	logLevel  string
	logFormat string
}

func (c *commonFlags) add(fs *pflag.FlagSet) {
	countFlag(fs, &c.verbose, "verbose", "v", "log progress to stderr (-v info, -vv debug); same as --log-level")
	fs.StringVar(&c.logLevel, "log-level", "warn", "log messages of `LEVEL` and above to stderr: debug, info, warn or error")
	fs.StringVar(&c.logFormat, "log-format", "text", "log as `FORMAT`: text or json")
}

// apply sets the log format, and the log level: --log-level if given,
// else -v, else warn.
func (c *commonFlags) apply(fs *pflag.FlagSet, e *env) error {
	switch c.logFormat {
	case "text":
	case "json":
		e.logger = slog.New(slog.NewJSONHandler(e.stderr, &slog.HandlerOptions{Level: e.level}))
	default:
		return usagef("bad --log-format %q: want text or json", c.logFormat)
	}
	if fs.Changed("log-level") {
		var l slog.Level
		if err := l.UnmarshalText([]byte(c.logLevel)); err != nil {
			return usagef("bad --log-level %q: want debug, info, warn or error", c.logLevel)
		}
		e.level.Set(l)
		return nil
	}
	switch {
	case c.verbose >= 2:
		e.level.Set(slog.LevelDebug)
	case c.verbose == 1:
		e.level.Set(slog.LevelInfo)
	}
	return nil
}

// run runs the command line args and returns the exit status.
func run(ctx context.Context, args []string, e *env) int {
	var common commonFlags
	var showVersion, help bool
	fs := pflag.NewFlagSet("migrate", pflag.ContinueOnError)
	fs.SetInterspersed(false)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	common.add(fs)
	boolFlag(fs, &showVersion, "version", "", "print the version and exit")
	boolFlag(fs, &help, "help", "h", "show this help")

	if isTo(args) {
		return runCommand(ctx, toCmd, args, &common, e)
	}
	if err := fs.Parse(args); err != nil {
		return report(e, "", usagef("%v", err))
	}
	if err := common.apply(fs, e); err != nil {
		return report(e, "", err)
	}
	if help {
		printMainHelp(e.stdout)
		return exitOK
	}
	if showVersion {
		printVersion(e.stdout)
		return exitOK
	}
	rest := fs.Args()
	if len(rest) == 0 {
		printMainHelp(e.stderr)
		return exitUsage
	}
	name, rest := rest[0], rest[1:]
	cmd := lookup(name)
	if cmd == nil {
		return report(e, "", usagef("unknown command %q", name))
	}
	return runCommand(ctx, cmd, rest, &common, e)
}

func runCommand(ctx context.Context, cmd *command, args []string, common *commonFlags, e *env) int {
	fs := pflag.NewFlagSet("migrate "+cmd.name, pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	fs.SortFlags = false
	action := cmd.setup(fs)
	common.add(fs)
	var help bool
	boolFlag(fs, &help, "help", "h", "show this help")
	if err := fs.Parse(args); err != nil {
		return report(e, cmd.name, usagef("%v", err))
	}
	if help {
		printCommandHelp(e.stdout, cmd)
		return exitOK
	}
	if err := common.apply(fs, e); err != nil {
		return report(e, cmd.name, err)
	}
	return report(e, cmd.name, action(ctx, e, fs.Args()))
}

// report prints err as "migrate: CMD: err" and returns the exit status.
func report(e *env, cmd string, err error) int {
	if err == nil {
		return exitOK
	}
	prefix := "migrate: "
	if cmd != "" {
		prefix += cmd + ": "
	}
	msg := strings.TrimRight(err.Error(), "\n")
	fmt.Fprintf(e.stderr, "%s%s\n", prefix, msg)
	var ue *usageError
	if errors.As(err, &ue) {
		if cmd != "" {
			fmt.Fprintf(e.stderr, "Run 'migrate help %s' for usage.\n", cmd)
		} else {
			fmt.Fprintln(e.stderr, "Run 'migrate help' for usage.")
		}
		return exitUsage
	}
	var ae *source.AccessError
	if errors.As(err, &ae) {
		return exitDenied
	}
	return exitFailure
}
