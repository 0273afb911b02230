// Host stand-in for cuda_bf16.h: the storage type and its exact widening to float (the high half of a float32).
#pragma once
#include <cstdint>
#include <cstring>

struct __nv_bfloat16 {
  uint16_t bits;
};

inline float __bfloat162float(__nv_bfloat16 h) {
  const uint32_t out = static_cast<uint32_t>(h.bits) << 16;
  float f;
  std::memcpy(&f, &out, sizeof f);
  return f;
}
