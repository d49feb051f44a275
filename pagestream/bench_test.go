package pagestream

import (
	"bytes"
	"io"
	"sync"
	"syscall"
	"testing"
	"time"
)

// cpuTime is the CPU time (user and system) of the whole process so far.
// The machines running the benchmark are shared, so besides wall-clock
// throughput the benchmark reports CPU time per GiB, which other loads
// disturb less.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

const benchSize = 256 << 20

var benchHeap = sync.OnceValue(func() []byte { return heapLike(benchSize/PageSize, 1) })

// BenchmarkWriteRead writes 256 MiB of heap-like data (see heapLike) as a
// page stream into memory and reads it back, per codec, with the default
// number of workers. The writing side copies each 1 MiB batch into a pooled
// buffer first, as reading a process's memory would (process_vm_readv); the
// reading side copies every non-zero page to its place in a destination, as
// writing into the restored process would. Metrics: write-MB/s and read-MB/s
// of raw page data, wall-clock and CPU milliseconds per GiB of writing, CPU
// milliseconds per GiB of reading, and ratio (wire bytes / raw bytes).
func BenchmarkWriteRead(b *testing.B) {
	src := benchHeap()
	const chunk = 1 << 20
	const base = 0x7f0000000000
	dst := make([]byte, len(src))
	configs := []struct {
		name string
		opts WriterOptions
	}{
		{"none", WriterOptions{Codec: CodecNone}},
		{"zstd", WriterOptions{Codec: CodecZstd}},
		{"s2", WriterOptions{Codec: CodecS2}},
		{"s2-adaptive", WriterOptions{Codec: CodecS2, Adaptive: true}},
		{"zstd-adaptive", WriterOptions{Codec: CodecZstd, Adaptive: true}},
	}
	for _, cf := range configs {
		b.Run(cf.name, func(b *testing.B) {
			var stream bytes.Buffer
			stream.Grow(len(src) + len(src)/16)
			var wdur, rdur, wcpu, rcpu time.Duration
			var wire int
			var st Stats
			first := true
			b.SetBytes(int64(len(src)))
			for b.Loop() {
				stream.Reset()
				t0, c0 := time.Now(), cpuTime()
				w, err := NewWriter(&stream, cf.opts)
				if err != nil {
					b.Fatal(err)
				}
				for off := 0; off < len(src); off += chunk {
					buf := GetBuffer(chunk)
					copy(buf, src[off:off+chunk])
					if err := w.WritePages(1, base+uint64(off), buf); err != nil {
						b.Fatal(err)
					}
				}
				if err := w.Close(); err != nil {
					b.Fatal(err)
				}
				t1, c1 := time.Now(), cpuTime()
				r, err := NewReader(bytes.NewReader(stream.Bytes()), ReaderOptions{})
				if err != nil {
					b.Fatal(err)
				}
				for {
					f, err := r.Next()
					if err == io.EOF {
						break
					}
					if err != nil {
						b.Fatal(err)
					}
					at := dst[f.Addr-base:]
					for i := 0; i < f.Pages; i++ {
						if !f.IsZero(i) {
							copy(at[i*PageSize:(i+1)*PageSize], f.Data[i*PageSize:(i+1)*PageSize])
						}
					}
				}
				t2, c2 := time.Now(), cpuTime()
				wdur += t1.Sub(t0)
				rdur += t2.Sub(t1)
				wcpu += c1 - c0
				rcpu += c2 - c1
				wire = stream.Len()
				st = w.Stats()
				if first {
					first = false
					b.StopTimer()
					if !bytes.Equal(dst, src) {
						b.Fatal("data read back differs")
					}
					clear(dst)
					b.StartTimer()
				}
			}
			n := float64(b.N) * float64(len(src))
			b.ReportMetric(n/wdur.Seconds()/1e6, "write-MB/s")
			b.ReportMetric(n/rdur.Seconds()/1e6, "read-MB/s")
			perGiB := func(d time.Duration) float64 { return d.Seconds() * 1e3 / n * (1 << 30) }
			b.ReportMetric(perGiB(wdur), "write-ms/GiB")
			b.ReportMetric(perGiB(wcpu), "write-cpu-ms/GiB")
			b.ReportMetric(perGiB(rcpu), "read-cpu-ms/GiB")
			b.ReportMetric(float64(wire)/float64(len(src)), "ratio")
			b.ReportMetric(float64(st.RawFrames)/float64(st.Frames), "raw-frames")
		})
	}
}
