// torch binding of the CUDA binary-conv kernels (binary_conv_cuda.cu): argument checks, allocation, device guard and
// the current stream. The Python side (zoo/kernels/cuda/__init__.py) prepares the weights once and validates shapes.

#include <torch/extension.h>

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <optional>
#include <string>

#include "binary_conv_cuda.h"

namespace {

constexpr const char* kPrefix = "zoo binary CUDA kernel: ";

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

void check_cuda(cudaError_t e, const char* what) {
  TORCH_CHECK(e == cudaSuccess, kPrefix, what, " failed: ", cudaGetErrorString(e));
}

// Device attributes through the runtime (ATen/cuda/CUDAContext.h would pull in the cuBLAS / cuSPARSE headers).
int device_attribute(cudaDeviceAttr attr, int device) {
  int value = 0;
  check_cuda(cudaDeviceGetAttribute(&value, attr, device), "cudaDeviceGetAttribute");
  return value;
}

int dtype_code(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return zoo_bconv::kF32;
    case at::kHalf:
      return zoo_bconv::kF16;
    case at::kBFloat16:
      return zoo_bconv::kBF16;
    case at::kDouble:
      return zoo_bconv::kF64;
    default:
      TORCH_CHECK(false, kPrefix, "unsupported input dtype ", t, " (float32, float16, bfloat16, float64)");
  }
}

// x: real (N, C, H, W) CUDA tensor, any strides. threshold: None, [C] or [N, C] (cast to x's dtype).
torch::Tensor pack_activations(const torch::Tensor& x, const std::optional<torch::Tensor>& threshold) {
  TORCH_CHECK(x.is_cuda(), kPrefix, "pack_activations needs a CUDA tensor, got ", x.device());
  TORCH_CHECK(x.dim() == 4, kPrefix, "expected a 4-D (N, C, H, W) input, got ", x.dim(), "-D");
  TORCH_CHECK(x.size(1) >= 1, kPrefix, "the input needs at least one channel");
  const int code = dtype_code(x.scalar_type());
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), CW = ceil_div(C, 64);
  torch::Tensor th;
  int64_t thN = 0;
  if (threshold.has_value()) {
    th = threshold->to(x.device(), x.scalar_type()).contiguous();
    if (th.dim() == 1) {
      TORCH_CHECK(th.size(0) == C, kPrefix, "threshold of shape [C] needs C = ", C, ", got ", th.sizes());
    } else {
      TORCH_CHECK(th.dim() == 2 && th.size(0) == N && th.size(1) == C, kPrefix,
                  "threshold must have shape [C] or [N, C] = [", N, ", ", C, "], got ", th.sizes());
      thN = C;
    }
  }
  torch::Tensor out = torch::empty({N, H, W, CW}, x.options().dtype(torch::kLong));
  if (out.numel() == 0) return out;
  zoo_bconv::PackParams p;
  p.x = x.data_ptr();
  p.N = N;
  p.C = C;
  p.H = H;
  p.W = W;
  p.sN = x.stride(0);
  p.sC = x.stride(1);
  p.sH = x.stride(2);
  p.sW = x.stride(3);
  p.th = th.defined() ? th.data_ptr() : nullptr;
  p.thN = thN;
  p.out = reinterpret_cast<uint64_t*>(out.data_ptr<int64_t>());
  p.CW = CW;
  check_cuda(zoo_bconv::launch_pack_activations(p, code, c10::cuda::getCurrentCUDAStream()), "pack_activations");
  return out;
}

struct Geometry {
  int64_t N, H, W, OH, OW;
};

Geometry check_conv(const torch::Tensor& act, int64_t O, int64_t C, int64_t KH, int64_t KW, int64_t sh, int64_t sw,
                    int64_t ph, int64_t pw) {
  TORCH_CHECK(act.is_cuda() && act.dim() == 4 && act.scalar_type() == torch::kLong, kPrefix,
              "packed activations must be a CUDA int64 tensor [N, H, W, CW], got ", act.sizes(), " ",
              act.scalar_type(), " on ", act.device());
  TORCH_CHECK(O >= 1 && C >= 1 && KH >= 1 && KW >= 1, kPrefix, "bad sizes O=", O, " C=", C, " kernel ", KH, "x",
              KW);
  TORCH_CHECK(sh >= 1 && sw >= 1 && ph >= 0 && pw >= 0, kPrefix, "stride must be >= 1 and padding >= 0");
  TORCH_CHECK(act.size(3) == ceil_div(C, 64), kPrefix, "packed activations hold ", act.size(3),
              " words per pixel, in_channels=", C, " needs ", ceil_div(C, 64));
  TORCH_CHECK(C * KH * KW < (int64_t{1} << 29), kPrefix, "in_channels*KH*KW must be < 2^29, got ", C * KH * KW);
  Geometry g;
  g.N = act.size(0);
  g.H = act.size(1);
  g.W = act.size(2);
  TORCH_CHECK(g.H >= 1 && g.W >= 1, kPrefix, "the input needs a spatial size >= 1");
  TORCH_CHECK(g.H + 2 * ph >= KH && g.W + 2 * pw >= KW, kPrefix, "input ", g.H, "x", g.W, " with padding ", ph, ",",
              pw, " is smaller than the kernel ", KH, "x", KW);
  TORCH_CHECK(g.H + 2 * ph < (int64_t{1} << 28) && g.W + 2 * pw < (int64_t{1} << 28), kPrefix,
              "spatial size too large");
  g.OH = (g.H + 2 * ph - KH) / sh + 1;
  g.OW = (g.W + 2 * pw - KW) / sw + 1;
  return g;
}

zoo_bconv::ConvParams make_params(const torch::Tensor& act, const Geometry& g, torch::Tensor& out, int64_t O,
                                  int64_t C, int64_t KH, int64_t KW, int64_t sh, int64_t sw, int64_t ph, int64_t pw) {
  zoo_bconv::ConvParams p{};
  p.act = reinterpret_cast<const uint64_t*>(act.data_ptr<int64_t>());
  p.w = nullptr;
  p.wtab = nullptr;
  p.out = out.data_ptr<float>();
  p.N = g.N;
  p.H = g.H;
  p.W = g.W;
  p.C = C;
  p.CW = ceil_div(C, 64);
  p.O = O;
  p.KH = KH;
  p.KW = KW;
  p.sh = sh;
  p.sw = sw;
  p.ph = ph;
  p.pw = pw;
  p.OH = g.OH;
  p.OW = g.OW;
  p.KP = 0;
  return p;
}

void check_same_device(const torch::Tensor& a, const torch::Tensor& b, const char* name) {
  TORCH_CHECK(b.is_cuda() && b.device() == a.device(), kPrefix, name, " must be on ", a.device(), ", got ",
              b.device());
}

// The epilogue's operands (see ConvParams), checked and laid out as the kernels read them; kept alive by the caller
// until the launch is queued (the caching allocator keeps their memory for the stream's work after that).
struct Epilogue {
  torch::Tensor scale, bias, residual, slope;
};

torch::Tensor channel_term(const torch::Tensor& act, const std::optional<torch::Tensor>& t, const char* name,
                           int64_t O, double fill) {
  if (!t.has_value()) return torch::full({O}, fill, act.options().dtype(torch::kFloat));
  check_same_device(act, *t, name);
  TORCH_CHECK(t->scalar_type() == torch::kFloat && t->dim() == 1 && t->size(0) == O, kPrefix, name,
              " must be a float32 [out_channels] = [", O, "] tensor, got ", t->scalar_type(), " ", t->sizes());
  return t->contiguous();
}

Epilogue set_epilogue(zoo_bconv::ConvParams& p, const torch::Tensor& act, const std::optional<torch::Tensor>& scale,
                      const std::optional<torch::Tensor>& bias, const std::optional<torch::Tensor>& residual,
                      const std::optional<torch::Tensor>& prelu, const std::optional<double>& clamp_min,
                      const std::optional<double>& clamp_max) {
  Epilogue e;
  p.scale = p.bias = p.residual = p.slope = nullptr;
  p.clamp = 0;
  p.lo = p.hi = 0.0f;
  if (scale.has_value() || bias.has_value()) {
    e.scale = channel_term(act, scale, "scale", p.O, 1.0);
    e.bias = channel_term(act, bias, "bias", p.O, 0.0);
    p.scale = e.scale.data_ptr<float>();
    p.bias = e.bias.data_ptr<float>();
  }
  if (residual.has_value()) {
    check_same_device(act, *residual, "residual");
    TORCH_CHECK(residual->scalar_type() == torch::kFloat && residual->dim() == 4 && residual->size(0) == p.N &&
                    residual->size(1) == p.O && residual->size(2) == p.OH && residual->size(3) == p.OW,
                kPrefix, "residual must be float32 with the output's shape [", p.N, ", ", p.O, ", ", p.OH, ", ",
                p.OW, "], got ", residual->scalar_type(), " ", residual->sizes());
    e.residual = residual->permute({0, 2, 3, 1}).contiguous();  // a view of a channels_last tensor: no copy
    p.residual = e.residual.data_ptr<float>();
  }
  if (prelu.has_value()) {
    check_same_device(act, *prelu, "prelu_weight");
    TORCH_CHECK(prelu->scalar_type() == torch::kFloat && (prelu->numel() == 1 || (prelu->dim() == 1 && prelu->size(0) == p.O)),
                kPrefix, "prelu_weight must be float32 with 1 or out_channels = ", p.O, " elements, got ",
                prelu->scalar_type(), " ", prelu->sizes());
    e.slope = prelu->reshape({-1}).expand({p.O}).contiguous();
    p.slope = e.slope.data_ptr<float>();
  }
  TORCH_CHECK(clamp_min.has_value() == clamp_max.has_value(), kPrefix, "give both clamp bounds or none");
  if (clamp_min.has_value()) {
    TORCH_CHECK(*clamp_min <= *clamp_max, kPrefix, "clamp needs min <= max, got [", *clamp_min, ", ", *clamp_max, "]");
    p.clamp = 1;
    p.lo = static_cast<float>(*clamp_min);
    p.hi = static_cast<float>(*clamp_max);
  }
  return e;
}

// Tensor-core path. wq: prepared weights [O, KP] int64 (KP a multiple of 8 >= KH*KW*CW, tail bits masked, zero
// padded); wtab: [O, (KH+1)*(KW+1)] int32 prefix sums of per-tap weight popcounts. config -1: heuristic.
// Returns float32 (N, O, OH, OW) in channels_last memory format.
torch::Tensor conv_mma(const torch::Tensor& act, const torch::Tensor& wq, const torch::Tensor& wtab, int64_t O,
                       int64_t C, int64_t KH, int64_t KW, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                       int64_t config, const std::optional<torch::Tensor>& scale,
                       const std::optional<torch::Tensor>& bias, const std::optional<torch::Tensor>& residual,
                       const std::optional<torch::Tensor>& prelu_weight, const std::optional<double>& clamp_min,
                       const std::optional<double>& clamp_max) {
  const Geometry g = check_conv(act, O, C, KH, KW, sh, sw, ph, pw);
  check_same_device(act, wq, "prepared weights");
  check_same_device(act, wtab, "weight popcount table");
  const int64_t CW = ceil_div(C, 64);
  TORCH_CHECK(wq.dim() == 2 && wq.scalar_type() == torch::kLong && wq.is_contiguous() && wq.size(0) == O &&
                  wq.size(1) % 8 == 0 && wq.size(1) >= KH * KW * CW,
              kPrefix, "prepared weights must be a contiguous int64 [O, KP] tensor, KP a multiple of 8 >= ",
              KH * KW * CW, ", got ", wq.sizes());
  TORCH_CHECK(reinterpret_cast<uintptr_t>(wq.data_ptr()) % 16 == 0, kPrefix, "prepared weights must be 16-byte aligned");
  TORCH_CHECK(wtab.dim() == 2 && wtab.scalar_type() == torch::kInt && wtab.is_contiguous() && wtab.size(0) == O &&
                  wtab.size(1) == (KH + 1) * (KW + 1),
              kPrefix, "the weight popcount table must be a contiguous int32 [O, (KH+1)*(KW+1)] tensor, got ",
              wtab.sizes());
  TORCH_CHECK(ceil_div(O, 32) < 65536, kPrefix, "too many output channels: ", O);
  const c10::cuda::CUDAGuard guard(act.device());
  const int dev = act.get_device();
  const int major = device_attribute(cudaDevAttrComputeCapabilityMajor, dev);
  TORCH_CHECK(major >= 8, kPrefix, "the tensor-core path needs compute capability >= 8.0, this device is ", major, ".",
              device_attribute(cudaDevAttrComputeCapabilityMinor, dev), "; use the SIMT path (algo='simt')");
  const torch::Tensor a = act.contiguous();
  torch::Tensor out = torch::empty({g.N, g.OH, g.OW, O}, a.options().dtype(torch::kFloat));
  if (out.numel() == 0) return out.permute({0, 3, 1, 2});
  zoo_bconv::ConvParams p = make_params(a, g, out, O, C, KH, KW, sh, sw, ph, pw);
  p.w = reinterpret_cast<const uint64_t*>(wq.data_ptr<int64_t>());
  p.wtab = wtab.data_ptr<int32_t>();
  p.KP = wq.size(1);
  const Epilogue keep = set_epilogue(p, a, scale, bias, residual, prelu_weight, clamp_min, clamp_max);
  const int cfg = config < 0 ? zoo_bconv::pick_mma_config(p, device_attribute(cudaDevAttrMultiProcessorCount, dev)) : static_cast<int>(config);
  TORCH_CHECK(cfg >= 0 && cfg < zoo_bconv::num_mma_configs(), kPrefix, "unknown tile config ", config);
  check_cuda(zoo_bconv::launch_conv_mma(p, cfg, c10::cuda::getCurrentCUDAStream()), "conv (tensor cores)");
  return out.permute({0, 3, 1, 2});
}

// CUDA-core path on the packed OHWI weights [O, KH, KW, CW] (tail bits are masked in the kernel).
torch::Tensor conv_simt(const torch::Tensor& act, const torch::Tensor& wpacked, int64_t O, int64_t C, int64_t KH,
                        int64_t KW, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                        const std::optional<torch::Tensor>& scale, const std::optional<torch::Tensor>& bias,
                        const std::optional<torch::Tensor>& residual, const std::optional<torch::Tensor>& prelu_weight,
                        const std::optional<double>& clamp_min, const std::optional<double>& clamp_max) {
  const Geometry g = check_conv(act, O, C, KH, KW, sh, sw, ph, pw);
  check_same_device(act, wpacked, "packed weights");
  TORCH_CHECK(wpacked.dim() == 4 && wpacked.scalar_type() == torch::kLong && wpacked.size(0) == O &&
                  wpacked.size(1) == KH && wpacked.size(2) == KW && wpacked.size(3) == ceil_div(C, 64),
              kPrefix, "packed weights must be int64 [", O, ", ", KH, ", ", KW, ", ", ceil_div(C, 64), "], got ",
              wpacked.sizes());
  TORCH_CHECK(ceil_div(O, 32) < 65536, kPrefix, "too many output channels: ", O);
  const c10::cuda::CUDAGuard guard(act.device());
  const torch::Tensor a = act.contiguous();
  const torch::Tensor w = wpacked.contiguous();
  torch::Tensor out = torch::empty({g.N, g.OH, g.OW, O}, a.options().dtype(torch::kFloat));
  if (out.numel() == 0) return out.permute({0, 3, 1, 2});
  zoo_bconv::ConvParams p = make_params(a, g, out, O, C, KH, KW, sh, sw, ph, pw);
  p.w = reinterpret_cast<const uint64_t*>(w.data_ptr<int64_t>());
  const Epilogue keep = set_epilogue(p, a, scale, bias, residual, prelu_weight, clamp_min, clamp_max);
  check_cuda(zoo_bconv::launch_conv_simt(p, c10::cuda::getCurrentCUDAStream()), "conv (CUDA cores)");
  return out.permute({0, 3, 1, 2});
}

// The tile config the heuristic picks for a problem on the current device (for benchmarks and tests).
int64_t pick_config(int64_t N, int64_t OH, int64_t OW, int64_t O) {
  zoo_bconv::ConvParams p{};
  p.N = N;
  p.OH = OH;
  p.OW = OW;
  p.O = O;
  int dev = 0;
  check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
  return zoo_bconv::pick_mma_config(p, device_attribute(cudaDevAttrMultiProcessorCount, dev));
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace pybind11::literals;
  m.doc() = "zoo binary conv2d CUDA kernels (b1 mma.sync AND-popcount tensor-core path, CUDA-core popcount path)";
  m.def("pack_activations", &pack_activations, "x"_a, "threshold"_a);
  m.def("conv_mma", &conv_mma, "act"_a, "wq"_a, "wtab"_a, "out_channels"_a, "in_channels"_a, "kh"_a, "kw"_a, "sh"_a,
        "sw"_a, "ph"_a, "pw"_a, "config"_a = -1, "scale"_a = pybind11::none(), "bias"_a = pybind11::none(),
        "residual"_a = pybind11::none(), "prelu_weight"_a = pybind11::none(), "clamp_min"_a = pybind11::none(),
        "clamp_max"_a = pybind11::none());
  m.def("conv_simt", &conv_simt, "act"_a, "wpacked"_a, "out_channels"_a, "in_channels"_a, "kh"_a, "kw"_a, "sh"_a,
        "sw"_a, "ph"_a, "pw"_a, "scale"_a = pybind11::none(), "bias"_a = pybind11::none(), "residual"_a = pybind11::none(),
        "prelu_weight"_a = pybind11::none(), "clamp_min"_a = pybind11::none(), "clamp_max"_a = pybind11::none());
  m.def("pick_config", &pick_config, "n"_a, "oh"_a, "ow"_a, "out_channels"_a);
  m.def("num_configs", &zoo_bconv::num_mma_configs);
  m.def("config_name", [](int64_t c) { return std::string(zoo_bconv::mma_config_name(static_cast<int>(c))); });
}
