//! Memory as rules see it: a read-only `memory` map and `history` of earlier runs in
//! `when` and templates, and a writable `memory` object in `memory.after_run`, whose
//! writes are collected for the store to apply with the run's completion.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use rhai::{Dynamic, EvalAltResult, Position};
use serde_json::{Map, Value};

use super::value::{to_dynamic, to_json};

/// What earlier runs left behind, converted for rhai once per render.
#[derive(Debug, Clone)]
pub struct MemoryView {
    pub(super) memory: Dynamic,
    pub(super) history: Dynamic,
}

impl MemoryView {
    /// `memory` (key → value) and `history` (earlier runs, newest first).
    pub fn new(memory: &Map<String, Value>, history: Vec<Value>) -> MemoryView {
        MemoryView { memory: to_dynamic(&Value::Object(memory.clone())), history: to_dynamic(&Value::Array(history)) }
    }
}

/// Memory as rules read it, with no history.
pub fn memory_value(memory: &Map<String, Value>) -> MemoryView {
    MemoryView::new(memory, Vec::new())
}

/// One change an `after_run` script made: a value to keep, or `None` to forget the key.
pub type MemoryEdits = BTreeMap<String, Option<Value>>;

#[derive(Debug, Default)]
struct Draft {
    current: Map<String, Value>,
    edits: MemoryEdits,
}

/// The `memory` object of `after_run`: `get(key)`, `set(key, value)`, `remove(key)`,
/// `keys()`. Clones share one draft, so the caller reads the edits after the script.
#[derive(Debug, Clone, Default)]
pub struct MemoryWriter {
    draft: Arc<Mutex<Draft>>,
}

/// The longest memory key, in bytes.
pub const MAX_KEY_LEN: usize = 256;

impl MemoryWriter {
    pub fn new(current: Map<String, Value>) -> MemoryWriter {
        MemoryWriter { draft: Arc::new(Mutex::new(Draft { current, edits: MemoryEdits::new() })) }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Draft) -> T) -> T {
        f(&mut self.draft.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The edits made so far, by key.
    pub fn edits(&self) -> MemoryEdits {
        self.with(|draft| draft.edits.clone())
    }

    fn get(&mut self, key: &str) -> Dynamic {
        self.with(|draft| draft.current.get(key).map_or(Dynamic::UNIT, to_dynamic))
    }

    fn set(&mut self, key: &str, value: Dynamic) -> Result<(), Box<EvalAltResult>> {
        check_key(key)?;
        let value =
            to_json(&value).map_err(|why| script_error(format!("memory.set(\"{key}\", ...): the value {why}")))?;
        self.with(|draft| {
            draft.current.insert(key.to_string(), value.clone());
            draft.edits.insert(key.to_string(), Some(value));
        });
        Ok(())
    }

    fn remove(&mut self, key: &str) -> Result<(), Box<EvalAltResult>> {
        check_key(key)?;
        self.with(|draft| {
            draft.current.remove(key);
            draft.edits.insert(key.to_string(), None);
        });
        Ok(())
    }

    fn keys(&mut self) -> rhai::Array {
        self.with(|draft| draft.current.keys().map(|k| Dynamic::from(k.clone())).collect())
    }
}

fn script_error(message: String) -> Box<EvalAltResult> {
    Box::new(EvalAltResult::ErrorRuntime(message.into(), Position::NONE))
}

fn check_key(key: &str) -> Result<(), Box<EvalAltResult>> {
    key_problem(key).map_or(Ok(()), |why| Err(script_error(why)))
}

/// Why `key` cannot be a memory key, if it cannot.
pub fn key_problem(key: &str) -> Option<String> {
    (key.is_empty() || key.len() > MAX_KEY_LEN || key.contains('\0'))
        .then(|| format!("memory keys are 1 to {MAX_KEY_LEN} bytes without NUL; got `{}`", key.escape_debug()))
}

/// Registers the `memory` object's methods; the rule engine calls this when it is built.
pub(super) fn register(engine: &mut rhai::Engine) {
    engine
        .register_type_with_name::<MemoryWriter>("Memory")
        .register_fn("get", MemoryWriter::get)
        .register_fn("set", MemoryWriter::set)
        .register_fn("remove", MemoryWriter::remove)
        .register_fn("keys", MemoryWriter::keys);
}
