//! Reading loosely-typed JSON objects field by field, with errors that name the field path.
//!
//! REST bodies have optional fields where "absent" (leave alone) differs from `null` (clear), and
//! some keep unknown fields (companies' `context`). serde alone cannot say both, so those bodies
//! are read through [`Fields`].

use serde_json::{Map, Value};
use std::str::FromStr;

use crate::error::{ApiError, ApiResult};

/// A present field's new value: `Set` or `Clear` (JSON null). Absent fields are `None` outside.
#[derive(Debug, Clone, PartialEq)]
pub enum Patch<T> {
    Set(T),
    Clear,
}

impl<T> Patch<T> {
    pub fn into_option(self) -> Option<T> {
        match self {
            Patch::Set(v) => Some(v),
            Patch::Clear => None,
        }
    }
}

/// `current` after an optional patch: unchanged when the field was not given.
pub fn patched<T: Clone>(current: &Option<T>, patch: &Option<Patch<T>>) -> Option<T> {
    match patch {
        None => current.clone(),
        Some(Patch::Set(v)) => Some(v.clone()),
        Some(Patch::Clear) => None,
    }
}

/// `base` (a JSON object, or nothing) with `changes` merged in; a `null` change removes the key.
pub fn merge_object(base: &Value, changes: &Map<String, Value>) -> Value {
    let mut m = base.as_object().cloned().unwrap_or_default();
    for (k, v) in changes {
        if v.is_null() {
            m.remove(k);
        } else {
            m.insert(k.clone(), v.clone());
        }
    }
    Value::Object(m)
}

/// A JSON object being read; remembers which keys were consumed.
pub struct Fields<'a> {
    path: String,
    map: &'a Map<String, Value>,
    seen: Vec<&'a str>,
}

impl<'a> Fields<'a> {
    /// `path` prefixes field names in errors ("" for the body itself, "contacts[2]" for an item).
    pub fn new(path: impl Into<String>, value: &'a Value) -> ApiResult<Self> {
        let path = path.into();
        match value {
            Value::Object(map) => Ok(Fields {
                path,
                map,
                seen: Vec::new(),
            }),
            _ => Err(ApiError::validation(
                if path.is_empty() { "body" } else { &path },
                "expected a JSON object",
            )),
        }
    }

    pub fn field_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn take(&mut self, key: &'a str) -> Option<&'a Value> {
        self.seen.push(key);
        self.map.get(key)
    }

    pub fn has(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    /// A string field, trimmed; empty strings count as null. `max` is in characters, counted
    /// as sent (so the limit is the one a schema's `maxLength` states).
    pub fn string(&mut self, key: &'a str, max: usize) -> ApiResult<Option<Patch<String>>> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Null) => Ok(Some(Patch::Clear)),
            Some(Value::String(s)) => {
                let t = s.trim();
                if s.chars().count() > max {
                    Err(ApiError::validation(
                        &self.field_path(key),
                        format!("longer than {max} characters"),
                    ))
                } else if t.is_empty() {
                    Ok(Some(Patch::Clear))
                } else {
                    Ok(Some(Patch::Set(t.to_string())))
                }
            }
            Some(_) => Err(ApiError::validation(
                &self.field_path(key),
                "expected a string",
            )),
        }
    }

    /// A string field that must be present and non-empty.
    pub fn required_string(&mut self, key: &'a str, max: usize) -> ApiResult<String> {
        match self.string(key, max)? {
            Some(Patch::Set(s)) => Ok(s),
            _ => Err(ApiError::validation(&self.field_path(key), "missing")),
        }
    }

    /// A string field parsed into a closed vocabulary.
    pub fn parsed<T: FromStr<Err = String>>(&mut self, key: &'a str) -> ApiResult<Option<T>> {
        match self.string(key, 64)? {
            None => Ok(None),
            Some(Patch::Clear) => Err(ApiError::validation(
                &self.field_path(key),
                "must not be null",
            )),
            Some(Patch::Set(s)) => s
                .parse()
                .map(Some)
                .map_err(|e| ApiError::validation(&self.field_path(key), e)),
        }
    }

    pub fn bool(&mut self, key: &'a str) -> ApiResult<Option<bool>> {
        match self.take(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(ApiError::validation(
                &self.field_path(key),
                "expected true or false",
            )),
        }
    }

    /// Any JSON value, as given.
    pub fn raw(&mut self, key: &'a str) -> Option<&'a Value> {
        self.take(key)
    }

    /// The fields not read so far, in a stable order.
    pub fn rest(&self) -> Map<String, Value> {
        self.map
            .iter()
            .filter(|(k, _)| !self.seen.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_and_names_fields() {
        let v = json!({"a": " x ", "b": null, "c": 3, "d": "", "e": "pro"});
        let mut f = Fields::new("contacts[1]", &v).unwrap();
        assert_eq!(f.string("a", 10).unwrap(), Some(Patch::Set("x".into())));
        assert_eq!(f.string("b", 10).unwrap(), Some(Patch::Clear));
        assert_eq!(f.string("d", 10).unwrap(), Some(Patch::Clear));
        assert_eq!(f.string("zz", 10).unwrap(), None);
        let e = f.string("c", 10).unwrap_err();
        assert_eq!(
            e.details.as_deref(),
            Some("contacts[1].c: expected a string")
        );
        let plan: Option<crate::domain::Plan> = f.parsed("e").unwrap();
        assert_eq!(plan, Some(crate::domain::Plan::Pro));
        assert!(f.rest().is_empty());
    }

    #[test]
    fn rejects_non_objects_and_long_strings() {
        assert!(Fields::new("", &json!([1])).is_err());
        let v = json!({"a": "abcdef"});
        let mut f = Fields::new("", &v).unwrap();
        assert!(f.string("a", 3).is_err());
        let mut f = Fields::new("", &v).unwrap();
        assert_eq!(
            f.required_string("b", 3).unwrap_err().details.as_deref(),
            Some("b: missing")
        );
    }

    #[test]
    fn rest_keeps_unknown_fields() {
        let v = json!({"name": "Acme", "employees": 40});
        let mut f = Fields::new("", &v).unwrap();
        f.string("name", 100).unwrap();
        assert_eq!(
            f.rest(),
            json!({"employees": 40}).as_object().unwrap().clone()
        );
    }
}
