//! Python stage: recognises CPython processes from their memory maps, tells
//! the kernel walker where their frames are ([`PyWalk`]), and turns the
//! (code object, instruction) pairs it sends into `file.py:LINE in func`
//! frames, reading each code object once from process memory while the
//! process is alive (the kernel stops it at a code object it has not sent
//! before).

pub mod layout;
pub mod lines;

use std::{
    fs::{self, File},
    ops::Range,
    os::unix::fs::FileExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use fdtrace_common::{PY_ENTRY, PyFrameSlot, PyWalk};
use hashbrown::HashMap;
use object::{Object as _, ObjectSegment as _, ObjectSymbol as _};

use crate::{
    events::PyStack,
    stacks::{Frame, PythonFrames, maps::ProcessMaps},
};
use layout::{
    BYTES_DATA, BYTES_SIZE, DEBUG_COOKIE, Instr, Layout, OB_TYPE, STR_LENGTH, STR_STATE,
    from_debug_offsets, table,
};
use lines::line_at;

/// Longest string or line table read from a process.
const MAX_READ: u64 = 1 << 20;
/// Size of `_Py_DebugOffsets` read (3.14's is 760 bytes).
const DEBUG_OFFSETS_BYTES: usize = 768;
/// `PyThreadState.interp`, the same in every supported version.
const THREAD_INTERP: u64 = 16;

/// A recognised interpreter, what the kernel must be told about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Detected {
    pub walk: PyWalk,
    /// Module and address ranges (as symbol tables see them) of the
    /// evaluation loop, whose native frames Python frames replace.
    pub module: Arc<PathBuf>,
    pub eval: Vec<Range<u64>>,
}

/// A CPython process.
#[derive(Clone, Debug)]
struct Runtime {
    layout: Layout,
    code_type: u64,
    /// Its offsets were seen to hold: a thread state pointed back at its
    /// interpreter, or a frame's code object had the code type.
    validated: bool,
}

/// Symbols of a python executable or libpython.
#[derive(Debug)]
struct Module {
    /// `_PyRuntime` and `PyCode_Type`: absent before 3.7 (or in the
    /// python executable that only links libpython).
    runtime: Option<u64>,
    code_type: Option<u64>,
    /// Defines `Py_Initialize`: this file is the interpreter.
    interpreter: bool,
    version: Option<u64>,
    eval: Vec<Range<u64>>,
    /// PT_LOAD segments: (file offset, address).
    segments: Vec<(u64, u64)>,
    /// `major.minor` from the file name (`python3.10`, `libpython3.10.so`).
    named: Option<(u8, u8)>,
}

/// What was read of one code object.
#[derive(Debug)]
struct Code {
    file: Arc<str>,
    function: Arc<str>,
    first_line: i32,
    line_table: Vec<u8>,
    first_traceable: Option<i32>,
}

/// Python state of a tracing session.
#[derive(Default)]
pub struct Python {
    /// By tgid; `None` once found unsupported (noted once).
    runtimes: HashMap<u32, Option<Runtime>>,
    modules: HashMap<Arc<PathBuf>, Option<Arc<Module>>>,
    /// By (tgid, address, tag): a code object freed and another allocated
    /// at its address has another tag.
    codes: HashMap<(u32, u64, u64), Option<Arc<Code>>>,
    memory: HashMap<u32, File>,
    /// Frames waiting for their event, by thread id: (ts_ns, frames).
    pending: HashMap<u32, (u64, PyStack)>,
    /// One line per process whose Python could not be walked.
    pub notes: Vec<String>,
    /// Processes given to the kernel walker and then found unsupported.
    retired: Vec<u32>,
}

impl Python {
    /// Looks for CPython in a process's maps (read at a stop). Returns what
    /// to give the kernel the first time it is found.
    pub fn detect(&mut self, tgid: u32, maps: &ProcessMaps) -> Option<Detected> {
        if self.runtimes.contains_key(&tgid) {
            return None;
        }
        let mut paths: Vec<&Arc<PathBuf>> = Vec::new();
        for m in maps.mappings.iter().filter(|m| m.is_file()) {
            let name = m.path.rsplit('/').next().unwrap_or("");
            if (name.starts_with("python") || name.starts_with("libpython"))
                && !paths.contains(&&m.host_path)
            {
                paths.push(&m.host_path);
            }
        }
        let mut unsupported = None;
        for path in paths {
            let Some(module) = self.module(path) else {
                continue;
            };
            let (Some(runtime), Some(code_type)) = (module.runtime, module.code_type) else {
                if module.interpreter {
                    unsupported = Some((path.clone(), module.named));
                }
                continue;
            };
            let bias = maps
                .mappings
                .iter()
                .filter(|m| Arc::ptr_eq(&m.host_path, path) || m.host_path == *path)
                .find_map(|m| {
                    module
                        .segments
                        .iter()
                        .find(|&&(offset, _)| offset & !0xfff == m.offset)
                        .map(|&(_, vaddr)| m.start.wrapping_sub(vaddr & !0xfff))
                })?;
            return self.recognise(tgid, path, &module, bias, (runtime, code_type));
        }
        if let Some((path, named)) = unsupported {
            self.unsupported(tgid, &path, named);
        }
        None
    }

    fn unsupported(&mut self, tgid: u32, path: &Path, named: Option<(u8, u8)>) {
        let version = named.map_or_else(String::new, |(a, b)| format!(" {a}.{b}"));
        self.note(
            tgid,
            format!(
                "process {tgid} runs Python{version} ({}), which fdtrace cannot walk \
                 (3.8 to 3.14 are supported): its stacks are native only",
                path.display()
            ),
        );
    }

    fn recognise(
        &mut self,
        tgid: u32,
        path: &Arc<PathBuf>,
        module: &Module,
        bias: u64,
        (runtime, code_type): (u64, u64),
    ) -> Option<Detected> {
        let runtime = bias.wrapping_add(runtime);
        let head = self.read(tgid, runtime, DEBUG_OFFSETS_BYTES);
        let layout = match head {
            Some(bytes) if bytes.starts_with(DEBUG_COOKIE) => {
                let words: Vec<u64> = bytes
                    .chunks_exact(8)
                    .map(|c| u64::from_ne_bytes(c.try_into().unwrap_or([0; 8])))
                    .collect();
                Ok(from_debug_offsets(&words))
            }
            _ => match module.version {
                Some(addr) => self
                    .read_u64(tgid, bias.wrapping_add(addr))
                    .map(|v| table(((v >> 24) & 0xff) as u8, ((v >> 16) & 0xff) as u8))
                    .ok_or(()),
                None => Ok(module.named.and_then(|(major, minor)| table(major, minor))),
            },
        };
        let Ok(Some(layout)) = layout else {
            self.unsupported(tgid, path, module.named);
            return None;
        };
        let mut rt = Runtime {
            layout,
            code_type: bias.wrapping_add(code_type),
            validated: false,
        };
        // Once the interpreter is up, a thread state must point back at it.
        let interp = self
            .read_u64(tgid, runtime + u64::from(layout.walk.interp_head))
            .unwrap_or(0);
        let thread = match interp {
            0 => 0,
            _ => self
                .read_u64(tgid, interp + u64::from(layout.walk.threads_head))
                .unwrap_or(0),
        };
        if thread != 0 {
            if self.read_u64(tgid, thread + THREAD_INTERP) != Some(interp) {
                self.reject(tgid, &layout);
                return None;
            }
            rt.validated = true;
        }
        let mut walk = layout.walk;
        walk.runtime = runtime;
        walk.code_line_table = u32::try_from(layout.code.line_table).unwrap_or(0);
        walk.code_first_line = u32::try_from(layout.code.first_line).unwrap_or(0);
        self.runtimes.insert(tgid, Some(rt));
        Some(Detected {
            walk,
            module: path.clone(),
            eval: module.eval.clone(),
        })
    }

    fn reject(&mut self, tgid: u32, layout: &Layout) {
        // The kernel was told about it: it must forget it.
        if matches!(self.runtimes.get(&tgid), Some(Some(_))) {
            self.retired.push(tgid);
        }
        self.note(
            tgid,
            format!(
                "process {tgid} runs Python {}.{}, but its memory does not match \
                 fdtrace's offsets for that version: its stacks are native only",
                layout.major, layout.minor
            ),
        );
    }

    /// Records that the kernel could not be told about `tgid`'s interpreter.
    pub fn walker_failed(&mut self, tgid: u32, why: &str) {
        self.note(
            tgid,
            format!("process {tgid}: cannot walk its Python frames ({why}): native stacks only"),
        );
    }

    fn note(&mut self, tgid: u32, text: String) {
        self.runtimes.insert(tgid, None);
        if !self.notes.contains(&text) {
            self.notes.push(text);
        }
    }

    /// Processes given to the kernel walker and since found unsupported,
    /// each once: their walker entries should go.
    pub fn take_retired(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.retired)
    }

    fn module(&mut self, path: &Arc<PathBuf>) -> Option<Arc<Module>> {
        if let Some(m) = self.modules.get(path) {
            return m.clone();
        }
        let module = read_module(path).map(Arc::new);
        self.modules.insert(path.clone(), module.clone());
        module
    }

    /// Keeps the frames the kernel sent ahead of thread `tid`'s event.
    pub fn stash(&mut self, tid: u32, ts_ns: u64, stack: PyStack) {
        self.pending.insert(tid, (ts_ns, stack));
    }

    /// The Python frames of `tid`'s event at `ts_ns`, grouped by native
    /// evaluation call, innermost first; empty for other processes.
    pub fn frames(&mut self, tgid: u32, tid: u32, ts_ns: u64) -> PythonFrames {
        let Some((ts, stack)) = self.pending.remove(&tid) else {
            return PythonFrames::default();
        };
        if ts != ts_ns {
            return PythonFrames::default();
        }
        let Some(Some(mut rt)) = self.runtimes.get(&tgid).cloned() else {
            return PythonFrames::default();
        };
        let mut groups: Vec<Vec<Frame>> = vec![Vec::new()];
        for raw in &stack.slots {
            if raw.code == 0 {
                groups.push(Vec::new());
                continue;
            }
            let entry = raw.instr & PY_ENTRY != 0;
            let slot = PyFrameSlot {
                instr: raw.instr & !PY_ENTRY,
                ..*raw
            };
            let Some(code) = self.code(tgid, &rt, slot.code, slot.tag) else {
                if !rt.validated {
                    // Not a code object where the table said one would be.
                    self.reject(tgid, &rt.layout);
                    return PythonFrames::default();
                }
                continue;
            };
            if !rt.validated {
                rt.validated = true;
                if let Some(Some(r)) = self.runtimes.get_mut(&tgid) {
                    r.validated = true;
                }
            }
            let index = match rt.layout.instr {
                Instr::LastiBytes => i64::from(slot.instr as u32 as i32) / 2,
                Instr::LastiUnits => i64::from(slot.instr as u32 as i32),
                Instr::Pointer => {
                    let start = slot.code + rt.layout.code.bytecode.unwrap_or(0);
                    (i64::try_from(slot.instr).unwrap_or(0) - i64::try_from(start).unwrap_or(0))
                        .div_euclid(2)
                }
            };
            // 3.13+ pushes an internal frame to finish `__init__` calls.
            if code.first_traceable.is_some_and(|f| index < i64::from(f)) {
                continue;
            }
            let offset = match rt.layout.instr {
                Instr::LastiBytes => i64::from(slot.instr as u32 as i32),
                _ if index < 0 => -1,
                _ => index * 2,
            };
            let line = line_at(rt.layout.lines, &code.line_table, code.first_line, offset);
            if let Some(group) = groups.last_mut() {
                group.push(Frame::Python {
                    file: code.file.clone(),
                    function: code.function.clone(),
                    line: line.and_then(|l| u32::try_from(l).ok()).unwrap_or(0),
                });
            }
            if entry {
                groups.push(Vec::new());
            }
        }
        if groups.last().is_some_and(Vec::is_empty) {
            groups.pop();
        }
        PythonFrames {
            groups,
            truncated: stack.truncated,
        }
    }

    fn code(&mut self, tgid: u32, rt: &Runtime, addr: u64, tag: u64) -> Option<Arc<Code>> {
        if let Some(c) = self.codes.get(&(tgid, addr, tag)) {
            return c.clone();
        }
        let code = self.read_code(tgid, rt, addr).map(Arc::new);
        self.codes.insert((tgid, addr, tag), code.clone());
        code
    }

    fn read_code(&mut self, tgid: u32, rt: &Runtime, addr: u64) -> Option<Code> {
        if self.read_u64(tgid, addr + OB_TYPE)? != rt.code_type {
            return None;
        }
        let c = rt.layout.code;
        let file = self.read_u64(tgid, addr + c.filename)?;
        let function = self.read_u64(tgid, addr + c.qualname.unwrap_or(c.name))?;
        let table = self.read_u64(tgid, addr + c.line_table)?;
        let table_len = self.read_u64(tgid, table + BYTES_SIZE)?.min(MAX_READ);
        let i32_at = |this: &mut Self, at: u64| {
            this.read(tgid, at, 4)
                .map(|b| i32::from_ne_bytes(b.try_into().unwrap_or([0; 4])))
        };
        Some(Code {
            file: Arc::from(self.read_str(tgid, rt, file)?),
            function: Arc::from(self.read_str(tgid, rt, function)?),
            first_line: i32_at(self, addr + c.first_line)?,
            line_table: self.read(tgid, table + BYTES_DATA, usize::try_from(table_len).ok()?)?,
            first_traceable: match c.first_traceable {
                Some(at) => Some(i32_at(self, addr + at)?),
                None => None,
            },
        })
    }

    /// A `str` object's text (compact ASCII, compact UCS1/2/4, or legacy).
    fn read_str(&mut self, tgid: u32, rt: &Runtime, addr: u64) -> Option<String> {
        let state = self.read(tgid, addr + STR_STATE, 4)?;
        let state = u32::from_ne_bytes(state.try_into().ok()?);
        let kind = (state >> 2) & 7;
        let compact = (state >> 5) & 1 == 1;
        let ascii = (state >> 6) & 1 == 1;
        let length = self.read_u64(tgid, addr + STR_LENGTH)?.min(MAX_READ);
        let data = match (compact, ascii) {
            (true, true) => addr + rt.layout.ascii_data,
            (true, false) => addr + rt.layout.compact_data,
            // Legacy strings point at their characters.
            (false, _) => self.read_u64(tgid, addr + rt.layout.compact_data)?,
        };
        let unit = if ascii { 1 } else { kind.clamp(1, 4) };
        let bytes = self.read(tgid, data, usize::try_from(length * u64::from(unit)).ok()?)?;
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

    fn read_u64(&mut self, tgid: u32, addr: u64) -> Option<u64> {
        let b = self.read(tgid, addr, 8)?;
        Some(u64::from_ne_bytes(b.try_into().ok()?))
    }

    /// Reads process memory through /proc/PID/mem.
    fn read(&mut self, tgid: u32, addr: u64, len: usize) -> Option<Vec<u8>> {
        if !self.memory.contains_key(&tgid) {
            let file = File::open(format!("/proc/{tgid}/mem")).ok()?;
            self.memory.insert(tgid, file);
        }
        let file = self.memory.get(&tgid)?;
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, addr).ok()?;
        Some(buf)
    }

    /// A forked child runs its parent's interpreter.
    pub fn fork(&mut self, parent: u32, child: u32) {
        if let Some(rt) = self.runtimes.get(&parent).cloned() {
            self.runtimes.insert(child, rt);
        }
    }

    /// After exec (or exit) nothing of the old program applies.
    pub fn forget(&mut self, tgid: u32) {
        self.runtimes.remove(&tgid);
        self.memory.remove(&tgid);
        self.codes.retain(|&(t, _, _), _| t != tgid);
    }
}

fn read_module(path: &Path) -> Option<Module> {
    let data = fs::read(path).ok()?;
    let elf = object::File::parse(&*data).ok()?;
    let mut runtime = None;
    let mut code_type = None;
    let mut version = None;
    let mut interpreter = false;
    let mut eval = Vec::new();
    for sym in elf.dynamic_symbols().chain(elf.symbols()) {
        if !sym.is_definition() {
            continue;
        }
        match sym.name() {
            Ok("Py_Initialize") => interpreter = true,
            Ok("_PyRuntime") => runtime = Some(sym.address()),
            Ok("PyCode_Type") => code_type = Some(sym.address()),
            Ok("Py_Version") => version = Some(sym.address()),
            Ok(name)
                if name == "_PyEval_EvalFrameDefault"
                    || name.starts_with("_PyEval_EvalFrameDefault.") =>
            {
                let range = sym.address()..sym.address() + sym.size().max(1);
                if !eval.contains(&range) {
                    eval.push(range);
                }
            }
            _ => {}
        }
    }
    let segments = elf
        .segments()
        .map(|s| (s.file_range().0, s.address()))
        .collect();
    let name = path.file_name()?.to_str()?;
    Some(Module {
        runtime,
        code_type,
        interpreter,
        version,
        eval,
        segments,
        named: version_in_name(name),
    })
}

/// `python3.11` or `libpython3.11.so.1.0` -> (3, 11).
fn version_in_name(name: &str) -> Option<(u8, u8)> {
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
}
