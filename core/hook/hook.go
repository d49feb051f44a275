// Package hook runs the operator's commands at named stages of a migration
// (`--hook STAGE=COMMAND`), for example to move a service address from the
// source host to the target while the process is frozen.
//
// Stages, in the order a migration reaches them:
//
//	pre-freeze   source  before the process is frozen
//	post-dump    source  state sent, original frozen, network lock on
//	pre-resume   target  process restored and ready, before it runs
//	post-resume  both    after the process runs on the target
//	abort        both    the migration was abandoned before commit
//
// Each command runs with /bin/sh -c in its own process group, with stdin
// from /dev/null, the caller's environment plus MIGRATE_STAGE, MIGRATE_ROLE
// and what the caller adds (MIGRATE_PID, MIGRATE_SESSION, ...), and a time
// limit after which the whole group is killed. A command that leaves a
// process behind on purpose should detach it (setsid, output redirected):
// whatever still holds the hook's output a second after the shell exits has
// that output closed.
//
// The package knows nothing of the migration itself: callers decide when a
// stage is reached.
package hook

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core/reap"
)

// Stage names a point of a migration at which hooks run.
type Stage string

// The stages.
const (
	PreFreeze  Stage = "pre-freeze"
	PostDump   Stage = "post-dump"
	PreResume  Stage = "pre-resume"
	PostResume Stage = "post-resume"
	Abort      Stage = "abort"
)

// stages is every stage in the order a migration reaches them.
var stages = []Stage{PreFreeze, PostDump, PreResume, PostResume, Abort}

// Role is the side of a migration a process plays.
type Role string

// The roles.
const (
	Source Role = "source"
	Target Role = "target"
)

// RunsOn reports whether stage s is ever reached on role r.
func (s Stage) RunsOn(r Role) bool {
	switch s {
	case PreFreeze, PostDump:
		return r == Source
	case PreResume:
		return r == Target
	case PostResume, Abort:
		return r == Source || r == Target
	}
	return false
}

// StagesOf returns the stages reached on role r, in order.
func StagesOf(r Role) []Stage {
	var out []Stage
	for _, s := range stages {
		if s.RunsOn(r) {
			out = append(out, s)
		}
	}
	return out
}

// DefaultTimeout is the time limit of one command when Set.Timeout is 0.
const DefaultTimeout = 30 * time.Second

// waitDelay is how long Run waits, once a command's shell has exited, for
// processes it left behind to close the command's output.
const waitDelay = time.Second

// outputTail is how much of a command's stdout and of its stderr is kept.
const outputTail = 16 << 10

// Set is the hooks of one side of a migration. A nil *Set has no hooks.
// A Set must not be changed while Run runs.
type Set struct {
	role  Role
	hooks map[Stage][]string // commands in the order given
	funcs map[Stage][]namedFunc

	// Timeout limits each command; 0 means DefaultTimeout.
	Timeout time.Duration

	log *slog.Logger

	mu   sync.Mutex
	runs []Timing
}

// Timing is how long one hook of a stage ran.
type Timing struct {
	Stage Stage   `json:"stage"`
	Hook  string  `json:"hook"` // the command as given, or the builtin's name
	MS    float64 `json:"ms"`
	OK    bool    `json:"ok"`
}

// Timings returns every hook Run ran so far, in the order they ended.
func (s *Set) Timings() []Timing {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.runs)
}

func (s *Set) ran(stage Stage, name string, d time.Duration, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.runs = append(s.runs, Timing{Stage: stage, Hook: clip(name, 200), MS: float64(d.Microseconds()) / 1000, OK: err == nil})
}

// SpecError is a --hook value that Parse rejects.
type SpecError struct {
	Spec   string
	Role   Role
	Reason string
}

func (e *SpecError) Error() string {
	names := make([]string, 0, len(stages))
	for _, s := range StagesOf(e.Role) {
		names = append(names, string(s))
	}
	return fmt.Sprintf("hook %q: %s (the %s's stages: %s; form STAGE=COMMAND)",
		clip(e.Spec, 80), e.Reason, e.Role, strings.Join(names, ", "))
}

// Parse reads --hook values, each "STAGE=COMMAND", for role. Several
// commands for one stage run in the order given. A stage that is never
// reached on role is an error, not silently ignored.
func Parse(specs []string, role Role) (*Set, error) {
	if role != Source && role != Target {
		return nil, fmt.Errorf("hook: unknown role %q", role)
	}
	s := &Set{role: role, hooks: make(map[Stage][]string)}
	for _, spec := range specs {
		name, cmd, ok := strings.Cut(spec, "=")
		if !ok {
			return nil, &SpecError{spec, role, "no '='"}
		}
		stage := Stage(strings.TrimSpace(name))
		if !slices.Contains(stages, stage) {
			return nil, &SpecError{spec, role, fmt.Sprintf("unknown stage %q", stage)}
		}
		if !stage.RunsOn(role) {
			return nil, &SpecError{spec, role, fmt.Sprintf("stage %s never runs on the %s", stage, role)}
		}
		if strings.TrimSpace(cmd) == "" {
			return nil, &SpecError{spec, role, "empty command"}
		}
		s.hooks[stage] = append(s.hooks[stage], cmd)
	}
	return s, nil
}

// Func is a hook done inside migrate rather than by a command: moving a
// service address over netlink takes a fraction of a millisecond where
// starting `ip` costs milliseconds of the downtime. env is what a command
// would get (MIGRATE_SESSION and the rest, MIGRATE_STAGE and MIGRATE_ROLE
// included).
type Func func(ctx context.Context, env map[string]string) error

type namedFunc struct {
	name string
	fn   Func
}

// AddFunc adds fn, named name in logs and errors, to stage: a stage's
// functions run before its commands, in the order added. It must not be
// called while Run runs.
func (s *Set) AddFunc(stage Stage, name string, fn Func) error {
	if !slices.Contains(stages, stage) || !stage.RunsOn(s.role) {
		return fmt.Errorf("hook: stage %q never runs on the %s", stage, s.role)
	}
	if s.funcs == nil {
		s.funcs = make(map[Stage][]namedFunc)
	}
	s.funcs[stage] = append(s.funcs[stage], namedFunc{name, fn})
	return nil
}

// Role returns the role the set was parsed for ("" for a nil Set).
func (s *Set) Role() Role {
	if s == nil {
		return ""
	}
	return s.role
}

// Has reports whether stage has commands.
func (s *Set) Has(stage Stage) bool {
	return s != nil && (len(s.hooks[stage]) > 0 || len(s.funcs[stage]) > 0)
}

// SetLogger makes Run log each command it runs (stage, command, duration,
// and its output at debug level). Without it Run logs nothing.
func (s *Set) SetLogger(l *slog.Logger) {
	if s != nil {
		s.log = l
	}
}

// Error is a hook command that failed: it exited non-zero, was killed,
// timed out, or could not start.
type Error struct {
	Stage    Stage
	Command  string        // as given
	ExitCode int           // -1 if it did not exit on its own
	Timeout  time.Duration // non-zero if it ran out of time
	Stderr   string        // the last lines of its standard error
	Err      error         // *exec.ExitError, a context error, or why it did not start
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "hook %s %q: ", e.Stage, clip(e.Command, 60))
	switch {
	case e.Timeout != 0:
		fmt.Fprintf(&b, "timed out after %v, process group killed", e.Timeout)
	case errors.Is(e.Err, context.Canceled):
		b.WriteString("canceled, process group killed")
	default:
		b.WriteString(e.Err.Error())
	}
	if e.Stderr != "" {
		b.WriteString("; stderr: ")
		b.WriteString(strings.ReplaceAll(e.Stderr, "\n", " | "))
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// Run runs stage's commands in order, stopping at the first that fails,
// whose failure it returns as an *Error. The commands' environment is the
// caller's, then env, then MIGRATE_STAGE and MIGRATE_ROLE. Canceling ctx
// kills the running command's process group. A nil Set or a stage without
// commands runs nothing.
func (s *Set) Run(ctx context.Context, stage Stage, env map[string]string) error {
	if !s.Has(stage) {
		return nil
	}
	environ := os.Environ()
	for _, k := range slices.Sorted(maps.Keys(env)) {
		environ = append(environ, k+"="+env[k])
	}
	environ = append(environ, "MIGRATE_STAGE="+string(stage), "MIGRATE_ROLE="+string(s.role))
	timeout := s.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	if fs := s.funcs[stage]; len(fs) > 0 {
		fenv := maps.Clone(env)
		if fenv == nil {
			fenv = map[string]string{}
		}
		fenv["MIGRATE_STAGE"], fenv["MIGRATE_ROLE"] = string(stage), string(s.role)
		for _, f := range fs {
			cctx, cancel := context.WithTimeout(ctx, timeout)
			start := time.Now()
			err := f.fn(cctx, fenv)
			cancel()
			s.ran(stage, f.name, time.Since(start), err)
			s.logger().Info("hook", "stage", stage, "builtin", f.name, "duration", time.Since(start), "err", err)
			if err != nil {
				return &Error{Stage: stage, Command: f.name, ExitCode: -1, Err: err}
			}
		}
	}
	for _, command := range s.hooks[stage] {
		if err := s.run(ctx, stage, command, environ, timeout); err != nil {
			return err
		}
	}
	return nil
}

func (s *Set) run(ctx context.Context, stage Stage, command string, environ []string, timeout time.Duration) error {
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(cctx, "/bin/sh", "-c", command)
	cmd.Env = environ
	var stdout, stderr tail
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// Its own process group, so that a timeout kills what the shell started
	// too, and a ^C meant for migrate does not reach the hook first.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		if err := unix.Kill(-cmd.Process.Pid, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
			return cmd.Process.Kill()
		}
		return nil
	}
	cmd.WaitDelay = waitDelay

	start := time.Now()
	// A migrate serve that is PID 1 reaps orphans: reap.Start keeps this
	// child's exit for Wait.
	err := reap.Start(cmd)
	if err == nil {
		err = reap.Wait(cmd)
	}
	d := time.Since(start)
	if errors.Is(err, exec.ErrWaitDelay) {
		// The shell exited 0; something it left running held its output.
		s.logger().Warn("hook left a process holding its output", "stage", stage, "command", clip(command, 200))
		err = nil
	}
	if err != nil && cmd.ProcessState == nil && cctx.Err() == nil {
		err = fmt.Errorf("start: %w", err)
	}
	s.ran(stage, command, d, err)
	s.logger().Info("hook", "stage", stage, "command", clip(command, 200), "duration", d, "err", err)
	s.logger().Debug("hook output", "stage", stage, "command", clip(command, 200),
		"stdout", stdout.String(), "stderr", stderr.String())
	if err == nil {
		return nil
	}
	e := &Error{Stage: stage, Command: command, ExitCode: -1, Stderr: lastLines(stderr.String(), 5, 512), Err: err}
	if cmd.ProcessState != nil {
		e.ExitCode = cmd.ProcessState.ExitCode()
	}
	if ctx.Err() != nil {
		e.Err = ctx.Err()
	} else if errors.Is(cctx.Err(), context.DeadlineExceeded) {
		e.Timeout = timeout
		e.Err = cctx.Err()
	}
	return e
}

func (s *Set) logger() *slog.Logger {
	if s.log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.log
}

// tail is an io.Writer that keeps the last outputTail bytes written.
type tail struct {
	b         []byte
	truncated bool
}

func (t *tail) Write(p []byte) (int, error) {
	n := len(p)
	if len(p) >= outputTail {
		t.b = append(t.b[:0], p[len(p)-outputTail:]...)
		t.truncated = true
		return n, nil
	}
	if over := len(t.b) + len(p) - outputTail; over > 0 {
		t.b = append(t.b[:0], t.b[over:]...)
		t.truncated = true
	}
	t.b = append(t.b, p...)
	return n, nil
}

func (t *tail) String() string {
	s := strings.ToValidUTF8(string(t.b), "?")
	if t.truncated {
		if i := strings.IndexByte(s, '\n'); i >= 0 {
			s = s[i+1:] // drop the partial first line
		}
	}
	return s
}

// lastLines returns the last n non-empty lines of s, each clipped, at most
// max bytes in all.
func lastLines(s string, n, max int) string {
	var lines []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, clip(l, 200))
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	out := strings.Join(lines, "\n")
	for len(out) > max && len(lines) > 1 {
		lines = lines[1:]
		out = strings.Join(lines, "\n")
	}
	return clip(out, max)
}

// clip shortens s to at most n bytes on a rune boundary, marking the cut.
func clip(s string, n int) string {
	s = strings.ToValidUTF8(s, "?")
	if len(s) <= n {
		return s
	}
	cut := n - len("...")
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}
