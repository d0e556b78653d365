//! Filling a record: header, values read from user memory, stack sample.
//!
//! Everything that reads user memory goes through `bpf_probe_read_user`, so a
//! bad pointer in the traced program costs a missing detail, never a fault.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_F_USER_STACK, pt_regs},
    helpers::{
        bpf_get_smp_processor_id, bpf_get_stack, bpf_ktime_get_ns, bpf_probe_read_user,
        bpf_probe_read_user_str_bytes, bpf_send_signal,
        generated::bpf_probe_read_user as read_user_raw,
    },
    macros::map,
    maps::Array,
    programs::RawTracePointContext,
};
use fdtrace_common::{
    CLOSE_STACK_BYTES, Counter, EventHeader, EventKind, FLAG_FDS_TRUNCATED,
    FLAG_SAMPLE_AFTER_SHORT, FLAG_STACK_END, FLAG_STACK_FROM_SP, FLAG_STOPPED, MAX_EVENT_FDS,
    MAX_FP_FRAMES, MAX_STACK_BYTES, SHORT_HEADER, StackMode, TEXT_LEN,
};

use core::mem::offset_of;

use crate::{STACK_BYTES, STACK_MODE, add, count};

const HEADER: usize = size_of::<EventHeader>();
const SIGSTOP: u32 = 19;
const SOL_SOCKET: i32 = 1;
const SCM_RIGHTS: i32 = 1;
/// Bytes of `struct sockaddr` kept (enough for `sockaddr_in6` and most unix paths).
const SOCKADDR_MAX: u64 = 128;
/// `struct msghdr`: `msg_control` and `msg_controllen` (include/linux/socket.h, x86_64).
const MSGHDR_CONTROL: u64 = 32;
const MSGHDR_CONTROLLEN: u64 = 40;
/// `struct mmsghdr` is a msghdr (56 bytes) plus `unsigned int msg_len`, padded.
const MMSGHDR_SIZE: u64 = 64;
/// `struct cmsghdr`: `u64 cmsg_len; int level; int type;` then data.
const CMSG_HEADER: u64 = 16;
/// Control messages and recvmmsg messages looked at per call.
const MAX_CMSGS: usize = 4;
const MAX_MMSGS: i64 = 4;
const PAGE: u64 = 4096;
/// The largest main-thread stack (8 MiB, the usual RLIMIT_STACK) within
/// which sp is taken to be on it.
const MAIN_STACK_MAX: u64 = 8 << 20;

/// The first [`SHORT_HEADER`] bytes of an [`EventHeader`]: the whole record
/// for events that carry nothing after `stack_len`.
#[repr(C)]
pub struct ShortHeader {
    pub kind: u32,
    pub syscall: u32,
    pub tgid: u32,
    pub tid: u32,
    pub ts_ns: u64,
    pub ret: i64,
    pub args: [u64; 6],
    pub regs: [u64; 3],
    pub flags: u32,
    pub stack_len: u32,
}
const _: () = assert!(size_of::<ShortHeader>() == SHORT_HEADER);
const _: () =
    assert!(core::mem::offset_of!(ShortHeader, args) == core::mem::offset_of!(EventHeader, args));
const _: () =
    assert!(core::mem::offset_of!(ShortHeader, flags) == core::mem::offset_of!(EventHeader, flags));

/// Reserves and fills a short record of `kind`; `args` and `flags` as
/// given, the rest zero. Submitted by the caller.
#[inline(always)]
pub fn short_record(
    kind: EventKind,
    syscall: u32,
    tgid: u32,
    tid: u32,
    args: [u64; 6],
    flags: u32,
) -> Option<aya_ebpf::maps::ring_buf::RingBufEntry<ShortHeader>> {
    let Some(mut entry) = crate::EVENTS.reserve::<ShortHeader>(0) else {
        crate::dropped();
        return None;
    };
    let h = entry.as_mut_ptr();
    // SAFETY: a live reservation the size of `ShortHeader`; the helper
    // takes no arguments.
    unsafe {
        (*h).kind = kind as u32;
        (*h).syscall = syscall;
        (*h).tgid = tgid;
        (*h).tid = tid;
        (*h).ts_ns = bpf_ktime_get_ns();
        (*h).ret = 0;
        (*h).args = args;
        (*h).regs = [0; 3];
        (*h).flags = flags;
        (*h).stack_len = 0;
    }
    Some(entry)
}

/// # Safety
/// `header` must point to writable memory the size of `EventHeader`.
#[inline(always)]
pub unsafe fn init_header(
    header: *mut EventHeader,
    kind: EventKind,
    syscall: u32,
    tgid: u32,
    tid: u32,
) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        (*header).kind = kind as u32;
        (*header).syscall = syscall;
        (*header).tgid = tgid;
        (*header).tid = tid;
        (*header).ts_ns = bpf_ktime_get_ns();
        (*header).ret = 0;
        (*header).args = [0; 6];
        (*header).regs = [0; 3];
        (*header).flags = 0;
        (*header).stack_len = 0;
        (*header).fds = [-1; MAX_EVENT_FDS];
        (*header).nfds = 0;
        (*header).text_len = 0;
        (*header).nofile_limit = [0; 2];
    }
}

/// The largest record `sys_exit` writes: a header and the largest sample.
const RECORD_MAX: usize = HEADER + MAX_SAMPLE;
/// The largest sample: whole pages of the largest copy, or fp frames.
const MAX_SAMPLE: usize = (MAX_STACK_BYTES / PAGE as usize + 1) * PAGE as usize;
const _: () = assert!(MAX_FP_FRAMES * 8 <= MAX_SAMPLE);

/// One record under construction per CPU (userspace sizes the map to the
/// possible CPUs). `sys_exit` and `sys_enter` (for a close) use it; they do
/// not run at once on one CPU: a thread is in one syscall at a time, newer
/// kernels skip a nested run of the same program, and older ones run raw
/// tracepoint programs without preemption on the kernels distributions
/// ship. A fully preemptible kernel could still interleave two threads, so
/// `output` checks the record is this thread's.
#[map]
static SCRATCH: Array<[u8; RECORD_MAX]> = Array::with_max_entries(1, 0);

/// This CPU's scratch record, or None if the map has no slot for it.
#[inline(always)]
pub fn scratch() -> Option<*mut u8> {
    // SAFETY: the helper takes no arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    SCRATCH.get_ptr_mut(cpu).map(|p| p.cast::<u8>())
}

/// Copies the scratch `record` (header and `stack_len` bytes of sample)
/// into the ring buffer. False, counted as dropped, if the ring is full or
/// another thread's record took its place.
///
/// # Safety
/// `record` must come from [`scratch`] with an initialised header.
#[inline(always)]
pub unsafe fn output(record: *mut u8, tid: u32, flags: u64) -> bool {
    // SAFETY: guaranteed by the caller.
    unsafe { output_after(record, tid, flags, HEADER) }
}

/// [`output`] for a record whose sample follows its first `header` bytes
/// ([`HEADER`] or [`SHORT_HEADER`]).
///
/// # Safety
/// As for [`output`].
#[inline(always)]
unsafe fn output_after(record: *mut u8, tid: u32, flags: u64, header_len: usize) -> bool {
    let header = record.cast::<EventHeader>();
    // SAFETY: guaranteed by the caller.
    let (owner, sample) = unsafe { ((*header).tid, (*header).stack_len as usize) };
    if owner != tid {
        crate::dropped();
        return false;
    }
    let len = header_len + sample.min(MAX_SAMPLE);
    // SAFETY: `len` is at most the scratch record's size.
    let bytes = unsafe { core::slice::from_raw_parts(record, len) };
    if crate::EVENTS.output::<[u8]>(bytes, flags).is_err() {
        crate::dropped();
        return false;
    }
    true
}

/// Pages of user stack copied per event: enough whole pages, from the one
/// holding `sp`, to cover STACK_BYTES above `sp`.
#[inline(always)]
fn stack_pages() -> u64 {
    // SAFETY: plain reads of read-only globals set before load; the
    // verifier sees them as constants.
    let (mode, bytes) = unsafe {
        (
            core::ptr::read_volatile(&STACK_MODE),
            core::ptr::read_volatile(&STACK_BYTES),
        )
    };
    if mode != StackMode::Dwarf as u32 {
        return 0;
    }
    let bytes = u64::from(bytes).min(MAX_STACK_BYTES as u64);
    bytes.div_ceil(PAGE) + 1
}

/// # Safety
/// `header` must point to a writable `EventHeader`.
#[inline(always)]
pub unsafe fn user_str(header: *mut EventHeader, ptr: u64) {
    // SAFETY: user memory is read with the checked helper; `text` is TEXT_LEN bytes.
    unsafe {
        if let Ok(s) = bpf_probe_read_user_str_bytes(ptr as *const u8, &mut (*header).text) {
            (*header).text_len = s.len() as u32;
        }
    }
}

/// # Safety
/// `header` must point to a writable `EventHeader`.
#[inline(always)]
pub unsafe fn sockaddr(header: *mut EventHeader, ptr: u64, len: u64) {
    let len = if len > SOCKADDR_MAX {
        SOCKADDR_MAX
    } else {
        len
    };
    if ptr == 0 || len == 0 {
        return;
    }
    // SAFETY: reads at most SOCKADDR_MAX (< TEXT_LEN) bytes into `text`.
    unsafe {
        let dst = (&raw mut (*header).text).cast::<core::ffi::c_void>();
        if read_user_raw(dst, (len & 0xff) as u32, ptr as *const _) == 0 {
            (*header).text_len = len as u32;
        }
    }
}

/// accept/accept4 wrote the peer address and its length through user pointers.
///
/// # Safety
/// `header` must point to a writable `EventHeader`.
#[inline(always)]
pub unsafe fn accepted_sockaddr(header: *mut EventHeader, ptr: u64, len_ptr: u64) {
    if ptr == 0 || len_ptr == 0 {
        return;
    }
    // SAFETY: user pointer read with the checked helper.
    let len = unsafe { bpf_probe_read_user(len_ptr as *const u32) }.unwrap_or(0);
    // SAFETY: forwarded.
    unsafe { sockaddr(header, ptr, u64::from(len)) }
}

#[inline(always)]
unsafe fn push_fd(header: *mut EventHeader, fd: i32) {
    // SAFETY: `header` is valid per the caller; the index is bounds-checked.
    unsafe {
        let n = (*header).nfds as usize;
        if n < MAX_EVENT_FDS {
            (*header).fds[n] = fd;
            (*header).nfds = n as u32 + 1;
        } else {
            (*header).flags |= FLAG_FDS_TRUNCATED;
            count(Counter::DroppedFds);
        }
    }
}

/// pipe/pipe2/socketpair wrote `int[2]` through a user pointer.
///
/// # Safety
/// `header` must point to a writable `EventHeader`.
#[inline(always)]
pub unsafe fn fd_pair(header: *mut EventHeader, ptr: u64) {
    // SAFETY: user pointer read with the checked helper.
    if let Ok(pair) = unsafe { bpf_probe_read_user(ptr as *const [i32; 2]) } {
        // SAFETY: forwarded.
        unsafe {
            push_fd(header, pair[0]);
            push_fd(header, pair[1]);
        }
    }
}

/// Descriptors received in SCM_RIGHTS control messages of one `msghdr`.
///
/// # Safety
/// `header` must point to a writable `EventHeader`.
/// Whether a `struct msghdr` has a control buffer (room for SCM_RIGHTS).
#[inline(always)]
pub fn has_control(msghdr: u64) -> bool {
    // SAFETY: user memory read through the checked helper.
    let len = unsafe { bpf_probe_read_user((msghdr + MSGHDR_CONTROLLEN) as *const u64) };
    len.unwrap_or(0) > 0
}

#[inline(always)]
pub unsafe fn scm_rights(header: *mut EventHeader, msghdr: u64) {
    // SAFETY: user pointers read with the checked helper.
    unsafe {
        let control = bpf_probe_read_user((msghdr + MSGHDR_CONTROL) as *const u64).unwrap_or(0);
        // The kernel rewrote msg_controllen to what it actually filled.
        let controllen =
            bpf_probe_read_user((msghdr + MSGHDR_CONTROLLEN) as *const u64).unwrap_or(0);
        if control == 0 {
            return;
        }
        let mut offset = 0u64;
        for _ in 0..MAX_CMSGS {
            if offset + CMSG_HEADER > controllen {
                break;
            }
            let cmsg = control + offset;
            let Ok(len) = bpf_probe_read_user(cmsg as *const u64) else {
                break;
            };
            let Ok(level) = bpf_probe_read_user((cmsg + 8) as *const i32) else {
                break;
            };
            let Ok(kind) = bpf_probe_read_user((cmsg + 12) as *const i32) else {
                break;
            };
            if len < CMSG_HEADER {
                break;
            }
            if level == SOL_SOCKET && kind == SCM_RIGHTS {
                // All of the message's descriptors that fit, in one read:
                // a loop per fd multiplied the verifier's work by 16.
                let count = (len - CMSG_HEADER) / 4;
                let have = u64::from((*header).nfds).min(MAX_EVENT_FDS as u64);
                let n = count.min(MAX_EVENT_FDS as u64 - have);
                if n > 0 {
                    let dst = (&raw mut (*header).fds)
                        .cast::<i32>()
                        .add((have & (MAX_EVENT_FDS as u64 - 1)) as usize);
                    // `n` fds fit after the `have` already there, but
                    // verifiers before 6.x do not narrow `n` from the
                    // comparisons above: the mask bounds the copy for them,
                    // and the volatile read keeps LLVM from dropping it as
                    // redundant.
                    let size = core::ptr::read_volatile(&(n * 4)) & 0x7f;
                    if read_user_raw(dst.cast(), size as u32, (cmsg + CMSG_HEADER) as *const _) == 0
                    {
                        (*header).nfds = (have + n) as u32;
                    }
                }
                if count > n {
                    (*header).flags |= FLAG_FDS_TRUNCATED;
                    add(Counter::DroppedFds, count - n);
                }
            }
            offset += (len + 7) & !7;
        }
    }
}

/// recvmmsg: the first `received` messages of the `mmsghdr` array.
///
/// # Safety
/// `header` must point to a writable `EventHeader`.
#[inline(always)]
pub unsafe fn scm_rights_mmsg(header: *mut EventHeader, vec: u64, received: i64) {
    let mut i = 0;
    while i < MAX_MMSGS && i < received {
        // SAFETY: forwarded.
        unsafe { scm_rights(header, vec + i as u64 * MMSGHDR_SIZE) };
        i += 1;
    }
}

/// Stops the whole process when this syscall returns to user space: only
/// at an EMFILE failure, and only when the user asked (`--on-emfile stop`).
///
/// # Safety
/// `header` must point to a writable `EventHeader`.
#[inline(always)]
pub unsafe fn stop(header: *mut EventHeader) {
    // SAFETY: the caller guarantees `header`; the helper takes no memory.
    unsafe {
        if (*header).flags & FLAG_STOPPED == 0 && bpf_send_signal(SIGSTOP) == 0 {
            (*header).flags |= FLAG_STOPPED;
        }
    }
}

/// Captures the user registers and stack sample after the header at
/// `record`. Returns the sample's length.
///
/// # Safety
/// `record` must be a [`scratch`] record whose
/// header has been initialised.
#[inline(always)]
pub unsafe fn stack(ctx: &RawTracePointContext, record: *mut u8) -> u32 {
    let header = record.cast::<EventHeader>();
    // SAFETY: plain read of a global set before load.
    let mode = unsafe { core::ptr::read_volatile(&STACK_MODE) };
    if mode == StackMode::None as u32 {
        return 0;
    }
    let reg = |offset| crate::user_reg(ctx, offset).unwrap_or(0);
    let (ip, sp, bp) = (
        reg(offset_of!(pt_regs, rip)),
        reg(offset_of!(pt_regs, rsp)),
        reg(offset_of!(pt_regs, rbp)),
    );
    // SAFETY: `header` is valid per the caller.
    unsafe { (*header).regs = [ip, sp, bp] };
    // SAFETY: the reservation continues after the header.
    let sample = unsafe { record.add(size_of::<EventHeader>()) };
    if mode == StackMode::FramePointer as u32 {
        // SAFETY: the reservation holds MAX_FP_FRAMES u64 values there.
        let got = unsafe { fp_walk(ctx, sample) };
        // SAFETY: as above.
        unsafe { (*header).stack_len = got };
        return got;
    }
    // A main thread's frames all lie between sp and where its stack began
    // (`mm->start_stack`): copy exactly those bytes, often a few hundred
    // instead of three pages. A thread stack or an alternate signal stack
    // is elsewhere, and falls through to whole pages.
    // SAFETY: plain read of a read-only global.
    let budget =
        u64::from(unsafe { core::ptr::read_volatile(&STACK_BYTES) }).min(MAX_STACK_BYTES as u64);
    let top = crate::files::start_stack();
    if sp < top && top - sp <= MAIN_STACK_MAX {
        let len = bounded((top - sp).min(budget), MAX_STACK_BYTES as u64);
        // SAFETY: `len` is at most the sample's reserved size; the source
        // is only read through the checked helper.
        let ret = unsafe { read_user_raw(sample.cast(), len as u32, sp as *const _) };
        if ret == 0 {
            // SAFETY: `header` is valid per the caller.
            unsafe {
                (*header).flags |= FLAG_STACK_FROM_SP;
                if len == top - sp {
                    (*header).flags |= FLAG_STACK_END;
                }
                (*header).stack_len = len as u32;
            }
            return len as u32;
        }
    }
    // Whole pages from the one holding sp: constant offsets and sizes the
    // verifier can check, and a copy that ends cleanly where the stack's
    // mapping ends (a page is readable or not).
    let base = sp & !(PAGE - 1);
    let pages = stack_pages();
    let mut copied: u64 = 0;
    for i in 0..(MAX_STACK_BYTES as u64 / PAGE + 1) {
        if i >= pages {
            break;
        }
        // SAFETY: the reservation holds `pages` pages after the header.
        let ret = unsafe {
            read_user_raw(
                sample.add((i * PAGE) as usize).cast(),
                PAGE as u32,
                (base + i * PAGE) as *const _,
            )
        };
        if ret != 0 {
            // SAFETY: `header` is valid per the caller.
            unsafe { (*header).flags |= FLAG_STACK_END };
            break;
        }
        copied += PAGE;
    }
    // SAFETY: `header` is valid per the caller.
    unsafe { (*header).stack_len = copied as u32 };
    copied as u32
}

/// Writes a close's record: the short header and a compact close-site
/// sample after it: the registers and at most [`CLOSE_STACK_BYTES`] of
/// user stack from sp, enough for userspace to unwind (with CFI, whatever
/// `--stack` says) out of libc's `close` into its caller and a few frames
/// on. Not the kernel's frame-pointer walk, even with `--stack fp`: that
/// costs more per close (measured with bpf_stats: ~440 ns against ~160 ns
/// for the copy) and loses the caller. Kept by userspace until the number
/// is reused, so a later double close or use after close can say where it
/// was closed.
///
/// # Safety
/// `record` must come from [`scratch`] with an initialised header.
#[inline(always)]
pub unsafe fn close_site(ctx: &RawTracePointContext, record: *mut u8, tid: u32) -> bool {
    let header = record.cast::<EventHeader>();
    // SAFETY: plain read of a global set before load.
    let mode = unsafe { core::ptr::read_volatile(&STACK_MODE) };
    if mode != StackMode::None as u32 {
        let reg = |offset| crate::user_reg(ctx, offset).unwrap_or(0);
        let (ip, sp, bp) = (
            reg(offset_of!(pt_regs, rip)),
            reg(offset_of!(pt_regs, rsp)),
            reg(offset_of!(pt_regs, rbp)),
        );
        // SAFETY: `header` is valid per the caller; the scratch record
        // holds far more than SHORT_HEADER plus the largest close sample.
        unsafe {
            (*header).regs = [ip, sp, bp];
            (*header).flags |= FLAG_SAMPLE_AFTER_SHORT;
            let sample = record.add(SHORT_HEADER);
            (*header).stack_len = close_window(header, sample, sp);
        }
    }
    // SAFETY: guaranteed by the caller.
    unsafe { output_after(record, tid, crate::wakeup(false), SHORT_HEADER) }
}

/// The kernel's frame-pointer walk of the user stack into `sample`; the
/// bytes written.
///
/// # Safety
/// `sample` must hold [`MAX_FP_FRAMES`] u64 values.
#[inline(always)]
unsafe fn fp_walk(ctx: &RawTracePointContext, sample: *mut u8) -> u32 {
    // SAFETY: guaranteed by the caller.
    let got = unsafe {
        bpf_get_stack(
            ctx.as_ptr(),
            sample.cast(),
            (MAX_FP_FRAMES * 8) as u32,
            u64::from(BPF_F_USER_STACK),
        )
    };
    if got > 0 { got as u32 } else { 0 }
}

/// Up to [`CLOSE_STACK_BYTES`] of user stack from `sp` into `sample`: to
/// where a main thread's stack began if that is nearer, else to the end
/// of sp's page if the window runs off the stack's mapping.
///
/// # Safety
/// `header` must be valid and `sample` hold [`CLOSE_STACK_BYTES`].
#[inline(always)]
unsafe fn close_window(header: *mut EventHeader, sample: *mut u8, sp: u64) -> u32 {
    let top = crate::files::start_stack();
    let mut len = u64::from(CLOSE_STACK_BYTES);
    let mut end = false;
    if sp < top && top - sp <= len {
        len = top - sp;
        end = true;
    }
    len = bounded(len, u64::from(CLOSE_STACK_BYTES));
    // SAFETY: `len` is at most CLOSE_STACK_BYTES; user memory is only read
    // through the checked helper.
    let mut ret = unsafe { read_user_raw(sample.cast(), len as u32, sp as *const _) };
    if ret != 0 {
        len = bounded(
            (PAGE - (sp & (PAGE - 1))).min(u64::from(CLOSE_STACK_BYTES)),
            u64::from(CLOSE_STACK_BYTES),
        );
        end = true;
        // SAFETY: as above.
        ret = unsafe { read_user_raw(sample.cast(), len as u32, sp as *const _) };
    }
    if ret != 0 {
        return 0;
    }
    // SAFETY: valid per the caller.
    unsafe {
        (*header).flags |= FLAG_STACK_FROM_SP;
        if end {
            (*header).flags |= FLAG_STACK_END;
        }
    }
    len as u32
}

/// `len`, at most `max`, in a form every verifier can check before the
/// copy it sizes. The compiler knows `len` is already bounded and would
/// drop a plain check, or test one register and pass a copy of it to the
/// helper; verifiers before 5.11 do not carry a bound from one copy of a
/// register to another (5.10 refused exactly that). Read back through
/// memory, the value is one the compiler cannot reason about, so the
/// clamp stays, on the register the call then uses.
#[inline(always)]
fn bounded(len: u64, max: u64) -> u64 {
    // SAFETY: a read of a local.
    let len = unsafe { core::ptr::read_volatile(&len) };
    if len > max { max } else { len }
}

const _: () = assert!(SHORT_HEADER + CLOSE_STACK_BYTES as usize <= RECORD_MAX);
const _: () = assert!(TEXT_LEN as u64 >= SOCKADDR_MAX);
