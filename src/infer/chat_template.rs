//! Chat templates: a model's own Jinja template, rendered the way transformers'
//! `apply_chat_template` renders it.
//!
//! transformers compiles a template in a sandboxed Jinja2 environment with `trim_blocks` and
//! `lstrip_blocks` on and the `loopcontrols` extension, adds the globals `raise_exception` and
//! `strftime_now` and its own `tojson` filter, and renders with `messages`, `tools`, `documents`,
//! `add_generation_prompt` and the special token strings (`bos_token`, `eos_token`, ...).
//! [`ChatTemplate`] does the same with minijinja, plus Python's string and dict methods
//! (`.strip()`, `.startswith()`, `.items()`, ...) from minijinja-contrib's pycompat.
//!
//! Prompts are always built by rendering a template: the model's own, or, for a model that has
//! none, [`FALLBACK_CHAT_TEMPLATE`]. No chat format is written by hand here.

use std::fmt::Write as _;

use anyhow::{anyhow, Result};
use minijinja::value::{Kwargs, Rest, ValueKind};
use minijinja::{context, Environment, Error, ErrorKind, Value};
use serde::{Deserialize, Serialize};

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant` (templates may know other roles, such as `tool`).
    pub role: String,
    /// The message text.
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// A plain template for models that ship no chat template (base models). It is ftlab's own
/// fallback, not any model's format: each message as `Role: text` followed by a blank line, and
/// `Assistant:` as the generation prompt.
pub const FALLBACK_CHAT_TEMPLATE: &str = "{%- for message in messages -%}\
{{ message['role'] | capitalize }}: {{ message['content'] }}{{ '\\n\\n' }}\
{%- endfor -%}\
{%- if add_generation_prompt -%}{{ 'Assistant:' }}{%- endif -%}";

const TEMPLATE_NAME: &str = "chat_template";

/// The error `raise_exception` raises, kept as the source of the minijinja error so that
/// [`ChatTemplate::render`] can report the template's own message.
#[derive(Debug)]
struct RaisedByTemplate(String);

impl std::fmt::Display for RaisedByTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RaisedByTemplate {}

/// A compiled chat template with the special token strings it is rendered with.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `source` (a Jinja chat template). A template that does not parse is an error
    /// that says so, with minijinja's message and location.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        let source = neutralize_generation_tags(source);
        env.add_template_owned(TEMPLATE_NAME, source)
            .map_err(|e| anyhow!("chat template has a syntax error: {}", describe(&e)))?;
        Ok(Self {
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    /// [`FALLBACK_CHAT_TEMPLATE`], for models without a template of their own.
    pub fn fallback(bos_token: &str, eos_token: &str) -> Result<Self> {
        Self::new(FALLBACK_CHAT_TEMPLATE, bos_token, eos_token)
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends with whatever opens the
    /// assistant's turn. A template that calls `raise_exception` gives an error carrying its
    /// message.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| anyhow!("chat template: {}", describe(&e)))?;
        let ctx = context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
            tools => Value::from(()),
            documents => Value::from(()),
        };
        tmpl.render(ctx).map_err(|e| {
            if let Some(raised) = find_raised(&e) {
                anyhow!("chat template raised an exception: {raised}")
            } else {
                anyhow!("chat template failed to render: {}", describe(&e))
            }
        })
    }
}

/// minijinja's message (kind, detail, template line) and the errors under it.
fn describe(e: &Error) -> String {
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        let _ = write!(s, ": {inner}");
        source = inner.source();
    }
    s
}

fn find_raised(e: &Error) -> Option<&RaisedByTemplate> {
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        if let Some(r) = inner.downcast_ref::<RaisedByTemplate>() {
            return Some(r);
        }
        source = inner.source();
    }
    None
}

/// `raise_exception(message)`, as transformers defines it for templates.
fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message.clone())
        .with_source(RaisedByTemplate(message)))
}

/// transformers' `{% generation %}...{% endgeneration %}` marks assistant text for training
/// masks; it has no effect on the rendered text. minijinja has no such tag, so each becomes
/// `{% if true %}` / `{% endif %}`, keeping its whitespace-control marks.
fn neutralize_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("%}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let inner = &after[..end];
        let trimmed = inner.trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace());
        let replacement = match trimmed {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        match replacement {
            Some(r) => {
                out.push_str("{%");
                out.push_str(&inner.replacen(trimmed, r, 1));
                out.push_str("%}");
            }
            None => {
                out.push_str("{%");
                out.push_str(inner);
                out.push_str("%}");
            }
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

/// `tojson` as transformers defines it: `json.dumps(x, ensure_ascii=False, indent=indent,
/// separators=separators, sort_keys=sort_keys)`, so Python's spacing (`", "`, `": "`) and no
/// HTML escaping.
fn tojson(value: &Value, args: Rest<Value>, kwargs: Kwargs) -> Result<Value, Error> {
    let mut indent: Option<Value> = args.first().cloned();
    if let Some(i) = kwargs.get::<Option<Value>>("indent")? {
        indent = Some(i);
    }
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => match v.kind() {
            ValueKind::Number => Some(" ".repeat(usize::try_from(v)?)),
            ValueKind::String => Some(v.as_str().unwrap_or_default().to_string()),
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: indent must be a number or a string",
                ))
            }
        },
    };
    let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    let _ensure_ascii = kwargs.get::<Option<bool>>("ensure_ascii")?;
    let separators = kwargs.get::<Option<Vec<String>>>("separators")?;
    kwargs.assert_all_used()?;
    let (item_sep, key_sep) = match separators {
        Some(s) if s.len() == 2 => (s[0].clone(), s[1].clone()),
        Some(_) => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "tojson: separators must be two strings",
            ))
        }
        None if indent.is_some() => (",".to_string(), ": ".to_string()),
        None => (", ".to_string(), ": ".to_string()),
    };
    let fmt = PyJson {
        indent,
        item_sep,
        key_sep,
        sort_keys,
    };
    let mut out = String::new();
    fmt.write(&mut out, value, 0)?;
    Ok(Value::from_safe_string(out))
}

struct PyJson {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

impl PyJson {
    fn newline(&self, out: &mut String, level: usize) {
        if let Some(ind) = &self.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(ind);
            }
        }
    }

    fn write(&self, out: &mut String, v: &Value, level: usize) -> Result<(), Error> {
        let json_err = |e: serde_json::Error| {
            Error::new(ErrorKind::InvalidOperation, "tojson: cannot serialize").with_source(e)
        };
        match v.kind() {
            ValueKind::Undefined | ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
            ValueKind::Number | ValueKind::String => {
                out.push_str(&serde_json::to_string(v).map_err(json_err)?)
            }
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = v.try_iter()?.collect();
                if items.is_empty() {
                    out.push_str("[]");
                    return Ok(());
                }
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(&self.item_sep);
                    }
                    self.newline(out, level + 1);
                    self.write(out, item, level + 1)?;
                }
                self.newline(out, level);
                out.push(']');
            }
            ValueKind::Map => {
                let mut keys: Vec<Value> = v.try_iter()?.collect();
                if keys.is_empty() {
                    out.push_str("{}");
                    return Ok(());
                }
                if self.sort_keys {
                    keys.sort();
                }
                out.push('{');
                for (i, key) in keys.iter().enumerate() {
                    if i > 0 {
                        out.push_str(&self.item_sep);
                    }
                    self.newline(out, level + 1);
                    let key_text = match key.as_str() {
                        Some(s) => s.to_string(),
                        None => key.to_string(),
                    };
                    out.push_str(&serde_json::to_string(&key_text).map_err(json_err)?);
                    out.push_str(&self.key_sep);
                    self.write(out, &v.get_item(key)?, level + 1)?;
                }
                self.newline(out, level);
                out.push('}');
            }
            _ => out.push_str(&serde_json::to_string(v).map_err(json_err)?),
        }
        Ok(())
    }
}

/// `strftime_now(format)`: the current UTC time, formatted with the common `strftime` codes
/// (`%Y %y %m %d %e %H %I %M %S %p %B %b %A %a %j %%`, and `%-d`-style unpadded forms).
fn strftime_now(format: String) -> Result<Value, Error> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Ok(Value::from(strftime_utc(&format, secs)))
}

/// Formats a Unix time (UTC) with a subset of `strftime`.
pub fn strftime_utc(format: &str, unix_secs: i64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    let days = unix_secs.div_euclid(86_400);
    let secs_of_day = unix_secs.rem_euclid(86_400);
    let (hour, minute, second) = (
        secs_of_day / 3600,
        (secs_of_day % 3600) / 60,
        secs_of_day % 60,
    );
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy_mar = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy_mar + 2) / 153;
    let day = doy_mar - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + if month <= 2 { 1 } else { 0 };
    // 1970-01-01 was a Thursday (index 3 from Monday).
    let weekday = (days + 3).rem_euclid(7) as usize;
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    const CUM: [i64; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = CUM[(month - 1) as usize] + day + if leap && month > 2 { 1 } else { 0 };
    let hour12 = if hour % 12 == 0 { 12 } else { hour % 12 };

    let mut out = String::new();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let unpadded = chars.peek() == Some(&'-');
        if unpadded {
            chars.next();
        }
        let num = |n: i64, width: usize| {
            if unpadded {
                n.to_string()
            } else {
                format!("{n:0width$}")
            }
        };
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&num(year.rem_euclid(100), 2)),
            Some('m') => out.push_str(&num(month, 2)),
            Some('d') => out.push_str(&num(day, 2)),
            Some('e') => out.push_str(&format!("{day:>2}")),
            Some('H') => out.push_str(&num(hour, 2)),
            Some('I') => out.push_str(&num(hour12, 2)),
            Some('M') => out.push_str(&num(minute, 2)),
            Some('S') => out.push_str(&num(second, 2)),
            Some('j') => out.push_str(&num(yday, 3)),
            Some('p') => out.push_str(if hour < 12 { "AM" } else { "PM" }),
            Some('B') => out.push_str(MONTHS[(month - 1) as usize]),
            Some('b') | Some('h') => out.push_str(&MONTHS[(month - 1) as usize][..3]),
            Some('A') => out.push_str(DAYS[weekday]),
            Some('a') => out.push_str(&DAYS[weekday][..3]),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                if unpadded {
                    out.push('-');
                }
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_known_dates() {
        // 2024-02-29 13:05:09 UTC, a Thursday.
        let t = 1_709_211_909;
        assert_eq!(
            strftime_utc("%Y-%m-%d %H:%M:%S %a %A %b %B %j %y %-d %I%p %%", t),
            "2024-02-29 13:05:09 Thu Thursday Feb February 060 24 29 01PM %"
        );
        assert_eq!(strftime_utc("%d %b %Y", 0), "01 Jan 1970");
    }

    #[test]
    fn generation_tags_become_plain_blocks() {
        assert_eq!(
            neutralize_generation_tags("a{%- generation %}b{% endgeneration -%}c{{ x }}"),
            "a{%- if true %}b{% endif -%}c{{ x }}"
        );
    }
}
