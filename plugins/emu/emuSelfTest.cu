/*
 * Kernels that check the emulator itself (tests/test_cuda_emu.py): team sums at every width the scan kernels use,
 * PTX's "no later segment" rule of __shfl_xor_sync, one kernel per undefined use of a warp shuffle, which the
 * emulator must refuse (on a GPU each would silently return garbage or hang), and a racy kernel whose result changes
 * with the emulator's schedule.
 */
#include "zooCudaUtils.cuh"
#include "zooScanKernels.h"

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

} // namespace

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
