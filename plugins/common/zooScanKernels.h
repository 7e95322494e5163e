/*
 * C ABI of the scan kernels shared by the TensorRT plugins (plugins/<name>Plugin/<name>Plugin.cpp) and the ctypes harness
 * (plugins/harness.py -> libzoo_scan_kernels.so). No TensorRT type appears here, so the kernels build and are tested
 * without TensorRT headers.
 *
 * Layouts are contiguous row-major, exactly as in export/plugin_spec.py. "act" tensors use the activation dtype
 * (ZooDType: fp32 / fp16 / bf16); parameters (A, D, biases, lambda) and states (h0, h) are always fp32 and the
 * recurrence is computed in fp32. Optional pointers may be null (h0 -> zero state, D/z/bias -> absent).
 * Every launcher returns a cudaError_t value (0 = success) and never synchronizes. T >= 1: a scan over no step would
 * leave the state output unwritten, so T < 1 (like a negative dim or an N the kernels cannot hold) returns
 * cudaErrorInvalidValue before any launch.
 * Output state may alias the input state (same pointer): each thread reads its state before writing it.
 */
#pragma once
#include <cstdint>
#include <cuda_runtime_api.h>

#if defined(_WIN32)
#define ZOO_API __declspec(dllexport)
#else
#define ZOO_API __attribute__((visibility("default")))
#endif

enum ZooDType : int32_t
{
    kZOO_FLOAT32 = 0,
    kZOO_FLOAT16 = 1,
    kZOO_BFLOAT16 = 2,
};

#ifdef __cplusplus
extern "C"
{
#endif

//! Mamba-1: u, delta, z, y [B,E,T] act; A [E,N]; Bm, Cm [B,N,T] act; D, delta_bias [E]; h0, h [B,E,N] fp32. N <= 256.
ZOO_API int32_t zoo_selective_scan(int32_t dtype, void const* u, void const* delta, float const* A, void const* Bm,
    void const* Cm, float const* D, void const* z, float const* delta_bias, float const* h0, void* y, float* h,
    int32_t batch, int32_t E, int32_t N, int32_t T, int32_t delta_softplus, cudaStream_t stream);

//! Mamba-2 / SSD: x, y [B,T,H,P] act; dt [B,T,H] act; A, D, dt_bias [H]; Bm, Cm [B,T,G,N] act; h0, h [B,H,P,N] fp32.
//! H % G == 0 (head h uses group h / (H / G)). N <= 256.
ZOO_API int32_t zoo_ssd_scan(int32_t dtype, void const* x, void const* dt, float const* A, void const* Bm,
    void const* Cm, float const* D, float const* dt_bias, float const* h0, void* y, float* h, int32_t batch,
    int32_t T, int32_t H, int32_t P, int32_t G, int32_t N, int32_t dt_softplus, cudaStream_t stream);

//! LRU: u_re, u_im, h_re, h_im [B,T,N] act; lam_re, lam_im [N]; h0_re, h0_im [B,N] fp32 (null -> 0).
ZOO_API int32_t zoo_lru_scan(int32_t dtype, void const* u_re, void const* u_im, float const* lam_re,
    float const* lam_im, float const* h0_re, float const* h0_im, void* h_re, void* h_im, int32_t batch, int32_t T,
    int32_t N, cudaStream_t stream);

//! Largest state size N the Mamba kernels accept.
ZOO_API int32_t zoo_scan_max_state();

//! The plugin_spec constants compiled into this library, as JSON (checked against export/plugin_spec.py by tests).
ZOO_API char const* zoo_trt_plugins_spec_json();

#ifdef __cplusplus
}
#endif
