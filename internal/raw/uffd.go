//go:build linux

package raw

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// OpenUserfaultfd creates a userfaultfd in this process with flags
// (O_CLOEXEC, O_NONBLOCK, UFFD_USER_MODE_ONLY): with the system call, or
// through /dev/userfaultfd (Linux 6.1) when the system call is refused
// (vm.unprivileged_userfaultfd=0 without CAP_SYS_PTRACE) or missing. via
// says which worked: "syscall" or "/dev/userfaultfd".
func OpenUserfaultfd(flags int) (fd int, via string, err error) {
	r, _, e := unix.Syscall(unix.SYS_USERFAULTFD, uintptr(flags), 0, 0)
	if e == 0 {
		return int(r), "syscall", nil
	}
	if e != unix.EPERM && e != unix.ENOSYS {
		return -1, "", fmt.Errorf("userfaultfd: %w", e)
	}
	dev, err := unix.Open("/dev/userfaultfd", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, "", fmt.Errorf("userfaultfd: %w; open /dev/userfaultfd: %w", e, err)
	}
	defer unix.Close(dev)
	nfd, err := IoctlValue(dev, USERFAULTFD_IOC_NEW, uintptr(flags))
	if err != nil {
		return -1, "", fmt.Errorf("userfaultfd: %w; USERFAULTFD_IOC_NEW: %w", e, err)
	}
	return nfd, "/dev/userfaultfd", nil
}

// UffdAPI is the UFFDIO_API handshake on the userfaultfd fd, asking for
// features. It may be done once per userfaultfd; the answer holds the
// features the kernel has (all of them when features is 0) and the ioctls
// the fd takes.
func UffdAPI(fd int, features uint64) (UffdioAPI, error) {
	api := UffdioAPI{API: UFFD_API, Features: features}
	_, err := Ioctl(fd, UFFDIO_API, &api)
	return api, err
}

// UffdFeatures asks the kernel which userfaultfd features it has, with a
// throwaway userfaultfd: UFFDIO_API may be called once per userfaultfd, and
// a call with no features answers with all of them. A process that may
// only handle user-mode faults (vm.unprivileged_userfaultfd=0) still gets
// its answer, through UFFD_USER_MODE_ONLY.
func UffdFeatures() (uint64, error) {
	var errs []error
	for _, flags := range []int{unix.O_CLOEXEC | unix.O_NONBLOCK, unix.O_CLOEXEC | unix.O_NONBLOCK | UFFD_USER_MODE_ONLY} {
		fd, _, err := OpenUserfaultfd(flags)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		api, err := UffdAPI(fd, 0)
		unix.Close(fd)
		if err != nil {
			return 0, fmt.Errorf("UFFDIO_API: %w", err)
		}
		return api.Features, nil
	}
	return 0, errors.Join(errs...)
}

// UffdRegister registers [start, start+length) with the userfaultfd fd in
// mode (UFFDIO_REGISTER_MODE_*). It returns the ioctls the range takes.
func UffdRegister(fd int, start, length, mode uint64) (uint64, error) {
	reg := UffdioRegister{Range: UffdioRange{Start: start, Len: length}, Mode: mode}
	_, err := Ioctl(fd, UFFDIO_REGISTER, &reg)
	return reg.Ioctls, err
}

// UffdUnregister undoes UffdRegister for [start, start+length).
func UffdUnregister(fd int, start, length uint64) error {
	r := UffdioRange{Start: start, Len: length}
	_, err := Ioctl(fd, UFFDIO_UNREGISTER, &r)
	return err
}

// UffdWriteprotect write-protects [start, start+length) (mode
// UFFDIO_WRITEPROTECT_MODE_WP) or lifts the protection (mode 0).
func UffdWriteprotect(fd int, start, length, mode uint64) error {
	wp := UffdioWriteprotect{Range: UffdioRange{Start: start, Len: length}, Mode: mode}
	_, err := Ioctl(fd, UFFDIO_WRITEPROTECT, &wp)
	return err
}
