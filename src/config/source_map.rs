//! `SourceMap`: where each field of a YAML file is, so a problem found by path can be
//! shown as `file:line:col`. Built only when a file has problems to report.

use std::collections::{HashMap, HashSet};

use saphyr_parser::{Event, Parser, ScalarStyle};

use super::{FieldPath, InnerPosition};

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub col: usize,
}

#[derive(Debug, Clone, Copy)]
struct Node {
    key: Option<Position>,
    value: Position,
    style: Option<ScalarStyle>,
}

/// Positions of every node of the first document, by path.
#[derive(Debug, Default)]
pub struct SourceMap {
    nodes: HashMap<FieldPath, Node>,
    duplicate_keys: Vec<(FieldPath, Position)>,
}

enum Frame {
    Mapping {
        path: FieldPath,
        key: Option<(String, Position)>,
        seen: HashSet<String>,
    },
    Sequence {
        path: FieldPath,
        next: usize,
    },
    /// A complex key (a mapping or sequence used as a key); its insides are not addressable.
    Ignored,
}

fn position(marker: saphyr_parser::Marker) -> Position {
    Position { line: marker.line(), col: marker.col() + 1 }
}

impl SourceMap {
    /// Builds the map; a file with a syntax error maps the part before the error.
    pub fn new(text: &str) -> SourceMap {
        let mut map = SourceMap::default();
        let mut stack: Vec<Frame> = Vec::new();
        let mut parser = Parser::new_from_str(text);
        while let Some(Ok((event, span))) = parser.next_event() {
            let at = position(span.start);
            let (opens, style) = match &event {
                Event::Scalar(_, style, _, _) => (false, Some(*style)),
                Event::Alias(_) => (false, None),
                Event::MappingStart(..) | Event::SequenceStart(..) => (true, None),
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                    continue;
                }
                Event::DocumentEnd => break,
                _ => continue,
            };
            // Where does this node go?
            let placed: Option<(FieldPath, Option<Position>)> = match stack.last_mut() {
                None => Some((FieldPath::root(), None)),
                Some(Frame::Ignored) => None,
                Some(Frame::Sequence { path, next }) => {
                    *next += 1;
                    Some((path.index(*next - 1), None))
                }
                Some(Frame::Mapping { path, key, seen }) => match key.take() {
                    Some((name, key_at)) => Some((path.key(&name), Some(key_at))),
                    None => {
                        if let Event::Scalar(name, ..) = &event {
                            if !seen.insert(name.to_string()) {
                                map.duplicate_keys.push((path.key(name), at));
                            }
                            *key = Some((name.to_string(), at));
                            continue;
                        }
                        // A complex key: skip it and its value.
                        *key = Some((String::from("?"), at));
                        None
                    }
                },
            };
            match placed {
                Some((path, key)) => {
                    map.nodes.insert(path.clone(), Node { key, value: at, style });
                    if opens {
                        stack.push(match event {
                            Event::MappingStart(..) => Frame::Mapping { path, key: None, seen: HashSet::new() },
                            _ => Frame::Sequence { path, next: 0 },
                        });
                    }
                }
                None if opens => stack.push(Frame::Ignored),
                None => {}
            }
        }
        map
    }

    /// Keys written twice in one mapping (YAML parsers keep only one of them), at the
    /// second occurrence.
    pub fn duplicate_keys(&self) -> &[(FieldPath, Position)] {
        &self.duplicate_keys
    }

    /// The position of a field's value, or of its nearest ancestor that exists.
    pub fn value(&self, path: &FieldPath) -> Position {
        let mut path = path.clone();
        loop {
            if let Some(node) = self.nodes.get(&path) {
                return node.value;
            }
            if path.0.is_empty() {
                return Position { line: 1, col: 1 };
            }
            path = path.parent();
        }
    }

    /// The position of a field's key (falls back to its value).
    pub fn key(&self, path: &FieldPath) -> Position {
        match self.nodes.get(path) {
            Some(Node { key: Some(key), .. }) => *key,
            _ => self.value(path),
        }
    }

    /// The file position of a 1-based line/column inside a scalar's text.
    pub fn inside(&self, path: &FieldPath, inner: InnerPosition) -> Position {
        let Some(node) = self.nodes.get(path) else { return self.value(path) };
        let start = node.value;
        match node.style {
            // Literal block scalars: the text starts at `start`, every line at the same
            // indent. (Folded ones join lines, so only their start is known.)
            Some(ScalarStyle::Literal) => {
                Position { line: start.line + inner.line - 1, col: start.col + inner.col - 1 }
            }
            Some(ScalarStyle::SingleQuoted | ScalarStyle::DoubleQuoted) if inner.line == 1 => {
                Position { line: start.line, col: start.col + inner.col }
            }
            Some(ScalarStyle::Plain) if inner.line == 1 => {
                Position { line: start.line, col: start.col + inner.col - 1 }
            }
            _ => start,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(text: &str) -> FieldPath {
        let instance: serde_json::Value = serde_yaml::from_str(YAML).unwrap();
        FieldPath::from_json_pointer(text, &instance)
    }

    const YAML: &str =
        "name: x\nwhen: |\n  event.a ==\n    1\ntask:\n  prompt: \"hi {{ x }}\"\n  setup:\n    - a\n    - b: 1\n";

    #[test]
    fn finds_keys_values_and_nested_items() {
        let map = SourceMap::new(YAML);
        assert_eq!(map.value(&path("/name")), Position { line: 1, col: 7 });
        assert_eq!(map.key(&path("/name")), Position { line: 1, col: 1 });
        assert_eq!(map.value(&path("/task/setup/1/b")), Position { line: 9, col: 10 });
        assert_eq!(map.key(&path("/task/setup/1/b")), Position { line: 9, col: 7 });
        // A missing field points at its nearest ancestor.
        assert_eq!(map.value(&path("/task/agent")), Position { line: 6, col: 3 });
    }

    #[test]
    fn finds_duplicate_keys() {
        let map = SourceMap::new("a: 1\nb:\n  c: 1\n  c: 2\na: 3\n");
        let found: Vec<(String, usize)> = map.duplicate_keys().iter().map(|(p, at)| (p.to_string(), at.line)).collect();
        assert_eq!(found, [("b.c".to_string(), 4), ("a".to_string(), 5)]);
    }

    #[test]
    fn maps_positions_inside_scalars() {
        let map = SourceMap::new(YAML);
        let inner = |line, col| InnerPosition { line, col };
        assert_eq!(map.inside(&path("/when"), inner(2, 3)), Position { line: 4, col: 5 });
        assert_eq!(map.inside(&path("/task/prompt"), inner(1, 7)), Position { line: 6, col: 18 });
    }
}
