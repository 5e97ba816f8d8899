//! Checks of a file whose structure is broken: every part that is well-formed on its own
//! still gets its checks (cron, rhai, profiles, network rules...), so one `validate`
//! shows every problem instead of one layer at a time.

use std::collections::BTreeMap;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::config::load::{check_notify, check_paths, check_secret_names, check_test, check_trigger_presence};
use crate::config::{AgentProfile, FieldPath, Finding, NotifyTarget, TestCase};
use crate::netpolicy::{AllowRuleConfig, PhasePolicyConfig};
use crate::rules::{
    RuleEngine, check_script_ceiling, compile_base, compile_branch, compile_repo, compile_script, compile_template,
    compile_when, expand_rule, find_profile,
};
use crate::triggers::TriggerSpec;

/// A view of a file's value that only yields parts without structural findings.
struct Parts<'a> {
    value: &'a Value,
    broken: &'a [Finding],
}

impl Parts<'_> {
    /// The part at `path` as `T`, if it exists, has no structural finding and parses.
    fn get<T: DeserializeOwned>(&self, path: &FieldPath) -> Option<T> {
        let clean = !self.broken.iter().any(|f| f.path.0.starts_with(&path.0));
        let part = self.value.pointer(&path.to_json_pointer())?;
        if clean { serde_json::from_value(part.clone()).ok() } else { None }
    }

    fn len(&self, path: &FieldPath) -> usize {
        self.value.pointer(&path.to_json_pointer()).and_then(Value::as_array).map_or(0, Vec::len)
    }
}

/// Findings of every well-formed part of a file that failed the schema check.
pub fn check_parts(
    engine: &RuleEngine,
    value: &Value,
    broken: &[Finding],
    profiles: &BTreeMap<String, AgentProfile>,
    file: &Path,
) -> Vec<Finding> {
    if !value.is_object() {
        return Vec::new();
    }
    let parts = Parts { value, broken };
    let mut findings = Vec::new();
    let root = FieldPath::root();
    let mut record = |result: Result<(), Finding>| {
        if let Err(finding) = result {
            findings.push(finding);
        }
    };

    let text = |path: &FieldPath| parts.get::<String>(path);
    let task = root.key("task");
    if let Some(when) = text(&root.key("when")) {
        record(compile_when(engine, root.key("when"), &when).map(drop));
    }
    if let Some(template) = text(&task.key("prompt")) {
        record(compile_template(engine, task.key("prompt"), &template).map(drop));
    }
    if let Some(template) = text(&task.key("base")) {
        record(compile_base(engine, task.key("base"), &template).map(drop));
    }
    if let Some(template) = text(&task.key("repo")) {
        record(compile_repo(engine, task.key("repo"), &template).map(drop));
    }
    if let Some(branch) = text(&task.key("branch")) {
        record(compile_branch(engine, task.key("branch"), &branch).map(drop));
    }
    for key in [root.key("dedupe").key("key"), root.key("concurrency").key("key")] {
        if let Some(template) = text(&key) {
            record(compile_template(engine, key, &template).map(drop));
        }
    }
    if let Some(agent) = text(&task.key("agent")) {
        record(find_profile(profiles, task.key("agent"), &agent).map(drop));
    }
    // The parallel shape's profiles and `items` script (docs/parallel.md).
    let mut role_profiles = vec![
        task.key("attempts").key("judge").key("profile"),
        task.key("verify").key("profile"),
        task.key("fan_out").key("join").key("profile"),
    ];
    let attempt_profiles = task.key("attempts").key("profiles");
    role_profiles.extend((0..parts.len(&attempt_profiles)).map(|i| attempt_profiles.index(i)));
    for at in role_profiles {
        if let Some(name) = text(&at) {
            record(find_profile(profiles, at, &name).map(drop));
        }
    }
    let items = task.key("fan_out").key("items");
    if let Some(script) = text(&items) {
        record(compile_script(engine, items, &script, false).map(drop));
    }
    if let Some(script) = text(&root.key("memory").key("after_run")) {
        record(compile_script(engine, root.key("memory").key("after_run"), &script, true).map(drop));
    }
    for phase in ["setup", "agent"] {
        let phase = task.key("network").key(phase);
        if let Some(script) = text(&phase.key("script")) {
            record(compile_script(engine, phase.key("script"), &script, false).map(drop));
        }
        if let Some(config) = parts.get::<PhasePolicyConfig>(&phase) {
            record(check_script_ceiling(&config, &phase).map_or(Ok(()), Err));
        }
        for list in ["allow", "script_may_allow"] {
            for index in 0..parts.len(&phase.key(list)) {
                let at = phase.key(list).index(index);
                if let Some(rule) = parts.get::<AllowRuleConfig>(&at) {
                    record(expand_rule(at, &rule).map(drop));
                }
            }
        }
    }

    let has_list = parts.len(&root.key("triggers")) > 0;
    check_trigger_presence(value.get("trigger").is_some(), has_list, &mut findings);
    let mut trigger_paths = vec![root.key("trigger")];
    trigger_paths.extend((0..parts.len(&root.key("triggers"))).map(|i| root.key("triggers").index(i)));
    for at in trigger_paths {
        if let Some(trigger) = parts.get::<TriggerSpec>(&at) {
            trigger.check(&at, &mut findings);
        }
    }
    if let Some(globs) = parts.get::<Vec<String>>(&task.key("paths")) {
        check_paths(&globs, &task.key("paths"), &mut findings);
    }
    if let Some(secrets) = parts.get::<BTreeMap<String, Value>>(&task.key("secrets")) {
        check_secret_names(secrets.keys(), &task.key("secrets"), &mut findings);
    }
    for index in 0..parts.len(&root.key("notify")) {
        let at = root.key("notify").index(index);
        if let Some(target) = parts.get::<NotifyTarget>(&at) {
            check_notify(&target, &at, &mut findings);
        }
    }
    for index in 0..parts.len(&root.key("tests")) {
        let at = root.key("tests").index(index);
        if let Some(case) = parts.get::<TestCase>(&at) {
            check_test(&case, file, &at, &mut findings);
        }
    }
    findings
}
