// The SIMT emulator behind zooCudaEmu.h: one cooperative fiber per CUDA thread of a block (switched by zooFiber.h:
// user space on x86-64 and aarch64, ucontext elsewhere or with -DZOO_EMU_UCONTEXT), warp intrinsics resolved for the
// whole warp once every lane has reached one (or returned).
#include "zooCudaEmu.h"
#include "zooFiber.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define ZOO_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ZOO_EMU_ASAN 1
#endif
#endif
#ifdef ZOO_EMU_ASAN
// AddressSanitizer build (harness.py --emulate --asan): tell ASan about every stack switch, so it checks the
// kernels' memory accesses against the right stack, and clear the shadow of the fibers' stacks before unmapping them
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

namespace zoo_emu
{
namespace
{

constexpr size_t kStack = 64 * 1024;
constexpr int32_t kWarp = 32;

enum class State
{
    Ready,
    AtShfl,
    Done
};

struct Fiber
{
    fiber::Context ctx;
    void* stack = nullptr; // [stack, stack + kStack): its stack, for ASan's fiber API
    State state = State::Ready;
    ThreadCtx tc;
    uint64_t nShfl = 0; // warp intrinsics this thread has completed
    uint32_t mask = 0, bits = 0, result = 0;
    int32_t laneMask = 0, width = 0;
    char const* file = nullptr; // call site of the pending shuffle
    int32_t line = 0;
};

struct Launcher
{
    fiber::Context sched;
    void const* schedStack = nullptr; // the scheduler's stack, as ASan's fiber API reports it
    size_t schedStackSize = 0;
    std::vector<Fiber> fibers;
    Fiber* cur = nullptr;
    std::function<void()> const* body = nullptr;
    char* stacks = nullptr;
    size_t stacksBytes = 0;
};

thread_local Launcher* tl = nullptr;

//! Order in which blocks, and the ready threads of a block, are run (zoo_emu_set_schedule): 0 in order, 1 reversed,
//! 2 a fresh random permutation every round (xorshift64*, seeded). A kernel whose results depend on it reads what
//! another thread writes without synchronisation: on a GPU, a race.
thread_local int32_t tlSchedule = 0;
thread_local uint64_t tlSeed = 0x9E3779B97F4A7C15ull;

uint64_t nextRandom()
{
    tlSeed ^= tlSeed >> 12;
    tlSeed ^= tlSeed << 25;
    tlSeed ^= tlSeed >> 27;
    return tlSeed * 0x2545F4914F6CDD1Dull;
}

//! 0..n-1 in the current schedule's order.
void scheduleOrder(std::vector<size_t>& order, size_t n)
{
    order.resize(n);
    for (size_t i = 0; i < n; ++i)
    {
        order[i] = tlSchedule == 1 ? n - 1 - i : i;
    }
    if (tlSchedule == 2)
    {
        for (size_t i = n; i > 1; --i)
        {
            std::swap(order[i - 1], order[nextRandom() % i]);
        }
    }
}
thread_local cudaError_t tlLastErr = cudaSuccess;
thread_local std::string tlLastMsg;

//! ASan fiber hooks (no-ops in a normal build): `enter` before switching to a fiber, `entered` on the fiber's side
//! after each switch into it, `leave` before switching back to the scheduler (`exiting`: the fiber's stack is done with),
//! `left` on the scheduler's side after it.
inline void enter(Fiber& f, void** fake)
{
#ifdef ZOO_EMU_ASAN
    __sanitizer_start_switch_fiber(fake, f.stack, kStack);
#else
    (void) f;
    (void) fake;
#endif
}
inline void entered(void* fake)
{
#ifdef ZOO_EMU_ASAN
    __sanitizer_finish_switch_fiber(fake, &tl->schedStack, &tl->schedStackSize);
#else
    (void) fake;
#endif
}
inline void leave(bool exiting, void** fake)
{
#ifdef ZOO_EMU_ASAN
    __sanitizer_start_switch_fiber(exiting ? nullptr : fake, tl->schedStack, tl->schedStackSize);
#else
    (void) exiting;
    (void) fake;
#endif
}
inline void left(void* fake)
{
#ifdef ZOO_EMU_ASAN
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
    (void) fake;
#endif
}

void fiberMain()
{
    entered(nullptr);
    (*tl->body)();
    tl->cur->state = State::Done;
    leave(true, nullptr);
    fiber::finish(tl->cur->ctx, tl->sched); // back to the scheduler for good (ucontext: uc_link, on return)
}

std::string site(Fiber const& f)
{
    std::string p = f.file != nullptr ? f.file : "?";
    size_t const slash = p.find_last_of('/');
    return (slash == std::string::npos ? p : p.substr(slash + 1)) + ":" + std::to_string(f.line);
}

std::string hex(uint32_t v)
{
    char b[16];
    std::snprintf(b, sizeof b, "0x%08x", v);
    return b;
}

//! Checks the pending shuffles of the warp starting at thread `w0` (`n` lanes) and computes their results.
//! Returns an empty string, or what is undefined.
std::string resolveWarp(std::vector<Fiber>& f, size_t w0, int32_t n, std::string const& where)
{
    for (int32_t l = 0; l < n; ++l)
    {
        Fiber& a = f[w0 + l];
        if (a.state != State::AtShfl)
        {
            continue;
        }
        std::string const who = where + " lane " + std::to_string(l);
        if (((a.mask >> l) & 1u) == 0)
        {
            return who + " calls __shfl_xor_sync with mask " + hex(a.mask) + ", which excludes itself";
        }
        if (a.width < 1 || a.width > kWarp || (a.width & (a.width - 1)) != 0)
        {
            return who + " calls __shfl_xor_sync with width " + std::to_string(a.width)
                + " (must be a power of two <= 32)";
        }
        if (a.laneMask < 0 || a.laneMask >= kWarp)
        {
            return who + " calls __shfl_xor_sync with laneMask " + std::to_string(a.laneMask);
        }
        for (int32_t j = 0; j < kWarp; ++j)
        {
            if (((a.mask >> j) & 1u) == 0 || j == l)
            {
                continue;
            }
            if (j >= n)
            {
                return who + ": mask " + hex(a.mask) + " names lane " + std::to_string(j)
                    + ", which does not exist in this block's last warp";
            }
            Fiber const& b = f[w0 + j];
            if (b.state == State::Done)
            {
                return who + ": mask " + hex(a.mask) + " names lane " + std::to_string(j)
                    + ", which has exited the kernel";
            }
            if (b.mask != a.mask || b.nShfl != a.nShfl || b.line != a.line
                || (b.file != a.file && std::strcmp(b.file, a.file) != 0))
            {
                return who + " (shuffle #" + std::to_string(a.nShfl) + " at " + site(a) + ", mask " + hex(a.mask)
                    + ") and lane " + std::to_string(j) + " of its mask (shuffle #" + std::to_string(b.nShfl) + " at "
                    + site(b) + ", mask " + hex(b.mask) + ") are at different warp shuffles";
            }
        }
        int32_t src = l ^ a.laneMask;
        int32_t const maxLane = (l & ~(a.width - 1)) | (a.width - 1); // PTX shfl.bfly: no later segment
        if (src > maxLane)
        {
            src = l;
        }
        if (((a.mask >> src) & 1u) == 0)
        {
            return who + " reads lane " + std::to_string(src) + ", outside its mask " + hex(a.mask)
                + " (undefined on a GPU)";
        }
        a.result = f[w0 + src].bits;
    }
    for (int32_t l = 0; l < n; ++l)
    {
        Fiber& a = f[w0 + l];
        if (a.state == State::AtShfl)
        {
            a.state = State::Ready;
            ++a.nShfl;
        }
    }
    return {};
}

std::string runBlock(Launcher& L, dim3 grid, dim3 block, dim3 bid)
{
    size_t const n = static_cast<size_t>(block.x) * block.y * block.z;
    size_t const page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    for (size_t i = 0; i < n; ++i)
    {
        Fiber& fb = L.fibers[i];
        fb = Fiber{};
        fb.tc.tid = dim3(static_cast<uint32_t>(i % block.x), static_cast<uint32_t>((i / block.x) % block.y),
            static_cast<uint32_t>(i / (static_cast<size_t>(block.x) * block.y)));
        fb.tc.bid = bid;
        fb.tc.bdim = block;
        fb.tc.gdim = grid;
        fb.stack = L.stacks + i * (kStack + page) + page; // a PROT_NONE guard page below each stack
        fiber::make(fb.ctx, fb.stack, kStack, fiberMain, L.sched);
    }
    std::string const where = "block (" + std::to_string(bid.x) + "," + std::to_string(bid.y) + ","
        + std::to_string(bid.z) + ") warp ";
    std::vector<size_t> order;
    for (;;)
    {
        bool pending = false;
        scheduleOrder(order, n);
        for (size_t i : order)
        {
            Fiber& fb = L.fibers[i];
            if (fb.state == State::Ready)
            {
                L.cur = &fb;
                void* fake = nullptr;
                enter(fb, &fake);
                fiber::swap(L.sched, fb.ctx);
                left(fake);
                L.cur = nullptr;
            }
            pending |= fb.state == State::AtShfl;
        }
        if (!pending)
        {
            return {};
        }
        for (size_t w0 = 0; w0 < n; w0 += kWarp)
        {
            int32_t const lanes = static_cast<int32_t>(std::min<size_t>(kWarp, n - w0));
            std::string e = resolveWarp(L.fibers, w0, lanes, where + std::to_string(w0 / kWarp));
            if (!e.empty())
            {
                return e;
            }
        }
    }
}

} // namespace

ThreadCtx& current()
{
    if (tl == nullptr || tl->cur == nullptr)
    {
        std::fprintf(stderr, "zooCudaEmu: threadIdx/blockIdx read outside a kernel\n");
        std::abort();
    }
    return tl->cur->tc;
}

void setError(cudaError_t e, char const* message)
{
    if (tlLastErr == cudaSuccess)
    {
        tlLastErr = e;
        tlLastMsg = message;
    }
}

uint32_t shflXor(uint32_t mask, uint32_t bits, int32_t laneMask, int32_t width, char const* file, int32_t line)
{
    Fiber& fb = *tl->cur;
    fb.file = file;
    fb.line = line;
    fb.mask = mask;
    fb.bits = bits;
    fb.laneMask = laneMask;
    fb.width = width;
    fb.state = State::AtShfl;
    void* fake = nullptr;
    leave(false, &fake);
    fiber::swap(fb.ctx, tl->sched);
    entered(fake);
    return fb.result;
}

cudaError_t launch(dim3 grid, dim3 block, std::function<void()> const& body)
{
    size_t const n = static_cast<size_t>(block.x) * block.y * block.z;
    if (n == 0 || n > 1024 || grid.x == 0 || grid.y == 0 || grid.z == 0)
    {
        setError(cudaErrorInvalidConfiguration, "invalid launch configuration (empty grid or > 1024 threads a block)");
        return cudaErrorInvalidConfiguration;
    }
    if (tl != nullptr)
    {
        setError(cudaErrorLaunchFailure, "a kernel launched from inside a kernel (not emulated)");
        return cudaErrorLaunchFailure;
    }
    if (char const* why = fiber::unusable())
    {
        setError(cudaErrorLaunchFailure, why);
        return cudaErrorLaunchFailure;
    }
    Launcher L;
    size_t const page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    L.stacksBytes = n * (kStack + page);
    void* mem = mmap(nullptr, L.stacksBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED)
    {
        setError(cudaErrorLaunchFailure, "could not map the fibers' stacks");
        return cudaErrorLaunchFailure;
    }
    L.stacks = static_cast<char*>(mem);
    for (size_t i = 0; i < n; ++i)
    {
        mprotect(L.stacks + i * (kStack + page), page, PROT_NONE);
    }
    L.fibers.resize(n);
    L.body = &body;
    tl = &L;
    std::string err;
    size_t const nBlocks = static_cast<size_t>(grid.x) * grid.y * grid.z;
    std::vector<size_t> blocks;
    scheduleOrder(blocks, nBlocks);
    for (size_t k = 0; k < nBlocks && err.empty(); ++k)
    {
        size_t const b = blocks[k];
        err = runBlock(L, grid, block, dim3(static_cast<uint32_t>(b % grid.x),
            static_cast<uint32_t>((b / grid.x) % grid.y), static_cast<uint32_t>(b / (static_cast<size_t>(grid.x) * grid.y))));
    }
    tl = nullptr;
#ifdef ZOO_EMU_ASAN
    __asan_unpoison_memory_region(mem, L.stacksBytes); // fibers abandoned by an error left poisoned frames
#endif
    munmap(mem, L.stacksBytes);
    if (!err.empty())
    {
        setError(cudaErrorLaunchFailure, err.c_str());
        return cudaErrorLaunchFailure;
    }
    return cudaSuccess;
}

} // namespace zoo_emu

cudaError_t cudaGetLastError()
{
    cudaError_t const e = zoo_emu::tlLastErr;
    zoo_emu::tlLastErr = cudaSuccess;
    return e;
}

extern "C" char const* zoo_emu_last_error()
{
    return zoo_emu::tlLastMsg.c_str();
}

extern "C" void zoo_emu_reset_error()
{
    zoo_emu::tlLastErr = cudaSuccess;
    zoo_emu::tlLastMsg.clear();
}

extern "C" char const* zoo_emu_fiber_switch()
{
    return zoo_emu::fiber::kSwitch;
}

extern "C" void zoo_emu_set_schedule(int32_t mode, uint64_t seed)
{
    zoo_emu::tlSchedule = mode;
    zoo_emu::tlSeed = seed != 0 ? seed : 0x9E3779B97F4A7C15ull;
}
