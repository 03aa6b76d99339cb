//! `hf:org/name[@revision]` models from the Hugging Face Hub (or a mirror set
//! with `HF_ENDPOINT`), downloaded with hf-hub into `<cache>/hf`.
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Repo, RepoType};

use super::download::is_loopback;
use super::spec::check_hf_dir;
use super::{ModelSource, ResolvedModel};

/// The Hub's address; `HF_ENDPOINT` overrides it.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// `$HF_ENDPOINT` if set and non-empty, else [`DEFAULT_ENDPOINT`].
pub fn endpoint() -> String {
    std::env::var("HF_ENDPOINT")
        .ok()
        .filter(|v| !v.is_empty())
        .map(|v| v.trim_end_matches('/').to_string())
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
}

/// A parsed `hf:` spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HfSpec {
    /// `org/name` (or a legacy single-segment name).
    pub repo: String,
    /// Branch, tag or commit; `None` means `main`.
    pub revision: Option<String>,
}

/// Parses `org/name[@revision]`, with or without the `hf:` prefix.
pub fn parse_hf_spec(spec: &str) -> Result<HfSpec> {
    let s = spec.strip_prefix("hf:").unwrap_or(spec).trim();
    let (repo, revision) = match s.split_once('@') {
        Some((r, rev)) => (r, Some(rev)),
        None => (s, None),
    };
    let ok_part = |p: &str| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    let parts: Vec<&str> = repo.split('/').collect();
    if parts.len() > 2 || !parts.iter().all(|p| ok_part(p)) {
        bail!("bad Hugging Face model spec {spec:?}: expected hf:org/name or hf:org/name@revision");
    }
    if revision.is_some_and(|r| r.trim().is_empty()) {
        bail!("bad Hugging Face model spec {spec:?}: empty revision after '@'");
    }
    Ok(HfSpec {
        repo: repo.to_string(),
        revision: revision.map(|r| r.trim().to_string()),
    })
}

/// Resolves an `hf:` spec: uses `hf_cache` (an hf-hub cache folder) when it
/// already holds config.json, tokenizer.json and the weights for the
/// revision; otherwise checks that `endpoint` answers (failing within about
/// 20 s) and downloads config.json, tokenizer.json, tokenizer_config.json (if
/// present) and model.safetensors or model.safetensors.index.json + shards.
pub fn resolve_hf(
    spec: &str,
    hf_cache: &Path,
    endpoint: &str,
    progress: bool,
) -> Result<ResolvedModel> {
    let parsed = parse_hf_spec(spec)?;
    let revision = parsed
        .revision
        .clone()
        .unwrap_or_else(|| "main".to_string());
    let repo = Repo::with_revision(parsed.repo.clone(), RepoType::Model, revision.clone());
    let label = format!("hf:{}@{revision}", parsed.repo);

    let dir = match cached_snapshot(hf_cache, &repo) {
        Some(dir) => dir,
        None => {
            let token = token();
            probe(endpoint, &parsed, token.as_deref())?;
            let api = ApiBuilder::from_env()
                .with_cache_dir(hf_cache.to_path_buf())
                .with_endpoint(endpoint.trim_end_matches('/').to_string())
                .with_token(token)
                .with_progress(progress && std::io::stderr().is_terminal())
                .build()
                .context("setting up the Hugging Face Hub client")?;
            download(&api.repo(repo), &label)?
        }
    };
    check_hf_dir(&dir)?;
    Ok(ResolvedModel {
        name: parsed.repo,
        source: ModelSource::HfDir { dir },
    })
}

fn token() -> Option<String> {
    std::env::var("HF_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
        .map(|t| t.trim().to_string())
        .or_else(|| hf_hub::Cache::from_env().token())
}

/// The snapshot folder when every needed file is already cached.
fn cached_snapshot(hf_cache: &Path, repo: &Repo) -> Option<PathBuf> {
    let cache = hf_hub::Cache::new(hf_cache.to_path_buf()).repo(repo.clone());
    let config = cache.get("config.json")?;
    cache.get("tokenizer.json")?;
    if cache.get("model.safetensors").is_none() {
        let index = cache.get("model.safetensors.index.json")?;
        for shard in shards(&index).ok()? {
            cache.get(&shard)?;
        }
    }
    config.parent().map(Path::to_path_buf)
}

/// Asks the Hub about the model with short timeouts, so an unreachable Hub
/// fails fast with a clear message instead of hanging in the downloader.
fn probe(endpoint: &str, spec: &HfSpec, token: Option<&str>) -> Result<()> {
    let endpoint = endpoint.trim_end_matches('/');
    let mut url = format!("{endpoint}/api/models/{}", spec.repo);
    if let Some(rev) = &spec.revision {
        url = format!("{url}/revision/{rev}");
    }
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(10))
        .timeout(Duration::from_secs(20))
        .try_proxy_from_env(!is_loopback(endpoint))
        .user_agent(concat!("ftlab/", env!("CARGO_PKG_VERSION")))
        .build();
    let mut req = agent.get(&url);
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    match req.call() {
        Ok(_) => Ok(()),
        Err(ureq::Error::Status(404, _)) => bail!(
            "hf:{}{}: not found on {endpoint} (check the name and revision; private or gated models need HF_TOKEN)",
            spec.repo,
            spec.revision.as_deref().map(|r| format!("@{r}")).unwrap_or_default()
        ),
        // Any other answer means the Hub is there; the download reports details.
        Err(ureq::Error::Status(..)) => Ok(()),
        Err(ureq::Error::Transport(t)) => bail!(
            "could not reach the Hugging Face Hub at {endpoint} (set HF_ENDPOINT for a mirror): {t}"
        ),
    }
}

fn download(api: &ApiRepo, label: &str) -> Result<PathBuf> {
    let get = |file: &str| {
        api.get(file)
            .with_context(|| format!("downloading {file} of {label}"))
    };
    let config = get("config.json")?;
    get("tokenizer.json")?;
    optional(api, "tokenizer_config.json", label)?;
    if optional(api, "model.safetensors", label)?.is_none() {
        let Some(index) = optional(api, "model.safetensors.index.json", label)? else {
            bail!("{label} has neither model.safetensors nor model.safetensors.index.json (ftlab reads safetensors weights)");
        };
        for shard in shards(&index)? {
            get(&shard)?;
        }
    }
    config
        .parent()
        .map(Path::to_path_buf)
        .with_context(|| format!("no parent folder for {}", config.display()))
}

/// Downloads `file`, `None` when the Hub answers 404 for it.
fn optional(api: &ApiRepo, file: &str, label: &str) -> Result<Option<PathBuf>> {
    match api.get(file) {
        Ok(p) => Ok(Some(p)),
        Err(ApiError::RequestError(e)) if matches!(*e, ureq::Error::Status(404, _)) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("downloading {file} of {label}")),
    }
}

/// Shard file names listed in a model.safetensors.index.json `weight_map`.
fn shards(index: &Path) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(index).with_context(|| format!("reading {}", index.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", index.display()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .with_context(|| format!("{} has no weight_map", index.display()))?;
    let mut names: Vec<String> = map
        .values()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    names.sort();
    names.dedup();
    if names.iter().any(|n| n.contains("..") || n.starts_with('/')) {
        bail!("{} names a shard outside the repository", index.display());
    }
    Ok(names)
}
