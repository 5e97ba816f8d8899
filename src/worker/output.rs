//! Output adapters: an agent's stdout, one line at a time, turned into run activities,
//! and the agent's final message kept as the run's summary.
//!
//! Every line is only a candidate: a line the adapter does not understand (plain text,
//! malformed JSON, an event type it does not know) yields no activity and is not an
//! error, because agents add events between releases. The phase runner keeps every line
//! in the log regardless. Activity texts are cut to `MAX_TEXT` bytes, the summary to
//! `MAX_SUMMARY`, both ending in `TRUNCATED` when cut; `data` larger than `MAX_DATA` when
//! serialized is replaced by `{"truncated":true}`.
//!
//! - `generic`: a JSON object with a string `type` (`plan`, `thought`, `action`,
//!   `progress`, `url`, `completion`, `failure`) and a string `text` is that activity,
//!   with its `data` if any. `{"type":"summary","text":...}` and `completion` lines set
//!   the summary (the latest wins); without either, the last non-empty line that is not
//!   JSON is the summary.
//! - `codex_jsonl`: `codex exec --json`, the `ThreadEvent` shapes of
//!   `codex-rs/exec/src/exec_events.rs` in openai/codex (read at commit 08a1f30c,
//!   <https://github.com/openai/codex/blob/main/codex-rs/exec/src/exec_events.rs>):
//!   `item.{started,updated,completed}` carry an `item` with `id` and `type`.
//!   `reasoning` → thought; `agent_message` → progress, and the last one is the summary;
//!   `command_execution`, `mcp_tool_call`, `web_search` and `file_change` → action, once
//!   (at `item.started`, or at `item.completed` when no start was seen); `todo_list` and
//!   `plan` → plan, when the text changed; an `error` item is non-fatal and becomes
//!   progress. `turn.completed` → completion; `turn.failed` and the top-level `error` →
//!   failure. `thread.started` and `turn.started` carry nothing for the timeline.
//! - `claude_stream_json`: `claude -p --output-format stream-json --verbose`, the Agent
//!   SDK message stream (<https://code.claude.com/docs/en/agent-sdk/agent-loop>, the
//!   event cheatsheet at
//!   <https://takopi.banteg.xyz/reference/runners/claude/stream-json-cheatsheet>):
//!   `system` (init) → `assistant`/`user` turns → `result`. Blocks of
//!   `assistant.message.content`: `thinking` → thought; `text` → progress; `tool_use` →
//!   action (`TodoWrite` and `ExitPlanMode` → plan). `user` tool results are only log.
//!   `result` → completion, or failure when `is_error` is true or `subtype` is not
//!   `success` (`error_max_turns`, `error_during_execution`, ...); its `result` string
//!   is the summary, else the last assistant text is.

use std::collections::HashSet;

use serde_json::{Value, json};

use crate::config::OutputFormat;
use crate::runs::{ActivityKind, NewActivity};

/// The most bytes an activity's text keeps.
pub const MAX_TEXT: usize = 4 * 1024;

/// The most bytes the summary keeps.
pub const MAX_SUMMARY: usize = 16 * 1024;

/// The most bytes an activity's `data` may take as JSON before it is dropped.
pub const MAX_DATA: usize = 16 * 1024;

/// What ends a text that was cut.
pub const TRUNCATED: &str = " … [truncated]";

/// The most bytes of a tool's input shown in an action's text.
const MAX_INPUT: usize = 200;

/// Tool input fields that say best what a call does, in order of preference.
const INPUT_KEYS: [&str; 8] = ["command", "file_path", "path", "pattern", "url", "query", "description", "prompt"];

/// What the agent said about its run as a whole, once its output has ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentReport {
    /// The agent's final message, at most `MAX_SUMMARY` bytes.
    pub summary: Option<String>,
    /// Whether the agent reported that it failed (a generic `failure`, Codex
    /// `turn.failed`, a Claude `result` that is an error). The phase's exit status is
    /// judged separately.
    pub failed: bool,
}

/// Reads one agent's stdout for one phase.
#[derive(Debug)]
pub struct OutputAdapter {
    format: OutputFormat,
    /// The final message as the agent declared it.
    summary: Option<String>,
    /// The summary when none was declared.
    fallback: Option<String>,
    failed: bool,
    /// Codex items already announced at `item.started`.
    started: HashSet<String>,
    /// The last plan emitted, so an unchanged to-do list is not repeated.
    plan: Option<String>,
}

/// Where a Codex item is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Started,
    Updated,
    Completed,
}

impl OutputAdapter {
    pub fn new(format: OutputFormat) -> OutputAdapter {
        OutputAdapter { format, summary: None, fallback: None, failed: false, started: HashSet::new(), plan: None }
    }

    /// The activities one line of stdout stands for, in order; usually none or one.
    pub fn line(&mut self, line: &str) -> Vec<NewActivity> {
        let mut out = Vec::new();
        let line = line.trim();
        if line.is_empty() {
            return out;
        }
        match self.format {
            OutputFormat::Generic => self.generic(line, &mut out),
            OutputFormat::CodexJsonl => {
                if let Ok(event) = serde_json::from_str::<Value>(line) {
                    self.codex(&event, &mut out);
                }
            }
            OutputFormat::ClaudeStreamJson => {
                if let Ok(event) = serde_json::from_str::<Value>(line) {
                    self.claude(&event, &mut out);
                }
            }
        }
        out
    }

    /// The report, once stdout has ended.
    pub fn finish(self) -> AgentReport {
        AgentReport { summary: self.summary.or(self.fallback), failed: self.failed }
    }

    fn declare_summary(&mut self, text: &str) {
        self.summary = Some(bounded(text, MAX_SUMMARY));
    }

    /// Emits a plan unless it repeats the last one.
    fn plan(&mut self, text: String, out: &mut Vec<NewActivity>) {
        if text.trim().is_empty() || self.plan.as_deref() == Some(text.as_str()) {
            return;
        }
        push(out, ActivityKind::Plan, &text, Value::Null);
        self.plan = Some(text);
    }

    fn generic(&mut self, line: &str, out: &mut Vec<NewActivity>) {
        let Ok(value) = serde_json::from_str::<Value>(line) else {
            self.fallback = Some(bounded(line, MAX_SUMMARY));
            return;
        };
        let (Some(kind), Some(text)) = (str_at(&value, "type"), str_at(&value, "text")) else { return };
        if kind == "summary" {
            self.declare_summary(text);
            return;
        }
        let Some(kind) = generic_kind(kind) else { return };
        match kind {
            ActivityKind::Completion => self.declare_summary(text),
            ActivityKind::Failure => self.failed = true,
            _ => {}
        }
        push(out, kind, text, value.get("data").cloned().unwrap_or(Value::Null));
    }

    fn codex(&mut self, event: &Value, out: &mut Vec<NewActivity>) {
        let stage = match str_at(event, "type") {
            Some("item.started") => Stage::Started,
            Some("item.updated") => Stage::Updated,
            Some("item.completed") => Stage::Completed,
            Some("turn.completed") => {
                let data = event.get("usage").map_or(Value::Null, |usage| json!({ "usage": usage }));
                push(out, ActivityKind::Completion, "turn completed", data);
                return;
            }
            Some("turn.failed") => {
                self.failed = true;
                let message = event.get("error").and_then(|error| str_at(error, "message"));
                push(out, ActivityKind::Failure, message.unwrap_or("turn failed"), Value::Null);
                return;
            }
            Some("error") => {
                push(out, ActivityKind::Failure, str_at(event, "message").unwrap_or("error"), Value::Null);
                return;
            }
            _ => return,
        };
        if let Some(item) = event.get("item") {
            self.codex_item(stage, item, out);
        }
    }

    fn codex_item(&mut self, stage: Stage, item: &Value, out: &mut Vec<NewActivity>) {
        let kind = str_at(item, "type").unwrap_or_default();
        if kind == "todo_list" {
            self.plan(codex_todos(item), out);
            return;
        }
        if stage == Stage::Updated {
            return;
        }
        let completed = stage == Stage::Completed;
        let text = |key| str_at(item, key).unwrap_or_default();
        match kind {
            "reasoning" if completed => push(out, ActivityKind::Thought, text("text"), Value::Null),
            "agent_message" if completed => {
                self.declare_summary(text("text"));
                push(out, ActivityKind::Progress, text("text"), Value::Null);
            }
            "plan" if completed => self.plan(text("text").to_string(), out),
            "error" if completed => {
                push(out, ActivityKind::Progress, &format!("error: {}", text("message")), Value::Null)
            }
            "command_execution" | "mcp_tool_call" | "web_search" | "file_change"
                if self.announce(stage, text("id")) =>
            {
                let (text, data) = codex_call(kind, item);
                push(out, ActivityKind::Action, &text, data);
            }
            _ => {}
        }
    }

    /// Whether a call is shown now: at its start, or at its end when its start was not
    /// seen (Codex reports file changes only once they are done).
    fn announce(&mut self, stage: Stage, id: &str) -> bool {
        match stage {
            Stage::Started => {
                self.started.insert(id.to_string());
                true
            }
            Stage::Completed => !self.started.remove(id),
            Stage::Updated => false,
        }
    }

    fn claude(&mut self, event: &Value, out: &mut Vec<NewActivity>) {
        match str_at(event, "type") {
            Some("assistant") => {
                let blocks = event.pointer("/message/content").and_then(Value::as_array);
                for block in blocks.into_iter().flatten() {
                    self.claude_block(block, out);
                }
            }
            Some("result") => self.claude_result(event, out),
            _ => {}
        }
    }

    fn claude_block(&mut self, block: &Value, out: &mut Vec<NewActivity>) {
        match str_at(block, "type") {
            Some("text") => {
                let text = str_at(block, "text").unwrap_or_default();
                if !text.trim().is_empty() {
                    self.fallback = Some(bounded(text, MAX_SUMMARY));
                }
                push(out, ActivityKind::Progress, text, Value::Null);
            }
            Some("thinking") => {
                push(out, ActivityKind::Thought, str_at(block, "thinking").unwrap_or_default(), Value::Null)
            }
            Some("tool_use") => self.claude_tool(block, out),
            _ => {}
        }
    }

    fn claude_tool(&mut self, block: &Value, out: &mut Vec<NewActivity>) {
        let name = str_at(block, "name").unwrap_or("tool");
        let input = block.get("input").unwrap_or(&Value::Null);
        match name {
            "TodoWrite" => self.plan(claude_todos(input), out),
            "ExitPlanMode" => self.plan(str_at(input, "plan").unwrap_or_default().to_string(), out),
            _ => {
                let summary = input_summary(input);
                let text = if summary.is_empty() { name.to_string() } else { format!("{name}: {summary}") };
                let data = json!({ "id": block.get("id"), "name": name, "input": input });
                push(out, ActivityKind::Action, &text, data);
            }
        }
    }

    fn claude_result(&mut self, event: &Value, out: &mut Vec<NewActivity>) {
        let subtype = str_at(event, "subtype").unwrap_or_default();
        let is_error = event.get("is_error").and_then(Value::as_bool).unwrap_or(false) || subtype != "success";
        let result = str_at(event, "result");
        if let Some(result) = result.filter(|r| !r.trim().is_empty()) {
            self.declare_summary(result);
        }
        let data = json!({
            "subtype": subtype,
            "num_turns": event.get("num_turns"),
            "duration_ms": event.get("duration_ms"),
            "total_cost_usd": event.get("total_cost_usd"),
        });
        if is_error {
            self.failed = true;
            let errors = event.get("errors").and_then(Value::as_array).map(|errors| strings(errors).join("; "));
            let text = errors.filter(|e| !e.is_empty()).or(result.map(str::to_string));
            push(out, ActivityKind::Failure, &text.unwrap_or_else(|| format!("agent failed: {subtype}")), data);
        } else {
            push(out, ActivityKind::Completion, "completed", data);
        }
    }
}

/// A generic line's `type`, when it names an activity an agent may report.
fn generic_kind(kind: &str) -> Option<ActivityKind> {
    Some(match kind {
        "plan" => ActivityKind::Plan,
        "thought" => ActivityKind::Thought,
        "action" => ActivityKind::Action,
        "progress" => ActivityKind::Progress,
        "url" => ActivityKind::Url,
        "completion" => ActivityKind::Completion,
        "failure" => ActivityKind::Failure,
        _ => return None,
    })
}

/// The text and data of a Codex tool-like item.
fn codex_call(kind: &str, item: &Value) -> (String, Value) {
    let field = |key| item.get(key).cloned().unwrap_or(Value::Null);
    match kind {
        "command_execution" => (
            format!("$ {}", str_at(item, "command").unwrap_or_default()),
            json!({ "command": field("command"), "exit_code": field("exit_code"), "status": field("status") }),
        ),
        "mcp_tool_call" => {
            let server = str_at(item, "server").unwrap_or_default();
            let tool = str_at(item, "tool").unwrap_or_default();
            let arguments = item.get("arguments").unwrap_or(&Value::Null);
            (
                format!("{server}.{tool}: {}", input_summary(arguments)),
                json!({ "server": server, "tool": tool, "arguments": arguments }),
            )
        }
        "web_search" => (format!("search: {}", str_at(item, "query").unwrap_or_default()), Value::Null),
        _ => {
            let changes = item.get("changes").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
            let files: Vec<String> = changes
                .iter()
                .map(|c| format!("{} {}", str_at(c, "kind").unwrap_or("update"), str_at(c, "path").unwrap_or("?")))
                .collect();
            (format!("edit: {}", files.join(", ")), json!({ "changes": changes, "status": field("status") }))
        }
    }
}

/// A Codex `todo_list` as one line per step.
fn codex_todos(item: &Value) -> String {
    let items = item.get("items").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let lines: Vec<String> = items
        .iter()
        .map(|todo| {
            let done = todo.get("completed").and_then(Value::as_bool).unwrap_or(false);
            format!("[{}] {}", if done { "x" } else { " " }, str_at(todo, "text").unwrap_or_default())
        })
        .collect();
    lines.join("\n")
}

/// Claude's `TodoWrite` input as one line per step.
fn claude_todos(input: &Value) -> String {
    let todos = input.get("todos").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let lines: Vec<String> = todos
        .iter()
        .map(|todo| {
            let mark = match str_at(todo, "status") {
                Some("completed") => "x",
                Some("in_progress") => "~",
                _ => " ",
            };
            format!("[{mark}] {}", str_at(todo, "content").unwrap_or_default())
        })
        .collect();
    lines.join("\n")
}

/// A tool's input in a few words: its most telling field, or its JSON.
fn input_summary(input: &Value) -> String {
    let text = match INPUT_KEYS.iter().find_map(|key| str_at(input, key)) {
        Some(text) => text.to_string(),
        None if input.is_null() || input.as_object().is_some_and(|o| o.is_empty()) => String::new(),
        None => input.to_string(),
    };
    bounded(&text, MAX_INPUT)
}

fn str_at<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str)
}

fn strings(values: &[Value]) -> Vec<&str> {
    values.iter().filter_map(Value::as_str).collect()
}

/// Adds an activity with its text and data bounded; an empty text adds nothing.
fn push(out: &mut Vec<NewActivity>, kind: ActivityKind, text: &str, data: Value) {
    if text.trim().is_empty() {
        return;
    }
    let data = if json_len(&data) <= MAX_DATA { data } else { json!({ "truncated": true }) };
    out.push(NewActivity { kind, text: bounded(text, MAX_TEXT), data });
}

fn json_len(value: &Value) -> usize {
    serde_json::to_string(value).map_or(usize::MAX, |json| json.len())
}

/// `text` cut to at most `max` bytes on a character boundary, ending in `TRUNCATED`
/// when cut.
fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max.saturating_sub(TRUNCATED.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{TRUNCATED}", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_cuts_on_a_character_boundary() {
        let text = "é".repeat(100);
        let cut = bounded(&text, 51);
        assert!(cut.len() <= 51, "{}", cut.len());
        assert!(cut.ends_with(TRUNCATED));
        assert_eq!(bounded("short", 51), "short");
    }

    #[test]
    fn tool_input_prefers_the_telling_field() {
        assert_eq!(input_summary(&json!({"description": "d", "command": "ls"})), "ls");
        assert_eq!(input_summary(&json!({"x": 1})), r#"{"x":1}"#);
        assert_eq!(input_summary(&json!({})), "");
    }
}
