//! What every decoder architecture provides, and the one table of its weights.
//!
//! Each architecture file (`llama.rs`, `gpt_neox.rs`) names its weights once, with
//! [`weight_table!`]: HF name ↔ field ↔ kind and size. Loading, LoRA targeting,
//! quantisation, merging, export, parameter counts and the memory plan all read that
//! table, so a weight cannot be loaded and then forgotten by merge or export.
//! Adding an architecture means one new file (config, [`DecoderConfig`], [`DecoderArch`],
//! its [`ArchSpec`]) plus one line in [`REGISTRY`].
use std::fmt::Debug;
use std::sync::Arc;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};

use super::kv_cache::LayerCache;
use super::linear::Linear;
use super::load::gguf::GgufFile;
use super::load::{Init, ParamBuilder, TensorSource};
use super::shape::{Arch, ModelShape, RowOps};

pub use super::decoder::{Decoder, DecoderBlock, DecoderEnds, Positions};

/// Every registered architecture. The one line to add for a new one.
pub const REGISTRY: &[Arch] = &[
    super::llama::ARCH,
    super::gpt_neox::ARCH,
    super::gemma3::ARCH,
];

/// What a weight of the table is, with its sizes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WeightKind {
    /// A linear layer inside a block (`.weight` (out, in), `.bias` when `bias`): targeted
    /// by LoRA, quantised by QLoRA.
    Linear {
        in_f: usize,
        out_f: usize,
        bias: bool,
        /// Reads the block input (through the first norm): q/k/v or GPT-NeoX's qkv.
        reads_block_input: bool,
    },
    /// The token embedding table (`.weight`, (vocab, hidden)).
    Embedding { vocab: usize, hidden: usize },
    /// An untied output head (`.weight`, (vocab, hidden)); absent when tied.
    Head { vocab: usize, hidden: usize },
    /// A vector (norm weight or bias), named by its full tensor name.
    Vector { len: usize, init: Init },
    /// Another dense matrix (e.g. BERT's position embeddings), named by its full tensor
    /// name.
    Matrix {
        rows: usize,
        cols: usize,
        init: Init,
    },
}

/// A table entry without its field: what the plan and descriptions need.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightDesc {
    /// Module name (linear, embedding, head) or tensor name (vector); relative to the
    /// block for block tables.
    pub name: String,
    pub kind: WeightKind,
}

/// A dense weight vector of an architecture (norms): a tensor with a placeholder default,
/// so that blocks can be built empty and filled from their table.
#[derive(Debug, Clone)]
pub struct Param(pub Tensor);

impl Default for Param {
    fn default() -> Self {
        Self(placeholder())
    }
}

impl std::ops::Deref for Param {
    type Target = Tensor;
    fn deref(&self) -> &Tensor {
        &self.0
    }
}

/// An empty tensor standing for a weight not loaded yet.
pub(crate) fn placeholder() -> Tensor {
    Tensor::zeros(0, DType::F32, &Device::Cpu).expect("an empty CPU tensor")
}

/// A field of a table, read-only.
#[derive(Debug, Clone, Copy)]
pub enum Weight<'a> {
    Linear(&'a Linear),
    /// The untied head: `None` when tied.
    OptLinear(Option<&'a Linear>),
    Tensor(&'a Tensor),
}

/// A field of a table, writable.
#[derive(Debug)]
pub enum WeightMut<'a> {
    Linear(&'a mut Linear),
    OptLinear(&'a mut Option<Linear>),
    Tensor(&'a mut Param),
}

impl<'a> From<&'a Linear> for Weight<'a> {
    fn from(l: &'a Linear) -> Self {
        Weight::Linear(l)
    }
}
impl<'a> From<&'a Option<Linear>> for Weight<'a> {
    fn from(l: &'a Option<Linear>) -> Self {
        Weight::OptLinear(l.as_ref())
    }
}
impl<'a> From<&'a Param> for Weight<'a> {
    fn from(p: &'a Param) -> Self {
        Weight::Tensor(&p.0)
    }
}
impl<'a> From<&'a mut Linear> for WeightMut<'a> {
    fn from(l: &'a mut Linear) -> Self {
        WeightMut::Linear(l)
    }
}
impl<'a> From<&'a mut Option<Linear>> for WeightMut<'a> {
    fn from(l: &'a mut Option<Linear>) -> Self {
        WeightMut::OptLinear(l)
    }
}
impl<'a> From<&'a mut Param> for WeightMut<'a> {
    fn from(p: &'a mut Param) -> Self {
        WeightMut::Tensor(p)
    }
}

/// One entry of a weight table with its field.
#[derive(Debug)]
pub struct Slot<W> {
    pub name: String,
    pub kind: WeightKind,
    pub weight: W,
}

impl<W> Slot<W> {
    pub fn desc(&self) -> WeightDesc {
        WeightDesc {
            name: self.name.clone(),
            kind: self.kind,
        }
    }

    /// The tensor holding this entry's (main) weight: `NAME.weight` for a module (linear,
    /// embedding, head), the entry's own name for a vector or matrix.
    pub fn tensor_name(&self) -> String {
        match self.kind {
            WeightKind::Vector { .. } | WeightKind::Matrix { .. } => self.name.clone(),
            _ => format!("{}.weight", self.name),
        }
    }

    pub(crate) fn prefixed(mut self, prefix: &str) -> Self {
        if !prefix.is_empty() {
            self.name = format!("{prefix}.{}", self.name);
        }
        self
    }
}

impl Slot<WeightMut<'_>> {
    /// Loads this entry from `pb` (a tied head stays `None`).
    pub(crate) fn load(self, pb: &mut ParamBuilder, tied: bool) -> Result<()> {
        let name = &self.name;
        match (self.weight, self.kind) {
            (
                WeightMut::Linear(l),
                WeightKind::Linear {
                    in_f, out_f, bias, ..
                },
            ) => *l = pb.block_linear(name, in_f, out_f, bias)?,
            (WeightMut::OptLinear(l), WeightKind::Head { vocab, hidden }) => {
                *l = if tied {
                    None
                } else {
                    Some(pb.linear(name, hidden, vocab, false)?)
                }
            }
            (WeightMut::Tensor(t), WeightKind::Embedding { vocab, hidden }) => {
                t.0 = pb.tensor(
                    &format!("{name}.weight"),
                    (vocab, hidden),
                    Init::Normal(0.5),
                )?
            }
            (WeightMut::Tensor(t), WeightKind::Vector { len, init }) => {
                t.0 = pb.tensor(name, len, init)?
            }
            (WeightMut::Tensor(t), WeightKind::Matrix { rows, cols, init }) => {
                t.0 = pb.tensor(name, (rows, cols), init)?
            }
            (w, k) => anyhow::bail!("weight table entry `{name}`: field {w:?} cannot hold {k:?}"),
        }
        Ok(())
    }
}

/// A struct whose weights are listed by a table (a block, or the weights around the
/// blocks), with sizes from `S` (a decoder's [`ModelShape`], or an encoder's config).
/// Implemented with [`weight_table!`], which writes both methods from one list.
pub trait WeightTable<S = ModelShape> {
    fn weights<'a>(&'a self, s: &S) -> Vec<Slot<Weight<'a>>>;
    fn weights_mut<'a>(&'a mut self, s: &S) -> Vec<Slot<WeightMut<'a>>>;
}

/// Writes [`WeightTable`] for a struct from one list of `name => field: kind`, where
/// `kind` may use the shape `s` (a [`ModelShape`] unless typed, as in `|s: BertConfig|`):
/// `weight_table!(Block, |s| { "mlp.up_proj" => mlp.up_proj: linear(s.hidden, …), … });`
#[macro_export]
macro_rules! weight_table {
    ($ty:ty, |$s:ident| { $($body:tt)* }) => {
        $crate::weight_table!($ty, |$s: $crate::model::shape::ModelShape| { $($body)* });
    };
    ($ty:ty, |$s:ident : $sty:ty| { $($name:literal => $($field:ident).+ : $kind:expr),* $(,)? }) => {
        impl $crate::model::arch::WeightTable<$sty> for $ty {
            fn weights<'a>(
                &'a self,
                $s: &$sty,
            ) -> Vec<$crate::model::arch::Slot<$crate::model::arch::Weight<'a>>> {
                vec![$($crate::model::arch::Slot {
                    name: $name.to_string(),
                    kind: $kind,
                    weight: (&self $(.$field)+).into(),
                }),*]
            }
            fn weights_mut<'a>(
                &'a mut self,
                $s: &$sty,
            ) -> Vec<$crate::model::arch::Slot<$crate::model::arch::WeightMut<'a>>> {
                vec![$($crate::model::arch::Slot {
                    name: $name.to_string(),
                    kind: $kind,
                    weight: (&mut self $(.$field)+).into(),
                }),*]
            }
        }
    };
}
pub use weight_table;

/// A linear table entry.
pub fn linear(in_f: usize, out_f: usize, bias: bool, reads_block_input: bool) -> WeightKind {
    WeightKind::Linear {
        in_f,
        out_f,
        bias,
        reads_block_input,
    }
}

/// A vector table entry (norm weight or bias).
pub fn vector(len: usize, init: Init) -> WeightKind {
    WeightKind::Vector { len, init }
}

/// The table of `T` as descriptions (no weights loaded); a tied head is left out.
pub fn describe<T: WeightTable + Default>(s: &ModelShape) -> Vec<WeightDesc> {
    T::default()
        .weights(s)
        .iter()
        .filter(|w| !(s.tied_embeddings && matches!(w.kind, WeightKind::Head { .. })))
        .map(Slot::desc)
        .collect()
}

/// Builds the weights around the blocks (`E`) and every block (`B`) from their tables.
pub fn load_tables<E, B>(pb: &mut ParamBuilder, s: &ModelShape) -> Result<(E, Vec<B>)>
where
    E: WeightTable + Default,
    B: WeightTable + Default,
{
    let mut ends = E::default();
    let mut blocks: Vec<B> = (0..s.layers).map(|_| B::default()).collect();
    // Loading order: embedding, blocks, then the rest — the order of the HF files.
    let (first, rest): (Vec<_>, Vec<_>) = ends
        .weights_mut(s)
        .into_iter()
        .partition(|w| matches!(w.kind, WeightKind::Embedding { .. }));
    for slot in first {
        slot.load(pb, s.tied_embeddings)?;
    }
    for (i, b) in blocks.iter_mut().enumerate() {
        let prefix = s.block_prefix(i);
        for slot in b.weights_mut(s) {
            slot.prefixed(&prefix).load(pb, s.tied_embeddings)?;
        }
    }
    for slot in rest {
        slot.load(pb, s.tied_embeddings)?;
    }
    Ok((ends, blocks))
}

/// Every weight of a model, by full HF name: the ends' table (under `prefix`), then each
/// block's (under `block_prefix(i)`).
pub fn all_weights<'a, S, E: WeightTable<S>, B: WeightTable<S>>(
    s: &S,
    prefix: &str,
    ends: &'a E,
    blocks: &'a [B],
    block_prefix: impl Fn(usize) -> String,
) -> Vec<Slot<Weight<'a>>> {
    let mut out: Vec<_> = ends
        .weights(s)
        .into_iter()
        .map(|w| w.prefixed(prefix))
        .collect();
    for (i, b) in blocks.iter().enumerate() {
        let p = block_prefix(i);
        out.extend(b.weights(s).into_iter().map(|w| w.prefixed(&p)));
    }
    out
}

/// [`all_weights`], writable.
pub fn all_weights_mut<'a, S, E: WeightTable<S>, B: WeightTable<S>>(
    s: &S,
    prefix: &str,
    ends: &'a mut E,
    blocks: &'a mut [B],
    block_prefix: impl Fn(usize) -> String,
) -> Vec<Slot<WeightMut<'a>>> {
    let mut out: Vec<_> = ends
        .weights_mut(s)
        .into_iter()
        .map(|w| w.prefixed(prefix))
        .collect();
    for (i, b) in blocks.iter_mut().enumerate() {
        let p = block_prefix(i);
        out.extend(b.weights_mut(s).into_iter().map(|w| w.prefixed(&p)));
    }
    out
}

/// The linear layers among `weights`, by module name (LoRA targets, 4-bit quantisation).
pub fn linears<'a>(weights: Vec<Slot<WeightMut<'a>>>) -> Vec<(String, &'a mut Linear)> {
    weights
        .into_iter()
        .filter_map(|w| match w.weight {
            WeightMut::Linear(l) => Some((w.name, l)),
            _ => None,
        })
        .collect()
}

/// A loaded decoder: its forward pieces and its weights (through its table).
pub trait DecoderArch: Debug + Send + Sync {
    /// The config it was built from.
    fn config(&self) -> &ArchConfig;
    /// Its shape (as loaded: `tied_embeddings` says whether a head was found).
    fn shape(&self) -> &ModelShape;
    fn embed(&self, ids: &Tensor) -> candle_core::Result<Tensor>;
    /// Block `i` on hidden states (b, t, h) at positions `start..`; appends to `cache`.
    fn block(
        &self,
        i: usize,
        x: &Tensor,
        start: usize,
        mask: Option<&Tensor>,
        cache: Option<&mut LayerCache>,
    ) -> candle_core::Result<Tensor>;
    /// Final norm and LM head: logits (b, t, vocab).
    fn head(&self, x: &Tensor) -> candle_core::Result<Tensor>;
    /// Final-normed hidden states (b, t, h) and the dense head weight (vocab, h) when the
    /// head is exactly their product, for the fused loss; `None` (the default) otherwise.
    fn head_split(&self, _x: &Tensor) -> candle_core::Result<Option<(Tensor, Tensor)>> {
        Ok(None)
    }
    /// Every weight by full HF name (from the tables).
    fn weights(&self) -> Vec<Slot<Weight<'_>>>;
    fn weights_mut(&mut self) -> Vec<Slot<WeightMut<'_>>>;
    fn clone_box(&self) -> Box<dyn DecoderArch>;
}

/// `Any` for trait objects (so an [`ArchConfig`] can hand back its concrete config).
pub trait AsAny {
    fn as_any(&self) -> &dyn std::any::Any;
}

impl<T: std::any::Any> AsAny for T {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// An architecture's config: its shape, how to build it, how HF writes it.
pub trait DecoderConfig: AsAny + Debug + Send + Sync {
    fn shape(&self) -> ModelShape;
    /// Longest sequence the position encoding was made for.
    fn max_positions(&self) -> usize;
    fn build(&self, cfg: &ArchConfig, pb: &mut ParamBuilder) -> Result<Box<dyn DecoderArch>>;
    /// The HF `config.json` fields of this config (export and merge add token ids).
    fn hf_config(&self) -> serde_json::Value;
}

/// Any architecture's config, cheap to clone.
#[derive(Debug, Clone)]
pub struct ArchConfig(Arc<dyn DecoderConfig>);

impl ArchConfig {
    pub fn new(c: impl DecoderConfig + 'static) -> Self {
        Self(Arc::new(c))
    }

    pub fn shape(&self) -> ModelShape {
        self.0.shape()
    }

    pub fn max_positions(&self) -> usize {
        self.0.max_positions()
    }

    pub fn arch(&self) -> Arch {
        self.shape().arch
    }

    pub fn hf_config(&self) -> serde_json::Value {
        self.0.hf_config()
    }

    pub fn build(&self, pb: &mut ParamBuilder) -> Result<Box<dyn DecoderArch>> {
        self.0.build(self, pb)
    }

    /// The concrete config, when it is a `T`.
    pub fn downcast<T: 'static>(&self) -> Option<&T> {
        self.0.as_ref().as_any().downcast_ref()
    }
}

impl<T: DecoderConfig + 'static> From<T> for ArchConfig {
    fn from(c: T) -> Self {
        Self::new(c)
    }
}

/// How an architecture reads GGUF files.
pub struct GgufSupport {
    /// GGUF `general.architecture` values it reads.
    pub architectures: &'static [&'static str],
    pub config: fn(&GgufFile) -> Result<ArchConfig>,
    /// The tensors under HF names (llama.cpp's layout translated).
    pub source: fn(GgufFile, &ModelShape) -> Result<Box<dyn TensorSource>>,
}

/// The architecture's count of what its forward code keeps for backward (the memory
/// plan's per-architecture part; see `plan::activations`).
pub struct MemoryProfile {
    /// Elements one block keeps per token, before LoRA.
    pub block_kept_per_token: fn(&ModelShape, RowOps) -> f64,
    /// Elements the final norm keeps per token.
    pub final_norm_kept_per_token: fn(&ModelShape, RowOps) -> f64,
}

/// The static description of an architecture, registered in [`REGISTRY`].
pub struct ArchSpec {
    pub name: &'static str,
    /// HF `config.json` `model_type`s it loads.
    pub hf_model_types: &'static [&'static str],
    /// Other names accepted for it (e.g. in presets).
    pub aliases: &'static [&'static str],
    /// HF module prefix of the blocks (`model.layers`).
    pub block_prefix: &'static str,
    pub from_hf: fn(&serde_json::Value, &str) -> Result<ArchConfig>,
    /// How it reads GGUF files, if it does.
    pub gguf: Option<GgufSupport>,
    pub tables: Tables,
    pub memory: MemoryProfile,
}

/// An architecture's weight tables as descriptions (see [`describe`]).
pub struct Tables {
    pub block: fn(&ModelShape) -> Vec<WeightDesc>,
    pub top: fn(&ModelShape) -> Vec<WeightDesc>,
}

/// The tables of a decoder whose weights around the blocks are `E`.
pub const fn tables<E: DecoderEnds>() -> Tables {
    Tables {
        block: describe::<E::Block>,
        top: describe::<E>,
    }
}

/// The registered architecture reading HF `model_type`.
pub fn for_hf_model_type(model_type: &str) -> Option<Arch> {
    REGISTRY
        .iter()
        .copied()
        .find(|a| a.spec().hf_model_types.contains(&model_type))
}

/// The registered architecture reading GGUF `general.architecture`.
pub fn for_gguf(architecture: &str) -> Option<Arch> {
    REGISTRY.iter().copied().find(|a| {
        a.spec()
            .gguf
            .as_ref()
            .is_some_and(|g| g.architectures.contains(&architecture))
    })
}

/// Every HF `model_type` some architecture reads, in registry order.
pub fn supported_hf_model_types() -> Vec<&'static str> {
    REGISTRY
        .iter()
        .flat_map(|a| a.spec().hf_model_types.iter().copied())
        .collect()
}

/// Every GGUF architecture some architecture reads, in registry order.
pub fn supported_gguf() -> Vec<&'static str> {
    REGISTRY
        .iter()
        .filter_map(|a| a.spec().gguf.as_ref())
        .flat_map(|g| g.architectures.iter().copied())
        .collect()
}
