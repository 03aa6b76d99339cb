//! The frame every decoder architecture shares: its config, shape, weight tables and
//! RoPE, with the forward pieces the architecture supplies (its blocks and the weights
//! around them). An architecture file then holds only what differs.
use std::fmt::Debug;

use anyhow::Result;
use candle_core::Tensor;

use super::arch::{
    all_weights, all_weights_mut, load_tables, ArchConfig, DecoderArch, Slot, Weight, WeightMut,
    WeightTable,
};
use super::kv_cache::LayerCache;
use super::load::ParamBuilder;
use super::ops::Rope;
use super::shape::ModelShape;

/// Where a block's tokens are: the rotary tables, the first position, the causal mask.
#[derive(Clone, Copy)]
pub struct Positions<'a> {
    pub rope: &'a Rope,
    pub start: usize,
    pub mask: Option<&'a Tensor>,
}

/// One transformer block of an architecture.
pub trait DecoderBlock: WeightTable + Default + Clone + Debug + Send + Sync + 'static {
    /// Hidden states (b, t, h) → (b, t, h); appends this block's keys/values to `cache`.
    fn forward(
        &self,
        x: &Tensor,
        pos: Positions<'_>,
        cache: Option<&mut LayerCache>,
    ) -> candle_core::Result<Tensor>;
}

/// The weights around the blocks of an architecture and what runs outside them.
pub trait DecoderEnds: WeightTable + Default + Clone + Debug + Send + Sync + 'static {
    type Block: DecoderBlock;
    fn embed(&self, ids: &Tensor) -> candle_core::Result<Tensor>;
    /// Final norm and LM head: logits (b, t, vocab).
    fn head(&self, x: &Tensor) -> candle_core::Result<Tensor>;
    /// The head split for the fused loss (`model::head_loss`): the final-normed hidden
    /// states (b, t, h) and the dense head weight (vocab, h), where the head is exactly
    /// `normed · weightᵀ`; `None` (the default) keeps the composed [`Self::head`].
    fn head_split(&self, _x: &Tensor) -> candle_core::Result<Option<(Tensor, Tensor)>> {
        Ok(None)
    }
    /// After loading: a tied head may keep the file's quantised table for decoding
    /// ([`crate::model::linear::QuantizedTiedHead`]); the default keeps nothing.
    fn keep_quantized_head(&mut self, _pb: &mut ParamBuilder) -> Result<()> {
        Ok(())
    }
}

/// A decoder built from an architecture's ends and blocks: what every architecture
/// shares (config, shape, tables, RoPE), so that its file holds only what differs.
#[derive(Debug, Clone)]
pub struct Decoder<E: DecoderEnds> {
    cfg: ArchConfig,
    shape: ModelShape,
    pub ends: E,
    pub blocks: Vec<E::Block>,
    rope: Rope,
}

impl<E: DecoderEnds> Decoder<E> {
    /// Loads every weight of the tables of `E` and its blocks for `shape`.
    pub fn load(
        pb: &mut ParamBuilder,
        cfg: &ArchConfig,
        shape: ModelShape,
        rope: Rope,
    ) -> Result<Self> {
        let (mut ends, blocks) = load_tables::<E, E::Block>(pb, &shape)?;
        ends.keep_quantized_head(pb)?;
        Ok(Self {
            cfg: cfg.clone(),
            shape,
            ends,
            blocks,
            rope,
        })
    }
}

impl<E: DecoderEnds> DecoderArch for Decoder<E> {
    fn config(&self) -> &ArchConfig {
        &self.cfg
    }

    fn shape(&self) -> &ModelShape {
        &self.shape
    }

    fn embed(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        self.ends.embed(ids)
    }

    fn block(
        &self,
        i: usize,
        x: &Tensor,
        start: usize,
        mask: Option<&Tensor>,
        cache: Option<&mut LayerCache>,
    ) -> candle_core::Result<Tensor> {
        let pos = Positions {
            rope: &self.rope,
            start,
            mask,
        };
        self.blocks[i].forward(x, pos, cache)
    }

    fn head(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.ends.head(x)
    }

    fn head_split(&self, x: &Tensor) -> candle_core::Result<Option<(Tensor, Tensor)>> {
        self.ends.head_split(x)
    }

    fn weights(&self) -> Vec<Slot<Weight<'_>>> {
        let s = &self.shape;
        all_weights(s, "", &self.ends, &self.blocks, |i| s.block_prefix(i))
    }

    fn weights_mut(&mut self) -> Vec<Slot<WeightMut<'_>>> {
        let s = &self.shape;
        all_weights_mut(s, "", &mut self.ends, &mut self.blocks, |i| {
            s.block_prefix(i)
        })
    }

    fn clone_box(&self) -> Box<dyn DecoderArch> {
        Box::new(self.clone())
    }
}
