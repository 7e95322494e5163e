// zooCudaEmu stand-in for cuda_bf16.h: bfloat16 as its bits (the top half of a float), converted on the host with
// round to nearest even (what __float2bfloat16_rn does on a GPU). Checked against torch.bfloat16 by
// tests/test_trt_plugins.py.
#pragma once
#include "cuda_fp16.h"

struct __nv_bfloat16
{
    uint16_t x;
};

inline float __bfloat162float(__nv_bfloat16 h)
{
    return zoo_emu::u2f(static_cast<uint32_t>(h.x) << 16);
}

inline __nv_bfloat16 __float2bfloat16_rn(float f)
{
    uint32_t const u = zoo_emu::f2u(f);
    if ((u & 0x7fffffffu) > 0x7f800000u)
    {
        return __nv_bfloat16{static_cast<uint16_t>((u >> 16) | 0x0040u)}; // quiet NaN, sign kept
    }
    return __nv_bfloat16{static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16)};
}
