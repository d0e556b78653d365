//! Symbolization: each unique stack once, at report time, one blazesym
//! call per module for all of that module's addresses.

use std::{path::PathBuf, sync::Arc};

use blazesym::symbolize::{Input, Symbolized, Symbolizer, source::Elf, source::Source};
use hashbrown::{HashMap, HashSet};

use super::{Frame, StackId, Stacks};

/// A frame ready for a report (and for a recorded trace).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SymFrame {
    /// Address within the module (or the raw address for unknown code).
    pub address: u64,
    pub function: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
    pub module: Option<String>,
    /// This function was inlined into the next frame.
    pub inlined: bool,
    /// A CPython frame (function is the qualified name, file the script).
    pub python: bool,
}

/// Symbolizes the given stacks. Frames come innermost first; a frame with
/// inlined calls expands into several `SymFrame`s, innermost first.
pub fn symbolize(
    symbolizer: &Symbolizer,
    stacks: &Stacks,
    ids: &[StackId],
) -> HashMap<StackId, Vec<SymFrame>> {
    let mut by_module: HashMap<Arc<PathBuf>, HashSet<u64>> = HashMap::new();
    for &id in ids {
        for frame in &stacks.stack(id).frames {
            if let Frame::Module { module, svma } = frame {
                by_module.entry(module.clone()).or_default().insert(*svma);
            }
        }
    }
    let mut resolved: HashMap<(Arc<PathBuf>, u64), Vec<SymFrame>> = HashMap::new();
    for (module, svmas) in by_module {
        let svmas: Vec<u64> = svmas.into_iter().collect();
        // The symbolizer opens the path itself: not one that is no longer
        // a regular file (a FIFO put there would block it).
        if super::unwind::open_regular(&module).is_none() {
            continue;
        }
        let source = Source::Elf(Elf::new(module.as_path()));
        let module_name = module.display().to_string();
        let results = symbolizer
            .symbolize(&source, Input::VirtOffset(&svmas))
            .unwrap_or_default();
        for (i, &svma) in svmas.iter().enumerate() {
            let frames = match results.get(i) {
                Some(Symbolized::Sym(sym)) => {
                    let mut out = Vec::new();
                    // Innermost inlined call first, the containing function last.
                    for inl in sym.inlined.iter().rev() {
                        out.push(SymFrame {
                            address: svma,
                            function: Some(inl.name.to_string()),
                            file: inl
                                .code_info
                                .as_ref()
                                .map(|c| c.to_path().display().to_string()),
                            line: inl.code_info.as_ref().and_then(|c| c.line),
                            module: Some(module_name.clone()),
                            inlined: true,
                            python: false,
                        });
                    }
                    out.push(SymFrame {
                        address: svma,
                        function: Some(sym.name.to_string()),
                        file: sym
                            .code_info
                            .as_ref()
                            .map(|c| c.to_path().display().to_string()),
                        line: sym.code_info.as_ref().and_then(|c| c.line),
                        module: Some(module_name.clone()),
                        inlined: false,
                        python: false,
                    });
                    out
                }
                _ => vec![SymFrame {
                    address: svma,
                    function: None,
                    file: None,
                    line: None,
                    module: Some(module_name.clone()),
                    inlined: false,
                    python: false,
                }],
            };
            resolved.insert((module.clone(), svma), frames);
        }
    }
    ids.iter()
        .map(|&id| {
            let frames = stacks
                .stack(id)
                .frames
                .iter()
                .flat_map(|frame| match frame {
                    Frame::Module { module, svma } => resolved
                        .get(&(module.clone(), *svma))
                        .cloned()
                        .unwrap_or_default(),
                    Frame::Unknown { address } => vec![SymFrame {
                        address: *address,
                        function: None,
                        file: None,
                        line: None,
                        module: None,
                        inlined: false,
                        python: false,
                    }],
                    Frame::Python {
                        file,
                        function,
                        line,
                    } => vec![SymFrame {
                        address: 0,
                        function: Some(function.to_string()),
                        file: Some(file.to_string()),
                        line: (*line > 0).then_some(*line),
                        module: None,
                        inlined: false,
                        python: true,
                    }],
                })
                .collect();
            (id, frames)
        })
        .collect()
}

/// A stack as read at source level: (function, file, line, inlined, and
/// the address for frames without a function).
type SourceKey = Vec<(
    Option<String>,
    Option<String>,
    Option<u32>,
    bool,
    Option<u64>,
)>;

fn source_key(frames: &[SymFrame]) -> SourceKey {
    frames
        .iter()
        .map(|f| {
            let address = f.function.is_none().then_some(f.address);
            (
                f.function.clone(),
                f.file.clone(),
                f.line,
                f.inlined,
                address,
            )
        })
        .collect()
}

/// Symbolized stacks, kept for the whole session: every stack is
/// symbolized once, however many reports (intervals, EMFILE blocks, the
/// final report) show it.
///
/// Stacks that read the same at source level (one call site a compiler
/// duplicated: an unrolled loop, a cloned function) share a canonical id,
/// so they are one group in reports. Frames without a function keep their
/// address, so unknown code only merges with itself.
#[derive(Default)]
pub struct Symbols {
    /// Keeps each file's symbols parsed between calls.
    symbolizer: Option<Symbolizer>,
    frames: HashMap<StackId, Vec<SymFrame>>,
    canonical: HashMap<StackId, StackId>,
    first_by_source: HashMap<SourceKey, StackId>,
}

impl Symbols {
    /// Symbolizes those of `ids` not seen before.
    pub fn ensure(&mut self, stacks: &Stacks, ids: &[StackId]) {
        let mut missing: Vec<StackId> = ids
            .iter()
            .copied()
            .filter(|id| !self.frames.contains_key(id))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if missing.is_empty() {
            return;
        }
        let symbolizer = self.symbolizer.get_or_insert_with(Symbolizer::new);
        for (id, frames) in symbolize(symbolizer, stacks, &missing) {
            self.frames.insert(id, frames);
        }
        for id in missing {
            let key = source_key(&self.frames[&id]);
            let first = *self.first_by_source.entry(key).or_insert(id);
            self.canonical.insert(id, first);
        }
    }

    /// The id reports group `id` under.
    pub fn canonical(&self, id: StackId) -> StackId {
        self.canonical.get(&id).copied().unwrap_or(id)
    }

    pub fn frames(&self, id: StackId) -> &[SymFrame] {
        self.frames.get(&id).map_or(&[], Vec::as_slice)
    }

    /// Lets go of every file's parsed symbols (they are parsed again when
    /// next needed): a daemon's binaries are replaced on upgrade, and the
    /// parsed copies of the old ones would otherwise stay.
    pub fn drop_parsed_files(&mut self) {
        self.symbolizer = None;
    }

    /// Forgets stacks the store freed ([`Stacks::sweep`]): their ids may
    /// come back meaning other stacks.
    pub fn forget(&mut self, ids: &[StackId]) {
        if ids.is_empty() {
            return;
        }
        let gone: HashSet<StackId> = ids.iter().copied().collect();
        self.frames.retain(|id, _| !gone.contains(id));
        self.canonical
            .retain(|id, first| !gone.contains(id) && !gone.contains(first));
        self.first_by_source
            .retain(|_, first| !gone.contains(first));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(address: u64, function: Option<&str>, line: u32) -> SymFrame {
        SymFrame {
            address,
            function: function.map(str::to_owned),
            file: Some("a.c".into()),
            line: Some(line),
            module: Some("/bin/a".into()),
            inlined: false,
            python: false,
        }
    }

    #[test]
    fn stacks_differing_only_in_addresses_share_a_source_key() {
        let a = [
            frame(0x10, Some("open_cache"), 27),
            frame(0x90, Some("main"), 43),
        ];
        let b = [
            frame(0x14, Some("open_cache"), 27),
            frame(0x98, Some("main"), 43),
        ];
        let c = [
            frame(0x14, Some("open_cache"), 28),
            frame(0x98, Some("main"), 43),
        ];
        assert_eq!(source_key(&a), source_key(&b));
        assert_ne!(source_key(&a), source_key(&c));
        assert_ne!(
            source_key(&[frame(0x50, None, 0)]),
            source_key(&[frame(0x51, None, 0)])
        );
    }
}
