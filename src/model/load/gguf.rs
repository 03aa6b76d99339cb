//! GGUF files (llama.cpp): metadata, tensors dequantised to f32, llama.cpp names mapped
//! to Hugging Face names, Q/K rows un-permuted back to the half-split RoPE layout.
use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Shape, Tensor};

use super::source::{check_shape, Init, TensorSource};

pub struct GgufFile {
    path: PathBuf,
    content: Content,
    reader: Mutex<BufReader<File>>,
}

impl GgufFile {
    /// Opens a GGUF file and checks that its header and every tensor fit in the file, so a
    /// truncated download is reported at open time, naming the file.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
        let file_len = file.metadata()?.len();
        let mut reader = BufReader::new(file);
        let content = Content::read(&mut reader).map_err(|e| {
            anyhow!(
                "{}: not a readable GGUF file ({} bytes): {e}",
                path.display(),
                file_len
            )
        })?;
        for (name, info) in &content.tensor_infos {
            let elems = info.shape.elem_count();
            let block = info.ggml_dtype.block_size();
            let bytes = (elems / block * info.ggml_dtype.type_size()) as u64;
            let end = content.tensor_data_offset + info.offset + bytes;
            if end > file_len {
                bail!(
                    "{}: truncated GGUF file: tensor `{name}` ends at byte {end} but the file has only {file_len} bytes (re-download it)",
                    path.display()
                );
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            content,
            reader: Mutex::new(reader),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn content(&self) -> &Content {
        &self.content
    }

    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    pub fn architecture(&self) -> Result<String> {
        self.meta_str("general.architecture")
    }

    pub fn meta_str(&self, key: &str) -> Result<String> {
        match self.metadata().get(key) {
            Some(v) => Ok(v
                .to_string()
                .map_err(|e| anyhow!("{}: metadata `{key}`: {e}", self.path.display()))?
                .clone()),
            None => bail!("{}: missing metadata key `{key}`", self.path.display()),
        }
    }

    /// A numeric metadata value of any integer or float type.
    pub fn meta_f64(&self, key: &str) -> Result<f64> {
        let v = self
            .metadata()
            .get(key)
            .ok_or_else(|| anyhow!("{}: missing metadata key `{key}`", self.path.display()))?;
        let x = match v {
            Value::U8(x) => *x as f64,
            Value::I8(x) => *x as f64,
            Value::U16(x) => *x as f64,
            Value::I16(x) => *x as f64,
            Value::U32(x) => *x as f64,
            Value::I32(x) => *x as f64,
            Value::U64(x) => *x as f64,
            Value::I64(x) => *x as f64,
            Value::F32(x) => *x as f64,
            Value::F64(x) => *x,
            other => bail!(
                "{}: metadata `{key}` is {:?}, expected a number",
                self.path.display(),
                other.value_type()
            ),
        };
        Ok(x)
    }

    pub fn meta_usize(&self, key: &str) -> Result<usize> {
        let x = self.meta_f64(key)?;
        if x < 0.0 || x.fract() != 0.0 {
            bail!(
                "{}: metadata `{key}` = {x} is not a count",
                self.path.display()
            );
        }
        Ok(x as usize)
    }

    /// The vocabulary size: the length of `tokenizer.ggml.tokens`, else `<arch>.vocab_size`.
    pub fn vocab_size(&self) -> Result<usize> {
        let tokens = match self.metadata().get("tokenizer.ggml.tokens") {
            Some(v) => v.to_vec().map(|t| t.len()).unwrap_or(0),
            None => 0,
        };
        if tokens > 0 {
            return Ok(tokens);
        }
        self.meta_usize(&format!("{}.vocab_size", self.architecture()?))
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// Reads and dequantises one tensor (llama.cpp name) to f32.
    pub fn dequantize(&self, name: &str, device: &Device) -> Result<Tensor> {
        Ok(self.quantized(name, device)?.dequantize(device)?)
    }

    /// Reads one tensor (llama.cpp name) as the file stores it.
    pub fn quantized(&self, name: &str, device: &Device) -> Result<QTensor> {
        let mut reader = self
            .reader
            .lock()
            .map_err(|_| anyhow!("{}: reader poisoned", self.path.display()))?;
        self.content
            .tensor(&mut *reader, name, device)
            .map_err(|e| anyhow!("{}: tensor `{name}`: {e}", self.path.display()))
    }
}

/// How an architecture's tensors are named and changed by llama.cpp's converter.
pub struct GgufLayout {
    /// llama.cpp's name (after `blk.N.`) of a block tensor, from its HF name after
    /// `model.layers.N.`.
    pub block_name: fn(&str) -> Option<&'static str>,
    /// What the converter added to every norm weight (`*norm.weight`): Gemma's norms scale
    /// by (1 + w) and llama.cpp stores 1 + w, so the HF weight is the stored one minus this.
    pub norm_shift: f64,
}

/// The LLaMA family's block tensors (llama, qwen2).
pub const LLAMA_LAYOUT: GgufLayout = GgufLayout {
    block_name: |rest| {
        Some(match rest {
            "self_attn.q_proj.weight" => "attn_q.weight",
            "self_attn.k_proj.weight" => "attn_k.weight",
            "self_attn.v_proj.weight" => "attn_v.weight",
            "self_attn.q_proj.bias" => "attn_q.bias",
            "self_attn.k_proj.bias" => "attn_k.bias",
            "self_attn.v_proj.bias" => "attn_v.bias",
            "self_attn.o_proj.weight" => "attn_output.weight",
            "mlp.gate_proj.weight" => "ffn_gate.weight",
            "mlp.up_proj.weight" => "ffn_up.weight",
            "mlp.down_proj.weight" => "ffn_down.weight",
            "input_layernorm.weight" => "attn_norm.weight",
            "post_attention_layernorm.weight" => "ffn_norm.weight",
            _ => return None,
        })
    },
    norm_shift: 0.0,
};

/// Hugging Face names of a decoder mapped to llama.cpp's GGUF names, through the
/// architecture's [`GgufLayout`].
pub struct GgufSource {
    file: GgufFile,
    layout: &'static GgufLayout,
    /// llama.cpp permutes Q/K rows of `llama` models for interleaved RoPE (heads, kv
    /// heads); other architectures (qwen2, gemma3) are stored in the HF layout.
    unpermute_qk: Option<(usize, usize)>,
}

impl GgufSource {
    pub fn new(
        file: GgufFile,
        layout: &'static GgufLayout,
        n_head: usize,
        n_kv_head: usize,
    ) -> Result<Self> {
        let arch = file.architecture()?;
        Ok(Self {
            unpermute_qk: (arch == "llama").then_some((n_head, n_kv_head)),
            file,
            layout,
        })
    }

    pub fn file(&self) -> &GgufFile {
        &self.file
    }

    fn gguf_name(&self, name: &str) -> Option<String> {
        let direct = match name {
            "model.embed_tokens.weight" => Some("token_embd.weight"),
            "model.norm.weight" => Some("output_norm.weight"),
            "lm_head.weight" => Some("output.weight"),
            _ => None,
        };
        if let Some(n) = direct {
            return Some(n.to_string());
        }
        let rest = name.strip_prefix("model.layers.")?;
        let (idx, rest) = rest.split_once('.')?;
        let mapped = (self.layout.block_name)(rest)?;
        Some(format!("blk.{idx}.{mapped}"))
    }
}

/// [`unpermute_rows`] on a quantised (out, in) weight: its rows are whole runs of blocks,
/// so the same row order is a reordering of byte runs.
pub fn unpermute_quantized_rows(q: &QTensor, n_head: usize, device: &Device) -> Result<QTensor> {
    let dims = q.shape().dims().to_vec();
    let (rows, cols) = (dims[0], dims[1]);
    let data = q.data()?;
    let row_bytes = data.len() / rows;
    let head_dim = rows / n_head;
    let half = head_dim / 2;
    let mut out = Vec::with_capacity(data.len());
    // New row (h, j, i) (j < 2, i < half) is old row (h, i, j).
    for h in 0..n_head {
        for j in 0..2 {
            for i in 0..half {
                let old = h * head_dim + i * 2 + j;
                out.extend_from_slice(&data[old * row_bytes..(old + 1) * row_bytes]);
            }
        }
    }
    Ok(candle_core::quantized::ggml_file::qtensor_from_ggml(
        q.dtype(),
        &out,
        vec![rows, cols],
        device,
    )?)
}

/// Undoes llama.cpp's Q/K permutation: rows grouped as (head, head_dim/2, 2) go back
/// to (head, 2, head_dim/2), the layout half-split RoPE expects.
pub fn unpermute_rows(w: &Tensor, n_head: usize) -> Result<Tensor> {
    let dims = w.dims().to_vec();
    let rows = dims[0];
    let head_dim = rows / n_head;
    let rest: Vec<usize> = dims[1..].to_vec();
    let mut shape = vec![n_head, head_dim / 2, 2];
    shape.extend(&rest);
    let t = w.reshape(shape)?.transpose(1, 2)?.contiguous()?;
    Ok(t.reshape(dims)?)
}

impl TensorSource for GgufSource {
    fn get(&self, name: &str, shape: &Shape, _init: Init, device: &Device) -> Result<Tensor> {
        let gname = self
            .gguf_name(name)
            .ok_or_else(|| anyhow!("no GGUF tensor corresponds to `{name}`"))?;
        let t = self.file.dequantize(&gname, device)?;
        let t = match self.unpermute_qk {
            Some((heads, _)) if gname.ends_with("attn_q.weight") => unpermute_rows(&t, heads)?,
            Some((_, kv_heads)) if gname.ends_with("attn_k.weight") => {
                unpermute_rows(&t, kv_heads)?
            }
            _ => t,
        };
        let shift = self.layout.norm_shift;
        let t = if shift != 0.0 && gname.ends_with("norm.weight") {
            (t - shift)?
        } else {
            t
        };
        check_shape(&t, name, shape, self.origin())?;
        Ok(t)
    }

    fn contains(&self, name: &str) -> bool {
        self.gguf_name(name)
            .is_some_and(|g| self.file.has_tensor(&g))
    }

    fn get_quantized(&self, name: &str, shape: &Shape, device: &Device) -> Result<Option<QTensor>> {
        let Some(gname) = self.gguf_name(name) else {
            return Ok(None);
        };
        let q = self.file.quantized(&gname, device)?;
        if matches!(q.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
            || q.shape() != shape
        {
            return Ok(None);
        }
        let q = match self.unpermute_qk {
            Some((heads, _)) if gname.ends_with("attn_q.weight") => {
                unpermute_quantized_rows(&q, heads, device)?
            }
            Some((_, kv_heads)) if gname.ends_with("attn_k.weight") => {
                unpermute_quantized_rows(&q, kv_heads, device)?
            }
            _ => q,
        };
        Ok(Some(q))
    }

    fn origin(&self) -> &Path {
        self.file.path()
    }
}
