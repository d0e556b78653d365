//! Which inherited descriptors a new program actually uses.
//!
//! A descriptor that crosses exec without CLOEXEC is either handed over on
//! purpose (a shell's redirection, make's jobserver, a socket-activated
//! listener) or leaked into a program that never heard of it. The
//! difference is whether the program touches it. At exec the kernel's own
//! open-descriptor bitmap says what was inherited; each syscall that names
//! one of those descriptors clears its bit and writes one [`EventKind::Use`]
//! record, so a descriptor costs one record however often it is used.
//! Processes with nothing inherited (above 0, 1, 2) have no entry and pay
//! one failed map lookup per syscall.

use aya_ebpf::{
    helpers::generated::bpf_probe_read_kernel as read_kernel_raw, macros::map, maps::HashMap,
    programs::RawTracePointContext,
};
use fdtrace_common::{
    Counter, EventKind, INHERITED_FDS, INHERITED_WORDS, KernelOffset, NO_ARG, fd_arguments,
};

use crate::{capture, files, lost, syscall_args, wakeup};

type Bitmap = [u64; INHERITED_WORDS];

/// Thread-group id -> inherited descriptors not used since its last exec.
#[map]
static INHERITED: HashMap<u32, Bitmap> = HashMap::with_max_entries(16384, 0);

static EMPTY: Bitmap = [0; INHERITED_WORDS];

/// At exec (after close-on-exec descriptors are gone): every descriptor
/// still open above the standard streams was inherited.
pub fn exec(tgid: u32) {
    let fdt = files::fdtable();
    if fdt == 0 {
        let _ = INHERITED.remove(tgid);
        return;
    }
    let max_fds = files::read::<u32>(fdt + files::offset(KernelOffset::FdtableMaxFds));
    let open_fds = files::read::<u64>(fdt + files::offset(KernelOffset::FdtableOpenFds));
    #[expect(
        clippy::needless_borrows_for_generic_args,
        reason = "the static's address, not a 128-byte copy on the stack"
    )]
    let inserted = INHERITED.insert(tgid, &EMPTY, 0);
    if inserted.is_err() {
        // Its uses go unseen: any exec-leak of it is in doubt.
        lost(Counter::DroppedArgs);
        return;
    }
    let Some(bits) = INHERITED.get_ptr_mut(tgid) else {
        return;
    };
    // The bitmap is `max_fds` bits (a multiple of 64, at least 64): words
    // past it are not the table's and stay zero.
    let words = (max_fds / 64).min(INHERITED_WORDS as u32);
    // SAFETY: `bits` is a live map value of `size_of::<Bitmap>()` bytes;
    // the source is only read through the checked helper.
    unsafe {
        read_kernel_raw(bits.cast(), words * 8, open_fds as *const core::ffi::c_void);
        // Standard streams are the program's own by convention.
        (*bits)[0] &= !0b111;
    }
    // Nothing inherited: no entry, no lookup cost per syscall.
    let mut any = 0;
    for i in 0..INHERITED_WORDS {
        // SAFETY: as above; `i` is below the array's length.
        any |= unsafe { (*bits)[i] };
    }
    if any == 0 {
        let _ = INHERITED.remove(tgid);
    }
}

/// A forked child starts with its parent's descriptors, so with what is
/// left of its parent's inherited set.
pub fn fork(parent: u32, child: u32) {
    // SAFETY: a map value pointer, used only as the insert's source.
    if let Some(bits) = unsafe { INHERITED.get(parent) } {
        let _ = INHERITED.insert(child, bits, 0);
    }
}

pub fn exit(tgid: u32) {
    let _ = INHERITED.remove(tgid);
}

/// Syscall `nr` is about to run in `tgid`.
#[inline(always)]
pub fn syscall(ctx: &RawTracePointContext, tgid: u32, tid: u32, nr: u64) -> Result<(), i64> {
    let (first, second) = fd_arguments(nr);
    if first == NO_ARG {
        return Ok(());
    }
    let args = &syscall_args(ctx)?.args;
    let (first, second) = (argument(args, first), argument(args, second));
    // Most calls name no inheritable descriptor (AT_FDCWD, a new fd above
    // the range): no map lookup for them.
    if first >= INHERITED_FDS as u64 && second >= INHERITED_FDS as u64 {
        return Ok(());
    }
    let Some(bits) = INHERITED.get_ptr_mut(tgid) else {
        return Ok(());
    };
    check(bits, tgid, tid, first);
    check(bits, tgid, tid, second);
    Ok(())
}

/// Argument `i` of `args`; for [`NO_ARG`] (or an index no table uses) a
/// value past every descriptor. Plain indexes, not `Option`s: a `None`'s
/// payload is uninitialised stack, which verifiers before 6.x refuse to
/// let a program read.
#[inline(always)]
fn argument(args: &[u64; 6], i: usize) -> u64 {
    match i {
        0 => args[0],
        1 => args[1],
        2 => args[2],
        4 => args[4],
        _ => u64::MAX,
    }
}

#[inline(always)]
fn check(bits: *mut Bitmap, tgid: u32, tid: u32, fd: u64) {
    // A negative fd (AT_FDCWD, -1) is far above the range as a u64.
    if fd >= INHERITED_FDS as u64 {
        return;
    }
    let word = (fd / 64) as usize & (INHERITED_WORDS - 1);
    let mask = 1u64 << (fd % 64);
    // SAFETY: `bits` is a live map value; `word` is masked into range.
    if unsafe { (*bits)[word] } & mask == 0 {
        return;
    }
    // A failed write leaves the bit: the next use is reported instead.
    let Some(entry) = capture::short_record(EventKind::Use, 0, tgid, tid, [fd, 0, 0, 0, 0, 0], 0)
    else {
        return;
    };
    // SAFETY: as above.
    unsafe { (*bits)[word] &= !mask };
    entry.submit(wakeup(false));
}
