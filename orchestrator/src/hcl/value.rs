//! Values of statically evaluated HCL expressions.

use std::collections::BTreeMap;
use std::sync::Arc;

/// What an expression evaluates to. `Unknown` stands for anything not statically knowable
/// (dependency outputs, environment variables, unsupported constructs) and says why.
/// Collections are shared: configurations hand the same values to thousands of units.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    List(Arc<Vec<Value>>),
    Object(Arc<BTreeMap<String, Value>>),
    Unknown(Why),
}

/// Why a value is unknown: usually a fixed phrase, so saying it costs no allocation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Why {
    Fixed(&'static str),
    Said(Arc<str>),
}

impl std::ops::Deref for Why {
    type Target = str;

    fn deref(&self) -> &str {
        match self {
            Why::Fixed(text) => text,
            Why::Said(text) => text,
        }
    }
}

impl Value {
    pub(crate) fn unknown(why: impl Into<String>) -> Value {
        Value::Unknown(Why::Said(Arc::from(why.into())))
    }

    pub(crate) fn unknown_because(why: &'static str) -> Value {
        Value::Unknown(Why::Fixed(why))
    }

    pub(crate) fn list(items: Vec<Value>) -> Value {
        Value::List(Arc::new(items))
    }

    pub(crate) fn object(fields: BTreeMap<String, Value>) -> Value {
        Value::Object(Arc::new(fields))
    }

    pub(crate) fn is_unknown(&self) -> bool {
        matches!(self, Value::Unknown(_))
    }

    /// The reason this value is unknown, or the first unknown inside it.
    pub(crate) fn unknown_reason(&self) -> Option<&str> {
        match self {
            Value::Unknown(why) => Some(&**why),
            Value::List(items) => items.iter().find_map(Value::unknown_reason),
            Value::Object(fields) => fields.values().find_map(Value::unknown_reason),
            _ => None,
        }
    }

    /// The value as a string, as HCL converts primitives in templates and string functions.
    pub(crate) fn as_string(&self) -> Option<String> {
        match self {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(format_number(*n)),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub(crate) fn truthy(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            Value::String(s) if s == "true" => Some(true),
            Value::String(s) if s == "false" => Some(false),
            _ => None,
        }
    }

    pub(crate) fn get_attr(&self, name: &str) -> Value {
        match self {
            Value::Object(fields) => fields
                .get(name)
                .cloned()
                .unwrap_or_else(|| Value::unknown_because("no such attribute")),
            Value::Unknown(_) => self.clone(),
            _ => Value::unknown_because("attribute of a non-object"),
        }
    }

    pub(crate) fn index(&self, key: &Value) -> Value {
        match (self, key) {
            (Value::Unknown(_), _) => self.clone(),
            (_, Value::Unknown(_)) => key.clone(),
            (Value::List(items), Value::Number(n)) if *n >= 0.0 && n.fract() == 0.0 => items
                .get(*n as usize)
                .cloned()
                .unwrap_or_else(|| Value::unknown_because("list index out of range")),
            (Value::Object(_), key) => match key.as_string() {
                Some(name) => self.get_attr(&name),
                None => Value::unknown_because("invalid object key"),
            },
            _ => Value::unknown_because("invalid index"),
        }
    }
}

pub(crate) fn format_number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}
