// CPU inference kernel for the zoo's binary 2-D convolution: conv2d(sign(x), sign(w)) with the binarized input
// zero-padded (a padding tap contributes 0, not +-1), no scaling factors, groups = 1, dilation = 1.
//
// Encoding: bit 1 <-> +1, bit 0 <-> -1, tie rule sign(0) = +1 (bit = x >= threshold, default threshold 0, so
// -0.0 and +0.0 both give +1 and NaN gives -1).
//
// Layouts (64-bit words, channel c of a pixel lives in word c / 64, bit c % 64; bits past C are 0):
//   packed activations  [N, H, W, CW]      CW = ceil(C / 64)
//   packed weights      [O, KH, KW, CW]    (OHWI along input channels)
//   blocked weights     [nOB, R + T, NB]   T = KH*KW taps, K = T*CW words, NB = 8*NV output channels per block:
//                       rows 0..R-1 hold word (tap, cw) of NB consecutive output channels (zero for channels >= O),
//                       rows R..R+T-1 hold popcount(weight word run of that tap) for the padding correction.
//                       R = K words, except on the AVX2 path (R = 2K): there every word is stored as its two nibble
//                       words, word & 0x0F0F.. then (word >> 4) & 0x0F0F.. (see the AVX2 kernel), and the packed
//                       activations are split the same way before the conv.
//
// Arithmetic: with a, w the bit words of a *valid* tap, sum over its C real channels of (+-1)(+-1) equals
// C - 2*popcount(a ^ w) (the tail bits are 0 in both, so they never count). A padding tap reads a zero word run;
// 0 ^ w = w, so the kernel subtracts popcount(w) of every padding tap again and counts C only for valid taps:
//   out = C * valid_taps - 2 * (sum_all_taps popcount(a ^ w) - sum_padding_taps popcount(w)).
// The result is an integer, converted exactly to float32 (|out| <= C*KH*KW < 2^24 for every real layer).
// Optional epilogue, in this order and the same in every code path (AVX-512 vector ops, scalar otherwise):
//   affine (a folded eval-mode BatchNorm)  out = fma(out, scale[o], bias[o])      one rounding (FMA / std::fma)
//   residual (a block's shortcut)          out = out + residual[n, o, oh, ow]
//   PReLU                                  out = out > 0 ? out : slope[o] * out    (PyTorch's prelu)
//   clamp (Hardtanh)                       out = min(max(out, lo), hi)             (NaN stays NaN, as torch.clamp)
// Each step is one IEEE float32 operation, so the fused result equals PyTorch's ops applied one after another.
//
// The conv is an indirect GEMM: M = N*OH*OW output pixels x O output channels x K words. A tile is MR pixels (a
// table of per-tap pointers into the packed NHWC input, or to a zero run for padding taps) x NB output channels
// (SIMD lanes run over output channels, one activation word is broadcast against NB weight words).
// Code paths: AVX-512 VPOPCNTDQ, AVX2 (nibble-LUT pshufb popcount) and portable scalar, all in one build through
// function-level target attributes; the path is chosen at run time (__builtin_cpu_supports) or forced by the caller.

#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#define ZOO_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vpopcntdq")))
#define ZOO_TARGET_AVX2 __attribute__((target("avx2,fma,popcnt")))

namespace {

using u64 = uint64_t;

enum Isa : int64_t { kAuto = 0, kScalar = 1, kAvx2 = 2, kAvx512 = 3 };

bool cpu_has_avx2() {
  static const bool v = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("popcnt");
  }();
  return v;
}

bool cpu_has_avx512() {
  static const bool v = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vpopcntdq");
  }();
  return v;
}

int64_t best_isa() { return cpu_has_avx512() ? kAvx512 : (cpu_has_avx2() ? kAvx2 : kScalar); }

int64_t resolve_isa(int64_t isa) {
  if (isa == kAuto) return best_isa();
  TORCH_CHECK(isa == kScalar || isa == kAvx2 || isa == kAvx512, "zoo binary kernel: unknown ISA code ", isa);
  TORCH_CHECK(isa != kAvx512 || cpu_has_avx512(),
              "zoo binary kernel: the AVX-512 VPOPCNTDQ path was requested but this CPU lacks avx512f/avx512bw/"
              "avx512vpopcntdq");
  TORCH_CHECK(isa != kAvx2 || cpu_has_avx2(),
              "zoo binary kernel: the AVX2 path was requested but this CPU lacks avx2/fma/popcnt");
  return isa;
}

std::string isa_name(int64_t isa) {
  switch (isa) {
    case kAvx512:
      return "avx512-vpopcntdq";
    case kAvx2:
      return "avx2";
    default:
      return "scalar";
  }
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ------------------------------------------------------------------------------------------------------------------
// Activation packing: x (N, C, H, W) with arbitrary strides -> [N, H, W, CW] words, bit = x >= threshold[n?, c].
// ------------------------------------------------------------------------------------------------------------------

struct PackArgs {
  const void* x;  // element pointer (storage offset applied)
  int64_t N, C, H, W;
  int64_t sN, sC, sH, sW;  // element strides
  const void* th;          // thresholds, same dtype as x
  int64_t thN;             // threshold stride between samples (0: shared [C] thresholds)
  u64* out;
  int64_t CW;
  bool nibbles;  // store each word as its two nibble words (the AVX2 conv's operand), PW = 2 * CW words per pixel
  int64_t PW;
};

constexpr u64 kLowNibbles = 0x0F0F0F0F0F0F0F0FULL;

inline void put_word(const PackArgs& a, u64* pixel, int64_t cw, u64 word) {
  if (a.nibbles) {
    pixel[2 * cw] = word & kLowNibbles;
    pixel[2 * cw + 1] = (word >> 4) & kLowNibbles;
  } else {
    pixel[cw] = word;
  }
}

// Portable path: any dtype, any strides. The comparison runs in double, which holds every float16 / bfloat16 /
// float32 / float64 value exactly, so it is the comparison in the input's own dtype.
template <typename T>
void pack_rows_generic(const PackArgs& a, int64_t r0, int64_t r1) {
  const T* x = static_cast<const T*>(a.x);
  const T* th = static_cast<const T*>(a.th);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t n = r / a.H, h = r % a.H;
    const T* tn = th + n * a.thN;
    for (int64_t w = 0; w < a.W; ++w) {
      const T* px = x + n * a.sN + h * a.sH + w * a.sW;
      u64* o = a.out + (r * a.W + w) * a.PW;
      for (int64_t cw = 0; cw < a.CW; ++cw) {
        const int64_t c0 = cw * 64, nb = std::min<int64_t>(64, a.C - c0);
        u64 word = 0;
        for (int64_t b = 0; b < nb; ++b) {
          const double v = static_cast<double>(px[(c0 + b) * a.sC]);
          word |= static_cast<u64>(v >= static_cast<double>(tn[c0 + b])) << b;
        }
        put_word(a, o, cw, word);
      }
    }
  }
}

// float32, channel stride 1 (channels_last): 16 channels per compare, the compare mask is the bit pattern.
ZOO_TARGET_AVX512 void pack_rows_nhwc_avx512(const PackArgs& a, int64_t r0, int64_t r1) {
  const float* x = static_cast<const float*>(a.x);
  const float* th = static_cast<const float*>(a.th);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t n = r / a.H, h = r % a.H;
    const float* tn = th + n * a.thN;
    for (int64_t w = 0; w < a.W; ++w) {
      const float* px = x + n * a.sN + h * a.sH + w * a.sW;
      u64* o = a.out + (r * a.W + w) * a.PW;
      for (int64_t cw = 0; cw < a.CW; ++cw) {
        u64 word = 0;
        for (int s = 0; s < 4; ++s) {
          const int64_t c0 = cw * 64 + s * 16;
          if (c0 >= a.C) break;
          const int64_t rem = a.C - c0;
          const __mmask16 m = rem >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << rem) - 1);
          const __m512 v = _mm512_maskz_loadu_ps(m, px + c0);
          const __m512 t = _mm512_maskz_loadu_ps(m, tn + c0);
          const __mmask16 bits = _mm512_mask_cmp_ps_mask(m, v, t, _CMP_GE_OQ);
          word |= static_cast<u64>(bits) << (16 * s);
        }
        put_word(a, o, cw, word);
      }
    }
  }
}

// float32, width stride 1 (NCHW-like): 16 pixels of one channel per compare; bit b of each pixel word is set
// with a masked OR.
ZOO_TARGET_AVX512 void pack_rows_nchw_avx512(const PackArgs& a, int64_t r0, int64_t r1) {
  const float* x = static_cast<const float*>(a.x);
  const float* th = static_cast<const float*>(a.th);
  alignas(64) u64 tmp[16];
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t n = r / a.H, h = r % a.H;
    const float* tn = th + n * a.thN;
    u64* orow = a.out + r * a.W * a.PW;
    for (int64_t cw = 0; cw < a.CW; ++cw) {
      const int64_t c0 = cw * 64, nb = std::min<int64_t>(64, a.C - c0);
      for (int64_t w0 = 0; w0 < a.W; w0 += 16) {
        const int64_t cnt = std::min<int64_t>(16, a.W - w0);
        const __mmask16 lm = cnt == 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << cnt) - 1);
        const float* px = x + n * a.sN + h * a.sH + w0 + c0 * a.sC;
        __m512i acc0 = _mm512_setzero_si512(), acc1 = _mm512_setzero_si512();
        for (int64_t b = 0; b < nb; ++b) {
          const __m512 v = _mm512_maskz_loadu_ps(lm, px + b * a.sC);
          const __mmask16 m = _mm512_mask_cmp_ps_mask(lm, v, _mm512_set1_ps(tn[c0 + b]), _CMP_GE_OQ);
          const __m512i bit = _mm512_set1_epi64(static_cast<long long>(1ULL << b));
          acc0 = _mm512_mask_or_epi64(acc0, static_cast<__mmask8>(m & 0xFF), acc0, bit);
          acc1 = _mm512_mask_or_epi64(acc1, static_cast<__mmask8>(m >> 8), acc1, bit);
        }
        if (a.PW == 1) {
          _mm512_mask_storeu_epi64(orow + w0, static_cast<__mmask8>(lm & 0xFF), acc0);
          _mm512_mask_storeu_epi64(orow + w0 + 8, static_cast<__mmask8>(lm >> 8), acc1);
        } else {
          _mm512_store_si512(tmp, acc0);
          _mm512_store_si512(tmp + 8, acc1);
          for (int64_t i = 0; i < cnt; ++i) put_word(a, orow + (w0 + i) * a.PW, cw, tmp[i]);
        }
      }
    }
  }
}

ZOO_TARGET_AVX2 inline __m256i avx2_tail_mask(int64_t rem) {
  const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(std::min<int64_t>(rem, 8))), iota);
}

ZOO_TARGET_AVX2 void pack_rows_nhwc_avx2(const PackArgs& a, int64_t r0, int64_t r1) {
  const float* x = static_cast<const float*>(a.x);
  const float* th = static_cast<const float*>(a.th);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t n = r / a.H, h = r % a.H;
    const float* tn = th + n * a.thN;
    for (int64_t w = 0; w < a.W; ++w) {
      const float* px = x + n * a.sN + h * a.sH + w * a.sW;
      u64* o = a.out + (r * a.W + w) * a.PW;
      for (int64_t cw = 0; cw < a.CW; ++cw) {
        u64 word = 0;
        for (int s = 0; s < 8; ++s) {
          const int64_t c0 = cw * 64 + s * 8;
          if (c0 >= a.C) break;
          const int64_t rem = a.C - c0;
          __m256 v, t;
          unsigned valid = 0xFF;
          if (rem >= 8) {
            v = _mm256_loadu_ps(px + c0);
            t = _mm256_loadu_ps(tn + c0);
          } else {
            const __m256i lm = avx2_tail_mask(rem);
            v = _mm256_maskload_ps(px + c0, lm);
            t = _mm256_maskload_ps(tn + c0, lm);
            valid = (1u << rem) - 1;
          }
          const unsigned bits = static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(v, t, _CMP_GE_OQ))) & valid;
          word |= static_cast<u64>(bits) << (8 * s);
        }
        put_word(a, o, cw, word);
      }
    }
  }
}

// float32, width stride 1 (NCHW-like): 8 pixels of one channel per compare. Channel b's compare mask is ANDed with
// its bit in 32-bit lanes (channels 0..31 and 32..63 of a word in two accumulators, one lane per pixel), and the two
// halves are interleaved into 64-bit words once per word.
ZOO_TARGET_AVX2 void pack_rows_nchw_avx2(const PackArgs& a, int64_t r0, int64_t r1) {
  const float* x = static_cast<const float*>(a.x);
  const float* th = static_cast<const float*>(a.th);
  alignas(32) u64 tmp[8];
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t n = r / a.H, h = r % a.H;
    const float* tn = th + n * a.thN;
    u64* orow = a.out + r * a.W * a.PW;
    for (int64_t cw = 0; cw < a.CW; ++cw) {
      const int64_t c0 = cw * 64, nb = std::min<int64_t>(64, a.C - c0);
      for (int64_t w0 = 0; w0 < a.W; w0 += 8) {
        const int64_t cnt = std::min<int64_t>(8, a.W - w0);
        const __m256i lm = avx2_tail_mask(cnt);
        const float* px = x + n * a.sN + h * a.sH + w0 + c0 * a.sC;
        __m256i half[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
        for (int64_t b0 = 0; b0 < nb; b0 += 32) {
          __m256i bit = _mm256_set1_epi32(1), acc = _mm256_setzero_si256();
          const int64_t b1 = std::min<int64_t>(nb, b0 + 32);
          for (int64_t b = b0; b < b1; ++b) {
            const float* row = px + b * a.sC;
            // Lanes past the row's end read 0 and are never stored.
            const __m256 v = cnt == 8 ? _mm256_loadu_ps(row) : _mm256_maskload_ps(row, lm);
            const __m256 t = _mm256_broadcast_ss(tn + c0 + b);
            acc = _mm256_or_si256(acc, _mm256_and_si256(_mm256_castps_si256(_mm256_cmp_ps(v, t, _CMP_GE_OQ)), bit));
            bit = _mm256_slli_epi32(bit, 1);
          }
          half[b0 / 32] = acc;
        }
        const __m256i p0145 = _mm256_unpacklo_epi32(half[0], half[1]);  // 64-bit words of pixels 0 1 | 4 5
        const __m256i p2367 = _mm256_unpackhi_epi32(half[0], half[1]);  // pixels 2 3 | 6 7
        _mm256_store_si256(reinterpret_cast<__m256i*>(tmp), _mm256_permute2x128_si256(p0145, p2367, 0x20));
        _mm256_store_si256(reinterpret_cast<__m256i*>(tmp + 4), _mm256_permute2x128_si256(p0145, p2367, 0x31));
        for (int64_t i = 0; i < cnt; ++i) put_word(a, orow + (w0 + i) * a.PW, cw, tmp[i]);
      }
    }
  }
}

void pack_into(const torch::Tensor& x, const void* th, int64_t thN, torch::Tensor& out, int64_t isa, bool nibbles) {
  PackArgs a;
  a.x = x.data_ptr();
  a.N = x.size(0);
  a.C = x.size(1);
  a.H = x.size(2);
  a.W = x.size(3);
  a.sN = x.stride(0);
  a.sC = x.stride(1);
  a.sH = x.stride(2);
  a.sW = x.stride(3);
  a.th = th;
  a.thN = thN;
  a.out = reinterpret_cast<u64*>(out.data_ptr<int64_t>());
  a.nibbles = nibbles;
  a.PW = out.size(3);
  a.CW = nibbles ? a.PW / 2 : a.PW;
  const int64_t rows = a.N * a.H;
  if (rows == 0 || a.W == 0) return;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, a.W * a.C));
  const bool f32 = x.scalar_type() == torch::kFloat;
  // Layout choice: channel-contiguous first, then width-contiguous, otherwise the portable strided loop.
  const int kind = !f32 || isa == kScalar ? 0 : ((a.sC == 1 && a.C > 1) ? 1 : ((a.sW == 1 || a.W == 1) ? 2 : 0));
  if (kind == 2) a.sW = 1;
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    if (kind == 1) {
      if (isa == kAvx512)
        pack_rows_nhwc_avx512(a, r0, r1);
      else
        pack_rows_nhwc_avx2(a, r0, r1);
    } else if (kind == 2) {
      if (isa == kAvx512)
        pack_rows_nchw_avx512(a, r0, r1);
      else
        pack_rows_nchw_avx2(a, r0, r1);
    } else {
      AT_DISPATCH_FLOATING_TYPES_AND2(torch::kHalf, torch::kBFloat16, x.scalar_type(), "zoo_pack_activations",
                                      [&] { pack_rows_generic<scalar_t>(a, r0, r1); });
    }
  });
}

// Thresholds: None -> an all-zero buffer (0 in every floating dtype); [C] or [N, C] -> contiguous, in x's dtype.
struct Threshold {
  torch::Tensor keep;  // owns converted thresholds
  const void* ptr;
  int64_t stride_n;  // 0 for [C] thresholds
};

Threshold prepare_threshold(const torch::Tensor& x, const std::optional<torch::Tensor>& th) {
  const int64_t N = x.size(0), C = x.size(1);
  if (!th.has_value()) {
    thread_local std::vector<u64> zeros;  // read by the worker threads while this thread waits in the call
    if (static_cast<int64_t>(zeros.size()) < C) zeros.assign(C, 0);
    return {torch::Tensor(), zeros.data(), 0};
  }
  torch::Tensor t = th->to(x.device(), x.scalar_type()).contiguous();
  if (t.dim() == 1) {
    TORCH_CHECK(t.size(0) == C, "zoo binary kernel: threshold of shape [C] needs C = ", C, ", got ", t.sizes());
    return {t, t.data_ptr(), 0};
  }
  TORCH_CHECK(t.dim() == 2 && t.size(0) == N && t.size(1) == C,
              "zoo binary kernel: threshold must have shape [C] or [N, C] = [", N, ", ", C, "], got ", t.sizes());
  return {t, t.data_ptr(), C};
}

void check_activation(const torch::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu(), "zoo binary kernel: the CPU kernel needs a CPU tensor, got ", x.device());
  TORCH_CHECK(x.dim() == 4, "zoo binary kernel: expected a 4-D (N, C, H, W) input, got ", x.dim(), "-D");
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "zoo binary kernel: expected a floating-point input, got ",
              x.scalar_type());
  TORCH_CHECK(x.size(1) >= 1, "zoo binary kernel: the input needs at least one channel");
}

torch::Tensor pack_activations(const torch::Tensor& x, const std::optional<torch::Tensor>& threshold, int64_t isa) {
  check_activation(x);
  isa = resolve_isa(isa);
  const Threshold th = prepare_threshold(x, threshold);
  torch::Tensor out =
      torch::empty({x.size(0), x.size(2), x.size(3), ceil_div(x.size(1), 64)}, x.options().dtype(torch::kLong));
  pack_into(x, th.ptr, th.stride_n, out, isa, false);
  return out;
}

// ------------------------------------------------------------------------------------------------------------------
// Weights.
// ------------------------------------------------------------------------------------------------------------------

// w: real (O, C, KH, KW) -> [O, KH, KW, CW], bit = w >= 0.
torch::Tensor pack_weights(const torch::Tensor& w) {
  TORCH_CHECK(w.dim() == 4, "zoo binary kernel: expected a 4-D (O, C, KH, KW) weight, got ", w.dim(), "-D");
  TORCH_CHECK(at::isFloatingType(w.scalar_type()), "zoo binary kernel: expected a floating-point weight, got ",
              w.scalar_type());
  TORCH_CHECK(w.numel() > 0, "zoo binary kernel: empty weight ", w.sizes());
  const torch::Tensor wd = w.detach().to(torch::kCPU, torch::kDouble).contiguous();
  const int64_t O = w.size(0), C = w.size(1), KH = w.size(2), KW = w.size(3), CW = ceil_div(C, 64);
  torch::Tensor out = torch::zeros({O, KH, KW, CW}, torch::dtype(torch::kLong));
  const double* src = wd.data_ptr<double>();
  u64* dst = reinterpret_cast<u64*>(out.data_ptr<int64_t>());
  for (int64_t o = 0; o < O; ++o)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t kh = 0; kh < KH; ++kh)
        for (int64_t kw = 0; kw < KW; ++kw)
          if (src[((o * C + c) * KH + kh) * KW + kw] >= 0.0)
            dst[((o * KH + kh) * KW + kw) * CW + c / 64] |= 1ULL << (c % 64);
  return out;
}

int64_t lanes_for(int64_t O) { return 8 * std::min<int64_t>(4, ceil_div(O, 8)); }

// The AVX2 kernel reads every word as two nibble words (see the header comment).
bool splits_nibbles(int64_t isa) { return isa == kAvx2; }

// Word rows R of a weight block (before its T popcount rows) on a resolved ISA path.
int64_t word_rows(int64_t isa, int64_t K) { return splits_nibbles(isa) ? 2 * K : K; }

std::string weight_layout(int64_t isa) { return splits_nibbles(resolve_isa(isa)) ? "nibbles" : "words"; }

// packed [O, KH, KW, CW] -> blocked [nOB, R + T, NB] for the ISA path `isa` (see the header comment).
torch::Tensor block_weights(const torch::Tensor& packed, int64_t isa) {
  TORCH_CHECK(packed.dim() == 4 && packed.scalar_type() == torch::kLong && packed.device().is_cpu(),
              "zoo binary kernel: packed weights must be a CPU int64 tensor [O, KH, KW, CW], got ", packed.sizes(),
              " ", packed.scalar_type());
  isa = resolve_isa(isa);
  const bool nibbles = splits_nibbles(isa);
  const torch::Tensor p = packed.contiguous();
  const int64_t O = p.size(0), KH = p.size(1), KW = p.size(2), CW = p.size(3);
  const int64_t T = KH * KW, K = T * CW, R = word_rows(isa, K), NB = lanes_for(O), nOB = ceil_div(O, NB);
  torch::Tensor out = torch::zeros({nOB, R + T, NB}, torch::dtype(torch::kLong));
  const u64* src = reinterpret_cast<const u64*>(p.data_ptr<int64_t>());
  u64* dst = reinterpret_cast<u64*>(out.data_ptr<int64_t>());
  for (int64_t o = 0; o < O; ++o) {
    u64* blk = dst + (o / NB) * (R + T) * NB;
    const int64_t lane = o % NB;
    for (int64_t t = 0; t < T; ++t) {
      u64 pop = 0;
      for (int64_t cw = 0; cw < CW; ++cw) {
        const u64 word = src[(o * T + t) * CW + cw];
        const int64_t k = t * CW + cw;
        if (nibbles) {
          blk[(2 * k) * NB + lane] = word & kLowNibbles;
          blk[(2 * k + 1) * NB + lane] = (word >> 4) & kLowNibbles;
        } else {
          blk[k * NB + lane] = word;
        }
        pop += static_cast<u64>(__builtin_popcountll(word));
      }
      blk[(R + t) * NB + lane] = pop;
    }
  }
  return out;
}

// The AVX2 kernel's activation operand: every packed word as its two nibble words.
torch::Tensor split_nibbles(const torch::Tensor& act) {
  torch::Tensor out = torch::empty({act.numel() * 2}, torch::dtype(torch::kLong));
  const u64* src = reinterpret_cast<const u64*>(act.data_ptr<int64_t>());
  u64* dst = reinterpret_cast<u64*>(out.data_ptr<int64_t>());
  at::parallel_for(0, act.numel(), 16384, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      dst[2 * i] = src[i] & kLowNibbles;
      dst[2 * i + 1] = (src[i] >> 4) & kLowNibbles;
    }
  });
  return out;
}

// ------------------------------------------------------------------------------------------------------------------
// Convolution on packed operands.
// ------------------------------------------------------------------------------------------------------------------

struct Geom {
  const u64* act;
  const u64* wb;
  const u64* zero;
  float* out;
  const float* scale;  // per-output-channel epilogue affine, or nullptr (then bias is nullptr too)
  const float* bias;
  const float* residual;  // NHWC [M, O] added after the affine, or nullptr
  const float* slope;     // PReLU slopes [O], or nullptr
  bool clamp;             // clamp to [lo, hi] last
  float lo, hi;
  const int64_t* tapoff;
  // PW: words per pixel of `act` (CW, or 2*CW split into nibble words); R: word rows of a weight block.
  int64_t N, H, W, CW, PW, C, O, KH, KW, sh, sw, ph, pw, OH, OW, M, T, K, R, NB, nOB, G, nPB;
};

// Pointer table of MR output pixels starting at p0 (pixels past M repeat the last one and are never stored).
inline void build_ptrs(const Geom& g, int64_t p0, int MR, const u64** ptrs, int64_t* nvalid, bool* border) {
  const int64_t P = g.OH * g.OW;
  int64_t n = p0 / P, rr = p0 - n * P, oh = rr / g.OW, ow = rr - oh * g.OW;  // stepped, not divided, per pixel
  for (int j = 0; j < MR; ++j) {
    const u64** pj = ptrs + static_cast<int64_t>(j) * g.T;
    if (p0 + j >= g.M) {  // past the end: repeat the last pixel's pointers (computed, never stored)
      std::memcpy(pj, pj - g.T, sizeof(const u64*) * g.T);
      nvalid[j] = nvalid[j - 1];
      border[j] = border[j - 1];
      continue;
    }
    const int64_t ih0 = oh * g.sh - g.ph, iw0 = ow * g.sw - g.pw;
    if (ih0 >= 0 && ih0 + g.KH <= g.H && iw0 >= 0 && iw0 + g.KW <= g.W) {
      const u64* base = g.act + ((n * g.H + ih0) * g.W + iw0) * g.PW;
      for (int64_t t = 0; t < g.T; ++t) pj[t] = base + g.tapoff[t];
      nvalid[j] = g.T;
      border[j] = false;
    } else {
      int64_t cnt = 0, t = 0;
      for (int64_t kh = 0; kh < g.KH; ++kh) {
        const int64_t ih = ih0 + kh;
        for (int64_t kw = 0; kw < g.KW; ++kw, ++t) {
          const int64_t iw = iw0 + kw;
          const bool ok = ih >= 0 && ih < g.H && iw >= 0 && iw < g.W;
          pj[t] = ok ? g.act + ((n * g.H + ih) * g.W + iw) * g.PW : g.zero;
          cnt += ok;
        }
      }
      nvalid[j] = cnt;
      border[j] = true;
    }
    if (++ow == g.OW) {
      ow = 0;
      if (++oh == g.OH) {
        oh = 0;
        ++n;
      }
    }
  }
}

// The epilogue of one output element (see the header comment), scalar.
inline float finish(const Geom& g, float v, int64_t p, int64_t o) {
  if (g.scale != nullptr) v = std::fma(v, g.scale[o], g.bias[o]);
  if (g.residual != nullptr) v += g.residual[p * g.O + o];
  if (g.slope != nullptr) v = v > 0.0f ? v : g.slope[o] * v;
  if (g.clamp) v = std::min(std::max(v, g.lo), g.hi);  // std::max / std::min return a NaN first argument
  return v;
}

// Scalar store for one pixel and one block of NB lanes: acc[lane] = sum over all taps of popcount(a ^ w).
inline void store_pixel(const Geom& g, const u64* const* pj, int64_t nvalid, bool border, const u64* wblk,
                        int64_t p, int64_t ob, u64* acc, int64_t lane0, int64_t nl) {
  const u64* wpop = wblk + g.R * g.NB;
  if (border)
    for (int64_t t = 0; t < g.T; ++t)
      if (pj[t] == g.zero)
        for (int64_t l = 0; l < nl; ++l) acc[l] -= wpop[t * g.NB + lane0 + l];
  const int64_t o0 = ob * g.NB + lane0;
  const int64_t cnt = std::min<int64_t>(nl, g.O - o0);
  float* op = g.out + p * g.O + o0;
  const int64_t full = g.C * nvalid;
  for (int64_t l = 0; l < cnt; ++l)
    op[l] = finish(g, static_cast<float>(full - 2 * static_cast<int64_t>(acc[l])), p, o0 + l);
}

// ---- scalar path --------------------------------------------------------------------------------------------------

constexpr int kScalarMR = 4;

void conv_tasks_scalar(const Geom& g, int64_t tb, int64_t te) {
  constexpr int MR = kScalarMR;
  std::vector<const u64*> ptrs(MR * g.T);
  std::vector<u64> acc(g.NB);
  int64_t nvalid[MR];
  bool border[MR];
  for (int64_t task = tb; task < te; ++task) {
    const int64_t og = task / g.nPB, pb = task % g.nPB;
    build_ptrs(g, pb * MR, MR, ptrs.data(), nvalid, border);
    const int64_t ob1 = std::min(g.nOB, (og + 1) * g.G);
    for (int64_t ob = og * g.G; ob < ob1; ++ob) {
      const u64* wblk = g.wb + ob * (g.R + g.T) * g.NB;
      for (int j = 0; j < MR; ++j) {
        const int64_t p = pb * MR + j;
        if (p >= g.M) break;
        const u64* const* pj = ptrs.data() + j * g.T;
        std::fill(acc.begin(), acc.end(), 0);
        for (int64_t t = 0; t < g.T; ++t)
          for (int64_t cw = 0; cw < g.CW; ++cw) {
            const u64 a = pj[t][cw];
            const u64* wr = wblk + (t * g.CW + cw) * g.NB;
            for (int64_t l = 0; l < g.NB; ++l) acc[l] += static_cast<u64>(__builtin_popcountll(a ^ wr[l]));
          }
        store_pixel(g, pj, nvalid[j], border[j], wblk, p, ob, acc.data(), 0, g.NB);
      }
    }
  }
}

// ---- AVX2 path: 4 pixels x 8 channels (2 ymm) per tile, nibble-LUT popcount, vector epilogue -----------------------
// popcount(a ^ w) = sum over bytes of LUT[(a ^ w) & 15] + LUT[((a ^ w) >> 4) & 15]; the shift and masks distribute
// over the XOR, so both operands come pre-split into nibble words (weights when blocked, activations once per call)
// and the inner loop pays 6 vector ops per 4 words (2 XOR, 2 PSHUFB, 2 ADD) instead of 8. Byte counters gain <= 8 per
// word and are flushed into 64-bit lanes with PSADBW before they can overflow.

constexpr int kAvx2MR = 4;
constexpr int kAvx2FlushWords = 31;  // byte counters gain <= 8 per word: 31 words keep them <= 248

// Byte counters -> 64-bit lanes (PSADBW against zero), then zeroed.
ZOO_TARGET_AVX2 inline void flush_byte_counts(__m256i (&acc8)[kAvx2MR][2], __m256i (&acc)[kAvx2MR][2]) {
  const __m256i zero = _mm256_setzero_si256();
#pragma GCC unroll 4
  for (int j = 0; j < kAvx2MR; ++j)
    for (int v = 0; v < 2; ++v) {
      acc[j][v] = _mm256_add_epi64(acc[j][v], _mm256_sad_epu8(acc8[j][v], zero));
      acc8[j][v] = zero;
    }
}

// acc8[j] += byte popcounts of (word cw of tap t of pixel j) ^ (its 8 output channels' weight words at wl, as the
// nibble words wl[0..7] and wl[NB..NB+7]); ptaps[j * T] points at pixel j's word run of tap t.
ZOO_TARGET_AVX2 inline void accumulate_word(__m256i (&acc8)[kAvx2MR][2], const u64* const* ptaps, int64_t T, int64_t cw,
                                            const u64* wl, int64_t NB, __m256i lut) {
  const __m256i wl0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wl));
  const __m256i wl1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wl + 4));
  const __m256i wh0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wl + NB));
  const __m256i wh1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wl + NB + 4));
#pragma GCC unroll 4
  for (int j = 0; j < kAvx2MR; ++j) {
    const u64* a = ptaps[j * T];
    const __m256i bl = _mm256_set1_epi64x(static_cast<long long>(a[2 * cw]));
    const __m256i bh = _mm256_set1_epi64x(static_cast<long long>(a[2 * cw + 1]));
    acc8[j][0] = _mm256_add_epi8(acc8[j][0], _mm256_shuffle_epi8(lut, _mm256_xor_si256(bl, wl0)));
    acc8[j][1] = _mm256_add_epi8(acc8[j][1], _mm256_shuffle_epi8(lut, _mm256_xor_si256(bl, wl1)));
    acc8[j][0] = _mm256_add_epi8(acc8[j][0], _mm256_shuffle_epi8(lut, _mm256_xor_si256(bh, wh0)));
    acc8[j][1] = _mm256_add_epi8(acc8[j][1], _mm256_shuffle_epi8(lut, _mm256_xor_si256(bh, wh1)));
  }
}

// OneWordATap (CW = 1, up to 64 channels): flushed every kAvx2FlushWords taps, with no word loop and no per-word
// flush counter; that made ResNet-18's stage-1 conv ~1.1x faster on Zen 3 (old and new timed in bursts, in turns).
// The same for CW = 2 or 4 measured 5-10% slower than the counter, which the other layers keep.
template <bool OneWordATap>
ZOO_TARGET_AVX2 void conv_tasks_avx2(const Geom& g, int64_t tb, int64_t te) {
  constexpr int MR = kAvx2MR;
  std::vector<const u64*> ptrs(MR * g.T);
  int64_t nvalid[MR];
  bool border[MR];
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2,
                                       3, 2, 3, 3, 4);
  const __m256i zero = _mm256_setzero_si256();
  const __m256 fzero = _mm256_setzero_ps(), lo = _mm256_set1_ps(g.lo), hi = _mm256_set1_ps(g.hi);
  // The epilogue's operands as locals: the vector stores (may_alias types) would otherwise make the compiler reload
  // every Geom field after each store.
  const float* const scale = g.scale;
  const float* const bias = g.bias;
  const float* const residual = g.residual;
  const float* const slope = g.slope;
  float* const out = g.out;
  const u64* const zero_run = g.zero;
  const bool clamp = g.clamp;
  const int64_t T = g.T, CW = g.CW, NB = g.NB, O = g.O, M = g.M, C = g.C;
  for (int64_t task = tb; task < te; ++task) {
    const int64_t og = task / g.nPB, pb = task % g.nPB;
    build_ptrs(g, pb * MR, MR, ptrs.data(), nvalid, border);
    const int64_t ob1 = std::min(g.nOB, (og + 1) * g.G);
    for (int64_t ob = og * g.G; ob < ob1; ++ob) {
      const u64* wblk = g.wb + ob * (g.R + T) * NB;
      const u64* wpop = wblk + g.R * NB;
      for (int64_t sb = 0; sb < NB; sb += 8) {
        const int64_t o0 = ob * NB + sb;
        if (o0 >= O) break;
        __m256i acc8[MR][2];
        __m256i acc[MR][2];
#pragma GCC unroll 4
        for (int j = 0; j < MR; ++j) acc8[j][0] = acc8[j][1] = acc[j][0] = acc[j][1] = zero;
        if constexpr (OneWordATap) {
          for (int64_t t0 = 0; t0 < T; t0 += kAvx2FlushWords) {
            const int64_t t1 = std::min<int64_t>(T, t0 + kAvx2FlushWords);
            for (int64_t t = t0; t < t1; ++t)
              accumulate_word(acc8, ptrs.data() + t, T, 0, wblk + 2 * t * NB + sb, NB, lut);
            flush_byte_counts(acc8, acc);
          }
        } else {
          int budget = kAvx2FlushWords;
          for (int64_t t = 0; t < T; ++t) {
            const u64* wt = wblk + 2 * t * CW * NB + sb;
            for (int64_t cw = 0; cw < CW; ++cw) {
              accumulate_word(acc8, ptrs.data() + t, T, cw, wt + 2 * cw * NB, NB, lut);
              if (--budget == 0) {
                flush_byte_counts(acc8, acc);
                budget = kAvx2FlushWords;
              }
            }
          }
          flush_byte_counts(acc8, acc);
        }
        // Epilogue: padding correction, out = C * valid_taps - 2 * popcount, exact int -> float32, then the steps
        // of the header comment as 8-lane vector ops (the same IEEE operations as the scalar and AVX-512 paths).
        const int64_t lanes = std::min<int64_t>(8, O - o0);
        const __m256i lane_mask = avx2_tail_mask(lanes);
        const __m256 sc = scale == nullptr ? fzero : _mm256_maskload_ps(scale + o0, lane_mask);
        const __m256 bi = scale == nullptr ? fzero : _mm256_maskload_ps(bias + o0, lane_mask);
        const __m256 sl = slope == nullptr ? fzero : _mm256_maskload_ps(slope + o0, lane_mask);
#pragma GCC unroll 4
        for (int j = 0; j < MR; ++j) {
          const int64_t p = pb * MR + j;
          if (p >= M) break;
          if (border[j]) {
            const u64* const* pj = ptrs.data() + j * T;
            for (int64_t t = 0; t < T; ++t)
              if (pj[t] == zero_run)
                for (int v = 0; v < 2; ++v)
                  acc[j][v] = _mm256_sub_epi64(
                      acc[j][v], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wpop + t * NB + sb + 4 * v)));
          }
          // The low 32 bits of the 2 x 4 int64 counts (all < 2^30), in channel order: per 128-bit lane the shuffle
          // gives [a0 a1 b0 b1 | a2 a3 b2 b3], the permute puts the a's before the b's.
          const __m256i counts = _mm256_permute4x64_epi64(
              _mm256_castps_si256(_mm256_shuffle_ps(_mm256_castsi256_ps(acc[j][0]), _mm256_castsi256_ps(acc[j][1]),
                                                    _MM_SHUFFLE(2, 0, 2, 0))),
              _MM_SHUFFLE(3, 1, 2, 0));
          const __m256i full = _mm256_set1_epi32(static_cast<int>(C * nvalid[j]));
          __m256 f = _mm256_cvtepi32_ps(_mm256_sub_epi32(full, _mm256_slli_epi32(counts, 1)));
          if (scale != nullptr) f = _mm256_fmadd_ps(f, sc, bi);
          if (residual != nullptr) f = _mm256_add_ps(f, _mm256_maskload_ps(residual + p * O + o0, lane_mask));
          if (slope != nullptr) f = _mm256_blendv_ps(_mm256_mul_ps(f, sl), f, _mm256_cmp_ps(f, fzero, _CMP_GT_OQ));
          if (clamp) f = _mm256_min_ps(hi, _mm256_max_ps(lo, f));  // the second operand wins on NaN: NaN stays
          float* op = out + p * O + o0;
          if (lanes == 8)
            _mm256_storeu_ps(op, f);
          else
            _mm256_maskstore_ps(op, lane_mask, f);
        }
      }
    }
  }
}

// ---- AVX-512 VPOPCNTDQ path: MR pixels x NV zmm (8 output channels each) of 64-bit popcount accumulators -------

inline __mmask16 lane_mask16(int64_t lanes) {
  return lanes >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>(lanes > 0 ? (1u << lanes) - 1 : 0);
}

template <int NV>
constexpr int avx512_mr() {
  return NV == 4 ? 6 : 8;
}

template <int NV>
ZOO_TARGET_AVX512 void conv_tasks_avx512(const Geom& g, int64_t tb, int64_t te) {
  constexpr int MR = avx512_mr<NV>();
  constexpr int NB = 8 * NV;
  std::vector<const u64*> ptrs(MR * g.T);
  int64_t nvalid[MR];
  bool border[MR];
  const int64_t T = g.T, CW = g.CW;
  for (int64_t task = tb; task < te; ++task) {
    const int64_t og = task / g.nPB, pb = task % g.nPB;
    build_ptrs(g, pb * MR, MR, ptrs.data(), nvalid, border);
    const int64_t ob1 = std::min(g.nOB, (og + 1) * g.G);
    for (int64_t ob = og * g.G; ob < ob1; ++ob) {
      const u64* wblk = g.wb + ob * (g.R + T) * NB;
      __m512i acc[MR][NV];
#pragma GCC unroll 8
      for (int j = 0; j < MR; ++j)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[j][v] = _mm512_setzero_si512();
      for (int64_t t = 0; t < T; ++t) {
        const u64* pr[MR];
#pragma GCC unroll 8
        for (int j = 0; j < MR; ++j) pr[j] = ptrs[j * T + t];
        const u64* wt = wblk + t * CW * NB;
        for (int64_t cw = 0; cw < CW; ++cw) {
          __m512i wv[NV];
#pragma GCC unroll 4
          for (int v = 0; v < NV; ++v) wv[v] = _mm512_loadu_si512(wt + cw * NB + 8 * v);
#pragma GCC unroll 8
          for (int j = 0; j < MR; ++j) {
            const __m512i b = _mm512_set1_epi64(static_cast<long long>(pr[j][cw]));
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v)
              acc[j][v] = _mm512_add_epi64(acc[j][v], _mm512_popcnt_epi64(_mm512_xor_si512(b, wv[v])));
          }
        }
      }
      // Epilogue: padding correction, out = C * valid_taps - 2 * popcount, exact int -> float32, [affine], NHWC store.
      const u64* wpop = wblk + g.R * NB;
      const int64_t o0 = ob * NB, ocount = std::min<int64_t>(NB, g.O - o0);
      constexpr int NH = (NV + 1) / 2;  // 16-lane float vectors per pixel
      __m512 sc[NH], bi[NH], sl[NH];
      const __m512 lo = _mm512_set1_ps(g.lo), hi = _mm512_set1_ps(g.hi), zero = _mm512_setzero_ps();
#pragma GCC unroll 2
      for (int h = 0; h < NH; ++h) {
        const __mmask16 m = lane_mask16(ocount - 16 * h);
        sc[h] = g.scale == nullptr ? zero : _mm512_maskz_loadu_ps(m, g.scale + o0 + 16 * h);
        bi[h] = g.scale == nullptr ? zero : _mm512_maskz_loadu_ps(m, g.bias + o0 + 16 * h);
        sl[h] = g.slope == nullptr ? zero : _mm512_maskz_loadu_ps(m, g.slope + o0 + 16 * h);
      }
#pragma GCC unroll 8
      for (int j = 0; j < MR; ++j) {
        const int64_t p = pb * MR + j;
        if (p >= g.M) break;
        if (border[j]) {
          const u64* const* pj = ptrs.data() + j * T;
          for (int64_t t = 0; t < T; ++t)
            if (pj[t] == g.zero)
#pragma GCC unroll 4
              for (int v = 0; v < NV; ++v)
                acc[j][v] = _mm512_sub_epi64(acc[j][v], _mm512_loadu_si512(wpop + t * NB + 8 * v));
        }
        // Two 8-lane int64 accumulators -> one 16-lane int32 vector -> 16 floats.
        const __m512i full = _mm512_set1_epi32(static_cast<int>(g.C * nvalid[j]));
        float* op = g.out + p * g.O + o0;
#pragma GCC unroll 2
        for (int v = 0; v < NV; v += 2) {
          __m512i a32 = _mm512_castsi256_si512(_mm512_cvtepi64_epi32(acc[j][v]));
          if (v + 1 < NV) a32 = _mm512_inserti64x4(a32, _mm512_cvtepi64_epi32(acc[j][v + 1 < NV ? v + 1 : v]), 1);
          __m512 f = _mm512_cvtepi32_ps(_mm512_sub_epi32(full, _mm512_slli_epi32(a32, 1)));
          const int64_t lanes = ocount - 8 * v;
          if (g.scale != nullptr) f = _mm512_fmadd_ps(f, sc[v / 2], bi[v / 2]);
          if (g.residual != nullptr)
            f = _mm512_add_ps(f, _mm512_maskz_loadu_ps(lane_mask16(lanes), g.residual + p * g.O + o0 + 8 * v));
          if (g.slope != nullptr)
            f = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(f, zero, _CMP_GT_OQ), _mm512_mul_ps(f, sl[v / 2]), f);
          if (g.clamp) f = _mm512_min_ps(hi, _mm512_max_ps(lo, f));  // the second operand wins on NaN: NaN stays
          if (lanes >= 16)
            _mm512_storeu_ps(op + 8 * v, f);
          else if (lanes > 0)
            _mm512_mask_storeu_ps(op + 8 * v, lane_mask16(lanes), f);
        }
      }
    }
  }
}

int pixel_block(int64_t isa, int64_t NB) {
  if (isa == kAvx512) return NB == 32 ? avx512_mr<4>() : avx512_mr<1>();
  return isa == kAvx2 ? kAvx2MR : kScalarMR;
}

void check_float_cpu(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "zoo binary kernel: ", name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.scalar_type() == torch::kFloat, "zoo binary kernel: ", name, " must be float32, got ", t.scalar_type());
}

// A per-output-channel float32 [O] term, contiguous; a missing one becomes `fill` everywhere.
torch::Tensor channel_term(const std::optional<torch::Tensor>& t, const char* name, int64_t O, double fill) {
  if (!t.has_value()) return torch::full({O}, fill, torch::dtype(torch::kFloat));
  check_float_cpu(*t, name);
  TORCH_CHECK(t->dim() == 1 && t->size(0) == O, "zoo binary kernel: ", name, " must have shape [out_channels] = [",
              O, "], got ", t->sizes());
  return t->contiguous();
}

// What the epilogue applies after the conv (see the header comment); undefined tensors are skipped steps.
struct Epilogue {
  torch::Tensor scale, bias, residual, slope;
  bool clamp = false;
  float lo = 0.0f, hi = 0.0f;
};

Epilogue prepare_epilogue(const std::optional<torch::Tensor>& scale, const std::optional<torch::Tensor>& bias,
                          const std::optional<torch::Tensor>& residual, const std::optional<torch::Tensor>& prelu,
                          const std::optional<double>& clamp_min, const std::optional<double>& clamp_max, int64_t N,
                          int64_t O, int64_t OH, int64_t OW) {
  Epilogue e;
  if (scale.has_value() || bias.has_value()) {
    e.scale = channel_term(scale, "scale", O, 1.0);
    e.bias = channel_term(bias, "bias", O, 0.0);
  }
  if (residual.has_value()) {
    check_float_cpu(*residual, "residual");
    TORCH_CHECK(residual->dim() == 4 && residual->size(0) == N && residual->size(1) == O &&
                    residual->size(2) == OH && residual->size(3) == OW,
                "zoo binary kernel: residual must have the output's shape [", N, ", ", O, ", ", OH, ", ", OW,
                "], got ", residual->sizes());
    e.residual = residual->permute({0, 2, 3, 1}).contiguous();  // a view of a channels_last tensor: no copy
  }
  if (prelu.has_value()) {
    check_float_cpu(*prelu, "prelu_weight");
    TORCH_CHECK(prelu->numel() == 1 || (prelu->dim() == 1 && prelu->size(0) == O),
                "zoo binary kernel: prelu_weight must have 1 or out_channels = ", O, " elements, got ",
                prelu->sizes());
    e.slope = prelu->reshape({-1}).expand({O}).contiguous();
  }
  TORCH_CHECK(clamp_min.has_value() == clamp_max.has_value(), "zoo binary kernel: give both clamp bounds or none");
  if (clamp_min.has_value()) {
    TORCH_CHECK(*clamp_min <= *clamp_max, "zoo binary kernel: clamp needs min <= max, got [", *clamp_min, ", ",
                *clamp_max, "]");
    e.clamp = true;
    e.lo = static_cast<float>(*clamp_min);
    e.hi = static_cast<float>(*clamp_max);
  }
  return e;
}

const float* float_ptr(const torch::Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }

// act: packed activations [N, H, W, CW], or (split_act, the AVX2 path only) already in nibble words [N, H, W, 2 * CW].
torch::Tensor conv_operand(const torch::Tensor& act, bool split_act, const torch::Tensor& wblocked, int64_t O,
                           int64_t C, int64_t KH, int64_t KW, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                           int64_t isa, const std::optional<torch::Tensor>& scale,
                           const std::optional<torch::Tensor>& bias, const std::optional<torch::Tensor>& residual,
                           const std::optional<torch::Tensor>& prelu, const std::optional<double>& clamp_min,
                           const std::optional<double>& clamp_max) {
  TORCH_CHECK(act.dim() == 4 && act.scalar_type() == torch::kLong && act.device().is_cpu(),
              "zoo binary kernel: packed activations must be a CPU int64 tensor [N, H, W, CW]");
  TORCH_CHECK(wblocked.dim() == 3 && wblocked.scalar_type() == torch::kLong && wblocked.device().is_cpu(),
              "zoo binary kernel: blocked weights must be a CPU int64 tensor from block_weights()");
  TORCH_CHECK(O >= 1 && C >= 1 && KH >= 1 && KW >= 1, "zoo binary kernel: bad sizes O=", O, " C=", C, " k=", KH,
              "x", KW);
  TORCH_CHECK(sh >= 1 && sw >= 1 && ph >= 0 && pw >= 0, "zoo binary kernel: stride must be >= 1 and padding >= 0");
  isa = resolve_isa(isa);
  const int64_t CW = ceil_div(C, 64), T = KH * KW, K = T * CW, R = word_rows(isa, K), NB = lanes_for(O);
  const int64_t nOB = ceil_div(O, NB);
  TORCH_CHECK(!split_act || splits_nibbles(isa), "zoo binary kernel: nibble-word activations on the ", isa_name(isa),
              " path");
  TORCH_CHECK(act.size(3) == (split_act ? 2 * CW : CW), "zoo binary kernel: packed activations hold ", act.size(3),
              " words per pixel, in_channels=", C, " needs ", CW);
  TORCH_CHECK(wblocked.size(0) == nOB && wblocked.size(1) == R + T && wblocked.size(2) == NB,
              "zoo binary kernel: blocked weights ", wblocked.sizes(), " do not match O=", O, " C=", C, " kernel ", KH,
              "x", KW, " on the ", isa_name(isa), " path (expected [", nOB, ", ", R + T, ", ", NB,
              "]; block_weights(packed, isa) gives the layout of that ISA path)");
  TORCH_CHECK(C * T < (int64_t{1} << 30), "zoo binary kernel: in_channels*KH*KW must be < 2^30, got ", C * T);
  const torch::Tensor a = splits_nibbles(isa) && !split_act ? split_nibbles(act.contiguous()) : act.contiguous();
  const torch::Tensor wb = wblocked.contiguous();
  const int64_t N = act.size(0), H = act.size(1), W = act.size(2), PW = splits_nibbles(isa) ? 2 * CW : CW;
  const int64_t OH = (H + 2 * ph - KH) / sh + 1, OW = (W + 2 * pw - KW) / sw + 1;
  TORCH_CHECK(H + 2 * ph >= KH && W + 2 * pw >= KW, "zoo binary kernel: input ", H, "x", W, " with padding ", ph,
              ",", pw, " is smaller than the kernel ", KH, "x", KW);
  const Epilogue epi = prepare_epilogue(scale, bias, residual, prelu, clamp_min, clamp_max, N, O, OH, OW);
  // NHWC buffer, returned as an (N, O, OH, OW) view in channels_last memory format.
  torch::Tensor out = torch::empty({N, OH, OW, O}, torch::dtype(torch::kFloat));
  const int64_t M = N * OH * OW;
  if (M == 0) return out.permute({0, 3, 1, 2});

  std::vector<u64> zero(PW, 0);
  std::vector<int64_t> tapoff(T);
  for (int64_t kh = 0; kh < KH; ++kh)
    for (int64_t kw = 0; kw < KW; ++kw) tapoff[kh * KW + kw] = (kh * W + kw) * PW;

  Geom g;
  g.act = reinterpret_cast<const u64*>(a.data_ptr<int64_t>());
  g.wb = reinterpret_cast<const u64*>(wb.data_ptr<int64_t>());
  g.zero = zero.data();
  g.out = out.data_ptr<float>();
  g.scale = float_ptr(epi.scale);
  g.bias = float_ptr(epi.bias);
  g.residual = float_ptr(epi.residual);
  g.slope = float_ptr(epi.slope);
  g.clamp = epi.clamp;
  g.lo = epi.lo;
  g.hi = epi.hi;
  g.tapoff = tapoff.data();
  g.N = N;
  g.H = H;
  g.W = W;
  g.CW = CW;
  g.PW = PW;
  g.C = C;
  g.O = O;
  g.KH = KH;
  g.KW = KW;
  g.sh = sh;
  g.sw = sw;
  g.ph = ph;
  g.pw = pw;
  g.OH = OH;
  g.OW = OW;
  g.M = M;
  g.T = T;
  g.K = K;
  g.R = R;
  g.NB = NB;
  g.nOB = nOB;
  // Output-channel blocks are grouped so that one group's weights (<= 24 KiB) stay in L1 while a thread walks the
  // pixel blocks; the pointer table of a pixel block is reused across the blocks of its group. Groups are of equal
  // size (4 blocks in groups of 3 and 1 made ResNet-18's stage-2 conv ~35% slower than groups of 2 and 2).
  const int64_t group_max = std::max<int64_t>(1, 24576 / ((R + T) * NB * 8));
  g.G = ceil_div(nOB, ceil_div(nOB, group_max));
  const int MR = pixel_block(isa, NB);
  g.nPB = ceil_div(M, MR);
  const int64_t nOG = ceil_div(nOB, g.G);
  const int64_t tasks = nOG * g.nPB;
  const int64_t work = MR * g.G * NB * K;  // popcounted words per task
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, work));
  at::parallel_for(0, tasks, grain, [&](int64_t tb, int64_t te) {
    if (isa == kAvx512) {
      switch (NB) {
        case 8:
          conv_tasks_avx512<1>(g, tb, te);
          break;
        case 16:
          conv_tasks_avx512<2>(g, tb, te);
          break;
        case 24:
          conv_tasks_avx512<3>(g, tb, te);
          break;
        default:
          conv_tasks_avx512<4>(g, tb, te);
          break;
      }
    } else if (isa == kAvx2) {
      if (CW == 1)
        conv_tasks_avx2<true>(g, tb, te);
      else
        conv_tasks_avx2<false>(g, tb, te);
    } else {
      conv_tasks_scalar(g, tb, te);
    }
  });
  return out.permute({0, 3, 1, 2});
}

torch::Tensor conv_packed(const torch::Tensor& act, const torch::Tensor& wblocked, int64_t O, int64_t C, int64_t KH,
                          int64_t KW, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t isa,
                          const std::optional<torch::Tensor>& scale, const std::optional<torch::Tensor>& bias,
                          const std::optional<torch::Tensor>& residual, const std::optional<torch::Tensor>& prelu,
                          const std::optional<double>& clamp_min, const std::optional<double>& clamp_max) {
  return conv_operand(act, false, wblocked, O, C, KH, KW, sh, sw, ph, pw, isa, scale, bias, residual, prelu,
                      clamp_min, clamp_max);
}

// ------------------------------------------------------------------------------------------------------------------
// SD-BNN's activation self-distribution as a packing threshold.
// ------------------------------------------------------------------------------------------------------------------

// tau[n, c] = -sigmoid(fc2 . relu(fc1 . mean_hw(x[n])))[c] for float32 x (N, C, H, W) and bias-free fc1 [hidden, C],
// fc2 [C, hidden]: the SE branch's output, negated. The same ATen ops as the Python branch (mean, linear, relu,
// sigmoid), so the same values bit for bit, without the interpreter's cost between them.
torch::Tensor asd_threshold(const torch::Tensor& x, const torch::Tensor& fc1, const torch::Tensor& fc2) {
  check_activation(x);
  check_float_cpu(x, "x");
  check_float_cpu(fc1, "asd fc1 weight");
  check_float_cpu(fc2, "asd fc2 weight");
  const int64_t C = x.size(1);
  TORCH_CHECK(fc1.dim() == 2 && fc1.size(1) == C && fc2.dim() == 2 && fc2.size(0) == C && fc2.size(1) == fc1.size(0),
              "zoo binary kernel: ASD weights must be fc1 [hidden, ", C, "] and fc2 [", C, ", hidden], got ",
              fc1.sizes(), " and ", fc2.sizes());
  TORCH_CHECK(x.size(2) * x.size(3) > 0, "zoo binary kernel: the ASD mean needs a spatial size >= 1");
  return at::neg(at::sigmoid(at::linear(at::relu(at::linear(at::mean(x, {2, 3}), fc1)), fc2)));
}

// Fused [ASD threshold +] sign-and-pack + conv [+ epilogue]. x: float (N, C, H, W) of any strides, or already packed
// int64 [N, H, W, CW] (then neither a threshold nor ASD weights).
torch::Tensor binary_conv2d(const torch::Tensor& x, const std::optional<torch::Tensor>& threshold,
                            const torch::Tensor& wblocked, int64_t O, int64_t C, int64_t KH, int64_t KW, int64_t sh,
                            int64_t sw, int64_t ph, int64_t pw, int64_t isa, const std::optional<torch::Tensor>& scale,
                            const std::optional<torch::Tensor>& bias, const std::optional<torch::Tensor>& residual,
                            const std::optional<torch::Tensor>& prelu, const std::optional<double>& clamp_min,
                            const std::optional<double>& clamp_max, const std::optional<torch::Tensor>& asd_fc1,
                            const std::optional<torch::Tensor>& asd_fc2) {
  isa = resolve_isa(isa);
  const bool asd = asd_fc1.has_value() || asd_fc2.has_value();
  TORCH_CHECK(asd_fc1.has_value() == asd_fc2.has_value(), "zoo binary kernel: ASD needs both fc1 and fc2 weights");
  TORCH_CHECK(!(asd && threshold.has_value()), "zoo binary kernel: give a threshold or ASD weights, not both");
  if (x.scalar_type() == torch::kLong) {
    TORCH_CHECK(!threshold.has_value() && !asd,
                "zoo binary kernel: a threshold cannot be applied to packed activations");
    return conv_packed(x, wblocked, O, C, KH, KW, sh, sw, ph, pw, isa, scale, bias, residual, prelu, clamp_min,
                       clamp_max);
  }
  check_activation(x);
  TORCH_CHECK(x.size(1) == C, "zoo binary kernel: input has ", x.size(1), " channels, in_channels=", C);
  const std::optional<torch::Tensor> tau = asd ? std::optional<torch::Tensor>(asd_threshold(x, *asd_fc1, *asd_fc2))
                                               : threshold;
  // Packed straight into the conv's operand layout (nibble words on the AVX2 path): no second pass over the words.
  const Threshold th = prepare_threshold(x, tau);
  const bool nibbles = splits_nibbles(isa);
  torch::Tensor words = torch::empty({x.size(0), x.size(2), x.size(3), (nibbles ? 2 : 1) * ceil_div(C, 64)},
                                     x.options().dtype(torch::kLong));
  pack_into(x, th.ptr, th.stride_n, words, isa, nibbles);
  return conv_operand(words, nibbles, wblocked, O, C, KH, KW, sh, sw, ph, pw, isa, scale, bias, residual, prelu,
                      clamp_min, clamp_max);
}

std::vector<std::string> available_isas() {
  std::vector<std::string> v{"scalar"};
  if (cpu_has_avx2()) v.push_back("avx2");
  if (cpu_has_avx512()) v.push_back("avx512-vpopcntdq");
  return v;
}

}  // namespace

void register_sign_estimators(pybind11::module_& m);    // sign_estimators.cpp: the training-time sign kernels
void register_channels_last_ops(pybind11::module_& m);  // channels_last_ops.cpp: stem affine / PReLU, max-pool

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace pybind11::literals;
  m.doc() = "zoo binary conv2d CPU kernels (packed XOR-popcount, AVX-512 VPOPCNTDQ / AVX2 / scalar)";
  const auto nogil = pybind11::call_guard<pybind11::gil_scoped_release>();
  m.def("pack_weights", &pack_weights, "weight"_a, nogil);
  m.def("block_weights", &block_weights, "packed"_a, "isa"_a = int64_t{kAuto}, nogil);
  m.def("weight_layout", &weight_layout, "isa"_a);
  m.def("pack_activations", &pack_activations, "x"_a, "threshold"_a, "isa"_a, nogil);
  const auto none = pybind11::none();
  m.def("asd_threshold", &asd_threshold, "x"_a, "fc1"_a, "fc2"_a, nogil);
  m.def("conv_packed", &conv_packed, "act"_a, "wblocked"_a, "out_channels"_a, "in_channels"_a, "kh"_a, "kw"_a,
        "sh"_a, "sw"_a, "ph"_a, "pw"_a, "isa"_a, "scale"_a = none, "bias"_a = none, "residual"_a = none,
        "prelu_weight"_a = none, "clamp_min"_a = none, "clamp_max"_a = none, nogil);
  m.def("binary_conv2d", &binary_conv2d, "x"_a, "threshold"_a, "wblocked"_a, "out_channels"_a, "in_channels"_a,
        "kh"_a, "kw"_a, "sh"_a, "sw"_a, "ph"_a, "pw"_a, "isa"_a, "scale"_a = none, "bias"_a = none,
        "residual"_a = none, "prelu_weight"_a = none, "clamp_min"_a = none, "clamp_max"_a = none,
        "asd_fc1"_a = none, "asd_fc2"_a = none, nogil);
  m.def("best_isa", [] { return isa_name(best_isa()); });
  m.def("available_isas", &available_isas);
  m.def("isa_code", [](const std::string& name) -> int64_t {
    if (name == "auto") return kAuto;
    if (name == "scalar") return kScalar;
    if (name == "avx2") return kAvx2;
    if (name == "avx512" || name == "avx512-vpopcntdq") return kAvx512;
    TORCH_CHECK(false, "zoo binary kernel: unknown ISA '", name, "' (use auto, scalar, avx2, avx512)");
  });
  register_sign_estimators(m);
  register_channels_last_ops(m);
}
