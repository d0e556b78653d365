//! Files as the kernel sees them, recorded at the moment so userspace never
//! has to stop a process to look: the program an exec started (with its
//! load addresses from the new auxv), each executable mmap, and each
//! descriptor that arrives whole (SCM_RIGHTS, pidfd_getfd,
//! open_by_handle_at). A [`FileRecord`] carries the file's path from the
//! global root, built by walking dentries and mounts the way `d_path` does,
//! plus its inode, device and filesystem magic.
//!
//! Every struct offset comes from the running kernel's BTF
//! (`KERNEL_OFFSETS`, set by userspace before load), never from a header.

use aya_ebpf::helpers::{
    bpf_get_current_task, bpf_ktime_get_ns,
    generated::{bpf_probe_read_kernel as read_kernel_raw, bpf_probe_read_user as read_user_raw},
};
use fdtrace_common::{
    EventKind, FILE_ARGV_AT, FILE_ARGV_BYTES, FILE_NONE, FILE_PATH_BYTES, FILE_PATH_END,
    FILE_PATH_TRUNCATED, FNV_OFFSET, FNV_PRIME, FileRecord, FileUse, KERNEL_OFFSET_COUNT,
    KernelOffset, PyFile,
};

use crate::{EVENTS, python};

/// Set by userspace before load (`fdtrace_common::KERNEL_OFFSETS_GLOBAL`).
#[unsafe(no_mangle)]
static KERNEL_OFFSETS: [u32; KERNEL_OFFSET_COUNT] = [0; KERNEL_OFFSET_COUNT];

/// Path components walked at most; deeper paths keep their tail.
const MAX_COMPONENTS: usize = 24;
/// `AT_BASE` and `AT_ENTRY` (include/uapi/linux/auxvec.h).
const AT_BASE: u64 = 7;
const AT_ENTRY: u64 = 9;
/// auxv pairs searched: create_elf_tables writes AT_ENTRY among the first
/// dozen (fs/binfmt_elf.c), the array holds ~25.
const AUXV_PAIRS: usize = 24;
/// `RLIMIT_NOFILE`, and `sizeof(struct rlimit)`.
const RLIMIT_NOFILE: u64 = 7;
const RLIMIT_SIZE: u64 = 16;

/// The kernel's offset of a struct member.
#[inline(always)]
pub fn offset(which: KernelOffset) -> u64 {
    // SAFETY: plain read of a read-only global set before load; the index
    // is a constant below KERNEL_OFFSET_COUNT.
    u64::from(unsafe { core::ptr::read_volatile(&KERNEL_OFFSETS[which as usize]) })
}

/// Reads a `T` from kernel memory, zero when unreadable (the helper zeroes
/// its destination on failure). Not branched on, so the verifier's states
/// stay linear in the walk.
#[inline(always)]
pub fn read<T: Default>(addr: u64) -> T {
    let mut value = T::default();
    // SAFETY: the destination is a local of the size passed; the source is
    // only read through the checked helper.
    unsafe {
        read_kernel_raw(
            (&raw mut value).cast(),
            size_of::<T>() as u32,
            addr as *const core::ffi::c_void,
        )
    };
    value
}

fn current_task() -> u64 {
    // SAFETY: the helper takes no arguments.
    unsafe { bpf_get_current_task() }
}

/// The current process's `struct fdtable *` (`task->files->fdt`), 0 if none.
#[inline(always)]
pub fn fdtable() -> u64 {
    let files: u64 = read(current_task() + offset(KernelOffset::TaskFiles));
    if files == 0 {
        return 0;
    }
    read(files + offset(KernelOffset::FilesFdt))
}

/// The `struct file *` behind descriptor `fd` of the current process, 0 if
/// there is none (`task->files->fdt->fd[fd]`).
#[inline(always)]
pub fn fd_file(fd: i64) -> u64 {
    if fd < 0 {
        return 0;
    }
    let files: u64 = read(current_task() + offset(KernelOffset::TaskFiles));
    let fdt: u64 = read(files + offset(KernelOffset::FilesFdt));
    let max: u32 = read(fdt + offset(KernelOffset::FdtableMaxFds));
    if files == 0 || fdt == 0 || fd as u64 >= u64::from(max) {
        return 0;
    }
    let array: u64 = read(fdt + offset(KernelOffset::FdtableFd));
    read(array + 8 * fd as u64)
}

/// Whether the current thread's whole thread group has exited: do_exit
/// decrements `signal->live` before `sched_process_exit` fires, on every
/// kernel (the tracepoint's own `group_dead` argument only exists since
/// 6.16).
#[inline(always)]
pub fn group_dead() -> bool {
    let signal: u64 = read(current_task() + offset(KernelOffset::TaskSignal));
    signal != 0 && read::<i32>(signal + offset(KernelOffset::SignalLive)) == 0
}

/// `file->f_inode->i_ino`, 0 for no file.
#[inline(always)]
pub fn inode_number(file: u64) -> u64 {
    if file == 0 {
        return 0;
    }
    let inode: u64 = read(file + offset(KernelOffset::FileInode));
    read(inode + offset(KernelOffset::InodeIno))
}

/// Where the current process's main-thread stack began (`mm->start_stack`,
/// the address of argc), 0 without an mm.
#[inline(always)]
pub fn start_stack() -> u64 {
    let mm: u64 = read(current_task() + offset(KernelOffset::TaskMm));
    if mm == 0 {
        return 0;
    }
    read(mm + offset(KernelOffset::MmStartStack))
}

/// RLIMIT_NOFILE (soft, hard) of the current process.
#[inline(always)]
pub fn nofile_limit() -> [u64; 2] {
    let signal: u64 = read(current_task() + offset(KernelOffset::TaskSignal));
    let limit = signal + offset(KernelOffset::SignalRlim) + RLIMIT_NOFILE * RLIMIT_SIZE;
    [read(limit), read(limit + 8)]
}

/// `(AT_ENTRY, AT_BASE)` of the current process's auxv
/// (`mm->saved_auxv`, filled by the ELF loader before the exec tracepoint).
#[inline(always)]
pub fn entry_and_base() -> (u64, u64) {
    let mm: u64 = read(current_task() + offset(KernelOffset::TaskMm));
    let auxv = mm + offset(KernelOffset::MmSavedAuxv);
    let mut entry = 0;
    let mut base = 0;
    for i in 0..AUXV_PAIRS as u64 {
        let key: u64 = read(auxv + 16 * i);
        let value: u64 = read(auxv + 16 * i + 8);
        if key == AT_ENTRY {
            entry = value;
        } else if key == AT_BASE {
            base = value;
        }
    }
    (entry, base)
}

/// Writes a [`FileRecord`] about `file` (a `struct file *`, or 0 for no
/// file) for the current thread. `ids` is `tgid << 32 | tid`; `usage` is
/// the [`FileUse`] in its top byte and the record's third argument below;
/// `a0` and `a1` are its first two arguments.
///
/// A global BPF function: the verifier checks it once, on its own, and its
/// arguments are scalars, which every kernel from 5.10 accepts. It writes
/// into the ring reservation and keeps almost nothing on its stack, so it
/// adds little to any caller's combined stack.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn fdtrace_file_record(file: u64, ids: u64, usage: u64, a0: u64, a1: u64) -> u32 {
    let Some(mut entry) = EVENTS.reserve::<FileRecord>(0) else {
        // Loses a stack or a path, never a close: no loss time.
        crate::count(fdtrace_common::Counter::DroppedEvents);
        return 0;
    };
    let rec = entry.as_mut_ptr();
    let tgid = (ids >> 32) as u32;
    let kind = (usage >> 56) as u32;
    // SAFETY: `rec` is a live reservation of a whole FileRecord; every
    // write into `path` is masked to stay inside it.
    unsafe {
        (*rec).kind = EventKind::File as u32;
        (*rec).tgid = tgid;
        (*rec).tid = ids as u32;
        (*rec).usage = kind;
        (*rec).ts_ns = bpf_ktime_get_ns();
        (*rec).args = [a0, a1, usage & ((1 << 56) - 1)];
        (*rec).ino = 0;
        (*rec).magic = 0;
        (*rec).dev = 0;
        (*rec).mode = 0;
        (*rec).flags = 0;
        (*rec).path_start = FILE_PATH_END;
        (*rec).nofile_limit = [0; 2];
        if kind == FileUse::Exec as u32 {
            // What only this moment knows for sure: a short-lived program
            // may be gone before userspace could read /proc.
            (*rec).nofile_limit = nofile_limit();
            let mm: u64 = read(current_task() + offset(KernelOffset::TaskMm));
            let start: u64 = read(mm + offset(KernelOffset::MmArgStart));
            let end: u64 = read(mm + offset(KernelOffset::MmArgEnd));
            let len = end.saturating_sub(start).min(FILE_ARGV_BYTES as u64 - 1);
            let argv = (&raw mut (*rec).path).cast::<u8>().add(FILE_ARGV_AT);
            if read_user_raw(argv.cast(), (len & 0x1ff) as u32, start as *const _) == 0 {
                (*rec).args[2] = len;
            }
        }
        if file == 0 {
            (*rec).flags = FILE_NONE;
            entry.submit(0);
            return 0;
        }
        let inode: u64 = read(file + offset(KernelOffset::FileInode));
        let sb: u64 = read(inode + offset(KernelOffset::InodeSb));
        (*rec).ino = read(inode + offset(KernelOffset::InodeIno));
        (*rec).mode = u32::from(read::<u16>(inode + offset(KernelOffset::InodeMode)));
        (*rec).magic = read(sb + offset(KernelOffset::SbMagic));
        (*rec).dev = read(sb + offset(KernelOffset::SbDev));
        let path = (&raw mut (*rec).path).cast::<u8>();
        let (start, truncated) = walk_path(file, path);
        (*rec).path_start = start;
        if truncated {
            (*rec).flags |= FILE_PATH_TRUNCATED;
        }
        if kind != FileUse::Received as u32
            && !truncated
            && !python::file_mapped(
                tgid,
                path_identity(path, start),
                a0,
                a1,
                kind == FileUse::Exec as u32,
            )
            && python::named_like_python(name_head(file))
        {
            python::hint(tgid);
        }
    }
    entry.submit(0);
    0
}

/// The first eight bytes of `file`'s name (its dentry's), zero-padded.
#[inline(always)]
fn name_head(file: u64) -> u64 {
    let dentry: u64 = read(file + offset(KernelOffset::FilePath) + 8);
    let chars: u64 = read(dentry + offset(KernelOffset::DentryName) + 8);
    let len: u32 = read(dentry + offset(KernelOffset::DentryName) + 4);
    let head: u64 = read(chars);
    match len {
        0..8 => head & ((1u64 << (8 * len)) - 1),
        _ => head,
    }
}

/// The [`PyFile`] of the path in `buf[start..FILE_PATH_END]`: FNV-1a, as
/// `PyFile::of_path` computes it in userspace.
///
/// # Safety
/// `buf` must be readable for `FILE_PATH_BYTES` bytes.
#[inline(always)]
unsafe fn path_identity(buf: *const u8, start: u32) -> PyFile {
    let mut hash = FNV_OFFSET;
    for i in 0..FILE_PATH_END {
        let at = start + i;
        if at >= FILE_PATH_END {
            break;
        }
        // SAFETY: `at` < FILE_PATH_END <= FILE_PATH_BYTES; the mask
        // restates that for the verifier.
        let byte = unsafe { *buf.add((at & (FILE_PATH_END - 1)) as usize) };
        hash = (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME);
    }
    PyFile {
        path_hash: hash,
        path_len: FILE_PATH_END - start,
        _pad: 0,
    }
}

/// Writes `file`'s path so that it ends at `FILE_PATH_END` in `buf`, one
/// component at a time from the last, crossing from each mount's root to
/// its mount point as `prepend_path` does (fs/d_path.c). A pseudo file
/// (pipe, socket, anonymous inode) is its own parent: its one component is
/// its name. Returns where the path starts and whether it was cut.
///
/// # Safety
/// `buf` must be writable for `FILE_PATH_BYTES` bytes.
#[inline(always)]
unsafe fn walk_path(file: u64, buf: *mut u8) -> (u32, bool) {
    let path = file + offset(KernelOffset::FilePath);
    let mut mnt: u64 = read(path);
    let mut dentry: u64 = read(path + 8);
    let mut mount = mnt.wrapping_sub(offset(KernelOffset::MountMnt));
    let mut start = FILE_PATH_END;
    for _ in 0..MAX_COMPONENTS {
        let root: u64 = read(mnt + offset(KernelOffset::VfsmountRoot));
        if dentry == root {
            let parent: u64 = read(mount + offset(KernelOffset::MountParent));
            if parent == mount || parent == 0 {
                return (start, false);
            }
            dentry = read(mount + offset(KernelOffset::MountMountpoint));
            mount = parent;
            mnt = mount + offset(KernelOffset::MountMnt);
            continue;
        }
        let parent: u64 = read(dentry + offset(KernelOffset::DentryParent));
        let name = dentry + offset(KernelOffset::DentryName);
        let len = u64::from(read::<u32>(name + 4));
        let chars: u64 = read(name + 8);
        if len + 1 > u64::from(start) || len > 255 {
            return (start, true);
        }
        let at = (u64::from(start) - len - 1) & (FILE_PATH_END as u64 - 1);
        // SAFETY: `at` < 512 and `len` <= 255, so the copy and the slash
        // stay inside the buffer's FILE_PATH_BYTES (1024) bytes.
        unsafe {
            read_kernel_raw(
                buf.add(at as usize + 1).cast(),
                (len & 0xff) as u32,
                chars as *const core::ffi::c_void,
            );
            *buf.add(at as usize) = b'/';
        }
        start = at as u32;
        if parent == dentry || parent == 0 {
            return (start, false);
        }
        dentry = parent;
    }
    (start, true)
}

const _: () = assert!(FILE_PATH_END as usize + 256 <= FILE_PATH_BYTES);
