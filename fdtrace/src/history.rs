//! Lifetime model, over time: how many descriptors a process had open,
//! kept in a bounded number of buckets whatever the trace's length (full,
//! neighbours merge and each bucket spans twice the time). Pure and
//! deterministic: the same events give the same history, live or replayed
//! from a trace file.

/// Buckets kept at most; what the text report's sparkline shows.
pub const BUCKETS: usize = 48;
/// The first buckets span a millisecond.
const FIRST_SPAN_NS: u64 = 1_000_000;

/// The most descriptors open in each span of time since the first event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenHistory {
    start_ns: u64,
    span_ns: u64,
    /// Most open within each bucket, oldest first.
    most: Vec<u32>,
    /// Open after the last change.
    current: u32,
}

impl OpenHistory {
    /// `open` descriptors after something happened at `ts_ns`.
    pub fn observe(&mut self, ts_ns: u64, open: usize) {
        let open = u32::try_from(open).unwrap_or(u32::MAX);
        if self.most.is_empty() {
            self.start_ns = ts_ns;
            self.span_ns = FIRST_SPAN_NS;
        }
        // A creation claimed late can be older than the first event seen.
        let offset = ts_ns.saturating_sub(self.start_ns);
        let mut index = offset / self.span_ns;
        while index >= BUCKETS as u64 {
            self.most = self
                .most
                .chunks(2)
                .map(|pair| pair.iter().copied().max().unwrap_or(0))
                .collect();
            self.span_ns *= 2;
            index = offset / self.span_ns;
        }
        let index = usize::try_from(index).unwrap_or(BUCKETS - 1);
        // Buckets without a change held what was open before.
        while self.most.len() <= index {
            self.most.push(self.current);
        }
        self.most[index] = self.most[index].max(open);
        self.current = open;
    }

    /// Most open per bucket, oldest first.
    pub fn buckets(&self) -> &[u32] {
        &self.most
    }

    /// How long the history covers, in milliseconds.
    pub fn span_ms(&self) -> u64 {
        self.span_ns.saturating_mul(self.most.len() as u64) / 1_000_000
    }
}

/// `▁▂▃▄▅▆▇█` for each value, scaled from 0 to the largest.
pub fn sparkline(values: &[u32]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let top = values.iter().copied().max().unwrap_or(0).max(1);
    values
        .iter()
        .map(|&v| {
            let level = u64::from(v) * 7 / u64::from(top);
            BARS[usize::try_from(level).unwrap_or(7).min(7)]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_keep_the_peak_and_stay_bounded() {
        let mut h = OpenHistory::default();
        h.observe(0, 3);
        h.observe(2_000_000, 10);
        h.observe(2_500_000, 4);
        assert_eq!(h.buckets(), [3, 3, 10]);
        // Ten seconds later: merged until it fits, the peak kept.
        h.observe(10_000_000_000, 1);
        assert!(h.buckets().len() <= BUCKETS);
        assert_eq!(h.buckets().iter().max(), Some(&10));
        assert_eq!(h.buckets().last(), Some(&4).max(h.buckets().last()));
        assert!(h.span_ms() >= 10_000);
    }

    #[test]
    fn sparkline_scales_to_the_peak() {
        assert_eq!(sparkline(&[0, 1, 2, 4, 8]), "▁▁▂▄█");
        assert_eq!(sparkline(&[5, 5]), "██");
        assert_eq!(sparkline(&[]), "");
    }
}
