//! The 4-bit dequantisation as one kernel: `kernels/quant4.cu` on CUDA (built to PTX by
//! build.rs with `--features cuda`), the same index arithmetic in Rust on the CPU. Its
//! twins are the generic dequantisation with tensor ops ([`super::Quant4Tensor::dequantize_on`]
//! with the generic path forced) and the CPU one ([`super::Quant4Tensor::dequantize_into`]);
//! the tests compare the CPU body with both, and `ftlab check-kernels --device cuda`
//! compares the CUDA kernel with them on a GPU.
//!
//! On a GPU the tensor-op version holds about four weight-sized f32 tensors at once (the
//! codes as f32, the two nibbles, the indices, the values); the kernel writes the values
//! straight from the packed bytes.
use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

/// `out[i] = code[nibble i of packed] · absmax[i / block]` for `i < n`, f32 of shape (n,).
struct Dequant4 {
    /// (blocks, 1) f32, contiguous, on the device of the codes.
    absmax: Tensor,
    /// (16,) f32, contiguous, on the device of the codes.
    code: Tensor,
    n: usize,
    block: usize,
}

impl CustomOp1 for Dequant4 {
    fn name(&self) -> &'static str {
        "dequant4"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::U8(bytes) = s else {
            bail!("dequant4: the packed codes are not u8")
        };
        let Some((a, b)) = l.contiguous_offsets() else {
            bail!("dequant4: the packed codes are not contiguous")
        };
        let packed = &bytes[a..b];
        if packed.len() * 2 < self.n {
            bail!(
                "dequant4: {} bytes hold fewer than {} codes",
                packed.len(),
                self.n
            );
        }
        let absmax: Vec<f32> = self.absmax.flatten_all()?.to_vec1()?;
        let code: Vec<f32> = self.code.to_vec1()?;
        let out = (0..self.n)
            .map(|i| {
                let byte = packed[i >> 1];
                let c = if i & 1 == 1 { byte & 0x0f } else { byte >> 4 };
                code[c as usize] * absmax[i / self.block]
            })
            .collect();
        Ok((CpuStorage::F32(out), Shape::from(self.n)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
        use candle_core::{CudaStorage, Storage};

        const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/quant4.ptx"));
        let dev = s.device().clone();
        let Some((a, b)) = l.contiguous_offsets() else {
            bail!("dequant4: the packed codes are not contiguous")
        };
        let packed = s.as_cuda_slice::<u8>()?.slice(a..b);
        let (am_guard, am_layout) = self.absmax.storage_and_layout();
        let (code_guard, code_layout) = self.code.storage_and_layout();
        let (Storage::Cuda(am), Storage::Cuda(code)) = (&*am_guard, &*code_guard) else {
            bail!("dequant4: absmax and code table must be on the GPU of the codes")
        };
        if am_layout.start_offset() != 0 || code_layout.start_offset() != 0 {
            bail!("dequant4: absmax and code table must start at offset 0");
        }
        let (am, code) = (am.as_cuda_slice::<f32>()?, code.as_cuda_slice::<f32>()?);
        // SAFETY: every element of `out` is written by the kernel (one thread per i < n).
        let mut out = unsafe { dev.alloc::<f32>(self.n)? };
        let func = dev.get_or_load_custom_func("ftlab_dequant4_f32", "ftlab_quant4", PTX)?;
        let (n, block) = (self.n as u32, self.block as u32);
        let mut launch = func.builder();
        launch.arg(&packed);
        launch.arg(am);
        launch.arg(code);
        launch.arg(&mut out);
        launch.arg(&n);
        launch.arg(&block);
        // SAFETY: the arguments match the kernel's signature in kernels/quant4.cu, and the
        // buffers hold n/2 bytes, n/block absmax values, 16 codes and n outputs.
        unsafe { launch.launch(LaunchConfig::for_num_elems(n)) }
            .map_err(|e| candle_core::Error::Cuda(Box::new(e)))?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from(self.n)))
    }
}

/// The first `n` values of 4-bit codes `packed` (u8, two per byte) in blocks of `block`
/// with scales `absmax` ((blocks, 1) f32) and code table `code` (16 f32), as f32 (n,).
pub fn dequant4(
    packed: &Tensor,
    absmax: &Tensor,
    code: &Tensor,
    n: usize,
    block: usize,
) -> Result<Tensor> {
    packed.apply_op1_no_bwd(&Dequant4 {
        absmax: absmax.contiguous()?.copy()?,
        code: code.contiguous()?,
        n,
        block,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{Quant4Kind, Quant4Tensor};
    use candle_core::{DType, Device, Tensor};

    /// The kernel's body, the tensor-op twin and the CPU dequantisation give the same
    /// bits: NF4 and FP4, with and without double quantisation, element counts that are
    /// and are not a multiple of the block (a padded last block), more than 256 blocks
    /// (several double-quantisation groups).
    #[test]
    fn the_kernel_body_and_both_twins_dequantise_to_the_same_bits() {
        let dev = Device::Cpu;
        for (rows, cols) in [(7, 13), (64, 130), (300, 70)] {
            let w = Tensor::randn(0f32, 0.05, (rows, cols), &dev).unwrap();
            for kind in [Quant4Kind::Nf4, Quant4Kind::Fp4] {
                for dq in [false, true] {
                    let q = Quant4Tensor::quantize(&w, kind, dq).unwrap();
                    let mut cpu = vec![0f32; rows * cols];
                    q.dequantize_into(&mut cpu).unwrap();
                    let values = |t: Tensor| -> Vec<f32> {
                        assert_eq!(t.dims(), &[rows, cols]);
                        assert_eq!(t.dtype(), DType::F32);
                        t.flatten_all().unwrap().to_vec1().unwrap()
                    };
                    let kernel = values(q.dequantize_with_kernel(&dev).unwrap());
                    let ops = values(q.dequantize_with_tensor_ops(&dev).unwrap());
                    let what = format!("{kind:?} dq {dq} ({rows}×{cols})");
                    assert!(
                        cpu.iter()
                            .zip(&kernel)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "kernel, {what}"
                    );
                    assert!(
                        cpu.iter()
                            .zip(&ops)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "tensor ops, {what}"
                    );
                }
            }
        }
    }
}
