//! `RAGSCOPE_EXTRACT`: rules that map fields of any server's JSON request or response to the
//! GenAI/RAG attributes, for RAG APIs that are not OpenAI-shaped.
//!
//! Syntax: rules separated by `;`, each `TARGET=SIDE:POINTER [id=POINTER] [score=POINTER]`,
//! where SIDE is `request` or `response` and POINTER is an RFC 6901 JSON pointer (`/a/0/b`).
//! TARGET is one of [`TARGETS`], or `documents` for an array of retrieved documents whose id
//! and score are read with the `id=` and `score=` pointers relative to each element (default
//! `/id` and `/score`). Example:
//!
//! ```text
//! gen_ai.request.model=request:/llm/model; documents=response:/hits id=/doc_id score=/relevance
//! ```
//!
//! Without a `documents` rule, a response's top-level `sources` array of `{id, score}` is read.

use serde_json::Value;

use super::inference::{MAX_FINISH_REASONS, cap};

/// The attributes a rule may fill, with the JSON type each expects.
pub const TARGETS: &[(&str, Kind)] = &[
    ("gen_ai.operation.name", Kind::Str),
    ("gen_ai.request.model", Kind::Str),
    ("gen_ai.response.model", Kind::Str),
    ("gen_ai.response.id", Kind::Str),
    ("gen_ai.response.finish_reasons", Kind::StrArray),
    ("gen_ai.usage.input_tokens", Kind::Int),
    ("gen_ai.usage.output_tokens", Kind::Int),
    ("gen_ai.request.max_tokens", Kind::Int),
    ("gen_ai.request.temperature", Kind::Float),
    ("gen_ai.request.top_p", Kind::Float),
    ("gen_ai.data_source.id", Kind::Str),
];

/// The type a target attribute takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A string (numbers are written as strings).
    Str,
    /// A string, or an array of strings.
    StrArray,
    /// An integer.
    Int,
    /// A number.
    Float,
}

/// Which body a rule reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The request body.
    Request,
    /// The response body.
    Response,
}

/// What a rule fills.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One attribute from [`TARGETS`].
    Attribute(&'static str, Kind),
    /// Retrieved documents, with the id and score pointers inside each element.
    Documents {
        /// Pointer to the id inside an element.
        id: String,
        /// Pointer to the score inside an element.
        score: String,
    },
}

/// One extraction rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// What it fills.
    pub target: Target,
    /// Which body it reads.
    pub side: Side,
    /// Where in that body.
    pub pointer: String,
}

/// The accepted form, for configuration errors.
pub const FORM: &str = "rules separated by ';', each TARGET=request:/json/pointer or \
TARGET=response:/json/pointer, where TARGET is a gen_ai.* attribute ragscope knows \
(gen_ai.request.model, gen_ai.usage.output_tokens, ...) or `documents` \
(optionally followed by id=/ptr score=/ptr)";

/// Parses `RAGSCOPE_EXTRACT`. The error says which rule is wrong and why.
pub fn parse_rules(spec: &str) -> Result<Vec<Rule>, String> {
    let mut rules = Vec::new();
    for raw in spec.split(';').map(str::trim).filter(|r| !r.is_empty()) {
        let mut words = raw.split_whitespace();
        let head = words.next().unwrap_or_default();
        let (target, rest) = head
            .split_once('=')
            .ok_or_else(|| format!("rule {raw:?} has no '='"))?;
        let (side, pointer) = rest.split_once(':').ok_or_else(|| {
            format!("rule {raw:?} needs request: or response: before the pointer")
        })?;
        let side = match side {
            "request" => Side::Request,
            "response" => Side::Response,
            other => return Err(format!("rule {raw:?}: unknown side {other:?}")),
        };
        check_pointer(pointer).map_err(|e| format!("rule {raw:?}: {e}"))?;
        let target = if target == "documents" {
            let (mut id, mut score) = ("/id".to_owned(), "/score".to_owned());
            for option in words.by_ref() {
                let (name, ptr) = option
                    .split_once('=')
                    .ok_or_else(|| format!("rule {raw:?}: option {option:?} has no '='"))?;
                check_pointer(ptr).map_err(|e| format!("rule {raw:?}: {e}"))?;
                match name {
                    "id" => id = ptr.to_owned(),
                    "score" => score = ptr.to_owned(),
                    other => return Err(format!("rule {raw:?}: unknown option {other:?}")),
                }
            }
            Target::Documents { id, score }
        } else {
            let (name, kind) = TARGETS
                .iter()
                .find(|(name, _)| *name == target)
                .ok_or_else(|| format!("rule {raw:?}: unknown target {target:?}"))?;
            Target::Attribute(name, *kind)
        };
        if let Some(extra) = words.next() {
            return Err(format!("rule {raw:?}: unexpected {extra:?}"));
        }
        rules.push(Rule {
            target,
            side,
            pointer: pointer.to_owned(),
        });
    }
    Ok(rules)
}

fn check_pointer(p: &str) -> Result<(), String> {
    if !(p.is_empty() || p.starts_with('/')) {
        return Err(format!("JSON pointer {p:?} must start with '/'"));
    }
    // `~` must be followed by 0 or 1 (RFC 6901 escapes).
    let bytes = p.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'~' && !matches!(bytes.get(i + 1), Some(b'0' | b'1')) {
            return Err(format!("JSON pointer {p:?} has a bad '~' escape"));
        }
    }
    Ok(())
}

/// A value a rule found, typed for its attribute.
#[derive(Debug, Clone, PartialEq)]
pub enum Extracted {
    /// A string.
    Str(String),
    /// Strings.
    StrArray(Vec<String>),
    /// An integer.
    Int(i64),
    /// A number.
    Float(f64),
}

/// Applies one attribute rule to a body; `None` when the field is missing or of the wrong type.
pub fn extract(kind: Kind, body: &Value, pointer: &str) -> Option<Extracted> {
    let v = body.pointer(pointer)?;
    match kind {
        Kind::Str => scalar_string(v).map(Extracted::Str),
        Kind::StrArray => match v {
            Value::Array(items) => Some(Extracted::StrArray(
                items
                    .iter()
                    .filter_map(scalar_string)
                    .take(MAX_FINISH_REASONS)
                    .collect(),
            )),
            other => scalar_string(other).map(|s| Extracted::StrArray(vec![s])),
        },
        Kind::Int => v.as_i64().map(Extracted::Int),
        Kind::Float => v.as_f64().map(Extracted::Float),
    }
}

/// A string or number as a string, within the one field cap.
fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(cap(s)),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// One retrieved document.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// Its id (numbers written as strings); `None` when the element has none.
    pub id: Option<String>,
    /// Its score, when it has a numeric one.
    pub score: Option<f64>,
}

/// The documents at `pointer`; `None` when there is no array there (no retrieval reported),
/// `Some(empty)` for an empty retrieval.
pub fn documents(body: &Value, pointer: &str, id: &str, score: &str) -> Option<Vec<Document>> {
    let items = body.pointer(pointer)?.as_array()?;
    Some(
        items
            .iter()
            .map(|item| Document {
                id: item.pointer(id).and_then(scalar_string),
                score: item.pointer(score).and_then(Value::as_f64),
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse() {
        let rules = parse_rules(
            " gen_ai.request.model=request:/llm/model ;documents=response:/hits id=/doc_id score=/relevance;",
        )
        .expect("parses");
        assert_eq!(
            rules,
            vec![
                Rule {
                    target: Target::Attribute("gen_ai.request.model", Kind::Str),
                    side: Side::Request,
                    pointer: "/llm/model".to_owned(),
                },
                Rule {
                    target: Target::Documents {
                        id: "/doc_id".to_owned(),
                        score: "/relevance".to_owned()
                    },
                    side: Side::Response,
                    pointer: "/hits".to_owned(),
                },
            ]
        );
        assert_eq!(parse_rules("").expect("empty"), vec![]);
    }

    #[test]
    fn bad_rules_say_why() {
        for (spec, why) in [
            ("gen_ai.request.model", "no '='"),
            ("gen_ai.request.model=/model", "request: or response:"),
            ("gen_ai.request.model=body:/model", "unknown side"),
            ("gen_ai.system=request:/model", "unknown target"),
            ("gen_ai.request.model=request:model", "must start with '/'"),
            ("gen_ai.request.model=request:/a~2", "'~' escape"),
            ("documents=response:/hits rank=/r", "unknown option"),
            ("gen_ai.request.model=request:/m extra", "unexpected"),
        ] {
            let err = parse_rules(spec).expect_err(spec);
            assert!(err.contains(why), "{spec}: {err}");
        }
    }

    #[test]
    fn extraction_is_typed() {
        let body: Value = serde_json::json!({
            "m": "x", "n": 3, "f": 0.5, "arr": ["a", 1, null], "o": {}
        });
        assert_eq!(
            extract(Kind::Str, &body, "/m"),
            Some(Extracted::Str("x".into()))
        );
        assert_eq!(
            extract(Kind::Str, &body, "/n"),
            Some(Extracted::Str("3".into()))
        );
        assert_eq!(extract(Kind::Str, &body, "/o"), None);
        assert_eq!(extract(Kind::Int, &body, "/n"), Some(Extracted::Int(3)));
        assert_eq!(extract(Kind::Int, &body, "/f"), None);
        assert_eq!(
            extract(Kind::Float, &body, "/n"),
            Some(Extracted::Float(3.0))
        );
        assert_eq!(
            extract(Kind::StrArray, &body, "/arr"),
            Some(Extracted::StrArray(vec!["a".into(), "1".into()]))
        );
        assert_eq!(extract(Kind::Str, &body, "/missing"), None);
    }

    #[test]
    fn documents_are_read_leniently() {
        let body: Value = serde_json::json!({
            "sources": [{"id": "d1", "score": 0.9}, {"id": 7}, "junk"], "none": [], "bad": {}
        });
        let docs = documents(&body, "/sources", "/id", "/score").expect("array");
        assert_eq!(
            docs,
            vec![
                Document {
                    id: Some("d1".into()),
                    score: Some(0.9)
                },
                Document {
                    id: Some("7".into()),
                    score: None
                },
                Document {
                    id: None,
                    score: None
                },
            ]
        );
        assert_eq!(documents(&body, "/none", "/id", "/score"), Some(vec![]));
        assert_eq!(documents(&body, "/bad", "/id", "/score"), None);
        assert_eq!(documents(&body, "/missing", "/id", "/score"), None);
    }
}
