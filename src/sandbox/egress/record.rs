//! Decision records: every connection, request and DNS lookup of a phase, aggregated by
//! what was decided, with a hard cap on distinct records per session.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Distinct records one session keeps; past it, one overflow record per verdict counts
/// the rest, so a chatty phase cannot flood memory or the run's timeline.
pub const MAX_RECORDS: usize = 256;

/// Which phase of a run a session serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PhaseName {
    Setup,
    Agent,
}

impl PhaseName {
    pub fn as_str(self) -> &'static str {
        match self {
            PhaseName::Setup => "setup",
            PhaseName::Agent => "agent",
        }
    }
}

/// How a decision was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// A plain-HTTP request in absolute form to the explicit proxy.
    ProxyHttp,
    /// A `CONNECT host:port` tunnel through the explicit proxy.
    Connect,
    /// A connection that ignored the proxy and was captured by its destination port.
    Captured,
    /// A DNS query to the stub (answered inside, never forwarded).
    Dns,
    /// Everything past [`MAX_RECORDS`] distinct records.
    Overflow,
}

/// One aggregated decision of a phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRecord {
    pub phase: PhaseName,
    pub kind: RecordKind,
    /// The host decided on: a name, or an IP literal when no name was known.
    pub host: String,
    pub port: u16,
    /// The HTTP method when it was visible (plain HTTP only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    pub allowed: bool,
    /// For an allowed decision the rule's host pattern and origin (`api.github.com
    /// (static)`); for a denial the reason (`no rule`, `sni mismatch: …`, `private
    /// upstream: …`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    pub count: u64,
    pub first: DateTime<Utc>,
    pub last: DateTime<Utc>,
    /// Bytes sent to upstreams and received from them, over every connection counted here.
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// The program that opened the first connection counted here, where it could be found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
}

/// What one decision is about; records with equal keys are one record.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RecordKey {
    pub kind: RecordKind,
    pub host: String,
    pub port: u16,
    pub method: Option<String>,
    pub allowed: bool,
    pub rule: Option<String>,
}

/// Byte counters of one record, shared with the connections it counts.
#[derive(Debug, Default)]
pub struct Counters {
    pub up: AtomicU64,
    pub down: AtomicU64,
}

impl Counters {
    pub fn add_up(&self, bytes: usize) {
        self.up.fetch_add(bytes as u64, Ordering::Relaxed);
    }
    pub fn add_down(&self, bytes: usize) {
        self.down.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

struct Entry {
    key: RecordKey,
    count: u64,
    first: DateTime<Utc>,
    last: DateTime<Utc>,
    counters: Arc<Counters>,
    command: Option<String>,
}

/// What [`Ledger::note`] tells its caller.
pub struct Noted {
    /// Where the connection's bytes are counted.
    pub counters: Arc<Counters>,
    /// Set when this is the record's first decision: the slot to give
    /// [`Ledger::set_command`] once the program is found.
    pub new_slot: Option<usize>,
}

/// The records of one session.
pub struct Ledger {
    phase: PhaseName,
    cap: usize,
    entries: Vec<Entry>,
    index: HashMap<RecordKey, usize>,
}

impl Ledger {
    pub fn new(phase: PhaseName) -> Ledger {
        Ledger::with_cap(phase, MAX_RECORDS)
    }

    pub fn with_cap(phase: PhaseName, cap: usize) -> Ledger {
        Ledger { phase, cap, entries: Vec::new(), index: HashMap::new() }
    }

    /// Counts one decision.
    pub fn note(&mut self, key: RecordKey, now: DateTime<Utc>) -> Noted {
        let key = if self.index.contains_key(&key) || self.index.len() < self.cap {
            key
        } else {
            RecordKey {
                kind: RecordKind::Overflow,
                host: "*".to_string(),
                port: 0,
                method: None,
                allowed: key.allowed,
                rule: Some(format!("more than {} distinct records; the rest are only counted", self.cap)),
            }
        };
        if let Some(&slot) = self.index.get(&key) {
            let entry = &mut self.entries[slot];
            entry.count += 1;
            entry.last = entry.last.max(now);
            return Noted { counters: entry.counters.clone(), new_slot: None };
        }
        let slot = self.entries.len();
        let counters = Arc::new(Counters::default());
        self.index.insert(key.clone(), slot);
        self.entries.push(Entry { key, count: 1, first: now, last: now, counters: counters.clone(), command: None });
        Noted { counters, new_slot: Some(slot) }
    }

    pub fn set_command(&mut self, slot: usize, command: String) {
        if let Some(entry) = self.entries.get_mut(slot) {
            entry.command.get_or_insert(command);
        }
    }

    /// The records so far, in the order they were first seen.
    pub fn records(&self) -> Vec<PolicyRecord> {
        self.entries
            .iter()
            .map(|entry| PolicyRecord {
                phase: self.phase,
                kind: entry.key.kind,
                host: entry.key.host.clone(),
                port: entry.key.port,
                method: entry.key.method.clone(),
                allowed: entry.key.allowed,
                rule: entry.key.rule.clone(),
                count: entry.count,
                first: entry.first,
                last: entry.last,
                bytes_up: entry.counters.up.load(Ordering::Relaxed),
                bytes_down: entry.counters.down.load(Ordering::Relaxed),
                command: entry.command.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(host: &str, allowed: bool) -> RecordKey {
        RecordKey {
            kind: RecordKind::Connect,
            host: host.to_string(),
            port: 443,
            method: None,
            allowed,
            rule: Some("no rule".to_string()),
        }
    }

    fn at(second: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + second, 0).unwrap()
    }

    #[test]
    fn equal_decisions_are_one_record() {
        let mut ledger = Ledger::new(PhaseName::Agent);
        assert!(ledger.note(key("a.example", false), at(2)).new_slot.is_some());
        let again = ledger.note(key("a.example", false), at(5));
        assert!(again.new_slot.is_none());
        again.counters.add_up(10);
        again.counters.add_down(20);
        ledger.note(key("a.example", true), at(3));
        let records = ledger.records();
        assert_eq!(records.len(), 2);
        assert_eq!((records[0].count, records[0].first, records[0].last), (2, at(2), at(5)));
        assert_eq!((records[0].bytes_up, records[0].bytes_down), (10, 20));
        assert_eq!(records[0].phase, PhaseName::Agent);
        assert!(records[1].allowed);
    }

    #[test]
    fn a_records_program_is_the_first_one_found_for_its_slot() {
        let mut ledger = Ledger::new(PhaseName::Agent);
        let first = ledger.note(key("a.example", false), at(1)).new_slot.unwrap();
        let second = ledger.note(key("b.example", false), at(2)).new_slot.unwrap();
        ledger.set_command(second, "curl".to_string());
        ledger.set_command(second, "wget".to_string());
        ledger.set_command(99, "ghost".to_string());
        let records = ledger.records();
        assert_eq!(records[first].command, None);
        assert_eq!(records[second].command.as_deref(), Some("curl"));
    }

    #[test]
    fn past_the_cap_decisions_are_counted_in_one_record_per_verdict() {
        let mut ledger = Ledger::with_cap(PhaseName::Setup, 3);
        for i in 0..10 {
            ledger.note(key(&format!("h{i}.example"), i % 2 == 0), at(i));
        }
        ledger.note(key("h1.example", false), at(20));
        let records = ledger.records();
        assert_eq!(records.len(), 5);
        let overflow: Vec<_> = records.iter().filter(|r| r.kind == RecordKind::Overflow).collect();
        assert_eq!(overflow.iter().map(|r| r.count).sum::<u64>(), 7);
        assert_eq!(records.iter().find(|r| r.host == "h1.example").unwrap().count, 2, "a known record still counts");
    }
}
