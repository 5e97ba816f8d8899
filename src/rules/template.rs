//! `{{ expr }}` templates: compiled once into text parts and rhai expressions.

use rhai::{AST, Scope};

use super::engine::{EvalError, RuleEngine};
use super::value::to_text;
use crate::config::InnerPosition;

#[derive(Debug, Clone)]
enum Part {
    Text(String),
    Expr { source: String, ast: AST },
}

/// A compiled template.
#[derive(Debug, Clone)]
pub struct Template {
    parts: Vec<Part>,
}

/// A template that does not compile, with where inside the template text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    pub message: String,
    pub at: InnerPosition,
}

/// 1-based line and column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> InnerPosition {
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    InnerPosition { line, col: before[line_start..].chars().count() + 1 }
}

impl Template {
    /// Compiles `text`. Expressions may use `variables` and nothing else.
    pub fn compile(engine: &RuleEngine, variables: &[&str], text: &str) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let expr_offset = text.len() - rest.len() + open + 2;
            let after_open = &rest[open + 2..];
            let Some(close) = after_open.find("}}") else {
                return Err(TemplateError {
                    message: "`{{` is never closed with `}}`".into(),
                    at: line_col(text, expr_offset - 2),
                });
            };
            let source = &after_open[..close];
            if source.trim().is_empty() {
                return Err(TemplateError { message: "empty `{{ }}`".into(), at: line_col(text, expr_offset - 2) });
            }
            let ast = engine.compile_expression(variables, source).map_err(|error| {
                let start = line_col(text, expr_offset);
                let (line, col) = (error.1.line().unwrap_or(1), error.1.position().unwrap_or(1));
                let at = if line == 1 {
                    InnerPosition { line: start.line, col: start.col + col - 1 }
                } else {
                    InnerPosition { line: start.line + line - 1, col }
                };
                TemplateError { message: format!("in `{{{{{source}}}}}`: {}", error.0), at }
            })?;
            parts.push(Part::Expr { source: source.trim().to_string(), ast });
            rest = &after_open[close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Template { parts })
    }

    /// Renders the template against `scope`.
    pub fn render(&self, engine: &RuleEngine, scope: &mut Scope<'_>) -> Result<String, EvalError> {
        self.render_at_most(engine, scope, usize::MAX, "")
    }

    /// `render`, failing as soon as the text would be longer than `limit` bytes, so a
    /// big value repeated many times costs no more than `limit`; `limit_name` says in
    /// the error which setting sets it.
    pub fn render_at_most(
        &self,
        engine: &RuleEngine,
        scope: &mut Scope<'_>,
        limit: usize,
        limit_name: &str,
    ) -> Result<String, EvalError> {
        let mut out = String::new();
        for part in &self.parts {
            let piece = match part {
                Part::Text(text) => std::borrow::Cow::Borrowed(text.as_str()),
                Part::Expr { source, ast } => {
                    let value =
                        engine.eval(scope, ast).map_err(|e| EvalError(format!("in `{{{{ {source} }}}}`: {}", e.0)))?;
                    let text = to_text(&value).map_err(|why| EvalError(format!("in `{{{{ {source} }}}}`: {why}")))?;
                    std::borrow::Cow::Owned(text)
                }
            };
            if out.len().saturating_add(piece.len()) > limit {
                return Err(EvalError(format!(
                    "the rendered text would be larger than {limit} bytes ({limit_name}); nothing was rendered past it"
                )));
            }
            out.push_str(&piece);
        }
        Ok(out)
    }

    pub fn has_expressions(&self) -> bool {
        self.parts.iter().any(|part| matches!(part, Part::Expr { .. }))
    }

    /// The fixed text before the first expression.
    pub fn fixed_prefix(&self) -> &str {
        match self.parts.first() {
            Some(Part::Text(text)) => text,
            _ => "",
        }
    }

    /// The text with every expression replaced by `stand_in`: what the static parts allow.
    pub fn with_stand_ins(&self, stand_in: &str) -> String {
        self.parts
            .iter()
            .map(|part| match part {
                Part::Text(text) => text.as_str(),
                Part::Expr { .. } => stand_in,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope() -> Scope<'static> {
        let mut scope = Scope::new();
        let event = super::super::value::to_dynamic(&serde_json::json!({"n": 7, "title": "boom", "tags": ["a"]}));
        scope.push_constant_dynamic("event", event);
        scope
    }

    fn render(text: &str) -> Result<String, String> {
        let engine = RuleEngine::shared();
        let template = Template::compile(engine, &["event"], text)
            .map_err(|e| format!("{}:{} {}", e.at.line, e.at.col, e.message))?;
        template.render(engine, &mut scope()).map_err(|e| e.0)
    }

    #[test]
    fn renders_text_and_expressions() {
        assert_eq!(render("#{{ event.n }}: {{ event.title }}").unwrap(), "#7: boom");
        assert_eq!(render("{{ event.tags }}").unwrap(), "[\"a\"]");
        assert_eq!(render("plain").unwrap(), "plain");
        assert_eq!(render("{{ \"{{\" }}").unwrap(), "{{");
    }

    #[test]
    fn compile_errors_point_inside_the_template() {
        let error = render("line one\nsee {{ event.n + }} here").unwrap_err();
        assert!(error.starts_with("2:"), "{error}");
        assert!(render("{{ event.n").unwrap_err().contains("never closed"));
        assert!(render("{{ nope }}").unwrap_err().contains("nope"));
    }

    #[test]
    fn a_render_stops_at_its_limit() {
        let engine = RuleEngine::shared();
        let template = Template::compile(engine, &["event"], "{{ event.title }}-{{ event.title }}").unwrap();
        assert_eq!(template.render_at_most(engine, &mut scope(), 9, "limit").unwrap(), "boom-boom");
        let error = template.render_at_most(engine, &mut scope(), 8, "`the_limit`").unwrap_err().0;
        assert!(error.contains("larger than 8 bytes") && error.contains("`the_limit`"), "{error}");
    }

    #[test]
    fn missing_values_are_errors_not_blanks() {
        assert!(render("{{ event.missing }}").unwrap_err().contains("property `missing` not found"));
        assert!(render("{{ event.get(\"missing\") }}").unwrap_err().contains("give a default"));
        assert_eq!(render("{{ event.get(\"missing\") ?? \"none\" }}").unwrap(), "none");
    }
}
