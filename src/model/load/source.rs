//! Where weights come from (`TensorSource`) and how they become model parameters
//! (`ParamBuilder`): frozen tensors, or `Var`s that receive gradients.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Shape, Tensor, Var};

use crate::model::linear::{BaseWeight, Linear, Quant4Kind, QuantizedTiedHead};

/// How a parameter is initialised when a source has no stored value (tests, new heads).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    Normal(f64),
    Ones,
    Zeros,
}

/// A named collection of tensors, addressed by Hugging Face parameter names
/// (`model.layers.0.self_attn.q_proj.weight`). Loaders translate their own layout.
pub trait TensorSource {
    /// The tensor called `name`, in f32 on `device`, checked against `shape`.
    fn get(&self, name: &str, shape: &Shape, init: Init, device: &Device) -> Result<Tensor>;
    fn contains(&self, name: &str) -> bool;
    /// The file or directory the tensors come from, for error messages.
    fn origin(&self) -> &Path;
    /// The tensor called `name` as the file quantises it (GGUF's Q4_K, Q8_0, …), for a
    /// frozen linear weight (out, in) read by a quantised matmul; `None` where the source
    /// has no quantised form of it (safetensors, a float tensor).
    fn get_quantized(
        &self,
        _name: &str,
        _shape: &Shape,
        _device: &Device,
    ) -> Result<Option<candle_core::quantized::QTensor>> {
        Ok(None)
    }
}

pub(crate) fn check_shape(t: &Tensor, name: &str, shape: &Shape, origin: &Path) -> Result<()> {
    if t.shape() != shape {
        bail!(
            "{}: tensor `{name}` has shape {:?}, expected {:?} from the model config",
            origin.display(),
            t.dims(),
            shape.dims()
        );
    }
    Ok(())
}

/// Random weights for tiny models built inside tests and benchmarks. Deterministic: each
/// tensor is drawn from a generator seeded by the source's seed and the tensor's name, so
/// the same model comes out on every machine and in any build order.
pub struct RandomSource {
    origin: PathBuf,
    std_scale: f64,
    seed: u64,
}

impl RandomSource {
    /// `std_scale` multiplies the standard deviation of `Init::Normal` parameters; seed 0.
    pub fn new(std_scale: f64) -> Self {
        Self::seeded(std_scale, 0)
    }

    /// Like [`RandomSource::new`] with another seed (another model).
    pub fn seeded(std_scale: f64, seed: u64) -> Self {
        Self {
            origin: PathBuf::from("<random init>"),
            std_scale,
            seed,
        }
    }

    fn normal(&self, name: &str, shape: &Shape, std: f64, device: &Device) -> Result<Tensor> {
        use rand::{Rng, SeedableRng};
        // FNV-1a of the name, mixed with the seed.
        let name_hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
        });
        let mut rng = rand::rngs::StdRng::seed_from_u64(name_hash ^ self.seed.rotate_left(32));
        let n = shape.elem_count();
        let mut values = Vec::with_capacity(n + 1);
        // Box–Muller: two standard normals from two uniforms in (0, 1].
        while values.len() < n {
            let u1: f64 = 1.0 - rng.gen::<f64>();
            let u2: f64 = rng.gen::<f64>();
            let r = (-2.0 * u1.ln()).sqrt();
            let theta = std::f64::consts::TAU * u2;
            values.push((std * r * theta.cos()) as f32);
            values.push((std * r * theta.sin()) as f32);
        }
        values.truncate(n);
        Ok(Tensor::from_vec(values, shape.clone(), device)?)
    }
}

impl TensorSource for RandomSource {
    fn get(&self, name: &str, shape: &Shape, init: Init, device: &Device) -> Result<Tensor> {
        Ok(match init {
            Init::Normal(std) => self.normal(name, shape, std * self.std_scale, device)?,
            Init::Ones => Tensor::ones(shape, DType::F32, device)?,
            Init::Zeros => Tensor::zeros(shape, DType::F32, device)?,
        })
    }
    fn contains(&self, _name: &str) -> bool {
        true
    }
    fn origin(&self) -> &Path {
        &self.origin
    }
}

/// Builds parameters from a source: trainable ones become `Var`s and are recorded.
pub struct ParamBuilder<'a> {
    src: &'a dyn TensorSource,
    device: Device,
    dtype: DType,
    trainable: bool,
    params: Vec<(String, Var)>,
    /// Block linear weights stored in 4 bits as they are read (QLoRA; double quantisation).
    quant4: Option<(Quant4Kind, bool)>,
    /// Frozen block linear weights kept in the file's quantisation (inference from GGUF).
    keep_quantized: bool,
}

impl<'a> ParamBuilder<'a> {
    pub fn new(src: &'a dyn TensorSource, device: &Device, dtype: DType, trainable: bool) -> Self {
        Self {
            src,
            device: device.clone(),
            dtype,
            trainable,
            params: Vec::new(),
            quant4: None,
            keep_quantized: false,
        }
    }

    /// Keeps frozen block linear weights in the file's quantisation where the source has
    /// one (GGUF): inference reads them with a quantised matmul (`linear::qgemv`, or
    /// candle's for k-quants).
    pub fn with_keep_quantized(mut self, keep: bool) -> Self {
        self.keep_quantized = keep;
        self
    }

    /// Stores every block linear weight in 4 bits as soon as it is read, so that loading
    /// never holds the dense model (what decides whether a large QLoRA fits at all).
    pub fn with_quant4(mut self, quant4: Option<(Quant4Kind, bool)>) -> Self {
        self.quant4 = quant4;
        self
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn contains(&self, name: &str) -> bool {
        self.src.contains(name)
    }

    /// Loads `name`, casts it to the compute dtype and makes it a `Var` when trainable.
    pub fn tensor<S: Into<Shape>>(&mut self, name: &str, shape: S, init: Init) -> Result<Tensor> {
        let shape = shape.into();
        let t = self
            .src
            .get(name, &shape, init, &self.device)
            .with_context(|| format!("{}: loading `{name}`", self.src.origin().display()))?;
        check_shape(&t, name, &shape, self.src.origin())?;
        let t = t.to_dtype(self.dtype)?;
        if self.trainable {
            let var = Var::from_tensor(&t)?;
            let t = var.as_tensor().clone();
            self.params.push((name.to_string(), var));
            Ok(t)
        } else {
            Ok(t)
        }
    }

    /// A linear layer `prefix.weight` (out, in) with an optional `prefix.bias`.
    pub fn linear(
        &mut self,
        prefix: &str,
        in_f: usize,
        out_f: usize,
        bias: bool,
    ) -> Result<Linear> {
        let w = self.tensor(
            &format!("{prefix}.weight"),
            (out_f, in_f),
            Init::Normal(0.02),
        )?;
        let b = if bias {
            Some(self.tensor(&format!("{prefix}.bias"), out_f, Init::Zeros)?)
        } else {
            None
        };
        Ok(Linear::new(BaseWeight::Dense(w), b))
    }

    /// A linear layer inside a block: [`Self::linear`], then 4-bit when the builder says so
    /// (frozen: a quantised weight is never a `Var`).
    pub fn block_linear(
        &mut self,
        prefix: &str,
        in_f: usize,
        out_f: usize,
        bias: bool,
    ) -> Result<Linear> {
        if self.keeps_quantized() {
            let name = format!("{prefix}.weight");
            let shape = Shape::from((out_f, in_f));
            if let Some(q) = self.src.get_quantized(&name, &shape, &self.device)? {
                let w = candle_core::quantized::QMatMul::from_qtensor(q)?;
                let b = if bias {
                    Some(self.tensor(&format!("{prefix}.bias"), out_f, Init::Zeros)?)
                } else {
                    None
                };
                return Ok(Linear::new(BaseWeight::Gguf(w), b));
            }
        }
        let mut l = self.linear(prefix, in_f, out_f, bias)?;
        if let Some((kind, double_quant)) = self.quant4 {
            l.quantize_base(kind, double_quant)?;
        }
        Ok(l)
    }

    /// Whether weights stay in the file's quantisation: inference of a frozen model loaded
    /// with `keep_quantized` and no 4-bit base of its own.
    fn keeps_quantized(&self) -> bool {
        self.keep_quantized && !self.trainable && self.quant4.is_none()
    }

    /// The tensor `name` of shape `shape` as the file quantises it, for a matmul, when
    /// weights stay quantised and the file stores it quantised; else `None`.
    pub fn quantized_matmul(
        &mut self,
        name: &str,
        shape: &Shape,
    ) -> Result<Option<candle_core::quantized::QMatMul>> {
        if !self.keeps_quantized() {
            return Ok(None);
        }
        match self.src.get_quantized(name, shape, &self.device)? {
            Some(q) => Ok(Some(candle_core::quantized::QMatMul::from_qtensor(q)?)),
            None => Ok(None),
        }
    }

    /// For a tied LM head (`tied`), the quantised copy of its table `name` (the tensor
    /// `table`, as loaded) when weights stay quantised and the file quantises it; otherwise
    /// an empty one, and the head multiplies the dense table.
    pub fn quantized_tied_head(
        &mut self,
        tied: bool,
        name: &str,
        table: &candle_core::Tensor,
    ) -> Result<QuantizedTiedHead> {
        if !tied {
            return Ok(QuantizedTiedHead::default());
        }
        Ok(match self.quantized_matmul(name, table.shape())? {
            Some(q) => QuantizedTiedHead::new(q, table),
            None => QuantizedTiedHead::default(),
        })
    }

    /// The trainable parameters created so far, by name.
    pub fn into_params(self) -> Vec<(String, Var)> {
        self.params
    }
}
