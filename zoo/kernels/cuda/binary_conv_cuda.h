// Host-side interface of the CUDA binary-conv kernels (binary_conv_cuda.cu). Plain C++ and CUDA runtime types only,
// so that the .cu translation unit compiles without the torch headers (the torch binding lives in binding.cpp).
//
// Semantics and layouts are those of the CPU kernel (zoo/kernels/cpu/binary_conv.cpp):
//   packed activations [N, H, W, CW] and packed weights [O, KH, KW, CW], CW = ceil(C / 64), uint64 words, channel c in
//   bit c % 64 of word c / 64, bit 1 <-> +1, bit = x >= threshold (NaN -> 0), zero padding of the *binarized* input
//   (a padding tap contributes 0), out = conv2d(sign(x), sign(w)) as float32 in NHWC ([N, OH, OW, O]) memory order.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace zoo_bconv {

enum DType : int { kF32 = 0, kF16 = 1, kBF16 = 2, kF64 = 3 };

struct PackParams {
  const void* x;                // element pointer (storage offset applied), dtype given separately
  int64_t N, C, H, W;           // logical (N, C, H, W) sizes
  int64_t sN, sC, sH, sW;       // element strides
  const void* th;               // thresholds in x's dtype, contiguous [C] or [N, C]; nullptr: threshold 0
  int64_t thN;                  // threshold stride between samples (0 for [C] thresholds)
  uint64_t* out;                // [N, H, W, CW]
  int64_t CW;
};

struct ConvParams {
  const uint64_t* act;   // packed activations [N, H, W, CW]
  const uint64_t* w;     // MMA path: prepared weights [O, KP] (tail bits masked, zero padded to KP words);
                         // SIMT path: packed weights [O, KH, KW, CW]
  const int32_t* wtab;   // MMA path: [O, (KH+1)*(KW+1)] 2-D prefix sums of per-tap weight popcounts
  float* out;            // [N, OH, OW, O]
  int64_t N, H, W, C, CW, O, KH, KW, sh, sw, ph, pw, OH, OW, KP;
  // Epilogue, as the CPU kernel's (each step skipped when its pointer is null / clamp is 0), per output element:
  //   v = fmaf(conv, scale[o], bias[o]); v += residual[pix, o]; v = v > 0 ? v : slope[o] * v; v = clamp(v, lo, hi)
  // with the clamp keeping NaN (std::min(std::max(v, lo), hi)). Every step is one float32 operation, so the result
  // equals the CPU kernel's bit for bit.
  const float* scale;     // [O], with bias (both or neither)
  const float* bias;      // [O]
  const float* residual;  // [N, OH, OW, O], contiguous (the output's memory order)
  const float* slope;     // [O] PReLU slopes
  int clamp;
  float lo, hi;
};

// Fused sign-and-pack (any strides; warp-ballot kernel when the channel stride is 1).
cudaError_t launch_pack_activations(const PackParams& p, int dtype, cudaStream_t stream);

// Tensor-core path: implicit GEMM with mma.sync.m16n8k256 b1 AND-popcount (sm_80+).
int num_mma_configs();
int pick_mma_config(const ConvParams& p, int num_sms);
const char* mma_config_name(int config);
// 16-byte activation loads need an even CW and a 16-byte aligned activation pointer; otherwise 8-byte loads are used.
cudaError_t launch_conv_mma(const ConvParams& p, int config, cudaStream_t stream);

// CUDA-core reference path: __popcll over the valid taps (no tensor cores), any device the build targets.
cudaError_t launch_conv_simt(const ConvParams& p, cudaStream_t stream);

}  // namespace zoo_bconv
