//! Suppressions: leaks a project has decided to live with. Rules come from
//! TOML files (`--suppressions FILE`, `.fdtrace.toml` in the working
//! directory); each names a reason and globs on the stack's functions or
//! modules, the target, the kind and the process. [`apply`] moves matching
//! leaks out of a finished [`Report`] and counts them per rule, so CI gating
//! only sees the rest. Pure: no BPF, no I/O besides reading the rule files.

use std::{fmt::Write as _, fs, path::Path};

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;

use crate::{
    misuse::MisuseKind,
    report::{FrameEntry, Report, SuppressionEntry, user_frame},
};

/// The file looked for in the working directory.
pub const DEFAULT_FILE: &str = ".fdtrace.toml";

/// Rules for descriptors real programs keep for life on purpose (bash's
/// script, Go's netpoller...), on unless `--no-default-suppressions`.
const BUILT_IN: &str = include_str!("default-suppressions.toml");
/// How built-in rules are named in reports (`built-in:N`).
pub const BUILT_IN_NAME: &str = "built-in";

/// Kinds a rule may name (the report's `kind` strings).
const KINDS: &[&str] = &[
    "file",
    "directory",
    "socket",
    "pipe",
    "eventfd",
    "epoll",
    "timerfd",
    "signalfd",
    "inotify",
    "fanotify",
    "memfd",
    "pidfd",
    "io_uring",
    "userfaultfd",
    "perf",
    "other",
];

/// All rules, in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Suppressions {
    pub rules: Vec<Rule>,
}

/// One `[[suppress]]` table. Every matcher given must match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub reason: String,
    /// `FILE:N`, the Nth rule of FILE, for messages.
    pub source: String,
    /// Glob on any frame's function name.
    pub function: Option<String>,
    /// Glob on any frame's module (full path or base name); a Python
    /// frame's module is its `.py` file.
    pub module: Option<String>,
    /// Glob on the descriptor's target (`/dev/urandom`, `*.log`).
    pub target: Option<String>,
    /// Exact kind (`file`, `socket`, ...).
    pub kind: Option<String>,
    /// Glob on the process name, executable path or executable base name.
    pub process: Option<String>,
    /// The misuse it is for (`type = "double-close"`...); `None` for leaks
    /// (`type = "leak"` or no type), as every rule was before misuses.
    pub misuse: Option<MisuseKind>,
    /// One of fdtrace's own rules, not the user's.
    pub built_in: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToml {
    #[serde(default)]
    suppress: Vec<RuleToml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleToml {
    reason: String,
    function: Option<String>,
    module: Option<String>,
    target: Option<String>,
    kind: Option<String>,
    process: Option<String>,
    #[serde(rename = "type")]
    finding: Option<String>,
}

/// Suppression files are small; more is not one.
const MAX_RULES_BYTES: u64 = 1 << 20;

/// Reads a rules file as root safely: a regular file (never a FIFO or a
/// device that would hang or never end), at most 1 MiB. The one found in
/// the working directory (`follow` false) is not followed through a
/// symlink and must belong to root or the user who ran fdtrace: in a shared
/// directory another user could otherwise plant rules that hide leaks.
fn read_rules(path: &Path, follow: bool) -> std::io::Result<String> {
    use std::{
        io::{Error, ErrorKind, Read as _},
        os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    };
    let mut flags = libc::O_NONBLOCK | libc::O_CLOEXEC;
    if !follow {
        flags |= libc::O_NOFOLLOW;
    }
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => Error::other("it is a symlink"),
            _ => e,
        })?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(Error::other("it is not a regular file"));
    }
    let me = crate::spawn::invoking_uid();
    if !follow && meta.uid() != 0 && meta.uid() != me {
        return Err(Error::other(format!(
            "it belongs to uid {}, not to you",
            meta.uid()
        )));
    }
    if meta.len() > MAX_RULES_BYTES {
        return Err(Error::new(
            ErrorKind::InvalidData,
            "it is larger than 1 MiB",
        ));
    }
    let mut text = String::new();
    file.take(MAX_RULES_BYTES).read_to_string(&mut text)?;
    Ok(text)
}

/// What a rule is matched against: one leaked descriptor.
pub struct Subject<'a> {
    /// The misuse, or `None` for a leak, an exec leak or a descriptor the
    /// garbage collector closed.
    pub misuse: Option<MisuseKind>,
    pub kind: &'a str,
    pub target: &'a str,
    pub comm: &'a str,
    pub exe: &'a str,
    pub frames: &'a [FrameEntry],
}

impl Suppressions {
    /// The built-in rules (unless `built_in` is false), then
    /// `.fdtrace.toml` from `dir` if it exists, then each of `files`.
    pub fn load(dir: &Path, files: &[impl AsRef<Path>], built_in: bool) -> Result<Self> {
        let mut all = Self::default();
        if built_in {
            all.add_built_in();
        }
        let default = dir.join(DEFAULT_FILE);
        match read_rules(&default, false) {
            Ok(text) => all.add_text(DEFAULT_FILE, &text)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => bail!(
                "cannot read {}: {e}; make it a readable file of suppression rules or remove it",
                default.display()
            ),
        }
        for file in files {
            all.add_file(file.as_ref())?;
        }
        Ok(all)
    }

    fn add_built_in(&mut self) {
        let first = self.rules.len();
        self.add_text(BUILT_IN_NAME, BUILT_IN)
            .expect("the built-in suppressions parse (tested)");
        for rule in &mut self.rules[first..] {
            rule.built_in = true;
        }
    }

    fn add_file(&mut self, path: &Path) -> Result<()> {
        let text = read_rules(path, true).with_context(|| {
            format!(
                "read suppressions file {}: check the path given to --suppressions",
                path.display()
            )
        })?;
        self.add_text(&path.display().to_string(), &text)
    }

    /// Parses one file's text; `name` is used in messages.
    pub fn add_text(&mut self, name: &str, text: &str) -> Result<()> {
        let file: FileToml = toml::from_str(text).map_err(|e| {
            let message = e.message().to_owned();
            let at = e
                .span()
                .map(|s| format!(" (line {})", text[..s.start].matches('\n').count() + 1))
                .unwrap_or_default();
            anyhow::anyhow!("{name}{at}: {message}; see \"Suppressions\" in the README")
        })?;
        for (i, r) in file.suppress.into_iter().enumerate() {
            let source = format!("{name}:{}", i + 1);
            if r.reason.trim().is_empty() {
                bail!("{source}: the rule's reason is empty: say why this leak is acceptable");
            }
            if let Some(kind) = &r.kind
                && !KINDS.contains(&kind.as_str())
            {
                bail!(
                    "{source}: unknown kind `{kind}`: use one of {}",
                    KINDS.join(", ")
                );
            }
            let misuse = match r.finding.as_deref() {
                None | Some("leak") => None,
                Some(name) => Some(MisuseKind::from_name(name).ok_or_else(|| {
                    anyhow::anyhow!(
                        "{source}: unknown type `{name}`: use leak, double-close, \
                         use-after-close or invalid-fd"
                    )
                })?),
            };
            if misuse.is_some() && (r.kind.is_some() || r.target.is_some()) {
                bail!(
                    "{source}: kind and target name what a leaked descriptor is; a misused \
                     number was not open: match it by function, module or process"
                );
            }
            let rule = Rule {
                reason: r.reason,
                source,
                function: r.function,
                module: r.module,
                target: r.target,
                kind: r.kind,
                process: r.process,
                misuse,
                built_in: false,
            };
            if rule.function.is_none()
                && rule.module.is_none()
                && rule.target.is_none()
                && rule.kind.is_none()
                && rule.process.is_none()
            {
                bail!(
                    "{}: the rule matches every leak: give function, module, target, kind or process",
                    rule.source
                );
            }
            self.rules.push(rule);
        }
        Ok(())
    }

    /// The first rule matching `subject`.
    pub fn find(&self, subject: &Subject<'_>) -> Option<usize> {
        self.rules.iter().position(|r| r.matches(subject))
    }
}

impl Rule {
    pub fn matches(&self, s: &Subject<'_>) -> bool {
        let frames = || s.frames.iter();
        self.misuse == s.misuse
            && self.kind.as_ref().is_none_or(|k| k == s.kind)
            && self.target.as_ref().is_none_or(|g| glob(g, s.target))
            && self
                .process
                .as_ref()
                .is_none_or(|g| glob(g, s.comm) || glob(g, s.exe) || glob(g, base_name(s.exe)))
            && self.function.as_ref().is_none_or(|g| {
                frames().any(|f| f.function.as_deref().is_some_and(|name| glob(g, name)))
            })
            && self.module.as_ref().is_none_or(|g| {
                frames().any(|f| {
                    // A Python frame's module is its source file.
                    let module = if f.lang == "python" {
                        f.file.as_deref()
                    } else {
                        f.module.as_deref()
                    };
                    module.is_some_and(|m| glob(g, m) || glob(g, base_name(m)))
                })
            })
    }
}

fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Shell-style glob: `*` matches any run of characters (slashes included),
/// `?` any one character; everything else matches itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Greedy match with one backtrack point: linear for patterns without
    // nested structure, which is all a glob has.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == '?' || c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Moves leaks, exec leaks, descriptors closed by the garbage collector
/// and misuses matching a rule out of `report`, records per rule how many
/// it took, and drops stack groups nothing refers to anymore.
pub fn apply(report: &mut Report, rules: &Suppressions) {
    let mut matched = vec![0usize; rules.rules.len()];
    let mut hit = |kind: &str, target: &str, pid: u32, stack_id: Option<u32>| {
        let process = report.process(pid);
        let subject = Subject {
            misuse: None,
            kind,
            target,
            comm: process.map_or("", |p| p.comm.as_str()),
            exe: process.map_or("", |p| p.exe.as_str()),
            frames: stack_id
                .and_then(|id| report.group(id))
                .map_or(&[], |g| g.stack.as_slice()),
        };
        let rule = rules.find(&subject);
        if let Some(i) = rule {
            matched[i] += 1;
        }
        rule.is_some()
    };
    let keep_leaks: Vec<bool> = report
        .leaks
        .iter()
        .map(|l| !hit(l.kind, &l.target, l.pid, l.stack_id))
        .collect();
    let keep_exec: Vec<bool> = report
        .exec_leaks
        .iter()
        .map(|e| !hit(e.kind, &e.target, e.pid, e.stack_id))
        .collect();
    let keep_gc: Vec<bool> = report
        .gc_closed
        .iter()
        .map(|g| !hit(g.kind, &g.target, g.pid, g.stack_id))
        .collect();
    let keep_misuse: Vec<bool> = report
        .fd_misuse
        .iter()
        .map(|m| {
            let process = report.process(m.pid);
            // Either stack may name the code at fault.
            let frames: Vec<FrameEntry> = [m.stack_id, m.closed_stack_id]
                .into_iter()
                .flatten()
                .filter_map(|id| report.group(id))
                .flat_map(|g| g.stack.iter().cloned())
                .collect();
            let subject = Subject {
                misuse: MisuseKind::from_name(m.kind),
                kind: "",
                target: "",
                comm: process.map_or("", |p| p.comm.as_str()),
                exe: process.map_or("", |p| p.exe.as_str()),
                frames: &frames,
            };
            let rule = rules.find(&subject);
            if let Some(i) = rule {
                matched[i] += m.count;
            }
            rule.is_none()
        })
        .collect();
    let mut keep = keep_misuse.into_iter();
    report.fd_misuse.retain(|_| keep.next().unwrap_or(true));
    let mut keep = keep_leaks.into_iter();
    report.leaks.retain(|_| keep.next().unwrap_or(true));
    let mut keep = keep_exec.into_iter();
    report.exec_leaks.retain(|_| keep.next().unwrap_or(true));
    let mut keep = keep_gc.into_iter();
    report.gc_closed.retain(|_| keep.next().unwrap_or(true));
    report.suppressed = matched.iter().sum();
    // A built-in rule is listed when it took something; a user's rule
    // always, so one that matches nothing is noticed.
    report.suppressions = rules
        .rules
        .iter()
        .zip(matched)
        .filter(|(r, matched)| !r.built_in || *matched > 0)
        .map(|(r, matched)| SuppressionEntry {
            source: r.source.clone(),
            reason: r.reason.clone(),
            matched,
            built_in: r.built_in,
        })
        .collect();
    report.regroup();
}

/// Rules that would suppress every leak and exec leak in `report`, one per
/// stack and kind, as TOML ready to paste into `.fdtrace.toml`. A rule names
/// the innermost function of the user's own code and the process; for files
/// (and leaks without a stack) also the target, widened to a glob when the
/// stack opened several.
pub fn generate(report: &Report) -> String {
    struct Pending<'a> {
        stack_id: Option<u32>,
        kind: &'a str,
        what: &'a str,
        pid: u32,
        targets: Vec<&'a str>,
    }
    let mut pending: Vec<Pending<'_>> = Vec::new();
    let subjects = report
        .leaks
        .iter()
        .map(|l| (l.stack_id, l.kind, l.target.as_str(), l.pid, "leak"))
        .chain(
            report
                .exec_leaks
                .iter()
                .map(|e| (e.stack_id, e.kind, e.target.as_str(), e.pid, "exec leak")),
        );
    for (stack_id, kind, target, pid, what) in subjects {
        let comm = report.process(pid).map(|p| p.comm.as_str());
        match pending.iter_mut().find(|p| {
            p.stack_id == stack_id
                && p.kind == kind
                && p.what == what
                && report.process(p.pid).map(|p| p.comm.as_str()) == comm
        }) {
            Some(p) => p.targets.push(target),
            None => pending.push(Pending {
                stack_id,
                kind,
                what,
                pid,
                targets: vec![target],
            }),
        }
    }
    let mut out = String::from(
        "# Suppressions for the leaks above: paste into .fdtrace.toml and say why\n\
         # each one is acceptable.\n",
    );
    for p in pending {
        let function = blamed_function(report, p.stack_id);
        out.push_str("\n[[suppress]]\n");
        let reason = format!("TODO: why this {} is acceptable", p.what);
        let _ = writeln!(out, "reason = {}", quote(&reason));
        if let Some(f) = function {
            let _ = writeln!(out, "function = {}", quote(&literal_glob(f)));
        }
        if function.is_none() || p.kind == "file" {
            let _ = writeln!(out, "target = {}", quote(&common_glob(&p.targets)));
        }
        let _ = writeln!(out, "kind = {}", quote(p.kind));
        if let Some(process) = report.process(p.pid) {
            let _ = writeln!(out, "process = {}", quote(&literal_glob(&process.comm)));
        }
    }
    // Misuses: by type, the user's function that made the failing call,
    // and the process.
    let mut seen: Vec<(&str, Option<&str>, Option<&str>)> = Vec::new();
    for m in &report.fd_misuse {
        let function = blamed_function(report, m.stack_id);
        let comm = report.process(m.pid).map(|p| p.comm.as_str());
        if seen.contains(&(m.kind, function, comm)) {
            continue;
        }
        seen.push((m.kind, function, comm));
        out.push_str("\n[[suppress]]\n");
        let reason = format!("TODO: why this {} is acceptable", m.kind);
        let _ = writeln!(out, "reason = {}", quote(&reason));
        let _ = writeln!(out, "type = {}", quote(m.kind));
        if let Some(f) = function {
            let _ = writeln!(out, "function = {}", quote(&literal_glob(f)));
        }
        if let Some(comm) = comm {
            let _ = writeln!(out, "process = {}", quote(&literal_glob(comm)));
        }
    }
    out
}

/// The function a generated rule names for a stack: the innermost of the
/// user's own code, else the innermost with a name.
fn blamed_function(report: &Report, stack_id: Option<u32>) -> Option<&str> {
    let frames = stack_id
        .and_then(|id| report.group(id))
        .map_or(&[][..], |g| g.stack.as_slice());
    user_frame(frames)
        .or_else(|| frames.iter().find(|f| f.function.is_some()))
        .and_then(|f| f.function.as_deref())
}

/// The narrowest `prefix*suffix` glob matching all of `texts` (the text
/// itself when there is one).
fn common_glob(texts: &[&str]) -> String {
    let chars: Vec<Vec<char>> = texts
        .iter()
        .map(|t| literal_glob(t).chars().collect())
        .collect();
    let Some(first) = chars.first() else {
        return String::new();
    };
    if chars.iter().all(|c| c == first) {
        return first.iter().collect();
    }
    let shortest = chars.iter().map(Vec::len).min().unwrap_or(0);
    let prefix = (0..shortest)
        .take_while(|&i| chars.iter().all(|c| c[i] == first[i]))
        .count();
    let suffix = (0..shortest - prefix)
        .take_while(|&i| {
            chars
                .iter()
                .all(|c| c[c.len() - 1 - i] == first[first.len() - 1 - i])
        })
        .count();
    let prefix: String = first[..prefix].iter().collect();
    let suffix: String = first[first.len() - suffix..].iter().collect();
    format!("{prefix}*{suffix}")
}

/// A glob matching `text` exactly, up to `*` and `?` in it matching any
/// character (globs have no escapes; these are rare in names).
fn literal_glob(text: &str) -> String {
    text.replace('*', "?")
}

/// A TOML basic string.
fn quote(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{ExecLeakEntry, tests::sample_report};

    fn rules(text: &str) -> Suppressions {
        let mut s = Suppressions::default();
        s.add_text("t.toml", text).unwrap();
        s
    }

    fn error(text: &str) -> String {
        let mut s = Suppressions::default();
        format!("{:#}", s.add_text("t.toml", text).unwrap_err())
    }

    /// How many of the sample report's two leaks `text` suppresses.
    fn suppressed_by(text: &str) -> usize {
        let mut report = sample_report();
        apply(&mut report, &rules(text));
        report.suppressed
    }

    #[test]
    fn a_rule_with_a_type_takes_that_misuse_and_one_without_takes_leaks_only() {
        let with_misuse = || {
            let mut report = sample_report();
            report.fd_misuse.push(crate::report::misuse::MisuseEntry {
                kind: "double-close",
                pid: 7,
                tid: 7,
                fd: 3,
                syscall: "close",
                errno: 9,
                count: 3,
                stack_id: None,
                closed_stack_id: Some(1),
                closed_tid: Some(7),
                closed_ms_before: Some(1),
            });
            report
        };
        let left = |text: &str| {
            let mut report = with_misuse();
            apply(&mut report, &rules(text));
            (
                report.leaks.len(),
                report.fd_misuse.len(),
                report.suppressed,
            )
        };
        let rule =
            |extra: &str| format!("[[suppress]]\nreason = \"r\"\nfunction = \"leak_it\"\n{extra}");
        assert_eq!(left(&rule("")), (0, 1, 2));
        assert_eq!(left(&rule("type = \"leak\"")), (0, 1, 2));
        // Matched through the stack of the earlier close; counted per call.
        assert_eq!(left(&rule("type = \"double-close\"")), (2, 0, 3));
        assert_eq!(left(&rule("type = \"invalid-fd\"")), (2, 1, 0));
        assert!(error(&rule("type = \"double\"")).contains("unknown type `double`"));
        assert!(
            error(&rule("type = \"invalid-fd\"\nkind = \"file\""))
                .contains("kind and target name what a leaked descriptor is")
        );
    }

    #[test]
    fn globs() {
        assert!(glob("*.log", "/var/log/app.log"));
        assert!(glob("/dev/urandom", "/dev/urandom"));
        assert!(!glob("/dev/urandom", "/dev/urandom2"));
        assert!(glob("lib*.so*", "libcrypto.so.3"));
        assert!(glob("a?c", "abc"));
        assert!(!glob("a?c", "ac"));
        assert!(glob("*", ""));
        assert!(glob("*a*b*", "xxaxxbxx"));
        assert!(!glob("*a*b", "xxaxxbxxc"));
        assert!(glob("std::*::open", "std::fs::File::open"));
    }

    #[test]
    fn each_matcher() {
        assert_eq!(
            suppressed_by("[[suppress]]\nreason='r'\nfunction='leak_*'"),
            2
        );
        // Anywhere in the stack, not only the innermost frame.
        assert_eq!(
            suppressed_by("[[suppress]]\nreason='r'\nfunction='main'"),
            2
        );
        assert_eq!(
            suppressed_by("[[suppress]]\nreason='r'\nfunction='close*'"),
            0
        );
        assert_eq!(
            suppressed_by("[[suppress]]\nreason='r'\nmodule='libc.so*'"),
            2
        );
        assert_eq!(
            suppressed_by("[[suppress]]\nreason='r'\nmodule='*/x86_64-linux-gnu/*'"),
            2
        );
        assert_eq!(
            suppressed_by("[[suppress]]\nreason='r'\nmodule='libssl*'"),
            0
        );
        assert_eq!(
            suppressed_by("[[suppress]]\nreason='r'\ntarget='/tmp/a.*'"),
            1
        );
        assert_eq!(suppressed_by("[[suppress]]\nreason='r'\ntarget='*.log'"), 2);
        assert_eq!(suppressed_by("[[suppress]]\nreason='r'\nkind='file'"), 2);
        assert_eq!(suppressed_by("[[suppress]]\nreason='r'\nkind='socket'"), 0);
        assert_eq!(suppressed_by("[[suppress]]\nreason='r'\nprocess='app'"), 2);
        assert_eq!(
            suppressed_by("[[suppress]]\nreason='r'\nprocess='/src/*/app'"),
            2
        );
        assert_eq!(
            suppressed_by("[[suppress]]\nreason='r'\nprocess='python*'"),
            0
        );
        // All given matchers must match.
        assert_eq!(
            suppressed_by("[[suppress]]\nreason='r'\nfunction='leak_it'\nkind='pipe'"),
            0
        );
    }

    #[test]
    fn counts_per_rule_first_match_wins_and_keeps_unused_rules() {
        let mut report = sample_report();
        let s = rules(
            "[[suppress]]\nreason = 'first log'\ntarget = '/tmp/a.log'\n\
             [[suppress]]\nreason = 'all logs'\ntarget = '*.log'\n\
             [[suppress]]\nreason = 'gone'\nfunction = 'removed_long_ago'\n",
        );
        apply(&mut report, &s);
        assert!(report.leaks.is_empty());
        assert!(report.groups.is_empty());
        assert_eq!(report.suppressed, 2);
        let counts: Vec<(&str, &str, usize)> = report
            .suppressions
            .iter()
            .map(|e| (e.source.as_str(), e.reason.as_str(), e.matched))
            .collect();
        assert_eq!(
            counts,
            [
                ("t.toml:1", "first log", 1),
                ("t.toml:2", "all logs", 1),
                ("t.toml:3", "gone", 0)
            ]
        );
    }

    #[test]
    fn exec_leaks_are_suppressed_too() {
        let mut report = sample_report();
        report.exec_leaks.push(ExecLeakEntry {
            pid: 7,
            fd: 5,
            kind: "pipe",
            target: "pipe:[1]".into(),
            exec: "/bin/sh".into(),
            opened_by: "pipe",
            stack_id: Some(1),
        });
        apply(&mut report, &rules("[[suppress]]\nreason='r'\nkind='pipe'"));
        assert!(report.exec_leaks.is_empty());
        assert_eq!(report.leaks.len(), 2);
    }

    #[test]
    fn built_in_rules_parse_are_marked_and_can_be_turned_off() {
        let dir = std::env::temp_dir().join(format!("fdtrace-supp-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let none: &[&Path] = &[];
        let on = Suppressions::load(&dir, none, true).unwrap();
        assert!(on.rules.len() >= 5);
        assert!(
            on.rules
                .iter()
                .all(|r| r.built_in && r.source.starts_with("built-in:"))
        );
        assert!(
            Suppressions::load(&dir, none, false)
                .unwrap()
                .rules
                .is_empty()
        );
        // A built-in rule that took nothing is not listed (and so never
        // warned about); one that did is, with its count.
        let mut report = sample_report();
        apply(&mut report, &on);
        assert!(report.suppressions.is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_config_file_that_is_not_a_readable_file_is_an_error() {
        let dir = std::env::temp_dir().join(format!("fdtrace-conf-{}", std::process::id()));
        let config = dir.join(DEFAULT_FILE);
        fs::create_dir_all(&config).unwrap();
        let none: &[&Path] = &[];
        let error = || {
            Suppressions::load(&dir, none, true)
                .unwrap_err()
                .to_string()
        };
        let e = error();
        assert!(
            e.contains(".fdtrace.toml") && e.contains("readable file"),
            "{e}"
        );
        fs::remove_dir_all(&config).unwrap();
        // A FIFO would hang a plain read: refused at once.
        let c_config =
            std::ffi::CString::new(config.clone().into_os_string().into_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_config.as_ptr(), 0o644) }, 0);
        let e = error();
        assert!(e.contains("not a regular file"), "{e}");
        fs::remove_file(&config).unwrap();
        // One another user put in a shared directory is not trusted.
        fs::write(&config, "").unwrap();
        // SAFETY: a NUL-terminated path; fails harmlessly when not root.
        if unsafe { libc::chown(c_config.as_ptr(), 65534, 65534) } == 0 {
            let e = error();
            assert!(e.contains("belongs to uid 65534"), "{e}");
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        assert_eq!(
            error("[[suppress]]\nreason='r'\nkind='sockt'"),
            "t.toml:1: unknown kind `sockt`: use one of file, directory, socket, pipe, \
             eventfd, epoll, timerfd, signalfd, inotify, fanotify, memfd, pidfd, io_uring, \
             userfaultfd, perf, other"
        );
        assert!(error("[[suppress]]\nreason=' '\nkind='file'").contains("reason is empty"));
        assert!(error("[[suppress]]\nreason='r'").contains("matches every leak"));
        let e = error("[[suppress]]\nreason='r'\nfunktion='x'");
        assert!(
            e.starts_with("t.toml (line 3): unknown field `funktion`"),
            "{e}"
        );
        assert!(error("[[suppress]]\nkind='file'").contains("missing field `reason`"));
    }

    #[test]
    fn generated_misuse_rules_round_trip() {
        let mut report = sample_report();
        report.leaks.clear();
        report.fd_misuse.push(crate::report::misuse::MisuseEntry {
            kind: "use-after-close",
            pid: 7,
            tid: 7,
            fd: 3,
            syscall: "read",
            errno: 9,
            count: 2,
            stack_id: Some(1),
            closed_stack_id: None,
            closed_tid: None,
            closed_ms_before: None,
        });
        let text = generate(&report);
        assert!(
            text.ends_with(
                "\n[[suppress]]\n\
                 reason = \"TODO: why this use-after-close is acceptable\"\n\
                 type = \"use-after-close\"\n\
                 function = \"leak_it\"\n\
                 process = \"app\"\n"
            ),
            "{text}"
        );
        apply(&mut report, &rules(&text));
        assert!(report.fd_misuse.is_empty());
        assert_eq!(report.suppressed, 2);
    }

    #[test]
    fn generated_rules_round_trip() {
        let mut report = sample_report();
        report.leaks.push(crate::report::LeakEntry {
            fd: 9,
            kind: "socket",
            target: "TCP 127.0.0.1:80".into(),
            stack_id: None,
            ..report.leaks[0].clone()
        });
        let text = generate(&report);
        assert_eq!(
            text,
            "# Suppressions for the leaks above: paste into .fdtrace.toml and say why\n\
             # each one is acceptable.\n\
             \n[[suppress]]\n\
             reason = \"TODO: why this leak is acceptable\"\n\
             function = \"leak_it\"\n\
             target = \"/tmp/*.log\"\n\
             kind = \"file\"\n\
             process = \"app\"\n\
             \n[[suppress]]\n\
             reason = \"TODO: why this leak is acceptable\"\n\
             target = \"TCP 127.0.0.1:80\"\n\
             kind = \"socket\"\n\
             process = \"app\"\n"
        );
        let mut again = report.clone();
        apply(&mut again, &rules(&text));
        assert!(again.leaks.is_empty());
        assert_eq!(again.suppressed, 3);
        assert!(again.suppressions.iter().all(|s| s.matched > 0));
    }

    #[test]
    fn common_globs() {
        assert_eq!(common_glob(&["/tmp/a.log"]), "/tmp/a.log");
        assert_eq!(common_glob(&["/tmp/a.log", "/tmp/b.log"]), "/tmp/*.log");
        assert_eq!(common_glob(&["ab", "abab"]), "ab*");
        assert_eq!(common_glob(&["x*y"]), "x?y");
    }
}
