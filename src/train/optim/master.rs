//! f32 master weights for parameters the model holds in a narrower dtype: mixed-precision
//! training of the model's own tensors (full fine-tuning, `modules_to_save`) in bf16, as
//! PyTorch's AMP, apex O2 and DeepSpeed's bf16 optimiser do it.
//!
//! The model computes with its bf16 variables and its backward gives bf16 gradients. The
//! optimiser updates an f32 copy of each such variable (its moments are f32 as always) and
//! writes the copy, rounded to the variable's dtype, back into the model after each step.
//! An update smaller than half a bf16 ulp of the weight (lr 1e-5 on a weight of 0.1 is
//! one) would round away if applied to the bf16 weight itself; in the master it adds up.
//!
//! The master is the trained weight: checkpoints and the final model are written from it,
//! and a resume loads it and rounds it into the model again, so a resumed run continues
//! exactly. It starts as the model's weight widened to f32 (the weight the model computes
//! with).
use std::collections::HashMap;

use anyhow::Result;
use candle_core::{DType, Tensor, Var};

use super::Optimizer;
use crate::weights_file::Entry;

/// An optimiser over f32 masters of the model's narrower variables (see the module
/// documentation); f32 variables are the inner optimiser's own.
pub struct MasterWeights {
    inner: Box<dyn Optimizer>,
    /// The model's variables, in the optimiser's order.
    vars: Vec<Var>,
    /// The f32 master of each variable that is not f32.
    masters: Vec<Option<Var>>,
}

impl MasterWeights {
    /// The optimiser `make` builds over `vars`, each variable that is not f32 replaced by
    /// an f32 master copy. When every variable is f32 there is nothing to keep: `make`'s
    /// optimiser is returned as it is.
    pub fn wrap(
        vars: Vec<Var>,
        make: impl FnOnce(Vec<Var>) -> Result<Box<dyn Optimizer>>,
    ) -> Result<Box<dyn Optimizer>> {
        if vars.iter().all(|v| v.dtype() == DType::F32) {
            return make(vars);
        }
        let masters = vars
            .iter()
            .map(|v| {
                (v.dtype() != DType::F32)
                    .then(|| Var::from_tensor(&v.as_tensor().to_dtype(DType::F32)?))
                    .transpose()
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let inner_vars = vars
            .iter()
            .zip(&masters)
            .map(|(v, m)| m.as_ref().unwrap_or(v).clone())
            .collect();
        Ok(Box::new(Self {
            inner: make(inner_vars)?,
            vars,
            masters,
        }))
    }

    /// Rounds variable `i`'s master into the model's variable.
    fn round_into_model(&self, i: usize) -> Result<()> {
        if let Some(m) = &self.masters[i] {
            let var = &self.vars[i];
            var.set(&m.as_tensor().to_dtype(var.dtype())?)?;
        }
        Ok(())
    }
}

impl Optimizer for MasterWeights {
    fn step(&mut self, grads: &[Option<Tensor>], lr: f64, grad_scale: f64) -> Result<()> {
        // The inner optimiser takes the gradients in their dtype and updates in f32.
        self.inner.step(grads, lr, grad_scale)?;
        for (i, g) in grads.iter().enumerate() {
            if g.is_some() {
                self.round_into_model(i)?;
            }
        }
        Ok(())
    }

    /// The inner optimiser's state and the masters (4 bytes per element).
    fn state_bytes(&self) -> usize {
        self.inner.state_bytes()
            + self
                .masters
                .iter()
                .flatten()
                .map(|m| 4 * m.elem_count())
                .sum::<usize>()
    }

    /// The inner optimiser's state. The masters are the trained weights: a checkpoint
    /// writes them as its weights ([`Optimizer::master`]), not a second time here.
    fn state_entries(&self) -> Result<Vec<(String, Entry<'_>)>> {
        self.inner.state_entries()
    }

    /// Loads the inner optimiser's state, then rounds every master (loaded from the
    /// checkpoint's weights before this call) into the model.
    fn load_state_tensors(&mut self, t: &HashMap<String, Tensor>) -> Result<()> {
        self.inner.load_state_tensors(t)?;
        for i in 0..self.vars.len() {
            self.round_into_model(i)?;
        }
        Ok(())
    }

    fn step_count(&self) -> u64 {
        self.inner.step_count()
    }

    fn master(&self, i: usize) -> Option<Var> {
        self.masters.get(i)?.clone()
    }
}

/// `params` with each variable the optimiser keeps an f32 master of replaced by that
/// master: the trained weights, as checkpoints and the final model store them.
pub fn trained_params(params: &[(String, Var)], opt: &dyn Optimizer) -> Vec<(String, Var)> {
    params
        .iter()
        .enumerate()
        .map(|(i, (name, var))| (name.clone(), opt.master(i).unwrap_or_else(|| var.clone())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::optim::{AdamW, AdamW8bit, AdamWConfig};
    use candle_core::Device;

    const N: usize = 64;

    fn values() -> Vec<f32> {
        // bf16-representable, so that the f32 reference and the bf16 model start equal.
        (0..N).map(|i| 1.0 + (i % 8) as f32 / 8.0).collect()
    }

    fn grad(dtype: DType) -> Tensor {
        let g: Vec<f32> = (0..N).map(|i| ((i as f32) * 0.7).sin()).collect();
        Tensor::from_vec(g, N, &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    }

    fn var(dtype: DType) -> Var {
        let t = Tensor::from_vec(values(), N, &Device::Cpu).unwrap();
        Var::from_tensor(&t.to_dtype(dtype).unwrap()).unwrap()
    }

    fn adamw(vars: Vec<Var>) -> Result<Box<dyn Optimizer>> {
        let cfg = AdamWConfig {
            weight_decay: 0.01,
            ..Default::default()
        };
        Ok(Box::new(AdamW::new(vars, cfg)?))
    }

    fn f32s(t: &Tensor) -> Vec<f32> {
        t.to_dtype(DType::F32).unwrap().to_vec1().unwrap()
    }

    /// Steps of lr 1e-4 are under half a bf16 ulp of weights in [1, 2) (2^-8): applied to
    /// the bf16 weights they round away, applied to the masters they add up. The masters
    /// follow an f32 run exactly and the model holds them rounded to bf16.
    #[test]
    fn masters_keep_what_bf16_would_round_away() {
        let reference = var(DType::F32);
        let mut f32_run = adamw(vec![reference.clone()]).unwrap();
        let plain = var(DType::BF16);
        let mut plain_run = adamw(vec![plain.clone()]).unwrap();
        let model = var(DType::BF16);
        let mut mixed = MasterWeights::wrap(vec![model.clone()], adamw).unwrap();
        for _ in 0..60 {
            f32_run.step(&[Some(grad(DType::F32))], 1e-4, 1.0).unwrap();
            plain_run
                .step(&[Some(grad(DType::BF16))], 1e-4, 1.0)
                .unwrap();
            mixed.step(&[Some(grad(DType::BF16))], 1e-4, 1.0).unwrap();
        }
        assert_eq!(f32s(plain.as_tensor()), values(), "bf16 alone rounds away");
        let master = mixed.master(0).expect("a bf16 variable has a master");
        // The gradients went through bf16 in the mixed run only.
        let (want, got) = (f32s(reference.as_tensor()), f32s(master.as_tensor()));
        let d = want.iter().zip(&got).map(|(a, b)| (a - b).abs());
        assert!(d.fold(0f32, f32::max) < 1e-6, "{want:?}\n{got:?}");
        assert_ne!(got, values(), "the masters moved");
        let rounded = f32s(&master.as_tensor().to_dtype(DType::BF16).unwrap());
        assert_eq!(f32s(model.as_tensor()), rounded);
        assert_ne!(
            rounded,
            values(),
            "and so did the model, by whole bf16 steps"
        );
        assert_eq!(mixed.state_bytes(), 8 * N + 4 * N);
    }

    /// Only the variables that are not f32 get masters; an optimiser of f32 variables alone
    /// is not wrapped.
    #[test]
    fn only_narrow_variables_get_masters() {
        let (a, b) = (var(DType::F32), var(DType::BF16));
        let mixed = MasterWeights::wrap(vec![a.clone(), b.clone()], adamw).unwrap();
        assert!(mixed.master(0).is_none());
        assert_eq!(mixed.master(1).unwrap().dtype(), DType::F32);
        let params = [("a".to_string(), a.clone()), ("b".to_string(), b)];
        let trained = trained_params(&params, mixed.as_ref());
        assert_eq!(trained[0].1.id(), a.id());
        assert_eq!(trained[1].1.id(), mixed.master(1).unwrap().id());
        let plain = MasterWeights::wrap(vec![a], adamw).unwrap();
        assert!(plain.master(0).is_none());
        assert_eq!(plain.state_bytes(), 0);
    }

    /// A resume as the trainer does it: the masters set from the checkpoint's weights, then
    /// the state loaded, which rounds them into the model; the next steps equal the
    /// uninterrupted run's, for both optimisers.
    #[test]
    fn a_resumed_run_continues_exactly() {
        type Make = fn(Vec<Var>) -> Result<Box<dyn Optimizer>>;
        let eight: Make = |vars| {
            Ok(Box::new(AdamW8bit::new(
                vars,
                AdamWConfig::default(),
                16,
                0,
            )?))
        };
        for make in [adamw as Make, eight] {
            let run = |steps: usize, opt: &mut Box<dyn Optimizer>| {
                for _ in 0..steps {
                    opt.step(&[Some(grad(DType::BF16))], 1e-3, 0.5).unwrap();
                }
            };
            let straight = var(DType::BF16);
            let mut a = MasterWeights::wrap(vec![straight.clone()], make).unwrap();
            run(6, &mut a);

            let first = var(DType::BF16);
            let mut b = MasterWeights::wrap(vec![first.clone()], make).unwrap();
            run(3, &mut b);
            let saved_master = b.master(0).unwrap().as_tensor().copy().unwrap();
            let state = b.state_tensors().unwrap().into_iter().collect();

            let second = var(DType::BF16);
            let mut c = MasterWeights::wrap(vec![second.clone()], make).unwrap();
            c.master(0).unwrap().set(&saved_master).unwrap();
            c.load_state_tensors(&state).unwrap();
            assert_eq!(
                f32s(second.as_tensor()),
                f32s(&saved_master.to_dtype(DType::BF16).unwrap()),
                "loading rounds the masters into the model"
            );
            run(3, &mut c);
            assert_eq!(f32s(second.as_tensor()), f32s(straight.as_tensor()));
            assert_eq!(
                f32s(c.master(0).unwrap().as_tensor()),
                f32s(a.master(0).unwrap().as_tensor())
            );
            assert_eq!(c.step_count(), 3 + 3);
        }
    }
}
