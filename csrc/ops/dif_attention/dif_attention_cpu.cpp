// CPU kernels of dif_attention and dif_attention_backward (contract in dif_attention.h).
//
// Parallel over batch rows with at::parallel_for (each row = its H (b, h) blocks). A
// worker gathers a block's operands into contiguous scratch, trimmed to the rows and keys
// that can matter (see RowWork), runs the matrix products through at::mm_out /
// at::addmm_out on views of that scratch (torch's BLAS: MKL on x86 builds), the gate /
// concat maps once for all H heads of the row, and does the masking, fusion, softmax and
// dropout in loops written to vectorise (numeric masks, `omp simd` reductions). Only one
// row's scores live per worker; the backward recomputes them from q/k (and the
// probabilities from the saved log-sum-exp) instead of storing anything B*H*nq*nk.
//
// The fusion-parameter gradients are summed per fixed chunk of batch rows and the chunks
// are then added in order, so the result does not depend on the number of threads.
#include "ops/dif_attention/dif_attention.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>

#include "ops/common/check.h"
#include "ops/common/hash_dropout_cpu.h"

namespace seqrec::ops {

// ---------------------------------------------------------------------------------------
// Argument checks (shared with a future CUDA kernel).

namespace {

DifFusion parse_fusion(std::string_view fusion, const char* op) {
  if (fusion == "sum") return DifFusion::kSum;
  if (fusion == "concat") return DifFusion::kConcat;
  if (fusion == "gate") return DifFusion::kGate;
  TORCH_CHECK(false, op, ": argument 'fusion' must be \"sum\", \"concat\" or \"gate\", got \"",
              std::string(fusion), "\"");
}

DifOperand operand(const at::Tensor& t) {
  DifOperand o;
  o.data = t.const_data_ptr();
  o.stride_b = t.stride(0);
  o.stride_h = t.stride(1);
  o.stride_row = t.stride(2);
  o.stride_col = t.stride(3);
  o.cols = t.size(3);
  return o;
}

}  // namespace

DifAttnProblem dif_attention_check(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   at::TensorList side_q, at::TensorList side_k,
                                   at::TensorList fusion_params, std::string_view fusion,
                                   const std::optional<at::Tensor>& key_padding_mask, bool causal,
                                   std::optional<double> scale, bool fusion_sees_masked,
                                   double dropout_p, const std::optional<at::Tensor>& seed,
                                   std::vector<at::Tensor>& owned, const char* op) {
  TORCH_CHECK(q.defined(), op, ": argument 'q' is undefined");
  SameDevice{op}("q", q)("k", k)("v", v)("side_q", side_q)("side_k", side_k)(
      "fusion_params", fusion_params)("key_padding_mask", key_padding_mask);
  if (seed.has_value() && seed->defined()) check_host_tensor(*seed, op, "seed");
  const auto dtype = q.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, op,
              ": argument 'q' must be float32 or float64, got ", dtype);
  check_tensor(q, op, "q", dtype, 4);
  check_tensor(k, op, "k", dtype, 4);
  check_tensor(v, op, "v", dtype, 4);

  DifAttnProblem p;
  p.B = q.size(0);
  p.H = q.size(1);
  p.nq = q.size(2);
  const int64_t dh = q.size(3);
  p.nk = k.size(2);
  p.dv = v.size(3);
  TORCH_CHECK(dh >= 1, op, ": argument 'q' needs a head size >= 1, got shape ", q.sizes());
  TORCH_CHECK(k.size(0) == p.B && k.size(1) == p.H && k.size(3) == dh, op,
              ": argument 'k' must be [B, H, nk, dh] with B=", p.B, ", H=", p.H, ", dh=", dh,
              " (from q), got shape ", k.sizes());
  TORCH_CHECK(v.size(0) == p.B && v.size(1) == p.H && v.size(2) == p.nk, op,
              ": argument 'v' must be [B, H, nk, dv] with B=", p.B, ", H=", p.H, ", nk=", p.nk,
              " (from k), got shape ", v.sizes());
  TORCH_CHECK(!causal || p.nq == p.nk, op, ": causal attention needs as many queries as keys, got nq=",
              p.nq, " and nk=", p.nk);

  TORCH_CHECK(side_q.size() == side_k.size(), op, ": 'side_q' and 'side_k' must have the same length, got ",
              side_q.size(), " and ", side_k.size());
  p.num_sources = 1 + static_cast<int64_t>(side_q.size());
  TORCH_CHECK(p.num_sources <= kDifMaxSources, op, ": at most ", kDifMaxSources - 1,
              " side sources are supported, got ", side_q.size());
  p.q[0] = operand(q);
  p.k[0] = operand(k);
  for (size_t j = 0; j < side_q.size(); ++j) {
    const std::string nq_name = "side_q[" + std::to_string(j) + "]";
    const std::string nk_name = "side_k[" + std::to_string(j) + "]";
    const at::Tensor& sq = side_q[j];
    const at::Tensor& sk = side_k[j];
    check_tensor(sq, op, nq_name.c_str(), dtype, 4);
    check_tensor(sk, op, nk_name.c_str(), dtype, 4);
    TORCH_CHECK(sq.size(0) == p.B && sq.size(1) == p.H && sq.size(2) == p.nq && sq.size(3) >= 1, op,
                ": argument '", nq_name, "' must be [B, H, nq, d] with B=", p.B, ", H=", p.H,
                ", nq=", p.nq, ", d >= 1 (expand a batch-shared tensor), got shape ", sq.sizes());
    TORCH_CHECK(sk.size(0) == p.B && sk.size(1) == p.H && sk.size(2) == p.nk && sk.size(3) == sq.size(3),
                op, ": argument '", nk_name, "' must be [B, H, nk, d] with B=", p.B, ", H=", p.H,
                ", nk=", p.nk, ", d=", sq.size(3), " (from ", nq_name, "), got shape ", sk.sizes());
    p.q[j + 1] = operand(sq);
    p.k[j + 1] = operand(sk);
  }
  p.v = operand(v);

  p.fusion = parse_fusion(fusion, op);
  const size_t want = p.fusion == DifFusion::kSum ? 0 : (p.fusion == DifFusion::kConcat ? 2 : 4);
  TORCH_CHECK(fusion_params.size() == want, op, ": fusion \"", std::string(fusion), "\" takes ", want,
              " fusion_params, got ", fusion_params.size());
  for (size_t j = 0; j < fusion_params.size(); ++j) {
    const std::string name = "fusion_params[" + std::to_string(j) + "]";
    check_tensor(fusion_params[j], op, name.c_str(), dtype, -1);
  }
  const int64_t S = p.num_sources, nk = p.nk;
  if (p.fusion == DifFusion::kConcat) {
    const at::Tensor& w = fusion_params[0];
    const at::Tensor& b = fusion_params[1];
    TORCH_CHECK(w.dim() == 2 && w.size(0) == nk && w.size(1) == S * nk, op,
                ": concat weight fusion_params[0] must be [nk, S*nk] = [", nk, ", ", S * nk,
                "], got shape ", w.sizes());
    TORCH_CHECK(b.dim() == 1 && b.size(0) == nk, op, ": concat bias fusion_params[1] must be [nk] = [",
                nk, "], got shape ", b.sizes());
    owned.push_back(w.contiguous());
    p.fusion_w = owned.back().const_data_ptr();
    owned.push_back(b.contiguous());
    p.fusion_b = owned.back().const_data_ptr();
  } else if (p.fusion == DifFusion::kGate) {
    const at::Tensor& w1 = fusion_params[0];
    TORCH_CHECK(w1.dim() == 2 && w1.size(0) >= 1 && w1.size(1) == nk, op,
                ": gate weight fusion_params[0] (W1) must be [a, nk] with nk=", nk, ", got shape ",
                w1.sizes());
    const int64_t a = w1.size(0);
    TORCH_CHECK(fusion_params[1].dim() == 1 && fusion_params[1].size(0) == a, op,
                ": gate bias fusion_params[1] (b1) must be [a] = [", a, "], got shape ",
                fusion_params[1].sizes());
    TORCH_CHECK(fusion_params[2].dim() == 2 && fusion_params[2].size(0) == 1 && fusion_params[2].size(1) == a,
                op, ": gate weight fusion_params[2] (w2) must be [1, a] = [1, ", a, "], got shape ",
                fusion_params[2].sizes());
    TORCH_CHECK(fusion_params[3].dim() == 1 && fusion_params[3].size(0) == 1, op,
                ": gate bias fusion_params[3] (b2) must be [1], got shape ", fusion_params[3].sizes());
    p.gate_hidden = a;
    for (int j = 0; j < 4; ++j) owned.push_back(fusion_params[j].contiguous());
    const size_t base = owned.size() - 4;
    p.fusion_w = owned[base].const_data_ptr();
    p.fusion_b = owned[base + 1].const_data_ptr();
    p.gate_w2 = owned[base + 2].const_data_ptr();
    p.gate_b2 = owned[base + 3].const_data_ptr();
  }

  if (key_padding_mask.has_value() && key_padding_mask->defined()) {
    const at::Tensor& m = *key_padding_mask;
    check_tensor(m, op, "key_padding_mask", at::kBool, 2);
    TORCH_CHECK(m.size(0) == p.B && m.size(1) == nk, op, ": argument 'key_padding_mask' must be [B, nk] = [",
                p.B, ", ", nk, "], got shape ", m.sizes());
    owned.push_back(m.contiguous());
    p.key_padding_mask = owned.back().const_data_ptr<bool>();
  }
  p.causal = causal;
  p.fusion_sees_masked = fusion_sees_masked;
  p.scale = scale.has_value() ? *scale : 1.0 / std::sqrt(static_cast<double>(dh));
  TORCH_CHECK(std::isfinite(p.scale), op, ": argument 'scale' must be finite, got ", p.scale);

  TORCH_CHECK(dropout_p >= 0.0 && dropout_p < 1.0, op, ": argument 'dropout_p' must be in [0, 1), got ",
              dropout_p);
  p.dropout_p = dropout_p;
  if (dropout_p > 0.0) {
    TORCH_CHECK(seed.has_value() && seed->defined(), op,
                ": argument 'seed' (an int64 tensor with one element) is required when dropout_p > 0");
    check_tensor(*seed, op, "seed", at::kLong, -1);
    TORCH_CHECK(seed->numel() == 1, op, ": argument 'seed' must have one element, got shape ",
                seed->sizes());
    p.mixed_seed = mix64(static_cast<uint64_t>(seed->item<int64_t>()));
    p.dropout_threshold = dropout_threshold(dropout_p);
  }
  return p;
}

// ---------------------------------------------------------------------------------------
// Kernels.

namespace {

// Batch-row chunks per fusion-gradient accumulator; fixed so that the reduction order
// (and so the result) does not depend on the number of threads.
constexpr int64_t kMaxChunks = 64;

}  // namespace

// The Fortran BLAS entry points of the BLAS torch was built with (MKL in the x86 wheels,
// exported by libtorch_cpu). Declared weak: where torch exports none they are null and
// gemm() below goes through at::mm instead. Calling them directly matters here: a worker
// runs thousands of tiny products per batch (n <= 50, head size 32), and at::mm's
// per-call cost (three from_blob tensors, dispatch) is as large as the arithmetic.
extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b, const int* ldb,
            const double* beta, double* c, const int* ldc) __attribute__((weak));
}

namespace {

// Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: pass B first.
template <typename T>
bool blas_gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda,
               const T* B, int64_t ldb, bool accumulate, T* C, int64_t ldc) {
  // SEQREC_DIRECT_BLAS=0 forces the at::mm path (the tests run both).
  static const bool enabled = [] {
    const char* env = std::getenv("SEQREC_DIRECT_BLAS");
    return env == nullptr || std::string(env) != "0";
  }();
  if (!enabled) return false;
  constexpr int64_t kIntMax = std::numeric_limits<int>::max();
  if (std::max({M, N, K, lda, ldb, ldc}) > kIntMax) return false;
  // BLAS rejects (and then skips the product) leading dimensions below the row length;
  // at::mm takes any stride, so such calls go there.
  if (ldb < std::max<int64_t>(1, trans_b ? K : N) || lda < std::max<int64_t>(1, trans_a ? M : K) ||
      ldc < std::max<int64_t>(1, N)) {
    return false;
  }
  const char ta = trans_b ? 'T' : 'N', tb = trans_a ? 'T' : 'N';
  const int m = static_cast<int>(N), n = static_cast<int>(M), k = static_cast<int>(K);
  const int la = static_cast<int>(ldb), lb = static_cast<int>(lda), lc = static_cast<int>(ldc);
  const T alpha = 1, beta = accumulate ? 1 : 0;
  if constexpr (std::is_same_v<T, float>) {
    if (sgemm_ == nullptr) return false;
    sgemm_(&ta, &tb, &m, &n, &k, &alpha, B, &la, A, &lb, &beta, C, &lc);
    return true;
  } else if constexpr (std::is_same_v<T, double>) {
    if (dgemm_ == nullptr) return false;
    dgemm_(&ta, &tb, &m, &n, &k, &alpha, B, &la, A, &lb, &beta, C, &lc);
    return true;
  }
  return false;
}

// Row-major C[M, N] (leading dim ldc) = op(A) op(B), or += when `accumulate`.
// op(A) is [M, K]: A itself (row stride lda) or, when trans_a, the transpose of an
// A stored [K, M] (row stride lda). Same for B ([K, N]).
template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda,
          const T* B, int64_t ldb, bool accumulate, T* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) {
    if (!accumulate) {
      for (int64_t i = 0; i < M; ++i) std::fill(C + i * ldc, C + i * ldc + N, T(0));
    }
    return;
  }
  if (blas_gemm<T>(trans_a, trans_b, M, N, K, A, lda, B, ldb, accumulate, C, ldc)) return;
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  at::Tensor a = trans_a ? at::from_blob(const_cast<T*>(A), {M, K}, {1, lda}, opts)
                         : at::from_blob(const_cast<T*>(A), {M, K}, {lda, 1}, opts);
  at::Tensor b = trans_b ? at::from_blob(const_cast<T*>(B), {K, N}, {1, ldb}, opts)
                         : at::from_blob(const_cast<T*>(B), {K, N}, {ldb, 1}, opts);
  at::Tensor c = at::from_blob(C, {M, N}, {ldc, 1}, opts);
  if (accumulate) {
    at::addmm_out(c, c, a, b);
  } else {
    at::mm_out(c, a, b);
  }
}

// Copies rows [r0, r0 + rows) of block (b, h) of a strided operand into dst[rows, ld]
// at column offset `col0`.
template <typename T>
void gather(const DifOperand& o, int64_t b, int64_t h, int64_t r0, int64_t rows, T* dst, int64_t ld,
            int64_t col0) {
  const T* src = static_cast<const T*>(o.data) + b * o.stride_b + h * o.stride_h + r0 * o.stride_row;
  for (int64_t i = 0; i < rows; ++i) {
    const T* s = src + i * o.stride_row;
    T* d = dst + i * ld + col0;
    if (o.stride_col == 1) {
      std::memcpy(d, s, sizeof(T) * o.cols);
    } else {
      for (int64_t c = 0; c < o.cols; ++c) d[c] = s[c * o.stride_col];
    }
  }
}

// A writable strided 4-D gradient [B, H, rows, cols] (element strides).
template <typename T>
struct OutOperand {
  T* data = nullptr;
  int64_t stride_b = 0, stride_h = 0, stride_row = 0, stride_col = 0;

  T* row(int64_t b, int64_t h, int64_t r) const { return data + b * stride_b + h * stride_h + r * stride_row; }

  // Block (b, h) of `total` rows: rows [r0, r0 + rows) from columns [col0, col0 + cols)
  // of src[rows, ld], every other row 0.
  void write(int64_t b, int64_t h, const T* src, int64_t ld, int64_t col0, int64_t r0, int64_t rows,
             int64_t total, int64_t cols) const {
    for (int64_t r = 0; r < total; ++r) {
      T* d = row(b, h, r);
      const bool in = r >= r0 && r < r0 + rows;
      const T* s = in ? src + (r - r0) * ld + col0 : nullptr;
      if (stride_col == 1) {
        if (in) {
          std::memcpy(d, s, sizeof(T) * cols);
        } else {
          std::fill(d, d + cols, T(0));
        }
      } else {
        for (int64_t c = 0; c < cols; ++c) d[c * stride_col] = in ? s[c] : T(0);
      }
    }
  }

  void zero(int64_t b, int64_t h, int64_t total, int64_t cols) const {
    write(b, h, nullptr, 0, 0, 0, 0, total, cols);
  }
};

// The work of one batch row b: its H (b, h) blocks, cut down to the rows and columns
// that can matter, plus the per-worker scratch.
//
// Trimming: let [lo, hi) be the span of real keys of batch row b. When the fusion never
// sees disallowed entries (sum, or fusion_sees_masked == false) only keys in [lo, hi)
// carry non-zero scores into the fusion and the softmax, so the blocks are computed on
// keys [k0, k0+mk) = [lo, hi) and, under causal masking, queries [q0, nq) = [lo, nq)
// (a query before lo has no allowed key: output 0). A concat / gate map then uses the
// matching columns of its weights (the zeroed entries would multiply the rest by 0).
// With left padding and short sequences (Beauty: ~9 real of 50) this removes most of
// the work. With fusion_sees_masked == true the fusion reads every raw score, so the
// blocks stay whole.
//
// Heads together: the H blocks of a batch row share the trimming, so their fusion
// inputs are stored one after the other ([H, mq, S, mk]) and the gate / concat maps,
// whose weights every head shares, run as ONE matrix product over all heads (H times
// taller than per block, which is where BLAS gets efficient at n = 50).
template <typename T>
struct RowWork {
  const DifAttnProblem& p;
  int64_t S, H, nq, nk, dv, Dq, a;
  int64_t off[kDifMaxSources + 1];  // column offset of source s in Qc / Kc; off[S] = Dq
  int64_t q0 = 0, mq = 0, k0 = 0, mk = 0;  // query rows [q0, q0+mq), keys [k0, k0+mk)
  std::vector<T> buf;
  // All heads, head h at offset h * (its trimmed size):
  //   Qc [H, mq, Dq], Kc [H, mk, Dq] (the S sources' q / k side by side),
  //   X [H, mq, S, mk] (masked raw scores; gate / concat), F [H, mq, mk] (fused),
  //   U [H, mq, S, a] (gate pre-activations incl. b1), G [H, mq, S] (gate weights),
  //   dF [H, mq, mk], dX [H, mq, S, mk], dU [H, mq, S, a] (backward).
  T *Qc, *Kc, *X, *F, *U, *G, *dF, *dX, *dU;
  // One head at a time: V [mk, dv], P, Pd [mq, mk], dO, O [mq, dv], dQc [mq, Dq], dKc [mk, Dq],
  // dV [mk, dv].
  T *V, *P, *Pd, *dO, *O, *dQc, *dKc, *dV;
  // The mask of the row's blocks (the same for every head), as numbers so that the loops
  // using it vectorise: keep [mq, mk] 1 / 0, bias [mq, mk] 0 / -inf (added to the logits),
  // lim [mq] = 1 + the last allowed key of the query (0: no allowed key, the row is 0).
  // Keys at or after lim are never allowed, so row loops stop there.
  std::vector<T> keep, bias;
  std::vector<int64_t> lim;
  // The dropout factors of one query row (0 or 1 / (1 - p)), [nk].
  std::vector<T> drop;

  RowWork(const DifAttnProblem& prob, bool backward) : p(prob) {
    S = p.num_sources;
    H = p.H;
    nq = p.nq;
    nk = p.nk;
    dv = p.dv;
    a = p.gate_hidden;
    off[0] = 0;
    for (int64_t s = 0; s < S; ++s) off[s + 1] = off[s] + p.q[s].cols;
    Dq = off[S];
    const bool fused = p.fusion != DifFusion::kSum;
    const bool gate = p.fusion == DifFusion::kGate;
    const int64_t bw = backward ? 1 : 0;
    // Sized for untrimmed blocks; 64-byte aligned pieces of one allocation.
    auto round = [](int64_t n) { return (n + 15) / 16 * 16; };
    const int64_t sizes[] = {H * nq * Dq, H * nk * Dq, fused ? H * nq * S * nk : 0, H * nq * nk,
                             gate ? H * nq * S * a : 0, H * nq * S, bw * H * nq * nk,
                             fused ? bw * H * nq * S * nk : 0, gate ? bw * H * nq * S * a : 0,
                             nk * dv, nq * nk, bw * nq * nk, bw * nq * dv, bw * nq * dv,
                             bw * nq * Dq, bw * nk * Dq, bw * nk * dv};
    constexpr int kPieces = sizeof(sizes) / sizeof(sizes[0]);
    int64_t total = 16;
    for (int64_t s : sizes) total += round(s);
    buf.assign(total, T(0));
    T* base = buf.data();
    const auto addr = reinterpret_cast<uintptr_t>(base);
    base += ((64 - addr % 64) % 64) / sizeof(T);
    T* ptrs[kPieces];
    for (int i = 0; i < kPieces; ++i) {
      ptrs[i] = base;
      base += round(sizes[i]);
    }
    Qc = ptrs[0]; Kc = ptrs[1]; X = ptrs[2]; F = ptrs[3]; U = ptrs[4]; G = ptrs[5];
    dF = ptrs[6]; dX = ptrs[7]; dU = ptrs[8];
    V = ptrs[9]; P = ptrs[10]; Pd = ptrs[11]; dO = ptrs[12]; O = ptrs[13]; dQc = ptrs[14]; dKc = ptrs[15];
    dV = ptrs[16];
    keep.assign(nq * nk, T(0));
    bias.assign(nq * nk, T(0));
    lim.assign(nq, 0);
    if (p.dropout_threshold > 0) drop.assign(nk, T(0));
  }

  T* Qh(int64_t h) const { return Qc + h * mq * Dq; }
  T* Kh(int64_t h) const { return Kc + h * mk * Dq; }
  T* Xh(int64_t h) const { return X + h * mq * S * mk; }
  T* Fh(int64_t h) const { return F + h * mq * mk; }
  T* dFh(int64_t h) const { return dF + h * mq * mk; }
  T* dXh(int64_t h) const { return dX + h * mq * S * mk; }

  // Picks batch row b's rows and columns (see "Trimming") and builds its mask.
  // Returns false when b has no real key (every output row is then 0).
  bool plan(int64_t b) {
    const bool* kpm = p.key_padding_mask ? p.key_padding_mask + b * nk : nullptr;
    int64_t lo = 0, hi = nk;
    if (kpm != nullptr) {
      while (lo < nk && !kpm[lo]) ++lo;
      while (hi > lo && !kpm[hi - 1]) --hi;
    }
    if (lo >= hi) {
      q0 = mq = k0 = mk = 0;
      return false;
    }
    if (p.fusion == DifFusion::kSum || !p.fusion_sees_masked) {
      k0 = lo;
      mk = hi - lo;
      q0 = p.causal ? lo : 0;
    } else {
      k0 = 0;
      mk = nk;
      q0 = 0;
    }
    mq = nq - q0;
    const T neg_inf = -std::numeric_limits<T>::infinity();
    for (int64_t i = 0; i < mq; ++i) {
      const int64_t jend = p.causal ? std::min(q0 + i + 1, k0 + mk) : k0 + mk;  // global index
      T* kr = keep.data() + i * mk;
      T* br = bias.data() + i * mk;
      int64_t last = 0;
      for (int64_t j = 0; j < mk; ++j) {
        const int64_t gj = k0 + j;
        const bool ok = (gj < jend) && (kpm == nullptr || kpm[gj]);
        kr[j] = ok ? T(1) : T(0);
        br[j] = ok ? T(0) : neg_inf;
        last = ok ? j + 1 : last;
      }
      lim[i] = last;
    }
    return true;
  }

  // Loads head h's q / k of every source; sum: F_h = raw fused scores; gate / concat:
  // X_h = the S raw score matrices (disallowed entries zeroed unless fusion_sees_masked).
  void scores(int64_t b, int64_t h) {
    T* Q = Qh(h);
    T* K = Kh(h);
    for (int64_t s = 0; s < S; ++s) {
      gather<T>(p.q[s], b, h, q0, mq, Q, Dq, off[s]);
      gather<T>(p.k[s], b, h, k0, mk, K, Dq, off[s]);
    }
    if (p.fusion == DifFusion::kSum) {
      // Sum of the S products = one product over the concatenated head dims; masked
      // entries need no zeroing (they are masked to -inf after the fusion anyway).
      gemm<T>(false, true, mq, mk, Dq, Q, Dq, K, Dq, false, Fh(h), mk);
      return;
    }
    const int64_t ldx = S * mk;
    T* Xb = Xh(h);
    for (int64_t s = 0; s < S; ++s) {
      gemm<T>(false, true, mq, mk, off[s + 1] - off[s], Q + off[s], Dq, K + off[s], Dq, false, Xb + s * mk, ldx);
    }
    if (!p.fusion_sees_masked) mask_rows(Xb);
  }

  // Zeroes the disallowed entries of the S score rows of every query of one head's
  // [mq, S, mk] block (scores are finite, so multiplying by keep is exact).
  void mask_rows(T* Xb) const {
    const int64_t ldx = S * mk;
    for (int64_t i = 0; i < mq; ++i) {
      const T* __restrict kr = keep.data() + i * mk;
      const int64_t l = lim[i];
      for (int64_t s = 0; s < S; ++s) {
        T* __restrict x = Xb + i * ldx + s * mk;
#pragma omp simd
        for (int64_t j = 0; j < l; ++j) x[j] *= kr[j];
        std::fill(x + l, x + mk, T(0));
      }
    }
  }

  // Gate / concat over all heads at once: F [H*mq, mk] from X [H*mq, S, mk]; gate also
  // keeps U and G for the backward.
  void fuse_heads() {
    const int64_t rows = H * mq, ldx = S * mk;
    if (p.fusion == DifFusion::kSum) return;
    if (p.fusion == DifFusion::kConcat) {
      // F = sum_s X_s W_s^T + b with W_s = W[k0:k0+mk, s*nk+k0 : s*nk+k0+mk].
      const T* W = static_cast<const T*>(p.fusion_w);
      const T* bias = static_cast<const T*>(p.fusion_b);
      for (int64_t s = 0; s < S; ++s) {
        gemm<T>(false, true, rows, mk, mk, X + s * mk, ldx, W + k0 * S * nk + s * nk + k0, S * nk, s > 0, F, mk);
      }
      for (int64_t r = 0; r < rows; ++r) {
        T* f = F + r * mk;
        for (int64_t j = 0; j < mk; ++j) f[j] += bias[k0 + j];
      }
      return;
    }
    // gate: the S rows X_s[r] are consecutive rows of X viewed as [rows * S, mk]; W1's
    // columns k0..k0+mk meet them.
    const T* W1 = static_cast<const T*>(p.fusion_w);
    const T* b1 = static_cast<const T*>(p.fusion_b);
    const T* w2 = static_cast<const T*>(p.gate_w2);
    gemm<T>(false, true, rows * S, a, mk, X, mk, W1 + k0, nk, false, U, a);
    for (int64_t r = 0; r < rows; ++r) {
      T* g = G + r * S;
      T emax = -std::numeric_limits<T>::infinity();
      for (int64_t s = 0; s < S; ++s) {
        T* __restrict u = U + (r * S + s) * a;
        T e = T(0);  // b2 is the same for every source: it cancels in the softmax
#pragma omp simd reduction(+ : e)
        for (int64_t c = 0; c < a; ++c) {
          const T uc = u[c] + b1[c];
          u[c] = uc;
          e += w2[c] * std::max(uc, T(0));
        }
        g[s] = e;
        emax = std::max(emax, e);
      }
      T z = T(0);
      for (int64_t s = 0; s < S; ++s) {
        g[s] = std::exp(g[s] - emax);
        z += g[s];
      }
      for (int64_t s = 0; s < S; ++s) g[s] /= z;
      T* __restrict f = F + r * mk;
      const T* __restrict x = X + r * ldx;
      const T g0 = g[0];
#pragma omp simd
      for (int64_t j = 0; j < mk; ++j) f[j] = g0 * x[j];
      for (int64_t s = 1; s < S; ++s) {
        const T gs = g[s];
        const T* __restrict xs = x + s * mk;
#pragma omp simd
        for (int64_t j = 0; j < mk; ++j) f[j] += gs * xs[j];
      }
    }
  }

  // Query row i's softmax: prow[0, mk) = softmax of scale * frow + mask (0 from lim on);
  // returns the row's log-sum-exp. Needs lim[i] > 0 (the row has an allowed key).
  T softmax_row(int64_t i, const T* __restrict frow, T scale, T* __restrict prow) const {
    const int64_t l = lim[i];
    const T* __restrict br = bias.data() + i * mk;
    T m = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : m)
    for (int64_t j = 0; j < l; ++j) m = std::max(m, frow[j] * scale + br[j]);
    T sum = T(0);
    for (int64_t j = 0; j < l; ++j) {
      const T e = std::exp(frow[j] * scale + br[j] - m);
      prow[j] = e;
      sum += e;
    }
    const T inv = T(1) / sum;
#pragma omp simd
    for (int64_t j = 0; j < l; ++j) prow[j] *= inv;
    std::fill(prow + l, prow + mk, T(0));
    return m + std::log(sum);
  }

  // The same probabilities rebuilt from the saved log-sum-exp (backward).
  void probs_row(int64_t i, const T* __restrict frow, T scale, T lse_i, T* __restrict prow) const {
    const int64_t l = lim[i];
    const T* __restrict br = bias.data() + i * mk;
    for (int64_t j = 0; j < l; ++j) prow[j] = std::exp(frow[j] * scale + br[j] - lse_i);
    std::fill(prow + l, prow + mk, T(0));
  }

  // Flat index (in [B, H, nq, nk]) of element (q0 + i, k0) of block bh, for the dropout hash.
  uint64_t drop_index(int64_t bh, int64_t i) const {
    return static_cast<uint64_t>((bh * nq + q0 + i) * nk + k0);
  }

  // pd[j] = prow[j] * the dropout factor of element (i, j) of block bh, for j < lim[i]
  // (the rest of prow is 0 and stays 0). `pd` may be `prow`.
  void drop_row(int64_t bh, int64_t i, const T* prow, T* pd) {
    const int64_t l = lim[i];
    T* __restrict f = drop.data();
    dropout_factors<T>(p.mixed_seed, drop_index(bh, i), l, p.dropout_threshold, T(1.0 / (1.0 - p.dropout_p)), f);
#pragma omp simd
    for (int64_t j = 0; j < l; ++j) pd[j] = prow[j] * f[j];
    std::fill(pd + l, pd + mk, T(0));
  }
};

// Batch rows per task: enough work (~2^18 multiply-adds) that waking a thread pays off.
// Small problems then run on the calling thread; on a busy machine an OpenMP wake-up can
// cost milliseconds, far more than a tiny attention.
int64_t row_grain(const DifAttnProblem& p) {
  int64_t dq = 0;
  for (int64_t s = 0; s < p.num_sources; ++s) dq += p.q[s].cols;
  const int64_t per_row = std::max<int64_t>(
      1, p.H * p.nq * p.nk * (dq + p.dv + p.num_sources * std::max<int64_t>(p.gate_hidden, 1)));
  return std::max<int64_t>(1, (int64_t{1} << 18) / per_row);
}

template <typename T>
void forward_kernel(const DifAttnProblem& p, T* out, T* lse) {
  at::parallel_for(0, p.B, row_grain(p), [&](int64_t begin, int64_t end) {
    RowWork<T> w(p, /*backward=*/false);
    const int64_t H = p.H, nq = p.nq, dv = p.dv;
    const T scale = static_cast<T>(p.scale);
    const T neg_inf = -std::numeric_limits<T>::infinity();
    for (int64_t b = begin; b < end; ++b) {
      if (!w.plan(b)) {
        std::fill(out + b * H * nq * dv, out + (b + 1) * H * nq * dv, T(0));
        std::fill(lse + b * H * nq, lse + (b + 1) * H * nq, neg_inf);
        continue;
      }
      const int64_t q0 = w.q0, mq = w.mq, k0 = w.k0, mk = w.mk;
      for (int64_t h = 0; h < H; ++h) w.scores(b, h);
      w.fuse_heads();
      for (int64_t h = 0; h < H; ++h) {
        const int64_t bh = b * H + h;
        T* out_blk = out + bh * nq * dv;
        T* lse_blk = lse + bh * nq;
        std::fill(out_blk, out_blk + q0 * dv, T(0));
        std::fill(lse_blk, lse_blk + q0, neg_inf);
        gather<T>(p.v, b, h, k0, mk, w.V, dv, 0);
        const T* Fb = w.Fh(h);
        for (int64_t i = 0; i < mq; ++i) {
          T* prow = w.P + i * mk;
          if (w.lim[i] == 0) {
            std::fill(prow, prow + mk, T(0));
            lse_blk[q0 + i] = neg_inf;
            continue;
          }
          lse_blk[q0 + i] = w.softmax_row(i, Fb + i * mk, scale, prow);
          if (p.dropout_threshold > 0) w.drop_row(bh, i, prow, prow);
        }
        gemm<T>(false, false, mq, dv, mk, w.P, mk, w.V, dv, false, out_blk + q0 * dv, dv);
      }
    }
  });
}

// Gradient outputs of the backward (strided: each in its input's layout).
template <typename T>
struct Grads {
  OutOperand<T> q[kDifMaxSources];  // [B, H, nq, d_s]
  OutOperand<T> k[kDifMaxSources];  // [B, H, nk, d_s]
  OutOperand<T> v;                  // [B, H, nk, dv]
  T* fusion_acc;         // [chunks, fusion_numel] per-chunk accumulators, zeroed
  int64_t fusion_numel;
};

template <typename T>
void backward_kernel(const DifAttnProblem& p, const DifOperand& grad_out, const T* out, const T* lse,
                     const Grads<T>& g, int64_t num_chunks) {
  const int64_t rows_per_chunk = std::max<int64_t>(1, p.B / num_chunks);
  const int64_t chunk_grain = (row_grain(p) + rows_per_chunk - 1) / rows_per_chunk;
  at::parallel_for(0, num_chunks, chunk_grain, [&](int64_t cbegin, int64_t cend) {
    RowWork<T> w(p, /*backward=*/true);
    const int64_t H = p.H, nq = p.nq, nk = p.nk, dv = p.dv, S = w.S, Dq = w.Dq, a = w.a;
    const T scale = static_cast<T>(p.scale);
    const bool dropout = p.dropout_threshold > 0;
    for (int64_t chunk = cbegin; chunk < cend; ++chunk) {
      T* acc = g.fusion_acc + chunk * g.fusion_numel;
      for (int64_t b = chunk * p.B / num_chunks; b < (chunk + 1) * p.B / num_chunks; ++b) {
        if (!w.plan(b)) {
          for (int64_t h = 0; h < H; ++h) {
            g.v.zero(b, h, nk, dv);
            for (int64_t s = 0; s < S; ++s) {
              const int64_t d = w.off[s + 1] - w.off[s];
              g.q[s].zero(b, h, nq, d);
              g.k[s].zero(b, h, nk, d);
            }
          }
          continue;
        }
        const int64_t q0 = w.q0, mq = w.mq, k0 = w.k0, mk = w.mk;
        const int64_t ldx = S * mk;
        for (int64_t h = 0; h < H; ++h) w.scores(b, h);
        w.fuse_heads();

        // Per head: probabilities from the saved log-sum-exp, dV, and dF (the gradient of
        // the fused raw scores). Sum fusion finishes the head right away.
        for (int64_t h = 0; h < H; ++h) {
          const int64_t bh = b * H + h;
          gather<T>(p.v, b, h, k0, mk, w.V, dv, 0);
          gather<T>(grad_out, b, h, q0, mq, w.dO, dv, 0);
          std::memcpy(w.O, out + (bh * nq + q0) * dv, sizeof(T) * mq * dv);
          const T* Fb = w.Fh(h);
          const T* lse_blk = lse + bh * nq + q0;
          for (int64_t i = 0; i < mq; ++i) {
            T* prow = w.P + i * mk;
            T* pdrow = w.Pd + i * mk;
            if (w.lim[i] == 0) {
              std::fill(prow, prow + mk, T(0));
              std::fill(pdrow, pdrow + mk, T(0));
              continue;
            }
            w.probs_row(i, Fb + i * mk, scale, lse_blk[i], prow);
            if (dropout) {
              w.drop_row(bh, i, prow, pdrow);
            } else {
              std::memcpy(pdrow, prow, sizeof(T) * mk);
            }
          }
          // dV = Pd^T dO (rows outside [k0, k0+mk) are 0); dPd = dO V^T.
          gemm<T>(true, false, mk, dv, mq, w.Pd, mk, w.dO, dv, false, w.dV, dv);
          g.v.write(b, h, w.dV, dv, 0, k0, mk, nk, dv);
          T* dFb = w.dFh(h);
          gemm<T>(false, true, mq, mk, dv, w.dO, dv, w.V, dv, false, dFb, mk);
          // dF = scale * P * (dP - <dO, O>) with dP = dPd * dropout factor (in place);
          // P * dropout factor is Pd, so with dropout dF = scale * (Pd * dPd - P * <dO, O>)
          // and the mask is not hashed a second time.
          for (int64_t i = 0; i < mq; ++i) {
            T* __restrict drow = dFb + i * mk;
            if (w.lim[i] == 0) {
              std::fill(drow, drow + mk, T(0));
              continue;
            }
            const T* __restrict dOi = w.dO + i * dv;
            const T* __restrict Oi = w.O + i * dv;
            T D = T(0);
#pragma omp simd reduction(+ : D)
            for (int64_t c = 0; c < dv; ++c) D += dOi[c] * Oi[c];
            const T* __restrict prow = w.P + i * mk;  // 0 from lim[i] on, so drow is too
            if (dropout) {
              const T* __restrict pdrow = w.Pd + i * mk;
#pragma omp simd
              for (int64_t j = 0; j < mk; ++j) drow[j] = scale * (pdrow[j] * drow[j] - prow[j] * D);
            } else {
#pragma omp simd
              for (int64_t j = 0; j < mk; ++j) drow[j] = scale * prow[j] * (drow[j] - D);
            }
          }
          if (p.fusion == DifFusion::kSum) {
            gemm<T>(false, false, mq, Dq, mk, dFb, mk, w.Kh(h), Dq, false, w.dQc, Dq);
            gemm<T>(true, false, mk, Dq, mq, dFb, mk, w.Qh(h), Dq, false, w.dKc, Dq);
            for (int64_t s = 0; s < S; ++s) {
              const int64_t o = w.off[s], d = w.off[s + 1] - w.off[s];
              g.q[s].write(b, h, w.dQc, Dq, o, q0, mq, nq, d);
              g.k[s].write(b, h, w.dKc, Dq, o, k0, mk, nk, d);
            }
          }
        }
        if (p.fusion == DifFusion::kSum) continue;

        // Back through the fusion, all heads at once: dX (and the fusion parameters').
        const int64_t rows = H * mq;
        if (p.fusion == DifFusion::kConcat) {
          const T* W = static_cast<const T*>(p.fusion_w);
          T* dW = acc;                // [nk, S*nk]
          T* db = acc + nk * S * nk;  // [nk]
          for (int64_t s = 0; s < S; ++s) {
            const int64_t wo = k0 * S * nk + s * nk + k0;  // W_s = W[k0:, s*nk+k0:]
            gemm<T>(false, false, rows, mk, mk, w.dF, mk, W + wo, S * nk, false, w.dX + s * mk, ldx);
            gemm<T>(true, false, mk, mk, rows, w.dF, mk, w.X + s * mk, ldx, true, dW + wo, S * nk);
          }
          for (int64_t r = 0; r < rows; ++r) {
            const T* drow = w.dF + r * mk;
            for (int64_t j = 0; j < mk; ++j) db[k0 + j] += drow[j];
          }
        } else {
          const T* W1 = static_cast<const T*>(p.fusion_w);
          const T* w2 = static_cast<const T*>(p.gate_w2);
          T* dW1 = acc;           // [a, nk]
          T* db1 = dW1 + a * nk;  // [a]
          T* dw2 = db1 + a;       // [a]
          T* db2 = dw2 + a;       // [1]
          T* __restrict dw2r = dw2;
          T* __restrict db1r = db1;
          for (int64_t r = 0; r < rows; ++r) {
            const T* __restrict drow = w.dF + r * mk;
            const T* gr = w.G + r * S;
            T dg[kDifMaxSources];
            T gsum = T(0);
            for (int64_t s = 0; s < S; ++s) {
              const T* __restrict x = w.X + r * ldx + s * mk;
              T d = T(0);
#pragma omp simd reduction(+ : d)
              for (int64_t j = 0; j < mk; ++j) d += drow[j] * x[j];
              dg[s] = d;
              gsum += gr[s] * d;
            }
            for (int64_t s = 0; s < S; ++s) {
              const T gs = gr[s];
              const T de = gs * (dg[s] - gsum);  // d loss / d energy_s
              T* __restrict dx = w.dX + r * ldx + s * mk;
#pragma omp simd
              for (int64_t j = 0; j < mk; ++j) dx[j] = gs * drow[j];
              const T* __restrict u = w.U + (r * S + s) * a;
              T* __restrict du = w.dU + (r * S + s) * a;
#pragma omp simd
              for (int64_t c = 0; c < a; ++c) {
                const T uc = u[c];
                const T on = uc > T(0) ? de : T(0);  // relu' * d energy
                dw2r[c] += on * uc;
                const T duc = on * w2[c];
                du[c] = duc;
                db1r[c] += duc;
              }
              db2[0] += de;
            }
          }
          // Through W1: dX += dU W1[:, k0:], dW1[:, k0:] += dU^T X (X as [rows*S, mk]).
          gemm<T>(false, false, rows * S, mk, a, w.dU, a, W1 + k0, nk, true, w.dX, mk);
          gemm<T>(true, false, a, mk, rows * S, w.dU, a, w.X, mk, true, dW1 + k0, nk);
        }

        // Per head: back through the S score products.
        for (int64_t h = 0; h < H; ++h) {
          const int64_t bh = b * H + h;
          T* dXb = w.dXh(h);
          if (!p.fusion_sees_masked) w.mask_rows(dXb);
          for (int64_t s = 0; s < S; ++s) {
            const int64_t o = w.off[s], d = w.off[s + 1] - w.off[s];
            gemm<T>(false, false, mq, d, mk, dXb + s * mk, ldx, w.Kh(h) + o, Dq, false, w.dQc + o, Dq);
            gemm<T>(true, false, mk, d, mq, dXb + s * mk, ldx, w.Qh(h) + o, Dq, false, w.dKc + o, Dq);
          }
          for (int64_t s = 0; s < S; ++s) {
            const int64_t o = w.off[s], d = w.off[s + 1] - w.off[s];
            g.q[s].write(b, h, w.dQc, Dq, o, q0, mq, nq, d);
            g.k[s].write(b, h, w.dKc, Dq, o, k0, mk, nk, d);
          }
        }
      }
    }
  });
}

int64_t fusion_param_numel(at::TensorList fusion_params) {
  int64_t n = 0;
  for (const auto& t : fusion_params) n += t.numel();
  return n;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> dif_attention_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    std::optional<at::TensorList> side_q_opt, std::optional<at::TensorList> side_k_opt,
    std::optional<at::TensorList> fusion_params_opt,
    const std::optional<at::Tensor>& key_padding_mask, const std::optional<at::Tensor>& seed,
    std::string_view fusion, bool causal, std::optional<double> scale, bool fusion_sees_masked,
    double dropout_p) {
  const at::TensorList side_q = side_q_opt.value_or(at::TensorList{});
  const at::TensorList side_k = side_k_opt.value_or(at::TensorList{});
  const at::TensorList fusion_params = fusion_params_opt.value_or(at::TensorList{});
  std::vector<at::Tensor> owned;
  const DifAttnProblem p = dif_attention_check(q, k, v, side_q, side_k, fusion_params, fusion,
                                               key_padding_mask, causal, scale, fusion_sees_masked,
                                               dropout_p, seed, owned, "dif_attention");
  at::Tensor out = at::empty({p.B, p.H, p.nq, p.dv}, q.options());
  at::Tensor lse = at::empty({p.B, p.H, p.nq}, q.options());
  if (out.numel() == 0 && lse.numel() == 0) return {out, lse};
  if (p.nk == 0) {  // no keys at all: every row is fully masked
    out.zero_();
    lse.fill_(-std::numeric_limits<double>::infinity());
    return {out, lse};
  }
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "dif_attention_cpu", [&] {
    forward_kernel<scalar_t>(p, out.mutable_data_ptr<scalar_t>(), lse.mutable_data_ptr<scalar_t>());
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>,
           std::vector<at::Tensor>>
dif_attention_backward_cpu(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                           const at::Tensor& v, at::TensorList side_q, at::TensorList side_k,
                           at::TensorList fusion_params,
                           const std::optional<at::Tensor>& key_padding_mask,
                           const std::optional<at::Tensor>& seed, const at::Tensor& out,
                           const at::Tensor& lse, std::string_view fusion, bool causal,
                           std::optional<double> scale, bool fusion_sees_masked, double dropout_p) {
  constexpr const char* op = "dif_attention_backward";
  SameDevice{op}("grad_out", grad_out)("q", q)("k", k)("v", v)("side_q", side_q)("side_k", side_k)(
      "fusion_params", fusion_params)("key_padding_mask", key_padding_mask)("out", out)("lse", lse);
  std::vector<at::Tensor> owned;
  const DifAttnProblem p = dif_attention_check(q, k, v, side_q, side_k, fusion_params, fusion,
                                               key_padding_mask, causal, scale, fusion_sees_masked,
                                               dropout_p, seed, owned, op);
  const auto dtype = q.scalar_type();
  check_tensor(grad_out, op, "grad_out", dtype, 4);
  check_tensor(out, op, "out", dtype, 4);
  check_tensor(lse, op, "lse", dtype, 3);
  const std::vector<int64_t> out_shape{p.B, p.H, p.nq, p.dv};
  TORCH_CHECK(grad_out.sizes() == out_shape, op, ": argument 'grad_out' must be [B, H, nq, dv] = ",
              at::IntArrayRef(out_shape), ", got shape ", grad_out.sizes());
  TORCH_CHECK(out.sizes() == out_shape, op, ": argument 'out' must be [B, H, nq, dv] = ",
              at::IntArrayRef(out_shape), ", got shape ", out.sizes());
  TORCH_CHECK(lse.size(0) == p.B && lse.size(1) == p.H && lse.size(2) == p.nq, op,
              ": argument 'lse' must be [B, H, nq] = [", p.B, ", ", p.H, ", ", p.nq, "], got shape ",
              lse.sizes());

  // Each gradient in its input's layout (empty_like keeps the strides of a dense input,
  // e.g. the [B, H, n, d] head view of a [B, n, H*d] projection), so autograd neither
  // copies it to match the input nor before the projection's backward.
  at::Tensor grad_q = at::empty_like(q);
  at::Tensor grad_k = at::empty_like(k);
  at::Tensor grad_v = at::empty_like(v);
  std::vector<at::Tensor> grad_sq, grad_sk, grad_fp;
  for (size_t j = 0; j < side_q.size(); ++j) {
    grad_sq.push_back(at::empty_like(side_q[j]));
    grad_sk.push_back(at::empty_like(side_k[j]));
  }
  const int64_t BH = p.B * p.H;
  const int64_t num_chunks = std::min<int64_t>(p.B, kMaxChunks);
  const int64_t fp_numel = fusion_param_numel(fusion_params);
  at::Tensor acc = at::zeros({std::max<int64_t>(num_chunks, 1), fp_numel}, q.options());

  const bool empty = BH == 0 || p.nq == 0 || p.nk == 0;
  if (empty) {
    grad_q.zero_();
    grad_k.zero_();
    grad_v.zero_();
    for (auto& t : grad_sq) t.zero_();
    for (auto& t : grad_sk) t.zero_();
  } else {
    const at::Tensor out_c = out.contiguous();
    const at::Tensor lse_c = lse.contiguous();
    AT_DISPATCH_FLOATING_TYPES(dtype, "dif_attention_backward_cpu", [&] {
      auto operand = [](at::Tensor& t) {
        return OutOperand<scalar_t>{t.mutable_data_ptr<scalar_t>(), t.stride(0), t.stride(1), t.stride(2),
                                    t.stride(3)};
      };
      Grads<scalar_t> g{};
      g.q[0] = operand(grad_q);
      g.k[0] = operand(grad_k);
      for (size_t j = 0; j < grad_sq.size(); ++j) {
        g.q[j + 1] = operand(grad_sq[j]);
        g.k[j + 1] = operand(grad_sk[j]);
      }
      g.v = operand(grad_v);
      g.fusion_acc = acc.mutable_data_ptr<scalar_t>();
      g.fusion_numel = fp_numel;
      DifOperand go;
      go.data = grad_out.const_data_ptr();
      go.stride_b = grad_out.stride(0);
      go.stride_h = grad_out.stride(1);
      go.stride_row = grad_out.stride(2);
      go.stride_col = grad_out.stride(3);
      go.cols = p.dv;
      backward_kernel<scalar_t>(p, go, out_c.const_data_ptr<scalar_t>(), lse_c.const_data_ptr<scalar_t>(),
                                g, num_chunks);
    });
  }
  // Chunk accumulators added in chunk order (deterministic for any thread count).
  int64_t offset = 0;
  for (const auto& t : fusion_params) {
    at::Tensor gsum = at::zeros({t.numel()}, q.options());
    AT_DISPATCH_FLOATING_TYPES(dtype, "dif_attention_backward_reduce", [&] {
      scalar_t* dst = gsum.mutable_data_ptr<scalar_t>();
      const scalar_t* src = acc.const_data_ptr<scalar_t>();
      for (int64_t c = 0; c < num_chunks; ++c) {
        const scalar_t* row = src + c * fp_numel + offset;
        for (int64_t e = 0; e < t.numel(); ++e) dst[e] += row[e];
      }
    });
    grad_fp.push_back(gsum.view(t.sizes()));
    offset += t.numel();
  }
  return {grad_q, grad_k, grad_v, grad_sq, grad_sk, grad_fp};
}

}  // namespace seqrec::ops
