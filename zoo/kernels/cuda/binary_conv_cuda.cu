// CUDA kernels for the zoo's binary 2-D convolution: conv2d(sign(x), sign(w)) with the binarized input zero-padded
// (a padding tap contributes 0, not +-1), no scaling factors, groups = 1, dilation = 1. Same semantics, tie rule and
// packed layouts as the CPU kernel (zoo/kernels/cpu/binary_conv.cpp); see binary_conv_cuda.h.
//
// 1. Fused sign-and-pack: real (N, C, H, W) with any strides (float32 / float16 / bfloat16 / float64), optional [C] or
//    [N, C] thresholds -> NHWC words [N, H, W, CW]. With a unit channel stride (channels_last) one warp builds one
//    64-bit word from two coalesced 32-channel loads and two __ballot_sync; otherwise one thread builds one word and
//    consecutive threads walk the width (coalesced for NCHW).
//
// 2. Tensor-core conv (sm_80+; the only b1 MMA form valid on sm_90 is AND, XOR is not used anywhere):
//    implicit GEMM, M = N*OH*OW output pixels, N = O output channels, K = KH*KW*CW words of 64 bits, the K order being
//    (tap, word) exactly as in the packed OHWI weights. With bits a = (x+1)/2, w = (v+1)/2 and padding taps / padded K
//    words read as 0 bits:
//        out = 4*P - 2*S_a - 2*S_w + C*valid_taps
//    P   = popc(a AND w) over all K: mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc;
//    S_a = popcount of the pixel's gathered activation bits: one extra MMA per 16-row tile against a B operand that
//          holds the real-channel mask (so garbage tail bits past C never count), issued for tile mt by warp column
//          mt % WN only (the extra MMAs spread evenly over the warps) and shared through shared memory;
//    S_w = popcount of the weight taps inside the image: the valid taps of a pixel form a rectangle
//          [kh0, kh1) x [kw0, kw1) (dilation 1), read from a per-output-channel 2-D prefix-sum table (4 loads);
//    valid_taps = (kh1 - kh0) * (kw1 - kw0).
//    Tiles: BM pixels x BN channels per CTA, 512-bit K stages (8 words per row) in a 3-stage cp.async pipeline;
//    activation rows are gathered at 8-byte (or 16-byte, even CW) granularity with zero-fill for padding taps, rows
//    past M and K padding, so a 256-bit MMA K step may span several taps (C = 64: four taps per step); a K step
//    holding only padding (the last stage's second half when KH*KW*CW mod 8 is 1..4) issues no MMA.
//    Shared-memory rows are padded to 80 bytes, which makes the fragment loads bank-conflict free.
//
// 3. CUDA-core reference conv: one thread per output, loop over the valid taps only, C_t - 2*popc((a ^ w) & mask)
//    per word (integer XOR on the ALU, no tensor cores), so it shares no arithmetic with the MMA path.
//
// The same file also compiles as host C++ with ZOO_BCONV_HOST_EMULATION defined (tests/cuda_emulation): the PTX
// primitives (cp.async, mma, shared memory) and the launchers then come from an emulator that runs every CUDA
// thread of a CTA as a coroutine, so the kernels' logic is tested against F.conv2d on machines without a GPU.

#include "binary_conv_cuda.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace zoo_bconv {
namespace {

using u64 = uint64_t;
using u32 = uint32_t;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ------------------------------------------------------------------------------------------------------------------
// Sign-and-pack.
// ------------------------------------------------------------------------------------------------------------------

__device__ __forceinline__ float as_cmp(float v) { return v; }
__device__ __forceinline__ double as_cmp(double v) { return v; }
__device__ __forceinline__ float as_cmp(__half v) { return __half2float(v); }  // exact widening
__device__ __forceinline__ float as_cmp(__nv_bfloat16 v) { return __bfloat162float(v); }

// x >= threshold, compared in x's dtype (the widening to float is exact, so the result is the same).
template <typename T, bool HAS_TH>
__device__ __forceinline__ bool sign_bit(const T* __restrict__ x, int64_t ix, const T* __restrict__ th, int64_t it) {
  const auto v = as_cmp(x[ix]);
  if constexpr (HAS_TH) {
    return v >= as_cmp(th[it]);
  } else {
    return v >= decltype(v)(0);  // -0.0 -> 1, NaN -> 0
  }
}

// One warp per output word: lanes read channels c0 + lane and c0 + 32 + lane of one pixel.
template <typename T, bool HAS_TH>
__global__ void __launch_bounds__(256) pack_ballot_kernel(const PackParams p) {
  const T* __restrict__ x = static_cast<const T*>(p.x);
  const T* __restrict__ th = static_cast<const T*>(p.th);
  const int lane = threadIdx.x & 31;
  const int64_t items = p.N * p.H * p.W * p.CW;
  const int64_t wpb = blockDim.x >> 5;
  const int64_t step = static_cast<int64_t>(gridDim.x) * wpb;
  for (int64_t it = static_cast<int64_t>(blockIdx.x) * wpb + (threadIdx.x >> 5); it < items; it += step) {
    int64_t t = it;
    const int64_t cw = t % p.CW;
    t /= p.CW;
    const int64_t w = t % p.W;
    t /= p.W;
    const int64_t h = t % p.H;
    const int64_t n = t / p.H;
    const T* px = x + n * p.sN + h * p.sH + w * p.sW;
    const int64_t c0 = cw * 64 + lane, c1 = c0 + 32;
    const int64_t tb = n * p.thN;
    const bool b0 = c0 < p.C && sign_bit<T, HAS_TH>(px, c0 * p.sC, th, tb + c0);
    const bool b1 = c1 < p.C && sign_bit<T, HAS_TH>(px, c1 * p.sC, th, tb + c1);
    const u32 lo = __ballot_sync(0xffffffffu, b0);
    const u32 hi = __ballot_sync(0xffffffffu, b1);
    if (lane == 0) p.out[it] = static_cast<u64>(lo) | (static_cast<u64>(hi) << 32);
  }
}

// One thread per output word; consecutive threads take consecutive w (coalesced reads for NCHW inputs).
template <typename T, bool HAS_TH>
__global__ void __launch_bounds__(256) pack_strided_kernel(const PackParams p) {
  const T* __restrict__ x = static_cast<const T*>(p.x);
  const T* __restrict__ th = static_cast<const T*>(p.th);
  const int64_t items = p.N * p.CW * p.H * p.W;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t it = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; it < items; it += step) {
    int64_t t = it;
    const int64_t w = t % p.W;
    t /= p.W;
    const int64_t h = t % p.H;
    t /= p.H;
    const int64_t cw = t % p.CW;
    const int64_t n = t / p.CW;
    const T* px = x + n * p.sN + h * p.sH + w * p.sW;
    const int64_t c0 = cw * 64;
    const int nb = static_cast<int>(min(static_cast<int64_t>(64), p.C - c0));
    const int64_t tb = n * p.thN + c0;
    u64 word = 0;
    for (int b = 0; b < nb; ++b)
      if (sign_bit<T, HAS_TH>(px, (c0 + b) * p.sC, th, tb + b)) word |= u64{1} << b;
    p.out[((n * p.H + h) * p.W + w) * p.CW + cw] = word;
  }
}

// ------------------------------------------------------------------------------------------------------------------
// Epilogue of one output element (see ConvParams): the CPU kernel's float32 steps, in its order.
// ------------------------------------------------------------------------------------------------------------------

__device__ __forceinline__ float epilogue(const ConvParams& p, float v, int64_t pix, int64_t o) {
  if (p.scale != nullptr) v = fmaf(v, __ldg(p.scale + o), __ldg(p.bias + o));
  if (p.residual != nullptr) v += __ldg(p.residual + pix * p.O + o);
  if (p.slope != nullptr) v = v > 0.0f ? v : __ldg(p.slope + o) * v;
  if (p.clamp) {  // std::max / std::min as the CPU kernel: a NaN stays NaN (fmaxf / fminf would drop it)
    v = v < p.lo ? p.lo : v;
    v = p.hi < v ? p.hi : v;
  }
  return v;
}

// ------------------------------------------------------------------------------------------------------------------
// Tensor-core conv.
// ------------------------------------------------------------------------------------------------------------------

constexpr int kStageWords = 8;   // 64-bit words of K per pipeline stage and row (512 bits = 2 MMA K steps)
constexpr int kRowU32 = 20;      // shared-memory row: 16 data u32 + 4 padding u32 (80 bytes, 16-byte aligned)
constexpr int kStages = 3;
constexpr int kInvalidOrigin = -(1 << 29);  // input origin of rows past M: every tap is out of the image

#ifndef ZOO_BCONV_HOST_EMULATION  // the host emulator (tests/cuda_emulation) brings its own versions of these
__device__ __forceinline__ u32 smem_addr(const void* p) {
  return static_cast<u32>(__cvta_generic_to_shared(p));
}

// cp.async with zero fill: src_bytes = 0 writes zeros and reads nothing.
template <int BYTES, bool L1>
__device__ __forceinline__ void cp_async(void* dst, const void* src, int src_bytes) {
  if constexpr (BYTES == 16 && !L1) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(src_bytes)
                 : "memory");
  } else {
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(smem_addr(dst)), "l"(src), "n"(BYTES),
                 "r"(src_bytes)
                 : "memory");
  }
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// D += popc(A AND B) on a 16x8x256 bit tile. Fragments (PTX ISA, mma.m16n8k256 .b1), g = lane / 4, q = lane % 4:
//   a[0]: row g,   k 32q..32q+31      a[1]: row g+8, same k      a[2]: row g, k 128+32q..      a[3]: row g+8, k 128+32q..
//   b[0]: col g,   k 32q..32q+31      b[1]: col g,   k 128+32q..
//   d[0], d[1]: row g, cols 2q, 2q+1  d[2], d[3]: row g+8, cols 2q, 2q+1
__device__ __forceinline__ void mma_and_popc(int32_t (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
  asm("mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// The CTA's dynamic shared memory (the kernel's only shared memory, so one size covers it: mma_smem_bytes).
__device__ __forceinline__ u32* dynamic_shared_words() {
  extern __shared__ __align__(16) u32 smem[];
  return smem;
}
#endif  // ZOO_BCONV_HOST_EMULATION

// The pipeline's A and B stages, then per row: the image's word offset (int64) and input origin and S_a (3 x int).
template <int BM, int BN>
constexpr size_t mma_smem_bytes() {
  return static_cast<size_t>(kStages) * (BM + BN) * kRowU32 * sizeof(u32) + BM * (sizeof(int64_t) + 3 * sizeof(int));
}

// AVEC: 64-bit words per activation cp.async (1 or 2; 2 needs an even CW and a 16-byte aligned activation pointer).
template <int BM, int BN, int WM, int WN, int AVEC>
__global__ void __launch_bounds__(WM * WN * 32, 1) conv_mma_kernel(const ConvParams p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // never built for these architectures; launch_conv_mma is only reached on sm_80+
#else
  constexpr int kThreads = WM * WN * 32;
  constexpr int WTM = BM / WM, WTN = BN / WN;  // warp tile
  constexpr int MT = WTM / 16, NT = WTN / 8;   // MMA tiles per warp
  constexpr int kChunksPerRow = kStageWords / AVEC;
  static_assert(WTM % 16 == 0 && WTN % 8 == 0, "warp tile must be a multiple of 16 x 8");
  static_assert(kThreads % kChunksPerRow == 0, "each thread must keep one word slot of the stage");
  static_assert(AVEC == 1 || AVEC == 2, "AVEC is 1 or 2 words");

  u32* sA = dynamic_shared_words();                                         // [kStages][BM][kRowU32]
  u32* sB = sA + kStages * BM * kRowU32;                                     // [kStages][BN][kRowU32]
  int64_t* s_base = reinterpret_cast<int64_t*>(sB + kStages * BN * kRowU32);  // word offset of the pixel's image
  int* s_ih0 = reinterpret_cast<int*>(s_base + BM);                         // input origin of the receptive field
  int* s_iw0 = s_ih0 + BM;
  int* s_sa = s_iw0 + BM;                                                    // S_a per row

  const int tid = threadIdx.x;
  const int lane = tid & 31, warp = tid >> 5;
  const int warp_m = warp % WM, warp_n = warp / WM;
  const int g = lane >> 2, q = lane & 3;

  const int H = static_cast<int>(p.H), W = static_cast<int>(p.W), CW = static_cast<int>(p.CW);
  const int KH = static_cast<int>(p.KH), KW = static_cast<int>(p.KW), O = static_cast<int>(p.O);
  const int C = static_cast<int>(p.C);
  const int64_t OHW = p.OH * p.OW;
  const int64_t M = p.N * OHW;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * BM;
  const int n0 = blockIdx.y * BN;
  const int Kw = KH * KW * CW;                     // real K words
  const int KT = static_cast<int>(p.KP / kStageWords);

  for (int r = tid; r < BM; r += kThreads) {
    const int64_t pix = m0 + r;
    if (pix < M) {
      const int64_t n = pix / OHW;
      const int64_t rem = pix - n * OHW;
      const int oh = static_cast<int>(rem / p.OW), ow = static_cast<int>(rem - (rem / p.OW) * p.OW);
      s_base[r] = n * p.H * p.W * p.CW;
      s_ih0[r] = oh * static_cast<int>(p.sh) - static_cast<int>(p.ph);
      s_iw0[r] = ow * static_cast<int>(p.sw) - static_cast<int>(p.pw);
    } else {
      s_base[r] = 0;
      s_ih0[r] = kInvalidOrigin;
      s_iw0[r] = kInvalidOrigin;
    }
  }
  __syncthreads();

  // Word slot of this thread within a stage row (fixed, since kThreads is a multiple of kChunksPerRow).
  const int a_slot = tid % kChunksPerRow;

  auto load_stage = [&](int buf, int kt) {
    // Weights: BN rows x 8 words, 16-byte chunks, rows past O zero-filled. KP is a multiple of 8: no K check.
    u32* dB = sB + buf * BN * kRowU32;
    for (int i = tid; i < BN * (kStageWords / 2); i += kThreads) {
      const int r = i / (kStageWords / 2), j = i % (kStageWords / 2);
      const int o = n0 + r;
      const u64* src = o < O ? p.w + static_cast<int64_t>(o) * p.KP + kt * kStageWords + 2 * j : p.w;
      cp_async<16, false>(dB + r * kRowU32 + 4 * j, src, o < O ? 16 : 0);
    }
    // Activations: implicit im2col gather. K word k -> tap t = k / CW, word cw = k % CW, (kh, kw) = (t / KW, t % KW).
    u32* dA = sA + buf * BM * kRowU32;
    const int k = kt * kStageWords + a_slot * AVEC;
    const bool kvalid = k < Kw;
    int kh = 0, kw = 0, cw = 0;
    if (kvalid) {
      const int t = k / CW;
      cw = k - t * CW;
      kh = t / KW;
      kw = t - kh * KW;
    }
    for (int i = tid; i < BM * kChunksPerRow; i += kThreads) {
      const int r = i / kChunksPerRow;
      const int ih = s_ih0[r] + kh, iw = s_iw0[r] + kw;
      const bool ok = kvalid && ih >= 0 && ih < H && iw >= 0 && iw < W;
      const u64* src = ok ? p.act + s_base[r] + (static_cast<int64_t>(ih) * W + iw) * CW + cw : p.act;
      cp_async<8 * AVEC, true>(dA + r * kRowU32 + 2 * AVEC * a_slot, src, ok ? 8 * AVEC : 0);
    }
  };

  int32_t acc[MT][NT][4];
  int32_t sa[MT][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int i = 0; i < 4; ++i) sa[mt][i] = 0;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[mt][nt][i] = 0;
  }

  // Real-channel mask for the S_a MMA: the last word of every tap keeps only its C % 64 low bits.
  const int tail = C % 64;
  const u64 tail64 = tail ? ((u64{1} << tail) - 1) : ~u64{0};
  const u32 tail_half = (q & 1) ? static_cast<u32>(tail64 >> 32) : static_cast<u32>(tail64);

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < KT) load_stage(s, s);
    cp_async_commit();
  }

  const int a_row0 = warp_m * WTM + g;
  const int b_row0 = warp_n * WTN + g;
  for (int kt = 0; kt < KT; ++kt) {
    cp_async_wait<kStages - 2>();
    __syncthreads();
    {
      const int nk = kt + kStages - 1;
      if (nk < KT) load_stage(nk % kStages, nk);
      cp_async_commit();
    }
    const int buf = kt % kStages;
    const u32* As = sA + buf * BM * kRowU32 + a_row0 * kRowU32 + q;
    const u32* Bs = sB + buf * BN * kRowU32 + b_row0 * kRowU32 + q;
#pragma unroll
    for (int ks = 0; ks < 2; ++ks) {
      if (kt * kStageWords + ks * 4 >= Kw) break;  // K padding only (zero bits on both sides): no MMA for it
      u32 b[NT][2];
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        b[nt][0] = Bs[nt * 8 * kRowU32 + ks * 8];
        b[nt][1] = Bs[nt * 8 * kRowU32 + ks * 8 + 4];
      }
      u32 m0w = ~0u, m1w = ~0u;
      if (tail != 0) {
        // b[0] covers K word kbase + q/2 (low or high half by q & 1), b[1] the word two further.
        const int w0 = kt * kStageWords + ks * 4 + (q >> 1);
        m0w = (w0 % CW == CW - 1) ? tail_half : ~0u;
        m1w = ((w0 + 2) % CW == CW - 1) ? tail_half : ~0u;
      }
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        u32 a[4];
        a[0] = As[(mt * 16) * kRowU32 + ks * 8];
        a[1] = As[(mt * 16 + 8) * kRowU32 + ks * 8];
        a[2] = As[(mt * 16) * kRowU32 + ks * 8 + 4];
        a[3] = As[(mt * 16 + 8) * kRowU32 + ks * 8 + 4];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) mma_and_popc(acc[mt][nt], a, b[nt][0], b[nt][1]);
        if (mt % WN == warp_n) mma_and_popc(sa[mt], a, m0w, m1w);  // S_a of tile mt: one warp column, spread
      }
    }
  }
  cp_async_wait<0>();

  // S_a of every row (all 8 columns of the mask MMA hold the same value).
  if (q == 0) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      if (mt % WN != warp_n) continue;
      s_sa[a_row0 + mt * 16] = sa[mt][0];
      s_sa[a_row0 + mt * 16 + 8] = sa[mt][2];
    }
  }
  __syncthreads();

  // Epilogue: out = 4 P - 2 S_a - 2 S_w(valid rectangle) + C * valid_taps, exact in float32.
  const int TT = (KH + 1) * (KW + 1);
  const bool pair_store = (O % 2) == 0;
  // S_w of the whole window per output column of this thread (interior pixels; the last prefix-sum entry).
  int sw_full[NT][2];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int oe = min(n0 + warp_n * WTN + nt * 8 + 2 * q + e, O - 1);  // clamped; stored only when < O
      sw_full[nt][e] = __ldg(p.wtab + static_cast<int64_t>(oe) * TT + TT - 1);
    }
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      const int r = a_row0 + mt * 16 + hh * 8;
      const int64_t pix = m0 + r;
      if (pix >= M) continue;
      const int ih0 = s_ih0[r], iw0 = s_iw0[r];
      // in-image taps: [kh0, kh1) x [kw0, kw1), clamped to the kernel (empty when padding exceeds the kernel)
      const int kh0 = min(max(0, -ih0), KH), kh1 = max(kh0, min(KH, H - ih0));
      const int kw0 = min(max(0, -iw0), KW), kw1 = max(kw0, min(KW, W - iw0));
      const bool interior = kh0 == 0 && kh1 == KH && kw0 == 0 && kw1 == KW;
      const int base = C * (kh1 - kh0) * (kw1 - kw0) - 2 * s_sa[r];
      const int i11 = kh1 * (KW + 1) + kw1, i01 = kh0 * (KW + 1) + kw1;
      const int i10 = kh1 * (KW + 1) + kw0, i00 = kh0 * (KW + 1) + kw0;
      float* orow = p.out + pix * p.O;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const int o = n0 + warp_n * WTN + nt * 8 + 2 * q;
        float v[2];
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int oe = min(o + e, O - 1);  // clamped: reads stay in bounds; stored only when o + e < O
          int sw = sw_full[nt][e];
          if (!interior) {  // border pixel: popcount of the in-image tap rectangle, 4 prefix-sum lookups
            const int32_t* tab = p.wtab + static_cast<int64_t>(oe) * TT;
            sw = __ldg(tab + i11) - __ldg(tab + i01) - __ldg(tab + i10) + __ldg(tab + i00);
          }
          v[e] = epilogue(p, static_cast<float>(4 * acc[mt][nt][2 * hh + e] + base - 2 * sw), pix, oe);
        }
        if (pair_store && o + 1 < O) {
          *reinterpret_cast<float2*>(orow + o) = make_float2(v[0], v[1]);
        } else {
          if (o < O) orow[o] = v[0];
          if (o + 1 < O) orow[o + 1] = v[1];
        }
      }
    }
  }
#endif
}

// ------------------------------------------------------------------------------------------------------------------
// CUDA-core reference conv.
// ------------------------------------------------------------------------------------------------------------------

__global__ void __launch_bounds__(256) conv_simt_kernel(const ConvParams p) {
  const int o = blockIdx.y * 32 + threadIdx.x;
  const int64_t pix = static_cast<int64_t>(blockIdx.x) * 8 + threadIdx.y;
  const int64_t OHW = p.OH * p.OW;
  if (o >= p.O || pix >= p.N * OHW) return;
  const int64_t n = pix / OHW;
  const int64_t rem = pix - n * OHW;
  const int64_t oh = rem / p.OW, ow = rem - oh * p.OW;
  const int64_t ih0 = oh * p.sh - p.ph, iw0 = ow * p.sw - p.pw;
  const int64_t CW = p.CW;
  const int tail = static_cast<int>(p.C % 64);
  const u64 last_mask = tail ? ((u64{1} << tail) - 1) : ~u64{0};
  const int last_bits = tail ? tail : 64;
  int64_t dot = 0;
  for (int64_t kh = 0; kh < p.KH; ++kh) {
    const int64_t ih = ih0 + kh;
    if (ih < 0 || ih >= p.H) continue;  // padding tap: contributes 0
    for (int64_t kw = 0; kw < p.KW; ++kw) {
      const int64_t iw = iw0 + kw;
      if (iw < 0 || iw >= p.W) continue;
      const u64* a = p.act + ((n * p.H + ih) * p.W + iw) * CW;
      const u64* w = p.w + ((o * p.KH + kh) * p.KW + kw) * CW;
      for (int64_t cw = 0; cw < CW; ++cw) {
        const bool last = cw == CW - 1;
        const u64 diff = (__ldg(reinterpret_cast<const unsigned long long*>(a + cw)) ^
                          __ldg(reinterpret_cast<const unsigned long long*>(w + cw))) &
                         (last ? last_mask : ~u64{0});
        dot += (last ? last_bits : 64) - 2 * __popcll(diff);
      }
    }
  }
  p.out[pix * p.O + o] = epilogue(p, static_cast<float>(dot), pix, o);
}

// ------------------------------------------------------------------------------------------------------------------
// Tensor-core tile configs: BM pixels x BN output channels per CTA, WM x WN warps. with_tile is the one list of them
// (the launchers below dispatch through it, and so does the host emulator in tests/cuda_emulation).
// ------------------------------------------------------------------------------------------------------------------

template <int BM_, int BN_, int WM_, int WN_>
struct Tile {
  static constexpr int BM = BM_, BN = BN_, WM = WM_, WN = WN_;
};

constexpr int kNumConfigs = 4;
constexpr const char* kConfigNames[kNumConfigs] = {"bm128_bn128_w2x4", "bm128_bn64_w4x2", "bm64_bn64_w2x2",
                                                   "bm32_bn32_w1x2"};

// f(Tile<...>{}) of config 0 .. kNumConfigs - 1; the caller checks the range.
template <typename F>
auto with_tile(int config, F&& f) {
  switch (config) {
    case 0:
      return f(Tile<128, 128, 2, 4>{});
    case 1:
      return f(Tile<128, 64, 4, 2>{});
    case 2:
      return f(Tile<64, 64, 2, 2>{});
    default:
      return f(Tile<32, 32, 1, 2>{});
  }
}

}  // namespace

#ifndef ZOO_BCONV_HOST_EMULATION  // launches (host code with <<<>>>); the emulator has its own
namespace {

template <typename T>
cudaError_t pack_typed(const PackParams& p, cudaStream_t stream) {
  constexpr int kThreads = 256;
  const bool ballot = p.sC == 1 && p.C > 1;
  const int64_t items = p.N * p.H * p.W * p.CW;
  if (items == 0) return cudaSuccess;
  const int64_t per_block = ballot ? kThreads / 32 : kThreads;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(ceil_div(items, per_block), int64_t{1} << 20));
  const bool has_th = p.th != nullptr;
  if (ballot) {
    if (has_th)
      pack_ballot_kernel<T, true><<<blocks, kThreads, 0, stream>>>(p);
    else
      pack_ballot_kernel<T, false><<<blocks, kThreads, 0, stream>>>(p);
  } else {
    if (has_th)
      pack_strided_kernel<T, true><<<blocks, kThreads, 0, stream>>>(p);
    else
      pack_strided_kernel<T, false><<<blocks, kThreads, 0, stream>>>(p);
  }
  return cudaGetLastError();
}

template <int BM, int BN, int WM, int WN, int AVEC>
cudaError_t launch_tile(const ConvParams& p, cudaStream_t stream) {
  auto kernel = conv_mma_kernel<BM, BN, WM, WN, AVEC>;
  constexpr size_t smem = mma_smem_bytes<BM, BN>();
  if constexpr (smem > 48 * 1024) {  // opt in to more than 48 KiB (all of the kernel's shared memory), once per device
    static std::atomic<unsigned long long> configured{0};
    int dev = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e != cudaSuccess) return e;
    const unsigned long long bit = dev < 64 ? (1ull << dev) : 0ull;
    if (bit == 0 || (configured.load(std::memory_order_relaxed) & bit) == 0) {
      e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
      if (e != cudaSuccess) return e;
      configured.fetch_or(bit, std::memory_order_relaxed);
    }
  }
  const int64_t M = p.N * p.OH * p.OW;
  const dim3 grid(static_cast<unsigned>(ceil_div(M, BM)), static_cast<unsigned>(ceil_div(p.O, BN)));
  kernel<<<grid, WM * WN * 32, smem, stream>>>(p);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_tile_vec(const ConvParams& p, cudaStream_t stream) {
  const bool vec2 = p.CW % 2 == 0 && (reinterpret_cast<uintptr_t>(p.act) % 16) == 0;
  return vec2 ? launch_tile<T::BM, T::BN, T::WM, T::WN, 2>(p, stream)
              : launch_tile<T::BM, T::BN, T::WM, T::WN, 1>(p, stream);
}

}  // namespace

cudaError_t launch_pack_activations(const PackParams& p, int dtype, cudaStream_t stream) {
  switch (dtype) {
    case kF32:
      return pack_typed<float>(p, stream);
    case kF16:
      return pack_typed<__half>(p, stream);
    case kBF16:
      return pack_typed<__nv_bfloat16>(p, stream);
    case kF64:
      return pack_typed<double>(p, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

int num_mma_configs() { return kNumConfigs; }

const char* mma_config_name(int config) {
  return config >= 0 && config < kNumConfigs ? kConfigNames[config] : "invalid";
}

// The largest tile that still gives at least one CTA per SM; the 128-channel tile only when O > 64.
int pick_mma_config(const ConvParams& p, int num_sms) {
  const int64_t M = p.N * p.OH * p.OW;
  for (int c = 0; c < kNumConfigs - 1; ++c) {
    const int bm = with_tile(c, [](auto tile) { return decltype(tile)::BM; });
    const int bn = with_tile(c, [](auto tile) { return decltype(tile)::BN; });
    if (bn > 64 && p.O <= 64) continue;
    if (ceil_div(M, bm) * ceil_div(p.O, bn) >= num_sms) return c;
  }
  return kNumConfigs - 1;
}

cudaError_t launch_conv_mma(const ConvParams& p, int config, cudaStream_t stream) {
  if (p.N * p.OH * p.OW == 0) return cudaSuccess;
  if (p.KP % kStageWords != 0 || p.KP < p.KH * p.KW * p.CW) return cudaErrorInvalidValue;
  if (config < 0 || config >= kNumConfigs) return cudaErrorInvalidValue;
  return with_tile(config, [&](auto tile) { return launch_tile_vec<decltype(tile)>(p, stream); });
}

cudaError_t launch_conv_simt(const ConvParams& p, cudaStream_t stream) {
  const int64_t M = p.N * p.OH * p.OW;
  if (M == 0) return cudaSuccess;
  const dim3 block(32, 8);
  const dim3 grid(static_cast<unsigned>(ceil_div(M, 8)), static_cast<unsigned>(ceil_div(p.O, 32)));
  conv_simt_kernel<<<grid, block, 0, stream>>>(p);
  return cudaGetLastError();
}

#endif  // ZOO_BCONV_HOST_EMULATION

}  // namespace zoo_bconv
