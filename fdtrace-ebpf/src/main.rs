//! Kernel side: syscall and sched tracepoints -> ring buffer.
//!
//! Only processes whose thread-group id is in `TRACED` produce events;
//! children are added here, at fork, so a child's first syscall is never
//! missed. `sys_exit` reads a call's arguments from the user registers
//! saved at entry, adds the result (and for descriptor creations,
//! EMFILE/ENFILE failures and EBADF failures of calls given descriptors a
//! stack sample) and writes one record; `sys_enter` records only what must
//! be seen before the call runs (close, with a compact sample of where it
//! was called, exit_group, close-on-exec changes) and first uses of
//! inherited descriptors. Every failed ring-buffer write bumps a counter
//! that the report prints.
//!
//! Raw syscall tracepoints rather than one `syscalls/sys_*_<name>` event per
//! call (measured on 6.18): detaching a perf tracepoint waits for a grace
//! period under the kernel's `event_mutex` (~40 ms each, serialised even
//! from parallel threads), so the ~135 events fdtrace follows took 5 s to
//! detach, and each per-syscall run costs more than a raw one. The price of
//! raw tracepoints is that both programs run for every syscall on the
//! machine; `TRACED_SLOTS` makes the untraced answer one inlined array read.
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
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes, bpf_probe_read_user,
    },
    macros::{map, raw_tracepoint},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::RawTracePointContext,
};
use fdtrace_common::{
    COUNTER_SLOTS, Counter, EventHeader, EventKind, FD_SETSIZE, FLAG_STACK_SKIPPED, FLAG_STOPPED,
    FileUse, KernelOffset, MAX_EVENT_FDS, NO_ARG, SELECT_EXECS, SELECT_NEW_PROCESSES, StackMode,
    Syscall, SyscallArgs, TRACED_SLOT_COUNT, TRACED_SLOT_USED, fd_arguments, nr,
};

#[map]
/// Sized by userspace (`load.rs`) before load.
static EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024 * 1024, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// Thread-group ids being traced; the value is unused.
#[map]
static TRACED: HashMap<u32, u32> = HashMap::with_max_entries(65536, 0);

/// The fast "not traced" answer (`fdtrace_common::TRACED_SLOTS_MAP`): an
/// array lookup the verifier inlines, where most of the host's processes
/// stop. Both raw syscall programs run for every syscall on the machine.
#[map]
static TRACED_SLOTS: Array<u32> = Array::with_max_entries(TRACED_SLOT_COUNT, 0);

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
/// Set by userspace before load (`fdtrace_common::SELECT_GLOBAL`).
#[unsafe(no_mangle)]
static SELECT: u32 = 0;
/// Set by userspace before load (`fdtrace_common::SELF_TGID_GLOBAL`).
#[unsafe(no_mangle)]
static SELF_TGID: u32 = 0;

const EBADF: i64 = 9;
const EMFILE: i64 = 24;
const ENFILE: i64 = 23;
const EINPROGRESS: i64 = 115;
const F_DUPFD: u64 = 0;
const F_GETFD: u64 = 1;
const F_SETFD: u64 = 2;
const F_GETFL: u64 = 3;
const FD_CLOEXEC: u64 = 1;
const F_DUPFD_CLOEXEC: u64 = 1030;
const FIONCLEX: u64 = 0x5450;
const FIOCLEX: u64 = 0x5451;
const PROT_EXEC: u64 = 4;
const MAP_ANONYMOUS: u64 = 0x20;

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

#[inline(always)]
fn is_traced(tgid: u32) -> bool {
    let slot = TRACED_SLOTS
        .get(tgid & (TRACED_SLOT_COUNT - 1))
        .copied()
        .unwrap_or(0);
    if slot == 0 {
        return false;
    }
    if slot == tgid {
        return true;
    }
    // SAFETY: the value is a plain u32 and is only read for presence.
    unsafe { TRACED.get(tgid).is_some() }
}

/// `tgid` is traced from now on: the hash says so, and its slot stops
/// saying "nobody" (a slot another traced process holds is left to it).
fn start_tracing(tgid: u32) -> bool {
    if let Some(slot) = TRACED_SLOTS.get_ptr_mut(tgid & (TRACED_SLOT_COUNT - 1)) {
        // SAFETY: a live array value; a plain store, never of 0.
        unsafe {
            if *slot == 0 || *slot == TRACED_SLOT_USED {
                *slot = tgid;
            }
        }
    }
    TRACED.insert(tgid, 1, 0).is_ok()
}

fn stop_tracing(tgid: u32) {
    let _ = TRACED.remove(tgid);
    if let Some(slot) = TRACED_SLOTS.get_ptr_mut(tgid & (TRACED_SLOT_COUNT - 1)) {
        // SAFETY: as above. Not 0: a process that found this slot taken
        // is only in the hash, and must not be told it is untraced.
        unsafe {
            if *slot == tgid {
                *slot = TRACED_SLOT_USED;
            }
        }
    }
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
    // Only what must be seen before the call runs; everything else is
    // recorded at its exit, from the same saved registers.
    let Some(syscall) = Syscall::from_x86_64(nr) else {
        return Ok(());
    };
    if !matches!(
        syscall,
        Syscall::Close | Syscall::ExitGroup | Syscall::Ioctl | Syscall::Fcntl
    ) {
        return Ok(());
    }
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
            close_now(ctx, tgid, tid, &args, python)
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
        _ => Ok(()),
    }
}

/// The [`Syscall`] (as its wire value) whose exit `sys_exit` records for
/// x86_64 syscall `nr`, 0 for the rest (close, exit_group and ioctl are
/// recorded at entry). A global function: the verifier checks it once and
/// sees one unknown result, instead of following the rest of `sys_exit`
/// once per syscall the match could have produced.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn fdtrace_exit_syscall(nr: u64) -> u32 {
    match Syscall::from_x86_64(nr) {
        None | Some(Syscall::Close | Syscall::ExitGroup | Syscall::Ioctl) => 0,
        Some(syscall) => syscall as u32,
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
    if let Some(entry) = capture::short_record(
        EventKind::Syscall,
        syscall as u32,
        tgid,
        tid,
        args.args,
        flags,
    ) {
        entry.submit(wakeup(false));
    }
    Ok(())
}

/// Starts a record of `kind` for `syscall` in this CPU's scratch record,
/// stamped now, after the thread's Python frames (a close's innermost
/// ones only, for `close`) unless stacks are off. None, counted, if the
/// scratch record is missing.
#[inline(always)]
fn start_record(
    kind: EventKind,
    syscall: u32,
    tgid: u32,
    tid: u32,
    close: bool,
) -> Option<*mut u8> {
    // SAFETY: the helper takes no arguments and touches no memory.
    let ts_ns = unsafe { bpf_ktime_get_ns() };
    // SAFETY: plain read of a global set before load.
    if unsafe { read_volatile(&STACK_MODE) } != StackMode::None as u32 {
        if close {
            python::record_close(tgid, tid, ts_ns);
        } else {
            python::record(tgid, tid, ts_ns);
        }
    }
    let Some(record) = capture::scratch() else {
        crate::dropped();
        return None;
    };
    // SAFETY: the scratch record is at least as large as the header.
    unsafe {
        capture::init_header(record.cast(), kind, syscall, tgid, tid);
        (*record.cast::<EventHeader>()).ts_ns = ts_ns;
    }
    Some(record)
}

/// A close's record, with where it was called from (see
/// [`capture::close_site`]): Python frames first, for a CPython process.
#[inline(always)]
fn close_now(
    ctx: &RawTracePointContext,
    tgid: u32,
    tid: u32,
    args: &SyscallArgs,
    flags: u32,
) -> Result<(), i64> {
    let close = Syscall::Close as u32;
    let Some(record) = start_record(EventKind::Syscall, close, tgid, tid, true) else {
        return Ok(());
    };
    let header = record.cast::<EventHeader>();
    // SAFETY: `start_record` initialised the header.
    unsafe {
        (*header).args = args.args;
        (*header).flags = flags;
        capture::close_site(ctx, record, tid);
    }
    Ok(())
}

/// A call given descriptors failed with EBADF: one of them is not open.
/// Recorded with its stack; userspace tells a double close or a use after
/// close (the number was closed before) from an invalid descriptor (it
/// never was open) or a descriptor open in the wrong mode (no finding).
/// `fcntl(fd, F_GETFD)` and `F_GETFL` are how programs ask whether a
/// descriptor is open: their EBADF is an answer, not a misuse.
#[inline(always)]
fn bad_fd(ctx: &RawTracePointContext, tgid: u32, tid: u32, nr: u64, ret: i64) -> Result<(), i64> {
    if nr != nr::CLOSE && fd_arguments(nr).0 == NO_ARG {
        return Ok(());
    }
    if nr == nr::FCNTL {
        let cmd = user_reg(ctx, offset_of!(pt_regs, rsi))?;
        if cmd == F_GETFD || cmd == F_GETFL {
            return Ok(());
        }
    }
    let Some(record) = start_record(EventKind::BadFd, nr as u32, tgid, tid, false) else {
        return Ok(());
    };
    let header = record.cast::<EventHeader>();
    // SAFETY: `start_record` initialised the header; the scratch record
    // holds the largest sample after it. The arguments go straight into
    // it, one register at a time: a copy of all six would sit on a stack
    // `sys_exit` shares with the Python walker (5.10 rounds each frame up
    // to 32 bytes and allows 512 in all).
    unsafe {
        (*header).ret = ret;
        for (i, offset) in ARG_REGS.into_iter().enumerate() {
            (*header).args[i] = user_reg(ctx, offset).unwrap_or(0);
        }
        capture::stack(ctx, record);
        capture::output(record, tid, wakeup(false));
    }
    Ok(())
}

/// Where x86_64 passes syscall arguments, in order, in `struct pt_regs`.
const ARG_REGS: [usize; 6] = [
    offset_of!(pt_regs, rdi),
    offset_of!(pt_regs, rsi),
    offset_of!(pt_regs, rdx),
    offset_of!(pt_regs, r10),
    offset_of!(pt_regs, r8),
    offset_of!(pt_regs, r9),
];

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
    // The arguments are still in the registers saved at entry: no
    // program at entry, no per-thread map entry.
    let nr = user_reg(ctx, offset_of!(pt_regs, orig_rax))?;
    let ret: i64 = ctx.arg(1);
    if ret == -EBADF {
        return bad_fd(ctx, tgid, tid, nr, ret);
    }
    if nr == nr::MMAP {
        let args = syscall_args(ctx)?;
        // New code: its mapping, now that its address is known.
        if args.args[2] & PROT_EXEC != 0 {
            mmap_exit(tgid, tid, &args, ret);
        }
        return Ok(());
    }
    let Ok(syscall) = Syscall::try_from(fdtrace_exit_syscall(nr)) else {
        return Ok(());
    };
    let mut args = syscall_args(ctx)?;
    let a = &args.args;
    match syscall {
        Syscall::Fcntl if a[1] != F_DUPFD && a[1] != F_DUPFD_CLOEXEC => return Ok(()),
        // Only a set larger than FD_SETSIZE is worth a record (and a stack).
        Syscall::Select | Syscall::Pselect6 if a[0] <= FD_SETSIZE => return Ok(()),
        _ => {}
    }
    if syscall == Syscall::Openat2 {
        // Userspace reads open flags from args[2]; for openat2 they live in
        // `struct open_how` (first field), which may be gone once we return.
        // SAFETY: user pointer read with the checked helper.
        args.args[2] = unsafe { bpf_probe_read_user(args.args[2] as *const u64) }.unwrap_or(0);
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
        && deferred::can_defer(syscall, &args.args)
        && deferred::keep(ids_word(tgid, tid), syscall, ret, &args.args, ts_ns)
    {
        count(Counter::Deferred);
        return Ok(());
    }
    if busy {
        count(Counter::SkippedStacks);
    }
    // close_range of one descriptor: where, in case it was closed already
    // (close_range does not fail on that; userspace's table tells).
    let single_close = syscall == Syscall::CloseRange && args.args[0] == args.args[1];
    let wants_stack = (creates && !busy) || failed_for_lack_of_fds || single_close;
    // SAFETY: plain read of a global set before load.
    let stack_mode = unsafe { read_volatile(&STACK_MODE) };
    // A CPython process's frames go in their own record, just before this
    // one, after a copy of each code object in them not sent before.
    // recvmsg without a control buffer carries no descriptors: its record
    // is discarded below, so don't walk for it.
    let may_create = match syscall {
        Syscall::Recvmsg => capture::has_control(args.args[1]),
        _ => true,
    };
    if wants_stack && may_create && stack_mode != StackMode::None as u32 {
        python::record(tgid, tid, ts_ns);
    }
    // Built in this CPU's scratch record and copied into the ring at its
    // exact length: a few hundred bytes of stack, not a reservation sized
    // for the largest sample (ring memory is cold; every byte reserved is
    // a byte written and read again).
    let Some(record) = capture::scratch() else {
        crate::dropped();
        return Ok(());
    };
    let header = record.cast::<EventHeader>();
    // SAFETY: the scratch record is at least as large as the header.
    unsafe {
        capture::init_header(header, EventKind::Syscall, syscall as u32, tgid, tid);
        (*header).ts_ns = ts_ns;
        (*header).ret = ret;
        (*header).args = args.args;
        (*header).flags |= in_cleanup;
    }
    if busy {
        // SAFETY: the header was initialised above.
        unsafe { (*header).flags |= FLAG_STACK_SKIPPED };
    }
    let args = &args.args;
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
        // SAFETY: the scratch record holds the largest sample, header initialised.
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
    // SAFETY: as above; the record is the scratch record, whole.
    if !unsafe { capture::output(record, tid, wakeup(stopped)) } {
        return Ok(());
    }
    // What a descriptor that arrived whole refers to, recorded now: by the
    // time userspace could look in /proc it may be closed or replaced.
    let received = ok
        && matches!(
            syscall,
            Syscall::Recvmsg | Syscall::Recvmmsg | Syscall::PidfdGetfd | Syscall::OpenByHandleAt
        );
    if received {
        // Written after this record, so read after it. Read from the
        // scratch record in place: a copy would sit on the shared stack.
        // SAFETY: the header was initialised above.
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
    Ok(())
}

fn describe_received(tgid: u32, tid: u32, fd: i64) {
    let usage = ((FileUse::Received as u64) << 56) | (fd as u64 & 0xffff_ffff);
    files::fdtrace_file_record(files::fd_file(fd), ids_word(tgid, tid), usage, 0, 0);
}

/// Whether a `SELECT` bit is set and `tgid` is not fdtrace itself: the
/// monitor's selection starts tracing processes nobody added.
fn selects(bit: u32, tgid: u32) -> bool {
    // SAFETY: globals set before load and never written after.
    let (select, own) = unsafe { (read_volatile(&SELECT), read_volatile(&SELF_TGID)) };
    select & bit != 0 && tgid != own
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
    if !is_traced(tgid) && !selects(SELECT_NEW_PROCESSES, tgid) {
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
    if !start_tracing(child) {
        count(Counter::DroppedArgs);
    }
    python::fork(tgid, child);
    uses::fork(tgid, child);
    let args = [u64::from(child), 0, 0, 0, 0, 0];
    if let Some(entry) = capture::short_record(EventKind::Fork, 0, tgid, tid, args, 0) {
        entry.submit(wakeup(false));
    }
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
        // A monitor's candidate: traced from here, before the new program
        // runs, and kept or dropped once userspace has seen its name and
        // cgroup.
        if !selects(SELECT_EXECS, tgid) || !start_tracing(tgid) {
            return Ok(());
        }
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
        // Which cgroup it runs in, for `monitor --cgroup` to decide on a
        // program that may be gone before /proc could say.
        (*header).args[0] = bpf_get_current_cgroup_id();
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
    if !is_traced(tgid) {
        return Ok(());
    }
    if !files::group_dead() {
        return Ok(());
    }
    stop_tracing(tgid);
    python::forget(tgid);
    uses::exit(tgid);
    if let Some(entry) = capture::short_record(EventKind::Exit, 0, tgid, tid, [0; 6], 0) {
        entry.submit(wakeup(false));
    }
    Ok(())
}
