//! Export stage of `fdtrace monitor`: a [`Snapshot`] as OpenMetrics text.
//!
//! This file only says which number goes under which name. The exposition
//! itself (`# HELP`/`# TYPE` lines, the `_total` suffix of counters, label
//! escaping, the closing `# EOF`) is written by the prometheus-client crate,
//! so a site named after a file with a quote or a newline in it cannot break
//! the format. Pure: no I/O, no tokio; a fresh registry per call.

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::{EncodeLabelSet, text},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use super::snapshot::{Counted, Snapshot};

/// Descriptor counts are `u64`; the crate's default gauge is `i64`.
type CountGauge = Gauge<u64, AtomicU64>;

/// The label set of [`Counted`] values, names chosen by the monitor loop.
type CountedLabels = Vec<(&'static str, String)>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProcessLabels {
    pid: u32,
    comm: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SiteLabels {
    comm: String,
    site: String,
}

/// Encodes `snapshot` as an OpenMetrics text exposition ending in `# EOF`.
///
/// Families without samples are left out, except the unlabelled
/// `fdtrace_traced_processes` and `fdtrace_dropped_events_total`, which are
/// always there. A label set that occurs twice in a list (two `other` rows
/// for one program, say) is summed into one sample; a pid given twice keeps
/// its last row. Series order within a family is unspecified.
pub fn encode(snapshot: &Snapshot) -> String {
    let mut registry = Registry::default();

    let traced = CountGauge::default();
    traced.set(snapshot.traced_processes);
    registry.register(
        "fdtrace_traced_processes",
        "Processes fdtrace traces now",
        traced,
    );

    let open_fds = Family::<ProcessLabels, CountGauge>::default();
    let fd_limit = Family::<ProcessLabels, CountGauge>::default();
    for process in &snapshot.processes {
        let labels = ProcessLabels {
            pid: process.pid,
            comm: process.comm.clone(),
        };
        if let Some(limit) = process.fd_limit {
            fd_limit.get_or_create(&labels).set(limit);
        }
        open_fds.get_or_create(&labels).set(process.open_fds);
    }
    registry.register(
        "fdtrace_open_fds",
        "Descriptors a traced process has open now",
        open_fds,
    );
    registry.register(
        "fdtrace_fd_limit",
        "Soft RLIMIT_NOFILE of a traced process: open fails with EMFILE past it",
        fd_limit,
    );

    let site_open = Family::<SiteLabels, CountGauge>::default();
    let site_opened = Family::<SiteLabels, Counter>::default();
    let site_closed = Family::<SiteLabels, Counter>::default();
    for site in &snapshot.sites {
        let labels = SiteLabels {
            comm: site.comm.clone(),
            site: site.site.clone(),
        };
        site_open.get_or_create(&labels).inc_by(site.open_fds);
        site_opened.get_or_create(&labels).inc_by(site.opened);
        site_closed.get_or_create(&labels).inc_by(site.closed);
    }
    registry.register(
        "fdtrace_site_open_fds",
        "Descriptors opened at a site that are open now",
        site_open,
    );
    registry.register(
        "fdtrace_site_opened",
        "Descriptors opened at a site",
        site_opened,
    );
    registry.register(
        "fdtrace_site_closed",
        "Descriptors opened at a site that have gone away since",
        site_closed,
    );

    registry.register(
        "fdtrace_emfile",
        "Opens that failed with EMFILE because the process hit its descriptor limit",
        counted(&snapshot.emfile),
    );
    registry.register(
        "fdtrace_fd_misuse",
        "Calls on a descriptor that was not open: double close, use after close, invalid fd",
        counted(&snapshot.misuse),
    );
    registry.register(
        "fdtrace_evicted",
        "Entries fdtrace dropped from a full table, so later counts may be low",
        counted(&snapshot.evicted),
    );

    let dropped = Counter::<u64>::default();
    dropped.inc_by(snapshot.dropped_events);
    registry.register(
        "fdtrace_dropped_events",
        "Records the kernel could not hand to fdtrace because a ring buffer or map was full",
        dropped,
    );

    let mut out = String::new();
    text::encode(&mut out, &registry).expect("writing into a String cannot fail");
    out
}

/// One counter family from labelled counts, label names as given.
fn counted(values: &[Counted]) -> Family<CountedLabels, Counter> {
    let family = Family::<CountedLabels, Counter>::default();
    for value in values {
        family.get_or_create(&value.labels).inc_by(value.value);
    }
    family
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::snapshot::{ProcessSample, SiteSample};

    /// One family's `#` lines, and its sample lines sorted: their order
    /// comes from a hash map.
    type Block<'a> = (Vec<&'a str>, Vec<&'a str>);

    /// The output as blocks, then its last line.
    fn families(text: &str) -> (Vec<Block<'_>>, &str) {
        let mut lines: Vec<&str> = text.lines().collect();
        let last = lines.pop().unwrap();
        let mut out: Vec<Block<'_>> = Vec::new();
        for line in lines {
            if line.starts_with("# HELP ") {
                out.push((vec![line], Vec::new()));
            } else if line.starts_with('#') {
                out.last_mut().unwrap().0.push(line);
            } else {
                out.last_mut().unwrap().1.push(line);
            }
        }
        for (_, samples) in &mut out {
            samples.sort_unstable();
        }
        (out, last)
    }

    fn counted(labels: &[(&'static str, &str)], value: u64) -> Counted {
        Counted {
            labels: labels.iter().map(|&(k, v)| (k, v.to_owned())).collect(),
            value,
        }
    }

    #[test]
    fn empty_snapshot_has_the_unlabelled_metrics() {
        let text = encode(&Snapshot::default());
        assert_eq!(
            text,
            "# HELP fdtrace_traced_processes Processes fdtrace traces now.\n\
             # TYPE fdtrace_traced_processes gauge\n\
             fdtrace_traced_processes 0\n\
             # HELP fdtrace_dropped_events Records the kernel could not hand to \
             fdtrace because a ring buffer or map was full.\n\
             # TYPE fdtrace_dropped_events counter\n\
             fdtrace_dropped_events_total 0\n\
             # EOF\n"
        );
    }

    #[test]
    fn every_family_with_exact_lines() {
        // A site named after a file whose name holds a quote, a backslash
        // and a newline: the library must escape all three.
        let weird = "read_conf (/tmp/a\"b\\c\nd.c:7)";
        let snapshot = Snapshot {
            processes: vec![
                ProcessSample {
                    pid: 42,
                    comm: "nginx".into(),
                    open_fds: 17,
                    fd_limit: Some(1024),
                },
                ProcessSample {
                    pid: 43,
                    comm: "nginx".into(),
                    open_fds: 5,
                    fd_limit: None,
                },
            ],
            sites: vec![
                SiteSample {
                    comm: "nginx".into(),
                    site: "open_log (log.c:12)".into(),
                    open_fds: 3,
                    opened: 10,
                    closed: 7,
                },
                SiteSample {
                    comm: "nginx".into(),
                    site: weird.into(),
                    open_fds: 1,
                    opened: 1,
                    closed: 0,
                },
                // Two `other` rows for one program are summed.
                SiteSample {
                    comm: "nginx".into(),
                    site: "other".into(),
                    open_fds: 2,
                    opened: 4,
                    closed: 2,
                },
                SiteSample {
                    comm: "nginx".into(),
                    site: "other".into(),
                    open_fds: 1,
                    opened: 1,
                    closed: 0,
                },
            ],
            emfile: vec![counted(
                &[("comm", "nginx"), ("site", "open_log (log.c:12)")],
                2,
            )],
            misuse: vec![
                counted(&[("comm", "nginx"), ("type", "double-close")], 1),
                counted(&[("comm", "nginx"), ("type", "invalid-fd")], 3),
            ],
            evicted: vec![counted(&[("what", "stack")], 9)],
            dropped_events: 6,
            traced_processes: 2,
        };

        let text = encode(&snapshot);
        let (families, last) = families(&text);
        let expected: Vec<Block<'_>> = vec![
            (
                vec![
                    "# HELP fdtrace_traced_processes Processes fdtrace traces now.",
                    "# TYPE fdtrace_traced_processes gauge",
                ],
                vec!["fdtrace_traced_processes 2"],
            ),
            (
                vec![
                    "# HELP fdtrace_open_fds Descriptors a traced process has open now.",
                    "# TYPE fdtrace_open_fds gauge",
                ],
                vec![
                    r#"fdtrace_open_fds{pid="42",comm="nginx"} 17"#,
                    r#"fdtrace_open_fds{pid="43",comm="nginx"} 5"#,
                ],
            ),
            (
                vec![
                    "# HELP fdtrace_fd_limit Soft RLIMIT_NOFILE of a traced process: \
                     open fails with EMFILE past it.",
                    "# TYPE fdtrace_fd_limit gauge",
                ],
                vec![r#"fdtrace_fd_limit{pid="42",comm="nginx"} 1024"#],
            ),
            (
                vec![
                    "# HELP fdtrace_site_open_fds Descriptors opened at a site that are open now.",
                    "# TYPE fdtrace_site_open_fds gauge",
                ],
                vec![
                    r#"fdtrace_site_open_fds{comm="nginx",site="open_log (log.c:12)"} 3"#,
                    r#"fdtrace_site_open_fds{comm="nginx",site="other"} 3"#,
                    r#"fdtrace_site_open_fds{comm="nginx",site="read_conf (/tmp/a\"b\\c\nd.c:7)"} 1"#,
                ],
            ),
            (
                vec![
                    "# HELP fdtrace_site_opened Descriptors opened at a site.",
                    "# TYPE fdtrace_site_opened counter",
                ],
                vec![
                    r#"fdtrace_site_opened_total{comm="nginx",site="open_log (log.c:12)"} 10"#,
                    r#"fdtrace_site_opened_total{comm="nginx",site="other"} 5"#,
                    r#"fdtrace_site_opened_total{comm="nginx",site="read_conf (/tmp/a\"b\\c\nd.c:7)"} 1"#,
                ],
            ),
            (
                vec![
                    "# HELP fdtrace_site_closed Descriptors opened at a site that have gone away since.",
                    "# TYPE fdtrace_site_closed counter",
                ],
                vec![
                    r#"fdtrace_site_closed_total{comm="nginx",site="open_log (log.c:12)"} 7"#,
                    r#"fdtrace_site_closed_total{comm="nginx",site="other"} 2"#,
                    r#"fdtrace_site_closed_total{comm="nginx",site="read_conf (/tmp/a\"b\\c\nd.c:7)"} 0"#,
                ],
            ),
            (
                vec![
                    "# HELP fdtrace_emfile Opens that failed with EMFILE because the process \
                     hit its descriptor limit.",
                    "# TYPE fdtrace_emfile counter",
                ],
                vec![r#"fdtrace_emfile_total{comm="nginx",site="open_log (log.c:12)"} 2"#],
            ),
            (
                vec![
                    "# HELP fdtrace_fd_misuse Calls on a descriptor that was not open: \
                     double close, use after close, invalid fd.",
                    "# TYPE fdtrace_fd_misuse counter",
                ],
                vec![
                    r#"fdtrace_fd_misuse_total{comm="nginx",type="double-close"} 1"#,
                    r#"fdtrace_fd_misuse_total{comm="nginx",type="invalid-fd"} 3"#,
                ],
            ),
            (
                vec![
                    "# HELP fdtrace_evicted Entries fdtrace dropped from a full table, \
                     so later counts may be low.",
                    "# TYPE fdtrace_evicted counter",
                ],
                vec![r#"fdtrace_evicted_total{what="stack"} 9"#],
            ),
            (
                vec![
                    "# HELP fdtrace_dropped_events Records the kernel could not hand to \
                     fdtrace because a ring buffer or map was full.",
                    "# TYPE fdtrace_dropped_events counter",
                ],
                vec!["fdtrace_dropped_events_total 6"],
            ),
        ];
        assert_eq!(families, expected);
        assert_eq!(last, "# EOF");
        assert!(text.ends_with("# EOF\n"));
    }
}
