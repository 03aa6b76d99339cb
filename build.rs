//! Embeds the shipped presets and datasets (`presets/`, `data/sft`, `data/sts`, `data/docs`)
//! into the binary, so that `ftlab` works from any directory. The files in the repository stay
//! the source of truth: this writes a table of `include_bytes!` of them, re-run whenever one
//! is added, removed or edited.
use std::path::{Path, PathBuf};

/// Embedded folders: (folder in the repository, key prefix inside `builtin:`).
const FOLDERS: [(&str, &str); 4] = [
    ("presets", "presets"),
    ("data/sft", "sft"),
    ("data/sts", "sts"),
    ("data/docs", "docs"),
];

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let mut rows = Vec::new();
    for (folder, prefix) in FOLDERS {
        let dir = root.join(folder);
        println!("cargo:rerun-if-changed={}", dir.display());
        for file in files(&dir) {
            let name = file.file_name().unwrap().to_str().expect("UTF-8 file name");
            rows.push((format!("{prefix}/{name}"), file.display().to_string()));
        }
    }
    rows.sort();
    let rows: Vec<String> = rows
        .iter()
        .map(|(key, file)| format!("    ({key:?}, include_bytes!({file:?})),\n"))
        .collect();
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("builtin_files.rs");
    let text = format!(
        "/// Every embedded file as (key, bytes), sorted by key.\npub static FILES: &[(&str, &[u8])] = &[\n{}];\n",
        rows.concat()
    );
    std::fs::write(out, text).unwrap();
}

/// The plain files of `dir` (not recursive), sorted by name.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}
