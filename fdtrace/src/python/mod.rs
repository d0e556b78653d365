//! Python stage: recognises CPython processes from their memory maps and
//! the interpreter files themselves, tells the kernel walker where their
//! frames are ([`PyWalk`]) and which files are interpreters ([`PyBinary`]),
//! and turns the (code object, instruction) pairs it sends into
//! `file.py:LINE in func` frames, reading each code object from the copy
//! the kernel sent the first time it met it. Nothing here needs a traced
//! process stopped, nor alive.

pub mod binaries;
pub mod code;
pub mod early;
pub mod layout;
pub mod lines;
pub mod module;

use std::{
    fs::File,
    ops::Range,
    path::{Path, PathBuf},
    sync::Arc,
};

use fdtrace_common::{PY_ENTRY, PyBinary, PyFile, PyFrameSlot, PyWalk};
use hashbrown::{HashMap, HashSet};

use crate::{
    events::{PyCode, PyStack},
    stacks::{Frame, PythonFrames, maps::ProcessMaps},
};
use code::{Code, Memory as _, ProcMemory, Unread, Windows, read_code};
use layout::{Instr, Layout};
use lines::line_at;
use module::{Module, read_module};

/// Interpreter files read and kept; past this the cache starts over.
const MODULES_KEPT: usize = 256;

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
    /// The interpreter file, the first time it is recognised: for the
    /// kernel's registry, so later processes of it are walked from their
    /// first syscall.
    pub binary: Option<(PyFile, PyBinary)>,
}

/// A CPython process.
#[derive(Clone, Debug)]
struct Runtime {
    layout: Layout,
    /// `_PyRuntime` and `PyCode_Type` in the process.
    runtime: u64,
    code_type: u64,
    /// Its offsets were seen to hold: a thread state pointed back at its
    /// interpreter, or a frame's code object had the code type.
    validated: bool,
}

/// A code object of a process, as the kernel copied it, then as read.
#[derive(Debug)]
enum CodeEntry {
    Copied(Vec<(u64, Vec<u8>)>),
    Read(Result<Arc<Code>, Unread>),
}

/// Python state of a tracing session.
#[derive(Default)]
pub struct Python {
    /// By tgid; `None` once found unsupported (noted once).
    runtimes: HashMap<u32, Option<Runtime>>,
    modules: HashMap<Arc<PathBuf>, Option<Arc<Module>>>,
    /// By (tgid, address, tag): a code object freed and another allocated
    /// at its address has another tag.
    codes: HashMap<(u32, u64, u64), CodeEntry>,
    memory: HashMap<u32, File>,
    /// Frames waiting for their event, by thread id: (ts_ns, frames).
    pending: HashMap<u32, (u64, PyStack)>,
    /// Interpreter files given to the kernel's registry.
    registered: HashSet<PyFile>,
    /// One line per process whose Python could not be walked.
    pub notes: Vec<String>,
    /// Processes given to the kernel walker and then found unsupported.
    retired: Vec<u32>,
}

impl Python {
    /// Looks for CPython in a process's maps (from /proc or from the
    /// kernel's records; the process need not be stopped, nor alive): the
    /// interpreter's layout comes from its file. Returns what to give the
    /// kernel the first time it is found.
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
            if module.runtime.is_none() || module.code_type.is_none() {
                if module.interpreter {
                    unsupported = Some((path.clone(), module.named));
                }
                continue;
            }
            let bias = maps
                .mappings
                .iter()
                .filter(|m| Arc::ptr_eq(&m.host_path, path) || m.host_path == *path)
                .find_map(|m| {
                    module
                        .segments
                        .iter()
                        .find(|s| s.offset & !0xfff == m.offset)
                        .map(|s| m.start.wrapping_sub(s.vaddr & !0xfff))
                })?;
            return self.recognise(tgid, path, &module, bias);
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
                 (3.8 to 3.14 are supported): its stacks are native only, and closes \
                 at interpreter shutdown are not told apart from the program's",
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
    ) -> Option<Detected> {
        let (Some(layout), Some(mut walk), Some(code_type)) =
            (module.layout, module.walk(), module.code_type)
        else {
            self.unsupported(tgid, path, module.named);
            return None;
        };
        walk.runtime = bias.wrapping_add(walk.runtime);
        self.runtimes.insert(
            tgid,
            Some(Runtime {
                layout,
                runtime: walk.runtime,
                code_type: bias.wrapping_add(code_type),
                validated: false,
            }),
        );
        Some(Detected {
            walk,
            module: path.clone(),
            eval: module.eval.clone(),
            binary: self.registration(path, module),
        })
    }

    /// `path`'s identity and what the kernel needs to walk a process that
    /// maps it, unless it was given already.
    fn registration(&mut self, path: &Path, module: &Module) -> Option<(PyFile, PyBinary)> {
        let file = binaries::file_identity(path)?;
        let binary = module.binary()?;
        self.registered.insert(file).then_some((file, binary))
    }

    /// The CPython files `program` will load (see
    /// [`binaries::command_files`]) that are not registered yet, with what
    /// the kernel needs to walk a process that maps them.
    pub fn command_binaries(&mut self, program: &Path) -> Vec<(PyFile, PyBinary)> {
        binaries::command_files(program)
            .into_iter()
            .filter_map(|path| {
                let path = Arc::new(path);
                let module = self.module(&path)?;
                self.registration(&path, &module)
            })
            .collect()
    }

    /// Records that the kernel's registry refused `path`.
    pub fn registry_failed(&mut self, path: &Path, why: &str) {
        let text = format!(
            "cannot tell the kernel that {} is a Python interpreter ({why}): \
             its processes' first Python frames may be missing",
            path.display()
        );
        if !self.notes.contains(&text) {
            self.notes.push(text);
        }
    }

    /// For a process that can be read now (attached to, or stopped): once
    /// its interpreter is up, a thread state must point back at it. A
    /// process that cannot be read is validated by its first code object
    /// instead. Rejected processes are retired ([`Self::take_retired`]).
    pub fn check_live(&mut self, tgid: u32) {
        let Some(Some(rt)) = self.runtimes.get(&tgid).cloned() else {
            return;
        };
        if rt.validated {
            return;
        }
        let Some(file) = self.proc_file(tgid) else {
            return;
        };
        let mut mem = ProcMemory(file);
        let walk = rt.layout.walk;
        let interp = mem
            .read_u64(rt.runtime + u64::from(walk.interp_head))
            .unwrap_or(0);
        let thread = match interp {
            0 => 0,
            _ => mem
                .read_u64(interp + u64::from(walk.threads_head))
                .unwrap_or(0),
        };
        if thread == 0 {
            return;
        }
        if mem.read_u64(thread + THREAD_INTERP) == Some(interp) {
            if let Some(Some(r)) = self.runtimes.get_mut(&tgid) {
                r.validated = true;
            }
        } else {
            self.reject(tgid, &rt.layout);
        }
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
        // A file in another mount namespace is named through its process
        // (`/proc/PID/root/...`): a daemon would keep one per process.
        if self.modules.len() >= MODULES_KEPT {
            self.modules.clear();
        }
        self.modules.insert(path.clone(), module.clone());
        module
    }

    /// Keeps a code object the kernel copied, until a frame needs it.
    pub fn store_code(&mut self, tgid: u32, code: PyCode) {
        let key = (tgid, code.code, code.tag);
        if !matches!(self.codes.get(&key), Some(CodeEntry::Read(Ok(_)))) {
            self.codes.insert(key, CodeEntry::Copied(code.windows));
        }
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
            let code = match self.code(tgid, &rt, slot.code, slot.tag) {
                Ok(code) => code,
                Err(Unread::NotCode) if !rt.validated => {
                    // Not a code object where the table said one would be.
                    self.reject(tgid, &rt.layout);
                    return PythonFrames::default();
                }
                Err(_) => continue,
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

    fn code(&mut self, tgid: u32, rt: &Runtime, addr: u64, tag: u64) -> Result<Arc<Code>, Unread> {
        let key = (tgid, addr, tag);
        let read = match self.codes.remove(&key) {
            Some(CodeEntry::Read(read)) => read,
            Some(CodeEntry::Copied(windows)) => {
                read_code(&mut Windows(&windows), &rt.layout, rt.code_type, addr).map(Arc::new)
            }
            // Its record was lost: the process may still be there to read.
            None => match self.proc_file(tgid) {
                Some(file) => {
                    read_code(&mut ProcMemory(file), &rt.layout, rt.code_type, addr).map(Arc::new)
                }
                None => Err(Unread::Missing),
            },
        };
        self.codes.insert(key, CodeEntry::Read(read.clone()));
        read
    }

    /// The process's memory, through /proc/PID/mem (never stopped for it).
    fn proc_file(&mut self, tgid: u32) -> Option<&File> {
        if !self.memory.contains_key(&tgid) {
            let file = File::open(format!("/proc/{tgid}/mem")).ok()?;
            self.memory.insert(tgid, file);
        }
        self.memory.get(&tgid)
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

#[cfg(test)]
mod tests {
    use std::{
        fs,
        process::{Command, Stdio},
    };

    use super::*;

    const AT_ENTRY: u64 = 9;

    fn at_entry(tgid: u32) -> Option<u64> {
        let auxv = fs::read(format!("/proc/{tgid}/auxv")).ok()?;
        auxv.chunks_exact(16).find_map(|pair| {
            let key = u64::from_ne_bytes(pair[..8].try_into().ok()?);
            let value = u64::from_ne_bytes(pair[8..].try_into().ok()?);
            (key == AT_ENTRY).then_some(value)
        })
    }

    #[test]
    fn the_file_cache_is_bounded() {
        let mut python = Python::default();
        for i in 0..MODULES_KEPT + 10 {
            let path = Arc::new(PathBuf::from(format!(
                "/proc/{i}/root/usr/lib/libpython3.11.so"
            )));
            assert!(python.module(&path).is_none());
            assert!(python.modules.len() <= MODULES_KEPT);
        }
        assert_eq!(python.modules.len(), 10);
    }

    /// For each CPython 3.8+ on this machine: what the kernel computes from
    /// the registered file (at exec for a static build, at the mmap of
    /// libpython's executable segment for a shared one) is the
    /// `_PyRuntime` detection finds in a live process.
    #[test]
    fn registered_binaries_place_the_runtime_where_detection_does() {
        let mut checked = 0;
        for minor in 8..=14 {
            let name = format!("python3.{minor}");
            let candidates = fs::read_dir(
                PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".pyenv/versions"),
            )
            .into_iter()
            .flatten()
            .flatten()
            .map(|v| v.path().join("bin").join(&name))
            .chain([PathBuf::from("/usr/bin").join(&name)]);
            for exe in candidates.filter(|p| p.is_file()) {
                let mut python = Python::default();
                let binaries = python.command_binaries(&exe);
                assert_eq!(binaries.len(), 1, "{}", exe.display());
                let (file, binary) = binaries[0];
                let mut child = Command::new(&exe)
                    .args(["-c", "import sys; sys.stdin.read()"])
                    .stdin(Stdio::piped())
                    .spawn()
                    .unwrap();
                std::thread::sleep(std::time::Duration::from_millis(300));
                let tgid = child.id();
                let maps = ProcessMaps::read(tgid).unwrap();
                let detected = Python::default().detect(tgid, &maps).unwrap();
                assert_eq!(detected.binary, Some((file, binary)));
                let placed = maps
                    .mappings
                    .iter()
                    .filter(|m| binaries::file_identity(&m.host_path) == Some(file))
                    .find_map(|m| binary.runtime_at_mapping(m.start, m.offset));
                let placed = if detected.module.as_path() == exe.canonicalize().unwrap() {
                    // A static build: the kernel places it at exec.
                    Some(binary.runtime_at_exec(at_entry(tgid).unwrap()))
                } else {
                    placed
                };
                drop(child.stdin.take());
                let _ = child.wait();
                assert_eq!(placed, Some(detected.walk.runtime), "{}", exe.display());
                checked += 1;
            }
        }
        if checked == 0 {
            eprintln!("skipping: no CPython 3.8+ on this machine");
        }
    }
}
