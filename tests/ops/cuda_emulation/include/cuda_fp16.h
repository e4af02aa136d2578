// CPU emulation of __half (tests only): IEEE binary16 through GCC's _Float16.
#pragma once

#include <cstring>

struct __half {
  unsigned short bits;
};
inline float __half2float(__half h) {
  _Float16 f;
  std::memcpy(&f, &h.bits, sizeof(f));
  return static_cast<float>(f);
}
inline __half __float2half_rn(float x) {
  const _Float16 f = static_cast<_Float16>(x);
  __half h;
  std::memcpy(&h.bits, &f, sizeof(f));
  return h;
}
