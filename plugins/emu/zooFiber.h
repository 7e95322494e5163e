// Switching between the emulator's fibers (included by zooCudaEmu.cpp only).
//
// The emulator switches between a block's CUDA threads at every warp shuffle: two switches a lane a shuffle, millions
// in a matrix run. glibc's swapcontext makes an rt_sigprocmask system call at each (it saves and restores the signal
// mask), which was most of the emulator's time. A fiber here never changes the signal mask, so the default switch is
// a user-space one, as boost.context's jump_fcontext: push the callee-saved registers and the floating-point control
// state on the running stack, store the stack pointer, load the other fiber's, pop its registers, return into it.
// Everything else a C++ function may clobber across a call is the compiler's to save, since the switch is a call.
//
//   x86-64 (System V) : rbx, rbp, r12-r15, MXCSR and the x87 control word
//   aarch64 (AAPCS64) : x19-x29, lr, d8-d15 (their low halves are the callee-saved part of v8-v15), fpcr
//   elsewhere, or built with -DZOO_EMU_UCONTEXT : ucontext's getcontext / makecontext / swapcontext, as before
//
// MXCSR and fpcr are saved whole, as glibc's swapcontext does: a fiber that changes its rounding mode (or raises an
// exception flag) keeps it to itself, and the launching thread gets its own back.
#pragma once

#include <cstddef>
#include <cstdint>

#if !defined(ZOO_EMU_UCONTEXT) && !defined(__x86_64__) && !defined(__aarch64__)
#define ZOO_EMU_UCONTEXT 1
#endif

#ifdef ZOO_EMU_UCONTEXT
#include <ucontext.h>
#endif

namespace zoo_emu
{
namespace fiber
{

#ifdef ZOO_EMU_UCONTEXT

constexpr char const* kSwitch = "ucontext (swapcontext)";

struct Context
{
    ucontext_t uc;
};

//! A context that runs entry() on [stack, stack + size) when first switched to, and `link` when entry() returns.
inline void make(Context& c, void* stack, size_t size, void (*entry)(), Context& link)
{
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = stack;
    c.uc.uc_stack.ss_size = size;
    c.uc.uc_link = &link.uc;
    makecontext(&c.uc, entry, 0);
}

//! Saves the running context in `from` and resumes `to`; returns when something switches back to `from`.
inline void swap(Context& from, Context& to)
{
    swapcontext(&from.uc, &to.uc);
}

//! Last words of a fiber's entry(): ucontext's uc_link resumes the scheduler when entry() returns.
inline void finish(Context&, Context&) {}

//! Nothing a launch must refuse (glibc's swapcontext keeps a shadow stack of its own where one is active).
inline char const* unusable()
{
    return nullptr;
}

#else // the user-space switch

} // namespace fiber
} // namespace zoo_emu

extern "C"
{
//! Pushes the callee-saved registers and FP control state, stores the stack pointer in *save, loads `to`, pops that
//! fiber's registers and returns into it.
__attribute__((visibility("hidden"))) void zoo_emu_jump(void** save, void* to);
//! Where a new fiber's first switch returns to: calls its entry (in x86-64's r12 / aarch64's x19), traps if it
//! returns (it never does: fiberMain switches away for good).
__attribute__((visibility("hidden"))) void zoo_emu_fiber_start();
}

#if defined(__x86_64__)
asm(R"(
    .text
    .p2align 4
    .globl zoo_emu_jump
    .hidden zoo_emu_jump
    .type zoo_emu_jump, @function
zoo_emu_jump:
    pushq %rbp
    pushq %rbx
    pushq %r15
    pushq %r14
    pushq %r13
    pushq %r12
    leaq -8(%rsp), %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    leaq 8(%rsp), %rsp
    popq %r12
    popq %r13
    popq %r14
    popq %r15
    popq %rbx
    popq %rbp
    ret
    .size zoo_emu_jump, .-zoo_emu_jump

    .p2align 4
    .globl zoo_emu_fiber_start
    .hidden zoo_emu_fiber_start
    .type zoo_emu_fiber_start, @function
zoo_emu_fiber_start:
    callq *%r12
    ud2
    .size zoo_emu_fiber_start, .-zoo_emu_fiber_start
)");
#else // __aarch64__
asm(R"(
    .text
    .p2align 4
    .globl zoo_emu_jump
    .hidden zoo_emu_jump
    .type zoo_emu_jump, %function
zoo_emu_jump:
    sub sp, sp, #176
    stp x19, x20, [sp, #0]
    stp x21, x22, [sp, #16]
    stp x23, x24, [sp, #32]
    stp x25, x26, [sp, #48]
    stp x27, x28, [sp, #64]
    stp x29, x30, [sp, #80]
    stp d8, d9, [sp, #96]
    stp d10, d11, [sp, #112]
    stp d12, d13, [sp, #128]
    stp d14, d15, [sp, #144]
    mrs x9, fpcr
    str x9, [sp, #160]
    mov x9, sp
    str x9, [x0]
    mov sp, x1
    ldp x19, x20, [sp, #0]
    ldp x21, x22, [sp, #16]
    ldp x23, x24, [sp, #32]
    ldp x25, x26, [sp, #48]
    ldp x27, x28, [sp, #64]
    ldp x29, x30, [sp, #80]
    ldp d8, d9, [sp, #96]
    ldp d10, d11, [sp, #112]
    ldp d12, d13, [sp, #128]
    ldp d14, d15, [sp, #144]
    ldr x9, [sp, #160]
    msr fpcr, x9
    add sp, sp, #176
    ret
    .size zoo_emu_jump, .-zoo_emu_jump

    .p2align 4
    .globl zoo_emu_fiber_start
    .hidden zoo_emu_fiber_start
    .type zoo_emu_fiber_start, %function
zoo_emu_fiber_start:
    blr x19
    brk #1
    .size zoo_emu_fiber_start, .-zoo_emu_fiber_start
)");
#endif

namespace zoo_emu
{
namespace fiber
{

#if defined(__x86_64__)
constexpr char const* kSwitch = "x86-64 (user-space switch)";
#else
constexpr char const* kSwitch = "aarch64 (user-space switch)";
#endif

struct Context
{
    void* sp = nullptr; // the saved stack pointer; the registers lie on the stack it points into
};

//! A context that runs entry() on [stack, stack + size) when first switched to. entry() must not return: it ends
//! with finish(), which switches to `link` for good.
inline void make(Context& c, void* stack, size_t size, void (*entry)(), Context& /*link*/)
{
    // the frame zoo_emu_jump pops: zeros but for the entry, the return address into zoo_emu_fiber_start and the FP
    // control state, which a new fiber takes from the thread that makes it (as getcontext does). A zero frame pointer
    // ends the frame chain there, for unwinders (ASan's reports).
    uintptr_t const top = (reinterpret_cast<uintptr_t>(stack) + size) & ~uintptr_t{15};
#if defined(__x86_64__)
    // mxcsr | x87 cw, r12 (the entry), r13, r14, r15, rbx, rbp, return address: zoo_emu_fiber_start starts with the
    // stack 16-byte aligned, so the entry it calls sees the ABI's alignment
    uint64_t* f = reinterpret_cast<uint64_t*>(top - 64);
    uint32_t mxcsr;
    uint16_t cw;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(cw));
    for (int32_t i = 0; i < 8; ++i)
    {
        f[i] = 0;
    }
    f[0] = mxcsr | static_cast<uint64_t>(cw) << 32;
    f[1] = reinterpret_cast<uint64_t>(entry);
    f[7] = reinterpret_cast<uint64_t>(&zoo_emu_fiber_start);
#else
    // x19 (the entry) .. x28, x29 (frame pointer), x30 (return address), d8-d15, fpcr, padding: 176 bytes, sp stays
    // 16-byte aligned
    uint64_t* f = reinterpret_cast<uint64_t*>(top - 176);
    uint64_t fpcr;
    asm volatile("mrs %0, fpcr" : "=r"(fpcr));
    for (int32_t i = 0; i < 22; ++i)
    {
        f[i] = 0;
    }
    f[0] = reinterpret_cast<uint64_t>(entry);
    f[11] = reinterpret_cast<uint64_t>(&zoo_emu_fiber_start);
    f[20] = fpcr;
#endif
    c.sp = f;
}

//! Saves the running context in `from` and resumes `to`; returns when something switches back to `from`.
inline void swap(Context& from, Context& to)
{
    zoo_emu_jump(&from.sp, to.sp);
}

//! Last words of a fiber's entry(): resumes `to` for good (`from` is saved and never resumed).
[[noreturn]] inline void finish(Context& from, Context& to)
{
    zoo_emu_jump(&from.sp, to.sp);
    __builtin_trap();
}

//! Why a launch cannot switch this way here, or nullptr. An active x86 shadow stack (CET) would stop the first
//! return into another fiber's stack, which the shadow stack has never seen: a launch refuses instead of crashing.
inline char const* unusable()
{
#if defined(__x86_64__)
    uint64_t ssp = 0;
    asm volatile(".byte 0xf3, 0x48, 0x0f, 0x1e, 0xc8" : "+a"(ssp)); // rdsspq %rax: a no-op without a shadow stack
    if (ssp != 0)
    {
        return "a CET shadow stack is active, which the emulator's fiber switch does not maintain: build the "
               "emulated kernels with -DZOO_EMU_UCONTEXT";
    }
#endif
    return nullptr;
}

#endif // ZOO_EMU_UCONTEXT

} // namespace fiber
} // namespace zoo_emu
