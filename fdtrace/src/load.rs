//! Loading stage: checks the machine, loads the embedded eBPF object, sets
//! its globals and attaches every program to the tracepoint it is named
//! after. The only module that touches `aya::programs`.

use std::{
    fs,
    os::fd::{AsFd as _, AsRawFd as _},
    path::Path,
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, EbpfLoader, VerifierLogLevel,
    maps::{Array, HashMap, IterableMap, MapData, MapError, PerCpuArray, RingBuf},
    programs::{Program, ProgramError, ProgramInfo},
};
use fdtrace_common::{
    BPRM_FILENAME_OFFSET_GLOBAL, COUNTER_SLOTS, COUNTERS_MAP, Counter, DEFERRED_ENTRIES,
    DEFERRED_MAP, DeferredFd, EMFILE_STOP_GLOBAL, EVENTS_MAP, KERNEL_OFFSET_COUNT,
    KERNEL_OFFSETS_GLOBAL, KernelOffset, PYTHON_BINARIES_MAP, PYTHON_HINTS_MAP, PYTHON_MAP,
    PyBinary, PyFile, PyWalk, SCRATCH_MAP, SELECT_GLOBAL, SELF_TGID_GLOBAL, STACK_BYTES_GLOBAL,
    STACK_MODE_GLOBAL, StackMode, TASK_FSBASE_OFFSET_GLOBAL, TASK_PID_OFFSET_GLOBAL,
    TASK_TGID_OFFSET_GLOBAL, TRACED_MAP, TRACED_SLOT_COUNT, TRACED_SLOT_USED, TRACED_SLOTS_MAP,
};

use crate::{
    btf::Btf,
    python::early::{HintMaps, HintReader},
    tracer::{DeferredClaim, PythonRegistry, PythonWalker},
};

/// The kernel programs, built by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fdtrace"));

const TRACEFS: &str = "/sys/kernel/tracing";
/// Ring buffer size: room for ~1300 events with an 8 KiB stack copy while
/// userspace is busy (kernel memory, not ours).
const RING_BYTES: u32 = 16 << 20;
const BTF: &str = "/sys/kernel/btf/vmlinux";
/// CAP_PERFMON (38) and CAP_BPF (39), bits of `CapEff` in /proc/self/status.
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// What the kernel side should capture.
#[derive(Clone, Copy, Debug)]
pub struct ProbeOptions {
    pub stack_mode: StackMode,
    pub stack_bytes: u32,
    /// Stop a process at its EMFILE failure (`--on-emfile stop`): the only
    /// signal the kernel side ever sends.
    pub stop_at_emfile: bool,
    /// Which processes the kernel starts tracing on its own
    /// (`fdtrace_common::SELECT_GLOBAL`): 0 but for `monitor`.
    pub select: u32,
}

/// Counters the kernel keeps of what it could not deliver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Losses {
    pub dropped_events: u64,
    pub dropped_args: u64,
    pub dropped_fds: u64,
    /// Creations recorded without a stack because the ring was filling.
    pub skipped_stacks: u64,
    /// Creations kept in the kernel because the ring was filling.
    pub deferred: u64,
    /// When the last event was dropped (CLOCK_MONOTONIC ns), 0 if none.
    pub last_drop_ns: u64,
}

impl Losses {
    /// Events lost (skipped stacks are not: their events arrived).
    pub fn total(&self) -> u64 {
        self.dropped_events + self.dropped_args + self.dropped_fds
    }
}

/// Takes the kept creation under `key` if it was made before `before_ns`:
/// deleted here first, it is userspace's (its close, if any, will be
/// written). With `BPF_MAP_LOOKUP_AND_DELETE_ELEM` (hash maps since 5.14)
/// the value read is the one deleted; before that, a lookup then a delete,
/// and `atomic` turns false.
fn take_deferred_entry(
    map: &mut HashMap<MapData, u64, [u8; DEFERRED_SIZE]>,
    key: u64,
    before_ns: u64,
    atomic: &mut bool,
) -> Option<DeferredFd> {
    let decode = |bytes: &[u8; DEFERRED_SIZE]| -> DeferredFd {
        // SAFETY: the map value is a DeferredFd as the kernel wrote it:
        // plain integers and arrays, any bit pattern valid.
        unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) }
    };
    let peek = decode(&map.get(&key, 0).ok()?);
    // No time yet: the kernel is still writing it.
    if peek.ts_ns == 0 || peek.ts_ns >= before_ns {
        return None;
    }
    if *atomic {
        let mut bytes = [0u8; DEFERRED_SIZE];
        let fd = map.map().fd().as_fd().as_raw_fd();
        match lookup_and_delete(fd, key, &mut bytes) {
            Ok(()) => {
                let entry = decode(&bytes);
                // Replaced since the peek by a later creation: ours now, and
                // modelled as what it is.
                return (entry.ts_ns != 0).then_some(entry);
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return None,
            Err(_) => *atomic = false,
        }
    }
    map.remove(&key).ok().map(|()| peek)
}

/// `bpf(BPF_MAP_LOOKUP_AND_DELETE_ELEM)` on a hash map.
fn lookup_and_delete(
    map_fd: std::os::fd::RawFd,
    key: u64,
    value: &mut [u8; DEFERRED_SIZE],
) -> std::io::Result<()> {
    /// The `map_fd, key, value, flags` member of `union bpf_attr`.
    #[repr(C)]
    struct ElemAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
    let attr = ElemAttr {
        map_fd: u32::try_from(map_fd).map_err(|_| std::io::ErrorKind::InvalidInput)?,
        _pad: 0,
        key: (&raw const key) as u64,
        value: value.as_mut_ptr() as u64,
        flags: 0,
    };
    // SAFETY: `attr` points at live memory of the size passed; the kernel
    // writes at most the map's value size into `value`.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_AND_DELETE_ELEM,
            &raw const attr,
            size_of::<ElemAttr>(),
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Loaded and attached programs plus the maps userspace talks to.
pub struct Probes {
    /// Owns the programs and their links: dropping it detaches everything.
    _ebpf: Ebpf,
    events: Option<RingBuf<MapData>>,
    traced: HashMap<MapData, u32, u32>,
    traced_slots: Array<MapData, u32>,
    counters: PerCpuArray<MapData, u64>,
    python: Option<HashMap<MapData, u32, [u8; PyWalk::SIZE]>>,
    python_binaries: Option<HashMap<MapData, [u8; PyFile::SIZE], [u8; PyBinary::SIZE]>>,
    deferred: Option<HashMap<MapData, u64, [u8; DEFERRED_SIZE]>>,
    /// Recognises interpreters the kernel hints at, apart from the loop.
    _python_hints: HintReader,
    /// The `PYTHON` map again, for [`Self::untrace`].
    python_entries: HashMap<MapData, u32, [u8; PyWalk::SIZE]>,
}

const DEFERRED_SIZE: usize = size_of::<DeferredFd>();

impl Probes {
    /// Checks privileges and kernel features, then loads and attaches.
    pub fn load(options: ProbeOptions) -> Result<Self> {
        check_kernel_version()?;
        check_privileges()?;
        ensure_tracefs()?;
        if !Path::new(BTF).exists() {
            bail!(
                "this kernel has no BTF ({BTF} is missing): fdtrace needs a kernel built with CONFIG_DEBUG_INFO_BTF=y"
            );
        }
        raise_memlock_limit();
        // aya's loader parses the kernel's BTF too: both parses at once.
        let (offsets, mut loader) = std::thread::scope(|scope| {
            let offsets = scope.spawn(Offsets::read);
            let loader = EbpfLoader::new();
            let offsets = offsets
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("reading the kernel's BTF panicked")));
            (offsets, loader)
        });
        let Offsets {
            task_pid,
            task_tgid,
            bprm_filename,
            fsbase,
            kernel_offsets,
        } = offsets?;
        let cpus = aya::util::nr_cpus()
            .map_err(|(path, e)| anyhow::anyhow!("read {path}: {e}"))
            .and_then(|n| Ok(u32::try_from(n)?))?;
        let mut ebpf = loader
            .override_global(STACK_MODE_GLOBAL, &(options.stack_mode as u32), true)
            .override_global(STACK_BYTES_GLOBAL, &options.stack_bytes, true)
            .override_global(TASK_PID_OFFSET_GLOBAL, &task_pid, true)
            .override_global(TASK_TGID_OFFSET_GLOBAL, &task_tgid, true)
            .override_global(BPRM_FILENAME_OFFSET_GLOBAL, &bprm_filename, true)
            .override_global(TASK_FSBASE_OFFSET_GLOBAL, &fsbase, true)
            .override_global(KERNEL_OFFSETS_GLOBAL, &kernel_offsets, true)
            .override_global(EMFILE_STOP_GLOBAL, &u32::from(options.stop_at_emfile), true)
            .override_global(SELECT_GLOBAL, &options.select, true)
            .override_global(SELF_TGID_GLOBAL, &std::process::id(), true)
            .map_max_entries(EVENTS_MAP, RING_BYTES)
            .map_max_entries(SCRATCH_MAP, cpus)
            // Errors and statistics only: a failed load is verified twice
            // (aya retries once with a log buffer), never more, and the
            // log stays short enough to quote.
            .verifier_log_level(if std::env::var_os(VERIFIER_LOG_ENV).is_some() {
                VerifierLogLevel::DEBUG | VerifierLogLevel::STATS
            } else {
                VerifierLogLevel::STATS
            })
            .load(EBPF_OBJECT)
            .context("load the eBPF object (is BPF enabled in this kernel?)")?;
        attach_all(&mut ebpf)?;
        let events = RingBuf::try_from(take_map(&mut ebpf, EVENTS_MAP)?)?;
        let traced = HashMap::try_from(take_map(&mut ebpf, TRACED_MAP)?)?;
        let traced_slots = Array::try_from(take_map(&mut ebpf, TRACED_SLOTS_MAP)?)?;
        let counters = PerCpuArray::try_from(take_map(&mut ebpf, COUNTERS_MAP)?)?;
        let python = HashMap::try_from(take_map(&mut ebpf, PYTHON_MAP)?)?;
        let python_binaries = HashMap::try_from(take_map(&mut ebpf, PYTHON_BINARIES_MAP)?)?;
        let deferred = HashMap::try_from(take_map(&mut ebpf, DEFERRED_MAP)?)?;
        let python_hints = HintReader::start(
            RingBuf::try_from(take_map(&mut ebpf, PYTHON_HINTS_MAP)?)?,
            HintMaps {
                walker: HashMap::try_from(second_handle(&python)?)?,
                registry: HashMap::try_from(second_handle(&python_binaries)?)?,
                traced: HashMap::try_from(second_handle(&traced)?)?,
            },
        )?;
        Ok(Self {
            _python_hints: python_hints,
            python_entries: HashMap::try_from(second_handle(&python)?)?,
            deferred: Some(deferred),
            _ebpf: ebpf,
            events: Some(events),
            traced,
            traced_slots,
            counters,
            python: Some(python),
            python_binaries: Some(python_binaries),
        })
    }

    /// Hands out (once) the writer of the kernel's CPython walker map.
    pub fn take_python_walker(&mut self) -> Option<PythonWalker> {
        let mut map = self.python.take()?;
        Some(Box::new(move |tgid, walk| {
            match walk {
                Some(walk) => map.insert(tgid, walk.to_bytes(), 0),
                None => map.remove(&tgid),
            }
            .map_err(|e| e.to_string())
        }))
    }

    /// Hands out (once) the claimer of creations the kernel kept (see
    /// [`fdtrace_common::DEFERRED_MAP`]).
    pub fn take_deferred(&mut self) -> Option<DeferredClaim> {
        let mut map = self.deferred.take()?;
        let mut atomic = true;
        Some(Box::new(move |wanted, before_ns| {
            // Deletions while walking can restart the kernel's walk from the
            // first bucket: bounded, and each key taken once.
            let mut seen = hashbrown::HashSet::new();
            let keys: Vec<u64> = map
                .keys()
                .take(2 * DEFERRED_ENTRIES as usize)
                .filter_map(Result::ok)
                .filter(|key| u32::try_from(key >> 32).is_ok_and(wanted))
                .filter(|key| seen.insert(*key))
                .collect();
            let mut claimed = Vec::new();
            for key in keys {
                let Some(entry) = take_deferred_entry(&mut map, key, before_ns, &mut atomic) else {
                    continue;
                };
                let tgid = u32::try_from(key >> 32).unwrap_or(0);
                let fd = i32::try_from(key & 0xffff_ffff).unwrap_or(-1);
                claimed.push((tgid, fd, entry));
            }
            claimed
        }))
    }

    /// Hands out (once) the writer of the kernel's registry of CPython
    /// interpreter files.
    pub fn take_python_registry(&mut self) -> Option<PythonRegistry> {
        let mut map = self.python_binaries.take()?;
        Some(Box::new(move |file, binary| {
            map.insert(file.to_bytes(), binary.to_bytes(), 0)
                .map_err(|e| e.to_string())
        }))
    }

    /// Hands out the ring buffer (once) to the reading loop.
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// Starts tracing `tgid`; its future children are added by the kernel.
    pub fn trace(&mut self, tgid: u32) -> Result<()> {
        // The slot first: the hash alone would be ignored while the slot
        // still says nobody is traced there (see TRACED_SLOTS_MAP).
        let index = tgid & (TRACED_SLOT_COUNT - 1);
        let slot = self.traced_slots.get(&index, 0).unwrap_or(0);
        if slot == 0 || slot == TRACED_SLOT_USED {
            self.traced_slots
                .set(index, tgid, 0)
                .with_context(|| format!("mark process {tgid} as traced"))?;
        }
        self.traced
            .insert(tgid, 1, 0)
            .with_context(|| format!("add process {tgid} to the traced set"))
    }

    /// Stops tracing `tgid` (a monitor's candidate it did not keep). Its
    /// records already in the ring still arrive.
    pub fn untrace(&mut self, tgid: u32) -> Result<()> {
        match self.traced.remove(&tgid) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("remove process {tgid} from the traced set"));
            }
        }
        // As the kernel does at exit: a slot naming it now only says
        // "someone was traced here", which sends lookups to the hash.
        let index = tgid & (TRACED_SLOT_COUNT - 1);
        if self.traced_slots.get(&index, 0).ok() == Some(tgid) {
            self.traced_slots
                .set(index, TRACED_SLOT_USED, 0)
                .with_context(|| format!("mark process {tgid} as untraced"))?;
        }
        // Its CPython walker entry too (the kernel's exit handler skips an
        // untraced process). After the traced set: the hint reader checks
        // that set after it writes an entry.
        match self.python_entries.remove(&tgid) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("forget process {tgid}'s Python walker")),
        }
    }

    /// The thread-group ids in the kernel's traced set now.
    pub fn traced(&self) -> Vec<u32> {
        self.traced.keys().filter_map(Result::ok).collect()
    }

    /// Gives back the fast "nobody traced here" answer to slots that only
    /// say someone once was (`TRACED_SLOT_USED`), so a monitor that saw
    /// many processes come and go does not send every syscall on the host
    /// to the hash. Returns how many slots it cleared.
    pub fn sweep_slots(&mut self) -> Result<usize> {
        let slot_of = |tgid: u32| tgid & (TRACED_SLOT_COUNT - 1);
        let held: std::collections::HashSet<u32> = self
            .traced
            .keys()
            .filter_map(Result::ok)
            .map(slot_of)
            .collect();
        let mut cleared = std::collections::HashSet::new();
        for index in 0..TRACED_SLOT_COUNT {
            if !held.contains(&index)
                && self.traced_slots.get(&index, 0).ok() == Some(TRACED_SLOT_USED)
            {
                self.traced_slots
                    .set(index, 0, 0)
                    .context("clear a traced slot")?;
                cleared.insert(index);
            }
        }
        // A process the kernel started tracing meanwhile, in a slot just
        // cleared, gets its slot back.
        for tgid in self.traced.keys().filter_map(Result::ok) {
            if cleared.contains(&slot_of(tgid)) {
                self.traced_slots
                    .set(slot_of(tgid), tgid, 0)
                    .context("restore a traced slot")?;
            }
        }
        Ok(cleared.len())
    }

    /// Sums the per-CPU loss counters.
    pub fn losses(&self) -> Losses {
        let read = |counter: Counter| -> u64 {
            self.counters
                .get(&(counter as u32), 0)
                .map(|values| values.iter().sum())
                .unwrap_or(0)
        };
        Losses {
            dropped_events: read(Counter::DroppedEvents),
            dropped_args: read(Counter::DroppedArgs),
            dropped_fds: read(Counter::DroppedFds),
            skipped_stacks: read(Counter::SkippedStacks),
            deferred: read(Counter::Deferred),
            last_drop_ns: self
                .counters
                .get(&(Counter::LastDropNs as u32), 0)
                .map(|values| values.iter().copied().max().unwrap_or(0))
                .unwrap_or(0),
        }
    }
}

const _: () = assert!(COUNTER_SLOTS == 6);

/// Every struct member offset the kernel programs are given, from this
/// kernel's BTF.
struct Offsets {
    task_pid: u32,
    task_tgid: u32,
    bprm_filename: u32,
    fsbase: u32,
    kernel_offsets: [u32; KERNEL_OFFSET_COUNT],
}

impl Offsets {
    fn read() -> Result<Offsets> {
        let btf = Btf::kernel()?;
        Ok(Offsets {
            task_pid: btf.member_offset("task_struct", "pid")?,
            task_tgid: btf.member_offset("task_struct", "tgid")?,
            bprm_filename: btf.member_offset("linux_binprm", "filename")?,
            fsbase: btf.member_offset("task_struct", "thread")?
                + btf.member_offset("thread_struct", "fsbase")?,
            kernel_offsets: kernel_offsets(&btf)?,
        })
    }
}

/// The struct member offsets the kernel side walks files, mounts, auxv and
/// limits with, from this kernel's BTF: no layout is assumed.
fn kernel_offsets(btf: &Btf) -> Result<[u32; KERNEL_OFFSET_COUNT]> {
    use KernelOffset as K;
    let fields: [(K, &str, &str); KERNEL_OFFSET_COUNT] = [
        (K::TaskMm, "task_struct", "mm"),
        (K::TaskFiles, "task_struct", "files"),
        (K::TaskSignal, "task_struct", "signal"),
        (K::MmSavedAuxv, "mm_struct", "saved_auxv"),
        (K::FilesFdt, "files_struct", "fdt"),
        (K::FdtableMaxFds, "fdtable", "max_fds"),
        (K::FdtableFd, "fdtable", "fd"),
        (K::FilePath, "file", "f_path"),
        (K::FileInode, "file", "f_inode"),
        (K::InodeMode, "inode", "i_mode"),
        (K::InodeIno, "inode", "i_ino"),
        (K::InodeSb, "inode", "i_sb"),
        (K::SbMagic, "super_block", "s_magic"),
        (K::SbDev, "super_block", "s_dev"),
        (K::DentryParent, "dentry", "d_parent"),
        (K::DentryName, "dentry", "d_name"),
        (K::VfsmountRoot, "vfsmount", "mnt_root"),
        (K::MountMnt, "mount", "mnt"),
        (K::MountParent, "mount", "mnt_parent"),
        (K::MountMountpoint, "mount", "mnt_mountpoint"),
        (K::SignalRlim, "signal_struct", "rlim"),
        (K::BprmFile, "linux_binprm", "file"),
        (K::MmArgStart, "mm_struct", "arg_start"),
        (K::MmArgEnd, "mm_struct", "arg_end"),
        (K::SignalLive, "signal_struct", "live"),
        (K::FdtableOpenFds, "fdtable", "open_fds"),
        (K::MmStartStack, "mm_struct", "start_stack"),
    ];
    let mut offsets = [0; KERNEL_OFFSET_COUNT];
    for (which, strukt, member) in fields {
        offsets[which as usize] = btf.member_offset(strukt, member)?;
    }
    Ok(offsets)
}

/// A handle of its own on a map already taken, for another thread.
fn second_handle<K: aya::Pod, V: aya::Pod>(map: &impl IterableMap<K, V>) -> Result<aya::maps::Map> {
    let id = map.map().info().context("read a map's id")?.id();
    let data = MapData::from_id(id).with_context(|| format!("open map {id} again"))?;
    Ok(aya::maps::Map::HashMap(data))
}

fn take_map(ebpf: &mut Ebpf, name: &str) -> Result<aya::maps::Map> {
    ebpf.take_map(name)
        .with_context(|| format!("map {name} missing from the eBPF object"))
}

/// Loads every program, then attaches each to the raw tracepoint its name
/// gives (`sys_enter` and `sys_exit` of raw_syscalls, `sched_process_*` of
/// sched). Raw, not perf tracepoints: detaching a perf tracepoint waits for
/// an RCU grace period (~40-70 ms each, one at a time), which made every
/// run visibly slower to end.
///
/// The programs are verified in parallel, one thread each: verification is
/// most of fdtrace's fixed cost, the kernel verifies privileged loads
/// concurrently, and the largest program alone takes most of the time.
fn attach_all(ebpf: &mut Ebpf) -> Result<()> {
    let category = |name: &str| {
        if name.starts_with("sys_") {
            "raw_syscalls"
        } else {
            "sched"
        }
    };
    for (name, _) in ebpf.programs() {
        let format = Path::new(TRACEFS)
            .join("events")
            .join(category(name))
            .join(name);
        if !format.exists() {
            bail!(
                "this kernel has no tracepoint {}/{name} ({} is missing)",
                category(name),
                format.display()
            );
        }
    }
    let loaded: Vec<Result<()>> = std::thread::scope(|scope| {
        let loads: Vec<_> = ebpf
            .programs_mut()
            .map(|(name, program)| (name.to_owned(), scope.spawn(move || load(name, program))))
            .collect();
        loads
            .into_iter()
            .map(|(name, load)| {
                load.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("loading program {name} panicked")))
            })
            .collect()
    });
    loaded.into_iter().collect::<Result<Vec<()>>>()?;
    for (name, program) in ebpf.programs_mut() {
        let Program::RawTracePoint(raw) = program else {
            bail!("program {name} is not a raw tracepoint");
        };
        raw.attach(name)
            .with_context(|| format!("attach raw tracepoint {}/{name}", category(name)))?;
    }
    Ok(())
}

/// Hands one program to the verifier.
fn load(name: &str, program: &mut Program) -> Result<()> {
    let started = std::time::Instant::now();
    let Program::RawTracePoint(raw) = program else {
        bail!("program {name} is not a raw tracepoint");
    };
    raw.load().map_err(|e| rejected(name, e))?;
    report_load(name, started, raw.info().ok());
    Ok(())
}

/// Names a file to write a rejected program's whole verifier log to, at
/// the verifier's debug level (for bug reports; slower to fail).
const VERIFIER_LOG_ENV: &str = "FDTRACE_VERIFIER_LOG";

/// Lines of the verifier's log quoted when it rejects a program: the
/// reason is at the end.
const VERIFIER_TAIL_LINES: usize = 6;

/// One error for a program the kernel refused: its name and the end of the
/// verifier's log, not the whole log.
fn rejected(name: &str, error: ProgramError) -> anyhow::Error {
    match error {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            if let Some(path) = std::env::var_os(VERIFIER_LOG_ENV) {
                let _ = fs::write(&path, &log);
            }
            let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
            let tail = lines[lines.len().saturating_sub(VERIFIER_TAIL_LINES)..].join("\n  ");
            anyhow::anyhow!(
                "this kernel's BPF verifier rejected program {name} ({io_error}); please report \
                 it with `uname -r` and these last lines of its log:\n  {tail}"
            )
        }
        other => anyhow::Error::new(other).context(format!("load program {name}")),
    }
}

/// With `FDTRACE_LOAD_STATS` set, one line per program on standard error:
/// instructions the verifier processed (Linux 5.16+) and time to load.
fn report_load(name: &str, started: std::time::Instant, info: Option<ProgramInfo>) {
    if std::env::var_os("FDTRACE_LOAD_STATS").is_none() {
        return;
    }
    let verified = info
        .and_then(|i| i.verified_instruction_count())
        .map_or_else(|| "?".to_owned(), |n| n.to_string());
    eprintln!(
        "fdtrace: loaded {name}: {verified} instructions verified in {} ms",
        started.elapsed().as_millis()
    );
}

/// The oldest kernel fdtrace supports: BTF with the struct layouts it
/// reads, the BPF ring buffer (5.8) and raw tracepoints.
const MIN_KERNEL: (u32, u32) = (5, 10);

/// Refuses kernels older than [`MIN_KERNEL`] with one line, before any
/// program is handed to the verifier.
fn check_kernel_version() -> Result<()> {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let Some(version) = parse_release(&release) else {
        return Ok(());
    };
    if version < MIN_KERNEL {
        bail!(
            "this kernel is Linux {} and fdtrace needs {}.{} or newer (BTF, the BPF ring buffer): \
             run it on a newer kernel",
            release.trim(),
            MIN_KERNEL.0,
            MIN_KERNEL.1
        );
    }
    Ok(())
}

/// `5.10.0-32-amd64` -> (5, 10).
fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Root, or CAP_BPF and CAP_PERFMON; otherwise say which is missing.
fn check_privileges() -> Result<()> {
    let status = fs::read_to_string("/proc/self/status").context("read /proc/self/status")?;
    let cap_eff = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let missing: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .into_iter()
        .filter(|(bit, _)| cap_eff & (1 << bit) == 0)
        .map(|(_, name)| name)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    bail!(
        "fdtrace needs root (or {}) to load eBPF programs: run it with sudo",
        missing.join(" and ")
    )
}

/// Mounts tracefs when it is missing (we are root by now).
fn ensure_tracefs() -> Result<()> {
    if Path::new(TRACEFS).join("events").exists() {
        return Ok(());
    }
    let status = std::process::Command::new("mount")
        .args(["-t", "tracefs", "nodev", TRACEFS])
        .status();
    match status {
        Ok(s) if s.success() && Path::new(TRACEFS).join("events").exists() => Ok(()),
        _ => bail!(
            "tracefs is not mounted at {TRACEFS} and mounting it failed: run `mount -t tracefs nodev {TRACEFS}`"
        ),
    }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer; failure only matters on old kernels.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_releases_parse_to_major_and_minor() {
        assert_eq!(parse_release("5.10.0-32-amd64\n"), Some((5, 10)));
        assert_eq!(parse_release("6.18.2"), Some((6, 18)));
        assert_eq!(parse_release("4.19.0-27-cloud-amd64"), Some((4, 19)));
        assert!(parse_release("4.19.0") < Some(MIN_KERNEL));
        assert!(parse_release("6.1.0") > Some(MIN_KERNEL));
        assert_eq!(parse_release("weird"), None);
    }
}
