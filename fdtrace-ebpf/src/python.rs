//! CPython frames, walked at the syscall that creates a descriptor.
//!
//! For a process userspace recognised as CPython (an entry in `PYTHON`),
//! find the calling thread's `PyThreadState` by matching its `thread_id`
//! (`pthread_self()`, the thread's fs base) against the interpreter's thread
//! list: the GIL is usually released around the blocking call, so the
//! runtime's "current thread state" may be another thread's or null. Then
//! follow the frame chain and write (code object, instruction) pairs into a
//! [`PyStackRecord`], innermost first, marking where each native evaluation
//! call's frames end. Userspace reads the code objects.

use aya_ebpf::{
    helpers::{
        bpf_get_current_task, bpf_probe_read_kernel,
        generated::bpf_probe_read_user as read_user_raw,
    },
    macros::map,
    maps::{HashMap, LruHashMap},
};
use fdtrace_common::{
    Counter, EventKind, MAX_PY_SLOTS, PY_ABSENT, PY_ENTRY, PY_TRUNCATED, PyFrameSlot,
    PyStackRecord, PyWalk,
};

use crate::{EVENTS, TASK_FSBASE_OFFSET, count};

/// Processes running CPython, by thread-group id (`fdtrace_common::PYTHON_MAP`).
#[map]
pub static PYTHON: HashMap<u32, PyWalk> = HashMap::with_max_entries(4096, 0);

/// Code objects userspace has been given the chance to read, per process.
/// A new one stops the process (like new maps do) so userspace can read it
/// before it exits.
#[map]
static PY_CODES: LruHashMap<CodeKey, u32> = LruHashMap::with_max_entries(65536, 0);

#[derive(Clone, Copy)]
#[repr(C)]
struct CodeKey {
    tgid: u32,
    _pad: u32,
    code: u64,
    tag: u64,
}

/// Threads searched for the caller's thread state.
const MAX_THREADS: usize = 256;

/// Reads a `T` from user memory, zero when unreadable (the helper zeroes
/// its destination on failure). Its result is not branched on: a branch per
/// read would double the verifier's states per read, per loop step.
#[inline(always)]
fn read<T: Default>(addr: u64) -> T {
    let mut value = T::default();
    // SAFETY: the destination is a local of the size passed; the source is
    // only read through the checked helper.
    unsafe {
        read_user_raw(
            (&raw mut value).cast(),
            size_of::<T>() as u32,
            addr as *const core::ffi::c_void,
        )
    };
    value
}

/// `pthread_self()` of the current thread: its fs base.
#[inline(always)]
fn fs_base() -> u64 {
    // SAFETY: kernel memory read through bpf_probe_read_kernel at an offset
    // userspace found in the kernel's BTF (task_struct.thread.fsbase).
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let offset = core::ptr::read_volatile(&TASK_FSBASE_OFFSET) as usize;
        bpf_probe_read_kernel(task.add(offset).cast::<u64>()).unwrap_or(0)
    }
}

/// Writes the calling thread's Python stack as a record stamped `ts_ns`,
/// if the process runs CPython. Returns whether a code object in it was new
/// (the caller then stops the process so userspace can read it).
pub fn record(tgid: u32, tid: u32, ts_ns: u64) -> bool {
    fdtrace_python_stack(tgid, tid, ts_ns) != 0
}

/// [`record`] as a global BPF function: the verifier checks it once, on its
/// own, instead of once per path through `sys_exit` (its loops would
/// otherwise multiply that program's states past the verifier's limit).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn fdtrace_python_stack(tgid: u32, tid: u32, ts_ns: u64) -> u32 {
    u32::from(walk_python(tgid, tid, ts_ns))
}

#[inline(always)]
fn walk_python(tgid: u32, tid: u32, ts_ns: u64) -> bool {
    // SAFETY: plain-old-data map value, copied out.
    let Some(walk) = (unsafe { PYTHON.get(tgid) }).copied() else {
        return false;
    };
    let Some(mut entry) = EVENTS.reserve::<PyStackRecord>(0) else {
        count(Counter::DroppedEvents);
        return false;
    };
    let rec = entry.as_mut_ptr();
    let mut new_code = false;
    // SAFETY: `rec` is a live reservation of a whole PyStackRecord; every
    // slot index is checked against MAX_PY_SLOTS.
    unsafe {
        (*rec).kind = EventKind::PyStack as u32;
        (*rec).tgid = tgid;
        (*rec).tid = tid;
        (*rec).len = 0;
        (*rec).ts_ns = ts_ns;
        (*rec).flags = 0;
        (*rec)._pad = 0;
        let me = fs_base();
        let interp: u64 = read(walk.runtime + u64::from(walk.interp_head));
        let mut thread: u64 = if interp == 0 {
            0
        } else {
            read(interp + u64::from(walk.threads_head))
        };
        for _ in 0..MAX_THREADS {
            if thread == 0 || read::<u64>(thread + u64::from(walk.thread_id)) == me {
                break;
            }
            thread = read(thread + u64::from(walk.thread_next));
        }
        if thread == 0 || me == 0 {
            // Not a thread Python knows: an empty record.
            entry.submit(0);
            return false;
        }
        let mut frame: u64 = read(thread + u64::from(walk.thread_frame));
        if walk.cframe_frame != PY_ABSENT && frame != 0 {
            frame = read(frame + u64::from(walk.cframe_frame));
        }
        // One slot per step, at the step's index: the verifier then sees
        // one state per step, not one per possible slot count. Userspace
        // fills absent fields so that no step branches on them: a version
        // without shims has `shim_owner` 256 (no byte reaches it), one
        // without `is_entry` an `entry_mask` of 0.
        let mut len: u32 = 0;
        let entry_mask = if walk.frame_is_entry == PY_ABSENT {
            0
        } else {
            PY_ENTRY
        };
        let entry_at = u64::from(walk.frame_is_entry & 0xffff);
        for i in 0..MAX_PY_SLOTS {
            if frame == 0 {
                break;
            }
            let owner: u8 = read(frame + u64::from(walk.frame_owner & 0xffff));
            let mut slot = PyFrameSlot {
                code: 0,
                instr: 0,
                tag: 0,
            };
            // A shim frame (3.12+) marks where a native evaluation call
            // started: it stays a boundary slot (code 0).
            if u32::from(owner) < walk.shim_owner {
                slot.code = read::<u64>(frame + u64::from(walk.frame_code)) & walk.code_mask;
                slot.instr = if walk.frame_object == 1 {
                    // Up to 3.10 every frame has its own native call.
                    u64::from(read::<i32>(frame + u64::from(walk.frame_instr)) as u32) | PY_ENTRY
                } else {
                    read::<u64>(frame + u64::from(walk.frame_instr))
                };
                // In 3.11 `is_entry` marks the first frame of a native call.
                let is_entry = u64::from(read::<u8>(frame + entry_at));
                slot.instr |= ((is_entry | is_entry.wrapping_neg()) & PY_ENTRY) & entry_mask;
                let table: u64 = read(slot.code + u64::from(walk.code_line_table));
                let first_line: u32 = read(slot.code + u64::from(walk.code_first_line));
                slot.tag = table ^ (u64::from(first_line) << 48);
                let key = CodeKey {
                    tgid,
                    _pad: 0,
                    code: slot.code,
                    tag: slot.tag,
                };
                if PY_CODES.get(key).is_none() {
                    let _ = PY_CODES.insert(key, 1, 0);
                    new_code = true;
                }
            }
            (*rec).slots[i] = slot;
            len = i as u32 + 1;
            frame = read(frame + u64::from(walk.frame_previous));
        }
        if frame != 0 {
            (*rec).flags |= PY_TRUNCATED;
        }
        (*rec).len = len;
    }
    entry.submit(0);
    new_code
}

/// A forked child runs the same interpreter at the same addresses.
#[inline(always)]
pub fn fork(parent: u32, child: u32) {
    // SAFETY: plain-old-data map value, copied out.
    if let Some(walk) = (unsafe { PYTHON.get(parent) }).copied() {
        let _ = PYTHON.insert(child, walk, 0);
    }
}

/// An executable file was mapped into process `tgid`: at exec (`at_exec`,
/// `start` is AT_ENTRY) or by mmap (`start` is the address, `pgoff` the
/// file offset in bytes). Nothing to do until interpreters can be
/// recognised by file identity in the kernel.
#[inline(always)]
pub fn file_mapped(_tgid: u32, _ino: u64, _dev: u32, _start: u64, _pgoff: u64, _at_exec: bool) {}

/// After exec or exit the process's entry no longer applies.
#[inline(always)]
pub fn forget(tgid: u32) {
    let _ = PYTHON.remove(tgid);
}
