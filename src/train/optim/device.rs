//! The optimisers' generic definitions: the AdamW update, and the blockwise 8-bit state of
//! AdamW8bit, written with candle tensor ops, so that the parameters, the gradients and
//! the state stay on the variable's device (no copy through host memory). They compute
//! what the CPU kernels (`adamw_f32_kernel`, `adamw8bit_kernel`) compute, in the same f32
//! operations; tests compare them.
use anyhow::{ensure, Result};
use candle_core::{DType, Device, Tensor, Var, D};

use super::qmap::{signed_map, unsigned_map, QuantMap};
use super::AdamScalars;

/// `grad` flattened on `var`'s device, once its shape is checked against the variable's.
fn flat_grad(var: &Var, grad: &Tensor) -> Result<Tensor> {
    ensure!(
        grad.dims() == var.dims(),
        "gradient shape {:?} does not match variable shape {:?}",
        grad.dims(),
        var.dims()
    );
    Ok(grad.to_device(var.device())?.flatten_all()?)
}

/// Elements `start..start + len` of a flat gradient, times `grad_scale`, in f32.
fn scaled_slice(g: &Tensor, start: usize, len: usize, s: &AdamScalars) -> Result<Tensor> {
    Ok(g.narrow(0, start, len)?
        .to_dtype(DType::F32)?
        .affine(s.grad_scale as f64, 0.0)?)
}

/// Elements updated at a time: the update's temporaries are a few slices of this size
/// (16 MiB each in f32), not a few copies of the variable (a large vocabulary's embedding
/// is hundreds of MiB).
const UPDATE_SLICE: usize = 1 << 22;

/// One AdamW update with f32 moments `m`, `v` on the variable's device, written in place
/// into the variable and the moments a slice at a time.
pub(crate) fn adamw_update(
    var: &Var,
    grad: &Tensor,
    m: &Tensor,
    v: &Tensor,
    s: &AdamScalars,
) -> Result<()> {
    adamw_update_sliced(var, grad, m, v, s, UPDATE_SLICE)
}

fn adamw_update_sliced(
    var: &Var,
    grad: &Tensor,
    m: &Tensor,
    v: &Tensor,
    s: &AdamScalars,
    slice_len: usize,
) -> Result<()> {
    let n = var.elem_count();
    let g_all = flat_grad(var, grad)?;
    let (p_all, m_all, v_all) = (
        var.as_tensor().flatten_all()?,
        m.flatten_all()?,
        v.flatten_all()?,
    );
    for start in (0..n).step_by(slice_len) {
        let len = slice_len.min(n - start);
        let slice = |t: &Tensor| t.narrow(0, start, len);
        let g = scaled_slice(&g_all, start, len, s)?;
        let new_m = (slice(&m_all)?.affine(s.beta1 as f64, 0.0)?
            + g.affine(s.one_minus_beta1 as f64, 0.0)?)?;
        let new_v = (slice(&v_all)?.affine(s.beta2 as f64, 0.0)?
            + g.sqr()?.affine(s.one_minus_beta2 as f64, 0.0)?)?;
        let p = slice(&p_all)?.to_dtype(DType::F32)?;
        let new_p = adam_step(&p, &new_m, &new_v, s)?.to_dtype(var.dtype())?;
        m_all.slice_set(&new_m, 0, start)?;
        v_all.slice_set(&new_v, 0, start)?;
        p_all.slice_set(&new_p, 0, start)?;
    }
    Ok(())
}

/// `p·decay − step_size · m / (√v · inv_sqrt_bc2 + eps)`.
fn adam_step(p: &Tensor, m: &Tensor, v: &Tensor, s: &AdamScalars) -> Result<Tensor> {
    let denom = v.sqrt()?.affine(s.inv_sqrt_bc2 as f64, s.eps as f64)?;
    let step = (m / denom)?.affine(s.step_size as f64, 0.0)?;
    Ok((p.affine(s.decay as f64, 0.0)? - step)?)
}

/// A dynamic map's codes and midpoints as device tensors.
#[derive(Clone)]
struct MapTensors {
    code: Tensor,
    /// 256 midpoints, the last +∞.
    mid: Tensor,
}

impl MapTensors {
    fn new(map: &QuantMap, dev: &Device) -> Result<Self> {
        Ok(Self {
            code: Tensor::from_slice(&map.code, 256, dev)?,
            mid: Tensor::from_slice(&map.midpoints(), 256, dev)?,
        })
    }

    /// Values of u8 codes (any shape) as f32.
    fn decode(&self, q: &Tensor) -> Result<Tensor> {
        let flat = q.flatten_all()?.to_dtype(DType::U32)?;
        Ok(self.code.index_select(&flat, 0)?.reshape(q.shape())?)
    }

    /// The index of the code nearest to each value of `x` (ties to the lower code), as
    /// [`QuantMap::quantize`]: the number of midpoints below x, by binary search (eight
    /// gathers of the midpoint table).
    fn quantize(&self, x: &Tensor) -> Result<Tensor> {
        let shape = x.shape().clone();
        let x = x.flatten_all()?;
        let mut idx = x.zeros_like()?;
        for step in [128f64, 64., 32., 16., 8., 4., 2., 1.] {
            let probe = (&idx + (step - 1.0))?.to_dtype(DType::U32)?;
            let below = self.mid.index_select(&probe, 0)?.lt(&x)?;
            idx = (idx + (below.to_dtype(DType::F32)? * step)?)?;
        }
        Ok(idx.reshape(shape)?)
    }

    /// [`QuantMap::quantize_signed`]: a negative value never gets a non-negative code.
    fn quantize_signed(&self, x: &Tensor) -> Result<Tensor> {
        let idx = self.quantize(x)?;
        let code = self
            .code
            .index_select(&idx.flatten_all()?.to_dtype(DType::U32)?, 0)?;
        let fix = (x.flatten_all()?.lt(0f64)?.to_dtype(DType::F32)?
            * code.ge(0f64)?.to_dtype(DType::F32)?)?;
        Ok((idx.flatten_all()? - fix)?.reshape(x.shape())?)
    }
}

/// 8-bit AdamW state of one variable on its device: u8 codes (blocks, block size), the
/// last block padded, and one f32 absmax per block (blocks, 1).
#[derive(Clone)]
pub(crate) struct DeviceQ8 {
    pub m_q: Tensor,
    pub v_q: Tensor,
    pub m_absmax: Tensor,
    pub v_absmax: Tensor,
    /// The signed and unsigned maps on the state's device (uploaded once).
    maps: std::sync::Arc<(MapTensors, MapTensors)>,
}

fn maps_on(dev: &Device) -> Result<std::sync::Arc<(MapTensors, MapTensors)>> {
    Ok(std::sync::Arc::new((
        MapTensors::new(signed_map(), dev)?,
        MapTensors::new(unsigned_map(), dev)?,
    )))
}

impl DeviceQ8 {
    /// Zero moments for `n` elements in blocks of `bs`.
    pub fn zeros(n: usize, bs: usize, dev: &Device) -> Result<Self> {
        let nb = n.div_ceil(bs);
        let fill = |c: u8| Tensor::full(c, (nb, bs), dev);
        Ok(Self {
            m_q: fill(signed_map().zero_index())?,
            v_q: fill(unsigned_map().zero_index())?,
            m_absmax: Tensor::zeros((nb, 1), DType::F32, dev)?,
            v_absmax: Tensor::zeros((nb, 1), DType::F32, dev)?,
            maps: maps_on(dev)?,
        })
    }

    /// From the checkpoint layout (codes of the variable's shape, absmax per block).
    pub fn from_parts(
        m_q: &Tensor,
        v_q: &Tensor,
        m_absmax: &Tensor,
        v_absmax: &Tensor,
        bs: usize,
        dev: &Device,
    ) -> Result<Self> {
        let n = m_q.elem_count();
        let nb = n.div_ceil(bs);
        let pad = |q: &Tensor, zero: u8| -> Result<Tensor> {
            let q = q.to_device(dev)?.flatten_all()?;
            let q = if nb * bs > n {
                Tensor::cat(&[q, Tensor::full(zero, nb * bs - n, dev)?], 0)?
            } else {
                q.copy()? // its own storage: the state is updated in place
            };
            Ok(q.reshape((nb, bs))?)
        };
        let absmax = |a: &Tensor| -> Result<Tensor> {
            Ok(a.to_device(dev)?
                .to_dtype(DType::F32)?
                .reshape((nb, 1))?
                .copy()?)
        };
        Ok(Self {
            m_q: pad(m_q, signed_map().zero_index())?,
            v_q: pad(v_q, unsigned_map().zero_index())?,
            m_absmax: absmax(m_absmax)?,
            v_absmax: absmax(v_absmax)?,
            maps: maps_on(dev)?,
        })
    }

    /// The checkpoint layout: (m_q, m_absmax, v_q, v_absmax), codes of `shape`; views of
    /// the state, which is updated in place (copy them to keep a snapshot).
    pub fn parts(&self, shape: &candle_core::Shape) -> Result<[Tensor; 4]> {
        let n = shape.elem_count();
        let codes = |q: &Tensor| -> Result<Tensor> {
            Ok(q.flatten_all()?.narrow(0, 0, n)?.reshape(shape)?)
        };
        Ok([
            codes(&self.m_q)?,
            self.m_absmax.flatten_all()?,
            codes(&self.v_q)?,
            self.v_absmax.flatten_all()?,
        ])
    }

    pub fn bytes(&self) -> usize {
        self.m_q.elem_count() + self.v_q.elem_count() + 4 * 2 * self.m_absmax.elem_count()
    }

    /// One step of blockwise 8-bit AdamW (see `adamw8bit` for the recipe): dequantise,
    /// update the moments in f32, update the parameter from the unquantised moments,
    /// requantise against the new block absmax. In place, a slice of blocks at a time.
    pub fn update(&mut self, var: &Var, grad: &Tensor, s: &AdamScalars) -> Result<()> {
        let bs = self.m_q.dim(1)?;
        self.update_sliced(var, grad, s, (UPDATE_SLICE / bs).max(1))
    }

    fn update_sliced(
        &mut self,
        var: &Var,
        grad: &Tensor,
        s: &AdamScalars,
        blocks_per_slice: usize,
    ) -> Result<()> {
        let dev = var.device().clone();
        let (nb, bs) = self.m_q.dims2()?;
        let n = var.elem_count();
        let g_all = flat_grad(var, grad)?;
        let p_all = var.as_tensor().flatten_all()?;
        let maps = self.maps.clone();
        let (smap, umap) = (&maps.0, &maps.1);
        for b0 in (0..nb).step_by(blocks_per_slice) {
            let nbc = blocks_per_slice.min(nb - b0);
            // Elements e0..e1 of the variable; the last block may be padded past n.
            let (e0, e1) = (b0 * bs, ((b0 + nbc) * bs).min(n));
            let padded = |t: Tensor| -> Result<Tensor> {
                let t = if e1 - e0 < nbc * bs {
                    Tensor::cat(
                        &[t, Tensor::zeros(nbc * bs - (e1 - e0), DType::F32, &dev)?],
                        0,
                    )?
                } else {
                    t
                };
                Ok(t.reshape((nbc, bs))?)
            };
            let rows = |t: &Tensor| t.narrow(0, b0, nbc);
            let g = padded(scaled_slice(&g_all, e0, e1 - e0, s)?)?;
            let m_old = smap
                .decode(&rows(&self.m_q)?)?
                .broadcast_mul(&rows(&self.m_absmax)?)?;
            let v_old = umap
                .decode(&rows(&self.v_q)?)?
                .broadcast_mul(&rows(&self.v_absmax)?)?;
            let m =
                (m_old.affine(s.beta1 as f64, 0.0)? + g.affine(s.one_minus_beta1 as f64, 0.0)?)?;
            let v = (v_old.affine(s.beta2 as f64, 0.0)?
                + g.sqr()?.affine(s.one_minus_beta2 as f64, 0.0)?)?;
            drop((m_old, v_old, g));
            let head =
                |t: &Tensor| -> Result<Tensor> { Ok(t.flatten_all()?.narrow(0, 0, e1 - e0)?) };
            let p = p_all.narrow(0, e0, e1 - e0)?.to_dtype(DType::F32)?;
            let new_p = adam_step(&p, &head(&m)?, &head(&v)?, s)?.to_dtype(var.dtype())?;
            p_all.slice_set(&new_p, 0, e0)?;
            let new_am = m.abs()?.max_keepdim(D::Minus1)?;
            let new_av = v.max_keepdim(D::Minus1)?;
            // 1/absmax, 0 for an all-zero block (whose values are all 0: code of 0).
            let inv = |a: &Tensor| -> Result<Tensor> {
                let nonzero = a.gt(0f64)?.to_dtype(DType::F32)?;
                Ok(((a + nonzero.affine(-1.0, 1.0)?)?.recip()? * nonzero)?)
            };
            let m_q = smap
                .quantize_signed(&m.broadcast_mul(&inv(&new_am)?)?)?
                .to_dtype(DType::U8)?;
            let v_q = umap
                .quantize(&v.broadcast_mul(&inv(&new_av)?)?)?
                .to_dtype(DType::U8)?;
            self.m_q.slice_set(&m_q, 0, b0)?;
            self.v_q.slice_set(&v_q, 0, b0)?;
            self.m_absmax.slice_set(&new_am, 0, b0)?;
            self.v_absmax.slice_set(&new_av, 0, b0)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 8-bit update a few blocks at a time (last block padded) equals the update in
    /// one slice (which the optimiser tests compare with the CPU kernel), codes included.
    #[test]
    fn the_sliced_8bit_update_equals_the_one_slice_update() {
        let dev = Device::Cpu;
        let cfg = super::super::AdamWConfig::default();
        let n = 5 * 256 + 100;
        let p0: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
        let grad = Tensor::from_vec(
            (0..n).map(|i| (i as f32 * 1.3).cos()).collect::<Vec<_>>(),
            n,
            &dev,
        )
        .unwrap();
        let run = |blocks: usize| {
            let var = Var::from_tensor(&Tensor::from_vec(p0.clone(), n, &dev).unwrap()).unwrap();
            let mut st = DeviceQ8::zeros(n, 256, &dev).unwrap();
            for step in 1..=3 {
                let s = AdamScalars::new(&cfg, 1e-2, 0.5, step);
                st.update_sliced(&var, &grad, &s, blocks).unwrap();
            }
            let mut out = vec![var.as_tensor().clone()];
            out.extend(st.parts(var.shape()).unwrap());
            out
        };
        let (one, sliced) = (run(1000), run(2));
        for (a, b) in one.iter().zip(&sliced) {
            let d = (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap())
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert_eq!(d, 0.0);
        }
    }

    /// Slice by slice, in place, the update equals the CPU kernel's on the whole variable.
    #[test]
    fn the_sliced_in_place_update_equals_the_cpu_kernel() {
        let dev = Device::Cpu;
        let cfg = super::super::AdamWConfig {
            weight_decay: 0.1,
            ..Default::default()
        };
        let p0: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let g: Vec<f32> = (0..50).map(|i| (i as f32 * 1.3).cos()).collect();
        let (mut p, mut m, mut v) = (p0.clone(), vec![0f32; 50], vec![0f32; 50]);
        let var = Var::from_tensor(&Tensor::from_vec(p0, (5, 10), &dev).unwrap()).unwrap();
        let (mt, vt) = (
            Tensor::zeros((5, 10), DType::F32, &dev).unwrap(),
            Tensor::zeros((5, 10), DType::F32, &dev).unwrap(),
        );
        let grad = Tensor::from_vec(g.clone(), (5, 10), &dev).unwrap();
        for step in 1..=3 {
            let s = AdamScalars::new(&cfg, 1e-2, 0.5, step);
            super::super::adamw_f32_kernel(&mut p, &g, &mut m, &mut v, &s);
            adamw_update_sliced(&var, &grad, &mt, &vt, &s, 7).unwrap();
        }
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (what, a, b) in [
            ("p", &p, flat(var.as_tensor())),
            ("m", &m, flat(&mt)),
            ("v", &v, flat(&vt)),
        ] {
            let d = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(d < 1e-6, "{what} differs by {d}");
        }
    }

    #[test]
    fn tensor_quantisation_equals_the_lookup_table() {
        let dev = Device::Cpu;
        // Every midpoint, its neighbours, the codes, 0, ±1, out of range, NaN.
        for map in [signed_map(), unsigned_map()] {
            let mut xs = vec![0.0f32, -0.0, 1.0, -1.0, 1.5, -1.5, 1e-9, -1e-9, f32::NAN];
            for k in 0..255 {
                let m = (map.code[k] + map.code[k + 1]) / 2.0;
                xs.extend([m, f32::from_bits(m.to_bits() + 1), map.code[k]]);
                if m != 0.0 {
                    xs.push(f32::from_bits(m.to_bits() - 1));
                }
            }
            let t = MapTensors::new(map, &dev).unwrap();
            let x = Tensor::from_slice(&xs, xs.len(), &dev).unwrap();
            let codes = |q: Result<Tensor>| -> Vec<u8> {
                q.unwrap().to_dtype(DType::U8).unwrap().to_vec1().unwrap()
            };
            let (plain, signed) = (codes(t.quantize(&x)), codes(t.quantize_signed(&x)));
            for (i, &v) in xs.iter().enumerate() {
                assert_eq!(plain[i], map.quantize(v), "quantize({v:e})");
                if v != 0.0 && !v.is_nan() {
                    assert_eq!(signed[i], map.quantize_signed(v), "quantize_signed({v:e})");
                }
            }
        }
    }
}
