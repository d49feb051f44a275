package target

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/internal/osthread"
)

// The restored processes keep their CLOCK_MONOTONIC and CLOCK_BOOTTIME:
// they read what they would have read on the source had they run on
// (the readings of the image plus the real time that passed), not the
// restoring host's clocks, which have nothing to do with the source's.
// For that the restore makes them a time namespace whose offsets make up
// the difference (time_namespaces(7)): unshare(CLONE_NEWTIME) on a
// thread of migrate's own, the offsets written before any process
// enters it, then the husk started from that thread; the processes,
// forked from the husk, live in it. Where the difference is nothing (a
// restore on the host and boot of the dump, outside any time namespace
// of the process's own) they stay in the restorer's namespace, and a
// restore changes nothing.

// clockTolerance is how far the offsets computed for a restore on another
// host (or boot) may be from the restorer's own and still leave the
// processes in the restorer's time namespace, and how far Check lets the
// offsets set be from those its own readings want. The offsets come
// from the two hosts' CLOCK_REALTIME, which NTP keeps within about a
// millisecond of each other on a network (worse without it): a
// difference below that is noise the readings cannot resolve, so that
// skipping a namespace for it loses nothing. The readings themselves
// agree within tens of microseconds (proc.ReadClocks).
const clockTolerance = time.Millisecond

// hostClocks are the restoring host's clocks.
type hostClocks struct {
	BootID string
	Now    proc.ClockReading // as the restorer's time namespace has them
	Self   core.TimeOffsets  // the offsets of the restorer's own namespace
}

// readHostClocks reads this host's clocks.
func readHostClocks() (hostClocks, error) {
	var h hostClocks
	id, err := proc.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return h, fmt.Errorf("boot id: %w", err)
	}
	h.BootID = strings.TrimSpace(string(id))
	self, err := proc.ReadTimeOffsets(0)
	if err != nil {
		return h, err
	}
	h.Self = core.TimeOffsets{Monotonic: self.Monotonic, Boottime: self.Boottime}
	h.Now, err = proc.ReadClocks()
	return h, err
}

// timePlan is the time namespace of the restored processes.
type timePlan struct {
	// Want are the offsets (from the host's clocks) that keep the
	// processes' clocks going on from the image's readings.
	Want core.TimeOffsets
	// New is set when the processes need a namespace of their own: Want
	// differs from the restorer's offsets (by more than clockTolerance
	// from another boot).
	New bool
	// SameBoot: the image was dumped on this boot of this host, whose
	// clocks are the image's: Want is exact.
	SameBoot bool
}

// planClocks computes the offsets for processes whose clocks were src,
// restored on a host whose clocks are here: for each clock,
//
//	offset = (source clock + (realtime now - source realtime)) - host clock
//
// plus the offsets of the processes' namespace on the source; the real
// time passed is taken as 0 if the hosts' realtime clocks disagree so
// much that it comes out negative (a monotonic clock never goes back).
// On the dump's own boot the host clocks are the source's, and the
// offsets are the source's exactly.
func planClocks(src *core.Clocks, here hostClocks) (timePlan, error) {
	p := timePlan{SameBoot: src.BootID != "" && src.BootID == here.BootID}
	if p.SameBoot {
		p.Want = src.Offsets
		p.New = p.Want != here.Self
		return p, nil
	}
	elapsed := max(0, here.Now.Realtime-src.Realtime) // both within ±MaxClockNS
	var err error
	if p.Want.Monotonic, err = clockOffset("monotonic", src.Monotonic, src.Offsets.Monotonic, elapsed, here.Now.Monotonic-here.Self.Monotonic); err != nil {
		return p, err
	}
	if p.Want.Boottime, err = clockOffset("boottime", src.Boottime, src.Offsets.Boottime, elapsed, here.Now.Boottime-here.Self.Boottime); err != nil {
		return p, err
	}
	p.New = absDiff(p.Want.Monotonic, here.Self.Monotonic) > int64(clockTolerance) ||
		absDiff(p.Want.Boottime, here.Self.Boottime) > int64(clockTolerance)
	return p, nil
}

// clockOffset is the offset from the host clock host that makes a clock
// read srcHost+srcOffset at the source read elapsed ns later. Values
// come from a validated image (core.Clocks.Validate: within ±MaxClockNS)
// and this host.
func clockOffset(name string, srcHost, srcOffset, elapsed, host int64) (int64, error) {
	want := srcHost + srcOffset // within [0, MaxClockNS]
	if elapsed > core.MaxClockNS-want {
		return 0, &TimeNamespaceError{Reason: fmt.Sprintf("the image's %s clock (%d ns) and the time passed since (%d ns) are out of the kernel's range", name, want, elapsed)}
	}
	return want + elapsed - host, nil
}

func absDiff(a, b int64) int64 {
	if a > b {
		return a - b
	}
	return b - a
}

// TimeNamespaceError says the restore cannot give the processes their
// clocks: the kernel has no time namespaces, or would not make one with
// the offsets needed.
type TimeNamespaceError struct {
	Offsets core.TimeOffsets // wanted, from the host's clocks
	Reason  string
	Err     error
}

func (e *TimeNamespaceError) Error() string {
	s := "the restored process's CLOCK_MONOTONIC and CLOCK_BOOTTIME cannot go on from the source's: " + e.Reason
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// AbortCode names the refusal in the abort a live migration's source gets.
func (e *TimeNamespaceError) AbortCode() string { return "clock" }

func (e *TimeNamespaceError) Unwrap() error { return e.Err }

// timeNamespaces tells whether this kernel has time namespaces.
func timeNamespaces() bool {
	_, err := os.Stat("/proc/self/ns/time")
	return !errors.Is(err, fs.ErrNotExist)
}

// planTime plans the processes' time namespace from the image's clocks
// and this host's (here), on a kernel with time namespaces or not
// (haveNS).
func planTime(img *core.Image, here hostClocks, haveNS bool) (timePlan, error) {
	if img.Clocks == nil {
		return timePlan{}, &TimeNamespaceError{Reason: "the image (or the live layout) has no clock readings: it was made by an older migrate"}
	}
	p, err := planClocks(img.Clocks, here)
	if err != nil {
		return p, err
	}
	if p.New && !haveNS {
		return p, &TimeNamespaceError{Offsets: p.Want, Reason: fmt.Sprintf("it needs a time namespace with offsets %v, and this kernel has none "+
			"(built without CONFIG_TIME_NS: /proc/self/ns/time is missing)", p.Want)}
	}
	return p, nil
}

// planTime decides the processes' time namespace (session.timens).
func (r *session) planTime() error {
	here, err := readHostClocks()
	if err != nil {
		return err
	}
	p, err := planTime(r.img, here, timeNamespaces())
	if err != nil {
		return err
	}
	if p.New {
		r.timens = &p.Want
	}
	r.log.Info("time namespace", "new", p.New, "offsets", p.Want.String(), "same_boot", p.SameBoot)
	return nil
}

// startInTimeNamespace starts cmd (the husk) in a new time namespace with
// offsets off. The namespace is made on a thread of migrate's own
// (unshare(CLONE_NEWTIME) changes the namespace of the calling thread's
// children to come, which the offsets may be set for until a process
// enters it), and the husk started from it: it enters the namespace as it
// execs. The thread stays locked and ends with its goroutine, so that no
// other child of migrate is born in the namespace.
func startInTimeNamespace(cmd *exec.Cmd, off core.TimeOffsets) error {
	errc := make(chan error, 1)
	osthread.Go(func() { // a thread of its own, that dies with the goroutine
		errc <- func() error {
			if err := unix.Unshare(unix.CLONE_NEWTIME); err != nil {
				return &TimeNamespaceError{Offsets: off, Reason: "unshare(CLONE_NEWTIME)", Err: err}
			}
			// /proc/TID is the thread's own view: its namespace for
			// children is the new one.
			path := fmt.Sprintf("/proc/%d/timens_offsets", unix.Gettid())
			if err := os.WriteFile(path, []byte(formatTimeOffsets(off)), 0); err != nil {
				return &TimeNamespaceError{Offsets: off, Reason: fmt.Sprintf("set the offsets %v", off), Err: err}
			}
			return cmd.Start()
		}()
	})
	return <-errc
}

// formatTimeOffsets is what timens_offsets takes: "CLOCKID SECONDS
// NANOSECONDS" per clock, the nanoseconds in [0, 1e9).
func formatTimeOffsets(off core.TimeOffsets) string {
	line := func(clock int, ns int64) string {
		sec, nsec := ns/int64(time.Second), ns%int64(time.Second)
		if nsec < 0 {
			sec, nsec = sec-1, nsec+int64(time.Second)
		}
		return fmt.Sprintf("%d %d %d\n", clock, sec, nsec)
	}
	return line(unix.CLOCK_MONOTONIC, off.Monotonic) + line(unix.CLOCK_BOOTTIME, off.Boottime)
}

// timeCheck is what checkTime compares the processes' time namespace
// offsets with, worked out once for a tree's check: the offsets the
// image's clocks want now (planClocks), and the tolerance (none on the
// dump's own boot, clockTolerance and a drift from another).
type timeCheck struct {
	want core.TimeOffsets
	tol  int64
	err  error // the host's clocks could not be read
}

// planTimeCheck works out the timeCheck of img's processes; nil if the
// image has no clocks.
func planTimeCheck(img *core.Image) *timeCheck {
	if img.Clocks == nil {
		return nil
	}
	here, err := readHostClocks()
	if err != nil {
		return &timeCheck{err: err}
	}
	p, err := planClocks(img.Clocks, here)
	if err != nil {
		return &timeCheck{err: err}
	}
	// From another host, the tolerance grows by 100 ppm of the time
	// since the image's readings (a live migration sets the offsets at
	// its first layout): the rate at which two hosts' clocks may drift
	// apart. On the same boot the offsets are exact.
	tol := int64(clockTolerance) + max(0, here.Now.Realtime-img.Clocks.Realtime)/10000
	if p.SameBoot {
		tol = 0
	}
	return &timeCheck{want: p.Want, tol: tol}
}

// checkTime compares the time namespace offsets of the restored process
// with those tc wants (nil: nothing to compare).
func checkTime(c *checker, tc *timeCheck) {
	if tc == nil {
		return
	}
	if tc.err != nil {
		c.unreadable(0, "clocks", tc.err)
		return
	}
	got, err := proc.ReadTimeOffsets(c.pid)
	if err != nil {
		c.unreadable(0, "timens_offsets", err)
		return
	}
	g := core.TimeOffsets{Monotonic: got.Monotonic, Boottime: got.Boottime}
	if absDiff(g.Monotonic, tc.want.Monotonic) > tc.tol || absDiff(g.Boottime, tc.want.Boottime) > tc.tol {
		c.diff(0, "time namespace offsets", tc.want, g)
	}
}
