//! Filling a record: header, values read from user memory, stack sample.
//!
//! Everything that reads user memory goes through `bpf_probe_read_user`, so a
//! bad pointer in the traced program costs a missing detail, never a fault.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_F_USER_STACK, pt_regs},
    helpers::{
        bpf_get_stack, bpf_ktime_get_ns, bpf_probe_read_user, bpf_probe_read_user_str_bytes,
        bpf_send_signal, generated::bpf_probe_read_user as read_user_raw,
    },
    programs::RawTracePointContext,
};
use fdtrace_common::{
    Counter, EventHeader, EventKind, FLAG_FDS_TRUNCATED, FLAG_STACK_END, FLAG_STOPPED,
    MAX_EVENT_FDS, MAX_FP_FRAMES, MAX_STACK_BYTES, StackMode, TEXT_LEN,
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

/// Size of a record that carries a stack sample; a constant for the
/// verifier, since it only depends on read-only globals.
#[inline(always)]
pub fn stack_record_size() -> usize {
    // SAFETY: plain read of a read-only global.
    let mode = unsafe { core::ptr::read_volatile(&STACK_MODE) };
    let sample = if mode == StackMode::FramePointer as u32 {
        (MAX_FP_FRAMES * 8) as u64
    } else {
        stack_pages() * PAGE
    };
    HEADER + sample as usize
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
/// `record` must be a reservation of `stack_record_size()` bytes whose
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
        // SAFETY: the destination holds MAX_FP_FRAMES u64 values.
        let got = unsafe {
            bpf_get_stack(
                ctx.as_ptr(),
                sample.cast(),
                (MAX_FP_FRAMES * 8) as u32,
                u64::from(BPF_F_USER_STACK),
            )
        };
        let got = if got > 0 { got as u32 } else { 0 };
        // SAFETY: as above.
        unsafe { (*header).stack_len = got };
        return got;
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

const _: () = assert!(TEXT_LEN as u64 >= SOCKADDR_MAX);
