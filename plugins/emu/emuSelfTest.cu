/*
 * Kernels that check the emulator itself (tests/test_cuda_emu.py): team sums at every width the scan kernels use,
 * PTX's "no later segment" rule of __shfl_xor_sync, one kernel per undefined use of a warp shuffle, which the
 * emulator must refuse (on a GPU each would silently return garbage or hang), a racy kernel whose result changes
 * with the emulator's schedule, and two that check the fiber switch (zooFiber.h): many values live across every
 * shuffle, and a rounding mode of each thread's own.
 */
#include "zooCudaUtils.cuh"
#include "zooScanKernels.h"

#include <fenv.h>

namespace
{

__global__ void teamSumKernel(float const* in, float* out, int32_t n, int32_t width)
{
    int32_t const gid = static_cast<int32_t>(blockIdx.x * blockDim.x + threadIdx.x);
    if (gid / width * width >= n) // whole teams drop out, as in the scan kernels
    {
        return;
    }
    out[gid] = zoo::teamSum(gid < n ? in[gid] : 0.f, width, zoo::teamMask(width));
}

__global__ void segmentKernel(float* out, int32_t laneMask, int32_t width)
{
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, static_cast<float>(threadIdx.x), laneMask, width);
}

__global__ void excludesSelfKernel(float* out)
{
    out[threadIdx.x] = __shfl_xor_sync(0xfffffffeu, 1.f, 1, 32); // lane 0 calls with a mask without lane 0
}

__global__ void exitedLaneKernel(float* out)
{
    if (threadIdx.x == 3)
    {
        return; // lane 3 leaves, the others name it in their mask
    }
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.f, 1, 32);
}

__global__ void divergentKernel(float* out)
{
    float v = 1.f;
    if (threadIdx.x < 16)
    {
        v = __shfl_xor_sync(0xffffffffu, v, 1, 32); // half the warp takes one more shuffle
    }
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, v, 2, 32);
}

__global__ void outsideMaskKernel(float* out)
{
    uint32_t const mask = threadIdx.x < 16 ? 0x0000ffffu : 0xffff0000u;
    out[threadIdx.x] = __shfl_xor_sync(mask, 1.f, 16, 32); // reads the other half, outside its mask
}

__global__ void fullMaskKernel(float* out)
{
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.f, 1, 32); // launched with 20 threads: lanes 20..31 absent
}

__global__ void racyKernel(float* buf, float* out, int32_t n)
{
    int32_t const i = static_cast<int32_t>(blockIdx.x * blockDim.x + threadIdx.x);
    if (i >= n)
    {
        return;
    }
    buf[i] = static_cast<float>(i);
    out[i] = buf[(i + 1) % n]; // another thread's write, no synchronisation: a race
}

//! Eight integers and eight doubles, different in every thread, each updated from every shuffle's result (so the
//! compiler can neither fold the loop nor keep them anywhere but across the shuffle's call): they sit in the
//! callee-saved registers (x86-64 rbx, rbp, r12-r15; aarch64 x19-x28, d8-d15) or spilled on the thread's own stack,
//! and a switch that restored one wrongly would give a thread another's value (or crash the scheduler).
__global__ void liveValuesKernel(uint64_t* outA, double* outD, int32_t rounds)
{
    uint64_t const t = blockIdx.x * blockDim.x + threadIdx.x;
    uint64_t a0 = t * 8 + 1, a1 = t * 8 + 2, a2 = t * 8 + 3, a3 = t * 8 + 4, a4 = t * 8 + 5, a5 = t * 8 + 6,
             a6 = t * 8 + 7, a7 = t * 8 + 8;
    double d0 = t + 0.5, d1 = t + 1.5, d2 = t + 2.5, d3 = t + 3.5, d4 = t + 4.5, d5 = t + 5.5, d6 = t + 6.5,
           d7 = t + 7.5;
    uint64_t constexpr m = 6364136223846793005ull;
    for (int32_t r = 0; r < rounds; ++r)
    {
        uint64_t const x = static_cast<uint32_t>(__shfl_xor_sync(0xffffffffu, r, 1, 32)); // r, from lane ^ 1
        a0 = a0 * m + x;
        a1 = a1 * m + x + 1;
        a2 = a2 * m + x + 2;
        a3 = a3 * m + x + 3;
        a4 = a4 * m + x + 4;
        a5 = a5 * m + x + 5;
        a6 = a6 * m + x + 6;
        a7 = a7 * m + x + 7;
        double const y = static_cast<double>(x); // sums of small integers and halves: exact
        d0 += y;
        d1 += 2 * y;
        d2 += 3 * y;
        d3 += 4 * y;
        d4 += 5 * y;
        d5 += 6 * y;
        d6 += 7 * y;
        d7 += 8 * y;
    }
    uint64_t const a[8] = {a0, a1, a2, a3, a4, a5, a6, a7};
    double const d[8] = {d0, d1, d2, d3, d4, d5, d6, d7};
    for (int32_t k = 0; k < 8; ++k)
    {
        outA[t * 8 + k] = a[k];
        outD[t * 8 + k] = d[k];
    }
}

//! Thread t sets rounding mode t % 5 (0: keeps the one it started with, then to nearest, upward, downward, toward
//! zero) and, after each of `rounds` shuffles -- the other lanes, in their own modes, run in between -- records the
//! mode (x86-64: glibc's fegetround reads the x87 control word) and 1/3 and -1/3 in float (x86-64: SSE, rounded as
//! MXCSR says), which tell the four modes apart.
__global__ void fpControlKernel(int32_t* modes, float* quotients, int32_t rounds)
{
    int32_t const t = static_cast<int32_t>(threadIdx.x);
    int32_t const set[5] = {-1, FE_TONEAREST, FE_UPWARD, FE_DOWNWARD, FE_TOWARDZERO};
    if (set[t % 5] >= 0)
    {
        fesetround(set[t % 5]);
    }
    for (int32_t r = 0; r < rounds; ++r)
    {
        volatile float one = __shfl_xor_sync(0xffffffffu, 1.f, 1, 32), three = 3.f;
        modes[t * rounds + r] = fegetround();
        quotients[(t * rounds + r) * 2] = one / three;
        quotients[(t * rounds + r) * 2 + 1] = -one / three;
    }
}

} // namespace

//! liveValuesKernel on `blocks` blocks of 64 threads (two warps each): outA, outD hold 8 values a thread.
extern "C" ZOO_API int32_t emu_live_values(uint64_t* outA, double* outD, int32_t rounds, int32_t blocks)
{
    liveValuesKernel<<<blocks, 64, 0, nullptr>>>(outA, outD, rounds);
    return static_cast<int32_t>(cudaGetLastError());
}

//! fpControlKernel on 32 threads, launched in rounding mode `hostMode`; host[0] is the launching thread's mode after
//! the launch, host[1] (float bits) its 1/3 then. The caller's floating-point environment is restored before return.
extern "C" ZOO_API int32_t emu_fp_control(
    int32_t hostMode, int32_t* modes, float* quotients, int32_t rounds, int32_t* host)
{
    fenv_t saved;
    fegetenv(&saved);
    fesetround(hostMode);
    fpControlKernel<<<1, 32, 0, nullptr>>>(modes, quotients, rounds);
    int32_t const e = static_cast<int32_t>(cudaGetLastError());
    host[0] = fegetround();
    volatile float one = 1.f, three = 3.f;
    float const q = one / three;
    __builtin_memcpy(&host[1], &q, 4);
    fesetenv(&saved);
    return e;
}

extern "C" ZOO_API int32_t emu_fe_modes(int32_t* out)
{
    out[0] = FE_TONEAREST;
    out[1] = FE_UPWARD;
    out[2] = FE_DOWNWARD;
    out[3] = FE_TOWARDZERO;
    return 0;
}

extern "C" ZOO_API int32_t emu_racy(float* buf, float* out, int32_t n)
{
    racyKernel<<<(n + 31) / 32, 32, 0, nullptr>>>(buf, out, n);
    return static_cast<int32_t>(cudaGetLastError());
}

extern "C" ZOO_API int32_t emu_team_sum(float const* in, float* out, int32_t n, int32_t width, int32_t block)
{
    int32_t const threads = (n + width - 1) / width * width;
    teamSumKernel<<<(threads + block - 1) / block, block, 0, nullptr>>>(in, out, n, width);
    return static_cast<int32_t>(cudaGetLastError());
}

extern "C" ZOO_API int32_t emu_segment(float* out, int32_t laneMask, int32_t width)
{
    segmentKernel<<<1, 32, 0, nullptr>>>(out, laneMask, width);
    return static_cast<int32_t>(cudaGetLastError());
}

extern "C" ZOO_API int32_t emu_undefined(int32_t which, float* out)
{
    switch (which)
    {
    case 0: excludesSelfKernel<<<1, 32, 0, nullptr>>>(out); break;
    case 1: exitedLaneKernel<<<1, 32, 0, nullptr>>>(out); break;
    case 2: divergentKernel<<<1, 32, 0, nullptr>>>(out); break;
    case 3: outsideMaskKernel<<<1, 32, 0, nullptr>>>(out); break;
    case 4: fullMaskKernel<<<1, 20, 0, nullptr>>>(out); break; // a partial warp: the mask names absent lanes
    default: return -1;
    }
    return static_cast<int32_t>(cudaGetLastError());
}
