//! A run's log as it is streamed to the engine: lines are sent in pieces while the run
//! goes, up to a bound; past it only the most recent lines are kept, and they are sent
//! at the end after a `[… N bytes cut …]` marker. So the log of a run never exceeds its
//! bound (plus the marker), and it keeps both the start and the end of what happened.

use std::collections::VecDeque;

/// Of the bound, the share kept from the end once the log is cut.
const TAIL_SHARE: usize = 4;

#[derive(Debug)]
pub struct RunLog {
    limit: usize,
    /// Bytes accepted into the streamed head (sent or pending).
    head_bytes: usize,
    /// Text accepted but not yet sent.
    pending: String,
    /// Once the head is full: the latest lines, at most `limit / TAIL_SHARE` bytes.
    tail: VecDeque<String>,
    tail_bytes: usize,
    cut_bytes: usize,
}

impl RunLog {
    /// A log of at most about `limit` bytes.
    pub fn new(limit: usize) -> RunLog {
        RunLog { limit, head_bytes: 0, pending: String::new(), tail: VecDeque::new(), tail_bytes: 0, cut_bytes: 0 }
    }

    /// Adds one line (its newline is added here).
    pub fn push(&mut self, line: &str) {
        let size = line.len() + 1;
        let head_limit = self.limit - self.limit / TAIL_SHARE;
        if self.tail.is_empty() && self.head_bytes + size <= head_limit {
            self.head_bytes += size;
            self.pending.push_str(line);
            self.pending.push('\n');
            return;
        }
        let tail_limit = self.limit / TAIL_SHARE;
        if size > tail_limit {
            self.cut_bytes += size;
            return;
        }
        self.tail.push_back(line.to_string());
        self.tail_bytes += size;
        while self.tail_bytes > tail_limit {
            let Some(dropped) = self.tail.pop_front() else { break };
            self.tail_bytes -= dropped.len() + 1;
            self.cut_bytes += dropped.len() + 1;
        }
    }

    /// How much text waits to be sent.
    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
    }

    /// The text to send now; `None` when there is nothing new.
    pub fn take_pending(&mut self) -> Option<String> {
        (!self.pending.is_empty()).then(|| std::mem::take(&mut self.pending))
    }

    /// The rest, once the run's phases are over: what is pending, then the cut marker and
    /// the kept tail.
    pub fn finish(&mut self) -> Option<String> {
        let mut rest = std::mem::take(&mut self.pending);
        if self.cut_bytes > 0 {
            rest.push_str(&format!("[… {} bytes cut …]\n", self.cut_bytes));
        }
        for line in self.tail.drain(..) {
            rest.push_str(&line);
            rest.push('\n');
        }
        self.tail_bytes = 0;
        self.cut_bytes = 0;
        (!rest.is_empty()).then_some(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_log_is_streamed_whole() {
        let mut log = RunLog::new(1000);
        log.push("one");
        assert_eq!(log.take_pending().as_deref(), Some("one\n"));
        log.push("two");
        assert_eq!(log.finish().as_deref(), Some("two\n"));
        assert_eq!(log.finish(), None);
    }

    #[test]
    fn a_long_log_keeps_its_start_and_end_and_counts_the_cut() {
        let mut log = RunLog::new(100);
        let mut sent = String::new();
        for i in 0..100 {
            log.push(&format!("line {i:03}"));
            sent.extend(log.take_pending());
        }
        sent.extend(log.finish());
        assert!(sent.starts_with("line 000\nline 001\n"), "{sent}");
        assert!(sent.ends_with("line 098\nline 099\n"), "{sent}");
        let marker = sent.lines().find(|l| l.starts_with("[…")).expect("a cut marker");
        let cut: usize = marker.split(' ').nth(1).unwrap().parse().unwrap();
        let kept = sent.lines().filter(|l| l.starts_with("line")).count();
        assert_eq!(kept * 9 + cut, 100 * 9, "every byte is either kept or counted as cut");
        assert!(sent.len() <= 100 + marker.len() + 1, "{} bytes", sent.len());
    }
}
