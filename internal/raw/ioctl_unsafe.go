//go:build linux

package raw

import (
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The uapi structs must have the kernel's sizes; these fail to compile
// otherwise.
var (
	_ [24]byte                   = [unsafe.Sizeof(UffdioAPI{})]byte{}
	_ [16]byte                   = [unsafe.Sizeof(UffdioRange{})]byte{}
	_ [32]byte                   = [unsafe.Sizeof(UffdioRegister{})]byte{}
	_ [24]byte                   = [unsafe.Sizeof(UffdioWriteprotect{})]byte{}
	_ [24]byte                   = [unsafe.Sizeof(PageRegion{})]byte{}
	_ [96]byte                   = [unsafe.Sizeof(PmScanArg{})]byte{}
	_ [CLONE_ARGS_SIZE_VER2]byte = [unsafe.Sizeof(CloneArgs{})]byte{}
	_ [104]byte                  = [unsafe.Sizeof(PrctlMMMap{})]byte{}
	_ [40]byte                   = [unsafe.Sizeof(UffdioCopy{})]byte{}
	_ [32]byte                   = [unsafe.Sizeof(UffdioZeropage{})]byte{}
)

// Ioctl is ioctl(fd, req, arg) with arg a pointer to the request's struct
// (or integer), retried on EINTR. It returns the ioctl's result.
func Ioctl[T any](fd int, req uint, arg *T) (int, error) {
	for {
		r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(unsafe.Pointer(arg)))
		runtime.KeepAlive(arg)
		switch e {
		case 0:
			return int(r), nil
		case unix.EINTR:
			continue
		default:
			return int(r), e
		}
	}
}

// PagemapScan runs PAGEMAP_SCAN (Linux 6.7) on the /proc/PID/pagemap file
// fd with arg, filling vec; arg.Size, arg.Vec and arg.VecLen are set here.
// It returns the regions filled and where the walk ended (arg.WalkEnd),
// which is before arg.End when vec filled up or arg.MaxPages was reached.
func PagemapScan(fd int, arg PmScanArg, vec []PageRegion) ([]PageRegion, uint64, error) {
	arg.Size = uint64(unsafe.Sizeof(arg))
	if len(vec) > 0 {
		arg.Vec = uint64(uintptr(unsafe.Pointer(&vec[0])))
		arg.VecLen = uint64(len(vec))
	}
	n, err := Ioctl(fd, PAGEMAP_SCAN, &arg)
	runtime.KeepAlive(vec)
	if err != nil {
		return nil, arg.WalkEnd, err
	}
	return vec[:n], arg.WalkEnd, nil
}

// ioctlCopy is UFFDIO_COPY of data: c.Src points at data for the call.
func ioctlCopy(fd int, c *UffdioCopy, data []byte) (int, error) {
	c.Src = uint64(uintptr(unsafe.Pointer(unsafe.SliceData(data))))
	n, err := Ioctl(fd, UFFDIO_COPY, c)
	runtime.KeepAlive(data)
	return n, err
}
