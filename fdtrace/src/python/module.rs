//! Python stage, files: what a python executable or libpython says about
//! itself without running: its symbols, its segments, and the interpreter
//! layout read from statically initialised data in the file (the 3.13+
//! `_Py_DebugOffsets` at the start of `_PyRuntime`, or `Py_Version`), so
//! recognising an interpreter never needs a process stopped to read it.

use std::{ops::Range, path::Path};

use fdtrace_common::{PyBinary, PyWalk};
use object::{
    LittleEndian, Object as _, ObjectSegment as _, ReadCache, ReadRef, SectionIndex, SegmentFlags,
    elf::{PF_X, SHT_DYNSYM, SHT_SYMTAB, STT_FUNC, STT_NOTYPE, STT_OBJECT, Sym64},
    read::elf::{ElfFile64, SectionHeader as _},
};

use crate::stacks::unwind::open_regular;

use super::layout::{DEBUG_COOKIE, Layout, from_debug_offsets, table};

/// Largest symbol or string table read: a file a traced process chose
/// (named like an interpreter, mapped executable) may claim any size, and
/// each table is read whole. libpython's are under 1 MiB.
const MAX_TABLE: u64 = 64 << 20;

/// Size of `_Py_DebugOffsets` read (3.14's is 760 bytes).
const DEBUG_OFFSETS_BYTES: usize = 768;

/// Symbols, segments and layout of a python executable or libpython.
#[derive(Debug)]
pub struct Module {
    /// `_PyRuntime` and `PyCode_Type`: absent before 3.7 (or in the
    /// python executable that only links libpython).
    pub runtime: Option<u64>,
    pub code_type: Option<u64>,
    /// Defines `Py_Initialize`: this file is the interpreter.
    pub interpreter: bool,
    pub eval: Vec<Range<u64>>,
    /// PT_LOAD segments.
    pub segments: Vec<Segment>,
    /// `major.minor` from the file name (`python3.10`, `libpython3.10.so`).
    pub named: Option<(u8, u8)>,
    /// The interpreter's layout, `None` for a version fdtrace cannot walk.
    pub layout: Option<Layout>,
    /// The ELF header's `e_entry`.
    pub entry: u64,
}

/// A PT_LOAD segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub offset: u64,
    pub file_size: u64,
    pub vaddr: u64,
    pub executable: bool,
}

impl Module {
    /// The kernel walker's offsets for this interpreter, with `runtime` the
    /// link-time address of `_PyRuntime` (the caller adds the load bias).
    pub fn walk(&self) -> Option<PyWalk> {
        let layout = self.layout?;
        let mut walk = layout.walk;
        walk.runtime = self.runtime?;
        self.code_type?;
        let small = |at: u64| u32::try_from(at).unwrap_or(0);
        walk.code_line_table = small(layout.code.line_table);
        walk.code_first_line = small(layout.code.first_line);
        walk.code_filename = small(layout.code.filename);
        walk.code_name = small(layout.code.qualname.unwrap_or(layout.code.name));
        Some(walk)
    }

    /// What the kernel needs to walk a process that maps this file, with
    /// no help from userspace.
    pub fn binary(&self) -> Option<PyBinary> {
        let exec = self.segments.iter().find(|s| s.executable)?;
        Some(PyBinary {
            walk: self.walk()?,
            entry: self.entry,
            exec_vaddr: exec.vaddr & !0xfff,
            exec_offset: exec.offset & !0xfff,
        })
    }
}

/// Reads a python executable or libpython; `None` if it is not an ELF file
/// (or not a regular file). Only the headers, the symbol tables and a few
/// bytes of data are read, not the whole file (a libpython with its debug
/// information is tens of megabytes): recognising an interpreter must take
/// less than the interpreter takes to start.
pub fn read_module(path: &Path) -> Option<Module> {
    let cache = ReadCache::new(open_regular(path)?);
    let data = &cache;
    // x86_64 only: a big-endian file does not parse.
    let elf = ElfFile64::<LittleEndian, _>::parse(data).ok()?;
    // Each table and its strings in one read: through the cache, every
    // name would be a read of its own.
    let mut symbols = Symbols::default();
    let table = elf.elf_section_table();
    for kind in [SHT_DYNSYM, SHT_SYMTAB] {
        for section in table
            .iter()
            .filter(|s| s.sh_type(LittleEndian) == kind && s.sh_size(LittleEndian) <= MAX_TABLE)
        {
            let strings = table
                .section(SectionIndex(section.sh_link(LittleEndian) as usize))
                .ok()
                .filter(|s| s.sh_size(LittleEndian) <= MAX_TABLE)
                .map(|s| s.data(LittleEndian, data));
            if let (Ok(entries), Some(Ok(strings))) = (section.data(LittleEndian, data), strings) {
                symbols.scan(entries, strings);
            }
        }
    }
    let Symbols {
        runtime,
        code_type,
        version,
        interpreter,
        eval,
    } = symbols;
    let segments: Vec<Segment> = elf
        .segments()
        .map(|s| {
            let (offset, file_size) = s.file_range();
            Segment {
                offset,
                file_size,
                vaddr: s.address(),
                executable: matches!(s.flags(), SegmentFlags::Elf { p_flags } if p_flags & PF_X != 0),
            }
        })
        .collect();
    let named = version_in_name(path.file_name()?.to_str()?);
    let layout = static_layout(data, &segments, runtime, version, named);
    Some(Module {
        runtime,
        code_type,
        interpreter,
        eval,
        segments,
        named,
        layout,
        entry: elf.entry(),
    })
}

/// What the symbol tables say about an interpreter.
#[derive(Default)]
struct Symbols {
    runtime: Option<u64>,
    code_type: Option<u64>,
    version: Option<u64>,
    interpreter: bool,
    eval: Vec<Range<u64>>,
}

impl Symbols {
    /// Reads the definitions in an `Elf64_Sym` table (little-endian) whose
    /// names are in `strings`.
    fn scan(&mut self, entries: &[u8], strings: &[u8]) {
        const SHN_LORESERVE: u16 = 0xff00;
        for entry in entries.chunks_exact(size_of::<Sym64<LittleEndian>>()) {
            let word =
                |at: usize| u64::from_le_bytes(entry[at..at + 8].try_into().unwrap_or([0; 8]));
            let name_at = u32::from_le_bytes(entry[..4].try_into().unwrap_or([0; 4]));
            let kind = entry[4] & 0xf;
            let section = u16::from_le_bytes([entry[6], entry[7]]);
            if section == 0
                || section >= SHN_LORESERVE
                || !matches!(kind, STT_NOTYPE | STT_OBJECT | STT_FUNC)
            {
                continue;
            }
            let Some(name) = strings
                .get(name_at as usize..)
                .and_then(|rest| rest.split(|&b| b == 0).next())
            else {
                continue;
            };
            let (address, size) = (word(8), word(16));
            match name {
                b"Py_Initialize" => self.interpreter = true,
                b"_PyRuntime" => self.runtime = Some(address),
                b"PyCode_Type" => self.code_type = Some(address),
                b"Py_Version" => self.version = Some(address),
                _ if name == b"_PyEval_EvalFrameDefault"
                    || name.starts_with(b"_PyEval_EvalFrameDefault.") =>
                {
                    let range = address..address + size.max(1);
                    if !self.eval.contains(&range) {
                        self.eval.push(range);
                    }
                }
                _ => {}
            }
        }
    }
}

/// The interpreter's layout from what the file holds: the debug offsets
/// `_PyRuntime` starts with (3.13+), else the version in `Py_Version`
/// (3.11+), else the one in the file name.
fn static_layout<'data>(
    data: impl ReadRef<'data>,
    segments: &[Segment],
    runtime: Option<u64>,
    version: Option<u64>,
    named: Option<(u8, u8)>,
) -> Option<Layout> {
    let head = runtime.and_then(|at| file_bytes(data, segments, at, DEBUG_OFFSETS_BYTES));
    if let Some(head) = head.filter(|h| h.starts_with(DEBUG_COOKIE)) {
        let words: Vec<u64> = head
            .chunks_exact(8)
            .map(|c| u64::from_ne_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        return from_debug_offsets(&words);
    }
    if let Some(at) = version {
        // `const unsigned long Py_Version = PY_VERSION_HEX;`
        let bytes = file_bytes(data, segments, at, 8)?;
        let v = u64::from_ne_bytes(bytes.try_into().ok()?);
        let byte = |shift: u32| u8::try_from((v >> shift) & 0xff).ok();
        return table(byte(24)?, byte(16)?);
    }
    named.and_then(|(major, minor)| table(major, minor))
}

/// Up to `len` bytes of the file's initialised data at address `vaddr`
/// (from the PT_LOAD segment that holds it); `None` if the file has none
/// there (a `.bss` variable).
pub fn file_bytes<'data>(
    data: impl ReadRef<'data>,
    segments: &[Segment],
    vaddr: u64,
    len: usize,
) -> Option<Vec<u8>> {
    let s = segments
        .iter()
        .find(|s| s.vaddr <= vaddr && vaddr < s.vaddr + s.file_size)?;
    let start = s.offset + (vaddr - s.vaddr);
    let end = (start + u64::try_from(len).ok()?).min(s.offset + s.file_size);
    data.read_bytes_at(start, end.checked_sub(start)?)
        .ok()
        .map(<[u8]>::to_vec)
}

/// `python3.11` or `libpython3.11.so.1.0` -> (3, 11).
pub fn version_in_name(name: &str) -> Option<(u8, u8)> {
    let rest = name
        .strip_prefix("libpython")
        .or_else(|| name.strip_prefix("python"))?;
    let (major, rest) = rest.split_once('.')?;
    let minor: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((major.parse().ok()?, minor.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_from_file_names() {
        assert_eq!(version_in_name("python3.10"), Some((3, 10)));
        assert_eq!(version_in_name("libpython3.9.so.1.0"), Some((3, 9)));
        assert_eq!(version_in_name("libpython3.7m.so.1.0"), Some((3, 7)));
        assert_eq!(version_in_name("python3"), None);
    }

    /// A file image whose second segment (file offset 0x2000, address
    /// 0x403000) holds `bytes` at 0x403010, followed by .bss.
    fn image(bytes: &[u8]) -> (Vec<u8>, Vec<Segment>) {
        let mut data = vec![0u8; 0x2000 + 0x100];
        data[0x2010..0x2010 + bytes.len()].copy_from_slice(bytes);
        let segments = vec![
            Segment {
                offset: 0,
                file_size: 0x1000,
                vaddr: 0x400000,
                executable: true,
            },
            Segment {
                offset: 0x2000,
                file_size: 0x100,
                vaddr: 0x403000,
                executable: false,
            },
        ];
        (data, segments)
    }

    /// An `Elf64_Sym` entry, little-endian.
    fn symbol(name_at: u32, kind: u8, section: u16, address: u64, size: u64) -> Vec<u8> {
        let mut entry = name_at.to_le_bytes().to_vec();
        entry.extend([kind, 0]);
        entry.extend(section.to_le_bytes());
        entry.extend(address.to_le_bytes());
        entry.extend(size.to_le_bytes());
        entry
    }

    #[test]
    fn symbol_tables_give_the_runtime_the_code_type_and_each_eval_loop_part() {
        let strings = b"\0_PyRuntime\0PyCode_Type\0_PyEval_EvalFrameDefault\0\
            _PyEval_EvalFrameDefault.cold\0Py_Initialize\0Py_Version\0";
        let at = |name: &str| {
            let needle = [b"\0", name.as_bytes(), b"\0"].concat();
            let i = strings
                .windows(needle.len())
                .position(|w| w == needle)
                .unwrap();
            u32::try_from(i + 1).unwrap()
        };
        let (object, func, notype, section) = (1, 2, 0, 5);
        let entries: Vec<u8> = [
            symbol(0, 0, 0, 0, 0),
            symbol(at("_PyRuntime"), object, section, 0x5000, 0x100),
            // An undefined reference names nothing.
            symbol(at("PyCode_Type"), object, 0, 0, 0),
            symbol(at("PyCode_Type"), object, section, 0x6000, 0x40),
            symbol(at("_PyEval_EvalFrameDefault"), func, section, 0x1000, 0x800),
            symbol(
                at("_PyEval_EvalFrameDefault.cold"),
                notype,
                section,
                0x9000,
                0,
            ),
            // Absolute (SHN_ABS) and section symbols are not definitions.
            symbol(at("Py_Version"), object, 0xfff1, 0x7000, 8),
            symbol(at("Py_Initialize"), 3, section, 0x2000, 0x10),
            // Cut short: ignored.
            symbol(at("Py_Initialize"), func, section, 0x2000, 0x10)[..20].to_vec(),
        ]
        .concat();
        let mut symbols = Symbols::default();
        symbols.scan(&entries, strings);
        assert_eq!(symbols.runtime, Some(0x5000));
        assert_eq!(symbols.code_type, Some(0x6000));
        assert_eq!(symbols.version, None);
        assert!(!symbols.interpreter);
        assert_eq!(symbols.eval, [0x1000..0x1800, 0x9000..0x9001]);
        // A name past the end of the strings is skipped, not a panic.
        symbols.scan(&symbol(9999, func, section, 1, 1), strings);
        assert_eq!(symbols.eval.len(), 2);
    }

    #[test]
    fn py_version_is_read_from_the_file() {
        let (data, segments) = image(&0x030b_07f0u64.to_ne_bytes());
        assert_eq!(
            file_bytes(&data[..], &segments, 0x403010, 8),
            Some(0x030b_07f0u64.to_ne_bytes().to_vec())
        );
        let layout = static_layout(&data[..], &segments, None, Some(0x403010), None).unwrap();
        assert_eq!((layout.major, layout.minor), (3, 11));
        // Past the segment's file bytes (.bss) there is nothing to read.
        assert_eq!(file_bytes(&data[..], &segments, 0x403100, 8), None);
        // Then the file name decides.
        let named = static_layout(&data[..], &segments, Some(0x403100), None, Some((3, 9)));
        assert_eq!(named.map(|l| l.minor), Some(9));
    }

    #[test]
    fn debug_offsets_are_read_from_the_file() {
        let words = crate::python::layout::tests::debug_offsets_313();
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let mut data = vec![0u8; 0x3000];
        data[0x2010..0x2010 + bytes.len()].copy_from_slice(&bytes);
        let segments = [Segment {
            offset: 0x2000,
            file_size: 0x1000,
            vaddr: 0x403000,
            executable: false,
        }];
        // Py_Version would say 3.11: the debug offsets win.
        let layout = static_layout(&data[..], &segments, Some(0x403010), None, Some((3, 11)));
        let layout = layout.unwrap();
        assert_eq!((layout.major, layout.minor), (3, 13));
        assert_eq!(layout.walk.interp_head, 632);
        assert_eq!(layout.code.filename, 112);
    }
}
