//! The rule engine: one hardened rhai engine, `{{ expr }}` templates, compiled
//! automations and rendering. No I/O happens here.

mod compiled;
mod engine;
mod git_ref;
pub mod helpers;
mod memory;
mod plan;
mod template;
pub mod value;

pub use compiled::{
    CompiledAutomation, PreparedEvent, RenderError, check_script_ceiling, compile_base, compile_branch, compile_repo,
    compile_script, compile_template, compile_when, expand_rule, find_profile, now_value,
};
pub use engine::{EvalError, Limits, RuleEngine};
pub use git_ref::{check_branch_name, check_repo_location};
pub use memory::{MAX_KEY_LEN, MemoryEdits, MemoryView, MemoryWriter, key_problem, memory_value};
pub use plan::describe_plan;
pub use template::{Template, TemplateError};
