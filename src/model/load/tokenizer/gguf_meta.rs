//! Typed reads of GGUF metadata keys: a missing required key or a value of the wrong type
//! is an error naming the file and the key.
use std::path::Path;

use anyhow::{anyhow, bail, Result};
use candle_core::quantized::gguf_file::{self, Value};

use super::display;

// llama.cpp token types (`tokenizer.ggml.token_type`).
pub(super) const TOKEN_TYPE_UNKNOWN: i64 = 2;
pub(super) const TOKEN_TYPE_CONTROL: i64 = 3;
pub(super) const TOKEN_TYPE_USER_DEFINED: i64 = 4;
pub(super) const TOKEN_TYPE_NORMAL: i64 = 1;

fn value_as_i64(v: &Value) -> Option<i64> {
    match *v {
        Value::U8(x) => Some(x as i64),
        Value::I8(x) => Some(x as i64),
        Value::U16(x) => Some(x as i64),
        Value::I16(x) => Some(x as i64),
        Value::U32(x) => Some(x as i64),
        Value::I32(x) => Some(x as i64),
        Value::U64(x) => i64::try_from(x).ok(),
        Value::I64(x) => Some(x),
        _ => None,
    }
}

fn type_name(v: &Value) -> String {
    match v {
        Value::Array(items) => match items.first() {
            Some(first) => format!("array of {:?}", first.value_type()),
            None => "empty array".to_string(),
        },
        other => format!("{:?}", other.value_type()),
    }
}

/// The error for a key the tokenizer cannot be built without.
fn missing(path: &Path, key: &str) -> anyhow::Error {
    anyhow!(
        "{}: GGUF metadata has no `{key}`, needed to build the tokenizer",
        display(path)
    )
}

/// A required string key.
pub(super) fn gguf_str<'a>(
    content: &'a gguf_file::Content,
    path: &Path,
    key: &str,
) -> Result<&'a str> {
    gguf_opt_str(content, path, key)?.ok_or_else(|| missing(path, key))
}

/// An optional string key (absent: `None`; present with another type: error).
pub(super) fn gguf_opt_str<'a>(
    content: &'a gguf_file::Content,
    path: &Path,
    key: &str,
) -> Result<Option<&'a str>> {
    match content.metadata.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => bail!(
            "{}: GGUF metadata `{key}` should be a string, found {}",
            display(path),
            type_name(other)
        ),
    }
}

/// Each entry of `v`, the value of metadata `key`, read by `entry`. `v` must be an array and
/// `entry` must accept every item; `what` (e.g. "a string") names the expected entry type in
/// the error otherwise.
fn array_of<'a, T>(
    v: &'a Value,
    path: &Path,
    key: &str,
    what: &str,
    entry: impl Fn(&'a Value) -> Option<T>,
) -> Result<Vec<T>> {
    let Value::Array(items) = v else {
        bail!(
            "{}: GGUF metadata `{key}` should be an array, each entry {what}; found {}",
            display(path),
            type_name(v)
        );
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            entry(item).ok_or_else(|| {
                anyhow!(
                    "{}: GGUF metadata `{key}`[{i}] should be {what}, found {}",
                    display(path),
                    type_name(item)
                )
            })
        })
        .collect()
}

/// A required array of strings.
pub(super) fn gguf_str_array<'a>(
    content: &'a gguf_file::Content,
    path: &Path,
    key: &str,
) -> Result<Vec<&'a str>> {
    let v = content
        .metadata
        .get(key)
        .ok_or_else(|| missing(path, key))?;
    array_of(v, path, key, "a string", |item| match item {
        Value::String(s) => Some(s.as_str()),
        _ => None,
    })
}

/// An optional array of integers.
pub(super) fn gguf_opt_int_array(
    content: &gguf_file::Content,
    path: &Path,
    key: &str,
) -> Result<Option<Vec<i64>>> {
    content
        .metadata
        .get(key)
        .map(|v| array_of(v, path, key, "an integer", value_as_i64))
        .transpose()
}

/// A required array of floats (f32 or f64 entries), as `tokenizer.ggml.scores` is.
pub(super) fn gguf_f32_array(
    content: &gguf_file::Content,
    path: &Path,
    key: &str,
) -> Result<Vec<f32>> {
    let v = content
        .metadata
        .get(key)
        .ok_or_else(|| missing(path, key))?;
    array_of(v, path, key, "a float", |item| match *item {
        Value::F32(x) => Some(x),
        Value::F64(x) => Some(x as f32),
        _ => None,
    })
}

/// An optional token id.
pub(super) fn gguf_opt_id(
    content: &gguf_file::Content,
    path: &Path,
    key: &str,
) -> Result<Option<u32>> {
    match content.metadata.get(key) {
        None => Ok(None),
        Some(v) => {
            let id = value_as_i64(v).ok_or_else(|| {
                anyhow!(
                    "{}: GGUF metadata `{key}` should be an integer token id, found {}",
                    display(path),
                    type_name(v)
                )
            })?;
            // llama.cpp writes -1 (as u32::MAX when unsigned) for "no such token".
            if id < 0 || id >= u32::MAX as i64 {
                Ok(None)
            } else {
                Ok(Some(id as u32))
            }
        }
    }
}

/// An optional boolean.
pub(super) fn gguf_opt_bool(
    content: &gguf_file::Content,
    path: &Path,
    key: &str,
) -> Result<Option<bool>> {
    match content.metadata.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => match value_as_i64(v) {
            Some(i) => Ok(Some(i != 0)),
            None => bail!(
                "{}: GGUF metadata `{key}` should be a boolean, found {}",
                display(path),
                type_name(v)
            ),
        },
    }
}
