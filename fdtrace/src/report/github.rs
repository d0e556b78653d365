//! GitHub Actions workflow commands (`::error file=..,line=..::message`;
//! `::warning` for what the garbage collector closed),
//! printed when `GITHUB_ACTIONS=true` so each finding shows inline on the
//! pull request at the user's own line.

use std::{
    io::{self, Write},
    path::Path,
};

use super::{
    Report,
    annotate::{Annotation, annotations},
};

/// One `::error` line per finding; files under `workspace` are given
/// relative to it, as GitHub expects.
pub fn render(report: &Report, workspace: &Path, out: &mut impl Write) -> io::Result<()> {
    for a in annotations(report) {
        writeln!(out, "{}", command(&a, workspace))?;
    }
    Ok(())
}

fn command(a: &Annotation<'_>, workspace: &Path) -> String {
    let mut properties = Vec::new();
    if let Some(f) = a.blame
        && let (Some(file), Some(line)) = (&f.file, f.line)
    {
        let file = Path::new(file)
            .strip_prefix(workspace)
            .map_or_else(|_| file.clone(), |p| p.to_string_lossy().into_owned());
        properties.push(format!("file={}", escape_property(&file)));
        properties.push(format!("line={line}"));
    }
    properties.push(format!(
        "title={}",
        escape_property(&format!("fdtrace: {}", a.rule.title()))
    ));
    let level = if a.rule.level() == "warning" {
        "warning"
    } else {
        "error"
    };
    format!(
        "::{level} {}::{}",
        properties.join(","),
        escape_data(&a.message)
    )
}

/// Workflow command message escaping (the runner's `escapeData`).
fn escape_data(text: &str) -> String {
    text.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// Property value escaping (the runner's `escapeProperty`).
fn escape_property(text: &str) -> String {
    escape_data(text).replace(':', "%3A").replace(',', "%2C")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::sample_report;

    #[test]
    fn errors_point_at_the_users_line() {
        let report = sample_report();
        let mut out = Vec::new();
        render(&report, Path::new("/src/app"), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "::error file=src/leak.c,line=12,title=fdtrace%3A file descriptor never closed\
             ::2 x file never closed, opened by openat in leak_it (pid 7: ./app --test one): \
             fd 3 /tmp/a.log, fd 4 /tmp/b.log\n"
        );
    }

    #[test]
    fn escapes() {
        assert_eq!(escape_data("50%\nnext"), "50%25%0Anext");
        assert_eq!(escape_property("a:b,c"), "a%3Ab%2Cc");
    }
}
