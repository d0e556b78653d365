//! Stack stage: keeps each stack sample while some fd needs it, unwinds
//! the ones that live long enough (or survive to the report) against the
//! code layout of the process as it was when the sample was taken, and
//! interns the results so identical stacks share one [`StackId`] and are
//! symbolized once.
//!
//! Layouts come from what the kernel recorded (the program and its loader
//! at exec, each executable mmap after), so a process that has exited, or
//! unloaded a plugin, still unwinds: nothing needs it alive or stopped.

pub mod maps;
pub mod symbolize;
pub mod unwind;

use std::{collections::VecDeque, path::PathBuf, sync::Arc, time::Duration};

use hashbrown::HashMap;

use crate::{events::StackSample, fd_table::StackRef};
use maps::{Mapping, ProcessMaps};
use unwind::{ModuleCache, ProcessUnwinder};

/// Dense id of an interned stack; what reports group by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StackId(pub u32);

/// One frame, independent of where its module was loaded.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Frame {
    /// `svma` is the address inside `module` (as symbol tables see it), so
    /// the same code in two processes is the same frame despite ASLR.
    Module { module: Arc<PathBuf>, svma: u64 },
    /// An address in no known file mapping (JIT code, vdso, a stale map).
    Unknown { address: u64 },
    /// A CPython frame (line 0: unknown), in place of the interpreter's
    /// native evaluation frame that ran it.
    Python {
        file: Arc<str>,
        function: Arc<str>,
        line: u32,
    },
}

/// CPython frames taken with a sample, grouped by the native evaluation
/// call that ran them, innermost first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PythonFrames {
    pub groups: Vec<Vec<Frame>>,
    /// Outer Python frames did not fit in the kernel's record.
    pub truncated: bool,
}

/// A complete stack, innermost frame first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Stack {
    pub frames: Vec<Frame>,
    /// The unwinder stopped early or the copied stack ran out.
    pub truncated: bool,
}

/// An address space's maps plus the unwinder built from them (lazily).
/// Held by the processes whose current layout it is and by the raw
/// samples taken in it; freed when neither remains.
struct AddressSpace {
    maps: Arc<ProcessMaps>,
    unwinder: Option<ProcessUnwinder>,
    refs: u32,
}

enum State {
    Raw {
        space: Option<usize>,
        sample: StackSample,
        python: PythonFrames,
    },
    Done(StackId),
}

struct Slot {
    state: State,
    refs: u32,
    taken_ns: u64,
    /// Tells a reused slot from the sample a queue entry was made for.
    generation: u32,
}

/// Raw samples kept at most; past this the oldest are unwound early, so
/// memory stays bounded (2048 x 12 KiB = 24 MiB at the default copy size).
const MAX_RAW_SAMPLES: usize = 2048;

/// Stack samples, address spaces and interned stacks.
#[derive(Default)]
pub struct Stacks {
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    /// Raw samples in the order they were taken: (slot, generation).
    raw_queue: VecDeque<(StackRef, u32)>,
    raw_live: usize,
    next_generation: u32,
    /// Address spaces still held; a process points at its latest one.
    spaces: Vec<Option<AddressSpace>>,
    free_spaces: Vec<usize>,
    current_space: HashMap<u32, usize>,
    modules: ModuleCache,
    interned: HashMap<Stack, StackId>,
    stacks: Vec<Stack>,
    /// Ids [`Stacks::sweep`] freed, for new stacks to reuse.
    free_ids: Vec<StackId>,
    /// Distinct stacks kept at most (0: no bound); past it a new stack is
    /// interned as the empty, truncated overflow stack.
    pub max_interned: usize,
    /// Stacks interned as the overflow stack for want of room.
    pub overflowed: u64,
    overflow: Option<StackId>,
    /// CPython's evaluation loop, by module: (module, address ranges).
    eval_loops: Vec<(Arc<PathBuf>, Vec<std::ops::Range<u64>>)>,
    /// Samples that could not be unwound (no maps, no module).
    pub unresolved: u64,
    /// Samples unwound since [`Stacks::take_resolved`] was last called,
    /// when a recording asked for them ([`Stacks::log_resolutions`]).
    resolved_log: Option<Vec<(StackRef, StackId)>>,
}

impl Stacks {
    /// Records `tgid`'s memory maps as they are from now on.
    pub fn set_maps(&mut self, tgid: u32, maps: ProcessMaps) {
        let space = AddressSpace {
            maps: Arc::new(maps),
            unwinder: None,
            refs: 1,
        };
        let index = match self.free_spaces.pop() {
            Some(i) => {
                self.spaces[i] = Some(space);
                i
            }
            None => {
                self.spaces.push(Some(space));
                self.spaces.len() - 1
            }
        };
        if let Some(old) = self.current_space.insert(tgid, index) {
            self.release_space(old);
        }
    }

    /// `tgid`'s current maps.
    pub fn maps(&self, tgid: u32) -> Option<&ProcessMaps> {
        let index = *self.current_space.get(&tgid)?;
        Some(&self.spaces.get(index)?.as_ref()?.maps)
    }

    /// An exec loaded `path` (`host` is where we can read it) with its
    /// entry point at `entry`, and its ELF interpreter (if it has one) at
    /// `interpreter_base`: the process's code is theirs alone now.
    pub fn exec_image(
        &mut self,
        tgid: u32,
        (path, host): (Arc<str>, Arc<PathBuf>),
        entry: u64,
        interpreter_base: u64,
        interpreter_host: impl Fn(&str) -> PathBuf,
    ) {
        let mut maps = ProcessMaps::default();
        if let Some(program) = self.modules.get(&host) {
            let bias = entry.wrapping_sub(program.entry);
            maps.mappings
                .extend(program.code_mappings(bias, &path, &host));
            if let Some(interp) = program.interpreter.as_deref()
                && interpreter_base != 0
            {
                let interp_host = Arc::new(interpreter_host(interp));
                // The loader maps its first segment at AT_BASE.
                if let Some(loader) = self.modules.get(&interp_host) {
                    let path = Arc::from(interp);
                    maps.mappings.extend(loader.code_mappings(
                        interpreter_base,
                        &path,
                        &interp_host,
                    ));
                }
            }
        }
        maps.mappings.sort_by_key(|m| m.start);
        self.set_maps(tgid, maps);
    }

    /// Executable memory was mapped at `mapping`'s range, replacing
    /// whatever was mapped there (as mmap does).
    pub fn map_code(&mut self, tgid: u32, mapping: Mapping) {
        let mut maps = self.maps(tgid).cloned().unwrap_or_default();
        maps.insert(mapping);
        self.set_maps(tgid, maps);
    }

    /// A forked child starts with its parent's address space.
    pub fn fork(&mut self, parent: u32, child: u32) {
        if let Some(&space) = self.current_space.get(&parent) {
            self.retain_space(space);
            if let Some(old) = self.current_space.insert(child, space) {
                self.release_space(old);
            }
        }
    }

    /// After exec (or exit) the old maps no longer apply; samples taken in
    /// them keep what they need.
    pub fn forget(&mut self, tgid: u32) {
        if let Some(old) = self.current_space.remove(&tgid) {
            self.release_space(old);
        }
    }

    fn retain_space(&mut self, index: usize) {
        if let Some(Some(space)) = self.spaces.get_mut(index) {
            space.refs += 1;
        }
    }

    fn release_space(&mut self, index: usize) {
        if let Some(Some(space)) = self.spaces.get_mut(index) {
            space.refs = space.refs.saturating_sub(1);
            if space.refs == 0 {
                self.spaces[index] = None;
                self.free_spaces.push(index);
            }
        }
    }

    /// Address spaces held (by live processes and raw samples).
    pub fn space_count(&self) -> usize {
        self.spaces.len() - self.free_spaces.len()
    }

    /// Marks the address ranges (as symbol tables see them) of CPython's
    /// evaluation loop in `module`: their frames are replaced by the
    /// Python frames they ran.
    pub fn set_eval_loop(&mut self, module: Arc<PathBuf>, ranges: Vec<std::ops::Range<u64>>) {
        if !self.eval_loops.iter().any(|(m, _)| *m == module) {
            self.eval_loops.push((module, ranges));
        }
    }

    /// Keeps a sample, with the CPython frames of the same moment grouped
    /// by native evaluation call; it is freed when nothing holds it.
    pub fn add(
        &mut self,
        tgid: u32,
        sample: StackSample,
        python: PythonFrames,
        taken_ns: u64,
    ) -> StackRef {
        let space = self.current_space.get(&tgid).copied();
        if let Some(index) = space {
            self.retain_space(index);
        }
        self.next_generation = self.next_generation.wrapping_add(1);
        let generation = self.next_generation;
        let slot = Slot {
            state: State::Raw {
                space,
                sample,
                python,
            },
            refs: 0,
            taken_ns,
            generation,
        };
        let index = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(slot);
                i
            }
            None => {
                self.slots.push(Some(slot));
                u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
            }
        };
        let r = StackRef(index);
        self.raw_queue.push_back((r, generation));
        self.raw_live += 1;
        while self.raw_live > MAX_RAW_SAMPLES {
            self.resolve_oldest();
        }
        r
    }

    pub fn hold(&mut self, r: StackRef) {
        if let Some(slot) = self.slot_mut(r) {
            slot.refs += 1;
        }
    }

    pub fn release(&mut self, r: StackRef) {
        if let Some(slot) = self.slot_mut(r) {
            slot.refs = slot.refs.saturating_sub(1);
        }
        self.drop_if_unused(r);
    }

    /// Frees a sample nothing holds (call after handing it to the fd table).
    pub fn drop_if_unused(&mut self, r: StackRef) {
        let Some(slot) = self.slot_mut(r) else { return };
        if slot.refs > 0 {
            return;
        }
        if let State::Raw { space, .. } = slot.state {
            self.raw_live -= 1;
            if let Some(index) = space {
                self.release_space(index);
            }
        }
        self.slots[r.0 as usize] = None;
        self.free.push(r.0);
    }

    fn slot_mut(&mut self, r: StackRef) -> Option<&mut Slot> {
        self.slots.get_mut(r.0 as usize).and_then(Option::as_mut)
    }

    /// Unwinds samples taken more than `age` before `now_ns`, so raw stack
    /// bytes are kept only for young descriptors.
    pub fn mature(&mut self, now_ns: u64, age: Duration) {
        let age_ns = u64::try_from(age.as_nanos()).unwrap_or(u64::MAX);
        while let Some(&(r, generation)) = self.raw_queue.front() {
            match self.slots.get(r.0 as usize).and_then(Option::as_ref) {
                Some(slot)
                    if slot.generation == generation && matches!(slot.state, State::Raw { .. }) =>
                {
                    if now_ns.saturating_sub(slot.taken_ns) < age_ns {
                        return;
                    }
                    self.raw_queue.pop_front();
                    self.resolve(r);
                }
                // Freed or already unwound.
                _ => {
                    self.raw_queue.pop_front();
                }
            }
        }
    }

    fn resolve_oldest(&mut self) {
        while let Some((r, generation)) = self.raw_queue.pop_front() {
            let live = self
                .slots
                .get(r.0 as usize)
                .and_then(Option::as_ref)
                .is_some_and(|slot| {
                    slot.generation == generation && matches!(slot.state, State::Raw { .. })
                });
            if live {
                self.resolve(r);
                return;
            }
        }
    }

    /// Samples still held as raw bytes.
    pub fn raw_count(&self) -> usize {
        self.raw_live
    }

    /// The interned stack of a sample, unwinding it now if needed.
    pub fn resolve(&mut self, r: StackRef) -> Option<StackId> {
        let slot = self.slots.get_mut(r.0 as usize)?.as_mut()?;
        let (space, sample, python) = match &mut slot.state {
            State::Done(id) => return Some(*id),
            State::Raw {
                space,
                sample,
                python,
            } => (
                *space,
                std::mem::replace(sample, StackSample::FramePointer(Vec::new())),
                std::mem::take(python),
            ),
        };
        let mut stack = self.build(space, &sample);
        if let Some(index) = space {
            self.release_space(index);
        }
        if !python.groups.is_empty() {
            stack.frames = self.splice(stack.frames, python.groups);
            stack.truncated |= python.truncated;
        }
        let id = self.intern(stack);
        if let Some(slot) = self.slots.get_mut(r.0 as usize).and_then(Option::as_mut) {
            slot.state = State::Done(id);
        }
        self.raw_live -= 1;
        if let Some(log) = &mut self.resolved_log {
            log.push((r, id));
        }
        Some(id)
    }

    /// From now on, remembers each sample unwound, for
    /// [`Stacks::take_resolved`] (a recording writes them down).
    pub fn log_resolutions(&mut self) {
        self.resolved_log.get_or_insert_with(Vec::new);
    }

    /// Samples unwound since the last call: (handle, interned stack).
    pub fn take_resolved(&mut self) -> Vec<(StackRef, StackId)> {
        self.resolved_log
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    fn build(&mut self, space: Option<usize>, sample: &StackSample) -> Stack {
        let Some(space_index) = space.filter(|&i| matches!(self.spaces.get(i), Some(Some(_))))
        else {
            self.unresolved += 1;
            let frames = match sample {
                StackSample::Raw { ip, .. } => vec![Frame::Unknown { address: *ip }],
                StackSample::FramePointer(addrs) => addrs
                    .iter()
                    .map(|&address| Frame::Unknown { address })
                    .collect(),
            };
            return Stack {
                frames,
                truncated: true,
            };
        };
        let (addresses, truncated) = match sample {
            StackSample::Raw {
                ip, sp, bp, bytes, ..
            } => {
                let Some(Some(space)) = self.spaces.get_mut(space_index) else {
                    return Stack {
                        frames: Vec::new(),
                        truncated: true,
                    };
                };
                let unwinder = space
                    .unwinder
                    .get_or_insert_with(|| ProcessUnwinder::new(&space.maps, &mut self.modules));
                unwinder.unwind(*ip, *sp, *bp, bytes)
            }
            StackSample::FramePointer(addrs) => {
                // Frame-pointer walks give return addresses after the first.
                let lookup = addrs
                    .iter()
                    .enumerate()
                    .map(|(i, &a)| if i == 0 { a } else { a.saturating_sub(1) });
                (
                    lookup.collect(),
                    addrs.len() >= fdtrace_common::MAX_FP_FRAMES,
                )
            }
        };
        let Some(Some(space)) = self.spaces.get(space_index) else {
            return Stack {
                frames: Vec::new(),
                truncated: true,
            };
        };
        let maps = space.maps.clone();
        let frames = addresses
            .into_iter()
            .enumerate()
            // A "return address" outside any code mapping is unwinder
            // garbage (a stack slot read as an address): leave it out.
            .filter(|&(i, address)| i == 0 || maps.find(address).is_some_and(|m| m.executable))
            .map(|(_, address)| {
                let Some(m) = maps.find(address).filter(|m| m.is_file()) else {
                    return Frame::Unknown { address };
                };
                match self
                    .modules
                    .get(&m.host_path)
                    .and_then(|module| module.bias(m))
                {
                    Some(bias) => Frame::Module {
                        module: m.host_path.clone(),
                        svma: address.wrapping_sub(bias),
                    },
                    None => Frame::Unknown { address },
                }
            })
            .collect();
        Stack { frames, truncated }
    }

    /// Replaces each native frame of CPython's evaluation loop with the
    /// Python frames that call ran. Python frames whose native frames the
    /// unwinder did not reach go at the outer end.
    fn splice(&self, native: Vec<Frame>, python: Vec<Vec<Frame>>) -> Vec<Frame> {
        let is_eval = |frame: &Frame| match frame {
            Frame::Module { module, svma } => self
                .eval_loops
                .iter()
                .any(|(m, ranges)| m == module && ranges.iter().any(|r| r.contains(svma))),
            _ => false,
        };
        let mut groups = python.into_iter();
        let mut out = Vec::with_capacity(native.len());
        for frame in native {
            if is_eval(&frame)
                && let Some(group) = groups.next()
            {
                out.extend(group);
            } else {
                out.push(frame);
            }
        }
        out.extend(groups.flatten());
        out
    }

    fn intern(&mut self, stack: Stack) -> StackId {
        if let Some(&id) = self.interned.get(&stack) {
            return id;
        }
        if self.max_interned > 0
            && self.interned.len() >= self.max_interned
            && self.free_ids.is_empty()
        {
            self.overflowed += 1;
            if let Some(id) = self.overflow {
                return id;
            }
            // Never in `interned`, so never swept.
            let id = StackId(u32::try_from(self.stacks.len()).unwrap_or(u32::MAX));
            self.stacks.push(Stack {
                frames: Vec::new(),
                truncated: true,
            });
            self.overflow = Some(id);
            return id;
        }
        let id = if let Some(id) = self.free_ids.pop() {
            self.stacks[id.0 as usize] = stack.clone();
            id
        } else {
            self.stacks.push(stack.clone());
            StackId(u32::try_from(self.stacks.len() - 1).unwrap_or(u32::MAX))
        };
        self.interned.insert(stack, id);
        id
    }

    /// Lets go of the parsed modules no address space is using.
    pub fn drop_parsed_files(&mut self) {
        self.modules.clear();
    }

    /// Distinct stacks interned now.
    pub fn interned_count(&self) -> usize {
        self.interned.len()
    }

    /// Frees the interned stacks no sample refers to any more, for a store
    /// that lives as long as its host (`monitor`), and returns their ids:
    /// a later stack may get one of them, so whatever the caller keeps by
    /// id must go too.
    pub fn sweep(&mut self) -> Vec<StackId> {
        let mut live = vec![false; self.stacks.len()];
        for slot in self.slots.iter().flatten() {
            if let State::Done(id) = slot.state
                && let Some(l) = live.get_mut(id.0 as usize)
            {
                *l = true;
            }
        }
        let mut freed = Vec::new();
        for (index, alive) in live.into_iter().enumerate() {
            let id = StackId(u32::try_from(index).unwrap_or(u32::MAX));
            if alive || self.interned.get(&self.stacks[index]) != Some(&id) {
                continue;
            }
            let stack = std::mem::take(&mut self.stacks[index]);
            self.interned.remove(&stack);
            self.free_ids.push(id);
            freed.push(id);
        }
        freed
    }

    pub fn stack(&self, id: StackId) -> &Stack {
        &self.stacks[id.0 as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(ip: u64) -> StackSample {
        StackSample::Raw {
            ip,
            sp: 0x1000,
            bp: 0,
            bytes: vec![0; 64],
        }
    }

    impl Stacks {
        fn add_native(&mut self, tgid: u32, sample: StackSample, taken_ns: u64) -> StackRef {
            self.add(tgid, sample, PythonFrames::default(), taken_ns)
        }
    }

    fn py(function: &str, line: u32) -> Frame {
        Frame::Python {
            file: Arc::from("app.py"),
            function: Arc::from(function),
            line,
        }
    }

    #[test]
    fn python_frames_replace_the_evaluation_loop_frames_that_ran_them() {
        let mut stacks = Stacks::default();
        let python = Arc::new(PathBuf::from("/usr/bin/python3.11"));
        stacks.set_eval_loop(
            python.clone(),
            vec![std::ops::Range {
                start: 0x100,
                end: 0x200,
            }],
        );
        let native = |svma| Frame::Module {
            module: python.clone(),
            svma,
        };
        let frames = vec![
            native(0x50),  // _io_open
            native(0x150), // _PyEval_EvalFrameDefault
            native(0x60),  // _PyFunction_Vectorcall
            native(0x180), // _PyEval_EvalFrameDefault
        ];
        let groups = vec![
            vec![py("leak", 3), py("helper", 7)],
            vec![py("<module>", 10)],
            vec![py("outer", 1)],
        ];
        assert_eq!(
            stacks.splice(frames, groups),
            vec![
                native(0x50),
                py("leak", 3),
                py("helper", 7),
                native(0x60),
                py("<module>", 10),
                // The unwinder stopped early: the rest goes outermost.
                py("outer", 1),
            ]
        );
    }

    #[test]
    fn a_truncated_python_stack_marks_the_stack_truncated() {
        let mut stacks = Stacks::default();
        stacks.set_maps(1, ProcessMaps::default());
        let mut resolve = |truncated: bool| {
            let python = PythonFrames {
                groups: vec![vec![py("leak", 3)]],
                truncated,
            };
            let r = stacks.add(1, StackSample::FramePointer(vec![0x10]), python, 0);
            stacks.hold(r);
            let id = stacks.resolve(r).unwrap();
            stacks.stack(id).clone()
        };
        let whole = resolve(false);
        assert_eq!(
            whole.frames,
            vec![Frame::Unknown { address: 0x10 }, py("leak", 3)]
        );
        assert!(!whole.truncated);
        assert!(resolve(true).truncated);
    }

    #[test]
    fn samples_live_while_held_and_are_freed_after() {
        let mut stacks = Stacks::default();
        let r = stacks.add_native(1, sample(0x10), 0);
        stacks.hold(r);
        stacks.hold(r);
        stacks.drop_if_unused(r);
        assert_eq!(stacks.raw_count(), 1);
        stacks.release(r);
        assert_eq!(stacks.raw_count(), 1);
        stacks.release(r);
        assert_eq!(stacks.raw_count(), 0);
        // The slot is reused, and the stale queue entry is ignored.
        let again = stacks.add_native(1, sample(0x20), 5);
        assert_eq!(again, r);
        stacks.hold(again);
        stacks.mature(10, Duration::from_nanos(100));
        assert_eq!(stacks.raw_count(), 1);
    }

    #[test]
    fn only_old_samples_are_unwound_and_identical_ones_share_an_id() {
        let mut stacks = Stacks::default();
        let old = stacks.add_native(1, sample(0x10), 0);
        let twin = stacks.add_native(1, sample(0x10), 10);
        let young = stacks.add_native(1, sample(0x30), 1_000);
        for r in [old, twin, young] {
            stacks.hold(r);
        }
        stacks.mature(1_050, Duration::from_nanos(500));
        assert_eq!(stacks.raw_count(), 1);
        assert_eq!(stacks.resolve(old), stacks.resolve(twin));
        assert_ne!(stacks.resolve(old), stacks.resolve(young));
        assert_eq!(stacks.raw_count(), 0);
        // No maps were read for process 1: the stack is only its ip, truncated.
        let id = stacks.resolve(old).unwrap();
        assert_eq!(
            stacks.stack(id).frames,
            vec![Frame::Unknown { address: 0x10 }]
        );
        assert!(stacks.stack(id).truncated);
    }

    #[test]
    fn address_spaces_live_while_a_process_or_a_sample_needs_them() {
        let mut stacks = Stacks::default();
        stacks.set_maps(1, ProcessMaps::default());
        stacks.fork(1, 2);
        let r = stacks.add_native(1, sample(0x10), 0);
        stacks.hold(r);
        // Each new mapping is a new layout; the sample keeps its own.
        for i in 0..100u64 {
            stacks.map_code(
                1,
                Mapping {
                    start: 0x1000 * i,
                    end: 0x1000 * (i + 1),
                    offset: 0,
                    executable: true,
                    path: Arc::from(""),
                    host_path: Arc::new(PathBuf::new()),
                },
            );
        }
        // Process 1's latest, and the first one, which process 2 and the
        // sample share; the 99 in between are gone.
        assert_eq!(stacks.space_count(), 2);
        stacks.forget(2);
        assert_eq!(stacks.space_count(), 2, "the sample still needs it");
        stacks.resolve(r);
        assert_eq!(stacks.space_count(), 1);
        stacks.forget(1);
        assert_eq!(stacks.space_count(), 0);
    }

    #[test]
    fn raw_memory_is_bounded() {
        let mut stacks = Stacks::default();
        for i in 0..(MAX_RAW_SAMPLES as u64 + 10) {
            let r = stacks.add_native(1, sample(i), i);
            stacks.hold(r);
        }
        assert_eq!(stacks.raw_count(), MAX_RAW_SAMPLES);
    }
    #[test]
    fn a_sweep_frees_stacks_no_sample_holds_and_their_ids_are_reused() {
        let mut stacks = Stacks::default();
        stacks.set_maps(1, ProcessMaps::default());
        let take = |stacks: &mut Stacks, ip: u64| {
            let r = stacks.add(
                1,
                StackSample::FramePointer(vec![ip]),
                PythonFrames::default(),
                0,
            );
            stacks.hold(r);
            (r, stacks.resolve(r).unwrap())
        };
        let (kept, kept_id) = take(&mut stacks, 0x10);
        let (gone, gone_id) = take(&mut stacks, 0x20);
        assert_eq!(stacks.interned_count(), 2);
        stacks.release(gone);
        assert_eq!(stacks.sweep(), vec![gone_id]);
        assert_eq!(stacks.interned_count(), 1);
        assert_eq!(stacks.sweep(), vec![]);
        // A new stack takes the freed id; the kept one is untouched.
        let (_, new_id) = take(&mut stacks, 0x30);
        assert_eq!(new_id, gone_id);
        assert_eq!(stacks.resolve(kept), Some(kept_id));
        assert_ne!(stacks.stack(kept_id), stacks.stack(new_id));
    }

    #[test]
    fn past_its_bound_a_new_stack_is_the_overflow_stack() {
        let mut stacks = Stacks {
            max_interned: 1,
            ..Stacks::default()
        };
        stacks.set_maps(1, ProcessMaps::default());
        let mut ids = Vec::new();
        for ip in [0x10, 0x20, 0x30] {
            let r = stacks.add(
                1,
                StackSample::FramePointer(vec![ip]),
                PythonFrames::default(),
                0,
            );
            stacks.hold(r);
            ids.push(stacks.resolve(r).unwrap());
        }
        assert_eq!(stacks.overflowed, 2);
        assert_eq!(ids[1], ids[2]);
        assert!(stacks.stack(ids[1]).frames.is_empty() && stacks.stack(ids[1]).truncated);
        assert_eq!(stacks.interned_count(), 1);
    }
}
