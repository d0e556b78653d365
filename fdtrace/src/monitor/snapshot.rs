//! Export stage of `fdtrace monitor`: what the metrics endpoint serves, as
//! plain data. The monitor loop builds a fresh [`Snapshot`] from its state
//! every tick; the endpoint encodes the latest one on each scrape, so a
//! scrape never waits on tracing and tracing never waits on a scrape.

/// One traced process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessSample {
    pub pid: u32,
    pub comm: String,
    /// Descriptors open now (as far as fdtrace tracks them).
    pub open_fds: u64,
    /// RLIMIT_NOFILE soft limit, if known.
    pub fd_limit: Option<u64>,
}

/// One opening site of one program: `site` is the innermost user frame,
/// `function (file:line)`, or `other` for the sites past `--sites`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SiteSample {
    pub comm: String,
    pub site: String,
    /// Descriptors opened there and open now.
    pub open_fds: u64,
    /// Descriptors ever opened there (counter).
    pub opened: u64,
    /// Descriptors opened there that went away since (counter).
    pub closed: u64,
}

/// A counter with labels, e.g. EMFILE failures by (comm, site).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counted {
    pub labels: Vec<(&'static str, String)>,
    pub value: u64,
}

/// Everything `/metrics` says, at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub processes: Vec<ProcessSample>,
    pub sites: Vec<SiteSample>,
    /// `fdtrace_emfile_total`, labels `comm`, `site`.
    pub emfile: Vec<Counted>,
    /// `fdtrace_fd_misuse_total`, labels `comm`, `type`.
    pub misuse: Vec<Counted>,
    /// `fdtrace_evicted_total`, label `what` (`fd`, `stack`, `process`).
    pub evicted: Vec<Counted>,
    /// Records the kernel could not hand over (ring full, maps full).
    pub dropped_events: u64,
    /// Processes traced now.
    pub traced_processes: u64,
}
