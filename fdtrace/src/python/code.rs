//! Python stage, code objects: reads a CPython code object's file, name,
//! first line and line table out of a [`Memory`], either the windows the
//! kernel copied into a `PyCodeRecord` or, as a fallback, the live process.
//! Pure over `Memory`: a test drives it with hand-built bytes.

use std::{fs::File, os::unix::fs::FileExt as _, sync::Arc};

use super::layout::{BYTES_DATA, BYTES_SIZE, Layout, OB_TYPE, STR_LENGTH, STR_STATE};

/// Longest string or line table read from a process.
const MAX_READ: u64 = 1 << 20;

/// What was read of one code object.
#[derive(Debug, PartialEq, Eq)]
pub struct Code {
    pub file: Arc<str>,
    pub function: Arc<str>,
    pub first_line: i32,
    pub line_table: Vec<u8>,
    pub first_traceable: Option<i32>,
}

/// Why a code object could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unread {
    /// The object there is not a code object: the layout is wrong, or the
    /// frame pointed elsewhere.
    NotCode,
    /// Some of it was not there to read.
    Missing,
}

/// Memory of one process, or the parts of it that were copied.
pub trait Memory {
    /// Up to `len` bytes at `addr`: fewer when the readable range ends
    /// first, `None` when nothing at `addr` is.
    fn read_upto(&mut self, addr: u64, len: usize) -> Option<Vec<u8>>;

    /// Exactly `len` bytes at `addr`.
    fn read(&mut self, addr: u64, len: usize) -> Option<Vec<u8>> {
        self.read_upto(addr, len).filter(|b| b.len() == len)
    }

    fn read_u64(&mut self, addr: u64) -> Option<u64> {
        let b = self.read(addr, 8)?;
        Some(u64::from_ne_bytes(b.try_into().ok()?))
    }

    fn read_i32(&mut self, addr: u64) -> Option<i32> {
        let b = self.read(addr, 4)?;
        Some(i32::from_ne_bytes(b.try_into().ok()?))
    }
}

/// Ranges of a process's memory copied by the kernel: (address, bytes).
pub struct Windows<'a>(pub &'a [(u64, Vec<u8>)]);

impl Memory for Windows<'_> {
    fn read_upto(&mut self, addr: u64, len: usize) -> Option<Vec<u8>> {
        self.0.iter().find_map(|(start, bytes)| {
            let skip = usize::try_from(addr.checked_sub(*start)?).ok()?;
            let rest = bytes.get(skip..).filter(|r| !r.is_empty())?;
            Some(rest[..len.min(rest.len())].to_vec())
        })
    }
}

/// A live process's memory, through /proc/PID/mem.
pub struct ProcMemory<'a>(pub &'a File);

impl Memory for ProcMemory<'_> {
    fn read_upto(&mut self, addr: u64, len: usize) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.0.read_exact_at(&mut buf, addr).ok()?;
        Some(buf)
    }
}

/// Reads the code object at `addr`, after checking that its type is
/// `code_type` (`PyCode_Type` in the process). A string or line table
/// longer than what can be read is cut.
pub fn read_code(
    mem: &mut impl Memory,
    layout: &Layout,
    code_type: u64,
    addr: u64,
) -> Result<Code, Unread> {
    let missing = Unread::Missing;
    if mem.read_u64(addr + OB_TYPE).ok_or(missing)? != code_type {
        return Err(Unread::NotCode);
    }
    let c = layout.code;
    let file = mem.read_u64(addr + c.filename).ok_or(missing)?;
    let function = mem
        .read_u64(addr + c.qualname.unwrap_or(c.name))
        .ok_or(missing)?;
    let table = mem.read_u64(addr + c.line_table).ok_or(missing)?;
    let table_len = mem
        .read_u64(table + BYTES_SIZE)
        .ok_or(missing)?
        .min(MAX_READ);
    let table_len = usize::try_from(table_len).map_err(|_| missing)?;
    Ok(Code {
        file: Arc::from(read_str(mem, layout, file).ok_or(missing)?),
        function: Arc::from(read_str(mem, layout, function).ok_or(missing)?),
        first_line: mem.read_i32(addr + c.first_line).ok_or(missing)?,
        line_table: match table_len {
            0 => Vec::new(),
            n => mem.read_upto(table + BYTES_DATA, n).ok_or(missing)?,
        },
        first_traceable: match c.first_traceable {
            Some(at) => Some(mem.read_i32(addr + at).ok_or(missing)?),
            None => None,
        },
    })
}

/// A `str` object's text (compact ASCII, compact UCS1/2/4, or legacy),
/// cut where the readable memory ends.
pub fn read_str(mem: &mut impl Memory, layout: &Layout, addr: u64) -> Option<String> {
    let state = mem.read(addr + STR_STATE, 4)?;
    let state = u32::from_ne_bytes(state.try_into().ok()?);
    let kind = (state >> 2) & 7;
    let compact = (state >> 5) & 1 == 1;
    let ascii = (state >> 6) & 1 == 1;
    let length = mem.read_u64(addr + STR_LENGTH)?.min(MAX_READ);
    let data = match (compact, ascii) {
        (true, true) => addr + layout.ascii_data,
        (true, false) => addr + layout.compact_data,
        // Legacy strings point at their characters.
        (false, _) => mem.read_u64(addr + layout.compact_data)?,
    };
    let unit = if ascii { 1 } else { kind.clamp(1, 4) };
    let bytes = match length {
        0 => Vec::new(),
        _ => mem.read_upto(data, usize::try_from(length * u64::from(unit)).ok()?)?,
    };
    Some(match unit {
        1 => bytes.iter().map(|&b| char::from(b)).collect(),
        2 => char::decode_utf16(
            bytes
                .chunks_exact(2)
                .map(|c| u16::from_ne_bytes([c[0], c[1]])),
        )
        .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect(),
        _ => bytes
            .chunks_exact(4)
            .map(|c| {
                char::from_u32(u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                    .unwrap_or(char::REPLACEMENT_CHARACTER)
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::layout::table;
    use super::*;

    const CODE: u64 = 0x7f00_0000_1000;
    const FILE: u64 = 0x7f00_0000_2000;
    const NAME: u64 = 0x7f00_0000_3000;
    const TABLE: u64 = 0x7f00_0000_4000;
    const CODE_TYPE: u64 = 0x55_0000_9000;

    fn put(bytes: &mut Vec<u8>, at: u64, value: &[u8]) {
        let at = usize::try_from(at).unwrap();
        if bytes.len() < at + value.len() {
            bytes.resize(at + value.len(), 0);
        }
        bytes[at..at + value.len()].copy_from_slice(value);
    }

    /// A compact ASCII `str` object (3.12 layout: characters at 40).
    fn ascii(text: &str) -> Vec<u8> {
        let mut s = Vec::new();
        put(&mut s, STR_LENGTH, &(text.len() as u64).to_ne_bytes());
        // kind 1 (bits 2-4), compact (bit 5), ascii (bit 6)
        put(
            &mut s,
            STR_STATE,
            &(1u32 << 2 | 1 << 5 | 1 << 6).to_ne_bytes(),
        );
        put(&mut s, 40, text.as_bytes());
        s
    }

    /// The windows a 3.12 code object would arrive in.
    fn windows(file: &str) -> (Layout, Vec<(u64, Vec<u8>)>) {
        let layout = table(3, 12).unwrap();
        let c = layout.code;
        let mut code = Vec::new();
        put(&mut code, OB_TYPE, &CODE_TYPE.to_ne_bytes());
        put(&mut code, c.filename, &FILE.to_ne_bytes());
        put(&mut code, c.qualname.unwrap(), &NAME.to_ne_bytes());
        put(&mut code, c.line_table, &TABLE.to_ne_bytes());
        put(&mut code, c.first_line, &7i32.to_ne_bytes());
        code.resize(256, 0);
        let mut lines = Vec::new();
        put(&mut lines, BYTES_SIZE, &3u64.to_ne_bytes());
        put(&mut lines, BYTES_DATA, &[0x80, 0x81, 0x82, 0]);
        let w = vec![
            (CODE, code),
            (FILE, ascii(file)),
            (NAME, ascii("Cache.fill")),
            (TABLE, lines),
        ];
        (layout, w)
    }

    #[test]
    fn a_code_object_is_read_from_its_windows() {
        let (layout, w) = windows("/srv/app/cache.py");
        let code = read_code(&mut Windows(&w), &layout, CODE_TYPE, CODE).unwrap();
        assert_eq!(
            code,
            Code {
                file: Arc::from("/srv/app/cache.py"),
                function: Arc::from("Cache.fill"),
                first_line: 7,
                line_table: vec![0x80, 0x81, 0x82],
                first_traceable: None,
            }
        );
    }

    #[test]
    fn a_string_longer_than_its_window_is_cut() {
        let (layout, mut w) = windows("/srv/app/cache.py");
        // The kernel could only copy the header and 9 characters.
        w[1].1.truncate(40 + 9);
        let code = read_code(&mut Windows(&w), &layout, CODE_TYPE, CODE).unwrap();
        assert_eq!(&*code.file, "/srv/app/");
        // A line table cut short keeps its first bytes.
        w[3].1.truncate(32 + 2);
        let code = read_code(&mut Windows(&w), &layout, CODE_TYPE, CODE).unwrap();
        assert_eq!(code.line_table, [0x80, 0x81]);
    }

    #[test]
    fn another_type_is_not_a_code_object_and_a_lost_window_is_missing() {
        let (layout, mut w) = windows("a.py");
        assert_eq!(
            read_code(&mut Windows(&w), &layout, CODE_TYPE + 8, CODE),
            Err(Unread::NotCode)
        );
        w.remove(2);
        assert_eq!(
            read_code(&mut Windows(&w), &layout, CODE_TYPE, CODE),
            Err(Unread::Missing)
        );
        // A code window too short for the fields read is missing too.
        let (_, mut w) = windows("a.py");
        w[0].1.truncate(100);
        assert_eq!(
            read_code(&mut Windows(&w), &layout, CODE_TYPE, CODE),
            Err(Unread::Missing)
        );
    }

    #[test]
    fn two_byte_strings_decode() {
        let layout = table(3, 12).unwrap();
        let mut s = Vec::new();
        put(&mut s, STR_LENGTH, &2u64.to_ne_bytes());
        // kind 2, compact, not ascii: characters at compact_data (56).
        put(&mut s, STR_STATE, &(2u32 << 2 | 1 << 5).to_ne_bytes());
        put(
            &mut s,
            56,
            &[0x3b1u16.to_ne_bytes(), 0x3b2u16.to_ne_bytes()].concat(),
        );
        let w = [(FILE, s)];
        assert_eq!(
            read_str(&mut Windows(&w), &layout, FILE).as_deref(),
            Some("αβ")
        );
    }
}
