//! HTML report, flame-graph part: leaked descriptors by the stack that
//! opened them, drawn by `inferno` as an icicle (root at the top), and the
//! data the page's script needs to list the descriptors under a clicked
//! frame.
//!
//! Guarantees: the SVG is made to sit inside an HTML page (no XML prolog,
//! no comments, no script of inferno's, no global style); every frame is a
//! `<g class="frame" data-name="...">` with inferno's `fg:x`/`fg:w` sample
//! range on its rect. Paths are embedded in the order inferno lays them
//! out, so a frame's sample range `[fg:x, fg:x + fg:w)` is exactly the
//! paths (and descriptors) beneath it.

use std::io;

use hashbrown::HashMap;
use inferno::flamegraph::{self, Direction, Options, Palette, color::BasicPalette};
use serde::Serialize;

use crate::report::{FrameEntry, Group, LeakEntry, Report};

/// The frame a leak without a stack is drawn under.
pub const UNKNOWN_STACK: &str = "[unknown stack]";
/// Descriptor rows embedded for one path.
pub const MAX_ROWS_PER_PATH: usize = 2000;
/// Descriptor rows embedded in all.
const MAX_ROWS: usize = 10_000;
/// Frames narrower than this (percent of the width, about a pixel) are
/// left out of the drawing; their descriptors are still listed.
const MIN_WIDTH_PCT: f64 = 0.1;

/// One leaked descriptor: pid, fd, kind, target, age in ms.
type Row<'a> = (u32, i32, &'a str, &'a str, u64);

/// What the page's script needs to list the descriptors under a frame.
#[derive(Serialize)]
pub struct FlameData<'a> {
    /// Frame names, each once.
    pub names: Vec<String>,
    /// In inferno's layout order.
    pub paths: Vec<PathData<'a>>,
}

/// One distinct path from the root, outermost frame first (indices into
/// [`FlameData::names`]), and the descriptors opened through it.
#[derive(Serialize)]
pub struct PathData<'a> {
    pub frames: Vec<u32>,
    pub count: usize,
    /// At most [`MAX_ROWS_PER_PATH`] of them (fewer when the page's total
    /// budget runs out): `count - rows.len()` are left out.
    pub rows: Vec<Row<'a>>,
}

/// The flame graph and what its frames stand for.
pub struct Flame<'a> {
    pub svg: String,
    pub data: FlameData<'a>,
}

/// A frame's name in the graph: its function, else `module+address`. No
/// `;` (inferno's separator) and nothing inferno would read as a count.
pub fn frame_name(f: &FrameEntry) -> String {
    let raw = match f.function.as_deref().map(str::trim) {
        Some(name) if !name.is_empty() => name.to_owned(),
        _ => {
            let module = f
                .module
                .as_deref()
                .map(|m| m.rsplit('/').next().unwrap_or(m));
            match (module, f.address.is_empty()) {
                (Some(m), false) => format!("{m}+{}", f.address),
                (Some(m), true) => m.to_owned(),
                (None, false) => f.address.clone(),
                (None, true) => "[unknown]".to_owned(),
            }
        }
    };
    sanitize(&raw)
}

fn sanitize(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| match c {
            ';' => ':',
            c if c.is_control() => ' ',
            c => c,
        })
        .collect::<String>()
        .trim()
        .to_owned();
    // A last word of digits would be taken for the sample count, and a
    // leading "# " for a comment line.
    if let Some(i) = s.rfind(' ')
        && s[i + 1..].chars().all(|c| c.is_ascii_digit() || c == '.')
    {
        s.replace_range(i..=i, "\u{a0}");
    }
    if s.starts_with("# ") {
        s.replace_range(1..2, "\u{a0}");
    }
    if s.is_empty() {
        s.push_str("[unknown]");
    }
    s
}

/// A native frame of the Python interpreter (left out of stacks with
/// Python frames, as in the text report: the Python frames say where the
/// call came from).
pub(super) fn interpreter_frame(f: &FrameEntry) -> bool {
    f.lang == "native"
        && f.module.as_deref().is_some_and(|m| {
            let name = m.rsplit('/').next().unwrap_or(m);
            name.starts_with("python") || name.starts_with("libpython")
        })
}

/// A stack's frames, outermost first.
fn path_of(group: Option<&Group>) -> Vec<String> {
    let Some(g) = group.filter(|g| !g.stack.is_empty()) else {
        return vec![UNKNOWN_STACK.to_owned()];
    };
    let python = g.stack.iter().any(|f| f.lang == "python");
    g.stack
        .iter()
        .rev()
        .filter(|f| !python || !interpreter_frame(f))
        .map(frame_name)
        .collect()
}

/// The folded line inferno reads for a path.
fn folded(frames: &[String], count: usize) -> String {
    format!("{} {count}", frames.join(";"))
}

/// The leaks of `report` as a flame graph; `None` when there are none.
pub fn build(report: &Report) -> io::Result<Option<Flame<'_>>> {
    if report.leaks.is_empty() {
        return Ok(None);
    }
    let mut path_cache: HashMap<Option<u32>, Vec<String>> = HashMap::new();
    let mut by_path: HashMap<Vec<String>, Vec<&LeakEntry>> = HashMap::new();
    for leak in &report.leaks {
        let path = path_cache
            .entry(leak.stack_id)
            .or_insert_with(|| path_of(leak.stack_id.and_then(|id| report.group(id))));
        by_path.entry(path.clone()).or_default().push(leak);
    }
    let mut paths: Vec<(String, Vec<String>, Vec<&LeakEntry>)> = by_path
        .into_iter()
        .map(|(frames, leaks)| (folded(&frames, leaks.len()), frames, leaks))
        .collect();
    // Inferno sorts its lines the same way and lays samples out in that
    // order.
    paths.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let mut options = Options::default();
    options.direction = Direction::Inverted;
    options.title = "Leaked descriptors by the stack that opened them".to_owned();
    options.count_name = "descriptors".to_owned();
    options.no_javascript = true;
    options.min_width = MIN_WIDTH_PCT;
    options.hash = true;
    options.colors = Palette::Basic(BasicPalette::Hot);
    let mut raw = Vec::new();
    flamegraph::from_lines(
        &mut options,
        paths.iter().map(|(line, _, _)| line.as_str()),
        &mut raw,
    )?;
    let svg = String::from_utf8(raw).map_err(io::Error::other)?;
    let mut budget = MAX_ROWS;
    let mut names: Vec<String> = Vec::new();
    let mut index: HashMap<String, u32> = HashMap::new();
    let paths = paths
        .into_iter()
        .map(|(_, frames, leaks)| {
            let take = leaks.len().min(MAX_ROWS_PER_PATH).min(budget);
            budget -= take;
            let frames = frames
                .into_iter()
                .map(|name| {
                    *index.entry(name).or_insert_with_key(|name| {
                        names.push(name.clone());
                        u32::try_from(names.len() - 1).unwrap_or(u32::MAX)
                    })
                })
                .collect();
            PathData {
                count: leaks.len(),
                rows: leaks
                    .iter()
                    .take(take)
                    .map(|l| (l.pid, l.fd, l.kind, l.target.as_str(), l.age_ms))
                    .collect(),
                frames,
            }
        })
        .collect();
    Ok(Some(Flame {
        svg: for_html(&svg),
        data: FlameData { names, paths },
    }))
}

/// Removes the first `open ... close` span from `s` (both included).
fn cut(s: &mut String, open: &str, close: &str) -> bool {
    let Some(start) = s.find(open) else {
        return false;
    };
    let Some(len) = s[start..].find(close) else {
        return false;
    };
    s.replace_range(start..start + len + close.len(), "");
    true
}

/// Inferno's SVG made fit to sit inside an HTML page. Text in it is
/// already XML-escaped by inferno, so a `<` only ever starts a tag.
fn for_html(svg: &str) -> String {
    let mut s = svg[svg.find("<svg").unwrap_or(0)..].to_owned();
    // `init` belongs to the script left out below.
    s = s.replacen(r#" onload="init(evt)""#, "", 1);
    while cut(&mut s, "<!--", "-->") {}
    // Its script would take the page's first <svg> for its own; its
    // style would restyle every SVG text in the page. page.css has a
    // scoped copy.
    cut(&mut s, "<script", "</script>");
    cut(&mut s, "<style", "</style>");
    name_frames(&s)
}

/// Gives each frame's `<g>` a class and its name, taken from its title
/// (`name (N descriptors, P%)`).
fn name_frames(svg: &str) -> String {
    const FRAME: &str = "<g><title>";
    let mut out = String::with_capacity(svg.len() + svg.len() / 8);
    let mut rest = svg;
    while let Some(at) = rest.find(FRAME) {
        out.push_str(&rest[..at]);
        let title = &rest[at + FRAME.len()..];
        let text = &title[..title.find("</title>").unwrap_or(0)];
        let name = text.rfind(" (").map_or(text, |i| &text[..i]);
        out.push_str(r#"<g class="frame" data-name=""#);
        out.push_str(&name.replace('"', "&quot;"));
        out.push_str(r#""><title>"#);
        rest = title;
    }
    out.push_str(rest);
    out
}
