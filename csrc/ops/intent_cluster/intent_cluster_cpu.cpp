// CPU kernels of intent_cluster (contract in intent_cluster.h).
//
// One batch row is the unit of work: its n normalised positions, its K normalised
// prototypes and its [n, K] probabilities live in small per-thread buffers (L1/L2
// sized for SINE's n = 50, D = 128, K = 4), so nothing of size [B, n, D] or [B, n, L]
// is written besides the outputs. The backward recomputes the normalised vectors from
// x and the prototypes. The small products (one side of size K) are plain loops
// written so that the compiler vectorises them along D; when K is large (no `active`
// with hundreds of prototypes) they go to BLAS through at::mm on the same buffers.
#include "ops/intent_cluster/intent_cluster.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "ops/common/check.h"

namespace seqrec::ops {
namespace {

constexpr const char* kOp = "intent_cluster";
constexpr const char* kOpBwd = "intent_cluster_backward";
// F.normalize's floor on the norm; part of the op's definition (see the header).
constexpr double kNormFloor = 1e-12;
// With more prototypes than this per row, the [n x K] products go to BLAS.
constexpr int64_t kBlasMinProtos = 32;

// ---------------------------------------------------------------------------------
// Vector helpers. Lane-wise partial sums make the reductions vectorisable without
// -ffast-math (the summation order is fixed by the code, not by the compiler).
template <typename T>
constexpr int kLanes = 32 / static_cast<int>(sizeof(T));

template <typename T>
inline T vsum(const T* a, int64_t D) {
  constexpr int W = kLanes<T>;
  T acc[W] = {};
  int64_t d = 0;
  for (; d + W <= D; d += W)
    for (int l = 0; l < W; ++l) acc[l] += a[d + l];
  T s = 0;
  for (int l = 0; l < W; ++l) s += acc[l];
  for (; d < D; ++d) s += a[d];
  return s;
}

template <typename T>
inline T vdot(const T* a, const T* b, int64_t D) {
  constexpr int W = kLanes<T>;
  T acc[W] = {};
  int64_t d = 0;
  for (; d + W <= D; d += W)
    for (int l = 0; l < W; ++l) acc[l] += a[d + l] * b[d + l];
  T s = 0;
  for (int l = 0; l < W; ++l) s += acc[l];
  for (; d < D; ++d) s += a[d] * b[d];
  return s;
}

// out[j] = <a, b_j> for the four rows b0..b3 (one pass over a).
template <typename T>
inline void vdot4(const T* a, const T* b0, const T* b1, const T* b2, const T* b3, int64_t D,
                  T* out) {
  constexpr int W = kLanes<T>;
  T a0[W] = {}, a1[W] = {}, a2[W] = {}, a3[W] = {};
  int64_t d = 0;
  for (; d + W <= D; d += W) {
    for (int l = 0; l < W; ++l) {
      const T av = a[d + l];
      a0[l] += av * b0[d + l];
      a1[l] += av * b1[d + l];
      a2[l] += av * b2[d + l];
      a3[l] += av * b3[d + l];
    }
  }
  T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  for (int l = 0; l < W; ++l) {
    s0 += a0[l];
    s1 += a1[l];
    s2 += a2[l];
    s3 += a3[l];
  }
  for (; d < D; ++d) {
    s0 += a[d] * b0[d];
    s1 += a[d] * b1[d];
    s2 += a[d] * b2[d];
    s3 += a[d] * b3[d];
  }
  out[0] = s0;
  out[1] = s1;
  out[2] = s2;
  out[3] = s3;
}

template <typename T>
inline void vaxpy(T* y, T alpha, const T* x, int64_t D) {
  for (int64_t d = 0; d < D; ++d) y[d] += alpha * x[d];
}

template <typename T>
inline void vscale(T* y, T alpha, int64_t D) {
  for (int64_t d = 0; d < D; ++d) y[d] *= alpha;
}

template <typename T>
inline at::Tensor wrap(const T* p, int64_t rows, int64_t cols) {
  return at::from_blob(const_cast<T*>(p), {rows, cols},
                       at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
}

// ---------------------------------------------------------------------------------
// Row-major products on contiguous buffers. `rows` (may be null) marks the rows of
// the n-sized operand that are real; padded rows are skipped by the loops. The BLAS
// paths of prod_nt / prod_nn compute padded output rows too (the callers overwrite or
// ignore them); prod_tn_acc, which sums over the rows, drops padded ones.

// C[M, N] = A[M, Kd] * B[N, Kd]^T; N is the prototype count.
template <typename T>
void prod_nt(const T* A, const T* Bm, T* C, int64_t M, int64_t N, int64_t Kd, const bool* rows) {
  if (N > kBlasMinProtos) {
    auto c = wrap(C, M, N);
    at::mm_out(c, wrap(A, M, Kd), wrap(Bm, N, Kd).t());
    return;
  }
  for (int64_t i = 0; i < M; ++i) {
    if (rows && !rows[i]) continue;
    const T* a = A + i * Kd;
    T* c = C + i * N;
    int64_t j = 0;
    for (; j + 4 <= N; j += 4)
      vdot4(a, Bm + j * Kd, Bm + (j + 1) * Kd, Bm + (j + 2) * Kd, Bm + (j + 3) * Kd, Kd, c + j);
    for (; j < N; ++j) c[j] = vdot(a, Bm + j * Kd, Kd);
  }
}

// C[M, N] = A[M, Kd] * B[Kd, N]; Kd is the prototype count.
template <typename T>
void prod_nn(const T* A, const T* Bm, T* C, int64_t M, int64_t N, int64_t Kd, const bool* rows) {
  if (Kd > kBlasMinProtos) {
    auto c = wrap(C, M, N);
    at::mm_out(c, wrap(A, M, Kd), wrap(Bm, Kd, N));
    return;
  }
  for (int64_t i = 0; i < M; ++i) {
    if (rows && !rows[i]) continue;
    T* c = C + i * N;
    std::fill(c, c + N, T(0));
    const T* a = A + i * Kd;
    for (int64_t k = 0; k < Kd; ++k)
      if (a[k] != T(0)) vaxpy(c, a[k], Bm + k * N, N);
  }
}

// C[M, N] += A[R, M]^T * B[R, N]; M is the prototype count, R the rows.
template <typename T>
void prod_tn_acc(const T* A, const T* Bm, T* C, int64_t R, int64_t M, int64_t N, const bool* rows) {
  if (M > kBlasMinProtos) {
    auto c = wrap(C, M, N);
    const int64_t real = rows ? std::count(rows, rows + R, true) : R;
    if (real == R) {
      c.addmm_(wrap(A, R, M).t(), wrap(Bm, R, N));
      return;
    }
    // BLAS reads every row, and a padded row of B may hold anything (even inf, and
    // 0 * inf is NaN): only the real rows go in.
    if (real == 0) return;
    std::vector<T> a(real * M), bb(real * N);
    for (int64_t r = 0, j = 0; r < R; ++r) {
      if (!rows[r]) continue;
      std::copy(A + r * M, A + (r + 1) * M, a.data() + j * M);
      std::copy(Bm + r * N, Bm + (r + 1) * N, bb.data() + j * N);
      ++j;
    }
    c.addmm_(wrap(a.data(), real, M).t(), wrap(bb.data(), real, N));
    return;
  }
  for (int64_t r = 0; r < R; ++r) {
    if (rows && !rows[r]) continue;
    const T* a = A + r * M;
    const T* b = Bm + r * N;
    for (int64_t m = 0; m < M; ++m)
      if (a[m] != T(0)) vaxpy(C + m * N, a[m], b, N);
  }
}

// ---------------------------------------------------------------------------------
// N(u) = normalize(LN(u)) and its backward.
template <typename T>
struct NormStats {
  T rstd;        // 1 / sqrt(var + eps)
  T den;         // max(||LN(u)||, 1e-12)
  bool floored;  // ||LN(u)|| < 1e-12: the floor is active, the norm is a constant
};

// y holds u on entry and N(u) on exit.
template <typename T>
inline NormStats<T> normalize_inplace(T* y, int64_t D, T eps) {
  const T mean = vsum(y, D) / T(D);
  for (int64_t d = 0; d < D; ++d) y[d] -= mean;
  const T var = vdot(y, y, D) / T(D);
  const T rstd = T(1) / std::sqrt(var + eps);
  vscale(y, rstd, D);
  const T nu = std::sqrt(vdot(y, y, D));
  const T floor = static_cast<T>(kNormFloor);
  const T den = std::max(nu, floor);
  vscale(y, T(1) / den, D);
  return {rstd, den, nu < floor};
}

// gu (+)= d N(u) / du^T g, given nh = N(u) and its stats. With y = LN(u) = nh * den:
//   gy = (g - nh <nh, g>) / den          (no projection when the floor is active)
//   gu = rstd * (gy - mean(gy) - y * mean(gy * y))
// which expands to gu = a g + b + c nh with the scalars below.
template <typename T>
inline void normalize_backward(const T* nh, const NormStats<T>& st, const T* g, int64_t D, T* gu,
                               bool accumulate) {
  const T sg = vsum(g, D);
  const T snh = vsum(nh, D);
  const T gnh = vdot(g, nh, D);
  const T nhnh = vdot(nh, nh, D);
  const T proj = st.floored ? T(0) : gnh;
  const T m1 = (sg - proj * snh) / (st.den * T(D));
  const T m2 = (gnh - proj * nhnh) / T(D);
  const T a = st.rstd / st.den;
  const T b = -st.rstd * m1;
  const T c = -st.rstd * (proj / st.den + st.den * m2);
  if (accumulate) {
    for (int64_t d = 0; d < D; ++d) gu[d] += a * g[d] + b + c * nh[d];
  } else {
    for (int64_t d = 0; d < D; ++d) gu[d] = a * g[d] + b + c * nh[d];
  }
}

// ---------------------------------------------------------------------------------
template <typename T>
struct Problem {
  const T* x;             // [B, n, D]
  const bool* mask;       // [B, n]
  const T* protos;        // [L, D]
  const int64_t* active;  // [B, K] or null
  const T* scale;         // [B, K] or null
  const T* weights;       // [B, n] (weights_rank 2), [B, K, n] (3) or null
  int weights_rank;
  const T* values;        // [B, n, Dv]; x when the caller gave none
  bool values_is_x;
  int64_t B, n, D, L, K, Dv;
  T inv_tau, eps;
  // Without `active`: N(prototypes) [L, D] and its stats, computed once.
  const T* protos_n;
  const NormStats<T>* protos_st;
};

template <typename T>
inline T weight_of(const Problem<T>& P, int64_t b, int64_t k, int64_t i) {
  if (P.weights_rank == 2) return P.weights[b * P.n + i];
  if (P.weights_rank == 3) return P.weights[(b * P.K + k) * P.n + i];
  return T(1);
}

// Normalised prototypes of batch row b: either the shared table or the K selected,
// scaled ones written into `cn` (with their stats in `cst`).
template <typename T>
inline const T* row_prototypes(const Problem<T>& P, int64_t b, T* cn, NormStats<T>* cst) {
  if (!P.active) return P.protos_n;
  for (int64_t k = 0; k < P.K; ++k) {
    const int64_t l = P.active[b * P.K + k];
    const T s = P.scale ? P.scale[b * P.K + k] : T(1);
    const T* src = P.protos + l * P.D;
    T* dst = cn + k * P.D;
    for (int64_t d = 0; d < P.D; ++d) dst[d] = s * src[d];
    cst[k] = normalize_inplace(dst, P.D, P.eps);
  }
  return cn;
}

// Normalised positions of batch row b into xn [n, D]; padded rows are zero.
template <typename T>
inline void row_positions(const Problem<T>& P, int64_t b, T* xn, NormStats<T>* xst) {
  const bool* m = P.mask + b * P.n;
  const T* xb = P.x + b * P.n * P.D;
  for (int64_t i = 0; i < P.n; ++i) {
    T* dst = xn + i * P.D;
    if (!m[i]) {
      std::fill(dst, dst + P.D, T(0));
      continue;
    }
    std::copy(xb + i * P.D, xb + (i + 1) * P.D, dst);
    xst[i] = normalize_inplace(dst, P.D, P.eps);
  }
}

template <typename T>
void prepare_shared_prototypes(const T* protos, int64_t L, int64_t D, T eps, T* out,
                               NormStats<T>* st) {
  at::parallel_for(0, L, 16, [&](int64_t l0, int64_t l1) {
    for (int64_t l = l0; l < l1; ++l) {
      std::copy(protos + l * D, protos + (l + 1) * D, out + l * D);
      st[l] = normalize_inplace(out + l * D, D, eps);
    }
  });
}

template <typename T>
void forward_kernel(const Problem<T>& P, T* intents, T* probs) {
  const int64_t n = P.n, D = P.D, K = P.K, Dv = P.Dv;
  at::parallel_for(0, P.B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<T> xn(n * D), cn(P.active ? K * D : 0), q(n * K);
    std::vector<NormStats<T>> xst(n), cst(P.active ? K : 0);
    for (int64_t b = b0; b < b1; ++b) {
      const bool* m = P.mask + b * n;
      T* pb = probs + b * n * K;
      row_positions(P, b, xn.data(), xst.data());
      const T* cnb = row_prototypes(P, b, cn.data(), cst.data());
      prod_nt(xn.data(), cnb, pb, n, K, D, m);
      // Masked softmax over the K prototypes; padded rows are exactly 0.
      for (int64_t i = 0; i < n; ++i) {
        T* p = pb + i * K;
        if (!m[i]) {
          std::fill(p, p + K, T(0));
          continue;
        }
        T mx = -std::numeric_limits<T>::infinity();
        for (int64_t k = 0; k < K; ++k) {
          p[k] *= P.inv_tau;
          mx = std::max(mx, p[k]);
        }
        T s = 0;
        for (int64_t k = 0; k < K; ++k) {
          p[k] = std::exp(p[k] - mx);
          s += p[k];
        }
        const T inv = T(1) / s;
        for (int64_t k = 0; k < K; ++k) p[k] *= inv;
      }
      // intents[b] = (p * w)^T values[b]
      const T* qb = pb;
      if (P.weights_rank != 0) {
        // Padded rows stay exactly 0 whatever their weight (even inf or NaN).
        for (int64_t i = 0; i < n; ++i)
          for (int64_t k = 0; k < K; ++k)
            q[i * K + k] = m[i] ? pb[i * K + k] * weight_of(P, b, k, i) : T(0);
        qb = q.data();
      }
      T* ob = intents + b * K * Dv;
      std::fill(ob, ob + K * Dv, T(0));
      prod_tn_acc(qb, P.values + b * n * Dv, ob, n, K, Dv, m);
    }
  });
}

template <typename T>
struct Grads {
  const T* g_intents;  // [B, K, Dv]
  const T* g_probs;    // [B, n, K]
  const T* probs;      // [B, n, K]
  T* g_x;              // [B, n, D] or null
  T* g_values;         // [B, n, Dv] or null (also null when values is x)
  T* g_weights;        // like weights, or null
  T* g_scale;          // [B, K] or null
  T* g_cs;             // [B, K, D]: scale * dN/dc per selected prototype (active), or null
  T* g_cn_partial;     // [chunks, L, D]: sum of dL/dN(c) per chunk (no active), or null
};

template <typename T>
void backward_kernel(const Problem<T>& P, const Grads<T>& G, int64_t chunks) {
  const int64_t n = P.n, D = P.D, K = P.K, Dv = P.Dv;
  const bool need_proto_side = G.g_cs || G.g_scale || G.g_cn_partial;
  // Fixed, thread-count-sized chunks of the batch: each owns one partial sum of the
  // shared-prototype gradient, reduced in chunk order afterwards.
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    std::vector<T> xn(n * D), cn(P.active ? K * D : 0), e(n * K), ga(n * K), q(n * K),
        gxn(n * D), gv(G.g_x && P.values_is_x ? n * Dv : 0), gcn(P.active ? K * D : 0),
        gc(D);
    std::vector<NormStats<T>> xst(n), cst(P.active ? K : 0);
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t b_begin = P.B * c / chunks, b_end = P.B * (c + 1) / chunks;
      for (int64_t b = b_begin; b < b_end; ++b) {
        const bool* m = P.mask + b * n;
        const T* pb = G.probs + b * n * K;
        const T* gpb = G.g_probs + b * n * K;
        const T* gob = G.g_intents + b * K * Dv;
        const T* vb = P.values + b * n * Dv;
        row_positions(P, b, xn.data(), xst.data());
        const T* cnb = row_prototypes(P, b, cn.data(), cst.data());

        // e[i, k] = <values_i, g_intents_k>: the intents' pull on probs (and weights).
        prod_nt(vb, gob, e.data(), n, K, Dv, m);
        T* gwb = nullptr;
        if (G.g_weights) {
          gwb = G.g_weights + b * (P.weights_rank == 3 ? K * n : n);
          std::fill(gwb, gwb + (P.weights_rank == 3 ? K * n : n), T(0));
        }
        for (int64_t i = 0; i < n; ++i) {
          T* gai = ga.data() + i * K;
          T* qi = q.data() + i * K;
          if (!m[i]) {
            std::fill(gai, gai + K, T(0));
            std::fill(qi, qi + K, T(0));
            continue;
          }
          const T* pi = pb + i * K;
          const T* ei = e.data() + i * K;
          T dot_pg = 0, gw_row = 0;
          for (int64_t k = 0; k < K; ++k) {
            const T w = weight_of(P, b, k, i);
            const T pe = pi[k] * ei[k];
            if (P.weights_rank == 3 && gwb) gwb[k * n + i] = pe;
            gw_row += pe;
            gai[k] = gpb[i * K + k] + w * ei[k];  // total grad wrt probs
            dot_pg += pi[k] * gai[k];
            qi[k] = pi[k] * w;
          }
          if (P.weights_rank == 2 && gwb) gwb[i] = gw_row;
          // softmax backward, with the 1/tau of the logits folded in
          for (int64_t k = 0; k < K; ++k) gai[k] = pi[k] * (gai[k] - dot_pg) * P.inv_tau;
        }

        // d/dvalues = (p * w) g_intents
        if (G.g_values) {
          T* gvb = G.g_values + b * n * Dv;
          prod_nn(q.data(), gob, gvb, n, Dv, K, m);
          for (int64_t i = 0; i < n; ++i)
            if (!m[i]) std::fill(gvb + i * Dv, gvb + (i + 1) * Dv, T(0));
        }

        if (G.g_x) {
          T* gxb = G.g_x + b * n * D;
          prod_nn(ga.data(), cnb, gxn.data(), n, D, K, m);  // dL/dN(x)
          if (P.values_is_x) prod_nn(q.data(), gob, gv.data(), n, Dv, K, m);
          for (int64_t i = 0; i < n; ++i) {
            T* gxi = gxb + i * D;
            if (!m[i]) {
              std::fill(gxi, gxi + D, T(0));
              continue;
            }
            if (P.values_is_x) std::copy(gv.data() + i * D, gv.data() + (i + 1) * D, gxi);
            normalize_backward(xn.data() + i * D, xst[i], gxn.data() + i * D, D, gxi,
                               P.values_is_x);
          }
        }

        if (!need_proto_side) continue;
        if (P.active) {
          // dL/dN(c_k) = sum_i ga[i, k] N(x_i), then through N, the scale and the gather.
          std::fill(gcn.begin(), gcn.end(), T(0));
          prod_tn_acc(ga.data(), xn.data(), gcn.data(), n, K, D, m);
          for (int64_t k = 0; k < K; ++k) {
            normalize_backward(cn.data() + k * D, cst[k], gcn.data() + k * D, D, gc.data(), false);
            const int64_t l = P.active[b * K + k];
            if (G.g_scale) G.g_scale[b * K + k] = vdot(gc.data(), P.protos + l * D, D);
            if (G.g_cs) {
              const T s = P.scale ? P.scale[b * K + k] : T(1);
              T* dst = G.g_cs + (b * K + k) * D;
              for (int64_t d = 0; d < D; ++d) dst[d] = s * gc[d];
            }
          }
        } else {
          prod_tn_acc(ga.data(), xn.data(), G.g_cn_partial + c * P.L * D, n, K, D, m);
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------
struct Checked {
  int64_t B, n, D, L, K, Dv;
  int weights_rank;
};

Checked check_inputs(const char* op, const at::Tensor& x, const at::Tensor& mask,
                     const at::Tensor& prototypes, double tau,
                     const std::optional<at::Tensor>& active,
                     const std::optional<at::Tensor>& active_scale,
                     const std::optional<at::Tensor>& weights,
                     const std::optional<at::Tensor>& values, double eps) {
  TORCH_CHECK(x.defined(), op, ": argument 'x' is undefined");
  SameDevice{op}("x", x)("mask", mask)("prototypes", prototypes)("active", active)(
      "active_scale", active_scale)("weights", weights)("values", values);
  TORCH_CHECK(x.dim() == 3, op, ": argument 'x' must be 3-dimensional [B, n, D], got shape ",
              x.sizes());
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, op,
              ": argument 'x' must be float32 or float64, got ", dtype);
  Checked s{x.size(0), x.size(1), x.size(2), 0, 0, 0, 0};
  TORCH_CHECK(s.D >= 1, op, ": argument 'x' must have a non-empty last dimension, got shape ",
              x.sizes());
  check_tensor(mask, op, "mask", at::kBool, 2);
  TORCH_CHECK(mask.size(0) == s.B && mask.size(1) == s.n, op,
              ": argument 'mask' must have shape [B, n] = [", s.B, ", ", s.n, "], got ",
              mask.sizes());
  check_tensor(prototypes, op, "prototypes", dtype, 2);
  TORCH_CHECK(prototypes.size(1) == s.D, op, ": argument 'prototypes' must have shape [L, ", s.D,
              "] (D of x), got ", prototypes.sizes());
  s.L = prototypes.size(0);
  TORCH_CHECK(s.L >= 1, op, ": argument 'prototypes' must hold at least one prototype");
  TORCH_CHECK(std::isfinite(tau) && tau > 0, op, ": argument 'tau' must be positive and finite, got ",
              tau);
  TORCH_CHECK(std::isfinite(eps) && eps > 0, op, ": argument 'eps' must be positive, got ", eps);
  s.K = s.L;
  if (active) {
    check_tensor(*active, op, "active", at::kLong, 2);
    TORCH_CHECK(active->size(0) == s.B, op, ": argument 'active' must have shape [B, K] with B = ",
                s.B, ", got ", active->sizes());
    s.K = active->size(1);
    TORCH_CHECK(s.K >= 1, op, ": argument 'active' must select at least one prototype");
  }
  if (active_scale) {
    TORCH_CHECK(active.has_value(), op, ": argument 'active_scale' needs 'active'");
    check_tensor(*active_scale, op, "active_scale", dtype, 2);
    TORCH_CHECK(active_scale->sizes() == active->sizes(), op,
                ": argument 'active_scale' must have the shape of 'active' ", active->sizes(),
                ", got ", active_scale->sizes());
  }
  if (weights) {
    check_tensor(*weights, op, "weights", dtype, -1);
    s.weights_rank = static_cast<int>(weights->dim());
    const bool ok = (s.weights_rank == 2 && weights->size(0) == s.B && weights->size(1) == s.n) ||
                    (s.weights_rank == 3 && weights->size(0) == s.B && weights->size(1) == s.K &&
                     weights->size(2) == s.n);
    TORCH_CHECK(ok, op, ": argument 'weights' must have shape [B, n] = [", s.B, ", ", s.n,
                "] or [B, K, n] = [", s.B, ", ", s.K, ", ", s.n, "], got ", weights->sizes());
  }
  s.Dv = s.D;
  if (values) {
    check_tensor(*values, op, "values", dtype, 3);
    TORCH_CHECK(values->size(0) == s.B && values->size(1) == s.n, op,
                ": argument 'values' must have shape [B, n, Dv] = [", s.B, ", ", s.n,
                ", Dv], got ", values->sizes());
    s.Dv = values->size(2);
  }
  return s;
}

void check_active_range(const char* op, const at::Tensor& active, int64_t L) {
  const int64_t* p = active.const_data_ptr<int64_t>();
  const int64_t count = active.numel();
  for (int64_t j = 0; j < count; ++j) {
    TORCH_CHECK(p[j] >= 0 && p[j] < L, op, ": argument 'active' holds index ", p[j],
                " at flat position ", j, ", outside [0, ", L, ") (the prototype count)");
  }
}

struct Contig {
  at::Tensor x, mask, protos, active, scale, weights, values;
};

Contig make_contiguous(const at::Tensor& x, const at::Tensor& mask, const at::Tensor& prototypes,
                       const std::optional<at::Tensor>& active,
                       const std::optional<at::Tensor>& active_scale,
                       const std::optional<at::Tensor>& weights,
                       const std::optional<at::Tensor>& values) {
  Contig c;
  c.x = x.contiguous();
  c.mask = mask.contiguous();
  c.protos = prototypes.contiguous();
  if (active) c.active = active->contiguous();
  if (active_scale) c.scale = active_scale->contiguous();
  if (weights) c.weights = weights->contiguous();
  c.values = values ? values->contiguous() : c.x;
  return c;
}

template <typename T>
Problem<T> make_problem(const Checked& s, const Contig& c, double tau, double eps, bool values_is_x) {
  Problem<T> P{};
  P.x = c.x.const_data_ptr<T>();
  P.mask = c.mask.const_data_ptr<bool>();
  P.protos = c.protos.const_data_ptr<T>();
  P.active = c.active.defined() ? c.active.const_data_ptr<int64_t>() : nullptr;
  P.scale = c.scale.defined() ? c.scale.const_data_ptr<T>() : nullptr;
  P.weights = c.weights.defined() ? c.weights.const_data_ptr<T>() : nullptr;
  P.weights_rank = s.weights_rank;
  P.values = c.values.const_data_ptr<T>();
  P.values_is_x = values_is_x;
  P.B = s.B;
  P.n = s.n;
  P.D = s.D;
  P.L = s.L;
  P.K = s.K;
  P.Dv = s.Dv;
  P.inv_tau = static_cast<T>(1.0 / tau);
  P.eps = static_cast<T>(eps);
  return P;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> intent_cluster_cpu(
    const at::Tensor& x, const at::Tensor& mask, const at::Tensor& prototypes, double tau,
    const std::optional<at::Tensor>& active, const std::optional<at::Tensor>& active_scale,
    const std::optional<at::Tensor>& weights, const std::optional<at::Tensor>& values,
    double eps) {
  const Checked s =
      check_inputs(kOp, x, mask, prototypes, tau, active, active_scale, weights, values, eps);
  const Contig c = make_contiguous(x, mask, prototypes, active, active_scale, weights, values);
  if (active) check_active_range(kOp, c.active, s.L);
  auto intents = at::empty({s.B, s.K, s.Dv}, x.options());
  auto probs = at::empty({s.B, s.n, s.K}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "intent_cluster_cpu", [&] {
    Problem<scalar_t> P = make_problem<scalar_t>(s, c, tau, eps, !values.has_value());
    std::vector<scalar_t> pn;
    std::vector<NormStats<scalar_t>> pst;
    if (!active) {
      pn.resize(s.L * s.D);
      pst.resize(s.L);
      prepare_shared_prototypes(P.protos, s.L, s.D, P.eps, pn.data(), pst.data());
      P.protos_n = pn.data();
      P.protos_st = pst.data();
    }
    forward_kernel(P, intents.mutable_data_ptr<scalar_t>(), probs.mutable_data_ptr<scalar_t>());
  });
  return {intents, probs};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> intent_cluster_backward_cpu(
    const at::Tensor& grad_intents, const at::Tensor& grad_probs, const at::Tensor& x,
    const at::Tensor& mask, const at::Tensor& prototypes, const at::Tensor& probs, double tau,
    const std::optional<at::Tensor>& active, const std::optional<at::Tensor>& active_scale,
    const std::optional<at::Tensor>& weights, const std::optional<at::Tensor>& values,
    double eps, std::array<bool, 5> output_mask) {
  SameDevice{kOpBwd}("grad_intents", grad_intents)("grad_probs", grad_probs)("x", x)("mask", mask)(
      "prototypes", prototypes)("probs", probs)("active", active)("active_scale", active_scale)(
      "weights", weights)("values", values);
  const Checked s =
      check_inputs(kOpBwd, x, mask, prototypes, tau, active, active_scale, weights, values, eps);
  const auto dtype = x.scalar_type();
  check_tensor(probs, kOpBwd, "probs", dtype, 3);
  TORCH_CHECK(probs.size(0) == s.B && probs.size(1) == s.n && probs.size(2) == s.K, kOpBwd,
              ": argument 'probs' must have shape [B, n, K] = [", s.B, ", ", s.n, ", ", s.K,
              "], got ", probs.sizes());
  check_tensor(grad_probs, kOpBwd, "grad_probs", dtype, 3);
  TORCH_CHECK(grad_probs.sizes() == probs.sizes(), kOpBwd,
              ": argument 'grad_probs' must have the shape of probs ", probs.sizes(), ", got ",
              grad_probs.sizes());
  check_tensor(grad_intents, kOpBwd, "grad_intents", dtype, 3);
  TORCH_CHECK(grad_intents.size(0) == s.B && grad_intents.size(1) == s.K &&
                  grad_intents.size(2) == s.Dv,
              kOpBwd, ": argument 'grad_intents' must have shape [B, K, Dv] = [", s.B, ", ", s.K,
              ", ", s.Dv, "], got ", grad_intents.sizes());

  const Contig c = make_contiguous(x, mask, prototypes, active, active_scale, weights, values);
  if (active) check_active_range(kOpBwd, c.active, s.L);
  const auto g_int = grad_intents.contiguous();
  const auto g_p = grad_probs.contiguous();
  const auto p = probs.contiguous();

  const auto opts = x.options();
  const bool want_x = output_mask[0];
  const bool want_protos = output_mask[1];
  const bool want_scale = output_mask[2] && active_scale.has_value();
  const bool want_weights = output_mask[3] && weights.has_value();
  const bool want_values = output_mask[4] && values.has_value();
  at::Tensor g_x = want_x ? at::empty({s.B, s.n, s.D}, opts) : at::empty({0}, opts);
  at::Tensor g_protos = want_protos ? at::zeros({s.L, s.D}, opts) : at::empty({0}, opts);
  at::Tensor g_scale = want_scale ? at::empty({s.B, s.K}, opts) : at::empty({0}, opts);
  at::Tensor g_weights = want_weights ? at::empty(weights->sizes(), opts) : at::empty({0}, opts);
  at::Tensor g_values = want_values ? at::empty({s.B, s.n, s.Dv}, opts) : at::empty({0}, opts);
  if (s.B == 0) return {g_x, g_protos, g_scale, g_weights, g_values};

  // Each chunk of the batch is one task; a shared-prototype partial per chunk.
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(s.B, at::get_num_threads()));
  at::Tensor g_cs, g_cn_partial;
  if (want_protos && active) g_cs = at::empty({s.B, s.K, s.D}, opts);
  if (want_protos && !active) g_cn_partial = at::zeros({chunks, s.L, s.D}, opts);

  AT_DISPATCH_FLOATING_TYPES(dtype, "intent_cluster_backward_cpu", [&] {
    using T = scalar_t;
    Problem<T> P = make_problem<T>(s, c, tau, eps, !values.has_value());
    std::vector<T> pn;
    std::vector<NormStats<T>> pst;
    if (!active) {
      pn.resize(s.L * s.D);
      pst.resize(s.L);
      prepare_shared_prototypes(P.protos, s.L, s.D, P.eps, pn.data(), pst.data());
      P.protos_n = pn.data();
      P.protos_st = pst.data();
    }
    Grads<T> G{};
    G.g_intents = g_int.const_data_ptr<T>();
    G.g_probs = g_p.const_data_ptr<T>();
    G.probs = p.const_data_ptr<T>();
    G.g_x = want_x ? g_x.mutable_data_ptr<T>() : nullptr;
    G.g_values = want_values ? g_values.mutable_data_ptr<T>() : nullptr;
    G.g_weights = want_weights ? g_weights.mutable_data_ptr<T>() : nullptr;
    G.g_scale = want_scale ? g_scale.mutable_data_ptr<T>() : nullptr;
    G.g_cs = g_cs.defined() ? g_cs.mutable_data_ptr<T>() : nullptr;
    G.g_cn_partial = g_cn_partial.defined() ? g_cn_partial.mutable_data_ptr<T>() : nullptr;
    backward_kernel(P, G, chunks);

    if (!want_protos) return;
    T* gpr = g_protos.mutable_data_ptr<T>();
    const int64_t L = s.L, D = s.D;
    if (active) {
      // Scatter the per-row prototype gradients in batch order (deterministic).
      const T* gcs = G.g_cs;
      for (int64_t j = 0; j < s.B * s.K; ++j) vaxpy(gpr + P.active[j] * D, T(1), gcs + j * D, D);
    } else {
      T* part = G.g_cn_partial;
      for (int64_t ch = 1; ch < chunks; ++ch) vaxpy(part, T(1), part + ch * L * D, L * D);
      at::parallel_for(0, L, 16, [&](int64_t l0, int64_t l1) {
        for (int64_t l = l0; l < l1; ++l)
          normalize_backward(P.protos_n + l * D, P.protos_st[l], part + l * D, D, gpr + l * D,
                             false);
      });
    }
  });
  return {g_x, g_protos, g_scale, g_weights, g_values};
}

}  // namespace seqrec::ops
