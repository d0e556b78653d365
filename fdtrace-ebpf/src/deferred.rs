//! Creations kept in the kernel while the ring buffer is busy.
//!
//! Under a burst (the ring more than half full) a creation that yields one
//! descriptor is not written: it goes into `DEFERRED`, keyed by process and
//! descriptor, the way bcc's memleak keeps outstanding allocations. Its
//! close deletes the entry and writes nothing, so a descriptor that lives a
//! few microseconds never crosses the ring and churn cannot overflow it.
//! What is still there when it matters (the process's exec, close_range
//! or exit, or a second later) userspace claims by deleting the entry:
//! whichever side deletes first owns the descriptor, so a close is either
//! silent here or written for userspace, never both and never neither.

use aya_ebpf::{
    bindings::BPF_RB_NO_WAKEUP,
    helpers::bpf_probe_read_user_str_bytes,
    macros::map,
    maps::{Array, HashMap},
};
use fdtrace_common::{
    CLOEXEC_CLEARED, CLOEXEC_SET, DEFERRED_ENTRIES, DeferredFd, EventKind, KeptRecord, Syscall,
    TEXT_LEN,
};

use crate::EVENTS;

/// Preallocated, as tracing programs' hash maps should be (older kernels
/// warn in dmesg otherwise). `keep` writes an entry's time last and
/// userspace never claims one without a time, so it never deletes an
/// element still being written.
#[map]
static DEFERRED: HashMap<u64, DeferredFd> = HashMap::with_max_entries(DEFERRED_ENTRIES, 0);

/// Slot 0 is 1 once anything was ever kept: until then a close or a
/// reused number needs no hash lookup to know nothing is kept for it.
#[map]
static ANY_KEPT: Array<u32> = Array::with_max_entries(1, 0);

fn any_kept() -> bool {
    ANY_KEPT.get(0).is_some_and(|v| *v != 0)
}

static EMPTY: DeferredFd = DeferredFd {
    ts_ns: 0,
    tid: 0,
    syscall: 0,
    args: [0; 6],
    cloexec: 0,
    text_len: 0,
    text: [0; TEXT_LEN],
};

fn key(tgid: u32, fd: u64) -> u64 {
    (u64::from(tgid) << 32) | (fd & 0xffff_ffff)
}

/// Whether `syscall` made exactly one descriptor (its return value) whose
/// record says nothing a later event needs besides kind, flags and path.
pub fn can_defer(syscall: Syscall, args: &[u64; 6]) -> bool {
    match syscall {
        Syscall::Open
        | Syscall::Openat
        | Syscall::Openat2
        | Syscall::Creat
        | Syscall::Socket
        | Syscall::Accept
        | Syscall::Accept4
        | Syscall::Eventfd
        | Syscall::Eventfd2
        | Syscall::EpollCreate
        | Syscall::EpollCreate1
        | Syscall::TimerfdCreate
        | Syscall::InotifyInit
        | Syscall::InotifyInit1
        | Syscall::FanotifyInit
        | Syscall::MemfdCreate
        | Syscall::PidfdOpen
        | Syscall::Userfaultfd
        | Syscall::PerfEventOpen
        | Syscall::IoUringSetup => true,
        // Only with fd -1 does signalfd make a descriptor.
        Syscall::Signalfd | Syscall::Signalfd4 => args[0] as i32 == -1,
        _ => false,
    }
}

/// Keeps the creation of `fd`; false if the map is full (write it instead).
/// `ids` is `(tgid << 32) | tid` (a BPF call takes five arguments).
#[inline(never)]
pub fn keep(ids: u64, syscall: Syscall, fd: i64, args: &[u64; 6], ts_ns: u64) -> bool {
    let (tgid, tid) = ((ids >> 32) as u32, ids as u32);
    let key = key(tgid, fd as u64);
    if let Some(flag) = ANY_KEPT.get_ptr_mut(0) {
        // SAFETY: a live array value; set before the entry exists.
        unsafe { *flag = 1 };
    }
    #[expect(
        clippy::needless_borrows_for_generic_args,
        reason = "the static's address, not a copy on the stack"
    )]
    let inserted = DEFERRED.insert(key, &EMPTY, 0);
    if inserted.is_err() {
        return false;
    }
    let Some(entry) = DEFERRED.get_ptr_mut(key) else {
        return false;
    };
    let path = match syscall {
        Syscall::Open | Syscall::Creat | Syscall::MemfdCreate => args[0],
        Syscall::Openat | Syscall::Openat2 => args[1],
        _ => 0,
    };
    // SAFETY: `entry` is a live map value; user memory is read with the
    // checked helper into its `text` array.
    unsafe {
        (*entry).tid = tid;
        (*entry).syscall = syscall as u32;
        (*entry).args = *args;
        if path != 0
            && let Ok(s) = bpf_probe_read_user_str_bytes(path as *const u8, &mut (*entry).text)
        {
            (*entry).text_len = s.len() as u32;
        }
        // Last: userspace leaves an entry with no time for later, as one
        // still being written.
        (*entry).ts_ns = ts_ns;
    }
    true
}

/// `fd` was closed (or replaced by dup2): true if it was kept here, in which
/// case nothing needs writing.
#[inline(always)]
pub fn forget(tgid: u32, fd: u64) -> bool {
    any_kept() && DEFERRED.remove(key(tgid, fd)).is_ok()
}

/// CPython's shutdown or collector is closing `fd`, a finding: if its
/// creation is kept here, write it to the ring ([`KeptRecord`]) before the
/// close is written, deleting the entry. Whichever side deletes it owns
/// it: if userspace claimed it meanwhile, the record is discarded.
#[inline(never)]
pub fn hand_over(tgid: u32, fd: u64) {
    let key = key(tgid, fd);
    let Some(entry) = DEFERRED.get_ptr(key) else {
        return;
    };
    let Some(mut record) = EVENTS.reserve::<KeptRecord>(0) else {
        // The finding is lost, counted; what was kept goes with it.
        crate::dropped();
        let _ = DEFERRED.remove(key);
        return;
    };
    let rec = record.as_mut_ptr();
    // SAFETY: `rec` is a live reservation of a whole KeptRecord and `entry`
    // a live map value of the same plain-old-data type, copied in place.
    unsafe {
        (*rec).kind = EventKind::Kept as u32;
        (*rec).tgid = tgid;
        (*rec).fd = fd as i32;
        (*rec)._pad = 0;
        core::ptr::copy_nonoverlapping(entry, &raw mut (*rec).entry, 1);
    }
    if DEFERRED.remove(key).is_ok() {
        // The close that follows decides whether to wake userspace.
        record.submit(BPF_RB_NO_WAKEUP.into());
    } else {
        record.discard(0);
    }
}

/// F_SETFD or FIOCLEX/FIONCLEX on `fd`.
#[inline(always)]
pub fn set_cloexec(tgid: u32, fd: u64, on: bool) {
    if !any_kept() {
        return;
    }
    if let Some(entry) = DEFERRED.get_ptr_mut(key(tgid, fd)) {
        // SAFETY: a live map value.
        unsafe { (*entry).cloexec = if on { CLOEXEC_SET } else { CLOEXEC_CLEARED } };
    }
}
