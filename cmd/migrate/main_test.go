package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/procmig/migrate"
	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/kernel"
	"github.com/procmig/migrate/transport"
)

// fakeOps returns library entry points that fail the test if called.
func fakeOps(t *testing.T) ops {
	return ops{
		dump: func(context.Context, int, string, migrate.DumpOptions) (*migrate.DumpReport, error) {
			t.Error("dump called")
			return nil, errors.New("unexpected")
		},
		restore: func(context.Context, string, migrate.RestoreOptions) (*migrate.RestoreReport, error) {
			t.Error("restore called")
			return nil, errors.New("unexpected")
		},
		check: func(context.Context, kernel.CheckOptions) []kernel.Feature {
			t.Error("check called")
			return nil
		},
	}
}

type result struct {
	code           int
	stdout, stderr string
}

func runWith(o ops, args ...string) result {
	var out, errb bytes.Buffer
	e := newEnv(&out, &errb)
	e.ops = o
	code := run(context.Background(), args, e)
	return result{code, out.String(), errb.String()}
}

func TestUsageErrors(t *testing.T) {
	dir := t.TempDir()
	for _, args := range [][]string{
		{},
		{"frob"},
		{"--frob"},
		{"--log-level", "loud", "check"},
		{"dump"},
		{"dump", "--dir", dir},
		{"dump", "--dir", dir, "abc"},
		{"dump", "--dir", dir, "0"},
		{"dump", "--dir", dir, "-5"},
		{"dump", "--dir", dir, "1", "2"},
		{"dump", "123"},
		{"dump", "--dir", dir, "--codec", "lz4", "1"},
		{"dump", "--dir", dir, "--freeze", "sigstop", "1"},
		{"--to", "127.0.0.1:1", "--insecure", "--freeze", "both", "1"},
		{"dump", "--bogus", "1"},
		{"restore"},
		{"restore", "--dir", dir, "extra"},
		{"restore", "--dir", dir, "--cgroup-limits", "ignore"},
		{"--to", "127.0.0.1:1", "--insecure", "--mode", "later", "1"},
		{"--to", "127.0.0.1:1", "--insecure", "--mode", "auto", "--post-copy", "1"},
		{"show"},
		{"check", "extra"},
		{"help", "frob"},
		{"version", "x"},
	} {
		r := runWith(fakeOps(t), args...)
		if r.code != exitUsage {
			t.Errorf("migrate %q: exit %d, want %d (stderr %q)", args, r.code, exitUsage, r.stderr)
			continue
		}
		if r.stdout != "" {
			t.Errorf("migrate %q: wrote to stdout: %q", args, r.stdout)
		}
		if len(args) > 0 && !strings.HasPrefix(r.stderr, "migrate: ") {
			t.Errorf("migrate %q: stderr %q does not start with \"migrate: \"", args, r.stderr)
		}
		if len(args) > 0 && !strings.Contains(r.stderr, "Run 'migrate help") {
			t.Errorf("migrate %q: stderr %q does not point to help", args, r.stderr)
		}
	}
}

func TestHelp(t *testing.T) {
	main := runWith(fakeOps(t), "--help")
	if main.code != 0 || main.stderr != "" {
		t.Fatalf("--help: exit %d, stderr %q", main.code, main.stderr)
	}
	for _, want := range []string{"Usage: migrate", "--to HOST:PORT", "serve", "dump", "restore", "show", "check", "version", "Exit status", "--log-level LEVEL", "-v, --verbose"} {
		if !strings.Contains(main.stdout, want) {
			t.Errorf("--help lacks %q", want)
		}
	}
	// Commands that do not exist yet are not advertised.
	for _, no := range []string{"[=true|false]"} {
		if strings.Contains(main.stdout, no) {
			t.Errorf("--help mentions %q", no)
		}
	}
	if r := runWith(fakeOps(t), "help"); r.stdout != main.stdout || r.code != 0 {
		t.Errorf("'help' differs from '--help'")
	}
	if r := runWith(fakeOps(t)); r.code != exitUsage || r.stderr != main.stdout {
		t.Errorf("no arguments: exit %d, want usage on stderr", r.code)
	}

	for _, c := range commands {
		h := runWith(fakeOps(t), "help", c.name)
		if h.code != 0 || !strings.HasPrefix(h.stdout, "Usage: migrate "+c.name) || !strings.Contains(h.stdout, "Flags:") {
			t.Errorf("help %s: exit %d, output %q", c.name, h.code, h.stdout)
		}
		if strings.Contains(h.stdout, "[=true|false]") {
			t.Errorf("help %s: pflag's bool suffix in %q", c.name, h.stdout)
		}
		for _, form := range [][]string{{c.name, "--help"}, {c.name, "-h"}} {
			if r := runWith(fakeOps(t), form...); r.code != 0 || r.stdout != h.stdout {
				t.Errorf("%q: exit %d, output differs from 'help %s'", form, r.code, c.name)
			}
		}
	}
	to := runWith(fakeOps(t), "help", "to").stdout
	for _, want := range []string{"--post-copy", "--mode", "THE PROCESS IS LOST", "THE RISK"} {
		if !strings.Contains(to, want) {
			t.Errorf("help to lacks %q", want)
		}
	}
	dump := runWith(fakeOps(t), "help", "dump").stdout
	for _, want := range []string{"--dir DIR", "--leave-running", "--codec CODEC", "--json", "--force", `(default "warn")`, "Examples:"} {
		if !strings.Contains(dump, want) {
			t.Errorf("help dump lacks %q", want)
		}
	}
}

func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}} {
		r := runWith(fakeOps(t), args...)
		if r.code != 0 || !strings.HasPrefix(r.stdout, "migrate ") {
			t.Errorf("%q: exit %d, %q", args, r.code, r.stdout)
		}
	}
}

func TestLogLevel(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{nil, "WARN"},
		{[]string{"-v"}, "INFO"},
		{[]string{"-vv"}, "DEBUG"},
		{[]string{"-v", "--log-level", "error"}, "ERROR"},
	} {
		var out, errb bytes.Buffer
		e := newEnv(&out, &errb)
		o := fakeOps(t)
		o.restore = func(context.Context, string, migrate.RestoreOptions) (*migrate.RestoreReport, error) {
			return &migrate.RestoreReport{PID: 1}, nil
		}
		e.ops = o
		args := append([]string{"restore", "--dir", "x"}, c.args...)
		if code := run(context.Background(), args, e); code != 0 {
			t.Fatalf("%q: exit %d", args, code)
		}
		if got := e.level.Level().String(); got != c.want {
			t.Errorf("%q: level %s, want %s", args, got, c.want)
		}
	}
}

func sampleReport() *migrate.DumpReport {
	return &migrate.DumpReport{
		PID: 1234, Comm: "redis-server", Threads: 1, VMAs: 23, FDs: 8,
		Pages: 262144, BytesRaw: 1 << 30, BytesImage: 412 << 20, Codec: "zstd",
		Frozen: 380 * time.Millisecond, Total: 380 * time.Millisecond, FrozenMS: 380, TotalMS: 380,
	}
}

func TestDump(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "img")
	var got migrate.DumpOptions
	var gotPID int
	var gotDir string
	o := fakeOps(t)
	o.dump = func(_ context.Context, pid int, dir string, opts migrate.DumpOptions) (*migrate.DumpReport, error) {
		got, gotPID, gotDir = opts, pid, dir
		r := sampleReport()
		r.Dir = dir
		return r, nil
	}
	r := runWith(o, "dump", "--dir", dir, "--codec", "s2", "--leave-running", "1234")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	if gotPID != 1234 || gotDir != dir || got.Codec != "s2" || !got.LeaveRunning || got.ProcessOnly || got.Force || got.Logger == nil || got.Freeze != "auto" {
		t.Errorf("options %+v", got)
	}
	if r := runWith(o, "dump", "--dir", dir, "--freeze", "cgroup", "1234"); r.code != 0 || got.Freeze != "cgroup" {
		t.Errorf("--freeze cgroup: exit %d, options %+v", r.code, got)
	}
	want := "dumped pid 1234 (redis-server): 1 thread, 23 vmas, 8 fds, 262144 pages (1.0 GiB raw, 412 MiB zstd image) in 380 ms (frozen 380 ms) -> " + dir + "; process killed\n"
	if r.stdout != want {
		t.Errorf("summary\n got %q\nwant %q", r.stdout, want)
	}

	r = runWith(o, "dump", "--dir", filepath.Join(t.TempDir(), "j"), "--json", "1234")
	var rep migrate.DumpReport
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil || rep.PID != 1234 || rep.TotalMS != 380 {
		t.Errorf("--json: %v, %+v", err, rep)
	}
}

func TestRestore(t *testing.T) {
	o := fakeOps(t)
	o.restore = func(_ context.Context, dir string, opts migrate.RestoreOptions) (*migrate.RestoreReport, error) {
		if dir != "img" || opts.Logger == nil {
			t.Errorf("options %q %+v", dir, opts)
		}
		return &migrate.RestoreReport{PID: 4321, Comm: "sleep", Pages: 12, TotalMS: 20, Warnings: []string{"RLIMIT_NOFILE hard limit lowered"}}, nil
	}
	r := runWith(o, "restore", "--dir", "img")
	if r.code != 0 || r.stdout != "4321\n" {
		t.Errorf("exit %d, stdout %q", r.code, r.stdout)
	}
	if !strings.Contains(r.stderr, "warning: RLIMIT_NOFILE") || !strings.Contains(r.stderr, "restored pid 4321 (sleep)") {
		t.Errorf("stderr %q", r.stderr)
	}
	r = runWith(o, "restore", "--dir", "img", "--json")
	var rep migrate.RestoreReport
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil || rep.PID != 4321 || len(rep.Warnings) != 1 {
		t.Errorf("--json: %v %+v", err, rep)
	}

	o.restore = func(context.Context, string, migrate.RestoreOptions) (*migrate.RestoreReport, error) {
		return nil, errors.New("pid 4321 is taken by process 99 (bash)")
	}
	r = runWith(o, "restore", "--dir", "img")
	if r.code != exitFailure || r.stdout != "" || r.stderr != "migrate: restore: pid 4321 is taken by process 99 (bash)\n" {
		t.Errorf("failure: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	var got migrate.RestoreOptions
	o.restore = func(_ context.Context, _ string, opts migrate.RestoreOptions) (*migrate.RestoreReport, error) {
		got = opts
		return &migrate.RestoreReport{PID: 4321}, nil
	}
	if r := runWith(o, "restore", "--dir", "img", "--cgroup-limits=apply", "--cgroup-root", "/svc"); r.code != 0 || !got.ApplyCgroupLimits || got.CgroupRoot != "/svc" {
		t.Errorf("--cgroup-limits=apply --cgroup-root /svc: exit %d, options %+v", r.code, got)
	}
	if r := runWith(o, "restore", "--dir", "img", "--net-attach", "br7"); r.code != 0 || got.NetAttach != "br7" {
		t.Errorf("--net-attach br7: exit %d, options %+v", r.code, got)
	}
	if r := runWith(o, "restore", "--dir", "img"); r.code != 0 || got.ApplyCgroupLimits || got.CgroupRoot != "" || got.NetAttach != "" {
		t.Errorf("default: exit %d, options %+v: want the limits checked, the image's paths", r.code, got)
	}
}

func sampleImage() *core.Image {
	exe := core.FileRef{Path: "/usr/bin/sleep", Size: 43888, Mode: 0o755}
	sig := make([]core.Sigaction, 64)
	sig[1] = core.Sigaction{Handler: 0x401000, Flags: 0x14000004, Restorer: 0x7f0000001000, Mask: 1 << 9}
	sig[12] = core.Sigaction{Handler: 1}
	return &core.Image{
		Kind: core.ImageKind, Version: core.ImageVersion,
		Created: time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC), Host: "vm", Kernel: "6.18.44", Arch: "amd64",
		Pages: core.PagesInfo{File: core.PagesFile, Size: 5000, Pages: 3, Codec: "zstd"},
		Blobs: map[string]core.Blob{
			"files/3":        {Size: 10, SHA256: strings.Repeat("a", 64)},
			"files/pipe-777": {Size: 0, SHA256: strings.Repeat("b", 64)},
		},
		Process: core.Process{
			PID: 4321, PPID: 1, PGID: 4321, SID: 4321, Comm: "sleep", Exe: exe,
			Cmdline: []string{"sleep", "100"}, Cwd: "/root", Root: "/", Umask: 0o22,
			Creds:   core.Creds{Groups: []uint32{0}, CapEff: 0x1ff},
			Attrs:   &core.ProcAttrs{OOMScoreAdj: -17, THPDisable: core.THPDisableExceptAdvised, ChildSubreaper: true, Membarrier: 1 << 4, MDWE: 1},
			Rlimits: []core.Rlimit{{Resource: 7, Cur: 1024, Max: 4096}, {Resource: 4, Cur: 1 << 20, Max: ^uint64(0)}},
			VMAs: []core.VMA{
				{Start: 0x400000, End: 0x402000, Prot: 5, Flags: 2, Kind: core.VMAFile, File: &exe, Pages: 0},
				{Start: 0x600000, End: 0x603000, Prot: 3, Flags: 2, Kind: core.VMAAnon, Name: "[heap]", Pages: 2},
				{Start: 0x7ffd0000, End: 0x7ffd1000, Prot: 3, Flags: 2, Kind: core.VMAAnon, Name: "[stack]", Pages: 1},
			},
			Threads: []core.Thread{{TID: 4321, Comm: "sleep", Regs: core.Regs{RIP: 0x401234, RSP: 0x7ffd0ff0, CS: 0x33, SS: 0x2b}, SigMask: 1 << 9, Restart: "restart",
				Sched:   &core.Sched{Policy: core.SchedRR, Priority: 7, ResetOnFork: true, Nice: -3, Affinity: []uint64{0b1101}, PdeathSignal: 15, IOPrio: 2<<13 | 4},
				Seccomp: &core.Seccomp{Mode: core.SeccompModeFilter, Filter: 1}}},
			SeccompFilters: []core.SeccompFilter{
				{Prev: -1, Prog: []byte{6, 0, 0, 0, 0, 0, 0xff, 0x7f}},
				{Prev: 0, Log: true, Prog: []byte{6, 0, 0, 0, 0, 0, 0xff, 0x7f, 6, 0, 0, 0, 0, 0, 0xff, 0x7f}},
			},
			Sigactions: sig,
			FDs: []core.FD{
				{FD: 0, Kind: core.FDChar, Flags: 2, File: &core.FileRef{Path: "/dev/null"}},
				{FD: 3, Kind: core.FDFile, Flags: 0o2000 | 1, Cloexec: true, Pos: 4096,
					File: &core.FileRef{Path: "/tmp/log (deleted)", Deleted: true, Blob: "files/3"}},
				{FD: 4, Kind: core.FDPipe, Pipe: 777, Data: "files/pipe-777"},
			},
		},
	}
}

func TestShow(t *testing.T) {
	dir := t.TempDir()
	img := sampleImage()
	if err := core.WriteImage(dir, img); err != nil {
		t.Fatal(err)
	}
	r := runWith(fakeOps(t), "show", "--dir", dir)
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	for _, want := range []string{
		"4321 (ppid 1, pgid 4321",
		"/usr/bin/sleep",
		"sleep 100",
		"r-xp", "[heap]", "[stack]",
		"SIGINT", "SIGUSR1", "SIGPIPE", "SIG_IGN", "SIGINFO|RESTORER|RESTART",
		"/tmp/log (deleted) (deleted, contents in files/3)", "O_WRONLY|O_APPEND  ", "pipe:[777]",
		"RLIMIT_NOFILE", // 1024/4096 is the default: not shown
		"RLIMIT_CORE",
		"restart",
		"zstd",
		"oom_score_adj", "-17", "disabled except where advised", "child subreaper", "PRIVATE_EXPEDITED", "refuse exec gain",
		"RR|RESET_ON_FORK  7     -3    default  0,2-3  0 ns         SIGTERM    be/4",
		"4321  filters #0 (1 instructions), #1 (2 instructions, logged)",
	} {
		if want == "RLIMIT_NOFILE" {
			if strings.Contains(r.stdout, want) {
				t.Errorf("show prints the default RLIMIT_NOFILE")
			}
			continue
		}
		if !strings.Contains(r.stdout, want) {
			t.Errorf("show lacks %q", want)
		}
	}
	if t.Failed() {
		t.Log(r.stdout)
	}

	r = runWith(fakeOps(t), "show", "--dir", dir, "--json")
	back, err := core.DecodeImage(strings.NewReader(r.stdout))
	if err != nil || back.Process.PID != 4321 {
		t.Errorf("--json does not decode as an image: %v", err)
	}

	r = runWith(fakeOps(t), "show", "--dir", t.TempDir())
	if r.code != exitFailure || !strings.Contains(r.stderr, core.MetaFile) {
		t.Errorf("missing image: exit %d, %q", r.code, r.stderr)
	}
}

func TestCheckOutput(t *testing.T) {
	o := fakeOps(t)
	feats := []kernel.Feature{
		{Name: "a", OK: true, Detail: "works"},
		{Name: "b", Detail: "missing", Err: &kernel.UnsupportedFeatureError{Name: "b", Reason: "missing"}},
	}
	o.check = func(context.Context, kernel.CheckOptions) []kernel.Feature { return feats }
	r := runWith(o, "check")
	if r.code != 0 || !strings.Contains(r.stdout, "MECHANISM") || !strings.Contains(r.stdout, "b          no     missing") {
		t.Errorf("exit %d, table %q", r.code, r.stdout)
	}
	feats = append(feats, kernel.Feature{Name: "c", Detail: "probe failed: x", Err: errors.New("x")})
	r = runWith(o, "check", "--json")
	var decoded []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &decoded); err != nil || len(decoded) != 3 || decoded[2]["status"] != "unknown" {
		t.Errorf("--json: %v %v", err, decoded)
	}
	if r.code != exitFailure || !strings.Contains(r.stderr, "c: x") {
		t.Errorf("a failed probe: exit %d, %q", r.code, r.stderr)
	}
}

// TestCheckReal runs the real probes through the command (their helper
// children are this test binary, re-executed).
func TestCheckReal(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	o := realOps()
	r := runWith(o, "check", "--json")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	var feats []struct {
		Name   string `json:"name"`
		Status string `json:"status"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &feats); err != nil || len(feats) != 13 {
		t.Fatalf("%v, %d features", err, len(feats))
	}
	for _, f := range feats {
		if f.Status != "yes" && f.Status != "no" {
			t.Errorf("%s: status %q", f.Name, f.Status)
		}
	}
}

// TestManPage checks migrate(1) against the commands: every command has
// its section with each of its flags, and groff finds nothing to warn
// about.
func TestManPage(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"help", "--man"}, newEnv(&out, &errb)); code != exitOK {
		t.Fatalf("help --man: exit %d: %s", code, errb.String())
	}
	man := out.String()
	for _, c := range commands {
		if !strings.Contains(man, `.SS "migrate `+c.name+" ") {
			t.Errorf("no section for %s", c.name)
		}
		fs := pflag.NewFlagSet(c.name, pflag.ContinueOnError)
		c.setup(fs)
		fs.VisitAll(func(f *pflag.Flag) {
			if !f.Hidden && !strings.Contains(man, `\fB\-\-`+strings.ReplaceAll(f.Name, "-", `\-`)+`\fR`) {
				t.Errorf("%s: flag --%s is not in the manual", c.name, f.Name)
			}
		})
	}
	for _, want := range []string{".TH MIGRATE 1", ".SH GLOBAL OPTIONS", `\fB\-\-log\-level\fR`, ".SH EXIT STATUS"} {
		if !strings.Contains(man, want) {
			t.Errorf("the manual lacks %q", want)
		}
	}
	groff, err := exec.LookPath("groff")
	if err != nil {
		t.Skipf("groff is not installed (apt-get install groff-base): the manual is not checked for roff warnings")
	}
	cmd := exec.Command(groff, "-man", "-ww", "-z")
	cmd.Stdin = strings.NewReader(man)
	if msg, err := cmd.CombinedOutput(); err != nil || len(msg) > 0 {
		t.Errorf("groff: %v\n%s", err, msg)
	}
}

// TestGenSecret: serve --gen-secret writes a secret that --secret-file
// takes, and never overwrites one.
func TestGenSecret(t *testing.T) {
	path := filepath.Join(t.TempDir(), "secret")
	if r := runWith(fakeOps(t), "serve", "--gen-secret", path); r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	if _, err := transport.LoadSecret(path); err != nil {
		t.Fatal(err)
	}
	if r := runWith(fakeOps(t), "serve", "--gen-secret", path); r.code == 0 {
		t.Fatalf("an existing secret file was overwritten")
	}
}

// --to --json says what failed, and a refusal's kind, in the JSON: a
// refusal with the report so far, a failure before any report.
func TestMigrateJSONFailure(t *testing.T) {
	refused := &migrate.RefusedError{Kind: migrate.RefusedCPU, Err: errors.New("no AVX-512 here")}
	for _, tc := range []struct {
		rep     *migrate.Report
		err     error
		refused string
	}{
		{&migrate.Report{PID: 7, Outcome: "aborted"}, fmt.Errorf("migrate: %w", refused), "cpu"},
		{nil, errors.New("connection refused"), ""},
	} {
		b, err := json.Marshal(migrateJSON(tc.rep, tc.err))
		if err != nil {
			t.Fatal(err)
		}
		var got struct {
			PID     int    `json:"pid"`
			Error   string `json:"error"`
			Refused string `json:"refused"`
		}
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatal(err)
		}
		if got.Refused != tc.refused || got.Error != tc.err.Error() || (tc.rep != nil && got.PID != tc.rep.PID) {
			t.Errorf("%v: --json gave %s", tc.err, b)
		}
	}
	if b, _ := json.Marshal(migrateJSON(&migrate.Report{PID: 7}, nil)); strings.Contains(string(b), `"error"`) {
		t.Errorf("a migration that worked: --json gave %s", b)
	}
}

// TestShowNet: show lists a container's network namespace: its
// interfaces, their addresses, the other end of a veth, the routes.
func TestShowNet(t *testing.T) {
	dir := t.TempDir()
	img := sampleImage()
	img.Namespaces = &core.Namespaces{PID: &core.PIDNamespace{IDs: []core.NSID{{Outer: 4321, Inner: 1}}},
		Net: &core.NetNamespace{
			Links: []core.NetLink{{Name: "lo", Kind: core.LinkLoopback, MTU: 65536, Up: true},
				{Name: "eth0", Kind: core.LinkVeth, MAC: "02:00:0a:00:00:02", MTU: 1400, Up: true, Peer: "veth7", Addrs: []core.NetAddr{{Prefix: "10.9.0.2/24"}}}},
			Routes: []core.NetRoute{{Dst: "0.0.0.0/0", Gateway: "10.9.0.1", Dev: "eth0", Protocol: 3, Type: 1}},
		}}
	if err := core.WriteImage(dir, img); err != nil {
		t.Fatal(err)
	}
	r := runWith(fakeOps(t), "show", "--dir", dir)
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	for _, want := range []string{"2 interfaces, 1 routes", "eth0 veth, mtu 1400, up, 02:00:0a:00:00:02, other end veth7: 10.9.0.2/24", "route 0.0.0.0/0 via 10.9.0.1 dev eth0"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("show lacks %q:\n%s", want, r.stdout)
		}
	}
}
