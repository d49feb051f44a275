// Command hog loads the machine the way a busy host does, for `make
// stress`: busy loops on some CPUs and a working set of memory it keeps
// rewriting, so that the kernel reclaims and the scheduler preempts while
// the tests run. It stops by itself after -for, on SIGTERM or SIGINT, or
// when the process named by -parent is gone, whichever comes first.
//
//	hog -cpus 1 -mem 2048 -for 30m -parent PID
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	cpus := flag.Int("cpus", 1, "busy loops, each pinned to one CPU from the last one down")
	memMB := flag.Int("mem", 0, "MiB of memory to keep rewriting (0: none)")
	dur := flag.Duration("for", 30*time.Minute, "stop after this long")
	parent := flag.Int("parent", 0, "stop when this process is gone (0: do not watch)")
	flag.Parse()
	if *cpus < 0 || *memMB < 0 || *dur <= 0 {
		fmt.Fprintln(os.Stderr, "hog: -cpus and -mem must be >= 0 and -for > 0")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *dur)
	defer cancel()

	n := runtime.NumCPU()
	for i := 0; i < *cpus; i++ {
		go spin(ctx, (n-1-i)%n)
	}
	if *memMB > 0 {
		go churn(ctx, *memMB)
	}
	fmt.Printf("hog: %d busy CPU(s), %d MiB rewritten, for at most %s (pid %d)\n", *cpus, *memMB, *dur, os.Getpid())
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			if *parent > 0 && unix.Kill(*parent, 0) != nil {
				return
			}
		}
	}
}

// spin keeps one CPU busy on its own OS thread until ctx ends.
func spin(ctx context.Context, cpu int) {
	runtime.LockOSThread()
	var set unix.CPUSet
	set.Set(cpu)
	_ = unix.SchedSetaffinity(0, &set) // unpinned, it still loads the machine
	for x := uint64(1); ; x = x*6364136223846793005 + 1 {
		if x&0xfffff == 0 && ctx.Err() != nil {
			return
		}
	}
}

// churn maps mb MiB and writes every page of it over and over, at a
// bounded rate, and gives part of it back to the kernel each pass
// (MADV_DONTNEED), so the kernel keeps faulting, zeroing and reclaiming.
func churn(ctx context.Context, mb int) {
	size := mb << 20
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		fmt.Fprintln(os.Stderr, "hog: mmap:", err)
		return
	}
	defer unix.Munmap(mem)
	const page = 4096
	for pass := 0; ctx.Err() == nil; pass++ {
		for off := 0; off < size; off += page {
			mem[off] = byte(pass)
		}
		half := size / 2 &^ (page - 1)
		_ = unix.Madvise(mem[(pass%2)*half:(pass%2)*half+half], unix.MADV_DONTNEED)
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
}
