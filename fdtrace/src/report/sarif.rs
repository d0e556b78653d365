//! SARIF 2.1.0 renderer, for code scanning: one result per leak group,
//! exec-leak group and EMFILE failure, located at the innermost frame of the
//! user's own code, with the whole stack as the result's code flow
//! (outermost call first, as SARIF orders thread flows).

use std::{
    io::{self, Write},
    path::Path,
};

use serde_json::{Value, json};

use super::{
    FrameEntry, Report,
    annotate::{Annotation, Rule, annotations},
};

/// The schema SARIF consumers look for.
const SCHEMA: &str = "https://json.schemastore.org/sarif-2.1.0.json";
/// Base id of paths under the working directory.
const SRCROOT: &str = "SRCROOT";

/// Writes `report` as a SARIF log; paths under `root` become relative to it.
pub fn render(report: &Report, root: &Path, out: &mut impl Write) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, &log(report, root))?;
    writeln!(out)
}

fn log(report: &Report, root: &Path) -> Value {
    let rules: Vec<Value> = Rule::ALL
        .iter()
        .map(|r| {
            json!({
                "id": r.id(),
                "shortDescription": { "text": r.title() },
                "fullDescription": { "text": r.description() },
                "defaultConfiguration": { "level": r.level() },
            })
        })
        .collect();
    let results: Vec<Value> = annotations(report)
        .iter()
        .map(|a| result(report, a, root))
        .collect();
    let mut notifications = Vec::new();
    if report.dropped_events > 0 {
        notifications.push(json!({
            "level": "warning",
            "message": { "text": format!(
                "{} events were dropped: the report is incomplete",
                report.dropped_events
            ) },
        }));
    }
    for s in report.suppressions.iter().filter(|s| s.matched == 0) {
        notifications.push(json!({
            "level": "note",
            "message": { "text": format!(
                "suppression {} ({}) matched nothing",
                s.source, s.reason
            ) },
        }));
    }
    let mut invocation = json!({
        "executionSuccessful": true,
        "arguments": report.command,
        "toolExecutionNotifications": notifications,
    });
    if let Some(status) = report.exit_status {
        invocation["exitCode"] = json!(status);
    }
    json!({
        "$schema": SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": { "driver": {
                "name": "fdtrace",
                "version": env!("CARGO_PKG_VERSION"),
                "informationUri": "https://github.com/fdtrace/fdtrace",
                "rules": rules,
            } },
            "originalUriBaseIds": { SRCROOT: { "uri": directory_uri(root) } },
            "invocations": [invocation],
            "results": results,
        }],
    })
}

fn result(report: &Report, a: &Annotation<'_>, root: &Path) -> Value {
    let rule_index = Rule::ALL.iter().position(|&r| r == a.rule).unwrap_or(0);
    let mut result = json!({
        "ruleId": a.rule.id(),
        "ruleIndex": rule_index,
        "level": a.rule.level(),
        "message": { "text": a.message },
        "properties": { "count": a.count, "pids": a.pids },
    });
    result["locations"] = json!([primary_location(report, a, root)]);
    if let Some(closed) = a.closed_at {
        let mut related = location(closed, root);
        related["id"] = json!(1);
        related["message"] =
            json!({ "text": format!("closed here before: {}", frame_text(closed)) });
        result["relatedLocations"] = json!([related]);
    }
    if !a.stack.is_empty() {
        let steps: Vec<Value> = a
            .stack
            .iter()
            .rev()
            .enumerate()
            .map(|(depth, f)| {
                let mut step = location(f, root);
                step["message"] = json!({ "text": frame_text(f) });
                json!({ "location": step, "nestingLevel": depth })
            })
            .collect();
        result["codeFlows"] = json!([{ "threadFlows": [{ "locations": steps }] }]);
        result["partialFingerprints"] = json!({ "fdtraceStack/v1": fingerprint(a) });
    }
    result
}

/// Where the result points. Code scanning rejects a whole log if a result
/// has no physical location, so without a source line in the user's own
/// code it falls back to any frame with one, then to the module of the
/// innermost frame, then to the process's executable (line 1 of a binary).
fn primary_location(report: &Report, a: &Annotation<'_>, root: &Path) -> Value {
    let with_line = |f: &&FrameEntry| f.file.is_some() && f.line.is_some();
    if let Some(frame) = a
        .blame
        .filter(with_line)
        .or_else(|| a.stack.iter().find(with_line))
    {
        let mut located = location(frame, root);
        if let Some(blame) = a.blame {
            located["logicalLocations"] = location(blame, root)["logicalLocations"].clone();
        }
        return located;
    }
    let binary = a
        .stack
        .iter()
        .find_map(|f| f.module.clone())
        .or_else(|| {
            a.pids
                .first()
                .and_then(|&pid| report.process(pid))
                .map(|p| p.exe.clone())
        })
        .filter(|path| !path.is_empty())
        .unwrap_or_else(|| report.command.first().cloned().unwrap_or_default());
    let mut artifact = json!({ "uri": file_uri(&binary, root) });
    if Path::new(&binary).strip_prefix(root).is_ok() {
        artifact["uriBaseId"] = json!(SRCROOT);
    }
    let mut located = json!({
        "physicalLocation": {
            "artifactLocation": artifact,
            "region": { "startLine": 1 },
        },
    });
    if let Some(blame) = a.blame {
        located["logicalLocations"] = location(blame, root)["logicalLocations"].clone();
    }
    located
}

/// A physical location when the frame has a source line, and its function
/// as a logical location.
fn location(frame: &FrameEntry, root: &Path) -> Value {
    let mut location = json!({});
    if let (Some(file), Some(line)) = (&frame.file, frame.line) {
        let mut artifact = json!({ "uri": file_uri(file, root) });
        if Path::new(file).strip_prefix(root).is_ok() {
            artifact["uriBaseId"] = json!(SRCROOT);
        }
        let line = line.max(1);
        location["physicalLocation"] = json!({
            "artifactLocation": artifact,
            "region": { "startLine": line },
        });
    }
    let name = frame
        .function
        .clone()
        .unwrap_or_else(|| frame.address.clone());
    location["logicalLocations"] = json!([{ "fullyQualifiedName": name, "kind": "function" }]);
    location
}

fn frame_text(frame: &FrameEntry) -> String {
    let function = frame.function.as_deref().unwrap_or(&frame.address);
    match &frame.module {
        Some(module) => format!("{function} in {module}"),
        None => function.to_owned(),
    }
}

/// Stable across runs and machines: the functions of the stack, not addresses.
fn fingerprint(a: &Annotation<'_>) -> String {
    // FNV-1a, 64 bits.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(a.rule.id().as_bytes());
    for f in a.stack {
        eat(f.function.as_deref().unwrap_or("?").as_bytes());
        eat(b"\n");
    }
    format!("{hash:016x}")
}

/// A path relative to `root` when under it, else an absolute `file://` URI.
fn file_uri(file: &str, root: &Path) -> String {
    match Path::new(file).strip_prefix(root) {
        Ok(relative) => percent_encode(&relative.to_string_lossy()),
        Err(_) if file.starts_with('/') => format!("file://{}", percent_encode(file)),
        Err(_) => percent_encode(file),
    }
}

fn directory_uri(root: &Path) -> String {
    let mut uri = format!("file://{}", percent_encode(&root.to_string_lossy()));
    if !uri.ends_with('/') {
        uri.push('/');
    }
    uri
}

/// Escapes what a URI path may not contain (RFC 3986 unreserved, `/` kept).
fn percent_encode(path: &str) -> String {
    let mut out = String::new();
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~+".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::sample_report;

    #[test]
    fn one_result_per_leak_group_at_the_users_frame() {
        let report = sample_report();
        let log = log(&report, Path::new("/src/app"));
        let results = log["runs"][0]["results"].as_array().unwrap();
        assert_eq!(results.len(), 1);
        let r = &results[0];
        assert_eq!(r["ruleId"], "fd-leak");
        assert_eq!(r["properties"]["count"], 2);
        let physical = &r["locations"][0]["physicalLocation"];
        assert_eq!(physical["artifactLocation"]["uri"], "src/leak.c");
        assert_eq!(physical["artifactLocation"]["uriBaseId"], "SRCROOT");
        assert_eq!(physical["region"]["startLine"], 12);
        let steps = r["codeFlows"][0]["threadFlows"][0]["locations"]
            .as_array()
            .unwrap();
        // Outermost first: main, then leak_it, then libc's open.
        let names: Vec<&str> = steps
            .iter()
            .map(|s| {
                s["location"]["logicalLocations"][0]["fullyQualifiedName"]
                    .as_str()
                    .unwrap()
            })
            .collect();
        assert_eq!(names, ["main", "leak_it", "open64"]);
        assert_eq!(
            steps[2]["location"]["physicalLocation"]["artifactLocation"]["uri"],
            "file:///usr/src/glibc/io/open64.c"
        );
        assert!(r["message"]["text"].as_str().unwrap().starts_with(
            "2 x file never closed, opened by openat in leak_it (pid 7: ./app --test one)"
        ));
    }

    #[test]
    fn every_result_has_a_physical_location() {
        let mut report = sample_report();
        for l in &mut report.leaks {
            l.stack_id = None;
        }
        report.groups.clear();
        let log = log(&report, Path::new("/src/app"));
        let physical = &log["runs"][0]["results"][0]["locations"][0]["physicalLocation"];
        // No stack: the process's executable.
        assert_eq!(physical["artifactLocation"]["uri"], "app");
        assert_eq!(physical["artifactLocation"]["uriBaseId"], "SRCROOT");
        assert_eq!(physical["region"]["startLine"], 1);
    }

    #[test]
    fn uris_are_encoded() {
        assert_eq!(
            file_uri("/src/app/a b#.c", Path::new("/src/app")),
            "a%20b%23.c"
        );
        assert_eq!(directory_uri(Path::new("/src/app")), "file:///src/app/");
    }
}
