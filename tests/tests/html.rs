//! The HTML report in a real browser: the headless-Chromium harness must
//! see the errors a page raises (and none on a clean page; no BPF needed),
//! then fdtrace's pages are rendered and what they show is checked against
//! the JSON report of the same trace. Screenshots stay in
//! `target/html-screenshots/` for a person to look at.

use std::{fs, process::Command};

use fdtrace_tests::{
    bpf_or_skip, browser, c_fixture, fdtrace, fixture_source, python, scratch_dir, workspace,
};
use serde_json::Value;

/// Collects errors the way the report's page does, into `data-errors`.
const CAPTURE: &str = r#"<script>
(function () {
  var root = document.documentElement;
  function note(m) {
    var prev = root.getAttribute("data-errors");
    root.setAttribute("data-errors", (prev ? prev + "\n" : "") + m);
  }
  window.onerror = function (m) { note("error: " + m); };
  var original = console.error;
  console.error = function () {
    note("console.error: " + Array.prototype.join.call(arguments, " "));
    return original.apply(console, arguments);
  };
})();
</script>"#;

fn page(name: &str, body: &str) -> browser::Rendered {
    let dir = scratch_dir(name);
    let html = dir.join("page.html");
    fs::write(
        &html,
        format!("<!DOCTYPE html><html><head><meta charset=\"utf-8\">{CAPTURE}</head><body>{body}</body></html>"),
    )
    .unwrap();
    browser::render(&html, &dir.join("page.png"))
}

#[test]
fn a_console_error_and_an_uncaught_exception_are_caught() {
    let r = page(
        "browser-errors",
        r#"<p id="x">before</p><script>
            console.error("the <disk> is on fire");
            document.getElementById("x").textContent = "after";
            undefinedFunction();
        </script>"#,
    );
    let errors = r.console_errors.join("\n");
    // Chromium's log and the page's own capture both have it.
    assert!(
        r.console_errors
            .iter()
            .any(|e| e.contains("CONSOLE") && e.contains("the <disk> is on fire")),
        "{errors}"
    );
    assert!(
        r.console_errors
            .iter()
            .any(|e| e == "console.error: the <disk> is on fire"),
        "{errors}"
    );
    assert!(
        r.console_errors
            .iter()
            .any(|e| e.contains("undefinedFunction is not defined")),
        "{errors}"
    );
    // The DOM is the one the script left.
    assert!(r.dom.contains(r#"<p id="x">after</p>"#), "{}", r.dom);
    assert!(fs::metadata(&r.screenshot).unwrap().len() > 0);
}

#[test]
fn a_clean_page_has_no_errors() {
    let r = page(
        "browser-clean",
        r#"<h1>fine</h1><script>document.body.dataset.ready = "1";</script>"#,
    );
    assert_eq!(r.console_errors, Vec::<String>::new());
    assert!(r.dom.contains(r#"data-ready="1""#), "{}", r.dom);
    let png = fs::read(&r.screenshot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG"),
        "not a PNG: {}",
        r.screenshot.display()
    );
}

/// `span.peak[data-pid=PID]`'s text, as the page's script wrote it.
fn rendered_peak(dom: &str, pid: &str) -> Option<u64> {
    let at = dom.find(&format!("class=\"peak\" data-pid=\"{pid}\""))?;
    let text = &dom[at..];
    let text = &text[text.find('>')? + 1..];
    text[..text.find('<')?]
        .strip_prefix("peak ")?
        .trim()
        .parse()
        .ok()
}

/// Names of the flame graph's frames in the rendered page.
fn flame_frames(dom: &str) -> Vec<String> {
    dom.split("<g class=\"frame\" data-name=\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .map(|name| {
            name.replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&amp;", "&")
        })
        .collect()
}

/// Records `cmd`, renders `fdtrace report --format html` in Chromium and
/// checks what the page shows against the JSON report of the same trace.
fn check_page(name: &str, cmd: &[&str], leaking: &[&str]) -> String {
    let dir = scratch_dir(&format!("html-{name}"));
    let mut args = vec![
        "record", "-o", "t.fdt", "--format", "json", "--report", "t.json", "--",
    ];
    args.extend(cmd);
    let o = Command::new(fdtrace())
        .current_dir(&dir)
        .args(&args)
        .output()
        .unwrap();
    assert!(
        o.status.code().is_some(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let report: Value = serde_json::from_slice(&fs::read(dir.join("t.json")).unwrap()).unwrap();
    let o = Command::new(fdtrace())
        .current_dir(&dir)
        .args(["report", "t.fdt", "--format", "html", "-o", "t.html"])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let shots = workspace().join("target/html-screenshots");
    fs::create_dir_all(&shots).unwrap();
    let page = browser::render(&dir.join("t.html"), &shots.join(format!("{name}.png")));
    assert!(page.console_errors.is_empty(), "{:?}", page.console_errors);
    assert!(
        page.dom.contains("data-ready=\"1\""),
        "the page's script did not finish"
    );
    // The timeline's peak, as drawn, is the trace's peak.
    let root = &report["processes"][0];
    let pid = root["pid"].to_string();
    assert_eq!(
        rendered_peak(&page.dom, &pid),
        root["peak_fds"].as_u64(),
        "process {pid}"
    );
    let frames = flame_frames(&page.dom);
    for function in leaking {
        assert!(
            frames.iter().any(|f| f == function),
            "{function} not in {frames:?}"
        );
    }
    if name == "hoard" {
        // Clicking `hoard` lists its 60 descriptors; hovering the peak of
        // the timeline shows the 64 open then, 60 of them from hoard.
        let (details, tip) = interact(&dir, "hoard");
        assert!(details.contains("60 descriptors"), "{details}");
        for fd in [3, 62] {
            assert!(
                details.contains(&format!("{fd}file/etc/hostname")),
                "fd {fd}: {details}"
            );
        }
        assert!(details.contains(&format!("hoard-g[{pid}]")), "{details}");
        assert!(tip.contains("64 open"), "{tip}");
        assert!(tip.contains("60  hoard (hoard.c:14)"), "{tip}");
    }
    page.dom
}

#[test]
fn the_html_report_shows_each_fixture_in_a_real_browser() {
    if !bpf_or_skip() {
        return;
    }
    let hoard = c_fixture("hoard.c");
    check_page(
        "hoard",
        &[hoard.to_str().unwrap()],
        &["hoard", "fail_to_open"],
    );
    let leak = fixture_source("leak.py");
    check_page(
        "python",
        &[&python(), leak.to_str().unwrap()],
        &["hoard", "<module>"],
    );
    let misuse = c_fixture("misuse.c");
    let dom = check_page("misuse", &[misuse.to_str().unwrap(), "double"], &[]);
    // The double close with both stacks.
    for shown in [
        "double close: close(3) failed with EBADF",
        "second_close",
        "first_close",
    ] {
        assert!(dom.contains(shown), "{shown}: {dom}");
    }
}

#[test]
fn the_live_html_report_is_the_one_report_writes() {
    if !bpf_or_skip() {
        return;
    }
    let dir = scratch_dir("html-live");
    let hoard = c_fixture("hoard.c");
    let hoard = hoard.to_str().unwrap();
    let run = |args: &[&str]| {
        let o = Command::new(fdtrace())
            .current_dir(&dir)
            .args(args)
            .output()
            .unwrap();
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    run(&[
        "record",
        "-o",
        "t.fdt",
        "--format",
        "html",
        "--report",
        "live.html",
        "--",
        hoard,
    ]);
    run(&["report", "t.fdt", "--format", "html", "-o", "replayed.html"]);
    let live = fs::read(dir.join("live.html")).unwrap();
    assert!(live == fs::read(dir.join("replayed.html")).unwrap());
    // `run --format html` (recorded in memory) draws the same page too.
    run(&["run", "--format", "html", "-o", "run.html", "--", hoard]);
    let page = browser::render(&dir.join("run.html"), &dir.join("run.png"));
    assert!(page.console_errors.is_empty(), "{:?}", page.console_errors);
    assert_eq!(
        flame_frames(&page.dom)
            .iter()
            .filter(|f| *f == "hoard")
            .count(),
        1
    );
    // Without -o there is nowhere for a page to go.
    let o = Command::new(fdtrace())
        .args(["run", "--format", "html", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("-o FILE"));
}

/// Opens the report at `dir/t.html` in a frame of a page that, once it
/// loaded, clicks the flame graph's `frame` and moves the mouse over the
/// first timeline's peak, as a person would, and writes what the report
/// then showed into its own DOM.
fn interact(dir: &std::path::Path, frame: &str) -> (String, String) {
    let driver = dir.join("driver.html");
    fs::write(
        &driver,
        format!(
            r#"<!DOCTYPE html><html><body><pre id="out"></pre>
<iframe id="f" src="t.html" style="width:1400px;height:2000px"></iframe>
<script>
var f = document.getElementById("f");
f.onload = function () {{
  var out = document.getElementById("out");
  try {{
    var d = f.contentDocument;
    var g = d.querySelector('#flame g.frame[data-name="{frame}"]');
    g.dispatchEvent(new MouseEvent("click", {{bubbles: true}}));
    out.setAttribute("data-details", d.getElementById("flame-details").textContent);
    // Over the first point where the first timeline peaks.
    var tl = JSON.parse(d.getElementById("fdtrace-data").textContent).timelines[0];
    var i = tl.open.indexOf(Math.max.apply(null, tl.open));
    var chart = d.querySelector(".timeline .chart");
    var ds = chart.dataset;
    var r = chart.querySelector("svg").getBoundingClientRect();
    var px = +ds.px0 + (tl.t[i] - +ds.t0) / (+ds.t1 - +ds.t0) * (+ds.px1 - +ds.px0);
    chart.dispatchEvent(new MouseEvent("mousemove", {{
      bubbles: true, clientX: r.left + px * r.width / +ds.width, clientY: r.top + r.height / 2}}));
    out.setAttribute("data-tip", chart.querySelector(".tip").textContent);
  }} catch (e) {{
    out.setAttribute("data-failed", String(e));
  }}
}};
</script></body></html>"#
        ),
    )
    .unwrap();
    let page = browser::render(&driver, &dir.join("driver.png"));
    assert!(page.console_errors.is_empty(), "{:?}", page.console_errors);
    assert!(!page.dom.contains("data-failed=\""), "{}", page.dom);
    let attribute = |name: &str| {
        let at = page
            .dom
            .find(&format!("{name}=\""))
            .unwrap_or_else(|| panic!("{name}: {}", page.dom));
        let rest = &page.dom[at + name.len() + 2..];
        rest[..rest.find('"').unwrap()].to_owned()
    };
    (attribute("data-details"), attribute("data-tip"))
}
