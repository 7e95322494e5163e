// Small device helpers shared by the scan kernels (dtype conversion, softplus, team reductions).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cstdint>

namespace zoo
{

__device__ __forceinline__ float toF(float v)
{
    return v;
}
__device__ __forceinline__ float toF(__half v)
{
    return __half2float(v);
}
__device__ __forceinline__ float toF(__nv_bfloat16 v)
{
    return __bfloat162float(v);
}

template <typename T>
__device__ __forceinline__ T fromF(float v);
template <>
__device__ __forceinline__ float fromF<float>(float v)
{
    return v;
}
template <>
__device__ __forceinline__ __half fromF<__half>(float v)
{
    return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 fromF<__nv_bfloat16>(float v)
{
    return __float2bfloat16_rn(v);
}

//! torch.nn.functional.softplus (beta 1, threshold 20)
__device__ __forceinline__ float softplus(float x)
{
    return x > 20.f ? x : log1pf(expf(x));
}

//! Sum over a team of `width` consecutive lanes (width a power of two <= 32, teams aligned in the warp).
__device__ __forceinline__ float teamSum(float v, int32_t width, uint32_t mask)
{
    for (int32_t off = width / 2; off > 0; off /= 2)
    {
        v += __shfl_xor_sync(mask, v, off, width);
    }
    return v;
}

//! Team size for a state of size N: the next power of two >= N, capped at 32 (each lane then holds ceil(N/team)).
inline int32_t teamSize(int32_t N)
{
    int32_t s = 1;
    while (s < N && s < 32)
    {
        s *= 2;
    }
    return s;
}

//! Lanes of the calling thread's team (for __shfl_*_sync).
__device__ __forceinline__ uint32_t teamMask(int32_t width)
{
    if (width >= 32)
    {
        return 0xffffffffu;
    }
    uint32_t const lane = threadIdx.x & 31u;
    return ((1u << width) - 1u) << (lane / width * width);
}

constexpr int32_t kMaxPerLane = 8; // state elements per lane -> N <= 32 * 8 = 256
constexpr int32_t kBlock = 128;

} // namespace zoo
