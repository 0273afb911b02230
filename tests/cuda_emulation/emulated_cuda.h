// What binary_conv_cuda.cu needs from CUDA, on the host: included before the .cu (with ZOO_BCONV_HOST_EMULATION
// defined) by kernels_on_host.cpp. Every CUDA thread of a CTA runs as a coroutine (scheduler.cpp); barriers, warp
// collectives and cp.async groups are modelled as the PTX ISA defines them, and misuse is reported, not tolerated.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// Built with -fvisibility=hidden, so that several builds (the kernels, mutants of them) load side by side.
#define EMU_EXPORT __attribute__((visibility("default")))

using std::max;
using std::min;

struct EmuDim3 {
  unsigned x = 1, y = 1, z = 1;
};
extern EmuDim3 threadIdx, blockIdx, blockDim, gridDim;

template <typename T>
inline T __ldg(const T* p) {
  return *p;
}
inline int __popcll(unsigned long long v) { return __builtin_popcountll(v); }

void __syncthreads();
unsigned __ballot_sync(unsigned mask, bool predicate);

// The kernels' PTX primitives (binary_conv_cuda.cu defines the real ones outside the emulation).
void emu_cp_async(void* dst, const void* src, int bytes, int src_bytes, bool cache_global);
void cp_async_commit();
void emu_cp_async_wait(int pending);
template <int BYTES, bool L1>
inline void cp_async(void* dst, const void* src, int src_bytes) {
  emu_cp_async(dst, src, BYTES, src_bytes, BYTES == 16 && !L1);
}
template <int N>
inline void cp_async_wait() {
  emu_cp_async_wait(N);
}
void mma_and_popc(int32_t (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
uint32_t* dynamic_shared_words();

void emu_report(const char* what);

// Runs one CTA (block index bx, by; tx x ty threads; dyn_smem bytes of dynamic shared memory) of `body` to the end.
// Returns false when the CTA could not finish (deadlock, divergent collective); the reason is reported.
bool emu_run_cta(unsigned bx, unsigned by, unsigned tx, unsigned ty, size_t dyn_smem,
                 const std::function<void()>& body, uint32_t seed);
