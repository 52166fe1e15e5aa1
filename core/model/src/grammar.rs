//! Structured output: generation constrained to JSON, optionally to a JSON
//! schema. A schema is compiled once per request into a small tree of
//! nodes; a [`JsonState`] walks it character by character (a pushdown
//! recognizer), and before each token is sampled every token whose text
//! would leave the recognizer's language is masked out, so the answer
//! always parses — and, with a schema, validates.
//!
//! Supported schema keywords: `type` (object, array, string, number,
//! integer, boolean, null), `properties` (written in their declared order;
//! all of them, so every `required` one is there; an object without
//! `properties` is any object), `items`, `minItems`,
//! `maxItems`, `minLength`, `maxLength`, `enum`, `const`; `additionalProperties`, `required`, `title`, `description` and
//! `$schema` are accepted; any other keyword is refused by name. Whitespace
//! is limited to one space after `:` and `,`, so a model cannot pad forever.

use crate::error::{ModelError, Result};
use serde_json::Value;

/// Longest number (characters) and string (characters) the recognizer
/// accepts, so that a constrained model cannot run on inside one.
const MAX_NUMBER_CHARS: usize = 24;
const MAX_STRING_CHARS: usize = 4096;

/// A compiled grammar: any JSON object, or a schema's values.
#[derive(Debug, Clone)]
pub struct JsonGrammar {
    nodes: Vec<Node>,
    root: usize,
}

/// One schema node.
#[derive(Debug, Clone)]
enum Node {
    /// Any JSON value.
    Any,
    /// An object with these properties, in this order (`None`: any keys,
    /// any values).
    Object(Option<Vec<(String, usize)>>),
    /// An array of `items`, with bounds on their count.
    Array { items: usize, min: usize, max: usize },
    /// A string of `min..=max` characters (an escape counts as one).
    String { min: usize, max: usize },
    /// A number (`true`: an integer).
    Number(bool),
    /// One of these JSON texts exactly (enum, const, booleans, null).
    Literal(Vec<String>),
}

/// Nodes every grammar has: any value, any object, any array.
const ANY: usize = 0;
const ANY_OBJECT: usize = 1;
const ANY_ARRAY: usize = 2;
const ANY_STRING: usize = 3;

impl JsonGrammar {
    fn with_builtins() -> JsonGrammar {
        let any_array = Node::Array { items: ANY, min: 0, max: usize::MAX };
        let any_string = Node::String { min: 0, max: MAX_STRING_CHARS };
        JsonGrammar { nodes: vec![Node::Any, Node::Object(None), any_array, any_string], root: ANY_OBJECT }
    }

    /// Any JSON object (OpenAI's `json_object` response format).
    pub fn any_object() -> JsonGrammar {
        JsonGrammar::with_builtins()
    }

    /// The values of `schema` (OpenAI's `json_schema` response format).
    pub fn from_schema(schema: &Value) -> Result<JsonGrammar> {
        let mut grammar = JsonGrammar::with_builtins();
        grammar.root = grammar.compile(schema, "schema")?;
        Ok(grammar)
    }

    /// The recognizer at the start of a value.
    pub fn start(&self) -> JsonState {
        JsonState { stack: vec![Frame::Value(self.root)], failed: false }
    }

    fn push(&mut self, node: Node) -> usize {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    fn compile(&mut self, schema: &Value, path: &str) -> Result<usize> {
        let bad = |message: String| ModelError::InvalidParameter(format!("json schema at {path}: {message}"));
        let Some(fields) = schema.as_object() else {
            return match schema {
                Value::Bool(true) => Ok(ANY),
                _ => Err(bad("a schema must be an object".into())),
            };
        };
        const KNOWN: &[&str] = &[
            "type",
            "properties",
            "items",
            "minItems",
            "maxItems",
            "minLength",
            "maxLength",
            "enum",
            "const",
            "additionalProperties",
            "required",
            "title",
            "description",
            "$schema",
        ];
        if let Some(unknown) = fields.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(bad(format!("keyword {unknown:?} is not supported")));
        }
        if let Some(value) = fields.get("const") {
            return Ok(self.push(Node::Literal(vec![value.to_string()])));
        }
        if let Some(values) = fields.get("enum") {
            let values = values.as_array().filter(|v| !v.is_empty());
            let values = values.ok_or_else(|| bad("enum must be a non-empty array".into()))?;
            return Ok(self.push(Node::Literal(values.iter().map(Value::to_string).collect())));
        }
        let count = |key: &str, default: usize| match fields.get(key) {
            None => Ok(default),
            Some(v) => v.as_u64().map(|n| n as usize).ok_or_else(|| bad(format!("{key} must be a count"))),
        };
        let kind = match fields.get("type") {
            None => return Ok(ANY),
            Some(Value::String(kind)) => kind.as_str(),
            Some(_) => return Err(bad("type must be one string (type lists are not supported)".into())),
        };
        let node = match kind {
            // Without `properties`, any object.
            "object" => match fields.get("properties") {
                None => Node::Object(None),
                Some(properties) => Node::Object(Some(self.compile_properties(properties, path)?)),
            },
            "array" => {
                let items = match fields.get("items") {
                    Some(items) => self.compile(items, &format!("{path}.items"))?,
                    None => ANY,
                };
                let (min, max) = (count("minItems", 0)?, count("maxItems", usize::MAX)?);
                if min > max {
                    return Err(bad("minItems is over maxItems".into()));
                }
                Node::Array { items, min, max }
            }
            "string" => {
                let (min, max) = (count("minLength", 0)?, count("maxLength", MAX_STRING_CHARS)?);
                if min > max.min(MAX_STRING_CHARS) {
                    return Err(bad(format!("minLength is over maxLength (or {MAX_STRING_CHARS})")));
                }
                Node::String { min, max: max.min(MAX_STRING_CHARS) }
            }
            "number" => Node::Number(false),
            "integer" => Node::Number(true),
            "boolean" => Node::Literal(vec!["true".into(), "false".into()]),
            "null" => Node::Literal(vec!["null".into()]),
            other => return Err(bad(format!("type {other:?} is not supported"))),
        };
        Ok(self.push(node))
    }

    fn compile_properties(&mut self, properties: &Value, path: &str) -> Result<Vec<(String, usize)>> {
        let properties = properties.as_object().ok_or_else(|| {
            ModelError::InvalidParameter(format!("json schema at {path}: properties must be an object"))
        })?;
        properties
            .iter()
            .map(|(name, schema)| Ok((name.clone(), self.compile(schema, &format!("{path}.{name}"))?)))
            .collect()
    }
}

/// Where the recognizer stands: a stack of frames, innermost last.
#[derive(Debug, Clone)]
pub struct JsonState {
    stack: Vec<Frame>,
    failed: bool,
}

#[derive(Debug, Clone)]
enum Frame {
    /// A value of this node starts with the next character.
    Value(usize),
    /// Inside a literal: the candidates still possible, bytes matched.
    Literal { candidates: Vec<String>, matched: usize },
    /// Inside a string of `node`: 0 plain, 1 after a backslash, 2..=5 hex
    /// digits of `\u` left plus one; characters so far (-1: before the
    /// opening quote).
    Str { node: usize, escape: u8, chars: isize },
    /// Inside a number.
    Number { integer: bool, phase: NumberPhase, chars: usize },
    /// Inside an object of `node`: the next property's index.
    Object { node: usize, next: usize, phase: ObjectPhase, space: bool },
    /// Inside an array of `node`, with `count` items so far.
    Array { node: usize, count: usize, phase: ArrayPhase, space: bool },
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum NumberPhase {
    Start,
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    Exp,
    ExpSign,
    ExpDigits,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum ObjectPhase {
    /// Right after `{`.
    Open,
    /// After `,`: a key comes next.
    Key,
    /// The key is written: `:` comes next.
    Colon,
    /// After `:` (one space may come), then the value.
    Value,
    /// After a value: `,` or `}`.
    After,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum ArrayPhase {
    /// Right after `[`.
    Open,
    /// After `,` (one space may come), then an item.
    Item,
    /// After an item: `,` or `]`.
    After,
}

/// What a frame did with a character.
enum Step {
    /// Took it; the frame goes on.
    Took,
    /// Took it and is complete.
    Finished,
    /// Is complete without it: the parent gets it.
    Ended,
    /// Took nothing and pushed this frame, which gets the character.
    Push(Frame),
    /// The character cannot come here.
    Refused,
}

impl JsonState {
    /// True once a whole value has been read (nothing more may follow).
    pub fn is_complete(&self) -> bool {
        !self.failed
            && match self.stack.as_slice() {
                [] => true,
                [Frame::Number { phase, .. }] => number_can_end(*phase),
                [Frame::Literal { candidates, matched }] => candidates.iter().any(|t| t.len() == *matched),
                _ => false,
            }
    }

    /// True once a character left the language.
    pub fn has_failed(&self) -> bool {
        self.failed
    }

    /// Feeds `text`; false (and the state failed) when it leaves the language.
    pub fn feed(&mut self, grammar: &JsonGrammar, text: &str) -> bool {
        for c in text.chars() {
            if !self.feed_char(grammar, c) {
                self.failed = true;
                return false;
            }
        }
        true
    }

    fn feed_char(&mut self, grammar: &JsonGrammar, c: char) -> bool {
        loop {
            let Some(top) = self.stack.last_mut() else { return false };
            let step = match top {
                Frame::Value(node) => {
                    let node = *node;
                    self.stack.pop();
                    match start_value(grammar, node, c) {
                        Some(frame) => Step::Push(frame),
                        None => Step::Refused,
                    }
                }
                Frame::Literal { candidates, matched } => literal_step(candidates, matched, c),
                Frame::Str { node, escape, chars } => {
                    let bounds = match grammar.nodes[*node] {
                        Node::String { min, max } => (min, max),
                        _ => (0, MAX_STRING_CHARS),
                    };
                    string_step(bounds, escape, chars, c)
                }
                Frame::Number { integer, phase, chars } => number_step(*integer, phase, chars, c),
                Frame::Object { node, next, phase, space } => {
                    let properties = match &grammar.nodes[*node] {
                        Node::Object(properties) => properties.as_deref(),
                        _ => None,
                    };
                    object_step(properties, next, phase, space, c)
                }
                Frame::Array { node, count, phase, space } => {
                    let (items, min, max) = match grammar.nodes[*node] {
                        Node::Array { items, min, max } => (items, min, max),
                        _ => (ANY, 0, usize::MAX),
                    };
                    array_step(items, (min, max), count, phase, space, c)
                }
            };
            match step {
                Step::Took => return true,
                Step::Finished => {
                    self.stack.pop();
                    return true;
                }
                Step::Ended => {
                    self.stack.pop();
                }
                Step::Push(frame) => self.stack.push(frame),
                Step::Refused => return false,
            }
        }
    }
}

/// The frame a value of `node` starting with `c` opens (it is then fed `c`).
fn start_value(grammar: &JsonGrammar, node: usize, c: char) -> Option<Frame> {
    let number = |integer| Frame::Number { integer, phase: NumberPhase::Start, chars: 0 };
    let literal =
        |texts: &[&str]| Frame::Literal { candidates: texts.iter().map(|t| t.to_string()).collect(), matched: 0 };
    match (&grammar.nodes[node], c) {
        (Node::Object(_), '{') => Some(open_object(node)),
        (Node::Array { .. }, '[') => Some(open_array(node)),
        (Node::String { .. }, '"') => Some(open_string(node)),
        (Node::Number(integer), '-' | '0'..='9') => Some(number(*integer)),
        (Node::Literal(texts), _) => Some(Frame::Literal { candidates: texts.clone(), matched: 0 }),
        (Node::Any, '{') => Some(open_object(ANY_OBJECT)),
        (Node::Any, '[') => Some(open_array(ANY_ARRAY)),
        (Node::Any, '"') => Some(open_string(ANY_STRING)),
        (Node::Any, '-' | '0'..='9') => Some(number(false)),
        (Node::Any, 't' | 'f' | 'n') => Some(literal(&["true", "false", "null"])),
        _ => None,
    }
}

/// A string frame before its opening quote (which it takes first).
fn open_string(node: usize) -> Frame {
    Frame::Str { node, escape: 0, chars: -1 }
}

/// An array frame before its `[` (which it takes first).
fn open_array(node: usize) -> Frame {
    Frame::Array { node, count: 0, phase: ArrayPhase::Open, space: false }
}

/// An object frame before its `{` (which it takes first).
fn open_object(node: usize) -> Frame {
    Frame::Object { node, next: 0, phase: ObjectPhase::Open, space: false }
}

fn literal_step(candidates: &mut Vec<String>, matched: &mut usize, c: char) -> Step {
    let continues = |t: &String| t.get(*matched..).is_some_and(|rest| rest.starts_with(c));
    if !candidates.iter().any(continues) {
        return match candidates.iter().any(|t| t.len() == *matched) {
            true => Step::Ended,
            false => Step::Refused,
        };
    }
    candidates.retain(continues);
    *matched += c.len_utf8();
    match candidates.as_slice() {
        [only] if only.len() == *matched => Step::Finished,
        _ => Step::Took,
    }
}

fn number_can_end(phase: NumberPhase) -> bool {
    matches!(phase, NumberPhase::Zero | NumberPhase::Int | NumberPhase::Frac | NumberPhase::ExpDigits)
}

fn number_step(integer: bool, phase: &mut NumberPhase, chars: &mut usize, c: char) -> Step {
    use NumberPhase::*;
    let next = match (*phase, c) {
        (Start, '-') => Minus,
        (Start | Minus, '0') => Zero,
        (Start | Minus, '1'..='9') | (Int, '0'..='9') => Int,
        (Zero | Int, '.') if !integer => Dot,
        (Dot | Frac, '0'..='9') => Frac,
        (Zero | Int | Frac, 'e' | 'E') if !integer => Exp,
        (Exp, '+' | '-') => ExpSign,
        (Exp | ExpSign | ExpDigits, '0'..='9') => ExpDigits,
        (phase, _) if number_can_end(phase) => return Step::Ended,
        _ => return Step::Refused,
    };
    *chars += 1;
    if *chars > MAX_NUMBER_CHARS {
        return Step::Refused;
    }
    *phase = next;
    Step::Took
}

fn string_step((min, max): (usize, usize), escape: &mut u8, chars: &mut isize, c: char) -> Step {
    let length = (*chars).max(0) as usize;
    let counted = |chars: &mut isize| {
        *chars += 1;
        Step::Took
    };
    match (*chars, *escape, c) {
        (-1, _, '"') => counted(chars),
        (-1, _, _) => Step::Refused,
        (_, 0, '"') if length >= min => Step::Finished,
        (_, 0, _) if length >= max => Step::Refused,
        (_, 0, '\\') => {
            *escape = 1;
            Step::Took
        }
        (_, 0, c) if (c as u32) < 0x20 || c == '"' => Step::Refused,
        (_, 0, _) => counted(chars),
        (_, 1, '"' | '\\' | '/' | 'b' | 'f' | 'n' | 'r' | 't') => {
            *escape = 0;
            counted(chars)
        }
        (_, 1, 'u') => {
            *escape = 5;
            Step::Took
        }
        (_, 2, c) if c.is_ascii_hexdigit() => {
            *escape = 0;
            counted(chars)
        }
        (_, 3..=5, c) if c.is_ascii_hexdigit() => {
            *escape -= 1;
            Step::Took
        }
        _ => Step::Refused,
    }
}

fn object_step(
    properties: Option<&[(String, usize)]>,
    next: &mut usize,
    phase: &mut ObjectPhase,
    space: &mut bool,
    c: char,
) -> Step {
    use ObjectPhase::*;
    let remaining = properties.map_or(usize::MAX, |p| p.len() - *next);
    let may_close = properties.is_none() || remaining == 0;
    match (*phase, c) {
        (Open, '{') if !*space => {
            // The opening brace (Open with `space` false means not taken yet).
            *space = true;
            Step::Took
        }
        (Value, ' ') | (Key, ' ') if !*space => {
            *space = true;
            Step::Took
        }
        (Open | After, '}') if may_close => Step::Finished,
        (Open | Key, '"') if remaining > 0 => {
            *phase = Colon;
            match properties {
                None => Step::Push(open_string(ANY_STRING)),
                Some(p) => {
                    let key = serde_json::Value::String(p[*next].0.clone()).to_string();
                    Step::Push(Frame::Literal { candidates: vec![key], matched: 0 })
                }
            }
        }
        (Colon, ':') => {
            *phase = Value;
            *space = false;
            Step::Took
        }
        (Value, _) => {
            let value = properties.map_or(ANY, |p| p[*next].1);
            *next += 1;
            *phase = After;
            Step::Push(Frame::Value(value))
        }
        (After, ',') if remaining > 0 => {
            *phase = Key;
            *space = false;
            Step::Took
        }
        _ => Step::Refused,
    }
}

fn array_step(
    items: usize,
    (min, max): (usize, usize),
    count: &mut usize,
    phase: &mut ArrayPhase,
    space: &mut bool,
    c: char,
) -> Step {
    use ArrayPhase::*;
    match (*phase, c) {
        (Open, '[') if !*space => {
            *space = true;
            Step::Took
        }
        (Open | After, ']') if *count >= min => Step::Finished,
        (Item, ' ') if !*space => {
            *space = true;
            Step::Took
        }
        (Open | Item, _) if *count < max => {
            *phase = After;
            *count += 1;
            Step::Push(Frame::Value(items))
        }
        (After, ',') if *count < max => {
            *phase = Item;
            *space = false;
            Step::Took
        }
        _ => Step::Refused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn accepts(grammar: &JsonGrammar, text: &str) -> bool {
        let mut state = grammar.start();
        state.feed(grammar, text) && state.is_complete()
    }

    /// Every prefix of `text` is accepted (the mask never dead-ends on it).
    fn prefixes_live(grammar: &JsonGrammar, text: &str) -> bool {
        let mut state = grammar.start();
        text.chars().all(|c| state.feed(grammar, &c.to_string()))
    }

    #[test]
    fn any_object_accepts_json_objects_only() {
        let g = JsonGrammar::any_object();
        for ok in [
            r#"{}"#,
            r#"{"a": 1}"#,
            r#"{"a":[1, 2.5e-3, -0, true, null, "x\"y\u00e9"],"b": {"c": {}}}"#,
            r#"{"k": "é ü 中"}"#,
        ] {
            assert!(accepts(&g, ok), "{ok}");
            assert!(serde_json::from_str::<serde_json::Value>(ok).is_ok());
        }
        for bad in [
            r#"[]"#,
            r#"{"a"}"#,
            r#"{"a": 01}"#,
            r#"{"a": tru}"#,
            r#"{"a": 1,}"#,
            r#"{"a":  1}"#,
            "{\n}",
            r#"{"a": 1} x"#,
        ] {
            assert!(!accepts(&g, bad), "{bad}");
        }
        assert!(prefixes_live(&g, r#"{"a": [1, {"b": "c"}]"#));
    }

    #[test]
    fn a_schema_fixes_keys_order_types_and_enums() {
        let schema = json!({"type": "object", "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer"},
            "mood": {"enum": ["happy", "sad"]},
            "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
            "address": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"const": 12}}},
        }, "required": ["name"]});
        let g = JsonGrammar::from_schema(&schema).unwrap();
        let ok =
            r#"{"name": "Ann", "age": 31, "mood": "sad", "tags": ["a", "b"], "address": {"city": "Oslo", "zip": 12}}"#;
        assert!(accepts(&g, ok));
        for bad in [
            r#"{"age": 31}"#,
            r#"{"name": "Ann", "age": 3.5}"#,
            r#"{"name": "Ann", "age": 31, "mood": "angry"}"#,
            r#"{"name": "Ann", "age": 31, "mood": "sad", "tags": [1]}"#,
            r#"{"name": "Ann", "age": 31, "mood": "sad", "tags": ["a", "b", "c"]}"#,
            r#"{"name": "Ann", "age": 31, "mood": "sad", "tags": [], "address": {"city": "Oslo", "zip": 13}}"#,
            r#"{"name": "Ann", "age": 31, "mood": "sad", "tags": [], "address": {"city": "Oslo", "zip": 12}, "x": 1}"#,
            r#"{"name": "Ann"}"#,
        ] {
            assert!(!accepts(&g, bad), "{bad}");
        }
        for refused in
            [json!({"type": "object", "patternProperties": {}}), json!({"type": ["string", "null"]}), json!(3)]
        {
            assert!(JsonGrammar::from_schema(&refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn numbers_and_strings_are_bounded() {
        let g = JsonGrammar::from_schema(&json!({"type": "number"})).unwrap();
        assert!(accepts(&g, "-12.5e+3"));
        assert!(!accepts(&g, &"9".repeat(MAX_NUMBER_CHARS + 1)));
        let g = JsonGrammar::from_schema(&json!({"type": "string"})).unwrap();
        assert!(accepts(&g, r#""ok""#));
        assert!(!accepts(&g, &format!("\"{}\"", "a".repeat(MAX_STRING_CHARS + 1))));
        assert!(!accepts(&g, "\"tab\there\""), "raw control characters are not JSON");
        let g = JsonGrammar::from_schema(&json!({"type": "string", "minLength": 2, "maxLength": 3})).unwrap();
        assert!(accepts(&g, r#""ab""#) && accepts(&g, r#""a\nb""#) && accepts(&g, r#""\u00e9té""#));
        assert!(!accepts(&g, r#""a""#) && !accepts(&g, r#""abcd""#));
    }
}
