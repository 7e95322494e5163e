/*
 * zooCudaEmu: run the zoo's CUDA scan kernels on a CPU, as written, so that CI without a GPU can compare the very
 * source the TensorRT plugins compile (plugins/<name>Plugin/<name>Kernel.cu) with the PyTorch references.
 *
 * What it is: a SIMT emulator for the subset of CUDA those kernels use. Every CUDA thread of a launch runs as a
 * cooperative fiber (zooFiber.h) on the calling CPU thread; a warp's lanes run until each one reaches a warp
 * intrinsic or returns, then the intrinsic is resolved for the whole warp at once, as the hardware does.
 *
 *   supported : __global__/__device__ functions, threadIdx / blockIdx / blockDim / gridDim (x only is non-trivial),
 *               kernel<<<grid, block, shmem, stream>>>(...) (rewritten by export/build_plugins.py), __shfl_xor_sync
 *               (any width <= 32), fp16/bf16 conversions (round to nearest even), cudaGetLastError
 *   checked   : undefined behaviour of warp shuffles -- a lane calling with a mask that excludes itself, a lane of
 *               the mask that has exited or is waiting at a different mask, a lane reading from a lane outside the
 *               mask -- fails the launch with a message naming the block, lanes and masks (zoo_emu_last_error())
 *   not here  : __syncthreads, __shared__, atomics, other intrinsics: a kernel using them does not compile against
 *               these headers, so nothing is silently emulated wrong. Timing, memory coalescing and fast-math
 *               differences (the GPU's expf is within 2 ulp of the host's) are a GPU's business.
 *
 * Blocks, and the threads of a block, run in order (lane 0 first) by default; zoo_emu_set_schedule runs them reversed
 * or in a random order, so a kernel that reads another thread's output without synchronisation (a race on a GPU)
 * gives different results under different schedules, which the tests compare bit for bit.
 */
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <math.h> // CUDA code sees expf, log1pf, ... without an include

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

enum cudaError_t : int32_t
{
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorLaunchFailure = 719,
};
typedef struct CUstream_st* cudaStream_t;
typedef struct CUevent_st* cudaEvent_t; // only named by TensorRT's headers (the emulated plugin library)

struct dim3
{
    uint32_t x, y, z;
    constexpr dim3(uint32_t vx = 1, uint32_t vy = 1, uint32_t vz = 1)
        : x(vx)
        , y(vy)
        , z(vz)
    {
    }
};

namespace zoo_emu
{

//! What the running fiber sees as its built-in variables.
struct ThreadCtx
{
    dim3 tid, bid, bdim, gdim; // threadIdx, blockIdx, blockDim, gridDim
};

//! The context of the CUDA thread running on this CPU thread (only valid inside a kernel).
ThreadCtx& current();

//! __shfl_xor_sync for 32-bit values (the value travels as its bits); file:line names the call site.
uint32_t shflXor(uint32_t mask, uint32_t bits, int32_t laneMask, int32_t width, char const* file, int32_t line);

//! Runs body() once per CUDA thread of the grid; returns cudaSuccess or the launch error (also kept for
//! cudaGetLastError and zoo_emu_last_error()).
cudaError_t launch(dim3 grid, dim3 block, std::function<void()> const& body);

//! Records an error for cudaGetLastError (first one wins until read).
void setError(cudaError_t e, char const* message);

//! `kernel<<<grid, block, shmem, stream>>>(args...)` is rewritten to `::zoo_emu::Launch(grid, block, shmem,
//! stream)(kernel, args...)`.
struct Launch
{
    dim3 grid, block;
    size_t shmem;
    Launch(dim3 g, dim3 b, size_t s = 0, cudaStream_t = nullptr)
        : grid(g)
        , block(b)
        , shmem(s)
    {
    }
    template <typename... P, typename... A>
    void operator()(void (*kernel)(P...), A&&... args) const
    {
        if (shmem != 0)
        {
            setError(cudaErrorInvalidConfiguration, "dynamic shared memory is not emulated");
            return;
        }
        auto body = [&]() { kernel(static_cast<P>(args)...); };
        launch(grid, block, body);
    }
};

} // namespace zoo_emu

#define threadIdx (::zoo_emu::current().tid)
#define blockIdx (::zoo_emu::current().bid)
#define blockDim (::zoo_emu::current().bdim)
#define gridDim (::zoo_emu::current().gdim)

namespace zoo_emu
{
//! __shfl_xor_sync, with the call's source line: lanes meeting at different lines (or after different numbers of
//! shuffles) are at different intrinsics, which CUDA leaves undefined and the emulator refuses.
inline float shflXorAt(char const* file, int32_t line, uint32_t mask, float v, int32_t laneMask, int32_t width = 32)
{
    uint32_t bits;
    __builtin_memcpy(&bits, &v, 4);
    bits = ::zoo_emu::shflXor(mask, bits, laneMask, width, file, line);
    float r;
    __builtin_memcpy(&r, &bits, 4);
    return r;
}
inline int32_t shflXorAt(char const* file, int32_t line, uint32_t mask, int32_t v, int32_t laneMask, int32_t width = 32)
{
    return static_cast<int32_t>(::zoo_emu::shflXor(mask, static_cast<uint32_t>(v), laneMask, width, file, line));
}
inline uint32_t shflXorAt(char const* file, int32_t line, uint32_t mask, uint32_t v, int32_t laneMask, int32_t width = 32)
{
    return ::zoo_emu::shflXor(mask, v, laneMask, width, file, line);
}
} // namespace zoo_emu

#define __shfl_xor_sync(...) ::zoo_emu::shflXorAt(__FILE__, __LINE__, __VA_ARGS__)

cudaError_t cudaGetLastError();

//! The message of the last failed launch on this CPU thread ("" if none since zoo_emu_reset_error()).
extern "C" __attribute__((visibility("default"))) char const* zoo_emu_last_error();
//! Clears the error code and message (callers reset before a call, so a message never outlives its call).
extern "C" __attribute__((visibility("default"))) void zoo_emu_reset_error();
//! The order blocks and threads run in, on this CPU thread: 0 in order (default), 1 reversed, 2 random (seeded).
//! Results that change with it come from a race.
extern "C" __attribute__((visibility("default"))) void zoo_emu_set_schedule(int32_t mode, uint64_t seed);
//! How this build switches between fibers: "x86-64 (user-space switch)", "aarch64 (user-space switch)" or
//! "ucontext (swapcontext)" (other architectures, or built with -DZOO_EMU_UCONTEXT).
extern "C" __attribute__((visibility("default"))) char const* zoo_emu_fiber_switch();
