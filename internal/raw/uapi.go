//go:build linux

package raw

// Kernel ABI that golang.org/x/sys/unix does not define, in one place. Names
// are the uapi names, so that a grep for the C name finds the Go one; each
// comment names the header. Values are for x86-64 and were checked against
// Linux 6.18 (include/uapi/linux/userfaultfd.h, fs.h, tcp.h, sched.h,
// prctl.h) and the sizes of the structs are asserted in sizes_unsafe.go.

// userfaultfd, include/uapi/linux/userfaultfd.h.
const (
	UFFD_API = 0xAA // struct uffdio_api.api

	// UFFD_USER_MODE_ONLY is a flag of userfaultfd(2): handle only faults
	// from user mode. Not wanted for dirty tracking: kernel writes into the
	// tracee (read(2) into a buffer) must be seen too.
	UFFD_USER_MODE_ONLY = 1

	USERFAULTFD_IOC_NEW = 0xAA00 // _IO(0xAA, 0x00), ioctl on /dev/userfaultfd

	UFFDIO_API          = 0xc018aa3f // _IOWR(0xAA, 0x3F, struct uffdio_api)
	UFFDIO_REGISTER     = 0xc020aa00 // _IOWR(0xAA, 0x00, struct uffdio_register)
	UFFDIO_UNREGISTER   = 0x8010aa01 // _IOR(0xAA, 0x01, struct uffdio_range)
	UFFDIO_WRITEPROTECT = 0xc018aa06 // _IOWR(0xAA, 0x06, struct uffdio_writeprotect)

	UFFDIO_REGISTER_MODE_MISSING = 1 << 0
	UFFDIO_REGISTER_MODE_WP      = 1 << 1
	UFFDIO_REGISTER_MODE_MINOR   = 1 << 2

	UFFDIO_WRITEPROTECT_MODE_WP       = 1 << 0
	UFFDIO_WRITEPROTECT_MODE_DONTWAKE = 1 << 1

	UFFD_FEATURE_PAGEFAULT_FLAG_WP  = 1 << 0
	UFFD_FEATURE_EVENT_FORK         = 1 << 1
	UFFD_FEATURE_EVENT_REMAP        = 1 << 2
	UFFD_FEATURE_EVENT_REMOVE       = 1 << 3
	UFFD_FEATURE_MISSING_HUGETLBFS  = 1 << 4
	UFFD_FEATURE_MISSING_SHMEM      = 1 << 5
	UFFD_FEATURE_EVENT_UNMAP        = 1 << 6
	UFFD_FEATURE_SIGBUS             = 1 << 7
	UFFD_FEATURE_THREAD_ID          = 1 << 8
	UFFD_FEATURE_MINOR_HUGETLBFS    = 1 << 9
	UFFD_FEATURE_MINOR_SHMEM        = 1 << 10
	UFFD_FEATURE_EXACT_ADDRESS      = 1 << 11
	UFFD_FEATURE_WP_HUGETLBFS_SHMEM = 1 << 12
	UFFD_FEATURE_WP_UNPOPULATED     = 1 << 13
	UFFD_FEATURE_POISON             = 1 << 14
	UFFD_FEATURE_WP_ASYNC           = 1 << 15 // Linux 6.7
	UFFD_FEATURE_MOVE               = 1 << 16
)

// UffdioAPI is struct uffdio_api.
type UffdioAPI struct {
	API      uint64
	Features uint64
	Ioctls   uint64
}

// UffdioRange is struct uffdio_range.
type UffdioRange struct {
	Start uint64
	Len   uint64
}

// UffdioRegister is struct uffdio_register.
type UffdioRegister struct {
	Range  UffdioRange
	Mode   uint64
	Ioctls uint64 // written by the kernel
}

// UffdioWriteprotect is struct uffdio_writeprotect.
type UffdioWriteprotect struct {
	Range UffdioRange
	Mode  uint64
}

// PAGEMAP_SCAN, include/uapi/linux/fs.h (Linux 6.7).
const (
	PAGEMAP_SCAN = 0xc0606610 // _IOWR('f', 16, struct pm_scan_arg)

	// Categories of pm_scan_arg masks and page_region.categories.
	PAGE_IS_WPALLOWED  = 1 << 0
	PAGE_IS_WRITTEN    = 1 << 1
	PAGE_IS_FILE       = 1 << 2
	PAGE_IS_PRESENT    = 1 << 3
	PAGE_IS_SWAPPED    = 1 << 4
	PAGE_IS_PFNZERO    = 1 << 5
	PAGE_IS_HUGE       = 1 << 6
	PAGE_IS_SOFT_DIRTY = 1 << 7

	// pm_scan_arg.flags
	PM_SCAN_WP_MATCHING   = 1 << 0 // write-protect the matched pages
	PM_SCAN_CHECK_WPASYNC = 1 << 1 // fail on a page without async WP
)

// PageRegion is struct page_region.
type PageRegion struct {
	Start      uint64
	End        uint64 // exclusive
	Categories uint64
}

// PmScanArg is struct pm_scan_arg. Size must be set to its size (96).
type PmScanArg struct {
	Size              uint64
	Flags             uint64
	Start             uint64
	End               uint64
	WalkEnd           uint64 // written by the kernel: where the walk stopped
	Vec               uint64 // address of a []PageRegion
	VecLen            uint64
	MaxPages          uint64
	CategoryInverted  uint64
	CategoryMask      uint64
	CategoryAnyofMask uint64
	ReturnMask        uint64
}

// Bits of a /proc/PID/pagemap entry, Documentation/admin-guide/mm/pagemap.rst
// (the kernel's names are PM_* in fs/proc/task_mmu.c, not uapi).
const (
	PM_PFN_MASK       = 1<<55 - 1
	PM_SOFT_DIRTY     = 1 << 55
	PM_MMAP_EXCLUSIVE = 1 << 56
	PM_UFFD_WP        = 1 << 57
	PM_FILE           = 1 << 61
	PM_SWAP           = 1 << 62
	PM_PRESENT        = 1 << 63
)

// TCP repair, include/uapi/linux/tcp.h. TCP_REPAIR, TCP_REPAIR_QUEUE,
// TCP_QUEUE_SEQ, TCP_REPAIR_OPTIONS and TCP_REPAIR_WINDOW are in x/sys/unix.
const (
	TCP_NO_QUEUE   = 0
	TCP_RECV_QUEUE = 1
	TCP_SEND_QUEUE = 2

	TCP_REPAIR_ON        = 1
	TCP_REPAIR_OFF       = 0
	TCP_REPAIR_OFF_NO_WP = -1 // turn repair off without a window probe
)

// clone3, include/uapi/linux/sched.h.
const (
	CLONE_ARGS_SIZE_VER0 = 64 // up to tls
	CLONE_ARGS_SIZE_VER1 = 80 // adds set_tid, set_tid_size
	CLONE_ARGS_SIZE_VER2 = 88 // adds cgroup
)

// CloneArgs is struct clone_args.
type CloneArgs struct {
	Flags      uint64
	Pidfd      uint64 // address of an int
	ChildTID   uint64
	ParentTID  uint64
	ExitSignal uint64
	Stack      uint64
	StackSize  uint64
	TLS        uint64
	SetTID     uint64 // address of a []int32, one pid per pid namespace level
	SetTIDSize uint64
	Cgroup     uint64
}

// PrctlMMMap is struct prctl_mm_map, include/uapi/linux/prctl.h, the
// argument of prctl(PR_SET_MM, PR_SET_MM_MAP, &map, sizeof(map), 0).
type PrctlMMMap struct {
	StartCode  uint64
	EndCode    uint64
	StartData  uint64
	EndData    uint64
	StartBrk   uint64
	Brk        uint64
	StartStack uint64
	ArgStart   uint64
	ArgEnd     uint64
	EnvStart   uint64
	EnvEnd     uint64
	Auxv       uint64 // address of the auxv words
	AuxvSize   uint32 // in bytes
	ExeFD      uint32 // an fd of the new /proc/PID/exe, or ^uint32(0) to keep it
}

// F_OWNER_* are the owner types of struct f_owner_ex, include/uapi/asm-generic/fcntl.h.
const (
	F_OWNER_TID  = 0
	F_OWNER_PID  = 1
	F_OWNER_PGRP = 2
)

// FOwnerEx is struct f_owner_ex, include/uapi/asm-generic/fcntl.h, the
// argument of fcntl F_GETOWN_EX and F_SETOWN_EX.
type FOwnerEx struct {
	Type int32 // F_OWNER_*
	PID  int32
}
