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
    cuda_kernels(&root);
}

/// ftlab's own CUDA kernels, `kernels/NAME.cu`.
const CUDA_KERNELS: &[&str] = &["quant4"];

/// With `--features cuda`: ftlab's own CUDA kernels (`kernels/*.cu`) compiled to PTX with
/// nvcc, as candle builds its kernels, for `CUDA_COMPUTE_CAP` (default 80; the PTX is
/// JIT-compiled for newer GPUs).
fn cuda_kernels(root: &Path) {
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "80".into());
    let cap: String = cap.chars().filter(char::is_ascii_digit).collect();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    for name in CUDA_KERNELS {
        let src = root.join("kernels").join(format!("{name}.cu"));
        println!("cargo:rerun-if-changed={}", src.display());
        let ptx = out_dir.join(format!("{name}.ptx"));
        let status = std::process::Command::new("nvcc")
            .args(["--ptx", "-O3", &format!("-arch=compute_{cap}"), "-o"])
            .arg(&ptx)
            .arg(&src)
            .status()
            .unwrap_or_else(|e| {
                panic!(
                    "running nvcc for {}: {e} (is the CUDA toolkit on PATH?)",
                    src.display()
                )
            });
        assert!(status.success(), "nvcc failed on {}", src.display());
    }
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
