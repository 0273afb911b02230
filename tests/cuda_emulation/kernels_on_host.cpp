// binary_conv_cuda.cu compiled for the host, with launchers that run its kernels CTA by CTA on the emulator, as the
// real launchers size them. Entry points (extern "C", for ctypes) return 0, or -1 when a CTA could not finish;
// misuse of CUDA that did not stop a CTA is counted by zoo_emu_error_count (scheduler.cpp).
#define ZOO_BCONV_HOST_EMULATION 1
#include "emulated_cuda.h"

#include "binary_conv_cuda.cu"

namespace zoo_bconv {
namespace {

bool run_grid(unsigned gx, unsigned gy, unsigned tx, unsigned ty, size_t smem, const std::function<void()>& body,
              uint32_t seed) {
  gridDim.x = gx;
  gridDim.y = gy;
  gridDim.z = 1;
  for (unsigned by = 0; by < gy; ++by)
    for (unsigned bx = 0; bx < gx; ++bx)
      if (!emu_run_cta(bx, by, tx, ty, smem, body, seed)) return false;
  return true;
}

template <typename T>
int pack_on_host(const PackParams& p, unsigned max_blocks, uint32_t seed) {
  constexpr int kThreads = 256;  // as pack_typed launches
  const bool ballot = p.sC == 1 && p.C > 1;
  const int64_t items = p.N * p.H * p.W * p.CW;
  if (items == 0) return 0;
  const int64_t per_block = ballot ? kThreads / 32 : kThreads;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(ceil_div(items, per_block), max_blocks));
  const bool th = p.th != nullptr;
  const std::function<void()> body = [&] {
    if (ballot)
      th ? pack_ballot_kernel<T, true>(p) : pack_ballot_kernel<T, false>(p);
    else
      th ? pack_strided_kernel<T, true>(p) : pack_strided_kernel<T, false>(p);
  };
  return run_grid(blocks, 1, kThreads, 1, 0, body, seed) ? 0 : -1;
}

}  // namespace
}  // namespace zoo_bconv

using namespace zoo_bconv;

// The sign-and-pack kernels, with at most max_blocks CTAs (fewer than the items exercise the grid-stride loops).
extern "C" EMU_EXPORT int zoo_emu_pack(const PackParams* p, int dtype, unsigned max_blocks, uint32_t seed) {
  switch (dtype) {
    case kF32:
      return pack_on_host<float>(*p, max_blocks, seed);
    case kF16:
      return pack_on_host<__half>(*p, max_blocks, seed);
    case kBF16:
      return pack_on_host<__nv_bfloat16>(*p, max_blocks, seed);
    case kF64:
      return pack_on_host<double>(*p, max_blocks, seed);
    default:
      return -1;
  }
}

// The tensor-core conv with tile config `config` and `avec` 64-bit words per activation copy (1 or 2).
extern "C" EMU_EXPORT int zoo_emu_conv_mma(const ConvParams* p, int config, int avec, uint32_t seed) {
  if (config < 0 || config >= kNumConfigs || (avec != 1 && avec != 2)) return -1;
  const int64_t M = p->N * p->OH * p->OW;
  return with_tile(config, [&](auto tile) {
    using T = decltype(tile);
    const std::function<void()> body = [&] {
      if (avec == 2)
        conv_mma_kernel<T::BM, T::BN, T::WM, T::WN, 2>(*p);
      else
        conv_mma_kernel<T::BM, T::BN, T::WM, T::WN, 1>(*p);
    };
    const unsigned gx = static_cast<unsigned>(ceil_div(M, T::BM)), gy = static_cast<unsigned>(ceil_div(p->O, T::BN));
    return run_grid(gx, gy, T::WM * T::WN * 32, 1, mma_smem_bytes<T::BM, T::BN>(), body, seed) ? 0 : -1;
  });
}

// The CUDA-core reference conv (packed OHWI weights in p->w), launched as launch_conv_simt does.
extern "C" EMU_EXPORT int zoo_emu_conv_simt(const ConvParams* p, uint32_t seed) {
  const int64_t M = p->N * p->OH * p->OW;
  const std::function<void()> body = [&] { conv_simt_kernel(*p); };
  return run_grid(static_cast<unsigned>(ceil_div(M, 8)), static_cast<unsigned>(ceil_div(p->O, 32)), 32, 8, 0, body,
                  seed)
             ? 0
             : -1;
}
