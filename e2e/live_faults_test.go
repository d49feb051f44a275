package e2e

// Faults during a live migration (issue 5; DESIGN.md, "never two copies,
// never none"): the target killed, the connection cut or corrupted at
// chosen points of the handoff, a wrong secret, a PID taken on the target.
// After each, exactly one copy of the process runs, in the right state:
// the original, untraced and as it was (testutil.Snapshot), its memory
// intact; or the migrated one, the original dead. A copy left frozen for
// `migrate recover` counts as the one copy where the protocol says it must
// be (the outcome of a commit could not be learned).
//
// The source runs in the test process (source.Migrate); the faults are
// placed with three hooks: its Progress callback (the end of each round),
// its log (the handoff logs "handoff: freeze" before it freezes and
// "handoff: commit" once the target is ready, before the commit is sent),
// and a TCP proxy between the source and the service that counts, changes
// and cuts the bytes.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/internal/handoff"
	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/source"
	"github.com/procmig/migrate/transport"
)

// faultProxy forwards loopback TCP connections to a target address. A hook
// sees each chunk the source sends on the first connection (the
// migration's session; later ones ask about its outcome), and Cut closes
// every connection open at the time while new ones are still forwarded.
type faultProxy struct {
	ln net.Listener
	to string

	mu    sync.Mutex
	conns []net.Conn // both ends of every open connection
	n     int        // connections accepted
	// hook, if set, sees each chunk the source sends on the first
	// connection, with the number of bytes sent before it; it may change
	// the chunk. With cut it is forwarded, then every connection is cut.
	hook func(before int64, b []byte) (cut bool)
	// mute, once set, drops what the service sends on the first
	// connection.
	mute atomic.Bool
	wg   sync.WaitGroup
}

func startProxy(t *testing.T, to string) *faultProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &faultProxy{ln: ln, to: to}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		ln.Close()
		p.Cut()
		p.wg.Wait()
	})
	return p
}

func (p *faultProxy) Addr() string { return p.ln.Addr().String() }

// setHook sets the hook on the source's bytes of the first connection.
func (p *faultProxy) setHook(h func(before int64, b []byte) (cut bool)) {
	p.mu.Lock()
	p.hook = h
	p.mu.Unlock()
}

// Cut closes every connection open now, both ends.
func (p *faultProxy) Cut() {
	p.mu.Lock()
	conns := p.conns
	p.conns = nil
	p.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

func (p *faultProxy) accept() {
	defer p.wg.Done()
	for {
		a, err := p.ln.Accept()
		if err != nil {
			return
		}
		b, err := net.Dial("tcp", p.to)
		if err != nil {
			a.Close()
			continue
		}
		p.mu.Lock()
		first := p.n == 0
		p.n++
		p.conns = append(p.conns, a, b)
		p.mu.Unlock()
		p.wg.Add(2)
		go func() {
			defer p.wg.Done()
			p.forward(b, a, first)
			a.Close()
			b.Close()
		}()
		go func() {
			defer p.wg.Done()
			p.back(a, b, first)
			a.Close()
			b.Close()
		}()
	}
}

// forward copies what the source sends (from) to the service (to),
// through the hook on the first connection.
func (p *faultProxy) forward(to, from net.Conn, first bool) {
	buf := make([]byte, 64<<10)
	var sent int64
	for {
		n, err := from.Read(buf)
		if n > 0 {
			var cut bool
			if first {
				p.mu.Lock()
				h := p.hook
				p.mu.Unlock()
				if h != nil {
					cut = h(sent, buf[:n])
				}
			}
			sent += int64(n)
			if _, werr := to.Write(buf[:n]); werr != nil {
				return
			}
			if cut {
				p.Cut()
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// back copies what the service sends (from) to the source (to), or drops
// it on the first connection once muted.
func (p *faultProxy) back(to, from net.Conn, first bool) {
	buf := make([]byte, 64<<10)
	for {
		n, err := from.Read(buf)
		if n > 0 && !(first && p.mute.Load()) {
			if _, werr := to.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// gate stops a hook where a fault is to be placed until the test has done
// it: the hook calls reach (only its first call waits), the test waits
// for hit, acts, and calls open. A cleanup opens it in any case.
type gate struct {
	hit, release chan struct{}
	once, ronce  sync.Once
}

func newGate(t *testing.T) *gate {
	g := &gate{hit: make(chan struct{}), release: make(chan struct{})}
	t.Cleanup(g.open)
	return g
}

func (g *gate) reach() {
	g.once.Do(func() {
		close(g.hit)
		<-g.release
	})
}

func (g *gate) open() { g.ronce.Do(func() { close(g.release) }) }

// hookHandler calls hook with the message of each record the source logs,
// before passing it on: a hook that blocks holds the handoff there.
type hookHandler struct {
	slog.Handler
	hook func(msg string)
}

func (h hookHandler) Handle(ctx context.Context, r slog.Record) error {
	h.hook(r.Message)
	return h.Handler.Handle(ctx, r)
}

func (h hookHandler) WithAttrs(a []slog.Attr) slog.Handler {
	return hookHandler{h.Handler.WithAttrs(a), h.hook}
}

func (h hookHandler) WithGroup(name string) slog.Handler {
	return hookHandler{h.Handler.WithGroup(name), h.hook}
}

// hookLogger is testLogger with a hook on the messages.
func hookLogger(t *testing.T, hook func(msg string)) *slog.Logger {
	return slog.New(hookHandler{testLogger(t).Handler(), hook})
}

// dirtyWork is the workload of the fault tests: testdata/dirty, writing
// pages of a 128 MiB region at 100 MB/s, so that every round has pages to
// send, the final one many; verifyDirty has it check every page.
type dirtyWork struct {
	*testutil.Proc
	before *testutil.Snapshot
}

func startDirtyWork(t *testing.T) *dirtyWork {
	t.Helper()
	p := startDirty(t, 128, 100)
	return &dirtyWork{Proc: p, before: testutil.Take(t, p.PID)}
}

// faultPolicy: one pre-copy round, then the freeze: the final round
// carries the pages written meanwhile (tens of MB at 100 MB/s).
var faultPolicy = source.Policy{MaxRounds: 1, TargetDowntime: 50 * time.Millisecond, MinShrink: 0.2, Patience: 2}

// migration is a live migration running in the background.
type migration struct {
	done chan struct{}
	rep  *source.MigrateReport
	err  error
}

func startMigration(o source.MigrateOptions) *migration {
	m := &migration{done: make(chan struct{})}
	go func() {
		defer close(m.done)
		m.rep, m.err = source.Migrate(context.Background(), o)
	}()
	return m
}

// wait waits for the migration to end; it may take the source's whole
// search for an uncertain outcome. A service s that shows engine bug 1
// (reaperHangBug) after a minute makes the test skip.
func (m *migration) wait(t *testing.T, s *serveProc) {
	t.Helper()
	select {
	case <-m.done:
		return
	case <-time.After(time.Minute):
	}
	if step, ok := reaperHang(t, s); ok {
		m.stopHang(t, s, step)
	}
	select {
	case <-m.done:
	case <-time.After(3 * time.Minute):
		t.Fatal("the migration did not end within 4 minutes")
	}
}

// waitOrHang waits up to d for the migration to end, and then fails the
// test, or skips it if the service s shows engine bug 1.
func (m *migration) waitOrHang(t *testing.T, s *serveProc, d time.Duration) {
	t.Helper()
	select {
	case <-m.done:
		return
	case <-time.After(d):
	}
	if step, ok := reaperHang(t, s); ok {
		m.stopHang(t, s, step)
	}
	s.Kill(t)
	select {
	case <-m.done:
		t.Fatalf("the migration did not end within %v (it ended once the service was killed): %+v, %v", d, m.rep, m.err)
	case <-time.After(time.Minute):
		t.Fatalf("the migration did not end within %v, nor once the service was killed", d)
	}
}

// stopHang ends a migration stuck on engine bug 1 (killing the service
// ends the session, and the source rolls back) and skips the test.
func (m *migration) stopHang(t *testing.T, s *serveProc, step string) {
	t.Helper()
	s.Kill(t)
	select {
	case <-m.done:
	case <-time.After(time.Minute):
	}
	t.Skipf("%s (last restore step logged: %s)", reaperHangBug, step)
}

// waitGate waits until g is hit; it fails the test if the migration ends
// first (or skips it on engine bug 1, reaperHangBug).
func (m *migration) waitGate(t *testing.T, g *gate, s *serveProc, what string) {
	t.Helper()
	select {
	case <-g.hit:
	case <-m.done:
		t.Fatalf("the migration ended before %s: %+v, %v", what, m.rep, m.err)
	case <-time.After(long):
		if step, ok := reaperHang(t, s); ok {
			g.open()
			m.stopHang(t, s, step)
		}
		t.Fatalf("no %s within %v", what, long)
	}
}

// nsProcs returns the processes (PIDs as this namespace sees them) in the
// PID namespace of the service s, but the service itself; none once s is
// killed.
func nsProcs(t testing.TB, s *serveProc) []int {
	t.Helper()
	if s.killed {
		return nil
	}
	ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", s.PID))
	if err != nil {
		t.Fatalf("the service %d: %v", s.PID, err)
	}
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		var pid int
		if _, err := fmt.Sscan(e.Name(), &pid); err != nil || pid == s.PID {
			continue
		}
		if l, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", pid)); err == nil && l == ns {
			if st, err := testutil.State(pid); err == nil && st != 'Z' {
				out = append(out, pid)
			}
		}
	}
	return out
}

// checkNoCopyOnTarget checks that no process runs in the namespace of s:
// the target discarded what it had built.
func checkNoCopyOnTarget(t *testing.T, s *serveProc) {
	t.Helper()
	var left []int
	if !testutil.Poll(short, func() bool { left = nsProcs(t, s); return len(left) == 0 }) {
		skipOnReaperHang(t, s)
		for _, pid := range left {
			comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
			st, _ := testutil.State(pid)
			t.Errorf("process %d (%s, state %c) is left in the target's namespace: a second copy", pid, strings.TrimSpace(string(comm)), st)
		}
	}
}

// checkOriginalOnly checks that the original is the one copy: it runs,
// untraced, as it was before the migration (layout, fds, signal state),
// goes on working with its memory intact, and the target holds no copy.
func checkOriginalOnly(t *testing.T, w *dirtyWork, targets ...*serveProc) {
	t.Helper()
	checkRunningUntraced(t, w.PID)
	if d := w.before.Diff(testutil.Take(t, w.PID), 1, 2); d != "" {
		t.Errorf("the original changed across the failed migration:\n%s", d)
	}
	w.WaitTick(t, short, w.LastTick(t)+3)
	verifyDirty(t, w.Proc)
	for _, s := range targets {
		checkNoCopyOnTarget(t, s)
	}
}

// checkMigratedOnly checks that the migrated process is the one copy: the
// original was killed, and the process runs in the namespace of s with its
// memory intact.
func checkMigratedOnly(t *testing.T, w *dirtyWork, s *serveProc) {
	t.Helper()
	if ws := w.WaitExit(t, short); !ws.Signaled() || ws.Signal() != unix.SIGKILL {
		t.Errorf("the original ended with %v, want killed", ws)
	}
	r := migrated(findInNamespace(t, w.PID), w.Log)
	checkRunningUntraced(t, r.PID)
	if got := nsProcs(t, s); len(got) != 1 || got[0] != r.PID {
		t.Errorf("processes in the target's namespace: %v, want only the migrated one, %d", got, r.PID)
	}
	r.WaitTick(t, short, r.LastTick(t)+3)
	verifyDirty(t, r)
}

// checkHandoffError checks that err is a *handoff.SourceError of phase
// (any phase before the commit if phase is "") whose rollback worked.
func checkHandoffError(t *testing.T, err error, phase string) *handoff.SourceError {
	t.Helper()
	var he *handoff.SourceError
	if !errors.As(err, &he) {
		t.Fatalf("migration: %v (%T), want a *handoff.SourceError", err, err)
	}
	t.Logf("failed as it should: %v", err)
	if he.Rollback != nil {
		t.Errorf("resuming the original failed: %v", he.Rollback)
	}
	if phase != "" && he.Phase != phase {
		t.Errorf("failed in phase %q, want %q: %v", he.Phase, phase, err)
	}
	return he
}

// A fault's point in the migration, and what is done there.
const (
	atPreCopy  = "pre-copy"   // 8 MiB into the first round of pages
	atFinal    = "final"      // 1 MiB into the final round, the process frozen
	atReady    = "ready"      // the target said ready, the commit not yet sent
	atCommit   = "commit"     // the commit delivered, the answer lost
	atInCommit = "mid-commit" // the cut falls inside the commit's frame

	doKill = "kill-target" // kill the service (and its namespace)
	doCut  = "cut"         // close the connection
	doFlip = "corrupt"     // flip a byte of what the source sends
)

// TestLiveFaults places each fault at each point of a live migration of a
// process that keeps writing its memory, and checks that exactly one copy
// runs afterwards, in the right state:
//
//   - before the target is ready (pre-copy, final round): the migration
//     fails, the original runs on as it was, the target discards its copy;
//   - the target killed when ready, before the commit: the source cannot
//     learn the outcome (the restarted service does not know the session),
//     leaves the original frozen for `migrate recover` and says so; nothing
//     runs on the target;
//   - the connection cut when ready, before the commit: the source asks the
//     target on a new connection, learns the session was aborted, resumes
//     the original;
//   - the commit delivered, the target's answer lost and the connection
//     cut: the source asks, learns the process runs on the target, kills
//     the original;
//   - the connection cut while the commit is being sent: either the target
//     had a whole commit (resumed: the original is killed) or not
//     (aborted: the original runs on), depending on where the cut fell.
//
// A corrupted byte breaks the TLS record it falls in (the stream is
// encrypted even with --insecure): the session ends as with a cut
// connection.
//
// The target is not killed after the commit: here the service is PID 1 of
// the namespace the migrated process runs in, and its death kills that
// process too, which is not what the death of a target service does.
func TestLiveFaults(t *testing.T) {
	testutil.RequireRoot(t)
	for _, c := range []struct{ at, do string }{
		{atPreCopy, doKill}, {atPreCopy, doCut}, {atPreCopy, doFlip},
		{atFinal, doKill}, {atFinal, doCut}, {atFinal, doFlip},
		{atReady, doKill}, {atReady, doCut},
		{atCommit, doCut}, {atInCommit, doCut},
	} {
		t.Run(c.at+"/"+c.do, func(t *testing.T) { runLiveFault(t, c.at, c.do) })
	}
}

// cutAfterCommit makes px lose what the target answers from the commit
// on, and cut the connection 100 ms after the commit went: the next bytes
// the source sends carry the commit (a yamux frame: its header and its
// body come as two writes), the first of them starts the timer. It
// returns the logger for the source, which sees the commit.
func cutAfterCommit(t *testing.T, px *faultProxy) *slog.Logger {
	var armed atomic.Bool
	px.setHook(func(before int64, b []byte) bool {
		if armed.CompareAndSwap(true, false) {
			time.AfterFunc(100*time.Millisecond, px.Cut)
		}
		return false
	})
	return hookLogger(t, func(msg string) {
		if msg == "handoff: commit" {
			px.mute.Store(true)
			armed.Store(true)
		}
	})
}

func runLiveFault(t *testing.T, at, do string) {
	s := startServeWith(t, serveOptions{})
	px := startProxy(t, s.Addr)
	w := startDirtyWork(t)
	g := newGate(t)
	o := source.MigrateOptions{PID: w.PID, To: px.Addr(), Transport: transport.Config{Insecure: true}, Policy: faultPolicy}

	// Where the fault goes.
	var flipped atomic.Int64
	flipped.Store(-1)
	const preCopyAt, finalAfter = 8 << 20, 8 << 10 // the final round with its state is always larger than 8 KiB
	switch at {
	case atPreCopy:
		px.setHook(func(before int64, b []byte) bool {
			end := before + int64(len(b))
			if before < preCopyAt && end >= preCopyAt {
				if do == doFlip {
					b[preCopyAt-before-1] ^= 0x40
					flipped.Store(preCopyAt)
				} else {
					g.reach()
				}
			}
			return false
		})
		o.Logger = testLogger(t)
	case atFinal:
		// Armed when the handoff freezes: 1 MiB later the final round's
		// pages are on their way.
		var armed atomic.Int64
		armed.Store(-1)
		px.setHook(func(before int64, b []byte) bool {
			end := before + int64(len(b))
			a := armed.Load()
			if a < 0 {
				return false
			}
			if a > 0 && before < a && end >= a {
				if do == doFlip {
					b[a-before-1] ^= 0x40
					flipped.Store(a)
				} else {
					g.reach()
				}
			} else if a == 0 {
				armed.Store(end + finalAfter)
			}
			return false
		})
		o.Logger = hookLogger(t, func(msg string) {
			if msg == "handoff: freeze" {
				armed.CompareAndSwap(-1, 0)
			}
		})
	case atReady:
		o.Logger = hookLogger(t, func(msg string) {
			if msg == "handoff: commit" {
				g.reach()
			}
		})
	case atCommit:
		o.Logger = cutAfterCommit(t, px)
	case atInCommit:
		// The first write of the commit's frame (its yamux header) passes,
		// then the connection is cut.
		var armed atomic.Bool
		px.setHook(func(before int64, b []byte) bool { return armed.Load() })
		o.Logger = hookLogger(t, func(msg string) {
			if msg == "handoff: commit" {
				armed.Store(true)
			}
		})
	}
	m := startMigration(o)

	// The fault.
	var restarted *serveProc
	switch {
	case do == doFlip || at == atCommit || at == atInCommit:
	case do == doKill:
		m.waitGate(t, g, s, "the fault point "+at)
		s.Kill(t)
		g.open()
		if at == atReady {
			// The service comes back on its address a little later: the
			// source, asking what became of the session, reaches it after a
			// few refused connections and is told it does not know it.
			time.Sleep(1500 * time.Millisecond)
			restarted = startServeWith(t, serveOptions{Listen: s.Addr})
		}
	case do == doCut:
		m.waitGate(t, g, s, "the fault point "+at)
		px.Cut()
		g.open()
	}
	m.wait(t, s)
	if do == doFlip && flipped.Load() < 0 {
		t.Fatalf("no byte was flipped: the migration ended first (%+v, %v)", m.rep, m.err)
	}
	if m.rep != nil {
		t.Logf("report: outcome %s, %d rounds, %d bytes on the wire", m.rep.Outcome, len(m.rep.Rounds), m.rep.BytesWire)
	}

	// Exactly one copy, in the right state.
	switch {
	case at == atPreCopy || at == atFinal:
		checkHandoffError(t, m.err, at)
		checkOriginalOnly(t, w, s)
	case at == atReady && do == doCut:
		he := checkHandoffError(t, m.err, handoff.PhaseCommit)
		if !strings.Contains(he.Err.Error(), "aborted") {
			t.Errorf("the source resumed the original without the target's word that the session was aborted: %v", he.Err)
		}
		checkOriginalOnly(t, w, s)
	case at == atReady && do == doKill:
		var ue *handoff.UndecidedError
		if !errors.As(m.err, &ue) {
			t.Fatalf("migration: %v (%T), want a *handoff.UndecidedError: the commit may have been sent", m.err, m.err)
		}
		t.Logf("undecided as it should be: %v", m.err)
		if ue.Freeze != nil {
			t.Errorf("keeping the original frozen failed: %v", ue.Freeze)
		}
		// Left frozen (stopped), untraced, for the operator.
		testutil.WaitFor(t, short, "the original to be stopped", func() bool { st, _ := testutil.State(w.PID); return st == 'T' })
		if tr := testutil.StatusField(t, w.PID, "TracerPid"); tr != "0" {
			t.Errorf("the frozen original is still traced by %s", tr)
		}
		checkNoCopyOnTarget(t, restarted)
		// `migrate recover` asks the target, which does not know the
		// session: the original stays stopped.
		out, err := source.Recover(context.Background(), restarted.Addr, m.rep.Session, w.PID, transport.Config{Insecure: true}, testLogger(t))
		if err == nil || out != transport.OutcomeUnknown.String() {
			t.Errorf("recover: %q, %v; want unknown and an error", out, err)
		}
		if st, _ := testutil.State(w.PID); st != 'T' {
			t.Errorf("the original is in state %c after recover, want still stopped", st)
		}
		// The operator, who knows the target died, lets it run on, and
		// removes the record recover kept.
		if err := unix.Kill(w.PID, unix.SIGCONT); err != nil {
			t.Fatal(err)
		}
		source.RemoveRecord(w.PID, m.rep.Session)
		checkOriginalOnly(t, w, restarted)
	case at == atCommit:
		// The target had the commit and resumed; the source, which never
		// heard it, asked on a new connection and killed the original.
		if m.err != nil || m.rep.Outcome != "resumed" {
			t.Fatalf("migration: %+v, %v; want resumed, learnt by asking", m.rep, m.err)
		}
		checkMigratedOnly(t, w, s)
	case at == atInCommit:
		// Whether the target had a whole commit depends on where the cut
		// fell: either copy may be the one.
		switch {
		case m.err == nil && m.rep.Outcome == "resumed":
			t.Logf("the target had the commit: the migrated process is the one copy")
			checkMigratedOnly(t, w, s)
		default:
			he := checkHandoffError(t, m.err, handoff.PhaseCommit)
			t.Logf("the commit was lost: the original is the one copy (%v)", he)
			checkOriginalOnly(t, w, s)
		}
	}
}

// writeSecret writes a secret file (mode 0600) of 64 random hex digits.
func writeSecret(t *testing.T, name string) string {
	t.Helper()
	var b [32]byte
	if _, err := unix.Getrandom(b[:], 0); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(fmt.Sprintf("%x\n", b)), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestLiveWrongSecret: a source holding another secret than the service is
// refused before anything is sent: the original is never touched, the
// service runs on and holds nothing; with the right secret the same
// process then migrates.
func TestLiveWrongSecret(t *testing.T) {
	testutil.RequireRoot(t)
	right, wrong := writeSecret(t, "right"), writeSecret(t, "wrong")
	s := startServeWith(t, serveOptions{SecretFile: right})
	w := startDirtyWork(t)
	load := func(path string) transport.Config {
		b, err := transport.LoadSecret(path)
		if err != nil {
			t.Fatal(err)
		}
		return transport.Config{Secret: b}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := source.Migrate(ctx, source.MigrateOptions{PID: w.PID, To: s.Addr, Transport: load(wrong), Logger: testLogger(t)})
	if !errors.Is(err, transport.ErrAuth) {
		t.Fatalf("migration with the wrong secret: %v (%T), want an authentication error (transport.ErrAuth)", err, err)
	}
	t.Logf("refused as it should be: %v", err)
	var he *handoff.SourceError
	if errors.As(err, &he) {
		t.Errorf("the handoff began (%v): the refusal must come before it", he)
	}
	checkOriginalOnly(t, w, s)
	if b, _ := os.ReadFile(s.Log); strings.Contains(string(b), "handoff: incoming") {
		t.Errorf("the service took a session from a source with the wrong secret:\n%s", b)
	}

	// Without any authentication, refused too: the service wants a secret.
	_, err = source.Migrate(ctx, source.MigrateOptions{PID: w.PID, To: s.Addr, Transport: transport.Config{Insecure: true}, Logger: testLogger(t)})
	if err == nil {
		t.Fatal("an unauthenticated source migrated to a service that wants a secret")
	}
	t.Logf("refused as it should be: %v", err)
	checkOriginalOnly(t, w, s)

	// The right secret.
	r, _ := migrateLive(t, w.Proc, s, source.MigrateOptions{Transport: load(right)})
	r.WaitTick(t, short, r.LastTick(t)+3)
	verifyDirty(t, r)
}

// TestLivePIDTaken: the process's PID is taken in the service's namespace
// (by a sleep placed there with ns_last_pid): the service refuses the
// session before the source freezes anything, and leaves the sleep alone;
// the original runs on as it was.
func TestLivePIDTaken(t *testing.T) {
	testutil.RequireRoot(t)
	if _, err := exec.LookPath("nsenter"); err != nil {
		testutil.Unavailable(t, "nsenter (util-linux) is needed to take a PID in the service's namespace: %v", err)
	}
	s := startServeWith(t, serveOptions{})
	w := startDirtyWork(t)

	// A sleep with the original's PID, in the service's namespace: the
	// namespace is quiet, so the next PID given there is ns_last_pid+1.
	script := fmt.Sprintf("echo %d > /proc/sys/kernel/ns_last_pid; sleep 600 & wait", w.PID-1)
	cmd := exec.Command("nsenter", "--target", fmt.Sprint(s.PID), "--pid", "--mount", "sh", "-c", script)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.Kill(t) // the namespace's end ends sh and sleep, and so nsenter
		cmd.Wait()
	})
	var squatter int
	testutil.WaitFor(t, short, "the sleep in the service's namespace", func() bool {
		for _, pid := range nsProcs(t, s) {
			if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); strings.TrimSpace(string(comm)) == "sleep" {
				squatter = pid
				return true
			}
		}
		return false
	})
	if inner := nsPID(t, squatter); inner != w.PID {
		t.Skipf("could not place a process on PID %d in the service's namespace (the sleep got %d there)", w.PID, inner)
	}

	_, err := source.Migrate(context.Background(), source.MigrateOptions{PID: w.PID, To: s.Addr,
		Transport: transport.Config{Insecure: true}, Policy: faultPolicy, Logger: testLogger(t)})
	he := checkHandoffError(t, err, handoff.PhaseHello)
	var pe *handoff.PeerError
	if !errors.As(err, &pe) || !pe.Abort {
		t.Errorf("migration error %v does not carry the target's refusal", err)
	}
	if !strings.Contains(err.Error(), fmt.Sprint(w.PID)) {
		t.Errorf("the refusal does not name the PID %d: %v", w.PID, he)
	}
	checkRunningUntraced(t, w.PID)
	if d := w.before.Diff(testutil.Take(t, w.PID), 1, 2); d != "" {
		t.Errorf("the original changed across the refused migration:\n%s", d)
	}
	w.WaitTick(t, short, w.LastTick(t)+3)
	verifyDirty(t, w.Proc)
	// The process on the PID is untouched, and nothing else is there.
	testutil.RequireRunning(t, squatter)
	if got := nsProcs(t, s); len(got) != 2 { // sh and its sleep
		t.Errorf("processes in the service's namespace after the refusal: %v, want sh and its sleep", got)
	}
}

// nsPID returns the PID that pid (as this namespace sees it) has in its
// own PID namespace.
func nsPID(t testing.TB, pid int) int {
	t.Helper()
	v := testutil.StatusField(t, pid, "NSpid")
	f := strings.Fields(v)
	var n int
	if _, err := fmt.Sscan(f[len(f)-1], &n); err != nil {
		t.Fatalf("NSpid of %d: %q", pid, v)
	}
	return n
}
