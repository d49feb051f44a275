package pagestream

import (
	"math/bits"
	"sync"
)

// Buffers are pooled by size class: class c holds buffers of capacity at
// least PageSize<<c. Buffers above the largest class are not pooled.
const (
	numBufClasses = 15 // up to 64 MiB
	maxPooledCap  = PageSize << (numBufClasses - 1)
)

var bufPools [numBufClasses]sync.Pool

// holders recycles the *[]byte boxes the pools hold, so that putting a
// buffer back does not allocate.
var holders sync.Pool

// GetBuffer returns a buffer of len n for page data, from a pool when one is
// free. n must be a positive multiple of PageSize. The contents are
// undefined. Hand it back with PutBuffer, or give it to Writer.WritePages,
// which does.
func GetBuffer(n int) []byte {
	if n <= 0 || n%PageSize != 0 {
		panic("pagestream: GetBuffer: size " + itoa(uint64(n)) + " is not a positive multiple of PageSize")
	}
	return getBuf(n)
}

// PutBuffer hands b back for reuse by GetBuffer. The caller must not use b
// afterwards. Buffers of any origin are accepted; those too small or too
// large to pool are left to the garbage collector.
func PutBuffer(b []byte) { putBuf(b) }

// getBuf returns a buffer of len n > 0 (any n), pooled by class.
func getBuf(n int) []byte {
	if n > maxPooledCap {
		return make([]byte, n)
	}
	c := bits.Len(uint((n+PageSize-1)/PageSize - 1))
	if p, ok := bufPools[c].Get().(*[]byte); ok {
		b := *p
		*p = nil
		holders.Put(p)
		return b[:n]
	}
	return make([]byte, n, PageSize<<c)
}

func putBuf(b []byte) {
	pages := cap(b) / PageSize
	if pages == 0 || cap(b) > maxPooledCap {
		return
	}
	c := bits.Len(uint(pages)) - 1 // largest class that fits
	p, _ := holders.Get().(*[]byte)
	if p == nil {
		p = new([]byte)
	}
	*p = b[:0]
	bufPools[c].Put(p)
}

// frameBufCap is the largest buffer an encoded frame needs: a page frame of
// MaxFramePages pages as s2 may encode it (the largest bound of the codecs),
// with header and trailer. It is also more than the largest payload a
// reader accepts.
const frameBufCap = frameHeaderSize + maxBitmapLen + contentCRCSize + (32 + MaxFramePages*PageSize + MaxFramePages*PageSize/6) + trailerSize

// bigFrameBufs holds buffers of exactly frameBufCap bytes, so that a frame
// of a little over 1 MiB does not take a 2 MiB buffer from the class pools.
var bigFrameBufs sync.Pool

// frameBuf returns a buffer of len n <= frameBufCap for an encoded frame or
// a payload.
func frameBuf(n int) []byte {
	if n <= MaxFramePages*PageSize {
		return getBuf(n)
	}
	if p, ok := bigFrameBufs.Get().(*[]byte); ok {
		b := *p
		*p = nil
		holders.Put(p)
		return b[:n]
	}
	return make([]byte, n, frameBufCap)
}

func putFrameBuf(b []byte) {
	if cap(b) != frameBufCap {
		putBuf(b)
		return
	}
	p, _ := holders.Get().(*[]byte)
	if p == nil {
		p = new([]byte)
	}
	*p = b[:0]
	bigFrameBufs.Put(p)
}
