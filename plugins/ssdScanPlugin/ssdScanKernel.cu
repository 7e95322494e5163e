/*
 * Mamba-2 / SSD scan (TiM4Rec-causal) over a chunk of T >= 1 steps from an initial state; one scalar decay per head.
 *
 *   dt_t = softplus(dt_t + dt_bias[h])       h_t[p, n] = exp(dt_t A[h]) h_{t-1}[p, n] + dt_t x_t[p] B_t[g(h), n]
 *   y_t[p] = sum_n C_t[g(h), n] h_t[p, n] + D[h] x_t[p]          g(h) = h / (H / G)
 *
 * One team of S lanes per channel (b, h, p); lanes split the state dimension n (see selectiveScanKernel.cu).
 * The time scaling of dt (TiM4Rec) happens before the node, so dt arrives already scaled. h may alias h0.
 */
#include "zooCudaUtils.cuh"
#include "zooScanKernels.h"

namespace zoo
{

template <typename T>
__global__ void __launch_bounds__(kBlock) ssdScanKernel(T const* __restrict__ x, T const* __restrict__ dtIn,
    float const* __restrict__ A, T const* __restrict__ Bm, T const* __restrict__ Cm, float const* __restrict__ D,
    float const* __restrict__ dtBias, float const* h0, T* __restrict__ y, float* h, int32_t batch, int32_t T_,
    int32_t H, int32_t P, int32_t G, int32_t N, int32_t dtSoftplus, int32_t S)
{
    int64_t const gid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    int64_t const chan = gid / S; // (b, h, p)
    int32_t const lane = static_cast<int32_t>(gid % S);
    if (chan >= static_cast<int64_t>(batch) * H * P)
    {
        return;
    }
    uint32_t const mask = teamMask(S);
    int32_t const p = static_cast<int32_t>(chan % P);
    int32_t const hd = static_cast<int32_t>((chan / P) % H);
    int32_t const b = static_cast<int32_t>(chan / (static_cast<int64_t>(P) * H));
    int32_t const g = hd / (H / G);
    float const a = A[hd];
    float const dv = D != nullptr ? D[hd] : 0.f;
    float const db = dtBias != nullptr ? dtBias[hd] : 0.f;
    float s[kMaxPerLane];
#pragma unroll
    for (int32_t k = 0; k < kMaxPerLane; ++k)
    {
        int32_t const n = lane + k * S;
        s[k] = (n < N && h0 != nullptr) ? h0[chan * N + n] : 0.f;
    }
    for (int32_t t = 0; t < T_; ++t)
    {
        int64_t const bt = static_cast<int64_t>(b) * T_ + t;
        float dt = toF(dtIn[bt * H + hd]) + db;
        if (dtSoftplus)
        {
            dt = softplus(dt);
        }
        int64_t const xo = (bt * H + hd) * P + p;
        float const xv = toF(x[xo]);
        float const dA = expf(dt * a);
        float const dx = dt * xv;
        int64_t const bo = (bt * G + g) * N;
        float acc = 0.f;
#pragma unroll
        for (int32_t k = 0; k < kMaxPerLane; ++k)
        {
            int32_t const n = lane + k * S;
            if (n < N)
            {
                s[k] = dA * s[k] + dx * toF(Bm[bo + n]);
                acc += toF(Cm[bo + n]) * s[k];
            }
        }
        acc = teamSum(acc, S, mask);
        if (lane == 0)
        {
            y[xo] = fromF<T>(acc + dv * xv);
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
static int32_t launchSsdScan(void const* x, void const* dt, float const* A, void const* Bm, void const* Cm,
    float const* D, float const* dtBias, float const* h0, void* y, float* h, int32_t batch, int32_t T_, int32_t H,
    int32_t P, int32_t G, int32_t N, int32_t dtSoftplus, cudaStream_t stream)
{
    int32_t const S = teamSize(N);
    int64_t const threads = static_cast<int64_t>(batch) * H * P * S;
    if (threads == 0)
    {
        return 0;
    }
    int64_t const blocks = (threads + kBlock - 1) / kBlock;
    ssdScanKernel<T><<<static_cast<uint32_t>(blocks), kBlock, 0, stream>>>(static_cast<T const*>(x),
        static_cast<T const*>(dt), A, static_cast<T const*>(Bm), static_cast<T const*>(Cm), D, dtBias, h0,
        static_cast<T*>(y), h, batch, T_, H, P, G, N, dtSoftplus, S);
    return static_cast<int32_t>(cudaGetLastError());
}

} // namespace zoo

extern "C" int32_t zoo_ssd_scan(int32_t dtype, void const* x, void const* dt, float const* A, void const* Bm,
    void const* Cm, float const* D, float const* dt_bias, float const* h0, void* y, float* h, int32_t batch,
    int32_t T, int32_t H, int32_t P, int32_t G, int32_t N, int32_t dt_softplus, cudaStream_t stream)
{
    if (N < 1 || N > 32 * zoo::kMaxPerLane || G < 1 || H % G != 0 || batch < 0 || T < 1 || P < 0)
    {
        return static_cast<int32_t>(cudaErrorInvalidValue);
    }
    switch (dtype)
    {
    case kZOO_FLOAT32:
        return zoo::launchSsdScan<float>(x, dt, A, Bm, Cm, D, dt_bias, h0, y, h, batch, T, H, P, G, N, dt_softplus, stream);
    case kZOO_FLOAT16:
        return zoo::launchSsdScan<__half>(x, dt, A, Bm, Cm, D, dt_bias, h0, y, h, batch, T, H, P, G, N, dt_softplus, stream);
    case kZOO_BFLOAT16:
        return zoo::launchSsdScan<__nv_bfloat16>(
            x, dt, A, Bm, Cm, D, dt_bias, h0, y, h, batch, T, H, P, G, N, dt_softplus, stream);
    default: return static_cast<int32_t>(cudaErrorInvalidValue);
    }
}
