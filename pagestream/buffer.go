package pagestream

import "sync"

// Buffers are pooled by size class, in pages: every size up to
// MaxFramePages pages (1 MiB) has its own class, so that page frames and the
// batches callers read find buffers of exactly their size; above that,
// classes go by 64 pages (256 KiB) up to maxPooledPages (16 MiB). Larger
// buffers are not pooled.
const (
	bigStep        = 64
	maxPooledPages = 4096
	numBufClasses  = MaxFramePages + (maxPooledPages-MaxFramePages)/bigStep
)

var bufPools [numBufClasses]sync.Pool

// holders recycles the *[]byte boxes the pools hold, so that putting a
// buffer back does not allocate.
var holders sync.Pool

// classUp returns the smallest class holding buffers of at least pages
// pages, and its buffers' size in pages.
func classUp(pages int) (class, size int) {
	if pages <= MaxFramePages {
		return pages - 1, pages
	}
	k := (pages - MaxFramePages + bigStep - 1) / bigStep
	return MaxFramePages - 1 + k, MaxFramePages + k*bigStep
}

// classDown returns the largest class whose buffers fit in pages pages.
func classDown(pages int) int {
	if pages <= MaxFramePages {
		return pages - 1
	}
	return MaxFramePages - 1 + (pages-MaxFramePages)/bigStep
}

// GetBuffer returns a buffer of len n for page data, from a pool when one is
// free. n must be a positive multiple of PageSize. The contents are
// undefined. Hand it back with PutBuffer, or give it to Writer.WritePages,
// which does. Sizes up to 1 MiB, and multiples of 256 KiB up to 16 MiB,
// recycle best.
func GetBuffer(n int) []byte {
	if n <= 0 || n%PageSize != 0 {
		panic("pagestream: GetBuffer: size " + itoa(uint64(n)) + " is not a positive multiple of PageSize")
	}
	return getBuf(n)
}

// PutBuffer hands b back for reuse by GetBuffer. The caller must not use b
// (up to its capacity) afterwards. Buffers of any origin are accepted; those
// too small or too large to pool are left to the garbage collector.
func PutBuffer(b []byte) { putBuf(b) }

// getBuf returns a buffer of len n > 0 (any n), pooled by class.
func getBuf(n int) []byte {
	pages := (n + PageSize - 1) / PageSize
	if pages > maxPooledPages {
		return make([]byte, n)
	}
	c, size := classUp(pages)
	if p, ok := bufPools[c].Get().(*[]byte); ok {
		b := *p
		*p = nil
		holders.Put(p)
		return b[:n]
	}
	return make([]byte, n, size*PageSize)
}

func putBuf(b []byte) {
	pages := cap(b) / PageSize
	if pages == 0 || pages > maxPooledPages {
		return
	}
	p, _ := holders.Get().(*[]byte)
	if p == nil {
		p = new([]byte)
	}
	*p = b[:0]
	bufPools[classDown(pages)].Put(p)
}
