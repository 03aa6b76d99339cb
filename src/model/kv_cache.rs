//! Per-layer key/value cache for incremental decoding.
use candle_core::{Result, Tensor};

#[derive(Debug, Clone, Default)]
pub struct LayerCache {
    kv: Option<(Tensor, Tensor)>,
    /// Positions dropped from the front (a sliding-window layer keeps only its window).
    dropped: usize,
}

impl LayerCache {
    /// Appends this step's keys/values (b, h, t, d) and returns the full history.
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (k, v) = match &self.kv {
            Some((pk, pv)) => (Tensor::cat(&[pk, k], 2)?, Tensor::cat(&[pv, v], 2)?),
            None => (k.clone(), v.clone()),
        };
        self.kv = Some((k.clone(), v.clone()));
        Ok((k, v))
    }

    /// Like [`Self::append`] for a layer whose queries see at most the `keep` positions
    /// before them (a sliding window of `keep + 1`): older positions are dropped first, so
    /// the cache never holds more than `keep + t`. Returns the keys/values and the absolute
    /// position of the first one.
    pub fn append_window(
        &mut self,
        k: &Tensor,
        v: &Tensor,
        keep: usize,
    ) -> Result<(Tensor, Tensor, usize)> {
        if let Some((pk, pv)) = &self.kv {
            let held = pk.dim(2)?;
            if held > keep {
                let drop = held - keep;
                self.kv = Some((pk.narrow(2, drop, keep)?, pv.narrow(2, drop, keep)?));
                self.dropped += drop;
            }
        }
        let (k, v) = self.append(k, v)?;
        Ok((k, v, self.dropped))
    }

    /// Positions seen so far (held and dropped).
    pub fn len(&self) -> usize {
        self.dropped + self.kv.as_ref().map_or(0, |(k, _)| k.dim(2).unwrap_or(0))
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Clone)]
pub struct KvCache {
    pub layers: Vec<LayerCache>,
}

impl KvCache {
    pub fn new(n_layers: usize) -> Self {
        Self {
            layers: vec![LayerCache::default(); n_layers],
        }
    }

    /// Number of positions already cached.
    pub fn seq_len(&self) -> usize {
        self.layers.first().map_or(0, LayerCache::len)
    }
}
