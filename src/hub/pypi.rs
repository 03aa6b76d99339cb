//! Finding a wheel's URL through a PEP 503 "simple" package index.
use anyhow::{bail, Context, Result};

use super::download::{agent_for, describe_error};

/// The default index; `FTLAB_PYPI_INDEX` overrides it.
pub const DEFAULT_INDEX: &str = "https://pypi.org/simple";

/// `$FTLAB_PYPI_INDEX` if set and non-empty, else [`DEFAULT_INDEX`].
pub fn index_url() -> String {
    std::env::var("FTLAB_PYPI_INDEX")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| DEFAULT_INDEX.to_string())
}

/// A wheel found in the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedWheel {
    /// Absolute download URL, fragment removed.
    pub url: String,
    /// The `#sha256=` fragment of the link, lowercase, when the index gives one.
    pub sha256: Option<String>,
}

/// PEP 503 name normalisation: lowercase, runs of `-`, `_`, `.` become `-`.
pub fn normalize_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut sep = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            sep = true;
        } else {
            if sep && !out.is_empty() {
                out.push('-');
            }
            sep = false;
            out.extend(c.to_lowercase());
        }
    }
    out
}

/// Fetches `<index>/<normalised package>/` and finds the link to the file
/// named exactly `wheel`.
pub fn find_wheel(index: &str, package: &str, wheel: &str) -> Result<IndexedWheel> {
    let page_url = format!(
        "{}/{}/",
        index.trim_end_matches('/'),
        normalize_name(package)
    );
    let agent = agent_for(&page_url);
    let resp = match agent.get(&page_url).set("Accept", "text/html").call() {
        Ok(r) => r,
        Err(ureq::Error::Status(404, _)) => {
            bail!("package {package} was not found on the package index ({page_url} answered 404)")
        }
        Err(e) => bail!(
            "could not read the package index page {page_url}: {}",
            describe_error(&e)
        ),
    };
    let html = resp
        .into_string()
        .with_context(|| format!("reading the package index page {page_url}"))?;
    match parse_index(&html, &page_url, wheel) {
        Some(w) => Ok(w),
        None => bail!("the package index page {page_url} has no link to {wheel}"),
    }
}

/// Finds the anchor whose URL path ends in `/<wheel>` in a simple-index page.
/// Relative links are resolved against `page_url`.
pub fn parse_index(html: &str, page_url: &str, wheel: &str) -> Option<IndexedWheel> {
    hrefs(html).into_iter().find_map(|raw| {
        let href = raw.replace("&amp;", "&");
        let (link, fragment) = match href.split_once('#') {
            Some((l, f)) => (l, Some(f)),
            None => (href.as_str(), None),
        };
        let path = link.split('?').next().unwrap_or(link);
        let last = path.rsplit('/').next().unwrap_or(path);
        if last != wheel {
            return None;
        }
        let sha256 = fragment
            .and_then(|f| f.split('&').find_map(|kv| kv.strip_prefix("sha256=")))
            .map(|s| s.to_ascii_lowercase());
        Some(IndexedWheel {
            url: join_url(page_url, link),
            sha256,
        })
    })
}

/// Values of `href=` attributes (double- or single-quoted).
fn hrefs(html: &str) -> Vec<String> {
    let mut out = Vec::new();
    let lower = html.to_ascii_lowercase();
    let mut from = 0;
    while let Some(i) = lower[from..].find("href=") {
        let start = from + i + 5;
        let rest = &html[start..];
        let Some(q) = rest.chars().next().filter(|c| *c == '"' || *c == '\'') else {
            from = start;
            continue;
        };
        let body = &rest[1..];
        match body.find(q) {
            Some(end) => {
                out.push(body[..end].trim().to_string());
                from = start + 1 + end + 1;
            }
            None => break,
        }
    }
    out
}

/// Resolves `href` against the page URL `base` (absolute, scheme-relative,
/// host-relative and path-relative links, with `.`/`..` segments).
pub fn join_url(base: &str, href: &str) -> String {
    if href.starts_with("http://") || href.starts_with("https://") {
        return href.to_string();
    }
    let (scheme, rest) = base.split_once("://").unwrap_or(("https", base));
    if let Some(h) = href.strip_prefix("//") {
        return format!("{scheme}://{h}");
    }
    let (host, base_path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let joined = if href.starts_with('/') {
        href.to_string()
    } else {
        let dir = &base_path[..base_path.rfind('/').map_or(0, |i| i + 1)];
        format!("{dir}{href}")
    };
    let mut segs: Vec<&str> = Vec::new();
    let parts: Vec<&str> = joined.split('/').collect();
    for (i, seg) in parts.iter().enumerate() {
        match *seg {
            "" if i == 0 => {}
            "." => {}
            ".." => {
                segs.pop();
            }
            s => segs.push(s),
        }
    }
    format!("{scheme}://{host}/{}", segs.join("/"))
}
