//! Per-layer key/value cache for incremental decoding.
use candle_core::{Result, Tensor};

#[derive(Debug, Clone, Default)]
pub struct LayerCache {
    /// Keys and values (b, h, capacity, d); the first `held` positions are filled.
    kv: Option<(Tensor, Tensor)>,
    held: usize,
    /// Positions dropped from the front (a sliding-window layer keeps only its window).
    dropped: usize,
}

/// Positions a cache first makes room for; it doubles when full.
const FIRST_CAPACITY: usize = 64;

impl LayerCache {
    /// Appends this step's keys/values (b, h, t, d) and returns the full history (views of
    /// the cache: a decoding step writes its own position and copies nothing else).
    /// Tensors tracked for autograd (new or held) are concatenated instead, keeping their
    /// graph.
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = k.dim(2)?;
        let tracked = |x: &Tensor| x.track_op();
        if tracked(k) || tracked(v) || self.kv.as_ref().is_some_and(|(pk, _)| tracked(pk)) {
            let (k, v) = match &self.kv {
                Some((pk, pv)) => (
                    Tensor::cat(&[&pk.narrow(2, 0, self.held)?, k], 2)?,
                    Tensor::cat(&[&pv.narrow(2, 0, self.held)?, v], 2)?,
                ),
                None => (k.clone(), v.clone()),
            };
            self.held = k.dim(2)?;
            self.kv = Some((k.clone(), v.clone()));
            return Ok((k, v));
        }
        let capacity = self.kv.as_ref().map_or(Ok(0), |(pk, _)| pk.dim(2))?;
        if self.held + t > capacity {
            let grown = (self.held + t).next_power_of_two().max(FIRST_CAPACITY);
            let room = |x: &Tensor| -> Result<Tensor> {
                let (b, h, _, d) = x.dims4()?;
                Tensor::zeros((b, h, grown, d), x.dtype(), x.device())
            };
            let (nk, nv) = (room(k)?, room(v)?);
            if let Some((pk, pv)) = &self.kv {
                nk.slice_set(&pk.narrow(2, 0, self.held)?.contiguous()?, 2, 0)?;
                nv.slice_set(&pv.narrow(2, 0, self.held)?.contiguous()?, 2, 0)?;
            }
            self.kv = Some((nk, nv));
        }
        let Some((ck, cv)) = &self.kv else {
            candle_core::bail!("the key/value cache was not allocated");
        };
        ck.slice_set(&k.contiguous()?, 2, self.held)?;
        cv.slice_set(&v.contiguous()?, 2, self.held)?;
        self.held += t;
        Ok((ck.narrow(2, 0, self.held)?, cv.narrow(2, 0, self.held)?))
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
            if self.held > keep {
                let drop = self.held - keep;
                // The kept positions, copied to the front of a cache of their own.
                let kept = |x: &Tensor| x.narrow(2, drop, keep)?.contiguous();
                self.kv = Some((kept(pk)?, kept(pv)?));
                self.held = keep;
                self.dropped += drop;
            }
        }
        let (k, v) = self.append(k, v)?;
        Ok((k, v, self.dropped))
    }

    /// Positions seen so far (held and dropped).
    pub fn len(&self) -> usize {
        self.dropped + self.held
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn step(i: usize, t: usize) -> Tensor {
        Tensor::arange((i * 100) as f32, (i * 100 + 2 * t * 3) as f32, &Device::Cpu)
            .unwrap()
            .reshape((1, 2, t, 3))
            .unwrap()
    }

    #[test]
    fn appending_past_the_capacity_keeps_every_position_in_order() -> Result<()> {
        let mut cache = LayerCache::default();
        let mut expected = step(0, 5);
        cache.append(&expected, &expected)?;
        for i in 1..=70 {
            let x = step(i, 1);
            expected = Tensor::cat(&[&expected, &x], 2)?;
            let (k, v) = cache.append(&x, &(&x * 2.0)?)?;
            let diff = (k - &expected)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert_eq!(diff, 0.0, "step {i}");
            assert_eq!(v.dim(2)?, 5 + i);
        }
        assert_eq!(cache.len(), 75);
        Ok(())
    }

    #[test]
    fn a_window_keeps_the_latest_positions_and_counts_the_dropped_ones() -> Result<()> {
        let mut cache = LayerCache::default();
        cache.append_window(&step(0, 4), &step(0, 4), 3)?;
        let (k, _, first) = cache.append_window(&step(1, 1), &step(1, 1), 3)?;
        assert_eq!((k.dim(2)?, first, cache.len()), (4, 1, 5));
        let expected = Tensor::cat(&[&step(0, 4).narrow(2, 1, 3)?, &step(1, 1)], 2)?;
        assert_eq!((k - expected)?.abs()?.max_all()?.to_scalar::<f32>()?, 0.0);
        Ok(())
    }

    #[test]
    fn tracked_keys_keep_their_graph() -> Result<()> {
        let mut cache = LayerCache::default();
        let x = Var::from_tensor(&step(0, 2))?;
        cache.append(x.as_tensor(), x.as_tensor())?;
        let (k, _) = cache.append(&step(1, 1), &step(1, 1))?;
        let grads = k.sum_all()?.backward()?;
        assert!(grads.get(x.as_tensor()).is_some());
        Ok(())
    }
}
