package source

import (
	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core/ptrace"
)

// The frozen window's work on a tree is per process, and nearly all of it
// ptrace round trips (an injected system call is two stops of the
// tracee), which a tracer thread makes one after the other: a tree is
// seized by several tracer threads (tracerFor), one for each CPU this
// process may run on, and the work on the processes of each goes on at
// the same time as the others' (eachProcess), each tracer bound to its
// own CPU with its processes (tracerCPUs, ptrace.Proc.PinOn).

// maxTracers bounds the tracer threads of a tree.
const maxTracers = 8

// tracerFor returns the tracer that seizes the n-th process frozen (from
// 0, the root, which ss.tr seizes): the processes of a tree go round
// one tracer per CPU this process may run on (at most maxTracers).
func (ss *session) tracerFor(n int) *ptrace.Tracer {
	if n == 0 || !ss.opts.Tree {
		return ss.tr
	}
	if ss.tracers == nil {
		ss.tracers = []*ptrace.Tracer{ss.tr}
		ss.maxTracers = 1
		var set unix.CPUSet
		if err := unix.SchedGetaffinity(0, &set); err == nil {
			ss.maxTracers = min(max(set.Count(), 1), maxTracers)
		}
	}
	k := n % ss.maxTracers
	for len(ss.tracers) <= k {
		ss.tracers = append(ss.tracers, ptrace.NewTracer())
	}
	return ss.tracers[k]
}

// closeTracers ends the tracer threads (tr among them).
func (ss *session) closeTracers() {
	ss.tr.Close()
	for _, t := range ss.tracers {
		t.Close()
	}
}

// tracerCPUs says on which CPU each tracer of the processes of all
// (frozen, the root first) works with its processes: the root's on the
// CPU the root last ran on (a ptrace stop and resume on the same CPU are
// several times cheaper than across two), each other one on another CPU
// this process may run on. A tracer left out is not bound.
func tracerCPUs(all []*dumper) map[*ptrace.Tracer]int {
	out := map[*ptrace.Tracer]int{}
	root, err := ptrace.LastCPU(all[0].pid)
	if err != nil {
		return out
	}
	out[all[0].p.Tracer()] = root
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return out
	}
	cpu := 0
	for _, d := range all[1:] {
		t := d.p.Tracer()
		if _, ok := out[t]; ok {
			continue
		}
		for cpu < len(set)*64 && (!set.IsSet(cpu) || cpu == root) {
			cpu++
		}
		if cpu >= len(set)*64 {
			break
		}
		out[t] = cpu
		cpu++
	}
	return out
}

// eachProcess runs work on every process of all (seized), on the tracer
// thread of each: the processes of one tracer one after the other, in
// the order of all, those of different tracers at the same time. Once
// work fails for one process it starts on no other. The error is that
// of the first process of all that failed.
func eachProcess(all []*dumper, work func(d *dumper) error) error {
	return ptrace.Each(len(all), func(i int) *ptrace.Tracer { return all[i].p.Tracer() },
		func(i int) error { return work(all[i]) })
}
