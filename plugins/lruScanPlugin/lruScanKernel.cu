/*
 * LRURec's diagonal complex recurrence h_t = lam h_{t-1} + u_t over T >= 1 steps from h0, as real/imag pairs
 * (zoo.ops.lru.lru_scan_ref without padding mask: the first position takes h0). One thread per (b, n), fp32 state;
 * every step's state is an output (the last one is the carried state).
 */
#include "zooCudaUtils.cuh"
#include "zooScanKernels.h"

namespace zoo
{

template <typename T>
__global__ void __launch_bounds__(kBlock) lruScanKernel(T const* __restrict__ uRe, T const* __restrict__ uIm,
    float const* __restrict__ lamRe, float const* __restrict__ lamIm, float const* __restrict__ h0Re,
    float const* __restrict__ h0Im, T* __restrict__ hRe, T* __restrict__ hIm, int32_t batch, int32_t T_, int32_t N)
{
    int64_t const gid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (gid >= static_cast<int64_t>(batch) * N)
    {
        return;
    }
    int32_t const n = static_cast<int32_t>(gid % N);
    int64_t const b = gid / N;
    float const lr = lamRe[n];
    float const li = lamIm[n];
    float sr = h0Re != nullptr ? h0Re[gid] : 0.f;
    float si = h0Im != nullptr ? h0Im[gid] : 0.f;
    for (int32_t t = 0; t < T_; ++t)
    {
        int64_t const o = (b * T_ + t) * N + n;
        float const nr = lr * sr - li * si + toF(uRe[o]);
        float const ni = lr * si + li * sr + toF(uIm[o]);
        sr = nr;
        si = ni;
        hRe[o] = fromF<T>(sr);
        hIm[o] = fromF<T>(si);
    }
}

template <typename T>
static int32_t launchLruScan(void const* uRe, void const* uIm, float const* lamRe, float const* lamIm,
    float const* h0Re, float const* h0Im, void* hRe, void* hIm, int32_t batch, int32_t T_, int32_t N,
    cudaStream_t stream)
{
    int64_t const threads = static_cast<int64_t>(batch) * N;
    if (threads == 0)
    {
        return 0;
    }
    int64_t const blocks = (threads + kBlock - 1) / kBlock;
    lruScanKernel<T><<<static_cast<uint32_t>(blocks), kBlock, 0, stream>>>(static_cast<T const*>(uRe),
        static_cast<T const*>(uIm), lamRe, lamIm, h0Re, h0Im, static_cast<T*>(hRe), static_cast<T*>(hIm), batch, T_,
        N);
    return static_cast<int32_t>(cudaGetLastError());
}

} // namespace zoo

extern "C" int32_t zoo_lru_scan(int32_t dtype, void const* u_re, void const* u_im, float const* lam_re,
    float const* lam_im, float const* h0_re, float const* h0_im, void* h_re, void* h_im, int32_t batch, int32_t T,
    int32_t N, cudaStream_t stream)
{
    if (batch < 0 || T < 1 || N < 0)
    {
        return static_cast<int32_t>(cudaErrorInvalidValue);
    }
    switch (dtype)
    {
    case kZOO_FLOAT32:
        return zoo::launchLruScan<float>(u_re, u_im, lam_re, lam_im, h0_re, h0_im, h_re, h_im, batch, T, N, stream);
    case kZOO_FLOAT16:
        return zoo::launchLruScan<__half>(u_re, u_im, lam_re, lam_im, h0_re, h0_im, h_re, h_im, batch, T, N, stream);
    case kZOO_BFLOAT16:
        return zoo::launchLruScan<__nv_bfloat16>(
            u_re, u_im, lam_re, lam_im, h0_re, h0_im, h_re, h_im, batch, T, N, stream);
    default: return static_cast<int32_t>(cudaErrorInvalidValue);
    }
}
