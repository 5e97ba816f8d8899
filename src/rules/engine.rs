//! The one place a rhai `Engine` is built: explicit limits, no `eval`, no modules, no I/O,
//! a wall-clock deadline, and `print`/`debug` routed to tracing.

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rhai::{AST, Dynamic, Engine, EvalAltResult, OptimizationLevel, Scope};

use super::helpers;

/// Limits every evaluation runs under. rhai's own defaults differ between debug and
/// release builds, so each one is set here explicitly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Operations per evaluation (a loop step, a call, a property access...).
    pub max_operations: u64,
    /// Nested function calls.
    pub max_call_levels: usize,
    /// Nesting of expressions, at top level and inside functions.
    pub max_expr_depth: usize,
    pub max_function_expr_depth: usize,
    /// Bytes in one string.
    pub max_string_size: usize,
    /// Items in one array / properties in one map.
    pub max_array_size: usize,
    pub max_map_size: usize,
    /// Variables alive at once and functions defined in one script.
    pub max_variables: usize,
    pub max_functions: usize,
    /// Wall-clock time per evaluation.
    pub deadline: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_operations: 1_000_000,
            max_call_levels: 32,
            max_expr_depth: 64,
            max_function_expr_depth: 32,
            max_string_size: 1 << 20,
            max_array_size: 10_000,
            max_map_size: 10_000,
            max_variables: 256,
            max_functions: 64,
            deadline: Duration::from_millis(250),
        }
    }
}

/// A scope that declares `variables` for strict-variable checking. They are not
/// constants: the optimizer would fold constant placeholder values into the AST.
fn declare(variables: &[&str]) -> Scope<'static> {
    let mut scope = Scope::new();
    for name in variables {
        scope.push_dynamic(*name, Dynamic::UNIT);
    }
    scope
}

thread_local! {
    /// The deadline of the evaluation running on this thread.
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Checking the clock on every operation would cost more than most expressions.
const CLOCK_CHECK_EVERY: u64 = 256;

/// What `on_progress` returns to stop a script; recognized in error messages.
const DEADLINE_TOKEN: &str = "deadline";

/// A hardened rhai engine and its limits.
pub struct RuleEngine {
    engine: Engine,
    limits: Limits,
}

impl std::fmt::Debug for RuleEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleEngine").field("limits", &self.limits).finish_non_exhaustive()
    }
}

/// Why an evaluation failed, in words for the automation's author.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EvalError(pub String);

impl RuleEngine {
    /// Builds the engine. This is the only function that creates a `rhai::Engine`.
    pub fn new(limits: Limits) -> RuleEngine {
        let mut engine = Engine::new();
        engine
            .set_max_operations(limits.max_operations)
            .set_max_call_levels(limits.max_call_levels)
            .set_max_expr_depths(limits.max_expr_depth, limits.max_function_expr_depth)
            .set_max_string_size(limits.max_string_size)
            .set_max_array_size(limits.max_array_size)
            .set_max_map_size(limits.max_map_size)
            .set_max_variables(limits.max_variables)
            .set_max_functions(limits.max_functions)
            .set_max_strings_interned(1024)
            .set_strict_variables(true)
            .set_fail_on_invalid_map_property(true)
            .set_optimization_level(OptimizationLevel::Simple);
        // `no_module` (Cargo.toml) removes `import`; `eval` would run unchecked text.
        engine.disable_symbol("eval");
        engine.on_print(|text| tracing::info!(target: "nightshift::rules", "Script printed: {text}"));
        engine.on_debug(|text, source, pos| {
            tracing::debug!(target: "nightshift::rules", source = source.unwrap_or_default(), position = %pos, "Script debug: {text}");
        });
        engine.on_progress(|operations| {
            if operations % CLOCK_CHECK_EVERY != 0 {
                return None;
            }
            let past_deadline = DEADLINE.with(|d| d.get().is_some_and(|deadline| Instant::now() >= deadline));
            past_deadline.then(|| Dynamic::from(DEADLINE_TOKEN))
        });
        helpers::register(&mut engine);
        super::memory::register(&mut engine);
        RuleEngine { engine, limits }
    }

    /// The process-wide engine with default limits.
    pub fn shared() -> &'static RuleEngine {
        static SHARED: OnceLock<RuleEngine> = OnceLock::new();
        SHARED.get_or_init(|| RuleEngine::new(Limits::default()))
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Compiles a single expression (`when`, a template's `{{ ... }}`) that may use
    /// `variables` and no others.
    pub fn compile_expression(&self, variables: &[&str], text: &str) -> Result<AST, rhai::ParseError> {
        self.engine.compile_expression_with_scope(&declare(variables), text)
    }

    /// Compiles a script with statements (policy and memory scripts).
    pub fn compile_script(&self, variables: &[&str], text: &str) -> Result<AST, rhai::ParseError> {
        self.engine.compile_with_scope(&declare(variables), text)
    }

    /// Evaluates a compiled AST under the limits and the deadline.
    pub fn eval(&self, scope: &mut Scope<'_>, ast: &AST) -> Result<Dynamic, EvalError> {
        let deadline = Instant::now() + self.limits.deadline;
        let previous = DEADLINE.with(|d| d.replace(Some(deadline)));
        let result = self.engine.eval_ast_with_scope::<Dynamic>(scope, ast);
        DEADLINE.with(|d| d.set(previous));
        result.map_err(|error| EvalError(self.explain(&error)))
    }

    fn explain(&self, error: &EvalAltResult) -> String {
        match error {
            EvalAltResult::ErrorTerminated(token, _) if token.to_string() == DEADLINE_TOKEN => {
                format!("stopped at the {}ms deadline (a loop that never ends?)", self.limits.deadline.as_millis())
            }
            EvalAltResult::ErrorTooManyOperations(pos) => {
                format!("stopped after {} operations, the limit ({pos})", self.limits.max_operations)
            }
            EvalAltResult::ErrorDataTooLarge(what, pos) => {
                format!(
                    "{what} exceeds its limit ({pos}): strings up to {} bytes, arrays up to {} items, maps up to {} properties",
                    self.limits.max_string_size, self.limits.max_array_size, self.limits.max_map_size
                )
            }
            EvalAltResult::ErrorPropertyNotFound(name, pos) => {
                format!(
                    "property `{name}` not found ({pos}); use `x.get(\"{name}\") ?? default` or `\"{name}\" in x` for optional fields"
                )
            }
            EvalAltResult::ErrorInFunctionCall(name, _, inner, _) => {
                format!("in function `{name}`: {}", self.explain(inner))
            }
            other => other.to_string(),
        }
    }
}
