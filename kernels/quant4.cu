// ftlab's CUDA kernels for 4-bit (NF4/FP4) weights, compiled to PTX by build.rs with nvcc
// (`--features cuda`), loaded at run time by candle. Each kernel has a tested twin: the
// generic dequantisation with tensor ops (`Quant4Tensor::dequantize_on`) and the CPU one
// (`Quant4Tensor::dequantize_into`); `ftlab check-kernels --device cuda` compares them.

// out[i] = code[nibble i of packed] * absmax[i / block_size], for i < n. Two codes per
// byte, the first of a pair in the high nibble (bitsandbytes' packing).
extern "C" __global__ void ftlab_dequant4_f32(
    const unsigned char* packed,
    const float* absmax,
    const float* code,
    float* out,
    const unsigned int n,
    const unsigned int block_size) {
  const unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) {
    return;
  }
  const unsigned char byte = packed[i >> 1];
  const unsigned int c = (i & 1u) ? (byte & 0x0fu) : (byte >> 4);
  out[i] = code[c] * absmax[i / block_size];
}
