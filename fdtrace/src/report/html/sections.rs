//! HTML report, the plain parts: tables and lists for leak groups, exec
//! leaks, EMFILE failures, misuse, notes and processes. Every string from
//! the trace goes through [`esc`]; every list is bounded.

use std::fmt::Write as _;

use super::{esc, flame::interpreter_frame};
use crate::report::{
    FrameEntry, Group, Report, live, misuse,
    text::{plural, process_name, what},
    user_frame,
};

/// Rows in one table (the rest is counted: "and N more").
pub const MAX_ROWS: usize = 2000;
/// Frames listed per stack.
const MAX_FRAMES: usize = 40;
/// EMFILE failures and misuse groups shown with their stacks.
const MAX_DETAILED: usize = 100;

/// `function file:line` of one frame, escaped.
fn frame_html(f: &FrameEntry) -> String {
    let function = match (&f.function, f.inlined) {
        (Some(name), true) => format!("{} (inlined)", esc(name)),
        (Some(name), false) => esc(name),
        (None, _) => {
            let module = f
                .module
                .as_deref()
                .map_or("?", |m| m.rsplit('/').next().unwrap_or(m));
            format!("{}+{}", esc(module), esc(&f.address))
        }
    };
    let location = match (&f.file, f.line) {
        (Some(file), Some(line)) => format!("{}:{line}", esc(file)),
        (Some(file), None) => esc(file),
        (None, _) => f.module.as_deref().map(esc).unwrap_or_default(),
    };
    let lang = if f.lang == "python" { " py" } else { "" };
    format!(
        r#"<li class="frame{lang}"><code>{function}</code> <span class="loc">{location}</span></li>"#
    )
}

/// A stack as an ordered list, innermost frame first (as in the text
/// report).
pub fn stack_html(group: Option<&Group>) -> String {
    let Some(g) = group.filter(|g| !g.stack.is_empty()) else {
        return r#"<p class="nostack">(no stack captured)</p>"#.to_owned();
    };
    let python = g.stack.iter().any(|f| f.lang == "python");
    let shown: Vec<&FrameEntry> = g
        .stack
        .iter()
        .filter(|f| !python || !interpreter_frame(f))
        .collect();
    let mut s = String::from(r#"<ol class="stack" start="0">"#);
    for f in shown.iter().take(MAX_FRAMES) {
        s.push_str(&frame_html(f));
    }
    s.push_str("</ol>");
    if shown.len() > MAX_FRAMES {
        let _ = write!(
            s,
            "<p class=\"more\">… {} more frames</p>",
            shown.len() - MAX_FRAMES
        );
    }
    let hidden = g.stack.len() - shown.len();
    if hidden > 0 {
        let _ = write!(
            s,
            "<p class=\"more\">({hidden} native frame{} of the Python interpreter not shown)</p>",
            plural(hidden, "", "s")
        );
    }
    if g.truncated {
        s.push_str(r#"<p class="more">(stack truncated)</p>"#);
    }
    s
}

/// A stack's one-line label: its innermost user frame, `function
/// (file:line)`.
pub fn stack_label(report: &Report, stack_id: Option<u32>) -> String {
    let Some(g) = stack_id.and_then(|id| report.group(id)) else {
        return "(no stack captured)".to_owned();
    };
    let Some(f) = user_frame(&g.stack).or_else(|| g.stack.iter().find(|f| f.function.is_some()))
    else {
        return g
            .stack
            .first()
            .map_or_else(|| "(empty stack)".to_owned(), |f| f.address.clone());
    };
    let function = f.function.as_deref().unwrap_or("?");
    match (&f.file, f.line) {
        (Some(file), Some(line)) => {
            format!(
                "{function} ({}:{line})",
                file.rsplit('/').next().unwrap_or(file)
            )
        }
        _ => function.to_owned(),
    }
}

fn more(out: &mut String, total: usize, shown: usize) {
    if total > shown {
        let _ = write!(out, "<p class=\"more\">… and {} more</p>", total - shown);
    }
}

/// Leaks by opening stack: count, kinds, blamed frame, processes.
pub fn leak_groups(report: &Report, out: &mut String) {
    let groups = crate::report::by_stack(&report.leaks, |l| l.stack_id);
    out.push_str(r#"<section id="leak-groups"><h2>Leaks by stack</h2>"#);
    if groups.is_empty() {
        out.push_str(r#"<p class="no-leaks">No leaks</p></section>"#);
        return;
    }
    out.push_str(
        "<table><thead><tr><th>count</th><th>what</th><th>opened in</th>\
         <th>processes</th></tr></thead><tbody>",
    );
    for (id, leaks) in groups.iter().take(MAX_ROWS) {
        let mut pids: Vec<u32> = leaks.iter().map(|l| l.pid).collect();
        pids.dedup();
        let names: Vec<String> = pids
            .iter()
            .take(5)
            .map(|&p| process_name(report, p))
            .collect();
        let _ = write!(
            out,
            "<tr><td class=\"num\">{}</td><td>{}</td><td><code>{}</code></td><td>{}{}</td></tr>",
            leaks.len(),
            esc(&what(leaks.iter().map(|l| l.kind))),
            esc(&stack_label(report, *id)),
            esc(&names.join(", ")),
            if pids.len() > 5 { ", …" } else { "" }
        );
    }
    out.push_str("</tbody></table>");
    more(out, groups.len(), MAX_ROWS);
    out.push_str("</section>");
}

/// Descriptors that crossed exec without CLOEXEC.
pub fn exec_leaks(report: &Report, out: &mut String) {
    if report.exec_leaks.is_empty() {
        return;
    }
    out.push_str(
        "<section id=\"exec-leaks\"><h2>Descriptors that crossed exec without CLOEXEC</h2>\
         <table><thead><tr><th>process</th><th>fd</th><th>kind</th><th>target</th>\
         <th>into</th><th>opened by</th><th>opened in</th></tr></thead><tbody>",
    );
    for e in report.exec_leaks.iter().take(MAX_ROWS) {
        let _ = write!(
            out,
            "<tr><td>{}</td><td class=\"num\">{}</td><td>{}</td><td class=\"target\">{}</td>\
             <td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            esc(&process_name(report, e.pid)),
            e.fd,
            esc(e.kind),
            esc(&e.target),
            esc(&e.exec),
            esc(e.opened_by),
            esc(&stack_label(report, e.stack_id)),
        );
    }
    out.push_str("</tbody></table>");
    more(out, report.exec_leaks.len(), MAX_ROWS);
    out.push_str("</section>");
}

/// EMFILE/ENFILE failures: the failing call and stack, and who held the
/// table.
pub fn emfile(report: &Report, out: &mut String) {
    if report.emfile.is_empty() {
        return;
    }
    out.push_str(r#"<section id="emfile"><h2>Too many open files</h2>"#);
    for (i, e) in report.emfile.iter().enumerate().take(MAX_DETAILED) {
        let head = live::emfile_headline(report, e);
        let limits = live::emfile_limits(e);
        let _ = write!(
            out,
            "<div class=\"emfile\" id=\"emfile-{i}\"><h3>{}</h3><p>{} descriptors open; {}</p>",
            esc(&head),
            e.open_fds,
            esc(&limits)
        );
        if e.stopped {
            let _ = write!(
                out,
                "<p class=\"alert\">Left stopped here (--on-emfile stop): resume with \
                 <code>kill -CONT {}</code></p>",
                e.pid
            );
        }
        out.push_str(&stack_html(e.stack_id.and_then(|id| report.group(id))));
        if !e.holders.is_empty() {
            out.push_str(
                "<h4>Held by</h4><table><thead><tr><th>count</th><th>opened in</th>\
                 <th>oldest (ms)</th></tr></thead><tbody>",
            );
            for h in e.holders.iter().take(MAX_ROWS) {
                let _ = write!(
                    out,
                    "<tr><td class=\"num\">{}</td><td><code>{}</code></td>\
                     <td class=\"num\">{}</td></tr>",
                    h.count,
                    esc(&stack_label(report, h.stack_id)),
                    h.oldest_age_ms
                );
            }
            out.push_str("</tbody></table>");
            more(out, e.holders.len(), MAX_ROWS);
        }
        if !e.preexisting.is_empty() {
            let kinds: Vec<String> = e
                .preexisting
                .iter()
                .map(|k| format!("{} {}", k.count, k.kind))
                .collect();
            let _ = write!(
                out,
                "<p>Open since before tracing: {}</p>",
                esc(&kinds.join(", "))
            );
        }
        out.push_str("</div>");
    }
    more(out, report.emfile.len(), MAX_DETAILED);
    out.push_str("</section>");
}

/// Double closes, uses after close, invalid descriptors.
pub fn misuse(report: &Report, out: &mut String) {
    if report.fd_misuse.is_empty() && report.misuse_withheld == 0 {
        return;
    }
    out.push_str(r#"<section id="misuse"><h2>Misused descriptors</h2>"#);
    for m in report.fd_misuse.iter().take(MAX_DETAILED) {
        let _ = write!(
            out,
            "<div class=\"misuse\"><h3>{}</h3>",
            esc(&misuse::headline(report, m))
        );
        out.push_str(&stack_html(m.stack_id.and_then(|id| report.group(id))));
        if m.kind != "invalid-fd" {
            let when = m
                .closed_ms_before
                .map(|ms| format!(", {ms} ms before"))
                .unwrap_or_default();
            let _ = write!(out, "<h4>Closed before{when}, at</h4>");
            out.push_str(&stack_html(
                m.closed_stack_id.and_then(|id| report.group(id)),
            ));
        }
        out.push_str("</div>");
    }
    more(out, report.fd_misuse.len(), MAX_DETAILED);
    if report.misuse_withheld > 0 {
        let _ = write!(
            out,
            "<p>{} more not reported: an event was lost before them.</p>",
            report.misuse_withheld
        );
    }
    out.push_str("</section>");
}

/// What the reader should know about how complete the report is.
pub fn notes(report: &Report, out: &mut String) {
    let mut items: Vec<String> = report.notes.iter().map(|n| esc(n)).collect();
    if !report.unknown_leaks.is_empty() {
        items.push(format!(
            "{} descriptors were not seen closed but were opened before an event was \
             dropped (their close may be the lost event): not counted as leaks.",
            report.unknown_leaks.len()
        ));
    }
    if !report.gc_closed.is_empty() {
        items.push(format!(
            "{} descriptors were closed only by Python's garbage collector.",
            report.gc_closed.len()
        ));
    }
    if report.skipped_stacks > 0 {
        items.push(format!(
            "{} creations were recorded without a stack (the ring buffer was filling up).",
            report.skipped_stacks
        ));
    }
    if report.suppressed > 0 {
        items.push(format!(
            "{} leaks were taken out by suppression rules.",
            report.suppressed
        ));
    }
    if items.is_empty() {
        return;
    }
    out.push_str(r#"<section id="notes"><h2>Notes</h2><ul>"#);
    for item in items {
        let _ = write!(out, "<li>{item}</li>");
    }
    out.push_str("</ul></section>");
}

/// Every traced process: peak against its soft limit, exit status,
/// command line.
pub fn processes(report: &Report, out: &mut String) {
    if report.processes.is_empty() {
        return;
    }
    out.push_str(
        "<section id=\"processes\"><h2>Processes</h2><table><thead><tr><th>process</th>\
         <th>peak</th><th>soft limit</th><th>exit</th><th>command line</th></tr></thead><tbody>",
    );
    for p in report.processes.iter().take(MAX_ROWS) {
        let soft = p
            .rlimit
            .map_or_else(|| "?".to_owned(), |[soft, _]| live::limit(soft));
        let exit = p.exit_status.map(|s| s.to_string()).unwrap_or_default();
        let _ = write!(
            out,
            "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{soft}</td>\
             <td class=\"num\">{exit}</td><td class=\"target\">{}</td></tr>",
            esc(&format!("{}[{}]", p.comm, p.pid)),
            p.peak_fds,
            esc(&report.command_line(p.pid)),
        );
    }
    out.push_str("</tbody></table>");
    more(out, report.processes.len(), MAX_ROWS);
    out.push_str("</section>");
}
