// Host stand-in for the CUDA runtime header: the few types the kernels' translation unit names.
#pragma once
#include <cstdint>
#include <cstdio>

typedef int cudaError_t;
typedef void* cudaStream_t;
enum { cudaSuccess = 0, cudaErrorInvalidValue = 1 };

void emu_report(const char* what);

// A float2 store must be 8-byte aligned on the GPU (a misaligned one faults there); the check makes it fail here too.
struct float2 {
  float x, y;
  float2() = default;
  float2(float a, float b) : x(a), y(b) {}
  float2& operator=(const float2& o) {
    if (reinterpret_cast<uintptr_t>(this) % 8 != 0) emu_report("misaligned float2 store");
    x = o.x;
    y = o.y;
    return *this;
  }
};
inline float2 make_float2(float x, float y) { return float2(x, y); }
