// Training-time element-wise kernels of the zoo's sign quantizers: one pass over memory each, where PyTorch's
// eager formulas take three to six (a fake-quant BNN spends a third of its training step in them).
//
//   hard_sign(x)                        = x >= 0 ? +1 : -1          (-0.0 -> +1, NaN -> -1: the zoo's tie rule)
//   sign_backward(g, x, "ste")          = g * (|x| <= 1 ? 1 : 0)
//   sign_backward(g, x, "approx")       = g * clamp_min(2 - 2|x|, 0)   (NaN kept, as torch.clamp_)
//   sign_backward(g, th, "tanh", kt)    = (g * kt) * (1 - th * th)      (EDE with th = tanh(t x) computed by torch)
//
// Each is the float32 operation sequence of the eager formula in zoo/nn/quantizers.py, in its order, and this file
// is compiled for baseline x86-64 (no FMA contraction is possible), so the results are bit-identical to the eager
// ones. The loops run over the tensors' storage order: x and g must be non-overlapping and dense with equal strides
// (the caller falls back to the eager formula otherwise).
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <cmath>
#include <string>

namespace {

constexpr int64_t kGrain = 1 << 15;

void check_float_dense(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == torch::kFloat32,
              "zoo sign kernel: ", name, " must be a float32 CPU tensor, got ", t.scalar_type(), " on ", t.device());
  TORCH_CHECK(t.is_non_overlapping_and_dense(), "zoo sign kernel: ", name, " must be non-overlapping and dense");
}

torch::Tensor hard_sign(const torch::Tensor& x) {
  check_float_dense(x, "x");
  torch::Tensor out = torch::empty_like(x);
  const float* src = x.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  at::parallel_for(0, x.numel(), kGrain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) dst[i] = src[i] >= 0.f ? 1.f : -1.f;
  });
  return out;
}

torch::Tensor sign_backward(const torch::Tensor& grad, const torch::Tensor& saved, const std::string& estimator,
                            double kt) {
  check_float_dense(grad, "grad");
  check_float_dense(saved, "saved");
  TORCH_CHECK(grad.sizes() == saved.sizes() && grad.strides() == saved.strides(),
              "zoo sign kernel: grad and the saved tensor need equal sizes and strides");
  torch::Tensor out = torch::empty_like(saved);
  const float* g = grad.data_ptr<float>();
  const float* s = saved.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  const int64_t n = saved.numel();
  if (estimator == "ste") {
    at::parallel_for(0, n, kGrain, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) dst[i] = g[i] * (std::fabs(s[i]) <= 1.f ? 1.f : 0.f);
    });
  } else if (estimator == "approx") {
    at::parallel_for(0, n, kGrain, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const float v = 2.f - 2.f * std::fabs(s[i]);
        dst[i] = g[i] * (v < 0.f ? 0.f : v);
      }
    });
  } else if (estimator == "tanh") {
    const float scale = static_cast<float>(kt);
    at::parallel_for(0, n, kGrain, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) dst[i] = (g[i] * scale) * (1.f - s[i] * s[i]);
    });
  } else {
    TORCH_CHECK(false, "zoo sign kernel: unknown estimator '", estimator, "' (use ste, approx or tanh)");
  }
  return out;
}

}  // namespace

void register_sign_estimators(pybind11::module_& m) {
  using namespace pybind11::literals;
  const auto nogil = pybind11::call_guard<pybind11::gil_scoped_release>();
  m.def("hard_sign", &hard_sign, "x"_a, nogil);
  m.def("sign_backward", &sign_backward, "grad"_a, "saved"_a, "estimator"_a, "kt"_a = 1.0, nogil);
}
