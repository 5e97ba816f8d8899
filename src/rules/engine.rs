//! The one place a rhai `Engine` is built: explicit limits, no `eval`, no modules, no I/O,
//! nothing that waits (`sleep`), a wall-clock deadline, and `print`/`debug` routed to
//! tracing.

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rhai::{
    AST, ASTNode, Dynamic, Engine, EvalAltResult, Expr, LexError, OptimizationLevel, ParseError, ParseErrorType,
    Position, Scope, Stmt,
};

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

/// Functions of rhai's standard library that block the thread they run on. A rule runs
/// on a shared evaluation thread, where waiting would delay every other hook and a
/// deadline checked between operations cannot stop it; so each is replaced by one that
/// fails at once, and a script that calls one by name does not compile.
pub const WAITING_FUNCTIONS: &[&str] = &["sleep"];

/// What a script that names a function of `WAITING_FUNCTIONS` is told.
fn cannot_wait(name: &str) -> String {
    format!("`{name}` is not available: rules cannot wait")
}

/// The first call in `ast` of a function rules may not use, with its position: by name
/// (`sleep(1)`, `1.sleep()`) or as a function pointer (`Fn("sleep")`). Calls made through
/// a pointer built from computed text are caught when they run.
fn waiting_call(ast: &AST) -> Option<(String, Position)> {
    let mut found = None;
    ast.walk(&mut |path: &[ASTNode]| {
        let named = match path.last() {
            Some(
                ASTNode::Expr(Expr::FnCall(call, position) | Expr::MethodCall(call, position))
                | ASTNode::Stmt(Stmt::FnCall(call, position)),
            ) => match call.args.as_slice() {
                [Expr::StringConstant(target, _)] if call.name == "Fn" => Some((target.to_string(), *position)),
                _ => Some((call.name.to_string(), *position)),
            },
            // The optimizer folds `Fn("name")` into a constant pointer.
            Some(ASTNode::Expr(Expr::DynamicConstant(value, position))) => {
                value.read_lock::<rhai::FnPtr>().map(|pointer| (pointer.fn_name().to_string(), *position))
            }
            _ => None,
        };
        match named.filter(|(name, _)| WAITING_FUNCTIONS.contains(&name.as_str())) {
            Some(call) => {
                found = Some(call);
                false
            }
            None => true,
        }
    });
    found
}

/// Refuses an AST that calls a function of `WAITING_FUNCTIONS`, as a parse error at the call.
fn refuse_waiting(ast: AST) -> Result<AST, ParseError> {
    match waiting_call(&ast) {
        None => Ok(ast),
        Some((name, position)) => {
            let message = cannot_wait(&name);
            Err(ParseError(Box::new(ParseErrorType::BadInput(LexError::ImproperSymbol(name, message))), position))
        }
    }
}

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
        // Functions registered on the engine are found before its packages' (`sleep` is
        // in rhai's core package), so these shadow the blocking ones for every argument
        // type, calls through computed function pointers included.
        for name in WAITING_FUNCTIONS {
            let refuse =
                |name: &'static str| move || -> Result<(), Box<EvalAltResult>> { Err(cannot_wait(name).into()) };
            engine.register_fn(*name, {
                let refuse = refuse(name);
                move |_: rhai::INT| refuse()
            });
            engine.register_fn(*name, {
                let refuse = refuse(name);
                move |_: rhai::FLOAT| refuse()
            });
        }
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
        refuse_waiting(self.engine.compile_expression_with_scope(&declare(variables), text)?)
    }

    /// Compiles a script with statements (policy and memory scripts).
    pub fn compile_script(&self, variables: &[&str], text: &str) -> Result<AST, rhai::ParseError> {
        refuse_waiting(self.engine.compile_with_scope(&declare(variables), text)?)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The message an expression gets at compile time, or `None` if it compiles.
    fn refused(text: &str) -> Option<(String, Option<usize>)> {
        let engine = RuleEngine::new(Limits::default());
        let error = engine.compile_script(&["event"], text).err()?;
        Some((error.0.to_string(), error.1.position()))
    }

    #[test]
    fn a_script_that_names_sleep_does_not_compile() {
        let expected = "`sleep` is not available: rules cannot wait".to_string();
        assert_eq!(refused("sleep(100000)"), Some((expected.clone(), Some(1))));
        assert_eq!(refused("let x = 1;\n  x.sleep()"), Some((expected.clone(), Some(5))));
        assert_eq!(refused("sleep(0.5)"), Some((expected.clone(), Some(1))));
        assert_eq!(refused("fn wait() { sleep(1) }\n true"), Some((expected.clone(), Some(13))));
        assert!(refused(r#"let f = Fn("sleep"); f.call(1)"#).is_some());
        // A property named `sleep` is only a name.
        assert_eq!(refused("event.sleep == 1"), None);
    }

    #[test]
    fn sleep_through_a_computed_pointer_fails_at_once() {
        let engine = RuleEngine::new(Limits::default());
        let ast = engine.compile_script(&["event"], "let f = Fn(event); f.call(100000); true").unwrap();
        let mut scope = Scope::new();
        scope.push_constant("event", "sleep");
        let started = Instant::now();
        let error = engine.eval(&mut scope, &ast).unwrap_err();
        assert!(error.0.contains("`sleep` is not available"), "{error}");
        assert!(started.elapsed() < Duration::from_secs(50), "it waited");
    }
}
