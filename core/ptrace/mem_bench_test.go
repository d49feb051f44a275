package ptrace

import (
	"os"
	"reflect"
	"testing"

	"golang.org/x/sys/unix"
)

// benchArea is 64 MiB of this process's memory with every page touched:
// the source of the read benchmark and the destination of the write one.
// process_vm_readv and process_vm_writev take the same path for this
// process as for another.
func benchArea(b *testing.B) []byte {
	b.Helper()
	mem, err := unix.Mmap(-1, 0, 64<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { unix.Munmap(mem) })
	for i := 0; i < len(mem); i += 4096 {
		mem[i] = byte(i >> 12)
	}
	return mem
}

// BenchmarkReadMemv is the read stage of a dump or a migration: runs of
// pages read with process_vm_readv, as pageSink.drain reads them (up to
// 256 runs, 2 MiB, a call); b.SetBytes makes the figure MB/s of pages.
func BenchmarkReadMemv(b *testing.B) {
	for _, run := range []int{1, 16, 512} { // pages a run
		b.Run(map[int]string{1: "scattered", 16: "runs64k", 512: "runs2m"}[run], func(b *testing.B) {
			mem := benchArea(b)
			base := uint64(reflect.ValueOf(&mem[0]).Pointer())
			const perCall = 512 // pages a call: 2 MiB
			buf := make([]byte, perCall*4096)
			iov := make([]unix.RemoteIovec, 0, perCall)
			pages := len(mem) / 4096
			b.SetBytes(int64(len(mem)))
			b.ResetTimer()
			for b.Loop() {
				for p := 0; p < pages; p += perCall {
					iov = iov[:0]
					for q := p; q < p+perCall; q += run {
						iov = append(iov, unix.RemoteIovec{Base: uintptr(base + uint64(q)*4096), Len: run * 4096})
					}
					if _, err := ReadMemv(os.Getpid(), buf, iov); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}

// BenchmarkWriteMem is the apply stage of a restore: frames of pages
// written into a process with process_vm_writev, 64 KiB (16 pages, a
// frame of scattered dirty pages) or 1 MiB at a time.
func BenchmarkWriteMem(b *testing.B) {
	for _, size := range []int{64 << 10, 1 << 20} {
		b.Run(map[int]string{64 << 10: "frames64k", 1 << 20: "frames1m"}[size], func(b *testing.B) {
			mem := benchArea(b)
			base := uint64(reflect.ValueOf(&mem[0]).Pointer())
			src := make([]byte, size)
			for i := range src {
				src[i] = byte(i)
			}
			b.SetBytes(int64(len(mem)))
			b.ResetTimer()
			for b.Loop() {
				for off := 0; off < len(mem); off += size {
					if _, err := WriteMem(os.Getpid(), base+uint64(off), src); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}
