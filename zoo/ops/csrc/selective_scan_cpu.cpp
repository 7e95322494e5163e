// Fused CPU selective scan (Mamba-1), forward + backward.
//
// Math, per batch b, channel e, state n (same as mamba_ssm selective_scan_ref):
//   dt[t] = delta[b,e,t] (+ delta_bias[e]);  if softplus: dt = log1p(exp(dt)) (dt > 20 -> dt)
//   h[n]  = exp(dt*A[e,n]) * h[n] + dt * B[b,n,t] * u[b,e,t]       (h = initial_state or 0)
//   y[t]  = sum_n C[b,n,t] * h[n] + D[e] * u[b,e,t];  if z: y *= silu(z[b,e,t])
//
// Layout / strategy
//   * B and C are transposed once per call to [B, L, N] so the inner loop over the state
//     dimension n is contiguous (and vectorised with `#pragma omp simd`).
//   * One (b, e) row is a sequential scan over t that keeps h[N] in cache; rows are
//     processed in parallel with at::parallel_for.  No [B, E, L, N] tensor is ever built.
//   * Forward stores a checkpoint of h every `chunk` steps: [B, E, ceil(L/chunk), N]
//     (checkpoint c = state *before* step c*chunk; checkpoint 0 = initial state).
//     With chunk = 32 and N = 32 this is the size of one [B, E, L] tensor.
//   * Backward walks the chunks in reverse; inside a chunk it recomputes h (and exp(dt*A))
//     from the checkpoint into a small per-thread scratch of (chunk+1)*N + chunk*N values,
//     then runs the reverse-time adjoint recursion.  Total cost: one extra forward pass.
//   * Gradients of shared tensors: dA [E,N] is written per (b,e) and summed over b;
//     dB, dC [B,N,L] are accumulated per work item (b, block of channels) into private
//     [L,N] buffers and reduced over the blocks afterwards -> no races, deterministic.
//
// exp(): for float32 a branch-free Cephes-style expf (rel. error ~1e-7) that the compiler
// can vectorise (std::exp is not vectorised without -ffast-math); inputs below ~-87 give
// exactly 0 (true value < 2e-38), above 88.72 give +inf, NaN propagates.  float64 uses
// std::exp.  Built with -O3 -fno-trapping-math (needed for GCC to if-convert and vectorise
// the exp loop; results are unchanged).  The kernels (the `#else` branch at the bottom of this file) are compiled twice,
// by including this file into itself: once for the x86-64 baseline and once under
// `#pragma GCC target("avx2,fma")`; the AVX2 copy is chosen at run time when the CPU has
// AVX2+FMA (__builtin_cpu_supports), so the binary stays portable (no -march=native).

#ifndef ZOO_SS_KERNEL_BODY
#define ZOO_SS_KERNEL_BODY 1

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#define ZOO_INLINE inline __attribute__((always_inline))

namespace {

struct RowArgs {
  int64_t L, N, chunk;
  bool softplus;
};

}  // namespace

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define ZOO_HAVE_AVX2_PATH 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace zoo_avx2 {
namespace {
#include __FILE__
}  // namespace
}  // namespace zoo_avx2
#pragma GCC pop_options
#endif

namespace zoo_base {
namespace {
#include __FILE__
}  // namespace
}  // namespace zoo_base

namespace {

bool use_avx2() {
#ifdef ZOO_HAVE_AVX2_PATH
  static const bool v = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return v;
#else
  return false;
#endif
}

#ifdef ZOO_HAVE_AVX2_PATH
#define ZOO_DISPATCH(fn, ...) (use_avx2() ? zoo_avx2::fn(__VA_ARGS__) : zoo_base::fn(__VA_ARGS__))
#else
#define ZOO_DISPATCH(fn, ...) zoo_base::fn(__VA_ARGS__)
#endif

inline void fwd_row(const RowArgs& a, const float* u, const float* delta, const float* z,
                    const float* A, const float* Bt, const float* Ct, float Dv, float bias,
                    const float* h0, float* out, float* last, float* ckpt, float* h) {
  ZOO_DISPATCH(fwd_row_f32, a, u, delta, z, A, Bt, Ct, Dv, bias, h0, out, last, ckpt, h);
}
inline void fwd_row(const RowArgs& a, const double* u, const double* delta, const double* z,
                    const double* A, const double* Bt, const double* Ct, double Dv, double bias,
                    const double* h0, double* out, double* last, double* ckpt, double* h) {
  ZOO_DISPATCH(fwd_row_f64, a, u, delta, z, A, Bt, Ct, Dv, bias, h0, out, last, ckpt, h);
}
template <typename T>
inline void bwd_row(const RowArgs& a, const T* u, const T* delta, const T* z, const T* A,
                    const T* Bt, const T* Ct, T Dv, T bias, const T* ckpt, const T* dout,
                    const T* dlast, T* du, T* ddelta, T* dz, T* dA, T* dD, T* dbias, T* dh0,
                    T* dBt, T* dCt, T* hs, T* dAs, T* dts, T* dh, T* dAacc) {
  if constexpr (std::is_same_v<T, float>) {
    ZOO_DISPATCH(bwd_row_f32, a, u, delta, z, A, Bt, Ct, Dv, bias, ckpt, dout, dlast, du, ddelta, dz, dA, dD,
                dbias, dh0, dBt, dCt, hs, dAs, dts, dh, dAacc);
  } else {
    ZOO_DISPATCH(bwd_row_f64, a, u, delta, z, A, Bt, Ct, Dv, bias, ckpt, dout, dlast, du, ddelta, dz, dA, dD,
                dbias, dh0, dBt, dCt, hs, dAs, dts, dh, dAacc);
  }
}

const at::Tensor* opt(const c10::optional<at::Tensor>& t) {
  return (t.has_value() && t->defined()) ? &t.value() : nullptr;
}

void check_input(const at::Tensor& t, const char* name, at::ScalarType dtype,
                 std::vector<int64_t> shape) {
  TORCH_CHECK(t.device().is_cpu(), "selective_scan_cpu: ", name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == dtype, "selective_scan_cpu: ", name, " has dtype ",
              t.scalar_type(), ", expected ", dtype);
  TORCH_CHECK(t.sizes() == at::IntArrayRef(shape), "selective_scan_cpu: ", name, " has shape ",
              t.sizes(), ", expected ", at::IntArrayRef(shape));
  TORCH_CHECK(t.is_contiguous(), "selective_scan_cpu: ", name, " must be contiguous");
}

int64_t grain_rows(int64_t L, int64_t N) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, L * N));
}

}  // namespace

// Returns (out [B,E,L], last_state [B,E,N], checkpoints [B,E,ceil(L/chunk),N]).
std::vector<at::Tensor> selective_scan_fwd(const at::Tensor& u, const at::Tensor& delta,
                                           const at::Tensor& A, const at::Tensor& B,
                                           const at::Tensor& C,
                                           const c10::optional<at::Tensor>& D_,
                                           const c10::optional<at::Tensor>& z_,
                                           const c10::optional<at::Tensor>& delta_bias_,
                                           bool delta_softplus,
                                           const c10::optional<at::Tensor>& h0_, int64_t chunk) {
  TORCH_CHECK(u.dim() == 3, "selective_scan_cpu: u must be [B, E, L]");
  TORCH_CHECK(A.dim() == 2, "selective_scan_cpu: A must be [E, N]");
  TORCH_CHECK(chunk >= 1, "selective_scan_cpu: chunk must be >= 1");
  const int64_t Bsz = u.size(0), E = u.size(1), L = u.size(2), N = A.size(1);
  const auto dtype = u.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble,
              "selective_scan_cpu: only float32/float64 supported, got ", dtype);
  check_input(u, "u", dtype, {Bsz, E, L});
  check_input(delta, "delta", dtype, {Bsz, E, L});
  check_input(A, "A", dtype, {E, N});
  check_input(B, "B", dtype, {Bsz, N, L});
  check_input(C, "C", dtype, {Bsz, N, L});
  const at::Tensor* D = opt(D_);
  const at::Tensor* z = opt(z_);
  const at::Tensor* bias = opt(delta_bias_);
  const at::Tensor* h0 = opt(h0_);
  if (D) check_input(*D, "D", dtype, {E});
  if (z) check_input(*z, "z", dtype, {Bsz, E, L});
  if (bias) check_input(*bias, "delta_bias", dtype, {E});
  if (h0) check_input(*h0, "initial_state", dtype, {Bsz, E, N});

  const int64_t nchunk = (L + chunk - 1) / chunk;
  at::Tensor Bt = B.transpose(1, 2).contiguous();  // [B, L, N]
  at::Tensor Ct = C.transpose(1, 2).contiguous();
  at::Tensor out = at::empty({Bsz, E, L}, u.options());
  at::Tensor last = at::empty({Bsz, E, N}, u.options());
  at::Tensor ckpt = at::empty({Bsz, E, nchunk, N}, u.options());
  RowArgs ra{L, N, chunk, delta_softplus};

  AT_DISPATCH_FLOATING_TYPES(dtype, "selective_scan_fwd", [&] {
    using T = scalar_t;
    const T* up = u.data_ptr<T>();
    const T* dp = delta.data_ptr<T>();
    const T* Ap = A.data_ptr<T>();
    const T* Bp = Bt.data_ptr<T>();
    const T* Cp = Ct.data_ptr<T>();
    const T* Dp = D ? D->data_ptr<T>() : nullptr;
    const T* zp = z ? z->data_ptr<T>() : nullptr;
    const T* bp = bias ? bias->data_ptr<T>() : nullptr;
    const T* h0p = h0 ? h0->data_ptr<T>() : nullptr;
    T* op = out.data_ptr<T>();
    T* lp = last.data_ptr<T>();
    T* cp = ckpt.data_ptr<T>();
    at::parallel_for(0, Bsz * E, grain_rows(L, N), [&](int64_t begin, int64_t end) {
      std::vector<T> h(N);
      for (int64_t r = begin; r < end; ++r) {
        const int64_t b = r / E, e = r % E;
        fwd_row(ra, up + r * L, dp + r * L, zp ? zp + r * L : nullptr, Ap + e * N,
                Bp + b * L * N, Cp + b * L * N, Dp ? Dp[e] : T(0), bp ? bp[e] : T(0),
                h0p ? h0p + r * N : nullptr, op + r * L, lp + r * N, cp + r * nchunk * N,
                h.data());
      }
    });
  });
  return {out, last, ckpt};
}

// Returns (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial_state); dD / dz / ddelta_bias
// are undefined tensors when the corresponding input was not given.
std::vector<at::Tensor> selective_scan_bwd(
    const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
    const at::Tensor& C, const c10::optional<at::Tensor>& D_, const c10::optional<at::Tensor>& z_,
    const c10::optional<at::Tensor>& delta_bias_, bool delta_softplus, const at::Tensor& ckpt,
    const at::Tensor& dout, const c10::optional<at::Tensor>& dlast_, int64_t chunk) {
  TORCH_CHECK(u.dim() == 3 && A.dim() == 2, "selective_scan_cpu backward: bad shapes");
  const int64_t Bsz = u.size(0), E = u.size(1), L = u.size(2), N = A.size(1);
  const auto dtype = u.scalar_type();
  const int64_t nchunk = (L + chunk - 1) / chunk;
  check_input(u, "u", dtype, {Bsz, E, L});
  check_input(delta, "delta", dtype, {Bsz, E, L});
  check_input(A, "A", dtype, {E, N});
  check_input(B, "B", dtype, {Bsz, N, L});
  check_input(C, "C", dtype, {Bsz, N, L});
  check_input(ckpt, "checkpoints", dtype, {Bsz, E, nchunk, N});
  check_input(dout, "grad_out", dtype, {Bsz, E, L});
  const at::Tensor* D = opt(D_);
  const at::Tensor* z = opt(z_);
  const at::Tensor* bias = opt(delta_bias_);
  const at::Tensor* dlast = opt(dlast_);
  if (D) check_input(*D, "D", dtype, {E});
  if (z) check_input(*z, "z", dtype, {Bsz, E, L});
  if (bias) check_input(*bias, "delta_bias", dtype, {E});
  if (dlast) check_input(*dlast, "grad_last_state", dtype, {Bsz, E, N});

  at::Tensor Bt = B.transpose(1, 2).contiguous();  // [B, L, N]
  at::Tensor Ct = C.transpose(1, 2).contiguous();

  // Work items: (b, block of channels).  Enough items to keep every thread busy, few enough
  // that the private dB/dC buffers ([B, n_eblk, L, N]) stay small.
  const int64_t nthreads = std::max<int64_t>(1, at::get_num_threads());
  int64_t n_eblk = std::min<int64_t>(E, std::max<int64_t>(1, (4 * nthreads + Bsz - 1) / std::max<int64_t>(1, Bsz)));
  n_eblk = std::max<int64_t>(1, n_eblk);
  const int64_t eblk = (E + n_eblk - 1) / std::max<int64_t>(1, n_eblk);
  n_eblk = E > 0 ? (E + eblk - 1) / eblk : 1;

  auto opts = u.options();
  at::Tensor du = at::empty({Bsz, E, L}, opts);
  at::Tensor ddelta = at::empty({Bsz, E, L}, opts);
  at::Tensor dz = z ? at::empty({Bsz, E, L}, opts) : at::Tensor();
  at::Tensor dA_be = at::empty({Bsz, E, N}, opts);
  at::Tensor dD_be = at::empty({Bsz, E}, opts);
  at::Tensor dbias_be = at::empty({Bsz, E}, opts);
  at::Tensor dh0 = at::empty({Bsz, E, N}, opts);
  at::Tensor dBt_part = at::zeros({Bsz, n_eblk, L, N}, opts);
  at::Tensor dCt_part = at::zeros({Bsz, n_eblk, L, N}, opts);
  RowArgs ra{L, N, chunk, delta_softplus};

  AT_DISPATCH_FLOATING_TYPES(dtype, "selective_scan_bwd", [&] {
    using T = scalar_t;
    const T* up = u.data_ptr<T>();
    const T* dp = delta.data_ptr<T>();
    const T* Ap = A.data_ptr<T>();
    const T* Bp = Bt.data_ptr<T>();
    const T* Cp = Ct.data_ptr<T>();
    const T* Dp = D ? D->data_ptr<T>() : nullptr;
    const T* zp = z ? z->data_ptr<T>() : nullptr;
    const T* bp = bias ? bias->data_ptr<T>() : nullptr;
    const T* cp = ckpt.data_ptr<T>();
    const T* gp = dout.data_ptr<T>();
    const T* glp = dlast ? dlast->data_ptr<T>() : nullptr;
    T* dup = du.data_ptr<T>();
    T* ddp = ddelta.data_ptr<T>();
    T* dzp = z ? dz.data_ptr<T>() : nullptr;
    T* dAp = dA_be.data_ptr<T>();
    T* dDp = dD_be.data_ptr<T>();
    T* dbp = dbias_be.data_ptr<T>();
    T* dh0p = dh0.data_ptr<T>();
    T* dBp = dBt_part.data_ptr<T>();
    T* dCp = dCt_part.data_ptr<T>();
    at::parallel_for(0, Bsz * n_eblk, 1, [&](int64_t begin, int64_t end) {
      const int64_t K = std::min<int64_t>(chunk, std::max<int64_t>(L, 1));
      std::vector<T> hs((K + 1) * N), dAs(K * N), dts(K), dh(N), dAacc(N);
      for (int64_t w = begin; w < end; ++w) {
        const int64_t b = w / n_eblk, eb = w % n_eblk;
        T* dBw = dBp + w * L * N;
        T* dCw = dCp + w * L * N;
        const int64_t e_end = std::min(E, (eb + 1) * eblk);
        for (int64_t e = eb * eblk; e < e_end; ++e) {
          const int64_t r = b * E + e;
          bwd_row<T>(ra, up + r * L, dp + r * L, zp ? zp + r * L : nullptr, Ap + e * N,
                     Bp + b * L * N, Cp + b * L * N, Dp ? Dp[e] : T(0), bp ? bp[e] : T(0),
                     cp + r * nchunk * N, gp + r * L, glp ? glp + r * N : nullptr, dup + r * L,
                     ddp + r * L, dzp ? dzp + r * L : nullptr, dAp + r * N, dDp + r, dbp + r,
                     dh0p + r * N, dBw, dCw, hs.data(), dAs.data(), dts.data(), dh.data(),
                     dAacc.data());
        }
      }
    });
  });

  at::Tensor dA = dA_be.sum(0);
  at::Tensor dBt = n_eblk == 1 ? dBt_part.select(1, 0) : dBt_part.sum(1);  // [B, L, N]
  at::Tensor dCt = n_eblk == 1 ? dCt_part.select(1, 0) : dCt_part.sum(1);
  at::Tensor dB = dBt.transpose(1, 2).contiguous();
  at::Tensor dC = dCt.transpose(1, 2).contiguous();
  at::Tensor dD = D ? dD_be.sum(0) : at::Tensor();
  at::Tensor dbias = bias ? dbias_be.sum(0) : at::Tensor();
  return {du, ddelta, dA, dB, dC, dD, dz, dbias, dh0};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("fwd", &selective_scan_fwd, "fused selective scan forward (CPU)", py::arg("u"),
        py::arg("delta"), py::arg("A"), py::arg("B"), py::arg("C"), py::arg("D"), py::arg("z"),
        py::arg("delta_bias"), py::arg("delta_softplus"), py::arg("initial_state"),
        py::arg("chunk"));
  m.def("bwd", &selective_scan_bwd, "fused selective scan backward (CPU)", py::arg("u"),
        py::arg("delta"), py::arg("A"), py::arg("B"), py::arg("C"), py::arg("D"), py::arg("z"),
        py::arg("delta_bias"), py::arg("delta_softplus"), py::arg("checkpoints"),
        py::arg("grad_out"), py::arg("grad_last_state"), py::arg("chunk"));
}

#else  // ZOO_SS_KERNEL_BODY: the kernels, included twice above (baseline and AVX2+FMA)

ZOO_INLINE float vexp(float x) {
  const float hi = 88.7228391f;    // log(FLT_MAX)
  const float lo = -87.3365448f;   // log(FLT_MIN)
  float xc = x > hi ? hi : x;
  xc = xc < lo ? lo : xc;
  const float magic = 12582912.0f;  // 1.5 * 2^23: round-to-nearest trick
  float kf = xc * 1.44269504088896341f + magic;
  kf = kf - magic;
  float r = xc - kf * 0.693359375f;
  r = r - kf * (-2.12194440e-4f);
  float p = 1.9875691500E-4f;
  p = p * r + 1.3981999507E-3f;
  p = p * r + 8.3334519073E-3f;
  p = p * r + 4.1665795894E-2f;
  p = p * r + 1.6666665459E-1f;
  p = p * r + 5.0000001201E-1f;
  p = p * r * r + r + 1.0f;
  int32_t k = static_cast<int32_t>(kf);       // in [-126, 128]
  int32_t bits = (k + 126) << 23;             // 2^(k-1), exponent field in [0, 254]
  const float scale = __builtin_bit_cast(float, bits);
  float res = (p * 2.0f) * scale;
  res = x > hi ? std::numeric_limits<float>::infinity() : res;
  res = x < lo ? 0.0f : res;
  res = (x != x) ? x : res;
  return res;
}

ZOO_INLINE double vexp(double x) { return std::exp(x); }

template <typename T>
ZOO_INLINE T softplus_fwd(T x) {
  return x > T(20) ? x : std::log1p(std::exp(x));
}

template <typename T>
ZOO_INLINE T sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

// ---------------------------------------------------------------- inner loops over n
// Kept out of line (noinline): GCC vectorises them reliably on their own; inlined into the
// time loop, if-conversion of vexp failed.  Reductions use explicit 8-lane partial sums (no
// -ffast-math needed; the summation order is fixed, so results are deterministic).
#define ZOO_NOINLINE __attribute__((noinline))
constexpr int64_t kLanes = 8;

template <typename T>
ZOO_INLINE T lane_sum(const T* s) {
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

template <typename T>
ZOO_NOINLINE void step_recompute(const T* __restrict A, const T* __restrict Bp,
                                 const T* __restrict hp, T* __restrict hc, T* __restrict ea, T dt,
                                 T du, int64_t N) {
#pragma omp simd
  for (int64_t n = 0; n < N; ++n) {
    const T dA = vexp(dt * A[n]);
    ea[n] = dA;
    hc[n] = dA * hp[n] + du * Bp[n];
  }
}

template <typename T>
ZOO_NOINLINE T dot(const T* __restrict a, const T* __restrict b, int64_t N) {
  T s[kLanes] = {};
  int64_t n = 0;
  for (; n + kLanes <= N; n += kLanes)
    for (int64_t j = 0; j < kLanes; ++j) s[j] += a[n + j] * b[n + j];
  for (; n < N; ++n) s[0] += a[n] * b[n];
  return lane_sum(s);
}

// h = exp(dt*A) * h + du * B; returns sum_n C * h
template <typename T>
ZOO_NOINLINE T step_fwd(const T* __restrict A, const T* __restrict Bp, const T* __restrict Cp,
                        T* __restrict h, T dt, T du, int64_t N) {
#pragma omp simd
  for (int64_t n = 0; n < N; ++n) h[n] = vexp(dt * A[n]) * h[n] + du * Bp[n];
  return dot(Cp, h, N);
}

template <typename T>
ZOO_INLINE void adjoint_one(const T* __restrict A, const T* __restrict Bp, const T* __restrict Cp,
                            const T* __restrict hp, const T* __restrict hc,
                            const T* __restrict ea, T* __restrict dh, T* __restrict dBp,
                            T* __restrict dCp, T* __restrict dAacc, T g, T dt, T du, int64_t n,
                            T& sB, T& sT) {
  const T dhn = dh[n] + g * Cp[n];
  dCp[n] += g * hc[n];
  dBp[n] += dhn * du;
  sB += dhn * Bp[n];
  const T hA = dhn * hp[n] * ea[n];  // dL/d(dt*A[n])
  sT += hA * A[n];
  dAacc[n] += hA * dt;
  dh[n] = dhn * ea[n];
}

template <typename T>
ZOO_NOINLINE void step_adjoint(const T* __restrict A, const T* __restrict Bp,
                               const T* __restrict Cp, const T* __restrict hp,
                               const T* __restrict hc, const T* __restrict ea, T* __restrict dh,
                               T* __restrict dBp, T* __restrict dCp, T* __restrict dAacc, T g,
                               T dt, T du, int64_t N, T* sdhB, T* sddt) {
  T sB[kLanes] = {}, sT[kLanes] = {};
  int64_t n = 0;
  for (; n + kLanes <= N; n += kLanes)
    for (int64_t j = 0; j < kLanes; ++j)
      adjoint_one(A, Bp, Cp, hp, hc, ea, dh, dBp, dCp, dAacc, g, dt, du, n + j, sB[j], sT[j]);
  for (; n < N; ++n)
    adjoint_one(A, Bp, Cp, hp, hc, ea, dh, dBp, dCp, dAacc, g, dt, du, n, sB[0], sT[0]);
  *sdhB = lane_sum(sB);
  *sddt = lane_sum(sT);
}

// ---------------------------------------------------------------- forward, one (b, e) row
template <typename T>
ZOO_INLINE void fwd_row_impl(const RowArgs& a, const T* __restrict u, const T* __restrict delta,
                             const T* __restrict z, const T* __restrict A, const T* __restrict Bt,
                             const T* __restrict Ct, T Dv, T bias, const T* __restrict h0,
                             T* __restrict out, T* __restrict last, T* __restrict ckpt,
                             T* __restrict h) {
  const int64_t L = a.L, N = a.N, K = a.chunk;
  if (h0) {
    for (int64_t n = 0; n < N; ++n) h[n] = h0[n];
  } else {
    for (int64_t n = 0; n < N; ++n) h[n] = T(0);
  }
  for (int64_t t = 0; t < L; ++t) {
    if (t % K == 0) {
      T* dst = ckpt + (t / K) * N;
      for (int64_t n = 0; n < N; ++n) dst[n] = h[n];
    }
    T dt = delta[t] + bias;
    if (a.softplus) dt = softplus_fwd(dt);
    const T ut = u[t];
    const T du = dt * ut;
    const T* __restrict Bp = Bt + t * N;
    const T* __restrict Cp = Ct + t * N;
    T y = step_fwd(A, Bp, Cp, h, dt, du, N) + Dv * ut;
    if (z) {
      const T zt = z[t];
      y = y * (zt * sigmoid(zt));
    }
    out[t] = y;
  }
  for (int64_t n = 0; n < N; ++n) last[n] = h[n];
}

// ---------------------------------------------------------------- backward, one (b, e) row
// Accumulates into dBt/dCt ([L, N], private to the calling work item), writes the rest.
template <typename T>
ZOO_INLINE void bwd_row_impl(const RowArgs& a, const T* __restrict u, const T* __restrict delta,
                             const T* __restrict z, const T* __restrict A, const T* __restrict Bt,
                             const T* __restrict Ct, T Dv, T bias, const T* __restrict ckpt,
                             const T* __restrict dout, const T* __restrict dlast,
                             T* __restrict du_out, T* __restrict ddelta_out, T* __restrict dz_out,
                             T* __restrict dA_out, T* __restrict dD_out, T* __restrict dbias_out,
                             T* __restrict dh0_out, T* __restrict dBt, T* __restrict dCt,
                             T* __restrict hs, T* __restrict dAs, T* __restrict dts,
                             T* __restrict dh, T* __restrict dAacc) {
  const int64_t L = a.L, N = a.N, K = a.chunk;
  const int64_t nchunk = (L + K - 1) / K;
  for (int64_t n = 0; n < N; ++n) {
    dh[n] = dlast ? dlast[n] : T(0);
    dAacc[n] = T(0);
  }
  T dD = T(0), dbias = T(0);
  for (int64_t c = nchunk - 1; c >= 0; --c) {
    const int64_t t0 = c * K;
    const int64_t t1 = std::min(L, t0 + K);
    // recompute states inside the chunk: hs[j] = h before step t0+j, hs[j+1] = after
    {
      const T* src = ckpt + c * N;
      for (int64_t n = 0; n < N; ++n) hs[n] = src[n];
    }
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t j = t - t0;
      T dt = delta[t] + bias;
      if (a.softplus) dt = softplus_fwd(dt);
      dts[j] = dt;
      const T du = dt * u[t];
      const T* __restrict Bp = Bt + t * N;
      const T* __restrict hp = hs + j * N;
      T* __restrict hc = hs + (j + 1) * N;
      T* __restrict ea = dAs + j * N;
      step_recompute(A, Bp, hp, hc, ea, dt, du, N);
    }
    // reverse-time adjoint
    for (int64_t t = t1 - 1; t >= t0; --t) {
      const int64_t j = t - t0;
      const T dt = dts[j];
      const T ut = u[t];
      const T du = dt * ut;
      const T* __restrict Bp = Bt + t * N;
      const T* __restrict Cp = Ct + t * N;
      const T* __restrict hp = hs + j * N;
      const T* __restrict hc = hs + (j + 1) * N;
      const T* __restrict ea = dAs + j * N;
      T* __restrict dBp = dBt + t * N;
      T* __restrict dCp = dCt + t * N;
      T g = dout[t];
      if (z) {
        const T y = dot(Cp, hc, N) + Dv * ut;
        const T zt = z[t];
        const T sz = sigmoid(zt);
        dz_out[t] = g * y * sz * (T(1) + zt * (T(1) - sz));
        g = g * zt * sz;
      }
      dD += g * ut;
      T sdhB, sddt;
      step_adjoint(A, Bp, Cp, hp, hc, ea, dh, dBp, dCp, dAacc, g, dt, du, N, &sdhB, &sddt);
      sddt += sdhB * ut;
      du_out[t] = g * Dv + dt * sdhB;
      T ddelta = sddt;
      if (a.softplus) {
        const T x = delta[t] + bias;
        if (!(x > T(20))) ddelta = sddt * sigmoid(x);
      }
      ddelta_out[t] = ddelta;
      dbias += ddelta;
    }
  }
  for (int64_t n = 0; n < N; ++n) {
    dh0_out[n] = dh[n];
    dA_out[n] = dAacc[n];
  }
  *dD_out = dD;
  *dbias_out = dbias;
}

// Non-template entry points so GCC can clone them per target ISA.
void fwd_row_f32(const RowArgs& a, const float* u, const float* delta, const float* z,
                            const float* A, const float* Bt, const float* Ct, float Dv, float bias,
                            const float* h0, float* out, float* last, float* ckpt, float* h) {
  fwd_row_impl<float>(a, u, delta, z, A, Bt, Ct, Dv, bias, h0, out, last, ckpt, h);
}
void fwd_row_f64(const RowArgs& a, const double* u, const double* delta,
                            const double* z, const double* A, const double* Bt, const double* Ct,
                            double Dv, double bias, const double* h0, double* out, double* last,
                            double* ckpt, double* h) {
  fwd_row_impl<double>(a, u, delta, z, A, Bt, Ct, Dv, bias, h0, out, last, ckpt, h);
}
void bwd_row_f32(const RowArgs& a, const float* u, const float* delta, const float* z,
                            const float* A, const float* Bt, const float* Ct, float Dv, float bias,
                            const float* ckpt, const float* dout, const float* dlast, float* du,
                            float* ddelta, float* dz, float* dA, float* dD, float* dbias,
                            float* dh0, float* dBt, float* dCt, float* hs, float* dAs, float* dts,
                            float* dh, float* dAacc) {
  bwd_row_impl<float>(a, u, delta, z, A, Bt, Ct, Dv, bias, ckpt, dout, dlast, du, ddelta, dz, dA,
                      dD, dbias, dh0, dBt, dCt, hs, dAs, dts, dh, dAacc);
}
void bwd_row_f64(const RowArgs& a, const double* u, const double* delta,
                            const double* z, const double* A, const double* Bt, const double* Ct,
                            double Dv, double bias, const double* ckpt, const double* dout,
                            const double* dlast, double* du, double* ddelta, double* dz,
                            double* dA, double* dD, double* dbias, double* dh0, double* dBt,
                            double* dCt, double* hs, double* dAs, double* dts, double* dh,
                            double* dAacc) {
  bwd_row_impl<double>(a, u, delta, z, A, Bt, Ct, Dv, bias, ckpt, dout, dlast, du, ddelta, dz, dA,
                       dD, dbias, dh0, dBt, dCt, hs, dAs, dts, dh, dAacc);
}

#endif  // ZOO_SS_KERNEL_BODY
