// Full-precision inference ops around the binary units, for float32 channels_last (NHWC) tensors: one pass over
// memory each, where PyTorch's take two (a BN then a PReLU) or also write an int64 index per output (max-pool).
//
//   affine_prelu(x, scale, bias, slope)  out = fma(x, scale[c], bias[c]); out = out > 0 ? out : slope[c] * out
//                                         (a folded eval-mode BN, as the binary kernel's epilogue applies it, then
//                                         PReLU; without a slope the affine alone)
//   max_pool2d(x, k, s, p[, out])         PyTorch's max_pool2d (dilation 1, floor mode): the maximum over the window's
//                                         valid taps, a NaN tap makes the output NaN; bit-exact, max rounds nothing
//   max_pool2d(..., scale, bias[, slope]) the max-pool of affine_prelu(x) on the pooled grid only: bit for bit the two
//                                         passes (see pooled_epilogue), reading x once and writing 1/(sh*sw) of it
//                                         x: channels_last, or channel-blocked (N, C/B, H, W, B) contiguous (oneDNN's
//                                         nChw8c / nChw16c); out: channels_last either way
//   onednn_buffer(t)                      a oneDNN (mkldnn layout) float tensor's buffer as a flat dense tensor that
//                                         keeps t alive: its blocked layout, read as it lies
//
// The loops run along channels and are vectorised by the compiler; the AVX2+FMA build is used where the CPU has it
// and the caller did not force the scalar path (std::fma is a single rounding either way).
#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <dlfcn.h>
#include <immintrin.h>

#include <cmath>
#include <limits>
#include <optional>
#include <vector>

namespace {

constexpr int64_t kScalarIsa = 1;  // zoo.kernels.binary's ISA codes: 0 auto, 1 scalar, 2 avx2, 3 avx512

bool use_avx2(int64_t isa) {
  return isa != kScalarIsa && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

void check_nhwc_float(const torch::Tensor& x, const char* name = "the input") {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == torch::kFloat32 && x.dim() == 4,
              "zoo channels_last op: ", name, " must be a float32 CPU (N, C, H, W) tensor, got ", x.scalar_type(),
              " ", x.sizes(), " on ", x.device());
  TORCH_CHECK(x.is_contiguous(at::MemoryFormat::ChannelsLast), "zoo channels_last op: ", name,
              " must be in channels_last memory format");
}

torch::Tensor channel_vector(const torch::Tensor& t, int64_t C, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == torch::kFloat32 && (t.numel() == C || t.numel() == 1),
              "zoo channels_last op: ", name, " must be float32 on the CPU with 1 or ", C, " elements, got ",
              t.sizes());
  return t.reshape({-1}).expand({C}).contiguous();
}

struct AffineArgs {
  const float* x;
  float* out;
  const float* scale;
  const float* bias;
  const float* slope;  // nullptr: no PReLU
  int64_t C;
};

// Channel c of one element: fma(v, scale[c], bias[c]), then PReLU with slope[c] unless slope is nullptr.
inline float affine_prelu_one(float v, const float* scale, const float* bias, const float* slope, int64_t c) {
  v = std::fma(v, scale[c], bias[c]);
  return slope == nullptr || v > 0.0f ? v : slope[c] * v;
}

// The same for channels c..c+7 (FMA: one rounding, as std::fma).
__attribute__((target("avx2,fma"))) inline __m256 affine_prelu8(__m256 v, const float* scale, const float* bias,
                                                                const float* slope, int64_t c) {
  v = _mm256_fmadd_ps(v, _mm256_loadu_ps(scale + c), _mm256_loadu_ps(bias + c));
  if (slope == nullptr) return v;
  const __m256 scaled = _mm256_mul_ps(v, _mm256_loadu_ps(slope + c));
  return _mm256_blendv_ps(scaled, v, _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_GT_OQ));
}

inline __attribute__((always_inline)) void affine_prelu_rows(const AffineArgs& a, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* src = a.x + r * a.C;
    float* dst = a.out + r * a.C;
    for (int64_t c = 0; c < a.C; ++c) dst[c] = affine_prelu_one(src[c], a.scale, a.bias, a.slope, c);
  }
}

// Explicit vectors: GCC does not vectorise std::fma, and the scalar loop calls libm's fmaf per element.
__attribute__((target("avx2,fma"))) void affine_prelu_rows_avx2(const AffineArgs& a, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* src = a.x + r * a.C;
    float* dst = a.out + r * a.C;
    int64_t c = 0;
    for (; c + 8 <= a.C; c += 8)
      _mm256_storeu_ps(dst + c, affine_prelu8(_mm256_loadu_ps(src + c), a.scale, a.bias, a.slope, c));
    for (; c < a.C; ++c) dst[c] = affine_prelu_one(src[c], a.scale, a.bias, a.slope, c);
  }
}

// inplace: write into x (its storage is fresh and read by nobody else: a large new buffer costs its page faults).
torch::Tensor affine_prelu(const torch::Tensor& x, const torch::Tensor& scale, const torch::Tensor& bias,
                           const std::optional<torch::Tensor>& slope, int64_t isa, bool inplace) {
  check_nhwc_float(x);
  const int64_t C = x.size(1);
  const torch::Tensor s = channel_vector(scale, C, "scale"), b = channel_vector(bias, C, "bias");
  const torch::Tensor sl = slope.has_value() ? channel_vector(*slope, C, "prelu_weight") : torch::Tensor();
  torch::Tensor out = inplace ? x : torch::empty_like(x, at::MemoryFormat::ChannelsLast);
  const AffineArgs a{x.data_ptr<float>(), out.data_ptr<float>(), s.data_ptr<float>(), b.data_ptr<float>(),
                     sl.defined() ? sl.data_ptr<float>() : nullptr, C};
  const bool avx2 = use_avx2(isa);
  const int64_t rows = x.numel() / std::max<int64_t>(C, 1);
  at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(C, 1)), [&](int64_t r0, int64_t r1) {
    avx2 ? affine_prelu_rows_avx2(a, r0, r1) : affine_prelu_rows(a, r0, r1);
  });
  return out;
}

struct PoolArgs {
  const float* x;
  float* out;
  int64_t H, W, C, OH, OW, kh, kw, sh, sw, ph, pw;
  int64_t block;  // channels stored together per pixel: C for channels_last, B for (N, C/B, H, W, B)
  const float* scale;  // nullptr: the plain max-pool; else the pool of affine_prelu(x) (bias, slope as there)
  const float* bias;
  const float* slope;
};

// The pooled epilogue: max over a window of h(v) = prelu(fma(v, scale, bias)) from the window's max and min alone.
// Rounding is monotone, so v -> fma(v, s, b) is non-decreasing (s >= 0) or non-increasing (s < 0), and PReLU is
// non-decreasing (slope >= 0) or falls then rises (slope < 0); h is therefore monotone or falls then rises, and over
// a finite set such a function peaks at the set's smallest or largest element: max h = max(h(min v), h(max v)),
// exactly the value the two passes pick. A NaN tap makes the window's max NaN (as the plain pool) and so the output;
// h of an infinite max or min is NaN under a zero scale (inf * 0), and a NaN from either side is the output.
inline __attribute__((always_inline)) float pooled_epilogue(const PoolArgs& a, float mx, float mn, int64_t c) {
  const float hi = affine_prelu_one(mx, a.scale, a.bias, a.slope, c);
  const float lo = affine_prelu_one(mn, a.scale, a.bias, a.slope, c);
  return (lo > hi || lo != lo) ? lo : hi;
}

// The valid taps [ih0, ih1) x [iw0, iw1) of output pixel (row r = n * OH + oh, ow), x: sample n's input.
struct Window {
  const float* x;
  int64_t ih0, ih1, iw0, iw1;
};

inline Window window_at(const PoolArgs& a, int64_t r, int64_t ow) {
  const int64_t n = r / a.OH, oh = r % a.OH, ih = oh * a.sh - a.ph, iw = ow * a.sw - a.pw;
  return {a.x + n * a.H * a.W * a.C, std::max<int64_t>(ih, 0), std::min(ih + a.kh, a.H), std::max<int64_t>(iw, 0),
          std::min(iw + a.kw, a.W)};
}

// Channel c at pixel (0, 0) of a sample's input; pixel (ih, iw) is (ih * W + iw) * block further.
inline const float* channel_origin(const PoolArgs& a, const float* x, int64_t c) {
  return x + c / a.block * a.H * a.W * a.block + c % a.block;
}

// Output rows (n, oh) r0..r1; per output pixel the window's valid taps, channels innermost. The plain pool keeps its
// running max in the output row; the pooled epilogue keeps max and min aside and writes h of them.
inline __attribute__((always_inline)) void max_pool_rows(const PoolArgs& a, int64_t r0, int64_t r1) {
  const float inf = std::numeric_limits<float>::infinity();
  const bool epilogue = a.scale != nullptr;
  std::vector<float> lows(epilogue ? a.C : 0), highs(epilogue ? a.C : 0);
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t ow = 0; ow < a.OW; ++ow) {
      const Window w = window_at(a, r, ow);
      float* dst = a.out + (r * a.OW + ow) * a.C;
      float* mx = epilogue ? highs.data() : dst;
      float* mn = lows.data();
      for (int64_t c = 0; c < a.C; ++c) mx[c] = -inf;
      if (epilogue) std::fill(lows.begin(), lows.end(), inf);
      for (int64_t c0 = 0; c0 < a.C; c0 += a.block) {
        const float* origin = channel_origin(a, w.x, c0);
        for (int64_t ih = w.ih0; ih < w.ih1; ++ih)
          for (int64_t iw = w.iw0; iw < w.iw1; ++iw) {
            const float* src = origin + (ih * a.W + iw) * a.block;
            for (int64_t j = 0; j < a.block; ++j) {
              const float v = src[j];
              mx[c0 + j] = (v > mx[c0 + j] || v != v) ? v : mx[c0 + j];
            }
            if (epilogue)
              for (int64_t j = 0; j < a.block; ++j) mn[c0 + j] = src[j] < mn[c0 + j] ? src[j] : mn[c0 + j];
          }
      }
      if (epilogue)
        for (int64_t c = 0; c < a.C; ++c) dst[c] = pooled_epilogue(a, mx[c], mn[c], c);
    }
}

// Explicit vectors for the pooled epilogue (GCC does not vectorise std::fma): 8 channels at a time, the rest scalar.
__attribute__((target("avx2,fma"))) void max_pool_rows_avx2(const PoolArgs& a, int64_t r0, int64_t r1) {
  if (a.scale == nullptr || a.C < 8) return max_pool_rows(a, r0, r1);
  const float big = std::numeric_limits<float>::infinity();
  const __m256 inf = _mm256_set1_ps(big), ninf = _mm256_set1_ps(-big);
  const int64_t C8 = a.C / 8 * 8;
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t ow = 0; ow < a.OW; ++ow) {
      const Window w = window_at(a, r, ow);
      float* dst = a.out + (r * a.OW + ow) * a.C;
      for (int64_t c = 0; c < C8; c += 8) {
        const float* origin = channel_origin(a, w.x, c);  // 8 channels of one block (block is C or a multiple of 8)
        __m256 mx = ninf, mn = inf;
        for (int64_t ih = w.ih0; ih < w.ih1; ++ih)
          for (int64_t iw = w.iw0; iw < w.iw1; ++iw) {
            const __m256 v = _mm256_loadu_ps(origin + (ih * a.W + iw) * a.block);
            // max_ps returns its second operand when either is NaN: a NaN max stays, a NaN tap is blended in.
            mx = _mm256_blendv_ps(_mm256_max_ps(v, mx), v, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
            mn = _mm256_min_ps(v, mn);
          }
        const __m256 hi = affine_prelu8(mx, a.scale, a.bias, a.slope, c);
        const __m256 lo = affine_prelu8(mn, a.scale, a.bias, a.slope, c);
        const __m256 take_lo = _mm256_or_ps(_mm256_cmp_ps(lo, hi, _CMP_GT_OQ), _mm256_cmp_ps(lo, lo, _CMP_UNORD_Q));
        _mm256_storeu_ps(dst + c, _mm256_blendv_ps(hi, lo, take_lo));
      }
      for (int64_t c = C8; c < a.C; ++c) {
        const float* origin = channel_origin(a, w.x, c);
        float mx = -big, mn = big;
        for (int64_t ih = w.ih0; ih < w.ih1; ++ih)
          for (int64_t iw = w.iw0; iw < w.iw1; ++iw) {
            const float v = origin[(ih * a.W + iw) * a.block];
            mx = (v > mx || v != v) ? v : mx;
            mn = v < mn ? v : mn;
          }
        dst[c] = pooled_epilogue(a, mx, mn, c);
      }
    }
}

torch::Tensor max_pool2d(const torch::Tensor& x, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph,
                         int64_t pw, int64_t isa, std::optional<torch::Tensor> out_arg,
                         const std::optional<torch::Tensor>& scale, const std::optional<torch::Tensor>& bias,
                         const std::optional<torch::Tensor>& slope) {
  const bool blocked = x.dim() == 5;
  if (blocked) {
    TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == torch::kFloat32 && x.is_contiguous() && x.size(4) % 8 == 0,
                "zoo channels_last op: a channel-blocked max_pool2d input must be a contiguous float32 CPU (N, C/B, H, "
                "W, B) tensor with B a multiple of 8, got ", x.scalar_type(), " ", x.sizes(), " on ", x.device());
  } else {
    check_nhwc_float(x);
  }
  TORCH_CHECK(kh >= 1 && kw >= 1 && sh >= 1 && sw >= 1 && ph >= 0 && pw >= 0 && 2 * ph <= kh && 2 * pw <= kw,
              "zoo channels_last op: max_pool2d needs kernel, stride >= 1 and 0 <= padding <= kernel / 2, got kernel ",
              kh, "x", kw, " stride ", sh, "x", sw, " padding ", ph, "x", pw);
  TORCH_CHECK(scale.has_value() == bias.has_value() && (scale.has_value() || !slope.has_value()),
              "zoo channels_last op: max_pool2d's epilogue needs both scale and bias (a slope only with them)");
  const int64_t N = x.size(0), H = x.size(2), W = x.size(3);
  const int64_t C = blocked ? x.size(1) * x.size(4) : x.size(1), block = blocked ? x.size(4) : C;
  TORCH_CHECK(H + 2 * ph >= kh && W + 2 * pw >= kw, "zoo channels_last op: input ", H, "x", W,
              " is smaller than the pooling window");
  const int64_t OH = (H + 2 * ph - kh) / sh + 1, OW = (W + 2 * pw - kw) / sw + 1;
  torch::Tensor out;
  if (out_arg) {
    out = *out_arg;
    check_nhwc_float(out, "max_pool2d's out");
    TORCH_CHECK(out.sizes() == torch::IntArrayRef({N, C, OH, OW}), "zoo channels_last op: max_pool2d's out must be ",
                torch::IntArrayRef({N, C, OH, OW}), ", got ", out.sizes());
  } else {
    out = torch::empty({N, C, OH, OW}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  }
  if (out.numel() == 0) return out;
  const torch::Tensor s = scale ? channel_vector(*scale, C, "scale") : torch::Tensor();
  const torch::Tensor b = bias ? channel_vector(*bias, C, "bias") : torch::Tensor();
  const torch::Tensor sl = slope ? channel_vector(*slope, C, "prelu_weight") : torch::Tensor();
  const auto ptr = [](const torch::Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; };
  const PoolArgs a{x.data_ptr<float>(), out.data_ptr<float>(), H, W, C, OH, OW, kh, kw, sh, sw, ph, pw, block,
                   ptr(s), ptr(b), ptr(sl)};
  const bool avx2 = use_avx2(isa);
  at::parallel_for(0, N * OH, std::max<int64_t>(1, 4096 / std::max<int64_t>(OW * C, 1)), [&](int64_t r0, int64_t r1) {
    avx2 ? max_pool_rows_avx2(a, r0, r1) : max_pool_rows(a, r0, r1);
  });
  return out;
}

// at::native::data_ptr_from_mkldnn and nbytes_from_mkldnn: exported by libtorch_cpu builds with oneDNN, declared in
// a header torch does not install; looked up at run time so that a torch without them still loads this extension.
template <typename Result>
Result call_mkldnn_accessor(const char* mangled_name, const torch::Tensor& t) {
  using Accessor = Result (*)(const at::Tensor&);
  const auto accessor = reinterpret_cast<Accessor>(dlsym(RTLD_DEFAULT, mangled_name));
  TORCH_CHECK(accessor != nullptr, "zoo channels_last op: onednn_buffer: this torch does not export ", mangled_name);
  return accessor(t);
}

torch::Tensor onednn_buffer(const torch::Tensor& t) {
  TORCH_CHECK(t.is_mkldnn() && t.scalar_type() == torch::kFloat32,
              "zoo channels_last op: onednn_buffer needs a float32 mkldnn-layout tensor, got ", t.scalar_type(), " ",
              t.layout());
  const auto nbytes = call_mkldnn_accessor<int64_t>("_ZN2at6native18nbytes_from_mkldnnERKNS_6TensorE", t);
  // a padded layout (channels rounded up to the block) holds more than numel elements: not read as dense
  TORCH_CHECK(nbytes == t.numel() * static_cast<int64_t>(sizeof(float)),
              "zoo channels_last op: onednn_buffer: the oneDNN layout pads the tensor ", t.sizes());
  void* data = call_mkldnn_accessor<void*>("_ZN2at6native20data_ptr_from_mkldnnERKNS_6TensorE", t);
  return torch::from_blob(data, {t.numel()}, [t](void*) {}, t.options().layout(torch::kStrided));
}

}  // namespace

void register_channels_last_ops(pybind11::module_& m) {
  using namespace pybind11::literals;
  const auto nogil = pybind11::call_guard<pybind11::gil_scoped_release>();
  m.def("affine_prelu", &affine_prelu, "x"_a, "scale"_a, "bias"_a, "prelu_weight"_a, "isa"_a, "inplace"_a = false,
        nogil);
  m.def("max_pool2d", &max_pool2d, "x"_a, "kh"_a, "kw"_a, "sh"_a, "sw"_a, "ph"_a, "pw"_a, "isa"_a,
        "out"_a = std::nullopt, "scale"_a = std::nullopt, "bias"_a = std::nullopt, "prelu_weight"_a = std::nullopt,
        nogil);
  m.def("onednn_buffer", &onednn_buffer, "t"_a);
}
