//! 8-bit AdamW with blockwise-quantised moments (bitsandbytes `AdamW8bit`, blockwise).
//!
//! State per variable with at least `min_8bit_size` elements:
//! - `m`: one u8 code per element in bitsandbytes' *signed* dynamic map, and one f32
//!   absmax per block of `block_size` elements (value = `map[code] * absmax`);
//! - `v`: the same with the *unsigned* dynamic map.
//!
//! That is 2 bytes + 8/`block_size` bytes per element (2.03 at block 256) against 8 for
//! 32-bit AdamW. Smaller variables (biases, norms) keep f32 moments, as bitsandbytes.
//!
//! Each step, per block (as bitsandbytes' `kOptimizerStatic8bit2StateBlockwise`):
//! dequantise m and v, apply the Adam moment update in f32, take the new block absmax
//! of each, update the parameter from the *unquantised* f32 moments, then requantise
//! them (round to nearest code; m keeps its sign). Formulas are PyTorch AdamW's (weight
//! decay applied before the Adam step; bitsandbytes applies it after, a difference of
//! order lr²·wd).
//!
//! Paging: bitsandbytes' "paged" optimisers put state in CUDA unified memory that
//! spills to host RAM under GPU memory pressure. That is **not implemented** here: on
//! the CPU the 8-bit state simply lives in RAM. Variables on another device keep their
//! 8-bit state on that device and are updated there with tensor ops (`device::DeviceQ8`,
//! the generic definition, also used on the CPU when the generic path is forced).

use std::collections::HashMap;

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use rayon::prelude::*;

use super::device::DeviceQ8;
use super::qmap::{signed_map, unsigned_map};
use super::{
    adamw_f32_kernel, check_float_vars, check_known_keys, check_step_args, step_key,
    tensor_to_f32_vec, tensor_u64, u64_tensor, update_host, AdamScalars, AdamWConfig, Optimizer,
};
use crate::model::generic::generic_kernels;
use crate::weights_file::Entry;

enum State8 {
    /// Small variables: plain f32 moments.
    F32 {
        m: Vec<f32>,
        v: Vec<f32>,
    },
    /// Blockwise-quantised moments.
    Q8 {
        m_q: Vec<u8>,
        v_q: Vec<u8>,
        m_absmax: Vec<f32>,
        v_absmax: Vec<f32>,
    },
    /// The generic definitions' state, on the variable's device: f32 moments of small
    /// variables, blockwise 8-bit ones of the others.
    DeviceF32 {
        m: Tensor,
        v: Tensor,
    },
    DeviceQ8(DeviceQ8),
}

struct Slot {
    var: Var,
    step: u64,
    state: Option<State8>,
}

/// bitsandbytes-style 8-bit AdamW (see the module documentation).
pub struct AdamW8bit {
    slots: Vec<Slot>,
    cfg: AdamWConfig,
    block_size: usize,
    min_8bit_size: usize,
    step: u64,
}

impl AdamW8bit {
    /// `block_size`: elements per quantisation block (bitsandbytes uses 256);
    /// `min_8bit_size`: variables with fewer elements keep f32 state (bitsandbytes: 4096).
    pub fn new(
        vars: Vec<Var>,
        cfg: AdamWConfig,
        block_size: usize,
        min_8bit_size: usize,
    ) -> Result<Self> {
        cfg.validate()?;
        ensure!(block_size > 0, "AdamW8bit: block_size must be > 0");
        check_float_vars("AdamW8bit", &vars)?;
        Ok(Self {
            slots: vars
                .into_iter()
                .map(|var| Slot {
                    var,
                    step: 0,
                    state: None,
                })
                .collect(),
            cfg,
            block_size,
            min_8bit_size,
            step: 0,
        })
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.cfg
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// The variables this optimizer updates, in order.
    pub fn vars(&self) -> Vec<Var> {
        self.slots.iter().map(|s| s.var.clone()).collect()
    }

    /// Whether variable `i` gets 8-bit state (`false` = f32 state).
    pub fn is_quantized(&self, i: usize) -> bool {
        self.slots
            .get(i)
            .is_some_and(|s| self.quantizes(s.var.elem_count()))
    }

    fn quantizes(&self, n: usize) -> bool {
        n >= self.min_8bit_size
    }

    fn n_blocks(&self, n: usize) -> usize {
        n.div_ceil(self.block_size)
    }

    fn bytes_for(&self, n: usize) -> usize {
        if self.quantizes(n) {
            2 * n + 8 * self.n_blocks(n)
        } else {
            8 * n
        }
    }

    /// Bytes of state once every variable has received a gradient.
    pub fn full_state_bytes(&self) -> usize {
        self.slots
            .iter()
            .map(|s| self.bytes_for(s.var.elem_count()))
            .sum()
    }

    fn new_state(&self, var: &Var) -> Result<State8> {
        let n = var.elem_count();
        let dev = var.device();
        if generic_kernels(dev) {
            return Ok(if self.quantizes(n) {
                State8::DeviceQ8(DeviceQ8::zeros(n, self.block_size, dev)?)
            } else {
                State8::DeviceF32 {
                    m: Tensor::zeros(var.shape(), DType::F32, dev)?,
                    v: Tensor::zeros(var.shape(), DType::F32, dev)?,
                }
            });
        }
        Ok(if self.quantizes(n) {
            let nb = self.n_blocks(n);
            State8::Q8 {
                m_q: vec![signed_map().zero_index(); n],
                v_q: vec![unsigned_map().zero_index(); n],
                m_absmax: vec![0f32; nb],
                v_absmax: vec![0f32; nb],
            }
        } else {
            State8::F32 {
                m: vec![0f32; n],
                v: vec![0f32; n],
            }
        })
    }
}

impl Optimizer for AdamW8bit {
    fn step(&mut self, grads: &[Option<Tensor>], lr: f64, grad_scale: f64) -> Result<()> {
        check_step_args(self.slots.len(), grads, lr, grad_scale)?;
        self.step += 1;
        let cfg = self.cfg;
        let bs = self.block_size;
        for (i, grad) in grads.iter().enumerate() {
            let Some(grad) = grad else { continue };
            if self.slots[i].state.is_none() {
                let st = self.new_state(&self.slots[i].var)?;
                self.slots[i].state = Some(st);
            }
            let slot = &mut self.slots[i];
            slot.step += 1;
            let sc = AdamScalars::new(&cfg, lr, grad_scale, slot.step);
            let var = &slot.var;
            let res = match slot.state.as_mut().expect("state allocated above") {
                State8::F32 { m, v } => {
                    update_host(var, grad, |p, g| adamw_f32_kernel(p, g, m, v, &sc))
                }
                State8::Q8 {
                    m_q,
                    v_q,
                    m_absmax,
                    v_absmax,
                } => update_host(var, grad, |p, g| {
                    adamw8bit_kernel(p, g, m_q, v_q, m_absmax, v_absmax, bs, &sc)
                }),
                State8::DeviceF32 { m, v } => super::device::adamw_update(var, grad, m, v, &sc),
                State8::DeviceQ8(q) => q.update(var, grad, &sc),
            };
            res.with_context(|| format!("AdamW8bit update of variable {i}"))?;
        }
        Ok(())
    }

    fn state_bytes(&self) -> usize {
        self.slots
            .iter()
            .map(|s| match &s.state {
                None => 0,
                Some(State8::F32 { m, v }) => 4 * (m.len() + v.len()),
                Some(State8::Q8 {
                    m_q,
                    v_q,
                    m_absmax,
                    v_absmax,
                }) => m_q.len() + v_q.len() + 4 * (m_absmax.len() + v_absmax.len()),
                Some(State8::DeviceF32 { m, v }) => 4 * (m.elem_count() + v.elem_count()),
                Some(State8::DeviceQ8(q)) => q.bytes(),
            })
            .sum()
    }

    fn state_entries(&self) -> Result<Vec<(String, Entry<'_>)>> {
        fn vector(data: &[f32]) -> Entry<'_> {
            Entry::F32 {
                shape: vec![data.len()],
                data,
            }
        }
        let mut out = vec![("step".to_string(), Entry::Tensor(u64_tensor(self.step)?))];
        for (i, slot) in self.slots.iter().enumerate() {
            let Some(state) = &slot.state else { continue };
            out.push((step_key(i), Entry::Tensor(u64_tensor(slot.step)?)));
            let shape = slot.var.dims().to_vec();
            let f32s = |data| Entry::F32 {
                shape: shape.clone(),
                data,
            };
            let codes = |data| Entry::U8 {
                shape: shape.clone(),
                data,
            };
            match state {
                State8::F32 { m, v } => {
                    out.push((format!("{i}.m"), f32s(m)));
                    out.push((format!("{i}.v"), f32s(v)));
                }
                State8::Q8 {
                    m_q,
                    v_q,
                    m_absmax,
                    v_absmax,
                } => {
                    out.push((format!("{i}.m_q"), codes(m_q)));
                    out.push((format!("{i}.m_absmax"), vector(m_absmax)));
                    out.push((format!("{i}.v_q"), codes(v_q)));
                    out.push((format!("{i}.v_absmax"), vector(v_absmax)));
                }
                State8::DeviceF32 { m, v } => {
                    out.push((format!("{i}.m"), Entry::Tensor(m.clone())));
                    out.push((format!("{i}.v"), Entry::Tensor(v.clone())));
                }
                State8::DeviceQ8(q) => {
                    let [m_q, m_absmax, v_q, v_absmax] = q.parts(slot.var.shape())?;
                    out.push((format!("{i}.m_q"), Entry::Tensor(m_q)));
                    out.push((format!("{i}.m_absmax"), Entry::Tensor(m_absmax)));
                    out.push((format!("{i}.v_q"), Entry::Tensor(v_q)));
                    out.push((format!("{i}.v_absmax"), Entry::Tensor(v_absmax)));
                }
            }
        }
        Ok(out)
    }

    fn load_state_tensors(&mut self, t: &HashMap<String, Tensor>) -> Result<()> {
        const SUFFIXES: [&str; 6] = ["m", "v", "m_q", "m_absmax", "v_q", "v_absmax"];
        check_known_keys(t, self.slots.len(), &SUFFIXES)?;
        let step = tensor_u64(
            t.get("step").context("optimizer state lacks \"step\"")?,
            "step",
        )?;
        let mut new_states = Vec::with_capacity(self.slots.len());
        for (i, slot) in self.slots.iter().enumerate() {
            let n = slot.var.elem_count();
            let get = |s: &str| t.get(&format!("{i}.{s}"));
            let present: Vec<&str> = SUFFIXES
                .iter()
                .copied()
                .filter(|s| get(s).is_some())
                .collect();
            if present.is_empty() {
                new_states.push((0, None));
                continue;
            }
            let key = |s: &str| format!("{i}.{s}");
            let var_step = tensor_u64(
                get("step").with_context(|| format!("optimizer state lacks {:?}", step_key(i)))?,
                &step_key(i),
            )?;
            let state = if self.quantizes(n) {
                ensure!(
                    present.len() == 4 && !present.contains(&"m") && !present.contains(&"v"),
                    "variable {i} ({n} elements) needs 8-bit state (m_q, m_absmax, v_q, v_absmax); \
                     checkpoint has {present:?} (different min_8bit_size?)"
                );
                let nb = self.n_blocks(n);
                let codes = |s: &str| -> Result<Vec<u8>> {
                    let x = get(s).expect("presence checked");
                    ensure!(
                        x.elem_count() == n && x.dtype() == DType::U8,
                        "{}: expected {n} u8 codes, got {} {:?}",
                        key(s),
                        x.elem_count(),
                        x.dtype()
                    );
                    Ok(x.to_device(&Device::Cpu)?.flatten_all()?.to_vec1()?)
                };
                let absmax = |s: &str| -> Result<Vec<f32>> {
                    tensor_to_f32_vec(get(s).expect("presence checked"), nb, &key(s))
                        .context("absmax length mismatch (different block_size?)")
                };
                let (m_q, v_q) = (codes("m_q")?, codes("v_q")?);
                let (m_absmax, v_absmax) = (absmax("m_absmax")?, absmax("v_absmax")?);
                let dev = slot.var.device();
                if generic_kernels(dev) {
                    let cpu = Device::Cpu;
                    State8::DeviceQ8(DeviceQ8::from_parts(
                        &Tensor::from_vec(m_q, n, &cpu)?,
                        &Tensor::from_vec(v_q, n, &cpu)?,
                        &Tensor::from_vec(m_absmax, nb, &cpu)?,
                        &Tensor::from_vec(v_absmax, nb, &cpu)?,
                        self.block_size,
                        dev,
                    )?)
                } else {
                    State8::Q8 {
                        m_q,
                        v_q,
                        m_absmax,
                        v_absmax,
                    }
                }
            } else {
                ensure!(
                    present.len() == 2 && present.contains(&"m") && present.contains(&"v"),
                    "variable {i} ({n} elements) needs f32 state (m, v); checkpoint has \
                     {present:?} (different min_8bit_size?)"
                );
                let m = tensor_to_f32_vec(get("m").expect("checked"), n, &key("m"))?;
                let v = tensor_to_f32_vec(get("v").expect("checked"), n, &key("v"))?;
                let dev = slot.var.device();
                if generic_kernels(dev) {
                    State8::DeviceF32 {
                        m: Tensor::from_vec(m, slot.var.shape(), dev)?,
                        v: Tensor::from_vec(v, slot.var.shape(), dev)?,
                    }
                } else {
                    State8::F32 { m, v }
                }
            };
            new_states.push((var_step, Some(state)));
        }
        for (slot, (s, state)) in self.slots.iter_mut().zip(new_states) {
            slot.step = s;
            slot.state = state;
        }
        self.step = step;
        Ok(())
    }

    fn step_count(&self) -> u64 {
        self.step
    }
}

/// Blockwise 8-bit AdamW over one variable; blocks run in parallel with rayon.
#[allow(clippy::too_many_arguments)]
fn adamw8bit_kernel(
    p: &mut [f32],
    g: &[f32],
    m_q: &mut [u8],
    v_q: &mut [u8],
    m_absmax: &mut [f32],
    v_absmax: &mut [f32],
    bs: usize,
    s: &AdamScalars,
) {
    debug_assert_eq!(p.len(), g.len());
    debug_assert_eq!(m_absmax.len(), p.len().div_ceil(bs));
    let s = *s;
    p.par_chunks_mut(bs)
        .zip(g.par_chunks(bs))
        .zip(m_q.par_chunks_mut(bs))
        .zip(v_q.par_chunks_mut(bs))
        .zip(m_absmax.par_iter_mut())
        .zip(v_absmax.par_iter_mut())
        .with_min_len(16)
        .for_each_init(
            || (vec![0f32; bs], vec![0f32; bs]),
            |(s1, s2), (((((p, g), mq), vq), ma), va)| {
                block_update(p, g, mq, vq, ma, va, s1, s2, &s)
            },
        );
}

#[allow(clippy::too_many_arguments)]
#[inline]
fn block_update(
    p: &mut [f32],
    g: &[f32],
    mq: &mut [u8],
    vq: &mut [u8],
    m_absmax: &mut f32,
    v_absmax: &mut f32,
    s1: &mut [f32],
    s2: &mut [f32],
    s: &AdamScalars,
) {
    let (smap, umap) = (signed_map(), unsigned_map());
    let n = p.len();
    let (s1, s2) = (&mut s1[..n], &mut s2[..n]);
    let (am, av) = (*m_absmax, *v_absmax);
    let mut new_am = 0f32;
    let mut new_av = 0f32;
    for j in 0..n {
        let gj = g[j] * s.grad_scale;
        let m = s.beta1 * (smap.code[mq[j] as usize] * am) + s.one_minus_beta1 * gj;
        let v = s.beta2 * (umap.code[vq[j] as usize] * av) + s.one_minus_beta2 * (gj * gj);
        s1[j] = m;
        s2[j] = v;
        new_am = new_am.max(m.abs());
        new_av = new_av.max(v);
    }
    for j in 0..n {
        let denom = s2[j].sqrt() * s.inv_sqrt_bc2 + s.eps;
        p[j] = p[j] * s.decay - s.step_size * (s1[j] / denom);
    }
    *m_absmax = new_am;
    *v_absmax = new_av;
    if new_am > 0.0 {
        let inv = 1.0 / new_am;
        for j in 0..n {
            mq[j] = smap.quantize_signed(s1[j] * inv);
        }
    } else {
        mq.fill(smap.zero_index());
    }
    if new_av > 0.0 {
        let inv = 1.0 / new_av;
        for j in 0..n {
            vq[j] = umap.quantize(s2[j] * inv);
        }
    } else {
        vq.fill(umap.zero_index());
    }
}

// The trainer holds optimisers as `Box<dyn Optimizer>` (which requires `Send`).
const _: () = {
    const fn is_send<T: Send>() {}
    is_send::<AdamW8bit>();
    is_send::<super::AdamW>();
};

#[cfg(test)]
mod tests {
    use super::super::qmap::{dynamic_map, quantize_nearest};
    use super::*;

    #[test]
    fn maps_have_expected_shape() {
        let s = &signed_map().code;
        let u = &unsigned_map().code;
        assert_eq!(s[255], 1.0);
        assert_eq!(s[127], 0.0);
        assert!(s[0] < -0.99 && s[0] > -1.0);
        assert_eq!(u[0], 0.0);
        assert_eq!(u[255], 1.0);
        assert!(s.windows(2).all(|w| w[0] < w[1]));
        assert!(u.windows(2).all(|w| w[0] < w[1]));
        // smallest magnitudes: 1e-6 * midpoints of linspace(0.1, 1, 2) / (.., 3)
        assert!((s[128] - 0.55e-6).abs() < 1e-12);
        assert!((u[1] - 0.325e-6).abs() < 1e-12);
    }

    #[test]
    fn lut_quantiser_equals_search() {
        for signed in [true, false] {
            let code = dynamic_map(signed);
            let q = if signed { signed_map() } else { unsigned_map() };
            for (i, &c) in code.iter().enumerate() {
                assert_eq!(q.quantize(c) as usize, i);
            }
            // dense sweep, including values just around every midpoint
            let mut xs: Vec<f32> = (0..=200_000).map(|i| i as f32 / 100_000.0 - 1.0).collect();
            for w in code.windows(2) {
                let m = (w[0] + w[1]) / 2.0;
                xs.extend([m, m.next_up(), m.next_down()]);
            }
            xs.extend([
                1e-9, -1e-9, 3e-7, -3e-7, 0.0, -0.0, 1.0, -1.0, 1.0000001, -1.0000001,
            ]);
            for x in xs {
                assert_eq!(q.quantize(x), quantize_nearest(&code, x), "x = {x}");
            }
        }
        let s = signed_map();
        assert!(s.code[s.quantize_signed(-1e-12) as usize] < 0.0);
        assert_eq!(s.quantize_signed(1e-12), 127);
    }

    #[test]
    fn zero_grad_block_stays_zero() {
        let bs = 4;
        let mut p = vec![1f32; 8];
        let g = vec![0f32; 8];
        let mut mq = vec![signed_map().zero_index(); 8];
        let mut vq = vec![unsigned_map().zero_index(); 8];
        let mut ma = vec![0f32; 2];
        let mut va = vec![0f32; 2];
        let sc = AdamScalars::new(&AdamWConfig::default(), 1e-3, 1.0, 1);
        adamw8bit_kernel(&mut p, &g, &mut mq, &mut vq, &mut ma, &mut va, bs, &sc);
        assert!(p.iter().all(|&x| x == 1.0));
        assert!(ma.iter().all(|&x| x == 0.0));
    }
}
