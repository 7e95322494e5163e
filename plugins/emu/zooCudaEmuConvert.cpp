// C ABI over the emulator's fp16 / bf16 conversions, so tests can compare them with torch on every bit pattern.
#include "cuda_bf16.h"
#include "cuda_fp16.h"
#include "zooCudaEmu.h"

#define ZOO_EMU_API extern "C" __attribute__((visibility("default")))

ZOO_EMU_API void zoo_emu_float_to_half(float const* in, uint16_t* out, int64_t n)
{
    for (int64_t i = 0; i < n; ++i)
    {
        out[i] = __float2half_rn(in[i]).x;
    }
}

ZOO_EMU_API void zoo_emu_half_to_float(uint16_t const* in, float* out, int64_t n)
{
    for (int64_t i = 0; i < n; ++i)
    {
        out[i] = __half2float(__half{in[i]});
    }
}

ZOO_EMU_API void zoo_emu_float_to_bfloat16(float const* in, uint16_t* out, int64_t n)
{
    for (int64_t i = 0; i < n; ++i)
    {
        out[i] = __float2bfloat16_rn(in[i]).x;
    }
}

ZOO_EMU_API void zoo_emu_bfloat16_to_float(uint16_t const* in, float* out, int64_t n)
{
    for (int64_t i = 0; i < n; ++i)
    {
        out[i] = __bfloat162float(__nv_bfloat16{in[i]});
    }
}
