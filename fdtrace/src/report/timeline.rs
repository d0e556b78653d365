//! Report stage: descriptors open over time, per process, as the HTML
//! report draws them. Built by replaying a recorded trace
//! (`record::replay`); plain data, serialized into the page for its
//! script.

use serde::Serialize;

/// Open descriptors over time for every process worth drawing.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Timeline {
    /// From the first event of the trace to its end.
    pub duration_ms: f64,
    /// Processes with the highest peak first.
    pub processes: Vec<ProcessTimeline>,
    /// Processes left out (only the highest peaks are drawn).
    pub more_processes: usize,
}

/// One process's open descriptors over time.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct ProcessTimeline {
    pub pid: u32,
    pub comm: String,
    /// RLIMIT_NOFILE soft limit, if known and not unlimited.
    pub soft_limit: Option<u64>,
    /// The most descriptors it ever had open at once (exact: never
    /// downsampled).
    pub peak: usize,
    /// When the peak was first reached, from the start of the trace.
    pub peak_ms: f64,
    /// The stacks drawn under the total, biggest first.
    pub stacks: Vec<TimelineStack>,
    /// Samples in time order. `open` is the most the process had open
    /// within the sample's span (so peaks survive downsampling); the
    /// per-stack counts are as they were at `t_ms`.
    pub points: Vec<TimelinePoint>,
    /// EMFILE failures and execs, where they happened.
    pub marks: Vec<Mark>,
}

/// A stack drawn in a timeline.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct TimelineStack {
    /// The report's stack id (see `Report::groups` / `Report::group`);
    /// `None` for descriptors whose stack is unknown.
    pub stack_id: Option<u32>,
    /// Its innermost user frame, `function (file:line)`.
    pub label: String,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TimelinePoint {
    /// Milliseconds since the start of the trace.
    pub t_ms: f64,
    pub open: usize,
    /// Open descriptors per stack, in the order of
    /// [`ProcessTimeline::stacks`]. What the stacks don't cover (descriptors
    /// open before tracing began, smaller stacks) is `open - sum`.
    pub by_stack: Vec<usize>,
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MarkKind {
    /// A call failed with EMFILE or ENFILE.
    Emfile,
    /// The process ran a new program.
    Exec,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Mark {
    pub t_ms: f64,
    pub kind: MarkKind,
    /// What happened: `openat failed with EMFILE`, `exec /bin/true`.
    pub label: String,
    /// For an EMFILE mark, its index in `Report::emfile`.
    pub emfile: Option<usize>,
}
