//! Python stage, early: recognises an interpreter the kernel does not know
//! yet while its process is still starting, whatever the event loop is
//! busy with (symbolizing a recording, a burst of events).
//!
//! The kernel sends the thread-group id of a traced process that exec'd or
//! mapped code from a file named like CPython and not in its registry
//! (`PY_HINTS`). A thread of its own reads the process's maps (never
//! stopping it), recognises the interpreter ([`Python::detect`]), registers
//! the file and gives the process its walker entry. A program that only
//! links libpython (a shared build's `python3.X`) is recognised at the
//! hint its libpython's mapping sends: the files the hinted process names
//! are only ever read as [`Python::detect`] reads them (regular files, the
//! headers and symbol tables), never followed further. The event loop,
//! when it reaches the same mapping, recognises it again: the entries it
//! writes are the same, and its notes are the report's.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::{Context as _, Result};
use aya::maps::{HashMap, MapData, RingBuf};
use fdtrace_common::{PyBinary, PyFile, PyWalk};

use super::Python;
use crate::stacks::maps::ProcessMaps;

/// How often the reader looks at its stop flag while no hint comes.
const POLL_MS: i32 = 100;

/// `BPF_NOEXIST`: an entry the kernel (or the loop) wrote stays.
const NOEXIST: u64 = 1;

/// The kernel maps the reader writes, through handles of its own.
pub struct HintMaps {
    pub walker: HashMap<MapData, u32, [u8; PyWalk::SIZE]>,
    pub registry: HashMap<MapData, [u8; PyFile::SIZE], [u8; PyBinary::SIZE]>,
    pub traced: HashMap<MapData, u32, u32>,
}

/// The reading thread; told to stop when dropped. It is not waited for
/// (it sees the flag within [`POLL_MS`]): its map handles are its own, and
/// an ending session should not wait on a poll.
pub struct HintReader {
    stop: Arc<AtomicBool>,
}

impl HintReader {
    pub fn start(hints: RingBuf<MapData>, maps: HintMaps) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("python-hints".into())
            .spawn(move || read_hints(&flag, hints, maps))
            .context("start the Python hint reader")?;
        Ok(Self { stop })
    }
}

impl Drop for HintReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn read_hints(stop: &AtomicBool, mut hints: RingBuf<MapData>, mut maps: HintMaps) {
    let mut python = Python::default();
    while !stop.load(Ordering::Relaxed) {
        let mut poll = libc::pollfd {
            fd: hints.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, for the duration of the call.
        unsafe { libc::poll(&raw mut poll, 1, POLL_MS) };
        while let Some(item) = hints.next() {
            let tgid = item
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_ne_bytes)
                .and_then(|v| u32::try_from(v).ok());
            drop(item);
            if let Some(tgid) = tgid {
                recognise(&mut python, &mut maps, tgid);
            }
        }
    }
}

/// Recognises `tgid`'s interpreter from its maps and tells the kernel.
fn recognise(python: &mut Python, maps: &mut HintMaps, tgid: u32) {
    let Ok(process) = ProcessMaps::read(tgid) else {
        // Gone already: nothing left to walk.
        return;
    };
    if let Some(found) = python.detect(tgid, &process) {
        if let Some((file, binary)) = found.binary {
            let _ = maps.registry.insert(file.to_bytes(), binary.to_bytes(), 0);
        }
        let inserted = maps
            .walker
            .insert(tgid, found.walk.to_bytes(), NOEXIST)
            .is_ok();
        // Exited (or dropped by a monitor) meanwhile: the kernel forgot
        // it then, so must this.
        if inserted && maps.traced.get(&tgid, 0).is_err() {
            let _ = maps.walker.remove(&tgid);
        }
    }
    // Each hint is judged afresh: only the files read stay cached.
    python.forget(tgid);
    python.notes.clear();
}
