package kernel

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Probes that must change a process (fork with a chosen PID, PR_SET_MM_MAP,
// clear_refs) or need a process to look at run in a helper: the running
// binary, re-executed through /proc/self/exe with a hidden first argument.
// The init function below turns any binary that links this package (migrate
// itself, and every test binary) into that helper when it sees the
// argument and the environment marker together, so a helper never runs a
// binary's own main or its tests.
//
// Protocol: the parent writes command lines to the helper's stdin and reads
// one answer line per command from its stdout: "ok ..." or "err ...". The
// helper exits when its stdin reaches EOF, so closing the pipe ends it, and
// it gets SIGKILL if the thread that started it dies.

const (
	helperArg = "__probe-child"
	helperEnv = "MIGRATE_PROBE_CHILD"
)

func init() {
	if len(os.Args) > 2 && os.Args[1] == helperArg && os.Getenv(helperEnv) == "1" {
		os.Exit(helperMain(os.Args[2], os.Stdin, os.Stdout))
	}
}

// askHelper starts a helper child in mode and returns it with its answer
// as key=value pairs. A helper that reports a failure makes feature
// unsupported, what saying what it tried. On success the caller owns the
// helper (defer h.kill()).
func askHelper(ctx context.Context, mode, feature, what string) (*helper, map[string]string, error) {
	h, line, err := startHelper(ctx, mode)
	if err != nil {
		return nil, nil, err
	}
	kv, err := parseAnswer(line)
	if err != nil {
		h.kill()
		var he *helperError
		if errors.As(err, &he) {
			return nil, nil, unsupported(feature, what, err)
		}
		return nil, nil, err
	}
	return h, kv, nil
}

// helper is a running helper process, seen from the parent.
type helper struct {
	mode   string
	cmd    *exec.Cmd
	in     io.WriteCloser
	out    *bufio.Reader
	stderr bytes.Buffer
	done   bool
}

// startHelper starts a helper in the given mode and reads its first line,
// which every mode writes once it is ready. extra become fds 3, 4, ... of
// the helper. The helper is killed if ctx ends.
func startHelper(ctx context.Context, mode string, extra ...*os.File) (*helper, string, error) {
	h := &helper{mode: mode}
	cmd := exec.CommandContext(ctx, "/proc/self/exe", helperArg, mode)
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	cmd.ExtraFiles = extra
	cmd.Stderr = &limitedBuffer{buf: &h.stderr, max: 4096}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 2 * time.Second
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, "", err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		in.Close()
		return nil, "", err
	}
	if err := cmd.Start(); err != nil {
		in.Close()
		out.Close()
		return nil, "", fmt.Errorf("start probe helper: %w", err)
	}
	h.cmd, h.in, h.out = cmd, in, bufio.NewReader(out)
	line, err := h.readLine()
	if err != nil {
		return nil, "", h.fail(err)
	}
	return h, line, nil
}

// pid is the helper's PID.
func (h *helper) pid() int { return h.cmd.Process.Pid }

// readLine reads one answer line, without its newline.
func (h *helper) readLine() (string, error) {
	line, err := h.out.ReadString('\n')
	if err != nil {
		if errors.Is(err, io.EOF) {
			return "", fmt.Errorf("probe helper %q ended without an answer", h.mode)
		}
		return "", fmt.Errorf("probe helper %q: %w", h.mode, err)
	}
	return strings.TrimSuffix(line, "\n"), nil
}

// call sends a command line and reads the answer.
func (h *helper) call(cmd string) (string, error) {
	if _, err := io.WriteString(h.in, cmd+"\n"); err != nil {
		return "", fmt.Errorf("probe helper %q: send %q: %w", h.mode, cmd, err)
	}
	return h.readLine()
}

// close ends the helper (EOF on its stdin) and reaps it. It is safe to
// call more than once.
func (h *helper) close() error {
	if h == nil || h.done {
		return nil
	}
	h.done = true
	h.in.Close()
	timer := time.AfterFunc(2*time.Second, func() { h.cmd.Process.Kill() })
	defer timer.Stop()
	err := h.cmd.Wait()
	if err != nil {
		if s := strings.TrimSpace(h.stderr.String()); s != "" {
			err = fmt.Errorf("probe helper %q: %w: %s", h.mode, err, s)
		} else {
			err = fmt.Errorf("probe helper %q: %w", h.mode, err)
		}
	}
	return err
}

// kill ends the helper with SIGKILL and reaps it.
func (h *helper) kill() {
	if h == nil || h.done {
		return
	}
	h.cmd.Process.Kill()
	h.close()
}

// fail kills the helper and returns err with whatever the helper wrote to
// stderr, which says more than a broken pipe.
func (h *helper) fail(err error) error {
	h.kill()
	if s := strings.TrimSpace(h.stderr.String()); s != "" {
		return fmt.Errorf("%w (helper stderr: %s)", err, s)
	}
	return err
}

// parseAnswer splits "ok k=v k=v" into its fields; an "err" answer becomes
// the returned error text.
func parseAnswer(line string) (map[string]string, error) {
	word, rest, _ := strings.Cut(line, " ")
	switch word {
	case "ok":
		kv := map[string]string{}
		for _, f := range strings.Fields(rest) {
			k, v, _ := strings.Cut(f, "=")
			kv[k] = v
		}
		return kv, nil
	case "err":
		return nil, newHelperError(rest)
	default:
		return nil, fmt.Errorf("probe helper: unexpected answer %q", line)
	}
}

// helperError is an "err" answer of a helper: the mechanism failed in the
// helper (not the helper itself). Errno is the system error, when the
// helper named one.
type helperError struct {
	msg   string
	errno syscall.Errno
}

func (e *helperError) Error() string { return e.msg }

func (e *helperError) Unwrap() error {
	if e.errno == 0 {
		return nil
	}
	return e.errno
}

// limitedBuffer keeps the first max bytes written to it.
type limitedBuffer struct {
	buf *bytes.Buffer
	max int
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := l.max - l.buf.Len(); room > 0 {
		l.buf.Write(p[:min(room, len(p))])
	}
	return len(p), nil
}

// helperMain is the helper side: it runs one mode and returns the exit
// status.
func helperMain(mode string, in io.Reader, out io.Writer) int {
	w := bufio.NewWriter(out)
	say := func(format string, args ...any) {
		fmt.Fprintf(w, format+"\n", args...)
		w.Flush()
	}
	cmds := bufio.NewScanner(in)
	var run func(say func(string, ...any), cmds *bufio.Scanner)
	switch mode {
	case "idle":
		run = helperIdle
	case "buffer":
		run = helperBuffer
	case "clone3":
		run = helperClone3
	case "mm-map":
		run = helperMMMap
	case "soft-dirty":
		run = helperSoftDirty
	case "uffd":
		run = helperUffd
	default:
		fmt.Fprintf(os.Stderr, "unknown probe helper mode %q\n", mode)
		return 2
	}
	run(say, cmds)
	// Whatever the mode, stay until the parent closes stdin, so that the
	// parent decides when the helper ends.
	for cmds.Scan() {
		say("err unknown command %q", cmds.Text())
	}
	return 0
}

// sayErr writes an "err" answer naming a system call and its errno, which
// the parent turns back into a syscall.Errno.
func sayErr(say func(string, ...any), what string, err error) {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		say("err errno=%d %s: %v", int(errno), what, err)
		return
	}
	say("err %s: %v", what, err)
}

// newHelperError parses the text of an "err" answer; "errno=N text"
// becomes an error that unwraps to syscall.Errno(N).
func newHelperError(text string) error {
	he := &helperError{msg: text}
	if rest, ok := strings.CutPrefix(text, "errno="); ok {
		num, msg, _ := strings.Cut(rest, " ")
		if n, err := strconv.Atoi(num); err == nil && n > 0 {
			he.errno, he.msg = syscall.Errno(n), msg
		}
	}
	return he
}

func helperIdle(say func(string, ...any), _ *bufio.Scanner) {
	say("ok pid=%d", os.Getpid())
}
