// CPU kernels of dif_attention and dif_attention_backward (contract in dif_attention.h).
//
// Parallel over (b, h) blocks with at::parallel_for. A worker gathers one block's
// operands into contiguous scratch, runs the block's small matrix products through
// at::mm_out / at::addmm_out on views of that scratch (torch's BLAS: MKL on x86 builds,
// a few microseconds per product at n = 50, several times faster than a plain loop), and
// does the masking, fusion, softmax and dropout in plain loops. Only one block's
// S x nq x nk scores live per worker; the backward recomputes them from q/k (and the
// probabilities from the saved log-sum-exp) instead of storing anything B*H*nq*nk.
//
// The fusion-parameter gradients are summed per fixed chunk of blocks and the chunks are
// then added in order, so the result does not depend on the number of threads.
#include "ops/dif_attention/dif_attention.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#include "ops/common/check.h"

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
  const auto dtype = q.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, op,
              ": argument 'q' must be float32 or float64, got ", dtype);
  check_tensor(q, op, "q", dtype, 4);
  check_tensor(k, op, "k", dtype, 4);
  check_tensor(v, op, "v", dtype, 4);
  check_same_device(q, k, op, "q", "k");
  check_same_device(q, v, op, "q", "v");

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
    check_same_device(q, sq, op, "q", nq_name.c_str());
    check_same_device(q, sk, op, "q", nk_name.c_str());
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
    check_same_device(q, fusion_params[j], op, "q", name.c_str());
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
    check_same_device(q, m, op, "q", "key_padding_mask");
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
    TORCH_CHECK(seed->device().is_cpu(), op, ": argument 'seed' must be a CPU tensor, got ",
                seed->device());
    p.mixed_seed = dif_mix64(static_cast<uint64_t>(seed->item<int64_t>()));
    p.dropout_threshold = static_cast<uint64_t>(std::llround(dropout_p * 4294967296.0));
  }
  return p;
}

// ---------------------------------------------------------------------------------------
// Kernels.

namespace {

// Blocks per fusion-gradient accumulator; fixed so that the reduction order is too.
constexpr int64_t kMaxChunks = 64;

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

// Copies block (b, h) of a strided operand into dst[rows, ld] at column offset `col0`.
template <typename T>
void gather(const DifOperand& o, int64_t b, int64_t h, int64_t rows, T* dst, int64_t ld, int64_t col0) {
  const T* src = static_cast<const T*>(o.data) + b * o.stride_b + h * o.stride_h;
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

// Scatters columns [col0, col0 + cols) of src[rows, ld] into a contiguous [rows, cols] block.
template <typename T>
void scatter(const T* src, int64_t ld, int64_t col0, int64_t rows, int64_t cols, T* dst) {
  for (int64_t i = 0; i < rows; ++i) std::memcpy(dst + i * cols, src + i * ld + col0, sizeof(T) * cols);
}

// Sizes and the per-worker scratch of one block.
template <typename T>
struct Block {
  const DifAttnProblem& p;
  int64_t S, nq, nk, dv, Dq, a;
  int64_t off[kDifMaxSources + 1];  // column offset of source s in Qc / Kc; off[S] = Dq
  std::vector<T> buf;
  T *Qc, *Kc, *V, *X, *F, *P, *U, *G;
  // backward only
  T *dO, *O, *Pd, *dP, *dX, *dU, *dQc, *dKc;
  std::vector<uint8_t> allowed;  // [nq, nk] 1 = key j allowed for query i
  std::vector<uint8_t> active;   // [nq] row has at least one allowed key

  Block(const DifAttnProblem& prob, bool backward) : p(prob) {
    S = p.num_sources;
    nq = p.nq;
    nk = p.nk;
    dv = p.dv;
    a = p.gate_hidden;
    off[0] = 0;
    for (int64_t s = 0; s < S; ++s) off[s + 1] = off[s] + p.q[s].cols;
    Dq = off[S];
    const bool fused = p.fusion != DifFusion::kSum;
    // 64-byte aligned pieces of one allocation.
    auto round = [](int64_t n) { return (n + 15) / 16 * 16; };
    const int64_t sizes[] = {
        nq * Dq, nk * Dq, nk * dv, fused ? nq * S * nk : 0, nq * nk, nq * nk,
        p.fusion == DifFusion::kGate ? nq * S * a : 0, nq * S,
        // backward
        backward ? nq * dv : 0, backward ? nq * dv : 0, backward ? nq * nk : 0,
        backward ? nq * nk : 0, backward && fused ? nq * S * nk : 0,
        backward && p.fusion == DifFusion::kGate ? nq * S * a : 0, backward ? nq * Dq : 0,
        backward ? nk * Dq : 0};
    int64_t total = 16;
    for (int64_t s : sizes) total += round(s);
    buf.assign(total, T(0));
    T* base = buf.data();
    const auto addr = reinterpret_cast<uintptr_t>(base);
    base += ((64 - addr % 64) % 64) / sizeof(T);
    T* ptrs[16];
    for (int i = 0; i < 16; ++i) {
      ptrs[i] = base;
      base += round(sizes[i]);
    }
    Qc = ptrs[0]; Kc = ptrs[1]; V = ptrs[2]; X = ptrs[3]; F = ptrs[4]; P = ptrs[5];
    U = ptrs[6]; G = ptrs[7]; dO = ptrs[8]; O = ptrs[9]; Pd = ptrs[10]; dP = ptrs[11];
    dX = ptrs[12]; dU = ptrs[13]; dQc = ptrs[14]; dKc = ptrs[15];
    allowed.assign(nq * nk, 0);
    active.assign(nq, 0);
  }

  // Loads q, k, v of block (b, h) and builds its mask.
  void load(int64_t b, int64_t h) {
    for (int64_t s = 0; s < S; ++s) {
      gather<T>(p.q[s], b, h, nq, Qc, Dq, off[s]);
      gather<T>(p.k[s], b, h, nk, Kc, Dq, off[s]);
    }
    gather<T>(p.v, b, h, nk, V, dv, 0);
    const bool* kpm = p.key_padding_mask ? p.key_padding_mask + b * nk : nullptr;
    for (int64_t i = 0; i < nq; ++i) {
      const int64_t jend = p.causal ? i + 1 : nk;
      uint8_t* row = allowed.data() + i * nk;
      uint8_t any = 0;
      for (int64_t j = 0; j < nk; ++j) {
        const uint8_t ok = (j < jend) && (kpm == nullptr || kpm[j]);
        row[j] = ok;
        any |= ok;
      }
      active[i] = any;
    }
  }

  // F = fused raw scores [nq, nk]; for gate also U (pre-activations incl. b1) and G
  // (the softmax weights over sources), for gate/concat X (the fusion input).
  void fuse() {
    if (p.fusion == DifFusion::kSum) {
      // Sum of the S products = one product over the concatenated head dims; masked
      // entries need no zeroing (they are masked to -inf after the fusion anyway).
      gemm<T>(false, true, nq, nk, Dq, Qc, Dq, Kc, Dq, false, F, nk);
      return;
    }
    const int64_t ldx = S * nk;
    for (int64_t s = 0; s < S; ++s) {
      gemm<T>(false, true, nq, nk, off[s + 1] - off[s], Qc + off[s], Dq, Kc + off[s], Dq, false,
              X + s * nk, ldx);
    }
    if (!p.fusion_sees_masked) {
      for (int64_t i = 0; i < nq; ++i) {
        const uint8_t* ok = allowed.data() + i * nk;
        for (int64_t s = 0; s < S; ++s) {
          T* x = X + i * ldx + s * nk;
          for (int64_t j = 0; j < nk; ++j) x[j] = ok[j] ? x[j] : T(0);
        }
      }
    }
    if (p.fusion == DifFusion::kConcat) {
      const T* W = static_cast<const T*>(p.fusion_w);
      const T* bias = static_cast<const T*>(p.fusion_b);
      gemm<T>(false, true, nq, nk, S * nk, X, ldx, W, S * nk, false, F, nk);
      for (int64_t i = 0; i < nq; ++i) {
        T* f = F + i * nk;
        for (int64_t j = 0; j < nk; ++j) f[j] += bias[j];
      }
      return;
    }
    // gate: the S rows X_s[i] are consecutive rows of X viewed as [nq * S, nk].
    const T* W1 = static_cast<const T*>(p.fusion_w);
    const T* b1 = static_cast<const T*>(p.fusion_b);
    const T* w2 = static_cast<const T*>(p.gate_w2);
    gemm<T>(false, true, nq * S, a, nk, X, nk, W1, nk, false, U, a);
    for (int64_t i = 0; i < nq; ++i) {
      T* g = G + i * S;
      T emax = -std::numeric_limits<T>::infinity();
      for (int64_t s = 0; s < S; ++s) {
        T* u = U + (i * S + s) * a;
        T e = T(0);  // b2 is the same for every source: it cancels in the softmax
        for (int64_t c = 0; c < a; ++c) {
          u[c] += b1[c];
          e += w2[c] * std::max(u[c], T(0));
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
      T* f = F + i * nk;
      const T* x = X + i * ldx;
      for (int64_t j = 0; j < nk; ++j) f[j] = g[0] * x[j];
      for (int64_t s = 1; s < S; ++s) {
        const T gs = g[s];
        const T* xs = x + s * nk;
        for (int64_t j = 0; j < nk; ++j) f[j] += gs * xs[j];
      }
    }
  }

  // Dropout factor of element (i, j): keep / (1 - p) or 0.
  T drop_factor(uint64_t t) const {
    return dif_dropout_keep(p.mixed_seed, t, p.dropout_threshold) ? T(1.0 / (1.0 - p.dropout_p)) : T(0);
  }
};

template <typename T>
void forward_kernel(const DifAttnProblem& p, T* out, T* lse) {
  const int64_t BH = p.B * p.H;
  at::parallel_for(0, BH, 1, [&](int64_t begin, int64_t end) {
    Block<T> blk(p, /*backward=*/false);
    const int64_t nq = p.nq, nk = p.nk;
    const T scale = static_cast<T>(p.scale);
    const T neg_inf = -std::numeric_limits<T>::infinity();
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / p.H, h = bh % p.H;
      blk.load(b, h);
      blk.fuse();
      T* lse_blk = lse + bh * nq;
      for (int64_t i = 0; i < nq; ++i) {
        T* prow = blk.P + i * nk;
        const T* frow = blk.F + i * nk;
        const uint8_t* ok = blk.allowed.data() + i * nk;
        if (!blk.active[i]) {
          std::fill(prow, prow + nk, T(0));
          lse_blk[i] = neg_inf;
          continue;
        }
        T m = neg_inf;
        for (int64_t j = 0; j < nk; ++j) {
          if (ok[j]) m = std::max(m, frow[j] * scale);
        }
        T sum = T(0);
        for (int64_t j = 0; j < nk; ++j) {
          const T e = ok[j] ? std::exp(frow[j] * scale - m) : T(0);
          prow[j] = e;
          sum += e;
        }
        const T inv = T(1) / sum;
        for (int64_t j = 0; j < nk; ++j) prow[j] *= inv;
        lse_blk[i] = m + std::log(sum);
        if (p.dropout_threshold > 0) {
          const uint64_t t0 = static_cast<uint64_t>((bh * nq + i) * nk);
          for (int64_t j = 0; j < nk; ++j) prow[j] *= blk.drop_factor(t0 + j);
        }
      }
      gemm<T>(false, false, nq, p.dv, nk, blk.P, nk, blk.V, p.dv, false, out + bh * nq * p.dv, p.dv);
    }
  });
}

// Gradient outputs of the backward, as plain pointers (all contiguous).
template <typename T>
struct Grads {
  T* q[kDifMaxSources];  // [B, H, nq, d_s]
  T* k[kDifMaxSources];  // [B, H, nk, d_s]
  T* v;                  // [B, H, nk, dv]
  T* fusion_acc;         // [chunks, fusion_numel] per-chunk accumulators, zeroed
  int64_t fusion_numel;
};

template <typename T>
void backward_kernel(const DifAttnProblem& p, const DifOperand& grad_out, const T* out, const T* lse,
                     const Grads<T>& g, int64_t num_chunks) {
  const int64_t BH = p.B * p.H;
  at::parallel_for(0, num_chunks, 1, [&](int64_t cbegin, int64_t cend) {
    Block<T> blk(p, /*backward=*/true);
    const int64_t nq = p.nq, nk = p.nk, dv = p.dv, S = blk.S, Dq = blk.Dq, a = blk.a;
    const T scale = static_cast<T>(p.scale);
    const bool dropout = p.dropout_threshold > 0;
    const bool fused = p.fusion != DifFusion::kSum;
    const int64_t ldx = S * nk;
    for (int64_t chunk = cbegin; chunk < cend; ++chunk) {
      T* acc = g.fusion_acc + chunk * g.fusion_numel;
      for (int64_t bh = chunk * BH / num_chunks; bh < (chunk + 1) * BH / num_chunks; ++bh) {
        const int64_t b = bh / p.H, h = bh % p.H;
        blk.load(b, h);
        gather<T>(grad_out, b, h, nq, blk.dO, dv, 0);
        std::memcpy(blk.O, out + bh * nq * dv, sizeof(T) * nq * dv);
        blk.fuse();
        // Probabilities from the saved log-sum-exp; Pd = after dropout.
        const T* lse_blk = lse + bh * nq;
        for (int64_t i = 0; i < nq; ++i) {
          T* prow = blk.P + i * nk;
          T* pdrow = blk.Pd + i * nk;
          const T* frow = blk.F + i * nk;
          const uint8_t* ok = blk.allowed.data() + i * nk;
          if (!blk.active[i]) {
            std::fill(prow, prow + nk, T(0));
            std::fill(pdrow, pdrow + nk, T(0));
            continue;
          }
          const T l = lse_blk[i];
          for (int64_t j = 0; j < nk; ++j) prow[j] = ok[j] ? std::exp(frow[j] * scale - l) : T(0);
          if (dropout) {
            const uint64_t t0 = static_cast<uint64_t>((bh * nq + i) * nk);
            for (int64_t j = 0; j < nk; ++j) pdrow[j] = prow[j] * blk.drop_factor(t0 + j);
          } else {
            std::memcpy(pdrow, prow, sizeof(T) * nk);
          }
        }
        // dV = Pd^T dO, written in place; dPd = dO V^T.
        gemm<T>(true, false, nk, dv, nq, blk.Pd, nk, blk.dO, dv, false, g.v + bh * nk * dv, dv);
        gemm<T>(false, true, nq, nk, dv, blk.dO, dv, blk.V, dv, false, blk.dP, nk);
        // dF = scale * P * (dP - <dO, O>), dP = dPd * dropout factor; stored in dP.
        T* dF = blk.dP;
        for (int64_t i = 0; i < nq; ++i) {
          T* drow = dF + i * nk;
          if (!blk.active[i]) {
            std::fill(drow, drow + nk, T(0));
            continue;
          }
          T D = T(0);
          for (int64_t c = 0; c < dv; ++c) D += blk.dO[i * dv + c] * blk.O[i * dv + c];
          const T* prow = blk.P + i * nk;
          if (dropout) {
            const uint64_t t0 = static_cast<uint64_t>((bh * nq + i) * nk);
            for (int64_t j = 0; j < nk; ++j) {
              drow[j] = scale * prow[j] * (drow[j] * blk.drop_factor(t0 + j) - D);
            }
          } else {
            for (int64_t j = 0; j < nk; ++j) drow[j] = scale * prow[j] * (drow[j] - D);
          }
        }

        if (!fused) {
          gemm<T>(false, false, nq, Dq, nk, dF, nk, blk.Kc, Dq, false, blk.dQc, Dq);
          gemm<T>(true, false, nk, Dq, nq, dF, nk, blk.Qc, Dq, false, blk.dKc, Dq);
        } else {
          if (p.fusion == DifFusion::kConcat) {
            const T* W = static_cast<const T*>(p.fusion_w);
            gemm<T>(false, false, nq, S * nk, nk, dF, nk, W, S * nk, false, blk.dX, ldx);
            T* dW = acc;                 // [nk, S*nk]
            T* db = acc + nk * S * nk;   // [nk]
            gemm<T>(true, false, nk, S * nk, nq, dF, nk, blk.X, ldx, true, dW, S * nk);
            for (int64_t i = 0; i < nq; ++i) {
              const T* drow = dF + i * nk;
              for (int64_t j = 0; j < nk; ++j) db[j] += drow[j];
            }
          } else {
            const T* W1 = static_cast<const T*>(p.fusion_w);
            const T* w2 = static_cast<const T*>(p.gate_w2);
            T* dW1 = acc;               // [a, nk]
            T* db1 = dW1 + a * nk;      // [a]
            T* dw2 = db1 + a;           // [a]
            T* db2 = dw2 + a;           // [1]
            for (int64_t i = 0; i < nq; ++i) {
              const T* drow = dF + i * nk;
              const T* gi = blk.G + i * S;
              T dg[kDifMaxSources];
              T gsum = T(0);
              for (int64_t s = 0; s < S; ++s) {
                const T* x = blk.X + i * ldx + s * nk;
                T d = T(0);
                for (int64_t j = 0; j < nk; ++j) d += drow[j] * x[j];
                dg[s] = d;
                gsum += gi[s] * d;
              }
              for (int64_t s = 0; s < S; ++s) {
                const T gs = gi[s];
                const T de = gs * (dg[s] - gsum);  // d loss / d energy_s
                T* dx = blk.dX + i * ldx + s * nk;
                for (int64_t j = 0; j < nk; ++j) dx[j] = gs * drow[j];
                const T* u = blk.U + (i * S + s) * a;
                T* du = blk.dU + (i * S + s) * a;
                for (int64_t c = 0; c < a; ++c) {
                  const bool on = u[c] > T(0);
                  dw2[c] += on ? de * u[c] : T(0);
                  du[c] = on ? de * w2[c] : T(0);
                  db1[c] += du[c];
                }
                db2[0] += de;
              }
            }
            // Through W1: dX += dU W1, dW1 += dU^T X (rows of X viewed as [nq*S, nk]).
            gemm<T>(false, false, nq * S, nk, a, blk.dU, a, W1, nk, true, blk.dX, nk);
            gemm<T>(true, false, a, nk, nq * S, blk.dU, a, blk.X, nk, true, dW1, nk);
          }
          if (!p.fusion_sees_masked) {
            for (int64_t i = 0; i < nq; ++i) {
              const uint8_t* ok = blk.allowed.data() + i * nk;
              for (int64_t s = 0; s < S; ++s) {
                T* dx = blk.dX + i * ldx + s * nk;
                for (int64_t j = 0; j < nk; ++j) dx[j] = ok[j] ? dx[j] : T(0);
              }
            }
          }
          for (int64_t s = 0; s < S; ++s) {
            const int64_t o = blk.off[s], d = blk.off[s + 1] - blk.off[s];
            gemm<T>(false, false, nq, d, nk, blk.dX + s * nk, ldx, blk.Kc + o, Dq, false, blk.dQc + o, Dq);
            gemm<T>(true, false, nk, d, nq, blk.dX + s * nk, ldx, blk.Qc + o, Dq, false, blk.dKc + o, Dq);
          }
        }
        for (int64_t s = 0; s < S; ++s) {
          const int64_t o = blk.off[s], d = blk.off[s + 1] - blk.off[s];
          scatter<T>(blk.dQc, Dq, o, nq, d, g.q[s] + bh * nq * d);
          scatter<T>(blk.dKc, Dq, o, nk, d, g.k[s] + bh * nk * d);
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
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::TensorList side_q,
    at::TensorList side_k, at::TensorList fusion_params,
    const std::optional<at::Tensor>& key_padding_mask, const std::optional<at::Tensor>& seed,
    std::string_view fusion, bool causal, std::optional<double> scale, bool fusion_sees_masked,
    double dropout_p) {
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
  std::vector<at::Tensor> owned;
  const DifAttnProblem p = dif_attention_check(q, k, v, side_q, side_k, fusion_params, fusion,
                                               key_padding_mask, causal, scale, fusion_sees_masked,
                                               dropout_p, seed, owned, op);
  const auto dtype = q.scalar_type();
  check_tensor(grad_out, op, "grad_out", dtype, 4);
  check_tensor(out, op, "out", dtype, 4);
  check_tensor(lse, op, "lse", dtype, 3);
  check_same_device(q, grad_out, op, "q", "grad_out");
  const std::vector<int64_t> out_shape{p.B, p.H, p.nq, p.dv};
  TORCH_CHECK(grad_out.sizes() == out_shape, op, ": argument 'grad_out' must be [B, H, nq, dv] = ",
              at::IntArrayRef(out_shape), ", got shape ", grad_out.sizes());
  TORCH_CHECK(out.sizes() == out_shape, op, ": argument 'out' must be [B, H, nq, dv] = ",
              at::IntArrayRef(out_shape), ", got shape ", out.sizes());
  TORCH_CHECK(lse.size(0) == p.B && lse.size(1) == p.H && lse.size(2) == p.nq, op,
              ": argument 'lse' must be [B, H, nq] = [", p.B, ", ", p.H, ", ", p.nq, "], got shape ",
              lse.sizes());

  at::Tensor grad_q = at::empty(q.sizes(), q.options());
  at::Tensor grad_k = at::empty(k.sizes(), k.options());
  at::Tensor grad_v = at::empty(v.sizes(), v.options());
  std::vector<at::Tensor> grad_sq, grad_sk, grad_fp;
  for (size_t j = 0; j < side_q.size(); ++j) {
    grad_sq.push_back(at::empty(side_q[j].sizes(), q.options()));
    grad_sk.push_back(at::empty(side_k[j].sizes(), q.options()));
  }
  const int64_t BH = p.B * p.H;
  const int64_t num_chunks = std::min<int64_t>(BH, kMaxChunks);
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
      Grads<scalar_t> g{};
      g.q[0] = grad_q.mutable_data_ptr<scalar_t>();
      g.k[0] = grad_k.mutable_data_ptr<scalar_t>();
      for (size_t j = 0; j < grad_sq.size(); ++j) {
        g.q[j + 1] = grad_sq[j].mutable_data_ptr<scalar_t>();
        g.k[j + 1] = grad_sk[j].mutable_data_ptr<scalar_t>();
      }
      g.v = grad_v.mutable_data_ptr<scalar_t>();
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
