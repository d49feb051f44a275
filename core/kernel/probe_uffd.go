package kernel

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

const uffdPages = 4

// ProbeUffdWP checks dirty tracking with userfaultfd in async write-protect
// mode and PAGEMAP_SCAN, driven from outside the tracked process as the
// dumper drives it: a helper child creates a userfaultfd and maps four
// pages (three written, one never touched); this process takes the
// userfaultfd with pidfd_getfd, enables UFFD_FEATURE_WP_ASYNC, registers and
// write-protects the pages, and then, twice, has the child write one page
// and checks that a PAGEMAP_SCAN of the child's pagemap (PM_SCAN_WP_MATCHING
// | PM_SCAN_CHECK_WPASYNC, category PAGE_IS_WRITTEN) reports exactly that
// page and protects it again.
func ProbeUffdWP(ctx context.Context) (string, error) {
	supported, err := uffdFeatures()
	if err != nil {
		return "", err
	}
	if supported&UFFD_FEATURE_WP_ASYNC == 0 {
		return "", unsupported(FeatureUffdWP, fmt.Sprintf("UFFD_FEATURE_WP_ASYNC missing (features %#x); needs Linux 6.7", supported), nil)
	}

	h, kv, err := askHelper(ctx, "uffd", FeatureUffdWP, "userfaultfd in a child")
	if err != nil {
		return "", err
	}
	defer h.kill()
	addr, err1 := strconv.ParseUint(kv["addr"], 0, 64)
	childFD, err2 := strconv.Atoi(kv["fd"])
	if err := errors.Join(err1, err2); err != nil {
		return "", fmt.Errorf("helper answer %v: %w", kv, err)
	}
	pageSize := uint64(os.Getpagesize())
	length := uffdPages * pageSize

	pidfd, err := unix.PidfdOpen(h.pid(), 0)
	if err != nil {
		return "", unsupported(FeatureUffdWP, "pidfd_open, needed to take the child's userfaultfd", err)
	}
	defer unix.Close(pidfd)
	uffd, err := unix.PidfdGetfd(pidfd, childFD, 0)
	if err != nil {
		return "", unsupported(FeatureUffdWP, "pidfd_getfd of the child's userfaultfd", err)
	}
	defer unix.Close(uffd)

	want := uint64(UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED)
	if supported&UFFD_FEATURE_WP_HUGETLBFS_SHMEM != 0 {
		want |= UFFD_FEATURE_WP_HUGETLBFS_SHMEM
	}
	api := UffdioAPI{API: UFFD_API, Features: want}
	if _, err := ioctlPtr(uffd, UFFDIO_API, &api); err != nil {
		return "", unsupported(FeatureUffdWP, fmt.Sprintf("UFFDIO_API with features %#x", want), err)
	}
	reg := UffdioRegister{Range: UffdioRange{Start: addr, Len: length}, Mode: UFFDIO_REGISTER_MODE_WP}
	if _, err := ioctlPtr(uffd, UFFDIO_REGISTER, &reg); err != nil {
		return "", unsupported(FeatureUffdWP, "UFFDIO_REGISTER in MODE_WP on the child's pages", err)
	}
	wp := UffdioWriteprotect{Range: UffdioRange{Start: addr, Len: length}, Mode: UFFDIO_WRITEPROTECT_MODE_WP}
	if _, err := ioctlPtr(uffd, UFFDIO_WRITEPROTECT, &wp); err != nil {
		return "", unsupported(FeatureUffdWP, "UFFDIO_WRITEPROTECT", err)
	}

	pm, err := os.Open(fmt.Sprintf("/proc/%d/pagemap", h.pid()))
	if err != nil {
		return "", err
	}
	defer pm.Close()
	scan := func() ([]PageRegion, error) {
		vec := make([]PageRegion, 8)
		got, walkEnd, err := pagemapScan(int(pm.Fd()), PmScanArg{
			Flags:        PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
			Start:        addr,
			End:          addr + length,
			CategoryMask: PAGE_IS_WRITTEN,
			ReturnMask:   PAGE_IS_WRITTEN,
		}, vec)
		if err != nil {
			return nil, unsupported(FeatureUffdWP, "PAGEMAP_SCAN", err)
		}
		if walkEnd != addr+length {
			return nil, unsupported(FeatureUffdWP, fmt.Sprintf("PAGEMAP_SCAN stopped at %#x, before %#x", walkEnd, addr+length), nil)
		}
		return got, nil
	}
	expect := func(step string, page int) error {
		got, err := scan()
		if err != nil {
			return err
		}
		var wantRegions []PageRegion
		if page >= 0 {
			start := addr + uint64(page)*pageSize
			wantRegions = []PageRegion{{Start: start, End: start + pageSize, Categories: PAGE_IS_WRITTEN}}
		}
		if fmt.Sprint(got) != fmt.Sprint(wantRegions) {
			return unsupported(FeatureUffdWP, fmt.Sprintf("%s: PAGEMAP_SCAN reported %s, want %s", step, regionsString(got, addr), regionsString(wantRegions, addr)), nil)
		}
		return nil
	}
	if err := expect("right after UFFDIO_WRITEPROTECT", -1); err != nil {
		return "", err
	}
	// Page 1 was populated before the protection; page 3 never was
	// (UFFD_FEATURE_WP_UNPOPULATED). The second round also shows that the
	// first scan protected page 1 again.
	for _, page := range []int{1, 3} {
		line, err := h.call(fmt.Sprintf("write %d", page))
		if err != nil {
			return "", err
		}
		if _, err := parseAnswer(line); err != nil {
			return "", err
		}
		if err := expect(fmt.Sprintf("after a write to page %d", page), page); err != nil {
			return "", err
		}
	}
	if err := h.close(); err != nil {
		return "", err
	}
	return fmt.Sprintf("%s enabled (kernel offers features %#x); written pages reported exactly, re-protected by the scan", uffdFeatureNames(want), api.Features), nil
}

// uffdFeatureNames names the write-protect features in f.
func uffdFeatureNames(f uint64) string {
	var names []string
	for _, n := range []struct {
		bit  uint64
		name string
	}{
		{UFFD_FEATURE_WP_ASYNC, "WP_ASYNC"},
		{UFFD_FEATURE_WP_UNPOPULATED, "WP_UNPOPULATED"},
		{UFFD_FEATURE_WP_HUGETLBFS_SHMEM, "WP_HUGETLBFS_SHMEM"},
	} {
		if f&n.bit != 0 {
			names = append(names, n.name)
		}
	}
	return strings.Join(names, "|")
}

// regionsString prints regions as page offsets from base.
func regionsString(rs []PageRegion, base uint64) string {
	if len(rs) == 0 {
		return "nothing"
	}
	ps := uint64(os.Getpagesize())
	s := ""
	for i, r := range rs {
		if i > 0 {
			s += ", "
		}
		s += fmt.Sprintf("pages %d-%d (categories %#x)", (r.Start-base)/ps, (r.End-base)/ps-1, r.Categories)
	}
	return s
}

// uffdFeatures asks the kernel which userfaultfd features it has, with a
// throwaway userfaultfd: UFFDIO_API may be called once per userfaultfd, and
// a call with no features answers with all of them.
func uffdFeatures() (uint64, error) {
	fd, _, err := openUserfaultfd()
	if err != nil {
		return 0, unsupported(FeatureUffdWP, "userfaultfd", err)
	}
	defer unix.Close(fd)
	api := UffdioAPI{API: UFFD_API}
	if _, err := ioctlPtr(fd, UFFDIO_API, &api); err != nil {
		return 0, unsupported(FeatureUffdWP, "UFFDIO_API", err)
	}
	return api.Features, nil
}

// openUserfaultfd creates a userfaultfd (O_CLOEXEC|O_NONBLOCK) with the
// system call, or through /dev/userfaultfd when the system call is refused
// (vm.unprivileged_userfaultfd=0 without CAP_SYS_PTRACE) or missing. via
// says which worked.
func openUserfaultfd() (fd int, via string, err error) {
	const flags = unix.O_CLOEXEC | unix.O_NONBLOCK
	r, _, e := unix.Syscall(unix.SYS_USERFAULTFD, flags, 0, 0)
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
	r, _, e2 := unix.Syscall(unix.SYS_IOCTL, uintptr(dev), USERFAULTFD_IOC_NEW, flags)
	if e2 != 0 {
		return -1, "", fmt.Errorf("userfaultfd: %w; USERFAULTFD_IOC_NEW: %w", e, e2)
	}
	return int(r), "/dev/userfaultfd", nil
}

func helperUffd(say func(string, ...any), cmds *bufio.Scanner) {
	ps := os.Getpagesize()
	mem, err := unix.Mmap(-1, 0, uffdPages*ps, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		sayErr(say, "mmap", err)
		return
	}
	// Never unmapped: the parent scans these pages until the helper exits.
	for p := range uffdPages - 1 {
		mem[p*ps] = 1
	}
	fd, via, err := openUserfaultfd()
	if err != nil {
		sayErr(say, "userfaultfd", err)
		return
	}
	say("ok addr=%#x fd=%d via=%s", addrOf(mem), fd, via)
	for cmds.Scan() {
		var page int
		if _, err := fmt.Sscanf(cmds.Text(), "write %d", &page); err != nil || page < 0 || page >= uffdPages {
			say("err bad command %q", cmds.Text())
			continue
		}
		mem[page*ps]++
		say("ok")
	}
}
