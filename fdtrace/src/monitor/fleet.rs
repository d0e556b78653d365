//! Aggregation stage of `monitor`: turns the fd table of every traced
//! process into per-program, per-site counts, and those into a
//! [`Snapshot`].
//!
//! A site is the innermost user frame of the stack a descriptor was
//! opened at; descriptors 0, 1 and 2 have none (a shell or a spawner set
//! them up for the program, as its own). `opened` counts what each (program, site) came to hold:
//! creations, a fork's copies, what crossed an exec. `closed` is what of
//! that went away since, so `opened - closed` is exactly what is open now;
//! both only ever grow, also across a site entering or leaving the top
//! `--sites`. Memory is bounded: exited processes are forgotten at once,
//! a program's counts some minutes after its last process went, stacks
//! nothing refers to are freed, and past `--max-fds` the process holding
//! most is no longer traced.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use hashbrown::{HashMap, HashSet};

use super::snapshot::{Counted, ProcessSample, SiteSample, Snapshot};
use crate::{
    fd_table::{FdTable, Origin, is_standard_stream},
    report::site_name,
    stacks::{StackId, Stacks, symbolize::Symbols},
    tracer::{Opened, Tracer},
};

/// The site of descriptors created without a stack sample.
const NO_STACK: &str = "unknown";
/// The site past the top `--sites` of a program.
const OTHER: &str = "other";
/// How long a program's counts outlive its last process: a program run
/// now and then (a cron job) keeps its counters rather than restarting
/// them at every run.
const PROGRAM_GRACE: Duration = Duration::from_secs(600);

/// Bounds on what the monitor keeps.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Sites named per program; the rest are summed as `other`.
    pub sites: usize,
    /// Descriptors tracked across all processes.
    pub max_fds: usize,
    /// Distinct stacks kept.
    pub max_stacks: usize,
}

type Key = (Arc<str>, Arc<str>);
/// A program's sites: (site, open now, counts).
type SiteRows = Vec<(Arc<str>, u64, Count)>;

#[derive(Clone, Copy, Debug, Default)]
struct Count {
    opened: u64,
    closed: u64,
}

/// Everything the monitor counts besides the fd table.
#[derive(Default)]
pub struct Fleet {
    limits: Option<Limits>,
    /// Site name of each interned stack seen.
    names: HashMap<StackId, Arc<str>>,
    /// Exact counts by (program, site).
    counts: HashMap<Key, Count>,
    /// What was last exported by (program, site-or-other): counters
    /// never go back, even when a site moves in or out of `other`.
    exported: HashMap<Key, Count>,
    emfile: HashMap<Key, u64>,
    misuse: HashMap<(Arc<str>, &'static str), u64>,
    /// When each program last had a traced process (or counted anything).
    programs: HashMap<Arc<str>, Instant>,
    pub evicted_fds: u64,
    pub evicted_processes: u64,
    /// Processes evicted and still alive: not picked again.
    pub evicted: HashSet<u32>,
}

impl Fleet {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits: Some(limits),
            ..Self::default()
        }
    }

    fn limits(&self) -> Limits {
        self.limits.unwrap_or(Limits {
            sites: 20,
            max_fds: usize::MAX,
            max_stacks: usize::MAX,
        })
    }

    /// Takes what the tracer saw since last time into the counts; forgets
    /// exited processes and what nothing refers to; returns the processes
    /// to stop tracing because the table is over `--max-fds`.
    pub fn update(&mut self, tracer: &mut Tracer) -> Vec<u32> {
        let opened = tracer.take_opened();
        let (table, stacks, symbols) = tracer.parts();
        self.count_opened(&opened, stacks, symbols);
        let findings = table.take_findings();
        let failed: Vec<StackId> = findings
            .exhaustions
            .iter()
            .filter_map(|e| e.stack.and_then(|r| stacks.resolve(r)))
            .collect();
        self.name_all(failed.into_iter(), stacks, symbols);
        let now = Instant::now();
        for e in &findings.exhaustions {
            let comm = comm_of(table, e.tgid);
            self.programs.insert(comm.clone(), now);
            let site = e.stack.and_then(|r| stacks.resolve(r));
            let site = self.site(site, stacks, symbols);
            *self.emfile.entry((comm, site)).or_default() += 1;
        }
        for m in &findings.misuses {
            let comm = comm_of(table, m.tgid);
            self.programs.insert(comm.clone(), now);
            *self.misuse.entry((comm, m.kind.name())).or_default() += 1;
        }
        for r in findings.released {
            stacks.release(r);
        }
        table.forget_exited();
        if stacks.interned_count() >= self.limits().max_stacks {
            let freed = stacks.sweep();
            symbols.forget(&freed);
            let freed: HashSet<StackId> = freed.into_iter().collect();
            self.names.retain(|id, _| !freed.contains(id));
        }
        let evict = self.over_max_fds(&tracer.table);
        for &tgid in &evict {
            tracer.drop_process(tgid);
        }
        evict
    }

    fn count_opened(&mut self, opened: &[Opened], stacks: &Stacks, symbols: &mut Symbols) {
        self.name_all(opened.iter().filter_map(|o| o.stack), stacks, symbols);
        let now = Instant::now();
        for o in opened {
            let comm = o.comm.clone();
            // Seen now, even if it exits before the next snapshot.
            self.programs.insert(comm.clone(), now);
            let site = self.site(o.stack, stacks, symbols);
            self.counts.entry((comm, site)).or_default().opened += u64::from(o.count);
        }
    }

    /// Names the stacks not named yet, symbolizing them in one batch.
    fn name_all(
        &mut self,
        ids: impl Iterator<Item = StackId>,
        stacks: &Stacks,
        symbols: &mut Symbols,
    ) {
        let mut missing: Vec<StackId> = ids.filter(|id| !self.names.contains_key(id)).collect();
        if missing.is_empty() {
            return;
        }
        missing.sort_unstable();
        missing.dedup();
        symbols.ensure(stacks, &missing);
        for id in missing {
            let name: Arc<str> =
                site_name(symbols.frames(id).to_vec()).map_or_else(|| Arc::from(OTHER), Arc::from);
            self.names.insert(id, name);
        }
    }

    /// The site name of a stack, symbolizing it the first time.
    fn site(&mut self, stack: Option<StackId>, stacks: &Stacks, symbols: &mut Symbols) -> Arc<str> {
        let Some(id) = stack else {
            return Arc::from(NO_STACK);
        };
        self.name_all(std::iter::once(id), stacks, symbols);
        self.names
            .get(&id)
            .cloned()
            .unwrap_or_else(|| Arc::from(OTHER))
    }

    /// The processes to stop tracing, largest first, so the table holds
    /// at most `--max-fds` descriptors.
    fn over_max_fds(&mut self, table: &FdTable) -> Vec<u32> {
        let max = self.limits().max_fds;
        let mut total: usize = table.processes.values().map(|p| p.fds.len()).sum();
        if total <= max {
            return Vec::new();
        }
        let mut by_size: Vec<(usize, u32)> = table
            .processes
            .values()
            .map(|p| (p.fds.len(), p.tgid))
            .collect();
        by_size.sort_unstable_by(|a, b| b.cmp(a));
        let mut evict = Vec::new();
        for (fds, tgid) in by_size {
            if total <= max {
                break;
            }
            total -= fds;
            self.evicted_fds += fds as u64;
            self.evicted_processes += 1;
            self.evicted.insert(tgid);
            evict.push(tgid);
        }
        evict
    }

    /// What `/metrics` says now.
    pub fn snapshot(&mut self, tracer: &mut Tracer, dropped_events: u64) -> Snapshot {
        let now = Instant::now();
        let (table, stacks, symbols) = tracer.parts();
        let mut processes = Vec::new();
        let mut open: HashMap<Key, u64> = HashMap::new();
        for p in table.processes.values() {
            let comm: Arc<str> = Arc::from(p.comm.as_str());
            self.programs.insert(comm.clone(), now);
            processes.push(ProcessSample {
                pid: p.tgid,
                comm: p.comm.clone(),
                open_fds: p.fds.len() as u64,
                fd_limit: p.rlimit.map(|(soft, _)| soft),
            });
            for (&fd, f) in &p.fds {
                let Origin::Created { stack, .. } = f.origin else {
                    continue;
                };
                if is_standard_stream(fd) {
                    continue;
                };
                let id = stack.and_then(|r| stacks.resolve(r));
                let site = self.site(id, stacks, symbols);
                *open.entry((comm.clone(), site)).or_default() += 1;
            }
        }
        processes.sort_unstable_by_key(|p| p.pid);
        self.programs
            .retain(|_, seen| now.duration_since(*seen) < PROGRAM_GRACE);
        let programs = &self.programs;
        self.counts
            .retain(|(comm, _), _| programs.contains_key(comm));
        self.exported
            .retain(|(comm, _), _| programs.contains_key(comm));
        self.emfile
            .retain(|(comm, _), _| programs.contains_key(comm));
        self.misuse
            .retain(|(comm, _), _| programs.contains_key(comm));
        for (key, count) in &mut self.counts {
            let now_open = open.get(key).copied().unwrap_or(0);
            count.closed = count.closed.max(count.opened.saturating_sub(now_open));
        }
        let sites = self.sites(&open);
        let traced_processes = processes.len() as u64;
        Snapshot {
            processes,
            sites,
            emfile: counted(&self.emfile, "site"),
            misuse: self
                .misuse
                .iter()
                .map(|((comm, kind), &value)| Counted {
                    labels: vec![("comm", comm.to_string()), ("type", (*kind).to_owned())],
                    value,
                })
                .collect(),
            evicted: vec![
                Counted {
                    labels: vec![("what", "fd".to_owned())],
                    value: self.evicted_fds,
                },
                Counted {
                    labels: vec![("what", "process".to_owned())],
                    value: self.evicted_processes,
                },
                Counted {
                    labels: vec![("what", "stack".to_owned())],
                    value: tracer.stacks.overflowed,
                },
            ],
            dropped_events,
            traced_processes,
        }
    }

    /// The top `--sites` of each program by open descriptors (then by
    /// opened), the rest summed as `other`, counters kept monotonic.
    fn sites(&mut self, open: &HashMap<Key, u64>) -> Vec<SiteSample> {
        let mut by_program: HashMap<Arc<str>, SiteRows> = HashMap::new();
        for ((comm, site), count) in &self.counts {
            let now_open = open
                .get(&(comm.clone(), site.clone()))
                .copied()
                .unwrap_or(0);
            by_program
                .entry(comm.clone())
                .or_default()
                .push((site.clone(), now_open, *count));
        }
        let top = self.limits().sites;
        let mut out = Vec::new();
        for (comm, mut sites) in by_program {
            sites.sort_unstable_by(|a, b| (b.1, b.2.opened, &a.0).cmp(&(a.1, a.2.opened, &b.0)));
            let mut rest = (0, Count::default(), false);
            for (rank, (site, now_open, count)) in sites.into_iter().enumerate() {
                if rank < top && &*site != OTHER {
                    out.push(self.export(&comm, site, now_open, count));
                } else {
                    rest.0 += now_open;
                    rest.1.opened += count.opened;
                    rest.1.closed += count.closed;
                    rest.2 = true;
                }
            }
            if rest.2 {
                out.push(self.export(&comm, Arc::from(OTHER), rest.0, rest.1));
            }
        }
        out.sort_unstable_by(|a, b| (&a.comm, &a.site).cmp(&(&b.comm, &b.site)));
        out
    }

    /// One exported site; its counters are at least what was exported
    /// before, and `closed` never exceeds `opened`.
    fn export(&mut self, comm: &Arc<str>, site: Arc<str>, open: u64, count: Count) -> SiteSample {
        let last = self
            .exported
            .entry((comm.clone(), site.clone()))
            .or_default();
        last.opened = last.opened.max(count.opened);
        last.closed = last.closed.max(count.closed).min(last.opened);
        SiteSample {
            comm: comm.to_string(),
            site: site.to_string(),
            open_fds: open,
            opened: last.opened,
            closed: last.closed,
        }
    }
}

fn comm_of(table: &FdTable, tgid: u32) -> Arc<str> {
    Arc::from(table.processes.get(&tgid).map_or("", |p| p.comm.as_str()))
}

fn counted(map: &HashMap<Key, u64>, second: &'static str) -> Vec<Counted> {
    let mut out: Vec<Counted> = map
        .iter()
        .map(|((comm, label), &value)| Counted {
            labels: vec![("comm", comm.to_string()), (second, label.to_string())],
            value,
        })
        .collect();
    out.sort_unstable_by(|a, b| a.labels.cmp(&b.labels));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(comm: &str, site: &str) -> Key {
        (Arc::from(comm), Arc::from(site))
    }

    fn fleet(sites: usize) -> Fleet {
        Fleet::new(Limits {
            sites,
            max_fds: usize::MAX,
            max_stacks: usize::MAX,
        })
    }

    fn rows(out: &[SiteSample]) -> Vec<(&str, &str, u64, u64, u64)> {
        out.iter()
            .map(|s| (&*s.comm, &*s.site, s.open_fds, s.opened, s.closed))
            .collect()
    }

    /// Sets exact counts as `snapshot` would: closed = opened - open.
    fn counts(f: &mut Fleet, open: &HashMap<Key, u64>, opened: &[(&str, &str, u64)]) {
        for &(comm, site, n) in opened {
            let count = f.counts.entry(key(comm, site)).or_default();
            count.opened = n;
            let now_open = open.get(&key(comm, site)).copied().unwrap_or(0);
            count.closed = count.closed.max(n - now_open);
        }
    }

    #[test]
    fn the_top_sites_are_named_and_the_rest_summed_as_other() {
        let mut f = fleet(2);
        let open: HashMap<Key, u64> = [
            (key("svc", "leak (a.c:1)"), 50),
            (key("svc", "pool (a.c:2)"), 10),
            (key("svc", "churn (a.c:3)"), 0),
            (key("svc", "log (a.c:4)"), 1),
        ]
        .into_iter()
        .collect();
        counts(
            &mut f,
            &open,
            &[
                ("svc", "leak (a.c:1)", 50),
                ("svc", "pool (a.c:2)", 10),
                ("svc", "churn (a.c:3)", 9000),
                ("svc", "log (a.c:4)", 3),
            ],
        );
        assert_eq!(
            rows(&f.sites(&open)),
            vec![
                ("svc", "leak (a.c:1)", 50, 50, 0),
                ("svc", "other", 1, 9003, 9002),
                ("svc", "pool (a.c:2)", 10, 10, 0),
            ]
        );
    }

    #[test]
    fn counters_never_go_back_when_a_site_changes_rank() {
        let mut f = fleet(1);
        let mut open: HashMap<Key, u64> = [(key("svc", "a"), 5), (key("svc", "b"), 1)]
            .into_iter()
            .collect();
        counts(&mut f, &open, &[("svc", "a", 5), ("svc", "b", 100)]);
        let first = f.sites(&open);
        assert_eq!(
            rows(&first),
            vec![("svc", "a", 5, 5, 0), ("svc", "other", 1, 100, 99)]
        );
        // b overtakes a: a's counts move into other, b's out of it.
        open.insert(key("svc", "b"), 20);
        counts(&mut f, &open, &[("svc", "a", 5), ("svc", "b", 119)]);
        let second = f.sites(&open);
        assert_eq!(
            rows(&second),
            vec![("svc", "b", 20, 119, 99), ("svc", "other", 5, 100, 99)]
        );
        // other's opened stays at its highest (100 > a's 5), closed too.
        assert!(second[1].opened >= first[1].opened);
        assert!(second[1].closed >= first[1].closed);
    }

    #[test]
    fn programs_are_kept_apart() {
        let mut f = fleet(20);
        let open: HashMap<Key, u64> = [(key("a", "s"), 2), (key("b", "s"), 3)]
            .into_iter()
            .collect();
        counts(&mut f, &open, &[("a", "s", 2), ("b", "s", 4)]);
        assert_eq!(
            rows(&f.sites(&open)),
            vec![("a", "s", 2, 2, 0), ("b", "s", 3, 4, 1)]
        );
    }
}
