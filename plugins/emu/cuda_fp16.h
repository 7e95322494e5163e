// zooCudaEmu stand-in for cuda_fp16.h: IEEE binary16 as its bits, converted on the host with round to nearest even
// (what __float2half_rn does on a GPU). Checked against torch.float16 on every bit pattern / edge value by
// tests/test_trt_plugins.py.
#pragma once
#include <cstdint>
#include <cstring>

struct __half
{
    uint16_t x;
};

namespace zoo_emu
{
inline uint32_t f2u(float f)
{
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}
inline float u2f(uint32_t u)
{
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
} // namespace zoo_emu

inline float __half2float(__half h)
{
    uint32_t const sign = static_cast<uint32_t>(h.x & 0x8000u) << 16;
    uint32_t const exp = (h.x >> 10) & 0x1fu;
    uint32_t const mant = h.x & 0x3ffu;
    if (exp == 0)
    {
        float const f = static_cast<float>(mant) * 5.9604644775390625e-08f; // mant * 2^-24, exact
        return sign ? -f : f;
    }
    if (exp == 31)
    {
        return zoo_emu::u2f(sign | 0x7f800000u | (mant << 13));
    }
    return zoo_emu::u2f(sign | ((exp + 112u) << 23) | (mant << 13));
}

//! Round to nearest even, overflow to infinity, NaN stays NaN (F. Giesen's float_to_half_fast3_rtne).
inline __half __float2half_rn(float f)
{
    uint32_t const f32infty = 255u << 23;
    uint32_t const f16max = (127u + 16u) << 23;
    uint32_t const denormMagic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
    uint32_t fu = zoo_emu::f2u(f);
    uint32_t const sign = fu & 0x80000000u;
    fu ^= sign;
    uint16_t o;
    if (fu >= f16max)
    {
        o = fu > f32infty ? 0x7e00u : 0x7c00u;
    }
    else if (fu < (113u << 23))
    {
        float const ff = zoo_emu::u2f(fu) + zoo_emu::u2f(denormMagic); // the FPU rounds to nearest even
        o = static_cast<uint16_t>(zoo_emu::f2u(ff) - denormMagic);
    }
    else
    {
        uint32_t const mantOdd = (fu >> 13) & 1u;
        fu += (static_cast<uint32_t>(15 - 127) << 23) + 0xfffu;
        fu += mantOdd;
        o = static_cast<uint16_t>(fu >> 13);
    }
    return __half{static_cast<uint16_t>(o | (sign >> 16))};
}
