//! CPython frames, walked at the syscall that creates a descriptor.
//!
//! For a process userspace recognised as CPython (an entry in `PYTHON`),
//! find the calling thread's `PyThreadState` by matching its `thread_id`
//! (`pthread_self()`, the thread's fs base) against the interpreter's thread
//! list: the GIL is usually released around the blocking call, so the
//! runtime's "current thread state" may be another thread's or null. Then
//! follow the frame chain and write (code object, instruction) pairs into a
//! [`PyStackRecord`], innermost first, marking where each native evaluation
//! call's frames end. A code object the walker has not met before in the
//! process is copied, with its file name, name and line table, into a
//! [`PyCodeRecord`] reserved right after the stack record: userspace never
//! needs the process stopped, or even alive, to name a frame.
//!
//! Which processes run CPython is told by userspace (`PYTHON`), or, for a
//! process that maps an interpreter userspace registered in `PY_BINARIES`,
//! found here as the file is mapped ([`file_mapped`]), so a short-lived
//! script's first syscalls are walked before userspace has seen it.

use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_task, bpf_probe_read_kernel,
        generated::bpf_probe_read_user as read_user_raw,
    },
    macros::map,
    maps::{HashMap, LruHashMap, RingBuf},
};
use fdtrace_common::{
    CLOSE_PY_SLOTS, EventKind, FLAG_PY_GC, FLAG_PY_SHUTDOWN, MAX_PY_SLOTS, PAGE_SIZE, PY_ABSENT,
    PY_CODE_MIN_BYTES, PY_ENTRY, PY_TRUNCATED, PY_WINDOW_CODE, PY_WINDOW_FILENAME, PY_WINDOW_NAME,
    PY_WINDOW_TABLE, PyBinary, PyCodeRecord, PyFile, PyFrameSlot, PyStackRecordOf, PyWalk,
    PyWindow,
};

use crate::{EVENTS, TASK_FSBASE_OFFSET};

/// Processes running CPython, by thread-group id (`fdtrace_common::PYTHON_MAP`).
#[map]
pub static PYTHON: HashMap<u32, PyWalk> = HashMap::with_max_entries(4096, 0);

/// CPython files userspace recognised, by identity
/// (`fdtrace_common::PYTHON_BINARIES_MAP`).
#[map]
static PY_BINARIES: HashMap<PyFile, PyBinary> = HashMap::with_max_entries(256, 0);

/// Processes that mapped a file named like an interpreter that is not in
/// `PY_BINARIES` (`fdtrace_common::PYTHON_HINTS_MAP`): read by a thread of
/// their own in userspace, so an interpreter is recognised while the
/// process is still starting, however busy the event loop is. A few
/// records a session: once registered, a file is handled here.
#[map]
static PY_HINTS: RingBuf = RingBuf::with_byte_size(4096, 0);

/// Code objects sent to userspace in a [`PyCodeRecord`], per process.
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

/// Object layouts every supported CPython shares (Include/cpython/
/// unicodeobject.h, bytesobject.h): a `str`'s `length` and a `bytes`'
/// `ob_size` are at 16; the longest ASCII `str` header is 48 bytes (3.8 to
/// 3.11), a `bytes`' data starts at 32 and ends with a NUL.
const OBJECT_LENGTH: u64 = 16;
const STR_ASCII_HEADER: u64 = 48;
const BYTES_HEADER: u64 = 33;

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
/// if the process runs CPython, each code object in it not sent before
/// following in its own record.
pub fn record(tgid: u32, tid: u32, ts_ns: u64) {
    fdtrace_python_stack(tgid, tid, ts_ns);
}

/// [`record`] for a close: its innermost [`CLOSE_PY_SLOTS`] frames, in a
/// record an eighth the size (every close of a Python process writes one).
pub fn record_close(tgid: u32, tid: u32, ts_ns: u64) {
    fdtrace_python_close_stack(tgid, tid, ts_ns);
}

/// [`record_close`] as a global BPF function, like [`fdtrace_python_stack`].
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn fdtrace_python_close_stack(tgid: u32, tid: u32, ts_ns: u64) -> u32 {
    walk_python::<CLOSE_PY_SLOTS>(tgid, tid, ts_ns);
    0
}

/// [`record`] as a global BPF function: the verifier checks it once, on its
/// own, instead of once per path through `sys_exit` (its loops would
/// otherwise multiply that program's states past the verifier's limit).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn fdtrace_python_stack(tgid: u32, tid: u32, ts_ns: u64) -> u32 {
    walk_python::<MAX_PY_SLOTS>(tgid, tid, ts_ns);
    0
}

/// Walks up to `N` frames into a [`PyStackRecordOf<N>`].
#[inline(always)]
fn walk_python<const N: usize>(tgid: u32, tid: u32, ts_ns: u64) {
    // Read in place, not copied: the stack is shared with `sys_exit`.
    let Some(walk) = PYTHON.get_ptr(tgid) else {
        return;
    };
    // SAFETY: a live map value of plain old data.
    let walk = unsafe { &*walk };
    let Some(mut entry) = EVENTS.reserve::<PyStackRecordOf<N>>(0) else {
        // Loses a stack or a path, never a close: no loss time.
        crate::count(fdtrace_common::Counter::DroppedEvents);
        return;
    };
    let rec = entry.as_mut_ptr();
    // SAFETY: `rec` is a live reservation of a whole record; every slot
    // index is checked against N.
    unsafe {
        (*rec).kind = EventKind::PyStack as u32;
        (*rec).tgid = tgid;
        (*rec).tid = tid;
        (*rec).len = 0;
        (*rec).ts_ns = ts_ns;
        (*rec).flags = 0;
        (*rec)._pad = 0;
        let me = fs_base();
        let thread = thread_state(walk, me);
        if thread == 0 || me == 0 {
            // Not a thread Python knows: an empty record.
            entry.submit(0);
            return;
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
        for i in 0..N {
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
                // Copied into its own record, reserved while this one is:
                // it reaches userspace first.
                if PY_CODES.get(key).is_none() {
                    fdtrace_python_code(tgid, slot.code, slot.tag);
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
}

/// What the interpreter of process `tgid` is doing to the calling thread
/// right now, as `FLAG_PY_*` bits: finalizing on this thread
/// ([`FLAG_PY_SHUTDOWN`]: `Py_FinalizeEx` has run the exit handlers and
/// set `_PyRuntime`'s finalizing thread state, this one's) or collecting
/// cyclic garbage while this is a Python thread ([`FLAG_PY_GC`]). 0 for a
/// process not running a CPython fdtrace knows, before the interpreter
/// exists and after it is gone (C `atexit` handlers, an embedding program
/// going on), and for threads Python does not know. A global function:
/// verified once, and cheap to call from both syscall programs.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn fdtrace_python_state(tgid: u32) -> u32 {
    let Some(walk) = PYTHON.get_ptr(tgid) else {
        return 0;
    };
    // SAFETY: a live map value of plain old data, read in place.
    let walk = unsafe { &*walk };
    if walk.finalizing == PY_ABSENT {
        return 0;
    }
    // The common case (running, not collecting) costs two reads.
    let finalizing: u64 = read(walk.runtime + u64::from(walk.finalizing));
    if finalizing != 0 {
        // It stays set once finalization is over: the interpreter must
        // still exist, and this be its finalizing thread.
        let head: u64 = read(walk.runtime + u64::from(walk.interp_head));
        let thread: u64 = read(finalizing + u64::from(walk.thread_id));
        let me = fs_base();
        return if head != 0 && me != 0 && thread == me {
            FLAG_PY_SHUTDOWN
        } else {
            0
        };
    }
    // The main interpreter: `interpreters.main` follows `interpreters.head`
    // in every supported version.
    let base: u64 = if walk.gc_in_runtime != 0 {
        walk.runtime
    } else {
        read(walk.runtime + u64::from(walk.interp_head) + 8)
    };
    if base == 0 || read::<i32>(base + u64::from(walk.gc_collecting)) == 0 {
        return 0;
    }
    let me = fs_base();
    if me == 0 || thread_state(walk, me) == 0 {
        return 0;
    }
    FLAG_PY_GC
}

/// The `PyThreadState` of the thread whose `pthread_self()` is `me`, or 0.
#[inline(always)]
fn thread_state(walk: &PyWalk, me: u64) -> u64 {
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
    thread
}

/// Copies the code object at `code` (tagged `tag`) and the objects
/// userspace parses from it into a [`PyCodeRecord`], and remembers it as
/// sent. A global function, like [`fdtrace_python_stack`], so the
/// verifier checks it once; it writes straight into the reservation and
/// keeps only a few scalars on the stack, which the walker's and
/// `sys_exit`'s frames share a 512-byte budget with before Linux 6.13.
/// Returns 1 if the record was written.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn fdtrace_python_code(tgid: u32, code: u64, tag: u64) -> u32 {
    u32::from(copy_code(tgid, code, tag))
}

#[inline(always)]
fn copy_code(tgid: u32, code: u64, tag: u64) -> bool {
    let Some(walk) = PYTHON.get_ptr(tgid) else {
        return false;
    };
    let Some(mut entry) = EVENTS.reserve::<PyCodeRecord>(0) else {
        // Loses a stack or a path, never a close: no loss time.
        crate::count(fdtrace_common::Counter::DroppedEvents);
        return false;
    };
    let rec = entry.as_mut_ptr();
    // SAFETY: `rec` is a live reservation of a whole PyCodeRecord and
    // `walk` a live map value; user memory is only read through the checked
    // helper, into the reservation's arrays, at most their size.
    unsafe {
        (*rec).kind = EventKind::PyCode as u32;
        (*rec).tgid = tgid;
        (*rec).code = code;
        (*rec).tag = tag;
        let filename: u64 = read(code + u64::from((*walk).code_filename));
        let name: u64 = read(code + u64::from((*walk).code_name));
        let table: u64 = read(code + u64::from((*walk).code_line_table));
        let str_len = |at: u64| STR_ASCII_HEADER + read::<u64>(at + OBJECT_LENGTH).min(1 << 20);
        let bytes_len = |at: u64| BYTES_HEADER + read::<u64>(at + OBJECT_LENGTH).min(1 << 20);
        (*rec).windows[PY_WINDOW_CODE] =
            copy_window(&raw mut (*rec).code_bytes, code, PY_CODE_MIN_BYTES as u64);
        (*rec).windows[PY_WINDOW_FILENAME] =
            copy_window(&raw mut (*rec).filename, filename, str_len(filename));
        (*rec).windows[PY_WINDOW_NAME] = copy_window(&raw mut (*rec).name, name, str_len(name));
        (*rec).windows[PY_WINDOW_TABLE] =
            copy_window(&raw mut (*rec).line_table, table, bytes_len(table));
    }
    // Its syscall record, which follows, decides whether to wake userspace.
    entry.submit(BPF_RB_NO_WAKEUP.into());
    let key = CodeKey {
        tgid,
        _pad: 0,
        code,
        tag,
    };
    let _ = PY_CODES.insert(key, 1, 0);
    true
}

/// Copies the object at `addr` into `dst`: `N` bytes if they can all be
/// read, else its own `size` (the object may end where its mapping does),
/// else up to the end of its page; cut to `N` in every case. A failed read
/// zeroes `dst` and is only retried shorter, never branched on further.
///
/// # Safety
/// `dst` must point to `N` writable bytes.
#[inline(always)]
unsafe fn copy_window<const N: usize>(dst: *mut [u8; N], addr: u64, size: u64) -> PyWindow {
    let whole = N as u64;
    let own = if size < whole { size } else { whole };
    let in_page = PAGE_SIZE - (addr & (PAGE_SIZE - 1));
    let in_page = if in_page < whole { in_page } else { whole };
    let dst = dst.cast::<u8>();
    // SAFETY: every length is at most N, the destination's size.
    let len = unsafe {
        if read_into(dst, whole, addr) {
            whole
        } else if read_into(dst, own, addr) {
            own
        } else if read_into(dst, in_page, addr) {
            in_page
        } else {
            0
        }
    };
    PyWindow {
        addr,
        len: len as u32,
        _pad: 0,
    }
}

/// Reads `len` bytes of user memory at `addr` into `dst`.
///
/// # Safety
/// `dst` must point to `len` writable bytes.
#[inline(always)]
unsafe fn read_into(dst: *mut u8, len: u64, addr: u64) -> bool {
    // SAFETY: guaranteed by the caller; the source is only read through
    // the checked helper.
    unsafe { read_user_raw(dst.cast(), len as u32, addr as *const core::ffi::c_void) == 0 }
}

/// A forked child runs the same interpreter at the same addresses.
#[inline(always)]
pub fn fork(parent: u32, child: u32) {
    if let Some(walk) = PYTHON.get_ptr(parent) {
        // SAFETY: the helper copies the live map value; nothing is copied
        // onto the stack.
        #[expect(
            clippy::needless_borrows_for_generic_args,
            reason = "the borrow hands the helper the map value's own address"
        )]
        let _ = PYTHON.insert(child, unsafe { &*walk }, 0);
    }
}

/// A process mapped a file: if userspace registered it as a CPython
/// interpreter and the process has no walker entry yet, give it one, so
/// its first Python syscalls are walked before userspace has looked at it.
/// `file` names it by its path ([`PyFile`]). At exec (`at_exec`), for the program itself,
/// `start` is the new image's `AT_ENTRY`; for an executable mmap, `start`
/// is the mapping's address and `pgoff` its file offset in bytes, and only
/// the mapping of the file's executable segment says where it was loaded.
/// At exec, call it after [`forget`]. Returns whether `file` is registered.
#[inline(always)]
pub fn file_mapped(tgid: u32, file: PyFile, start: u64, pgoff: u64, at_exec: bool) -> bool {
    let Some(binary) = PY_BINARIES.get_ptr(file) else {
        return false;
    };
    // SAFETY: a live map value of plain old data, read in place: a copy
    // on the stack would count against the 512 bytes every call chain
    // shares on kernels before 6.13.
    let runtime = unsafe {
        if at_exec {
            Some((*binary).runtime_at_exec(start))
        } else {
            (*binary).runtime_at_mapping(start, pgoff)
        }
    };
    let Some(runtime) = runtime else {
        return true;
    };
    // An entry userspace (or an earlier mapping) already wrote stays.
    #[expect(
        clippy::needless_borrows_for_generic_args,
        reason = "the borrow hands the helper the map value's own address; a value would be copied onto the stack"
    )]
    // SAFETY: the value is copied by the helper from the live map value.
    let inserted = PYTHON
        .insert(tgid, unsafe { &(*binary).walk }, BPF_NOEXIST.into())
        .is_ok();
    if inserted && let Some(walk) = PYTHON.get_ptr_mut(tgid) {
        // SAFETY: a live map value; one aligned u64 field is written.
        unsafe { (*walk).runtime = runtime };
    }
    true
}

/// `python…` and `libpython…`, as the first bytes of a name read as a
/// little-endian `u64`.
const PYTHON_NAME: u64 = u64::from_le_bytes(*b"python\0\0");
const PYTHON_NAME_MASK: u64 = (1 << 48) - 1;
const LIBPYTHON_NAME: u64 = u64::from_le_bytes(*b"libpytho");

/// Whether a file name starting with `head` (its first eight bytes, fewer
/// for a shorter name, zero-padded) is named like a CPython interpreter.
#[inline(always)]
pub fn named_like_python(head: u64) -> bool {
    head & PYTHON_NAME_MASK == PYTHON_NAME || head == LIBPYTHON_NAME
}

/// Tells userspace's hint reader that process `tgid` mapped an interpreter
/// the kernel does not know yet. A full ring loses the hint, not an event:
/// the event stream still carries the mapping.
#[inline(always)]
pub fn hint(tgid: u32) {
    let _ = PY_HINTS.output::<u64>(u64::from(tgid), BPF_RB_FORCE_WAKEUP.into());
}

/// After exec or exit the process's entry no longer applies.
#[inline(always)]
pub fn forget(tgid: u32) {
    let _ = PYTHON.remove(tgid);
}
