package hook

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestParse(t *testing.T) {
	s, err := Parse([]string{
		"pre-freeze=echo 1",
		"post-dump=a=b env",
		" pre-freeze =echo 2",
		"abort=true",
		"post-resume=true",
	}, Source)
	if err != nil {
		t.Fatal(err)
	}
	if got := s.hooks[PreFreeze]; len(got) != 2 || got[0] != "echo 1" || got[1] != "echo 2" {
		t.Errorf("pre-freeze: %q", got)
	}
	if got := s.hooks[PostDump]; len(got) != 1 || got[0] != "a=b env" {
		t.Errorf("post-dump: %q", got)
	}
	for stage, want := range map[Stage]bool{PreFreeze: true, PostDump: true, PreResume: false, PostResume: true, Abort: true} {
		if s.Has(stage) != want {
			t.Errorf("Has(%s) = %v", stage, !want)
		}
	}
	if s.Role() != Source {
		t.Errorf("Role() = %q", s.Role())
	}
	if s, err := Parse(nil, Target); err != nil || s.Has(PostResume) {
		t.Errorf("Parse(nil) = %v, %v", s, err)
	}
	if _, err := Parse([]string{"pre-resume=ip addr add 10.0.0.9/32 dev eth0"}, Target); err != nil {
		t.Error(err)
	}

	for _, tc := range []struct {
		spec string
		role Role
	}{
		{"pre-resume=true", Source},
		{"pre-freeze=true", Target},
		{"post-dump=true", Target},
		{"post-dump=", Source},
		{"abort=   ", Target},
		{"pre-frezze=true", Source},
		{"PRE-FREEZE=true", Source},
		{"true", Source},
		{"", Target},
		{"=true", Source},
	} {
		_, err := Parse([]string{"abort=true", tc.spec}, tc.role)
		var se *SpecError
		if !errors.As(err, &se) {
			t.Errorf("Parse(%q, %s) = %v, want a *SpecError", tc.spec, tc.role, err)
			continue
		}
		if se.Spec != tc.spec || se.Role != tc.role || se.Reason == "" {
			t.Errorf("Parse(%q, %s): %#v", tc.spec, tc.role, se)
		}
		// The message names the spec and lists the role's stages.
		msg := err.Error()
		for _, s := range StagesOf(tc.role) {
			if !strings.Contains(msg, string(s)) {
				t.Errorf("%q does not list stage %s", msg, s)
			}
		}
		if !strings.Contains(msg, strconv.Quote(tc.spec)) {
			t.Errorf("%q does not name the spec", msg)
		}
	}
	if _, err := Parse(nil, "middle"); err == nil {
		t.Error("Parse with an unknown role accepted")
	}
}

func TestStages(t *testing.T) {
	if got := StagesOf(Source); !equal(got, []Stage{PreFreeze, PostDump, PostResume, Abort}) {
		t.Errorf("source stages %q", got)
	}
	if got := StagesOf(Target); !equal(got, []Stage{PreResume, PostResume, Abort}) {
		t.Errorf("target stages %q", got)
	}
}

func equal(a, b []Stage) bool { return strings.Join(str(a), ",") == strings.Join(str(b), ",") }

func str(a []Stage) []string {
	var out []string
	for _, s := range a {
		out = append(out, string(s))
	}
	return out
}

func TestNilSet(t *testing.T) {
	var s *Set
	if s.Has(Abort) {
		t.Error("nil Set has hooks")
	}
	if err := s.Run(context.Background(), Abort, nil); err != nil {
		t.Error(err)
	}
	s.SetLogger(slog.Default())
	if s.Role() != "" {
		t.Error("nil Set has a role")
	}
}

func mustParse(t *testing.T, role Role, specs ...string) *Set {
	t.Helper()
	s, err := Parse(specs, role)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestRunOrder(t *testing.T) {
	out := filepath.Join(t.TempDir(), "out")
	t.Setenv("OUT", out)
	s := mustParse(t, Source,
		`post-dump=echo 1 >>"$OUT"`,
		`abort=echo abort >>"$OUT"`,
		`post-dump=echo 2 >>"$OUT"`,
		`post-dump=echo 3 >>"$OUT"`,
	)
	if err := s.Run(context.Background(), PostDump, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Run(context.Background(), PreFreeze, nil); err != nil { // none
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(out); string(b) != "1\n2\n3\n" {
		t.Errorf("ran %q", b)
	}
}

func TestRunEnv(t *testing.T) {
	out := filepath.Join(t.TempDir(), "out")
	t.Setenv("OUT", out)
	t.Setenv("HOOK_TEST_INHERITED", "inherited")
	t.Setenv("MIGRATE_PID", "1") // the caller's env wins
	s := mustParse(t, Target,
		`pre-resume=echo "$MIGRATE_STAGE $MIGRATE_ROLE $MIGRATE_PID $MIGRATE_SESSION $HOOK_TEST_INHERITED" >"$OUT"; `+
			`test "$(cat)" = "" && echo stdin-empty >>"$OUT"`)
	env := map[string]string{"MIGRATE_PID": "4242", "MIGRATE_SESSION": "s 1", "MIGRATE_STAGE": "not this"}
	if err := s.Run(context.Background(), PreResume, env); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(out); string(b) != "pre-resume target 4242 s 1 inherited\nstdin-empty\n" {
		t.Errorf("hook saw %q", b)
	}
}

func TestRunFailure(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("DIR", dir)
	long := "echo " + strings.Repeat("x", 200) + " >/dev/null; "
	s := mustParse(t, Source,
		`abort=true`,
		`abort=`+long+`for i in 1 2 3 4 5 6 7; do echo line$i >&2; done; echo on-stdout; exit 3`,
		`abort=touch "$DIR/ran"`,
	)
	var logs bytes.Buffer
	s.SetLogger(slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	err := s.Run(context.Background(), Abort, nil)
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("Run: %v, want an *Error", err)
	}
	if e.Stage != Abort || e.ExitCode != 3 || e.Timeout != 0 || !strings.HasPrefix(e.Command, long) {
		t.Errorf("error %#v", e)
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Errorf("%v does not wrap the *exec.ExitError", err)
	}
	if e.Stderr != "line3\nline4\nline5\nline6\nline7" {
		t.Errorf("stderr tail %q", e.Stderr)
	}
	msg := err.Error()
	for _, want := range []string{"abort", "echo xxxx", "...", "exit status 3", "line7"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message %q lacks %q", msg, want)
		}
	}
	if strings.Contains(msg, "line2") || len(msg) > 400 {
		t.Errorf("message %q is not clipped", msg)
	}
	if _, err := os.Stat(filepath.Join(dir, "ran")); err == nil {
		t.Error("a hook ran after one failed")
	}
	for _, want := range []string{"stage=abort", "on-stdout", "line7", "duration="} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, logs.String())
		}
	}
}

// TestRunTimeout: a hook that outlives its time limit is killed with all
// the processes it started.
func TestRunTimeout(t *testing.T) {
	pids := filepath.Join(t.TempDir(), "pids")
	t.Setenv("PIDS", pids)
	s := mustParse(t, Source, `pre-freeze=sleep 30 & echo $! >>"$PIDS"; (sleep 30; true) & echo $! >>"$PIDS"; echo $$ >>"$PIDS"; wait`)
	s.Timeout = 300 * time.Millisecond
	start := time.Now()
	err := s.Run(context.Background(), PreFreeze, nil)
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Run took %v", d)
	}
	var e *Error
	if !errors.As(err, &e) || e.Timeout != s.Timeout || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Run: %v, want a timeout", err)
	}
	if !strings.Contains(err.Error(), "timed out after 300ms") {
		t.Errorf("message %q", err)
	}
	waitGone(t, pids, 3)
}

func TestRunCancel(t *testing.T) {
	pids := filepath.Join(t.TempDir(), "pids")
	t.Setenv("PIDS", pids)
	s := mustParse(t, Target, `abort=sleep 30 & echo $! >>"$PIDS"; echo $$ >>"$PIDS"; wait`)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	err := s.Run(ctx, Abort, nil)
	var e *Error
	if !errors.As(err, &e) || e.Timeout != 0 || !errors.Is(err, context.Canceled) {
		t.Fatalf("Run: %v, want canceled", err)
	}
	waitGone(t, pids, 2)
}

// TestRunLeftBehind: a hook that leaves a process holding its output
// succeeds without waiting for that process.
func TestRunLeftBehind(t *testing.T) {
	pids := filepath.Join(t.TempDir(), "pids")
	t.Setenv("PIDS", pids)
	s := mustParse(t, Target, `post-resume=sleep 30 & echo $! >"$PIDS"`)
	start := time.Now()
	if err := s.Run(context.Background(), PostResume, nil); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Run took %v", d)
	}
	for _, pid := range readPIDs(t, pids, 1) {
		unix.Kill(pid, unix.SIGKILL)
	}
}

func readPIDs(t *testing.T, path string, n int) []int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			t.Fatal(err)
		}
		pids = append(pids, pid)
	}
	if len(pids) != n {
		t.Fatalf("%d pids written, want %d: %q", len(pids), n, b)
	}
	return pids
}

// waitGone waits up to two seconds for the n processes listed in path to
// be gone (a zombie waiting for init to reap it counts as gone).
func waitGone(t *testing.T, path string, n int) {
	t.Helper()
	pids := readPIDs(t, path, n)
	defer func() {
		if t.Failed() {
			for _, pid := range pids {
				unix.Kill(pid, unix.SIGKILL)
			}
		}
	}()
	deadline := time.Now().Add(2 * time.Second)
	for _, pid := range pids {
		for {
			b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
			if err != nil {
				break
			}
			if i := bytes.LastIndexByte(b, ')'); i > 0 && len(b) > i+2 && (b[i+2] == 'Z' || b[i+2] == 'X') {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("process %d is still running: %s", pid, b)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// TestRunFuncs: built-in hooks run before the stage's commands, in order,
// see the session's environment, and a failing one stops the stage with
// an *Error naming it; a stage that never runs on the role is refused.
func TestRunFuncs(t *testing.T) {
	out := filepath.Join(t.TempDir(), "out")
	t.Setenv("OUT", out)
	s := mustParse(t, Target, `pre-resume=echo cmd >>"$OUT"`)
	var ran []string
	add := func(name string, err error) {
		t.Helper()
		if aerr := s.AddFunc(PreResume, name, func(ctx context.Context, env map[string]string) error {
			ran = append(ran, name+":"+env["MIGRATE_SESSION"]+":"+env["MIGRATE_STAGE"])
			return err
		}); aerr != nil {
			t.Fatal(aerr)
		}
	}
	add("first", nil)
	add("second", nil)
	if err := s.Run(context.Background(), PreResume, map[string]string{"MIGRATE_SESSION": "s1"}); err != nil {
		t.Fatal(err)
	}
	if want := []string{"first:s1:pre-resume", "second:s1:pre-resume"}; !slices.Equal(ran, want) {
		t.Errorf("ran %q, want %q", ran, want)
	}
	if b, _ := os.ReadFile(out); string(b) != "cmd\n" {
		t.Errorf("the command after the functions: %q", b)
	}
	boom := errors.New("boom")
	add("third", boom)
	ran = nil
	err := s.Run(context.Background(), PreResume, nil)
	var he *Error
	if !errors.As(err, &he) || he.Command != "third" || !errors.Is(err, boom) {
		t.Fatalf("failing function: %v", err)
	}
	if b, _ := os.ReadFile(out); string(b) != "cmd\n" {
		t.Errorf("the command ran after a failed function: %q", b)
	}
	if err := s.AddFunc(PostDump, "x", nil); err == nil {
		t.Error("a target function at post-dump was taken")
	}
	empty := mustParse(t, Source)
	if empty.Has(PostDump) {
		t.Error("Has with nothing")
	}
	empty.AddFunc(PostDump, "x", func(context.Context, map[string]string) error { return nil })
	if !empty.Has(PostDump) {
		t.Error("Has misses a function")
	}
}

// TestTimings: each hook that ran is timed, builtins and commands, failed
// ones marked, in the order they ended.
func TestTimings(t *testing.T) {
	s := mustParse(t, Source, `post-dump=true`, `post-dump=exit 4`, `post-dump=true`)
	if err := s.AddFunc(PostDump, "move address", func(context.Context, map[string]string) error { return nil }); err != nil {
		t.Fatal(err)
	}
	// A command that waits on a file this test writes: its time is at
	// least what the test waited, whatever the machine's load.
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	w := mustParse(t, Target, `pre-resume=read x <"`+fifo+`"`)
	done := make(chan error, 1)
	// Before the hook starts: the hook's time is within waited.
	start := time.Now()
	go func() { done <- w.Run(context.Background(), PreResume, nil) }()
	f, err := os.OpenFile(fifo, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // the hook's run time, not a wait for a condition
	f.WriteString("x\n")
	f.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	waited := time.Since(start)
	if got := w.Timings(); len(got) != 1 || got[0].Stage != PreResume || !got[0].OK || got[0].MS < 50 || got[0].MS > float64(waited.Microseconds())/1000 {
		t.Errorf("timings %+v, want one pre-resume hook of 50 to %v ms", got, float64(waited.Microseconds())/1000)
	}

	if err := s.Run(context.Background(), PostDump, nil); err == nil {
		t.Fatal("a failing hook did not fail the stage")
	}
	got := s.Timings()
	want := []struct {
		hook string
		ok   bool
	}{{"move address", true}, {"true", true}, {"exit 4", false}}
	if len(got) != len(want) {
		t.Fatalf("timings %+v, want %d", got, len(want))
	}
	for i, w := range want {
		if got[i].Hook != w.hook || got[i].OK != w.ok || got[i].Stage != PostDump || got[i].MS < 0 {
			t.Errorf("timing %d: %+v, want %s ok=%v", i, got[i], w.hook, w.ok)
		}
	}
	var nilSet *Set
	if nilSet.Timings() != nil {
		t.Error("a nil Set has timings")
	}
}
