//! Kernel side: syscall and sched tracepoints -> ring buffer.
//!
//! Only processes whose thread-group id is in `TRACED` produce events;
//! children are added here, at fork, so a child's first syscall is never
//! missed. The raw `sys_enter` program stashes the arguments of the calls we
//! follow per thread; `sys_exit` reads them back, adds the result (and for
//! descriptor creations and EMFILE/ENFILE failures a stack sample) and
//! writes one record. Every failed ring-buffer write bumps a counter that
//! the report prints.
//!
//! Raw syscall tracepoints rather than one `syscalls/sys_*_<name>` event per
//! call: two attachments instead of ~80, and detaching a perf tracepoint
//! costs a ~70 ms RCU grace period each, which made every run 6 s longer.
#![no_std]
#![no_main]

mod capture;
mod deferred;
mod files;
mod python;
mod uses;

use core::{mem::offset_of, ptr::read_volatile};

use aya_ebpf::{
    bindings::{
        BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE, pt_regs,
    },
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_probe_read_kernel_str_bytes, bpf_probe_read_user,
    },
    macros::{map, raw_tracepoint},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::RawTracePointContext,
};
use fdtrace_common::{
    COUNTER_SLOTS, Counter, EventHeader, EventKind, FD_SETSIZE, FLAG_STACK_SKIPPED, FLAG_STOPPED,
    FileUse, KernelOffset, MAX_EVENT_FDS, StackMode, Syscall, SyscallArgs, nr,
};

#[map]
/// Sized by userspace (`load.rs`) before load.
static EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024 * 1024, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// Thread-group ids being traced; the value is unused.
#[map]
static TRACED: HashMap<u32, u32> = HashMap::with_max_entries(65536, 0);

/// Arguments from `sys_enter_*`, keyed by thread id.
#[map]
static PENDING: HashMap<u32, Pending> = HashMap::with_max_entries(65536, 0);

/// Set by userspace before load (`fdtrace_common::STACK_MODE_GLOBAL`).
#[unsafe(no_mangle)]
static STACK_MODE: u32 = 2;
/// Set by userspace before load (`fdtrace_common::STACK_BYTES_GLOBAL`).
#[unsafe(no_mangle)]
static STACK_BYTES: u32 = 8192;
/// Offsets userspace reads from the kernel's BTF before load
/// (`fdtrace_common::TASK_PID_OFFSET_GLOBAL` and friends).
#[unsafe(no_mangle)]
static TASK_PID_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static TASK_TGID_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static BPRM_FILENAME_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static TASK_FSBASE_OFFSET: u32 = 0;
/// Set by userspace before load (`fdtrace_common::EMFILE_STOP_GLOBAL`).
#[unsafe(no_mangle)]
static EMFILE_STOP: u32 = 0;

#[derive(Clone, Copy)]
#[repr(C)]
struct Pending {
    syscall: u32,
    _pad: u32,
    /// The raw syscall number, checked against `orig_rax` at exit.
    nr: u64,
    args: SyscallArgs,
}

const EMFILE: i64 = 24;
const ENFILE: i64 = 23;
const EINPROGRESS: i64 = 115;
const F_DUPFD: u64 = 0;
const F_SETFD: u64 = 2;
const FD_CLOEXEC: u64 = 1;
const F_DUPFD_CLOEXEC: u64 = 1030;
const FIONCLEX: u64 = 0x5450;
const FIOCLEX: u64 = 0x5451;
const PROT_EXEC: u64 = 4;
const MAP_ANONYMOUS: u64 = 0x20;
/// `Pending::syscall` of an executable mmap (not a [`Syscall`]: it creates
/// no descriptor, it only changes the address space).
const PENDING_MMAP: u32 = 0x1000;

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

fn ids() -> (u32, u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    ((pid_tgid >> 32) as u32, pid_tgid as u32)
}

fn is_traced(tgid: u32) -> bool {
    // SAFETY: the value is a plain u32 and is only read for presence.
    unsafe { TRACED.get(tgid).is_some() }
}

/// Userspace is woken only when a process waits for it (stopped) or the
/// ring fills up; otherwise it drains on its own timer. A wakeup per event
/// would cost a context switch per syscall.
fn wakeup(urgent: bool) -> u64 {
    if urgent || EVENTS.query(BPF_RB_AVAIL_DATA.into()) > WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP.into()
    } else {
        BPF_RB_NO_WAKEUP.into()
    }
}

/// More than half of the ring buffer is waiting for userspace.
fn ring_half_full() -> bool {
    EVENTS.query(BPF_RB_AVAIL_DATA.into()) * 2 > EVENTS.query(BPF_RB_RING_SIZE.into())
}

/// Unread bytes in the ring buffer past which userspace is woken.
const WAKEUP_BYTES: u64 = 1 << 20;

fn count(counter: Counter) {
    add(counter, 1);
}

/// A ring-buffer write failed: counted, and when, so userspace can tell
/// which leaks might be a lost close.
pub fn dropped() {
    lost(Counter::DroppedEvents);
}

/// Something that may have carried a close (or a first use) was lost:
/// counted in `counter`, and when.
pub fn lost(counter: Counter) {
    add(counter, 1);
    if let Some(slot) = COUNTERS.get_ptr_mut(Counter::LastDropNs as u32) {
        // SAFETY: a valid, aligned u64 per-CPU map value; the helper takes
        // no arguments.
        unsafe { *slot = bpf_ktime_get_ns() };
    }
}

fn add(counter: Counter, n: u64) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: a valid, aligned u64 per-CPU map value. Not atomic (the
        // BPF target has no atomic RMW in `core`): two programs preempting
        // each other on one CPU could lose an increment, never add one.
        unsafe { *slot += n };
    }
}

/// One of the user registers saved at syscall entry (`args[0]` of both raw
/// syscall tracepoints, include/trace/events/syscalls.h), by its offset in
/// `struct pt_regs`. Registers are read one by one, never the whole
/// 168-byte struct: every byte on this stack counts against the 512 that
/// a call chain shares on kernels before 6.13.
#[inline(always)]
pub fn user_reg(ctx: &RawTracePointContext, offset: usize) -> Result<u64, i64> {
    let regs: *const u8 = ctx.arg(0);
    // SAFETY: the kernel pointer is only read through bpf_probe_read_kernel.
    unsafe { bpf_probe_read_kernel(regs.add(offset).cast::<u64>()) }.map_err(i64::from)
}

/// x86_64 syscall arguments: rdi, rsi, rdx, r10, r8, r9. `struct pt_regs`
/// keeps r10 through rdi together (r10, r9, r8, rax, rcx, rdx, rsi, rdi),
/// so one read brings all six.
fn syscall_args(ctx: &RawTracePointContext) -> Result<SyscallArgs, i64> {
    let regs: *const u8 = ctx.arg(0);
    // SAFETY: the kernel pointer is only read through bpf_probe_read_kernel.
    let r: [u64; 8] =
        unsafe { bpf_probe_read_kernel(regs.add(offset_of!(pt_regs, r10)).cast::<[u64; 8]>()) }
            .map_err(i64::from)?;
    Ok(SyscallArgs {
        args: [r[7], r[6], r[5], r[0], r[2], r[1]],
    })
}

const _: () = assert!(offset_of!(pt_regs, rdi) == offset_of!(pt_regs, r10) + 7 * 8);
const _: () = assert!(offset_of!(pt_regs, rsi) == offset_of!(pt_regs, r10) + 6 * 8);
const _: () = assert!(offset_of!(pt_regs, rdx) == offset_of!(pt_regs, r10) + 5 * 8);
const _: () = assert!(offset_of!(pt_regs, r8) == offset_of!(pt_regs, r10) + 2 * 8);
const _: () = assert!(offset_of!(pt_regs, r9) == offset_of!(pt_regs, r10) + 8);

/// `raw_syscalls:sys_enter(struct pt_regs *regs, long id)`.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter(ctx: RawTracePointContext) -> i32 {
    match try_sys_enter(&ctx) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

fn try_sys_enter(ctx: &RawTracePointContext) -> Result<(), i64> {
    let (tgid, tid) = ids();
    if !is_traced(tgid) {
        return Ok(());
    }
    let nr: u64 = ctx.arg(1);
    uses::syscall(ctx, tgid, tid, nr)?;
    if nr == nr::MMAP {
        // New code: its mapping is recorded at exit, once its address is known.
        let args = syscall_args(ctx)?;
        if args.args[2] & PROT_EXEC != 0 {
            stash(tid, PENDING_MMAP, nr, args);
        }
        return Ok(());
    }
    let Some(syscall) = Syscall::from_x86_64(nr) else {
        return Ok(());
    };
    let args = syscall_args(ctx)?;
    let a = &args.args;
    match syscall {
        // Known from the arguments alone: write the record now, unless the
        // descriptor's whole life stayed in the kernel. A close by CPython's
        // shutdown or garbage collector is always written: it is a finding,
        // and a kept creation is handed over just before it.
        Syscall::Close => {
            let python = python::fdtrace_python_state(tgid);
            if python == 0 && deferred::forget(tgid, a[0]) {
                return Ok(());
            }
            if python != 0 {
                deferred::hand_over(tgid, a[0]);
            }
            emit_now(syscall, tgid, tid, &args, python)
        }
        Syscall::ExitGroup => emit_now(syscall, tgid, tid, &args, 0),
        Syscall::Ioctl if a[1] == FIOCLEX || a[1] == FIONCLEX => {
            deferred::set_cloexec(tgid, a[0], a[1] == FIOCLEX);
            emit_now(syscall, tgid, tid, &args, 0)
        }
        Syscall::Fcntl if a[1] == F_SETFD => {
            deferred::set_cloexec(tgid, a[0], a[2] & FD_CLOEXEC != 0);
            emit_now(syscall, tgid, tid, &args, 0)
        }
        Syscall::Ioctl | Syscall::Fcntl if a[1] != F_DUPFD && a[1] != F_DUPFD_CLOEXEC => Ok(()),
        // Only a set larger than FD_SETSIZE is worth a record (and a stack).
        Syscall::Select | Syscall::Pselect6 if a[0] <= FD_SETSIZE => Ok(()),
        _ => {
            stash(tid, syscall as u32, nr, args);
            Ok(())
        }
    }
}

fn stash(tid: u32, syscall: u32, nr: u64, args: SyscallArgs) {
    let pending = Pending {
        syscall,
        _pad: 0,
        nr,
        args,
    };
    if PENDING.insert(tid, pending, 0).is_err() {
        lost(Counter::DroppedArgs);
    }
}

/// An executable mmap returned `addr`: record the mapping and its file.
fn mmap_exit(tgid: u32, tid: u32, args: &SyscallArgs, addr: i64) {
    // Errors are -4095..-1; user addresses are positive.
    if addr < 0 {
        return;
    }
    let a = &args.args;
    let file = if a[3] & MAP_ANONYMOUS != 0 {
        0
    } else {
        files::fd_file(i64::from(a[4] as i32))
    };
    let usage = ((FileUse::Mmap as u64) << 56) | (a[1] & ((1 << 56) - 1));
    files::fdtrace_file_record(file, ids_word(tgid, tid), usage, addr as u64, a[5]);
}

fn ids_word(tgid: u32, tid: u32) -> u64 {
    (u64::from(tgid) << 32) | u64::from(tid)
}

fn emit_now(
    syscall: Syscall,
    tgid: u32,
    tid: u32,
    args: &SyscallArgs,
    flags: u32,
) -> Result<(), i64> {
    let Some(mut entry) = EVENTS.reserve::<EventHeader>(0) else {
        crate::dropped();
        return Ok(());
    };
    let header = entry.as_mut_ptr();
    // SAFETY: the entry is a live reservation the size of `EventHeader`.
    unsafe {
        capture::init_header(header, EventKind::Syscall, syscall as u32, tgid, tid);
        (*header).args = args.args;
        (*header).flags = flags;
    }
    entry.submit(wakeup(false));
    Ok(())
}

/// `raw_syscalls:sys_exit(struct pt_regs *regs, long ret)`.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit(ctx: RawTracePointContext) -> i32 {
    match try_sys_exit(&ctx) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

fn try_sys_exit(ctx: &RawTracePointContext) -> Result<(), i64> {
    let (tgid, tid) = ids();
    if !is_traced(tgid) {
        return Ok(());
    }
    // SAFETY: plain-old-data value; copied out before removal.
    let Some(mut pending) = (unsafe { PENDING.get(tid) }).copied() else {
        return Ok(());
    };
    let _ = PENDING.remove(tid);
    if user_reg(ctx, offset_of!(pt_regs, orig_rax))? != pending.nr {
        // A stale stash (its exit was never seen): ignore it.
        return Ok(());
    }
    if pending.syscall == PENDING_MMAP {
        mmap_exit(tgid, tid, &pending.args, ctx.arg(1));
        return Ok(());
    }
    let Ok(syscall) = Syscall::try_from(pending.syscall) else {
        return Ok(());
    };
    let ret: i64 = ctx.arg(1);
    if syscall == Syscall::Openat2 {
        // Userspace reads open flags from args[2]; for openat2 they live in
        // `struct open_how` (first field), which may be gone once we return.
        // SAFETY: user pointer read with the checked helper.
        pending.args.args[2] =
            unsafe { bpf_probe_read_user(pending.args.args[2] as *const u64) }.unwrap_or(0);
    }
    let failed_for_lack_of_fds = ret == -EMFILE || ret == -ENFILE;
    let ok = match syscall {
        Syscall::Connect => ret == 0 || ret == -EINPROGRESS,
        // Recorded whatever the result: the overflow already happened.
        Syscall::Select | Syscall::Pselect6 => true,
        _ => ret >= 0,
    };
    if !ok && !failed_for_lack_of_fds {
        return Ok(());
    }
    let creates = !matches!(
        syscall,
        Syscall::CloseRange | Syscall::Bind | Syscall::Connect
    );
    // Reserved straight in the ring buffer: a per-CPU scratch buffer would
    // be shared by threads that preempt each other inside these programs.
    // Under a burst, keep every event and drop stacks first: a lost close
    // would be a false leak, a lost stack is only a shorter report. EMFILE
    // failures always get theirs.
    // SAFETY: the helper takes no arguments and touches no memory.
    let ts_ns = unsafe { bpf_ktime_get_ns() };
    // Opened by CPython's own cleanup (shutdown, or a finalizer the
    // collector ran): its close then is that code's business, not a finding.
    let in_cleanup = if creates && ok {
        python::fdtrace_python_state(tgid)
    } else {
        0
    };
    let busy = creates && !failed_for_lack_of_fds && ring_half_full();
    if busy
        && ok
        && in_cleanup == 0
        && deferred::can_defer(syscall, &pending.args.args)
        && deferred::keep(ids_word(tgid, tid), syscall, ret, &pending.args.args, ts_ns)
    {
        count(Counter::Deferred);
        return Ok(());
    }
    if busy {
        count(Counter::SkippedStacks);
    }
    let wants_stack = (creates && !busy) || failed_for_lack_of_fds;
    // SAFETY: plain read of a global set before load.
    let stack_mode = unsafe { read_volatile(&STACK_MODE) };
    // A CPython process's frames go in their own record, just before this
    // one, after a copy of each code object in them not sent before.
    // recvmsg without a control buffer carries no descriptors: its record
    // is discarded below, so don't walk for it.
    let may_create = match syscall {
        Syscall::Recvmsg => capture::has_control(pending.args.args[1]),
        _ => true,
    };
    if wants_stack && may_create && stack_mode != StackMode::None as u32 {
        python::record(tgid, tid, ts_ns);
    }
    let entry = if wants_stack {
        EVENTS.reserve_bytes(capture::stack_record_size(), 0)
    } else {
        EVENTS.reserve_bytes(size_of::<EventHeader>(), 0)
    };
    let Some(mut entry) = entry else {
        crate::dropped();
        return Ok(());
    };
    let record = entry.as_mut_ptr();
    let header = record.cast::<EventHeader>();
    // SAFETY: the reservation is at least as large as the header.
    unsafe {
        capture::init_header(header, EventKind::Syscall, syscall as u32, tgid, tid);
        (*header).ts_ns = ts_ns;
        (*header).ret = ret;
        (*header).args = pending.args.args;
        (*header).flags |= in_cleanup;
    }
    if busy {
        // SAFETY: the header was initialised above.
        unsafe { (*header).flags |= FLAG_STACK_SKIPPED };
    }
    let args = &pending.args.args;
    if ok {
        // SAFETY: `header` points into the reservation; user pointers are
        // only read through bpf_probe_read_user.
        unsafe {
            match syscall {
                Syscall::Pipe | Syscall::Pipe2 => {
                    capture::fd_pair(header, args[0]);
                    // Both ends share one inode: `pipe:[ino]` in /proc.
                    let ino = files::inode_number(files::fd_file(i64::from((*header).fds[0])));
                    core::ptr::write_unaligned((&raw mut (*header).text).cast::<u64>(), ino);
                    (*header).text_len = 8;
                }
                Syscall::Socketpair => capture::fd_pair(header, args[3]),
                Syscall::Recvmsg => capture::scm_rights(header, args[1]),
                Syscall::Recvmmsg => capture::scm_rights_mmsg(header, args[1], ret),
                Syscall::Open | Syscall::Creat | Syscall::MemfdCreate => {
                    capture::user_str(header, args[0])
                }
                Syscall::Openat | Syscall::Openat2 => capture::user_str(header, args[1]),
                Syscall::Bind | Syscall::Connect => capture::sockaddr(header, args[1], args[2]),
                Syscall::Accept | Syscall::Accept4 => {
                    capture::accepted_sockaddr(header, args[1], args[2])
                }
                _ => {}
            }
            if matches!(syscall, Syscall::Recvmsg | Syscall::Recvmmsg) && (*header).nfds == 0 {
                entry.discard(0);
                return Ok(());
            }
            // The kernel just handed out these numbers: whatever was kept
            // under them is gone (closed by exec, close_range, dup2 onto
            // it) and must not swallow this descriptor's close.
            match syscall {
                Syscall::Pipe | Syscall::Pipe2 | Syscall::Socketpair => {
                    deferred::forget(tgid, (*header).fds[0] as u64);
                    deferred::forget(tgid, (*header).fds[1] as u64);
                }
                Syscall::Recvmsg
                | Syscall::Recvmmsg
                | Syscall::Bind
                | Syscall::Connect
                | Syscall::CloseRange
                | Syscall::Select
                | Syscall::Pselect6 => {}
                _ => {
                    deferred::forget(tgid, ret as u64);
                }
            }
        }
    } else {
        // The path the failing call was given, for the EMFILE report.
        // SAFETY: as above.
        unsafe {
            match syscall {
                Syscall::Open | Syscall::Creat => capture::user_str(header, args[0]),
                Syscall::Openat | Syscall::Openat2 => capture::user_str(header, args[1]),
                _ => {}
            }
        }
    }
    if wants_stack {
        // SAFETY: the reservation is `stack_record_size()` bytes, header initialised.
        unsafe { capture::stack(ctx, record) };
    }
    if failed_for_lack_of_fds {
        // SAFETY: the header was initialised above.
        unsafe {
            (*header).nofile_limit = files::nofile_limit();
            // Stopped before the failure returns to user space, only
            // because the user asked (--on-emfile stop).
            if read_volatile(&EMFILE_STOP) != 0 {
                capture::stop(header);
            }
        }
    }
    // SAFETY: the header was initialised above.
    let stopped = unsafe { (*header).flags } & FLAG_STOPPED != 0;
    // What a descriptor that arrived whole refers to, recorded now: by the
    // time userspace could look in /proc it may be closed or replaced.
    let received = ok
        && matches!(
            syscall,
            Syscall::Recvmsg | Syscall::Recvmmsg | Syscall::PidfdGetfd | Syscall::OpenByHandleAt
        );
    if received {
        // Reserved after this record, so read after it. Read from the
        // reservation in place: a copy would sit on the shared stack.
        // SAFETY: the header was initialised above and is not yet submitted.
        let nfds = unsafe { (*header).nfds };
        if nfds == 0 {
            describe_received(tgid, tid, ret);
        }
        for i in 0..MAX_EVENT_FDS {
            if i as u32 >= nfds {
                break;
            }
            // SAFETY: as above; `i` is below the array's length.
            describe_received(tgid, tid, i64::from(unsafe { (*header).fds[i] }));
        }
    }
    entry.submit(wakeup(stopped));
    Ok(())
}

fn describe_received(tgid: u32, tid: u32, fd: i64) {
    let usage = ((FileUse::Received as u64) << 56) | (fd as u64 & 0xffff_ffff);
    files::fdtrace_file_record(files::fd_file(fd), ids_word(tgid, tid), usage, 0, 0);
}

/// `sched:sched_process_fork(struct task_struct *parent, struct task_struct *child)`
/// (include/trace/events/sched.h); runs in the parent, before the child runs.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn sched_process_fork(ctx: RawTracePointContext) -> i32 {
    match try_sched_process_fork(&ctx) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

fn try_sched_process_fork(ctx: &RawTracePointContext) -> Result<(), i64> {
    let (tgid, tid) = ids();
    if !is_traced(tgid) {
        return Ok(());
    }
    let child: *const u8 = ctx.arg(1);
    // SAFETY: kernel memory read through bpf_probe_read_kernel at offsets
    // userspace found in the kernel's BTF.
    let (child_pid, child_tgid) = unsafe {
        let pid = read_volatile(&TASK_PID_OFFSET) as usize;
        let tgid_off = read_volatile(&TASK_TGID_OFFSET) as usize;
        (
            bpf_probe_read_kernel(child.add(pid).cast::<i32>()).map_err(i64::from)?,
            bpf_probe_read_kernel(child.add(tgid_off).cast::<i32>()).map_err(i64::from)?,
        )
    };
    if child_pid != child_tgid {
        // A new thread: it shares the traced thread group's table.
        return Ok(());
    }
    let child = child_pid as u32;
    // Added here, before the child runs, so none of its events are missed.
    if TRACED.insert(child, 1, 0).is_err() {
        count(Counter::DroppedArgs);
    }
    python::fork(tgid, child);
    uses::fork(tgid, child);
    let Some(mut entry) = EVENTS.reserve::<EventHeader>(0) else {
        crate::dropped();
        return Ok(());
    };
    let header = entry.as_mut_ptr();
    // SAFETY: live reservation the size of `EventHeader`.
    unsafe {
        capture::init_header(header, EventKind::Fork, 0, tgid, tid);
        (*header).args[0] = u64::from(child);
    }
    entry.submit(wakeup(false));
    Ok(())
}

/// `sched:sched_process_exec(struct task_struct *p, pid_t old_pid,
/// struct linux_binprm *bprm)`; runs in the new program, after the old
/// image (and its close-on-exec descriptors) is gone.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn sched_process_exec(ctx: RawTracePointContext) -> i32 {
    match try_sched_process_exec(&ctx) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

fn try_sched_process_exec(ctx: &RawTracePointContext) -> Result<(), i64> {
    let (tgid, tid) = ids();
    if !is_traced(tgid) {
        return Ok(());
    }
    python::forget(tgid);
    uses::exec(tgid);
    let bprm: *const u8 = ctx.arg(2);
    // SAFETY: kernel memory read through bpf_probe_read_kernel at an offset
    // from the kernel's BTF.
    let filename: *const u8 = unsafe {
        let offset = read_volatile(&BPRM_FILENAME_OFFSET) as usize;
        bpf_probe_read_kernel(bprm.add(offset).cast::<*const u8>()).map_err(i64::from)?
    };
    let Some(mut entry) = EVENTS.reserve::<EventHeader>(0) else {
        crate::dropped();
        return Ok(());
    };
    let header = entry.as_mut_ptr();
    // SAFETY: live reservation; the file name is a kernel string.
    unsafe {
        capture::init_header(header, EventKind::Exec, 0, tgid, tid);
        if let Ok(name) = bpf_probe_read_kernel_str_bytes(filename, &mut (*header).text) {
            (*header).text_len = name.len() as u32;
        }
    }
    entry.submit(wakeup(false));
    // The new program and where it and its ELF interpreter were loaded:
    // with the executable mmaps that follow, the whole code layout.
    let (at_entry, at_base) = files::entry_and_base();
    // SAFETY: kernel memory read through bpf_probe_read_kernel at an offset
    // from the kernel's BTF.
    let file: u64 = unsafe {
        bpf_probe_read_kernel(
            bprm.add(files::offset(KernelOffset::BprmFile) as usize)
                .cast::<u64>(),
        )
    }
    .unwrap_or(0);
    let usage = (FileUse::Exec as u64) << 56;
    files::fdtrace_file_record(file, ids_word(tgid, tid), usage, at_entry, at_base);
    Ok(())
}

/// `sched:sched_process_exit(struct task_struct *p)` (6.16 added `bool
/// group_dead`, which older kernels refuse to let a program read); runs in
/// the exiting thread, before its descriptor table is released.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_process_exit(ctx: RawTracePointContext) -> i32 {
    match try_sched_process_exit(&ctx) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

fn try_sched_process_exit(_ctx: &RawTracePointContext) -> Result<(), i64> {
    let (tgid, tid) = ids();
    let _ = PENDING.remove(tid);
    if !is_traced(tgid) {
        return Ok(());
    }
    if !files::group_dead() {
        return Ok(());
    }
    let _ = TRACED.remove(tgid);
    python::forget(tgid);
    uses::exit(tgid);
    let Some(mut entry) = EVENTS.reserve::<EventHeader>(0) else {
        crate::dropped();
        return Ok(());
    };
    // SAFETY: live reservation the size of `EventHeader`.
    unsafe { capture::init_header(entry.as_mut_ptr(), EventKind::Exit, 0, tgid, tid) };
    entry.submit(wakeup(false));
    Ok(())
}
