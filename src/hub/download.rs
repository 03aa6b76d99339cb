//! Resumable, verified HTTP downloads (ureq 2, native TLS roots) with an
//! indicatif progress bar on stderr.
use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sha2::{Digest, Sha256};

/// Time allowed to open a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Time allowed between two reads of a response.
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// An agent with the download timeouts. Proxy settings come from the
/// environment (`HTTPS_PROXY`, ...) except for loopback URLs.
pub(crate) fn agent_for(url: &str) -> ureq::Agent {
    agent_with(url, CONNECT_TIMEOUT, READ_TIMEOUT)
}

pub(crate) fn agent_with(url: &str, connect: Duration, read: Duration) -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(connect)
        .timeout_read(read)
        .try_proxy_from_env(!is_loopback(url))
        .user_agent(concat!("ftlab/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Whether the URL's host is 127.0.0.1, ::1 or localhost.
pub(crate) fn is_loopback(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or(v6)
    } else {
        authority.split(':').next().unwrap_or(authority)
    };
    matches!(host, "127.0.0.1" | "::1" | "localhost")
}

/// A short description of a ureq error (status line or transport cause).
pub(crate) fn describe_error(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Status(code, resp) => format!("HTTP {code} {}", resp.status_text()),
        ureq::Error::Transport(t) => t.to_string(),
    }
}

/// A byte progress bar on stderr, hidden when `show` is false or stderr is
/// not a terminal.
pub fn progress_bar(len: Option<u64>, message: &str, show: bool) -> ProgressBar {
    if !show || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(len, ProgressDrawTarget::stderr());
    let template = if len.is_some() {
        "{msg} [{bar:30.cyan/blue}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
    } else {
        "{msg} {spinner} {bytes} {bytes_per_sec}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(message.to_string());
    bar
}

/// Lowercase hex sha256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    hash_reader(&mut f, &mut h).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex::encode(h.finalize()))
}

fn hash_reader(r: &mut impl Read, h: &mut Sha256) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0u64;
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(n),
            Ok(k) => {
                h.update(&buf[..k]);
                n += k as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Downloads `url` to `dest`, streaming into `part` first.
///
/// An existing `part` is resumed with an HTTP Range request (a server that
/// ignores the range makes it start over). The bytes are checked against the
/// lowercase hex `sha256` before `part` is renamed to `dest`; on a mismatch
/// `part` is deleted and an error returned. An interrupted transfer leaves
/// `part` in place for the next call to resume. The caller serialises
/// concurrent downloads of the same `part`.
pub fn download_verified(
    url: &str,
    part: &Path,
    dest: &Path,
    sha256: &str,
    progress: bool,
) -> Result<()> {
    let agent = agent_for(url);
    let offset = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    let (resp, offset) = match request(&agent, url, offset)? {
        Reply::Body(resp, start) => (*resp, start),
        Reply::AlreadyComplete => {
            // 416: the part is as long as the file; it is complete or bad.
            if verify_or_delete(url, part, sha256).is_ok() {
                return rename(part, dest);
            }
            match request(&agent, url, 0)? {
                Reply::Body(resp, start) => (*resp, start),
                Reply::AlreadyComplete => bail!("{url} answered 416 to a request without a range"),
            }
        }
    };

    let total = total_len(&resp, offset);
    let mut hasher = Sha256::new();
    let mut file = if offset > 0 {
        let mut existing =
            File::open(part).with_context(|| format!("opening {}", part.display()))?;
        hash_reader(&mut existing, &mut hasher)
            .with_context(|| format!("reading {}", part.display()))?;
        OpenOptions::new().append(true).open(part)
    } else {
        File::create(part)
    }
    .with_context(|| format!("opening {} for writing", part.display()))?;

    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let bar = progress_bar(total, &name, progress);
    bar.set_position(offset);
    let mut reader = resp.into_reader();
    let mut buf = vec![0u8; 1 << 18];
    let mut received = offset;
    loop {
        let k = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                bar.abandon();
                file.flush().ok();
                let of = total.map(|t| format!(" of {t}")).unwrap_or_default();
                bail!(
                    "download of {url} was interrupted after {received}{of} bytes ({e}); \
                     {} is kept: run again to resume",
                    part.display()
                );
            }
        };
        file.write_all(&buf[..k])
            .with_context(|| format!("writing {}", part.display()))?;
        hasher.update(&buf[..k]);
        received += k as u64;
        bar.set_position(received);
    }
    file.sync_all()
        .with_context(|| format!("flushing {}", part.display()))?;
    drop(file);
    bar.finish_and_clear();

    let got = hex::encode(hasher.finalize());
    if !got.eq_ignore_ascii_case(sha256) {
        let _ = std::fs::remove_file(part);
        bail!(
            "sha256 mismatch for {url}: expected {sha256}, got {got} ({received} bytes); \
             the download was deleted"
        );
    }
    rename(part, dest)
}

enum Reply {
    /// A response whose body starts at this byte offset of the file.
    Body(Box<ureq::Response>, u64),
    /// 416 Range Not Satisfiable to a range request.
    AlreadyComplete,
}

fn request(agent: &ureq::Agent, url: &str, offset: u64) -> Result<Reply> {
    let mut req = agent.get(url);
    if offset > 0 {
        req = req.set("Range", &format!("bytes={offset}-"));
    }
    let resp = match req.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(416, _)) if offset > 0 => return Ok(Reply::AlreadyComplete),
        Err(e) => bail!("could not download {url}: {}", describe_error(&e)),
    };
    if offset > 0 && resp.status() == 206 {
        let expected = format!("bytes {offset}-");
        let ok = resp
            .header("Content-Range")
            .is_some_and(|cr| cr.trim().to_ascii_lowercase().starts_with(&expected));
        if ok {
            return Ok(Reply::Body(Box::new(resp), offset));
        }
        // A range we did not ask for: start over without one.
        return request(agent, url, 0);
    }
    if resp.status() == 206 {
        bail!("{url} answered 206 Partial Content to a request without a range");
    }
    // 200: the whole file (a server that ignores Range lands here too).
    Ok(Reply::Body(Box::new(resp), 0))
}

/// Total file length from Content-Range (`bytes a-b/total`) or Content-Length.
fn total_len(resp: &ureq::Response, offset: u64) -> Option<u64> {
    if let Some(cr) = resp.header("Content-Range") {
        if let Some(t) = cr.rsplit('/').next().and_then(|t| t.trim().parse().ok()) {
            return Some(t);
        }
    }
    resp.header("Content-Length")
        .and_then(|l| l.trim().parse::<u64>().ok())
        .map(|l| l + offset)
}

fn verify_or_delete(url: &str, part: &Path, sha256: &str) -> Result<()> {
    let got = sha256_file(part)?;
    if got.eq_ignore_ascii_case(sha256) {
        return Ok(());
    }
    let _ = std::fs::remove_file(part);
    bail!("sha256 mismatch for {url}: expected {sha256}, got {got}")
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to)
        .with_context(|| format!("renaming {} to {}", from.display(), to.display()))
}
