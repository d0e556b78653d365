//! HTML renderer: the report as one self-contained page, for a browser
//! opened from disk. Timelines of open descriptors per process are drawn
//! with `plotters`, the leaks' flame graph with `inferno`; the rest is
//! plain HTML tables.
//!
//! Guarantees: no network request of any kind (no external script, style,
//! font or image; a Content-Security-Policy says so to the browser too);
//! every string from the trace is HTML-escaped, and the JSON embedded for
//! the page's script cannot close its `<script>`; what is embedded is
//! bounded (timeline points are downsampled by the caller, descriptor rows
//! are capped), so a trace of a million events stays a few megabytes.
//!
//! What the page exposes (for tests and scripts reading the rendered DOM):
//! `.peak[data-pid]` holds "peak N", computed by the page from the embedded
//! points; each flame-graph frame is a `g.frame[data-name]` inside
//! `#flame`; errors the page's scripts raised are collected in
//! `<html data-errors>`; `<body data-ready="1">` once its script finished.

mod chart;
mod flame;
#[cfg(test)]
mod sample;
mod sections;

use std::io::{self, Write};

use serde::Serialize;

use super::{
    Report,
    text::{self, Style},
    timeline::{MarkKind, ProcessTimeline, Timeline},
};

/// Installed before anything else: collects errors into `data-errors`.
const ERRORS_JS: &str = include_str!("html/errors.js");
const PAGE_JS: &str = include_str!("html/page.js");
const PAGE_CSS: &str = include_str!("html/page.css");
/// Marks listed under a timeline (all are drawn).
const MAX_MARKS_LISTED: usize = 20;

/// Escapes `s` for HTML text and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `value` as JSON that can sit inside `<script>`: `<`, `>` and `&` only
/// occur inside JSON strings, where their `\u` escapes mean the same.
fn script_json(value: &impl Serialize) -> io::Result<String> {
    let json = serde_json::to_string(value).map_err(io::Error::other)?;
    Ok(json
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029"))
}

/// What the page's script reads.
#[derive(Serialize)]
struct PageData<'a> {
    timelines: Vec<TimelineData<'a>>,
    /// Leak paths in the flame graph's layout order; null without leaks.
    flame: Option<flame::FlameData<'a>>,
    /// Process names by pid: `[pid, comm]`.
    procs: Vec<(u32, &'a str)>,
}

/// One timeline's points, column by column.
#[derive(Serialize)]
struct TimelineData<'a> {
    pid: u32,
    stacks: Vec<&'a str>,
    t: Vec<f64>,
    open: Vec<usize>,
    by_stack: Vec<&'a [usize]>,
    marks: Vec<MarkData<'a>>,
}

#[derive(Serialize)]
struct MarkData<'a> {
    t: f64,
    kind: MarkKind,
    label: &'a str,
}

impl<'a> TimelineData<'a> {
    fn of(p: &'a ProcessTimeline) -> Self {
        // Microseconds are plenty, and keep the numbers short.
        let t = |ms: f64| (ms * 1000.0).round() / 1000.0;
        Self {
            pid: p.pid,
            stacks: p.stacks.iter().map(|s| s.label.as_str()).collect(),
            t: p.points.iter().map(|pt| t(pt.t_ms)).collect(),
            open: p.points.iter().map(|pt| pt.open).collect(),
            by_stack: p.points.iter().map(|pt| pt.by_stack.as_slice()).collect(),
            marks: p
                .marks
                .iter()
                .map(|m| MarkData {
                    t: t(m.t_ms),
                    kind: m.kind,
                    label: &m.label,
                })
                .collect(),
        }
    }
}

/// Renders `report` and `timeline` as one HTML page.
pub fn render(report: &Report, timeline: &Timeline, out: &mut impl Write) -> io::Result<()> {
    let flame = flame::build(report)?;
    let mut body = String::new();
    summary(report, &mut body)?;
    timelines(timeline, &mut body)?;
    flame_section(report, flame.as_ref(), &mut body);
    sections::leak_groups(report, &mut body);
    sections::exec_leaks(report, &mut body);
    sections::emfile(report, &mut body);
    sections::misuse(report, &mut body);
    sections::notes(report, &mut body);
    sections::processes(report, &mut body);
    let data = PageData {
        timelines: timeline.processes.iter().map(TimelineData::of).collect(),
        flame: flame.map(|f| f.data),
        procs: report
            .processes
            .iter()
            .map(|p| (p.pid, p.comm.as_str()))
            .collect(),
    };
    let title = match report.command.as_slice() {
        [] => "fdtrace report".to_owned(),
        command => format!("fdtrace: {}", command.join(" ")),
    };
    write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; \
         script-src 'unsafe-inline'; style-src 'unsafe-inline'\">\
         <script>{ERRORS_JS}</script>\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>{PAGE_CSS}</style></head>\n<body>",
        esc(&title)
    )?;
    out.write_all(body.as_bytes())?;
    write!(
        out,
        "\n<script type=\"application/json\" id=\"fdtrace-data\">{}</script>\n\
         <script>{PAGE_JS}</script></body></html>\n",
        script_json(&data)?
    )
}

/// The text report's opening lines, and a warning when events were lost.
fn summary(report: &Report, out: &mut String) -> io::Result<()> {
    let mut text = Vec::new();
    text::render(report, Style { color: false }, &mut text)?;
    let text = String::from_utf8_lossy(&text);
    let head = text.split("\n\n").next().unwrap_or("").trim_end();
    out.push_str("<header><h1>fdtrace report</h1>");
    if report.dropped_events > 0 {
        out.push_str(&format!(
            "<p class=\"alert\" id=\"dropped\"><strong>{} events were dropped: this report \
             is incomplete.</strong> Some descriptors may have been closed (or opened) \
             without fdtrace seeing it.</p>",
            report.dropped_events
        ));
    }
    out.push_str(&format!(
        "<pre class=\"summary\" id=\"summary\">{}</pre>",
        esc(head)
    ));
    out.push_str(
        "<nav><a href=\"#timeline\">Timeline</a> <a href=\"#flamegraph\">Flame graph</a> \
         <a href=\"#leak-groups\">Leaks by stack</a>",
    );
    for (id, name, shown) in [
        ("exec-leaks", "Exec leaks", !report.exec_leaks.is_empty()),
        ("emfile", "EMFILE", !report.emfile.is_empty()),
        ("misuse", "Misuse", !report.fd_misuse.is_empty()),
        ("processes", "Processes", !report.processes.is_empty()),
    ] {
        if shown {
            out.push_str(&format!(" <a href=\"#{id}\">{name}</a>"));
        }
    }
    out.push_str("</nav></header>");
    Ok(())
}

fn css_rgb((r, g, b): (u8, u8, u8)) -> String {
    format!("rgb({r},{g},{b})")
}

fn swatch(color: (u8, u8, u8), class: &str) -> String {
    format!(
        "<span class=\"swatch {class}\" style=\"background:{}\"></span>",
        css_rgb(color)
    )
}

/// One chart per process, with its legend and marks.
fn timelines(timeline: &Timeline, out: &mut String) -> io::Result<()> {
    out.push_str(r#"<section id="timeline"><h2>Open descriptors over time</h2>"#);
    if timeline.processes.is_empty() {
        out.push_str("<p>No timeline: no process was traced.</p>");
    }
    for p in &timeline.processes {
        let c = chart::draw(p, timeline.duration_ms)?;
        let limit = match p.soft_limit {
            Some(l) if c.limit_drawn => format!(" · soft limit {l}"),
            Some(l) => format!(" · soft limit {l} (far above, not drawn)"),
            None => String::new(),
        };
        out.push_str(&format!(
            "<div class=\"timeline\" data-pid=\"{pid}\"><h3>{} \
             <span class=\"peak\" data-pid=\"{pid}\"></span>{}</h3>\
             <div class=\"chart\" data-px0=\"{}\" data-px1=\"{}\" data-py0=\"{}\" \
             data-py1=\"{}\" data-t0=\"{}\" data-t1=\"{}\" data-width=\"{}\" \
             data-height=\"{}\">{}<div class=\"cursor\" hidden></div>\
             <div class=\"tip\" hidden></div></div><ul class=\"legend\">",
            esc(&format!("{}[{}]", p.comm, p.pid)),
            esc(&limit),
            c.px0,
            c.px1,
            c.py0,
            c.py1,
            c.t0,
            c.t1,
            c.width,
            c.height,
            c.svg,
            pid = p.pid,
        ));
        for (i, s) in p.stacks.iter().enumerate() {
            let color = chart::STACK_COLORS[i % chart::STACK_COLORS.len()];
            out.push_str(&format!("<li>{}{}</li>", swatch(color, ""), esc(&s.label)));
        }
        out.push_str(&format!(
            "<li>{}other (open before tracing, smaller stacks)</li>\
             <li><span class=\"line total\"></span>total open</li>",
            swatch(chart::OTHER_COLOR, "")
        ));
        if c.limit_drawn {
            out.push_str("<li><span class=\"line limit\"></span>soft limit</li>");
        }
        if p.marks.iter().any(|m| m.kind == MarkKind::Emfile) {
            out.push_str("<li><span class=\"line emfile\"></span>EMFILE failure</li>");
        }
        if p.marks.iter().any(|m| m.kind == MarkKind::Exec) {
            out.push_str("<li><span class=\"line exec\"></span>exec</li>");
        }
        out.push_str("</ul>");
        if !p.marks.is_empty() {
            out.push_str("<ul class=\"marks\">");
            for m in p.marks.iter().take(MAX_MARKS_LISTED) {
                out.push_str(&format!(
                    "<li class=\"{}\">{:.1} ms: {}</li>",
                    match m.kind {
                        MarkKind::Emfile => "emfile",
                        MarkKind::Exec => "exec",
                    },
                    m.t_ms,
                    esc(&m.label)
                ));
            }
            if p.marks.len() > MAX_MARKS_LISTED {
                out.push_str(&format!(
                    "<li>… and {} more</li>",
                    p.marks.len() - MAX_MARKS_LISTED
                ));
            }
            out.push_str("</ul>");
        }
        out.push_str("</div>");
    }
    if timeline.more_processes > 0 {
        out.push_str(&format!(
            "<p class=\"more\" id=\"more-processes\">{} more {} not drawn (only the \
             highest peaks are).</p>",
            timeline.more_processes,
            text::plural(timeline.more_processes, "process", "processes")
        ));
    }
    out.push_str("</section>");
    Ok(())
}

/// The flame graph of leaks, or "No leaks".
fn flame_section(report: &Report, flame: Option<&flame::Flame<'_>>, out: &mut String) {
    out.push_str(r#"<section id="flamegraph"><h2>Leaked descriptors by opening stack</h2>"#);
    match flame {
        None => out.push_str(r#"<p class="no-leaks">No leaks</p>"#),
        Some(f) => {
            out.push_str(&format!(
                "<p class=\"hint\">{} leaked {}, root at the top. Click a frame to list \
                 the descriptors opened through it.</p><div id=\"flame\">{}</div>\
                 <div id=\"flame-details\"></div>",
                report.leaks.len(),
                text::plural(report.leaks.len(), "descriptor", "descriptors"),
                f.svg
            ));
        }
    }
    out.push_str("</section>");
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::report::{
        EmfileEntry, ExecLeakEntry, FrameEntry, Group, HolderEntry, LeakEntry,
        misuse::MisuseEntry,
        tests::sample_report,
        timeline::{Mark, TimelinePoint, TimelineStack},
    };

    const HOSTILE: &str = "</script><img src=x onerror=alert(1)>";

    fn page(report: &Report, timeline: &Timeline) -> String {
        let mut out = Vec::new();
        render(report, timeline, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    /// pid 7's descriptors rising to `peak` and back, with one stack.
    fn timeline(peak: usize) -> Timeline {
        let points = (0..=2 * peak)
            .map(|i| {
                let open = if i <= peak { i } else { 2 * peak - i };
                TimelinePoint {
                    t_ms: f64::from(u32::try_from(i).unwrap()) * 1.5,
                    open: open + 3,
                    by_stack: vec![open],
                }
            })
            .collect();
        Timeline {
            duration_ms: 100.0,
            processes: vec![ProcessTimeline {
                pid: 7,
                comm: "app".into(),
                soft_limit: Some(64),
                peak: peak + 3,
                peak_ms: 15.0,
                stacks: vec![TimelineStack {
                    stack_id: Some(1),
                    label: format!("leak_it (leak.c:12) {HOSTILE}"),
                }],
                points,
                marks: vec![Mark {
                    t_ms: 20.0,
                    kind: MarkKind::Emfile,
                    label: format!("openat failed with EMFILE {HOSTILE}"),
                    emfile: Some(0),
                }],
            }],
            more_processes: 2,
        }
    }

    /// The embedded JSON the page's script reads.
    fn data(html: &str) -> Value {
        let start = html.find(r#"id="fdtrace-data">"#).unwrap() + r#"id="fdtrace-data">"#.len();
        let len = html[start..].find("</script>").unwrap();
        serde_json::from_str(&html[start..start + len]).unwrap()
    }

    /// The frame names of the `i`th path in the embedded flame data.
    fn path_names(d: &Value, i: usize) -> Vec<String> {
        let names = d["flame"]["names"].as_array().unwrap();
        d["flame"]["paths"][i]["frames"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                let n = usize::try_from(n.as_u64().unwrap()).unwrap();
                names[n].as_str().unwrap().to_owned()
            })
            .collect()
    }

    #[test]
    fn makes_no_network_references() {
        let html = page(&sample_report(), &timeline(10));
        let mut rest = html.as_str();
        while let Some(i) = rest.find("http") {
            let before = &rest[..i];
            let is_namespace = before.ends_with("xmlns=\"") || {
                let attr = &before[before.rfind(' ').unwrap_or(0)..];
                attr.starts_with(" xmlns:") && attr.ends_with('"')
            };
            let tail = &rest[i..];
            assert!(
                is_namespace || !(tail.starts_with("http://") || tail.starts_with("https://")),
                "external reference: {}",
                &tail[..tail.len().min(80)]
            );
            rest = &rest[i + 4..];
        }
        for tag in ["<link", "<img", "<iframe", "<object", "<embed", "@import"] {
            assert!(!html.contains(tag), "{tag} in page");
        }
        // Only references to the page's own fragments (an SVG gradient).
        assert!(
            html.match_indices("url(")
                .all(|(i, _)| html[i..].starts_with("url(#"))
        );
    }

    #[test]
    fn escapes_what_the_traced_program_controls() {
        let mut r = sample_report();
        r.leaks[0].target = HOSTILE.into();
        r.groups[0].stack[1].function = Some(format!("leak_it{HOSTILE}\"'&"));
        r.processes[0].comm = HOSTILE.into();
        r.notes.push(HOSTILE.into());
        r.exec_leaks.push(ExecLeakEntry {
            pid: 7,
            fd: 3,
            kind: "file",
            target: HOSTILE.into(),
            exec: HOSTILE.into(),
            opened_by: "openat",
            stack_id: Some(1),
        });
        let html = page(&r, &timeline(5));
        assert!(!html.contains("<img"), "unescaped tag in page");
        assert!(html.contains("&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;"));
        // Only the page's own three scripts open and close.
        assert_eq!(html.matches("<script").count(), 3);
        assert_eq!(html.matches("</script>").count(), 3);
        // The embedded data keeps the string intact for the script.
        let d = data(&html);
        assert_eq!(d["flame"]["paths"][0]["rows"][0][3], HOSTILE);
        assert_eq!(d["procs"][0][1], HOSTILE);
    }

    #[test]
    fn every_leaking_function_is_a_flame_graph_frame() {
        let html = page(&sample_report(), &timeline(3));
        for name in ["main", "leak_it", "open64", "all"] {
            assert!(
                html.contains(&format!(r#"<g class="frame" data-name="{name}">"#)),
                "no frame {name}"
            );
        }
        // Inferno's own script, prolog and comments are gone.
        for gone in [
            "<?xml",
            "<!DOCTYPE svg",
            "<!--",
            "init(evt)",
            "text/ecmascript",
        ] {
            assert!(!html.contains(gone), "{gone} in page");
        }
        let d = data(&html);
        assert_eq!(path_names(&d, 0), ["main", "leak_it", "open64"]);
        assert_eq!(d["flame"]["paths"][0]["count"], 2);
        assert_eq!(
            d["flame"]["paths"][0]["rows"][1],
            serde_json::json!([7, 4, "file", "/tmp/b.log", 3])
        );
    }

    #[test]
    fn paths_are_embedded_in_inferno_layout_order() {
        let mut r = sample_report();
        let frame = |name: &str| FrameEntry {
            address: "0x10".into(),
            function: Some(name.into()),
            file: None,
            line: None,
            module: Some("/bin/app".into()),
            inlined: false,
            lang: "native",
        };
        // Names that would break inferno's format as they are.
        r.groups.push(Group {
            stack_id: 2,
            count: 1,
            truncated: false,
            stack: vec![frame("f<[u8; 8]> 12"), frame("main")],
        });
        r.leaks[1].stack_id = Some(2);
        r.leaks.push(LeakEntry {
            stack_id: None,
            ..r.leaks[0].clone()
        });
        let html = page(&r, &Timeline::default());
        let d = data(&html);
        let firsts: Vec<String> = (0..3)
            .map(|i| path_names(&d, i).last().unwrap().clone())
            .collect();
        assert_eq!(firsts, ["[unknown stack]", "f<[u8: 8]>\u{a0}12", "open64"]);
        assert!(html.contains(r#"data-name="f&lt;[u8: 8]&gt;"#));
        assert!(html.contains(r#"data-name="[unknown stack]""#));
    }

    #[test]
    fn timeline_data_has_the_peak() {
        let tl = timeline(10);
        let html = page(&sample_report(), &tl);
        let d = data(&html);
        let open = d["timelines"][0]["open"].as_array().unwrap();
        let peak = open.iter().map(|v| v.as_u64().unwrap()).max().unwrap();
        assert_eq!(peak, 13);
        assert_eq!(usize::try_from(peak).unwrap(), tl.processes[0].peak);
        assert!(html.contains(r#"<span class="peak" data-pid="7">"#));
        assert!(html.contains("2 more processes not drawn"));
        // The chart is there, drawn by plotters.
        assert!(html.contains(r#"<div class="chart" data-px0="#));
        assert!(html.matches("<svg").count() >= 2);
    }

    #[test]
    fn draws_timelines_with_no_point_one_point_and_no_limit() {
        let mut tl = timeline(1);
        tl.processes[0].points.truncate(1);
        let mut empty = tl.processes[0].clone();
        empty.pid = 8;
        empty.points.clear();
        empty.marks.clear();
        empty.soft_limit = None;
        tl.processes.push(empty);
        tl.duration_ms = 0.0;
        let html = page(&sample_report(), &tl);
        assert_eq!(html.matches(r#"<div class="chart""#).count(), 2);
        assert_eq!(data(&html)["timelines"][1]["open"], serde_json::json!([]));
    }

    #[test]
    fn without_leaks_says_so_and_lists_the_other_findings() {
        let mut r = sample_report();
        r.leaks.clear();
        r.dropped_events = 5;
        r.incomplete = true;
        r.emfile.push(EmfileEntry {
            pid: 7,
            tid: 8,
            syscall: "openat",
            errno: 24,
            error: "EMFILE",
            argument: Some("/etc/passwd".into()),
            open_fds: 1024,
            rlimit: Some([1024, 4096]),
            stack_id: Some(1),
            holders: vec![HolderEntry {
                count: 1000,
                stack_id: Some(1),
                oldest_age_ms: 250,
            }],
            preexisting: vec![],
            stopped: false,
        });
        r.fd_misuse.push(MisuseEntry {
            kind: "double-close",
            pid: 7,
            tid: 7,
            fd: 3,
            syscall: "close",
            errno: 9,
            count: 2,
            stack_id: Some(1),
            closed_stack_id: None,
            closed_tid: Some(7),
            closed_ms_before: Some(4),
        });
        let html = page(&r, &timeline(2));
        assert!(html.contains(r#"<p class="no-leaks">No leaks</p>"#));
        assert!(!html.contains(r#"id="flame""#));
        assert!(html.contains(r#"id="dropped""#) && html.contains("5 events were dropped"));
        assert!(html.contains("EMFILE: openat(&quot;/etc/passwd&quot;) failed in app[7] thread 8"));
        assert!(html.contains(
            "<code>open64</code> <span class=\"loc\">/usr/src/glibc/io/open64.c:41</span>"
        ));
        assert!(html.contains("<td class=\"num\">1000</td><td><code>leak_it (leak.c:12)</code></td><td class=\"num\">250</td>"));
        assert!(html.contains("double close: close(3) failed with EBADF (2 times) in app [7]"));
        assert!(html.contains("fdtrace: ./app exited with status 0\nNo leaked descriptors"));
    }

    #[test]
    fn hostile_names_in_a_full_page_stay_text() {
        let (mut report, timeline) = sample::page();
        report.leaks[0].target = HOSTILE.into();
        report.notes.push(HOSTILE.into());
        let html = page(&report, &timeline);
        assert!(!html.contains("<img src=x"), "{html}");
        assert!(html.contains("&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;"));
    }

    #[test]
    fn a_huge_trace_gives_a_page_of_at_most_5_mb() {
        let (report, timeline) = sample::huge();
        let html = page(&report, &timeline);
        assert!(html.len() <= 5_000_000, "{} bytes", html.len());
        let d = data(&html);
        let rows: usize = d["flame"]["paths"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["rows"].as_array().unwrap().len())
            .sum();
        assert!(rows <= 10_000, "{rows} rows embedded");
    }
}
