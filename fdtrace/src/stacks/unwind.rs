//! Unwinding a raw stack sample with the modules' CFI (`.eh_frame`,
//! `.debug_frame`), the way `perf --call-graph dwarf` does; framehop falls
//! back to frame pointers where a module has no CFI.

use std::{fs, ops::Deref, ops::Range, path::PathBuf, sync::Arc};

use framehop::{
    ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder as _,
    x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64},
};
use hashbrown::HashMap;
use object::{Object as _, ObjectSection as _, ObjectSegment as _, SegmentFlags};

use super::maps::{Mapping, ProcessMaps};

/// Most frames kept per stack.
pub const MAX_FRAMES: usize = 256;

/// Bytes of a section inside a shared file image.
#[derive(Clone)]
pub struct Section {
    file: Arc<Vec<u8>>,
    range: Range<usize>,
}

impl Deref for Section {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.file[self.range.clone()]
    }
}

/// A load segment: where file bytes land in the module's address space.
#[derive(Clone, Debug)]
struct Segment {
    file_offset: u64,
    svma: u64,
    mem_size: u64,
    executable: bool,
}

const PAGE: u64 = 4096;
const PF_X: u32 = 1;

fn page_floor(x: u64) -> u64 {
    x & !(PAGE - 1)
}

fn page_ceil(x: u64) -> u64 {
    page_floor(x.saturating_add(PAGE - 1))
}

/// Largest section kept: a file a traced user controls may claim any size.
const MAX_SECTION: u64 = 1 << 30;

/// Opens a mapped file for reading only if it is a regular file: a path a
/// traced program controls may since have become a FIFO, whose open would
/// block fdtrace. (Links are followed: an exec'd path is often one.)
pub fn open_regular(path: &std::path::Path) -> Option<fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    file.metadata().ok()?.is_file().then_some(file)
}

/// `PT_INTERP` of a 64-bit ELF file: the program's dynamic loader.
fn interpreter_of<'data>(file: impl object::ReadRef<'data>) -> Option<String> {
    use object::read::elf::{FileHeader as _, ProgramHeader as _};
    let header = object::elf::FileHeader64::<object::Endianness>::parse(file).ok()?;
    let endian = header.endian().ok()?;
    let interp = header
        .program_headers(endian, file)
        .ok()?
        .iter()
        .find(|ph| ph.p_type(endian) == object::elf::PT_INTERP)?;
    let bytes = interp.data(endian, file).ok()?;
    let bytes = bytes.split(|&b| b == 0).next()?;
    Some(String::from_utf8_lossy(bytes).into_owned())
}

/// What we keep of an ELF file: its segments and unwind sections.
pub struct ElfModule {
    /// The kept sections' bytes, one after another.
    file: Arc<Vec<u8>>,
    segments: Vec<Segment>,
    sections: HashMap<&'static str, (Range<u64>, Range<usize>)>,
    /// `e_entry`, as the file has it.
    pub entry: u64,
    /// `PT_INTERP`: the dynamic loader the kernel maps beside a program.
    pub interpreter: Option<String>,
}

impl ElfModule {
    fn parse(path: &std::path::Path) -> Option<Self> {
        // Read lazily: only the headers and the sections kept below leave
        // the disk, not a large library's debug info.
        let cache = object::read::ReadCache::new(open_regular(path)?);
        let elf = object::File::parse(&cache).ok()?;
        let segments = elf
            .segments()
            .filter_map(|s| match s.flags() {
                SegmentFlags::Elf { p_flags } => Some(Segment {
                    file_offset: s.file_range().0,
                    svma: s.address(),
                    mem_size: s.size(),
                    executable: p_flags & PF_X != 0,
                }),
                _ => None,
            })
            .collect();
        let interpreter = interpreter_of(&cache);
        // Only the sections unwinding reads are kept, copied out of the
        // file: debug info and data can be most of a large library, and a
        // monitor keeps modules for as long as processes use them.
        let mut kept = Vec::new();
        let mut sections = HashMap::new();
        for name in [
            ".text",
            ".eh_frame",
            ".eh_frame_hdr",
            ".debug_frame",
            ".got",
        ] {
            if let Some(section) = elf.section_by_name(name) {
                if section.file_range().is_none() {
                    continue;
                }
                if section.size() > MAX_SECTION {
                    continue;
                }
                let Ok(bytes) = section.data() else {
                    continue;
                };
                let svma = section.address()..section.address() + section.size();
                sections.insert(name, (svma, kept.len()..kept.len() + bytes.len()));
                kept.extend_from_slice(bytes);
            }
        }
        Some(Self {
            entry: elf.entry(),
            file: Arc::new(kept),
            segments,
            sections,
            interpreter,
        })
    }

    /// Where the kernel put this file's code when it loaded it `bias` bytes
    /// from its own addresses: one mapping per executable load segment.
    pub fn code_mappings(&self, bias: u64, path: &Arc<str>, host: &Arc<PathBuf>) -> Vec<Mapping> {
        self.segments
            .iter()
            .filter(|s| s.executable && s.mem_size > 0)
            .map(|s| Mapping {
                start: bias.wrapping_add(page_floor(s.svma)),
                end: bias.wrapping_add(page_ceil(s.svma + s.mem_size)),
                offset: page_floor(s.file_offset),
                executable: true,
                path: path.clone(),
                host_path: host.clone(),
            })
            .collect()
    }

    /// How far the mapping of `mapping` moved this file from its own
    /// addresses (what symbol tables and DWARF use): `avma - svma`.
    ///
    /// The kernel maps each load segment from the page holding its first
    /// byte, so the mapping's file offset names the segment. File offsets
    /// and addresses may differ (lld and recent ld lay files out that way),
    /// so the bias comes from the segment, not from the offset.
    pub fn bias(&self, mapping: &Mapping) -> Option<u64> {
        let mut candidates = self
            .segments
            .iter()
            .filter(|s| page_floor(s.file_offset) == mapping.offset);
        let first = candidates.clone().next()?;
        let segment = candidates
            .find(|s| s.executable == mapping.executable)
            .unwrap_or(first);
        Some(mapping.start.wrapping_sub(page_floor(segment.svma)))
    }

    fn section(&self, name: &str) -> Option<Section> {
        self.sections.get(name).map(|(_, range)| Section {
            file: self.file.clone(),
            range: range.clone(),
        })
    }

    fn svma(&self, name: &str) -> Option<Range<u64>> {
        self.sections.get(name).map(|(svma, _)| svma.clone())
    }
}

/// Parsed ELF files by host path, shared by every process.
#[derive(Default)]
pub struct ModuleCache {
    modules: HashMap<Arc<PathBuf>, Option<Arc<ElfModule>>>,
}

impl ModuleCache {
    /// Lets go of every module (those unwinders still use stay alive
    /// with them); a module needed again is parsed again.
    pub fn clear(&mut self) {
        self.modules.clear();
    }

    pub fn get(&mut self, path: &Arc<PathBuf>) -> Option<Arc<ElfModule>> {
        self.modules
            .entry(path.clone())
            .or_insert_with(|| ElfModule::parse(path).map(Arc::new))
            .clone()
    }
}

/// An unwinder primed with one address space's modules.
pub struct ProcessUnwinder {
    unwinder: UnwinderX86_64<Section>,
    cache: CacheX86_64,
}

impl ProcessUnwinder {
    pub fn new(maps: &ProcessMaps, modules: &mut ModuleCache) -> Self {
        let mut unwinder = UnwinderX86_64::new();
        for m in maps.mappings.iter().filter(|m| m.executable && m.is_file()) {
            let Some(module) = modules.get(&m.host_path) else {
                continue;
            };
            let Some(bias) = module.bias(m) else {
                continue;
            };
            let info = ExplicitModuleSectionInfo {
                base_svma: 0,
                text_svma: module.svma(".text"),
                text: module.section(".text"),
                got_svma: module.svma(".got"),
                eh_frame_svma: module.svma(".eh_frame"),
                eh_frame: module.section(".eh_frame"),
                eh_frame_hdr_svma: module.svma(".eh_frame_hdr"),
                eh_frame_hdr: module.section(".eh_frame_hdr"),
                debug_frame: module.section(".debug_frame"),
                stubs_svma: None,
                stub_helper_svma: None,
                unwind_info: None,
                text_segment_svma: None,
                text_segment: None,
            };
            unwinder.add_module(Module::new(m.path.to_string(), m.start..m.end, bias, info));
        }
        Self {
            unwinder,
            cache: CacheX86_64::new(),
        }
    }

    /// Unwinds from the registers through the copied stack bytes. Returns
    /// lookup addresses (return addresses minus one), innermost first, and
    /// whether the walk stopped before reaching the stack's root.
    pub fn unwind(&mut self, ip: u64, sp: u64, bp: u64, stack: &[u8]) -> (Vec<u64>, bool) {
        let mut read_stack = |addr: u64| -> Result<u64, ()> {
            let start = usize::try_from(addr.checked_sub(sp).ok_or(())?).map_err(|_| ())?;
            let word = stack.get(start..start + 8).ok_or(())?;
            Ok(u64::from_ne_bytes(word.try_into().map_err(|_| ())?))
        };
        let regs = UnwindRegsX86_64::new(ip, sp, bp);
        let mut frames = Vec::new();
        let mut iter = self
            .unwinder
            .iter_frames(ip, regs, &mut self.cache, &mut read_stack);
        let truncated = loop {
            match iter.next() {
                Ok(Some(frame)) => {
                    if frames.len() == MAX_FRAMES {
                        break true;
                    }
                    frames.push(lookup_address(frame));
                }
                Ok(None) => break false,
                Err(_) => break true,
            }
        };
        (frames, truncated)
    }
}

/// Return addresses point after the call; look up the call itself.
fn lookup_address(frame: FrameAddress) -> u64 {
    match frame {
        FrameAddress::InstructionPointer(ip) => ip,
        FrameAddress::ReturnAddress(ra) => u64::from(ra) - 1,
    }
}
