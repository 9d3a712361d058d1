//! The generic YAML tree every document is parsed into first, with the line of every node,
//! and the field-table walker that classifies each key of a mapping.

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

use super::KubeError;

/// A YAML node and the line it starts on (1-based).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Node {
    pub line: usize,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Value {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Keys in document order, each with its own line.
    Map(Vec<(String, usize, Node)>),
}

impl Value {
    /// What kind of node this is, for messages (never the value itself: it may be a secret).
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) | Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

/// What the YAML parser hands back, before keys are checked to be strings.
enum Raw {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<Raw>>),
    Map(Vec<(Spanned<Raw>, Spanned<Raw>)>),
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Raw;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any YAML node")
            }
            fn visit_unit<E>(self) -> Result<Raw, E> {
                Ok(Raw::Null)
            }
            fn visit_none<E>(self) -> Result<Raw, E> {
                Ok(Raw::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Raw, D::Error> {
                Raw::deserialize(d)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Raw, E> {
                Ok(Raw::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Raw, E> {
                Ok(Raw::Int(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Raw, E> {
                Ok(Raw::Int(v.into()))
            }
            fn visit_i128<E>(self, v: i128) -> Result<Raw, E> {
                Ok(Raw::Int(v))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Raw, E> {
                Ok(Raw::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Raw, E> {
                Ok(Raw::Str(v.into()))
            }
            fn visit_string<E>(self, v: String) -> Result<Raw, E> {
                Ok(Raw::Str(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Raw, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = a.next_element()? {
                    items.push(item);
                }
                Ok(Raw::Seq(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Raw, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = a.next_entry()? {
                    entries.push(entry);
                }
                Ok(Raw::Map(entries))
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses every document of `text`; `None` for an empty one (`---` with nothing after it).
pub(super) fn parse_yaml(text: &str) -> Result<Vec<Option<Node>>, KubeError> {
    let options = serde_saphyr::options! {
        // Never echo the source: a snippet could show a secret's value.
        with_snippet: false,
        // YAML 1.2 core: `yes`, `on`, `y` stay strings; `0755` stays a string.
        strict_booleans: true,
        leading_zero_numbers_as_strings: true,
    };
    let docs = serde_saphyr::from_multiple_with_options::<Option<Spanned<Raw>>>(text, options)
        .map_err(|e| {
            let (line, column) = e
                .location()
                .map(|l| (l.line() as usize, l.column() as usize))
                .unwrap_or((0, 0));
            // The message without its " at line L, column C" tail, which the error adds.
            let mut message = e.to_string();
            if let Some(at) = message.rfind(" at line ") {
                message.truncate(at);
            }
            // Advice to the crate's users ("set DuplicateKeyPolicy in Options") is not ours.
            if let Some(at) = message.find(", set ") {
                message.truncate(at);
            }
            KubeError::Syntax {
                line,
                column,
                message,
            }
        })?;
    docs.into_iter()
        .enumerate()
        .map(|(i, doc)| doc.map(|raw| convert(raw, i + 1)).transpose())
        .collect()
}

fn convert(raw: Spanned<Raw>, document: usize) -> Result<Node, KubeError> {
    let line = raw.referenced.line() as usize;
    let value = match raw.value {
        Raw::Null => Value::Null,
        Raw::Bool(b) => Value::Bool(b),
        Raw::Int(i) => Value::Int(i),
        Raw::Float(f) => Value::Float(f),
        Raw::Str(s) => Value::Str(s),
        Raw::Seq(items) => Value::Seq(
            items
                .into_iter()
                .map(|i| convert(i, document))
                .collect::<Result<_, _>>()?,
        ),
        Raw::Map(entries) => {
            let mut out = Vec::with_capacity(entries.len());
            for (k, v) in entries {
                let key_line = k.referenced.line() as usize;
                let key = match k.value {
                    Raw::Str(s) => s,
                    _ => {
                        return Err(KubeError::Invalid {
                            document,
                            line: Some(key_line),
                            path: String::new(),
                            message: "a mapping key is not a string: Kubernetes field names \
                                      are strings"
                                .into(),
                        });
                    }
                };
                out.push((key, key_line, convert(v, document)?));
            }
            Value::Map(out)
        }
    };
    Ok(Node { line, value })
}

/// A document's `apiVersion` and `kind`, read before its fields are checked (which
/// fields are valid depends on them).
pub(super) fn api_version_and_kind<'a>(
    ctx: &Ctx,
    doc: &'a Node,
) -> Result<(Option<&'a str>, Option<&'a str>), KubeError> {
    let Value::Map(entries) = &doc.value else {
        return Err(ctx.err(
            doc.line,
            "",
            format!(
                "a document must be a mapping with apiVersion and kind, found {}",
                doc.value.kind()
            ),
        ));
    };
    let get = |key: &str| {
        entries
            .iter()
            .find(|(k, _, _)| k == key)
            .map(|(k, line, node)| {
                Field {
                    path: k.clone(),
                    line: *line,
                    node,
                }
                .str(ctx)
            })
            .transpose()
    };
    Ok((get("apiVersion")?, get("kind")?))
}

/// How peapod treats one field of a Kubernetes object.
#[derive(Clone, Copy)]
pub(super) enum Class {
    /// Read and honoured.
    Supported,
    /// Meaningless for a pod in its own VM: accepted and listed once in a warning.
    Harmless,
    /// Harmless with the values `accepted` allows (described by the string), not
    /// supported with others.
    HarmlessIf(fn(&Value) -> bool, &'static str),
    /// Peapod does not honour it: an error, never silently dropped.
    Unsupported,
    /// As `Unsupported`, with what to do instead.
    UnsupportedHint(&'static str),
}

/// A mapping's fields, named with their class.
pub(super) type Table = &'static [(&'static str, Class)];

/// The state of one document's walk.
pub(super) struct Ctx {
    pub document: usize,
    /// Paths of the harmless fields met, for the document's one warning.
    pub harmless: Vec<String>,
    pub warnings: Vec<String>,
}

impl Ctx {
    pub fn err(&self, line: usize, path: &str, message: impl Into<String>) -> KubeError {
        KubeError::Invalid {
            document: self.document,
            line: (line > 0).then_some(line),
            path: path.to_owned(),
            message: message.into(),
        }
    }

    /// Checks `node` is a mapping and every key against `table`; returns its supported
    /// fields. `path` names the mapping (`spec.containers[0]`).
    pub fn fields<'a>(
        &mut self,
        node: &'a Node,
        path: &str,
        table: Table,
    ) -> Result<Fields<'a>, KubeError> {
        let Value::Map(entries) = &node.value else {
            return Err(self.err(
                node.line,
                path,
                format!("expected a mapping, found {}", node.value.kind()),
            ));
        };
        let mut supported = Vec::new();
        for (key, line, value) in entries {
            let field = join(path, key);
            match table.iter().find(|(name, _)| name == key).map(|(_, c)| *c) {
                Some(Class::Supported) => supported.push((key.as_str(), *line, value)),
                Some(Class::Harmless) => self.harmless.push(field),
                Some(Class::HarmlessIf(accepted, what)) => {
                    if accepted(&value.value) {
                        self.harmless.push(field);
                    } else {
                        return Err(self.err(
                            *line,
                            &field,
                            format!("not supported by peapod (only {what} is accepted)"),
                        ));
                    }
                }
                Some(Class::Unsupported) => {
                    return Err(self.err(*line, &field, "not supported by peapod"));
                }
                Some(Class::UnsupportedHint(hint)) => {
                    return Err(self.err(
                        *line,
                        &field,
                        format!("not supported by peapod ({hint})"),
                    ));
                }
                None => {
                    let hint = did_you_mean(key, table.iter().map(|(name, _)| *name))
                        .map(|m| format!(" (did you mean {m}?)"))
                        .unwrap_or_default();
                    return Err(self.err(*line, &field, format!("unknown field{hint}")));
                }
            }
        }
        Ok(Fields {
            path: path.to_owned(),
            line: node.line,
            entries: supported,
        })
    }
}

/// `path.key`, or `key` at the top.
pub(super) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// The closest name to a misspelt `key`, if one is close enough.
pub(super) fn did_you_mean<'a>(key: &str, names: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    names
        .map(|n| (strsim::jaro_winkler(key, n), n))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, n)| n)
}

/// The supported fields of one mapping.
pub(super) struct Fields<'a> {
    pub path: String,
    /// The mapping's own line.
    pub line: usize,
    entries: Vec<(&'a str, usize, &'a Node)>,
}

/// A field's value, its path and its line.
pub(super) struct Field<'a> {
    pub path: String,
    pub line: usize,
    pub node: &'a Node,
}

impl<'a> Fields<'a> {
    /// The field `name`, unless absent or `null` (Kubernetes reads both as unset).
    pub fn get(&self, name: &str) -> Option<Field<'a>> {
        self.entries
            .iter()
            .find(|(k, _, v)| *k == name && v.value != Value::Null)
            .map(|(k, line, node)| Field {
                path: join(&self.path, k),
                line: *line,
                node,
            })
    }

    pub fn str(&self, ctx: &Ctx, name: &str) -> Result<Option<&'a str>, KubeError> {
        self.get(name).map(|f| f.str(ctx)).transpose()
    }

    pub fn bool(&self, ctx: &Ctx, name: &str) -> Result<Option<bool>, KubeError> {
        self.get(name).map(|f| f.bool(ctx)).transpose()
    }

    /// A required string field.
    pub fn required_str(&self, ctx: &Ctx, name: &str) -> Result<&'a str, KubeError> {
        match self.str(ctx, name)? {
            Some(s) if !s.is_empty() => Ok(s),
            _ => Err(ctx.err(self.line, &join(&self.path, name), "required")),
        }
    }
}

impl<'a> Field<'a> {
    pub fn err(&self, ctx: &Ctx, message: impl Into<String>) -> KubeError {
        ctx.err(self.line, &self.path, message)
    }

    pub fn str(&self, ctx: &Ctx) -> Result<&'a str, KubeError> {
        match &self.node.value {
            Value::Str(s) => Ok(s),
            Value::Bool(_) | Value::Int(_) | Value::Float(_) => Err(self.err(
                ctx,
                format!(
                    "expected a string, found {} (quote it: Kubernetes reads numbers and \
                     booleans as strings only when quoted)",
                    self.node.value.kind()
                ),
            )),
            other => Err(self.err(ctx, format!("expected a string, found {}", other.kind()))),
        }
    }

    pub fn bool(&self, ctx: &Ctx) -> Result<bool, KubeError> {
        match self.node.value {
            Value::Bool(b) => Ok(b),
            ref other => Err(self.err(
                ctx,
                format!("expected true or false, found {}", other.kind()),
            )),
        }
    }

    /// An integer in `range`.
    pub fn int(&self, ctx: &Ctx, range: std::ops::RangeInclusive<i128>) -> Result<i128, KubeError> {
        match self.node.value {
            Value::Int(i) if range.contains(&i) => Ok(i),
            Value::Int(i) => Err(self.err(
                ctx,
                format!(
                    "{i} is out of range: use {} to {}",
                    range.start(),
                    range.end()
                ),
            )),
            ref other => Err(self.err(ctx, format!("expected an integer, found {}", other.kind()))),
        }
    }

    /// A list; each item with its path (`path[i]`).
    pub fn seq(&self, ctx: &Ctx) -> Result<Vec<Field<'a>>, KubeError> {
        match &self.node.value {
            Value::Seq(items) => Ok(items
                .iter()
                .enumerate()
                .map(|(i, node)| Field {
                    path: format!("{}[{i}]", self.path),
                    line: node.line,
                    node,
                })
                .collect()),
            other => Err(self.err(ctx, format!("expected a list, found {}", other.kind()))),
        }
    }

    /// A list of strings (`command`, `args`).
    pub fn strings(&self, ctx: &Ctx) -> Result<Vec<String>, KubeError> {
        self.seq(ctx)?
            .iter()
            .map(|f| f.str(ctx).map(str::to_owned))
            .collect()
    }

    /// A mapping of strings to strings (labels, annotations, a Secret's data); each entry
    /// with its path (`path.key`) and line.
    pub fn string_map(&self, ctx: &Ctx) -> Result<Vec<(String, &'a str, Field<'a>)>, KubeError> {
        let Value::Map(entries) = &self.node.value else {
            return Err(self.err(
                ctx,
                format!("expected a mapping, found {}", self.node.value.kind()),
            ));
        };
        entries
            .iter()
            .map(|(k, line, node)| {
                let field = Field {
                    path: join(&self.path, k),
                    line: *line,
                    node,
                };
                let value = field.str(ctx)?;
                Ok((k.clone(), value, field))
            })
            .collect()
    }

    /// The mapping's fields, checked against `table`.
    pub fn fields(&self, ctx: &mut Ctx, table: Table) -> Result<Fields<'a>, KubeError> {
        ctx.fields(self.node, &self.path, table)
    }

    /// Whether the node is an empty mapping (`resources: {}`).
    pub fn is_empty_map(&self) -> bool {
        matches!(&self.node.value, Value::Map(m) if m.is_empty())
    }
}
