package source

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"migrate/core"
	"migrate/core/proc"
	"migrate/core/ptrace"
	"migrate/pagestream"
)

// undo is a stack of rollback steps (gVisor's cleanup idea): Clean runs them
// in reverse unless Release was called.
type undo struct{ fns []func() }

func (u *undo) Add(f func()) { u.fns = append(u.fns, f) }
func (u *undo) Release()     { u.fns = nil }
func (u *undo) Clean() {
	for i := len(u.fns) - 1; i >= 0; i-- {
		u.fns[i]()
	}
	u.fns = nil
}

// dumper holds the state of one dump.
type dumper struct {
	opts   DumpOptions
	log    *slog.Logger
	pid    int
	tr     *ptrace.Tracer
	p      *ptrace.Proc
	img    *core.Image
	dir    string
	stat   *proc.Stat
	status *proc.Status
	// scratch is a page mapped in the tracee for results of injected calls.
	scratch uint64
	blobs   int
	steps   []Step
	lapped  time.Time
	tracker Tracker
	rounds  []RoundReport
}

// lap records the time since the previous lap as step name.
func (d *dumper) lap(name string) {
	now := time.Now()
	d.steps = append(d.steps, Step{Name: name, MS: ms(now.Sub(d.lapped))})
	d.lapped = now
}

// Stages at which DumpOptions.testHook is called.
const (
	stageSeized   = "seized"   // all threads stopped, nothing changed yet
	stageScratch  = "scratch"  // scratch page mapped in the tracee
	stageInjected = "injected" // injected calls done, scratch page gone
	stageMemory   = "memory"   // after the first pages are written
	stageMeta     = "meta"     // before the metadata file is written
)

func (d *dumper) hook(stage string) error {
	if d.opts.testHook == nil {
		return nil
	}
	return d.opts.testHook(stage)
}

func dump(ctx context.Context, opts DumpOptions) (rep *DumpReport, err error) {
	start := time.Now()
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	codec, err := pagestream.ParseCodec(opts.Codec)
	if err != nil {
		return nil, err
	}
	if opts.Dir == "" {
		return nil, errors.New("no image directory given")
	}
	d := &dumper{opts: opts, log: log, pid: opts.PID, dir: opts.Dir, lapped: start}
	d.stat, d.status, err = checkTarget(opts.PID)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(d.dir, core.FilesDir), 0o700); err != nil {
		return nil, fmt.Errorf("image directory: %w", err)
	}
	// The tracer outlives every rollback step (defers run last-in, first
	// out): detaching needs it.
	d.tr = ptrace.NewTracer()
	defer d.tr.Close()
	var cu undo
	defer cu.Clean()
	// Files this dump creates go away if it fails.
	cu.Add(func() {
		os.Remove(filepath.Join(d.dir, core.PagesFile))
		os.RemoveAll(filepath.Join(d.dir, core.FilesDir))
		os.Remove(filepath.Join(d.dir, "."+core.MetaFile+".tmp"))
	})

	sink, err := d.openSink(codec)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			sink.abort()
		}
	}()
	var pending []PageRange
	if opts.PreCopy {
		cu.Add(func() {
			if d.tracker != nil {
				if err := d.tracker.Close(); err != nil {
					log.Error("rollback: stop dirty tracking", "pid", d.pid, "err", err)
				}
			}
		})
		if pending, err = d.precopy(ctx, sink); err != nil {
			return nil, err
		}
		d.lap("pre-copy")
	}

	d.p, err = d.tr.Seize(d.pid)
	if err != nil {
		var te *ptrace.TracedError
		if errors.As(err, &te) {
			return nil, &BadTargetError{PID: d.pid, Reason: te.Error()}
		}
		return nil, err
	}
	frozen := time.Now()
	d.lap("freeze")
	cu.Add(func() {
		if err := d.p.Detach(); err != nil {
			log.Error("rollback: detach", "pid", d.pid, "err", err)
		}
	})
	log.Info("frozen", "pid", d.pid, "threads", len(d.p.Threads))
	if err := d.hook(stageSeized); err != nil {
		return nil, err
	}

	if err := d.p.FindGadget(); err != nil {
		return nil, fmt.Errorf("process %d: %w", d.pid, err)
	}
	d.img = &core.Image{
		Kind:    core.ImageKind,
		Version: core.ImageVersion,
		Created: time.Now().UTC(),
		Arch:    runtime.GOARCH,
		Pages:   core.PagesInfo{File: core.PagesFile, Codec: codec.String()},
	}
	d.img.Host, _ = os.Hostname()
	d.img.Kernel = kernelRelease()

	// Everything that cannot fail on the process itself comes first, so an
	// unsupported fd or mapping is refused before any injection.
	if err := d.collectTask(); err != nil {
		return nil, err
	}
	if err := d.collectVMAs(); err != nil {
		return nil, err
	}
	fds, err := d.collectFDs(ctx)
	if err != nil {
		return nil, err
	}
	defer fds.close()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	d.lap("read state")

	// Injected calls: a scratch page for their results, gone on every path.
	if err := d.mapScratch(); err != nil {
		return nil, err
	}
	unmapped := false
	unmap := func() error {
		if unmapped {
			return nil
		}
		unmapped = true
		return d.unmapScratch()
	}
	cu.Add(func() {
		if err := unmap(); err != nil {
			log.Error("rollback: unmap scratch page", "pid", d.pid, "err", err)
		}
	})
	if err := d.hook(stageScratch); err != nil {
		return nil, err
	}
	if err := d.collectInjected(); err != nil {
		return nil, err
	}
	if err := unmap(); err != nil {
		return nil, err
	}
	if err := d.hook(stageInjected); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	d.lap("injected calls")
	memStart := time.Now()
	if d.tracker != nil {
		if err = d.finalRound(ctx, sink, pending, frozen); err != nil {
			return nil, err
		}
		// Tracking is over: the process is left with nothing of it.
		if err = d.tracker.Close(); err != nil {
			return nil, err
		}
	} else {
		m := sink.meter(0)
		if err = d.dumpMemory(ctx, sink, 0); err != nil {
			return nil, err
		}
		rep, err := m.done(sink.pages)
		if err != nil {
			return nil, err
		}
		rep.Frozen = true
		d.rounds = append(d.rounds, rep)
	}
	stats, err := d.finishPages(sink, len(d.rounds))
	if err != nil {
		return nil, err
	}
	memTime := time.Since(memStart)
	d.lap("memory")
	if err := fds.writeBlobs(d); err != nil {
		return nil, err
	}
	if err := d.hook(stageMeta); err != nil {
		return nil, err
	}
	// Last chance to give up: once the metadata is written, the image is
	// whole and the process is gone.
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := core.WriteImage(d.dir, d.img); err != nil {
		return nil, fmt.Errorf("write image metadata: %w", err)
	}
	if err := syncDir(d.dir); err != nil {
		return nil, err
	}

	// The image is complete: from here on nothing is undone.
	cu.Release()
	d.lap("files and metadata")
	rep = &DumpReport{
		PID: d.pid, Dir: d.dir, Comm: d.img.Process.Comm,
		Threads: len(d.img.Process.Threads), VMAs: len(d.img.Process.VMAs), FDs: len(d.img.Process.FDs),
		Pages: stats.Pages, ZeroPages: stats.ZeroPages, BytesRaw: stats.BytesRaw,
		BytesImage: d.img.Pages.Size, BytesWire: uint64(d.img.Pages.Size), Codec: codec.String(),
		LeftRunning: opts.LeaveRunning, Rounds: d.rounds,
	}
	if d.tracker != nil {
		rep.Tracker = d.tracker.Name()
	}
	// Frozen time ends when the process runs again, or, when it is to die,
	// once its image is complete.
	rep.Frozen = time.Since(frozen)
	if opts.LeaveRunning {
		err = d.p.Detach()
		rep.Frozen = time.Since(frozen)
	} else {
		err = d.p.Kill(false)
	}
	d.lap("release")
	rep.Steps = d.steps
	rep.Total = time.Since(start)
	rep.FrozenMS = ms(rep.Frozen)
	rep.TotalMS = ms(rep.Total)
	rep.MemoryMS = ms(memTime)
	if err != nil {
		return rep, fmt.Errorf("image written, but: %w", err)
	}
	return rep, nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func kernelRelease() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return ""
	}
	return string(trimNL(b))
}

func trimNL(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == 0) {
		b = b[:len(b)-1]
	}
	return b
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil && !errors.Is(err, os.ErrInvalid) {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// newBlob creates a fresh file under files/ and returns its image name.
func (d *dumper) newBlob(kind string) (string, *os.File, error) {
	d.blobs++
	name := fmt.Sprintf("%s/%s-%d", core.FilesDir, kind, d.blobs)
	f, err := os.OpenFile(filepath.Join(d.dir, name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", nil, err
	}
	return name, f, nil
}

// copyBlob stores everything r yields as a blob.
func (d *dumper) copyBlob(kind string, r io.Reader) (string, error) {
	name, f, err := d.newBlob(kind)
	if err != nil {
		return "", err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return "", fmt.Errorf("store %s: %w", name, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return "", fmt.Errorf("store %s: %w", name, err)
	}
	return name, f.Close()
}
