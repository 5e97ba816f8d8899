//! nightshift: an event-driven automation engine for AI coding agents.
//!
//! Reading order: `config` (the automation file format and its diagnostics), `triggers`
//! (each source's config, payload normalization and filters), `event` (what a source
//! received), `netpolicy` (egress rules), `rules` (the rhai engine, templates, rendering),
//! `task` (the rendered result), `worker` (where a run does its work: repository mirrors,
//! per-run workspaces and phases run as child processes), `catalog` (loading a directory
//! of automations), `selftest` (the `tests:` blocks), and `cli` (the `nightshift`
//! command).

pub mod auth;
pub mod board;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod event;
pub mod http;
pub mod intake;
pub mod metrics;
pub mod netpolicy;
pub mod parallel;
pub mod pipeline;
pub mod rules;
pub mod runs;
pub mod sandbox;
pub mod scheduler;
pub mod selftest;
pub mod server;
pub mod store;
pub mod task;
pub mod triggers;
pub mod worker;
