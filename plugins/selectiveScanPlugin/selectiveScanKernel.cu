/*
 * Mamba-1 selective scan over a chunk of T >= 1 steps, continuing from an initial state (zoo.ops.selective_scan).
 *
 *   dt_t = softplus(delta_t + delta_bias)     h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t
 *   y_t  = (sum_n C_t h_t + D u_t) * silu(z_t)
 *
 * One "team" of S lanes (S = next pow2 >= N, <= 32) per channel (b, e); lane l holds states n = l, l + S, ... in
 * registers, so the recurrence is sequential in t and parallel over (b, e, n); y is a team reduction. State is fp32
 * whatever the activation dtype. h may alias h0.
 */
#include "zooCudaUtils.cuh"
#include "zooScanKernels.h"

namespace zoo
{

template <typename T>
__global__ void __launch_bounds__(kBlock) selectiveScanKernel(T const* __restrict__ u, T const* __restrict__ delta,
    float const* __restrict__ A, T const* __restrict__ Bm, T const* __restrict__ Cm, float const* __restrict__ D,
    T const* __restrict__ z, float const* __restrict__ deltaBias, float const* h0, T* __restrict__ y, float* h,
    int32_t batch, int32_t E, int32_t N, int32_t T_, int32_t deltaSoftplus, int32_t S)
{
    int64_t const gid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    int64_t const chan = gid / S;
    int32_t const lane = static_cast<int32_t>(gid % S);
    if (chan >= static_cast<int64_t>(batch) * E)
    {
        return; // whole teams drop out together (S divides the block and the warp)
    }
    uint32_t const mask = teamMask(S);
    int32_t const b = static_cast<int32_t>(chan / E);
    int32_t const e = static_cast<int32_t>(chan % E);
    float a[kMaxPerLane];
    float s[kMaxPerLane];
#pragma unroll
    for (int32_t k = 0; k < kMaxPerLane; ++k)
    {
        int32_t const n = lane + k * S;
        a[k] = n < N ? A[static_cast<int64_t>(e) * N + n] : 0.f;
        s[k] = (n < N && h0 != nullptr) ? h0[chan * N + n] : 0.f;
    }
    float const dv = D != nullptr ? D[e] : 0.f;
    float const db = deltaBias != nullptr ? deltaBias[e] : 0.f;
    int64_t const rowET = chan * T_;                      // u/delta/z/y row (b, e, :)
    int64_t const rowNT = static_cast<int64_t>(b) * N * T_; // B/C rows (b, :, :)
    for (int32_t t = 0; t < T_; ++t)
    {
        float dt = toF(delta[rowET + t]) + db;
        if (deltaSoftplus)
        {
            dt = softplus(dt);
        }
        float const uv = toF(u[rowET + t]);
        float const du = dt * uv;
        float acc = 0.f;
#pragma unroll
        for (int32_t k = 0; k < kMaxPerLane; ++k)
        {
            int32_t const n = lane + k * S;
            if (n < N)
            {
                int64_t const o = rowNT + static_cast<int64_t>(n) * T_ + t;
                s[k] = expf(dt * a[k]) * s[k] + du * toF(Bm[o]);
                acc += toF(Cm[o]) * s[k];
            }
        }
        acc = teamSum(acc, S, mask);
        if (lane == 0)
        {
            float yv = acc + dv * uv;
            if (z != nullptr)
            {
                float const zv = toF(z[rowET + t]);
                yv *= zv / (1.f + expf(-zv));
            }
            y[rowET + t] = fromF<T>(yv);
        }
    }
#pragma unroll
    for (int32_t k = 0; k < kMaxPerLane; ++k)
    {
        int32_t const n = lane + k * S;
        if (n < N)
        {
            h[chan * N + n] = s[k];
        }
    }
}

template <typename T>
static int32_t launchSelectiveScan(void const* u, void const* delta, float const* A, void const* Bm, void const* Cm,
    float const* D, void const* z, float const* deltaBias, float const* h0, void* y, float* h, int32_t batch,
    int32_t E, int32_t N, int32_t T_, int32_t deltaSoftplus, cudaStream_t stream)
{
    int32_t const S = teamSize(N);
    int64_t const threads = static_cast<int64_t>(batch) * E * S;
    if (threads == 0)
    {
        return 0;
    }
    int64_t const blocks = (threads + kBlock - 1) / kBlock;
    selectiveScanKernel<T><<<static_cast<uint32_t>(blocks), kBlock, 0, stream>>>(static_cast<T const*>(u),
        static_cast<T const*>(delta), A, static_cast<T const*>(Bm), static_cast<T const*>(Cm), D,
        static_cast<T const*>(z), deltaBias, h0, static_cast<T*>(y), h, batch, E, N, T_, deltaSoftplus, S);
    return static_cast<int32_t>(cudaGetLastError());
}

} // namespace zoo

extern "C" int32_t zoo_selective_scan(int32_t dtype, void const* u, void const* delta, float const* A, void const* Bm,
    void const* Cm, float const* D, void const* z, float const* delta_bias, float const* h0, void* y, float* h,
    int32_t batch, int32_t E, int32_t N, int32_t T, int32_t delta_softplus, cudaStream_t stream)
{
    if (N < 1 || N > 32 * zoo::kMaxPerLane || batch < 0 || E < 0 || T < 1)
    {
        return static_cast<int32_t>(cudaErrorInvalidValue);
    }
    switch (dtype)
    {
    case kZOO_FLOAT32:
        return zoo::launchSelectiveScan<float>(
            u, delta, A, Bm, Cm, D, z, delta_bias, h0, y, h, batch, E, N, T, delta_softplus, stream);
    case kZOO_FLOAT16:
        return zoo::launchSelectiveScan<__half>(
            u, delta, A, Bm, Cm, D, z, delta_bias, h0, y, h, batch, E, N, T, delta_softplus, stream);
    case kZOO_BFLOAT16:
        return zoo::launchSelectiveScan<__nv_bfloat16>(
            u, delta, A, Bm, Cm, D, z, delta_bias, h0, y, h, batch, E, N, T, delta_softplus, stream);
    default: return static_cast<int32_t>(cudaErrorInvalidValue);
    }
}

extern "C" int32_t zoo_scan_max_state()
{
    return 32 * zoo::kMaxPerLane;
}
