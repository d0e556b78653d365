//! Where CPython keeps what the walker needs, per interpreter version
//! (x86_64, release builds with the GIL). 3.8 to 3.12 come from tables
//! checked against each version's debug info; 3.13+ read most offsets from
//! the `_Py_DebugOffsets` struct the interpreter publishes at the start of
//! `_PyRuntime`, and add the few it does not cover.

use fdtrace_common::{PY_ABSENT, PY_NO_SHIMS, PyWalk};

use super::lines::LineFormat;

/// How a frame's instruction field reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Instr {
    /// `f_lasti` in bytes (3.8, 3.9).
    LastiBytes,
    /// `f_lasti` in 2-byte code units (3.10).
    LastiUnits,
    /// A pointer into the code object's inline bytecode (3.11+).
    Pointer,
}

/// Everything version-specific, besides `_PyRuntime`'s address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub major: u8,
    pub minor: u8,
    /// The kernel walker's offsets (`runtime` is filled in per process).
    pub walk: PyWalk,
    pub instr: Instr,
    pub lines: LineFormat,
    pub code: CodeLayout,
    /// Where a compact ASCII string's characters start, and a compact
    /// non-ASCII one's.
    pub ascii_data: u64,
    pub compact_data: u64,
}

/// `PyCodeObject` fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodeLayout {
    pub filename: u64,
    pub name: u64,
    pub qualname: Option<u64>,
    pub first_line: u64,
    pub line_table: u64,
    /// `_co_firsttraceable` (3.13+): frames stopped before it are
    /// interpreter-internal (the `__init__` cleanup shim).
    pub first_traceable: Option<u64>,
    /// `co_code_adaptive`, the inline bytecode (3.11+).
    pub bytecode: Option<u64>,
}

/// Offset of `ob_type` in every object.
pub const OB_TYPE: u64 = 8;
/// `PyBytesObject.ob_size` and `ob_sval`.
pub const BYTES_SIZE: u64 = 16;
pub const BYTES_DATA: u64 = 32;
/// `PyASCIIObject.length` and `state`.
pub const STR_LENGTH: u64 = 16;
pub const STR_STATE: u64 = 32;

/// The cookie `_Py_DebugOffsets` starts with.
pub const DEBUG_COOKIE: &[u8; 8] = b"xdebugpy";

const fn walk(fields: [u32; 13]) -> PyWalk {
    PyWalk {
        runtime: 0,
        code_mask: u64::MAX,
        interp_head: fields[0],
        threads_head: fields[1],
        thread_next: fields[2],
        thread_id: fields[3],
        thread_frame: fields[4],
        cframe_frame: fields[5],
        frame_code: fields[6],
        frame_previous: fields[7],
        frame_instr: fields[8],
        frame_owner: fields[9],
        frame_is_entry: fields[10],
        shim_owner: fields[11],
        frame_object: fields[12],
        code_line_table: 0,
        code_first_line: 0,
        code_filename: 0,
        code_name: 0,
        finalizing: PY_ABSENT,
        gc_collecting: 0,
        gc_in_runtime: 0,
    }
}

/// Where `_PyRuntime` says the interpreter is finalizing, and where the
/// main interpreter's garbage collector says it is collecting.
const fn with_lifecycle(mut walk: PyWalk, finalizing: u32, gc_collecting: u32) -> PyWalk {
    walk.finalizing = finalizing;
    walk.gc_collecting = gc_collecting;
    walk
}

const A: u32 = PY_ABSENT;
const N: u32 = PY_NO_SHIMS;

/// 3.8 to 3.10: `PyFrameObject` chains from `tstate->frame`.
const fn frame_objects(minor: u8) -> Layout {
    let lasti = if minor == 10 { 96 } else { 104 };
    // interp head, threads head, next, thread_id, frame, -, code,
    // f_back, f_lasti, (no owner), -, no shims, frame objects
    let frames = walk([32, 8, 8, 176, 24, A, 32, 24, lasti, 0, A, N, 1]);
    // `_PyRuntime.finalizing` (`_finalizing` from 3.9) is at 16; the
    // collector's state moved from `_PyRuntime.gc` (3.8) into each
    // interpreter (3.9).
    let lifecycle = if minor == 8 {
        let mut walk = with_lifecycle(frames, 16, 544);
        walk.gc_in_runtime = 1;
        walk
    } else {
        with_lifecycle(frames, 16, 816)
    };
    Layout {
        major: 3,
        minor,
        walk: lifecycle,
        instr: if minor == 10 {
            Instr::LastiUnits
        } else {
            Instr::LastiBytes
        },
        lines: if minor == 10 {
            LineFormat::Linetable310
        } else {
            LineFormat::Lnotab
        },
        code: CodeLayout {
            filename: 104,
            name: 112,
            qualname: None,
            first_line: 40,
            line_table: 120,
            first_traceable: None,
            bytecode: None,
        },
        ascii_data: 48,
        compact_data: 72,
    }
}

/// The built-in table for `major.minor`, if fdtrace knows that version.
/// 3.13+ come from [`from_debug_offsets`] instead.
pub fn table(major: u8, minor: u8) -> Option<Layout> {
    if major != 3 {
        return None;
    }
    Some(match minor {
        8..=10 => frame_objects(minor),
        11 => Layout {
            major,
            minor,
            // interp head, threads head, next, thread_id, cframe,
            // cframe->current_frame, f_code, previous, prev_instr, owner
            // (no shims in 3.11), is_entry, -, interpreter frames
            walk: with_lifecycle(
                walk([40, 16, 8, 152, 56, 8, 32, 48, 56, 0, 68, N, 0]),
                24,
                848,
            ),
            instr: Instr::Pointer,
            lines: LineFormat::Locations,
            code: CodeLayout {
                filename: 112,
                name: 120,
                qualname: Some(128),
                first_line: 72,
                line_table: 136,
                first_traceable: None,
                bytecode: Some(184),
            },
            ascii_data: 48,
            compact_data: 72,
        },
        12 => Layout {
            major,
            minor,
            // ..., owner at 70, shims have owner 3 (FRAME_OWNED_BY_CSTACK)
            walk: with_lifecycle(
                walk([40, 72, 8, 136, 56, 0, 0, 8, 56, 70, A, 3, 0]),
                24,
                312,
            ),
            instr: Instr::Pointer,
            lines: LineFormat::Locations,
            code: CodeLayout {
                filename: 112,
                name: 120,
                qualname: Some(128),
                first_line: 68,
                line_table: 136,
                first_traceable: None,
                bytecode: Some(192),
            },
            ascii_data: 40,
            compact_data: 56,
        },
        _ => return None,
    })
}

/// Reads the 3.13+ `_Py_DebugOffsets` at the start of `_PyRuntime`
/// (`words` are its `u64` fields in order, the cookie being word 0).
/// `None` for a version whose struct layout fdtrace does not know.
pub fn from_debug_offsets(words: &[u64]) -> Option<Layout> {
    let version = *words.get(1)?;
    let major = u8::try_from((version >> 24) & 0xff).ok()?;
    let minor = u8::try_from((version >> 16) & 0xff).ok()?;
    let free_threaded = *words.get(2)? != 0;
    if major != 3 || free_threaded {
        return None;
    }
    // Byte offsets in _Py_DebugOffsets of the fields used (see
    // Include/internal/pycore_debug_offsets.h of each version); 3.14
    // inserted fields, moving the later ones.
    struct Fields {
        interp_head: usize,
        threads_head: usize,
        thread_next: usize,
        thread_id: usize,
        current_frame: usize,
        frame_previous: usize,
        frame_code: usize,
        frame_instr: usize,
        frame_owner: usize,
        code_filename: usize,
        code_name: usize,
        code_qualname: usize,
        code_line_table: usize,
        code_first_line: usize,
        code_bytecode: usize,
        finalizing: usize,
        interp_gc: usize,
        gc_collecting: usize,
    }
    let (f, shim_owner, first_traceable, code_mask) = match minor {
        13 => (
            Fields {
                interp_head: 40,
                threads_head: 72,
                thread_next: 168,
                thread_id: 192,
                current_frame: 184,
                frame_previous: 232,
                frame_code: 240,
                frame_instr: 248,
                frame_owner: 264,
                code_filename: 280,
                code_name: 288,
                code_qualname: 296,
                code_line_table: 304,
                code_first_line: 312,
                code_bytecode: 344,
                finalizing: 32,
                interp_gc: 80,
                gc_collecting: 576,
            },
            // FRAME_OWNED_BY_CSTACK
            3,
            184,
            u64::MAX,
        ),
        14 => (
            Fields {
                interp_head: 40,
                threads_head: 72,
                thread_next: 192,
                thread_id: 216,
                current_frame: 208,
                frame_previous: 256,
                frame_code: 264,
                frame_instr: 272,
                frame_owner: 288,
                code_filename: 320,
                code_name: 328,
                code_qualname: 336,
                code_line_table: 344,
                code_first_line: 352,
                code_bytecode: 384,
                finalizing: 32,
                interp_gc: 88,
                gc_collecting: 656,
            },
            // FRAME_OWNED_BY_INTERPRETER and above
            3,
            192,
            // f_executable is a tagged _PyStackRef.
            !3,
        ),
        _ => return None,
    };
    let word = |byte: usize| words.get(byte / 8).copied();
    // sizeof(_PyInterpreterFrame) as published, which tells the final
    // layouts from the development builds that shared 3.13's.
    let frame_size = match minor {
        13 => (224, 80),
        _ => (248, 88),
    };
    if word(frame_size.0) != Some(frame_size.1) {
        return None;
    }
    let small = |byte: usize| word(byte).and_then(|v| u32::try_from(v).ok());
    let mut walk = walk([
        small(f.interp_head)?,
        small(f.threads_head)?,
        small(f.thread_next)?,
        small(f.thread_id)?,
        small(f.current_frame)?,
        A,
        small(f.frame_code)?,
        small(f.frame_previous)?,
        small(f.frame_instr)?,
        small(f.frame_owner)?,
        A,
        shim_owner,
        0,
    ]);
    walk.code_mask = code_mask;
    // Offset 0 is the cookie: a build that does not fill it in.
    walk.finalizing = small(f.finalizing)?;
    if walk.finalizing < 8 {
        walk.finalizing = A;
    }
    walk.gc_collecting = small(f.interp_gc)?.checked_add(small(f.gc_collecting)?)?;
    Some(Layout {
        major,
        minor,
        walk,
        instr: Instr::Pointer,
        lines: LineFormat::Locations,
        code: CodeLayout {
            filename: word(f.code_filename)?,
            name: word(f.code_name)?,
            qualname: Some(word(f.code_qualname)?),
            first_line: word(f.code_first_line)?,
            line_table: word(f.code_line_table)?,
            first_traceable: Some(first_traceable),
            bytecode: Some(word(f.code_bytecode)?),
        },
        ascii_data: 40,
        compact_data: 56,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// CPython 3.13.0's `_Py_DebugOffsets`, as words (the values the
    /// tests need; the rest zero).
    pub(crate) fn debug_offsets_313() -> Vec<u64> {
        let mut words = vec![0u64; 73];
        words[0] = u64::from_ne_bytes(*DEBUG_COOKIE);
        words[1] = 0x030d_00f0;
        for (byte, v) in [
            (224, 80),
            (40, 632),
            (72, 7344),
            (168, 8),
            (184, 72),
            (192, 152),
            (232, 8),
            (240, 0),
            (248, 56),
            (264, 70),
            (280, 112),
            (288, 120),
            (296, 128),
            (304, 136),
            (312, 68),
            (344, 200),
            (32, 608),
            (80, 7400),
            (576, 200),
        ] {
            words[byte / 8] = v;
        }
        words
    }

    #[test]
    fn debug_offsets_of_313() {
        let mut words = debug_offsets_313();
        let l = from_debug_offsets(&words).unwrap();
        assert_eq!((l.major, l.minor), (3, 13));
        assert_eq!(l.walk.interp_head, 632);
        assert_eq!(l.walk.threads_head, 7344);
        assert_eq!(l.walk.thread_frame, 72);
        assert_eq!(l.walk.cframe_frame, PY_ABSENT);
        assert_eq!(l.walk.frame_owner, 70);
        assert_eq!(l.code.bytecode, Some(200));
        assert_eq!(l.code.first_line, 68);
        assert_eq!(l.walk.finalizing, 608);
        assert_eq!((l.walk.gc_collecting, l.walk.gc_in_runtime), (7600, 0));
        // Unknown layouts are refused rather than guessed.
        words[1] = 0x030f_00a0;
        assert_eq!(from_debug_offsets(&words), None);
    }

    #[test]
    fn debug_offsets_of_314() {
        // Values read from CPython 3.14.10's _Py_DebugOffsets.
        let mut words = vec![0u64; 95];
        words[0] = u64::from_ne_bytes(*DEBUG_COOKIE);
        words[1] = 0x030e_0af0;
        for (byte, v) in [
            (40, 808),
            (72, 7344),
            (192, 8),
            (208, 72),
            (216, 152),
            (248, 88),
            (256, 8),
            (264, 0),
            (272, 56),
            (288, 74),
            (320, 112),
            (328, 120),
            (336, 128),
            (344, 136),
            (352, 68),
            (384, 208),
            // Distinct stand-ins: where the lifecycle words sit is what
            // this checks.
            (32, 1000),
            (88, 2000),
            (656, 300),
        ] {
            words[byte / 8] = v;
        }
        let l = from_debug_offsets(&words).unwrap();
        assert_eq!((l.major, l.minor), (3, 14));
        assert_eq!(l.walk.interp_head, 808);
        assert_eq!(l.walk.thread_next, 8);
        assert_eq!(l.walk.thread_id, 152);
        assert_eq!(l.walk.thread_frame, 72);
        assert_eq!(l.walk.frame_owner, 74);
        assert_eq!(l.walk.code_mask, !3);
        assert_eq!(l.code.bytecode, Some(208));
        assert_eq!(l.code.first_traceable, Some(192));
        assert_eq!(l.walk.finalizing, 1000);
        assert_eq!((l.walk.gc_collecting, l.walk.gc_in_runtime), (2300, 0));
        // Without a finalizing offset, no close is judged by its timing.
        words[32 / 8] = 0;
        assert_eq!(
            from_debug_offsets(&words).unwrap().walk.finalizing,
            PY_ABSENT
        );
        // A development build with 3.13's layout is refused.
        words[248 / 8] = 0;
        assert_eq!(from_debug_offsets(&words), None);
    }

    #[test]
    fn tables_cover_38_to_312() {
        for minor in 8..=12 {
            assert!(table(3, minor).is_some(), "3.{minor}");
        }
        assert!(table(3, 7).is_none());
        assert!(table(3, 13).is_none());
        assert_eq!(table(3, 10).unwrap().instr, Instr::LastiUnits);
    }

    #[test]
    fn shutdown_and_collector_state_per_version() {
        // (finalizing in _PyRuntime, gc.collecting, relative to _PyRuntime),
        // read with gdb from each version's debug info.
        let expected = [
            (8, (16, 544, 1)),
            (9, (16, 816, 0)),
            (10, (16, 816, 0)),
            (11, (24, 848, 0)),
            (12, (24, 312, 0)),
        ];
        for (minor, want) in expected {
            let w = table(3, minor).unwrap().walk;
            assert_eq!(
                (w.finalizing, w.gc_collecting, w.gc_in_runtime),
                want,
                "3.{minor}"
            );
        }
    }
}
