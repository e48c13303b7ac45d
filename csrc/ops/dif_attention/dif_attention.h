#pragma once
// dif_attention: DIF-SR's decoupled side-information attention (Xie et al., SIGIR 2022),
// per (batch, head). SASRec's causal attention is its special case with one source.
//
// Contract (checked by dif_attention_check, shared by the CPU kernel and a future
// `dif_attention_cuda`, which must keep the same one, dropout hash included):
//
//   dif_attention(q, k, v, side_q=None, side_k=None, fusion_params=None,
//                 key_padding_mask=None, seed=None, *, fusion="sum", causal=True,
//                 scale=None, fusion_sees_masked=False, dropout_p=0.0) -> (out, lse)
//   (The optional inputs are positional, as register_autograd refuses kwarg-only
//   tensors, with default None so that torch.export / AOTInductor can leave them out:
//   the lists are Tensor[]?, None meaning [], because AOTInductor passes an empty list
//   as None. The dispatcher drops trailing arguments at their defaults, so the Python
//   backward returns one gradient per argument actually passed.)
//
//   q        [B, H, nq, dh]   item queries            (float32 / float64, any strides,
//   k        [B, H, nk, dh]   item keys                stride 0 allowed: expanded
//   v        [B, H, nk, dv]   item values              inputs are read, never copied)
//   side_q   S-1 tensors [B, H, nq, d_s]  queries of the side sources (position,
//   side_k   S-1 tensors [B, H, nk, d_s]  attributes...); d_s may differ per source
//            and from dh. Source 0 is the item (q, k); source s >= 1 is side_*[s-1].
//   fusion_params  "sum": []   "concat": [W [nk, S*nk], b [nk]]
//                  "gate": [W1 [a, nk], b1 [a], w2 [1, a], b2 [1]]  (a >= 1)
//            (the nn.Linear parameter shapes of DIF-SR's fusion layers), same dtype.
//   key_padding_mask  [B, nk] bool (any strides), True = real key. None = all real.
//   causal   query i sees keys j <= i (needs nq == nk).
//   scale    multiplies the FUSED scores; None = 1/sqrt(dh).
//   fusion_sees_masked  see "Masking" below.
//   seed     int64 tensor with one element on the CPU; required when dropout_p > 0
//            (a tensor, not an int, so a fresh seed per step does not recompile graphs).
//   dropout_p in [0, 1).
// returns
//   out      [B, H, nq, dv], contiguous, dtype of q.
//   lse      [B, H, nq], contiguous, float32 for float32 inputs / float64 for float64:
//            log-sum-exp of the masked scaled logits of each row (what the backward
//            needs to rebuild the probabilities); -inf for a row with no allowed key.
//
// Math, per (b, h) block, with A[i, j] = "key j allowed for query i"
// = key_padding_mask[b, j] && (!causal || j <= i):
//   R_s  = q_s k_s^T                          raw scores of source s, [nq, nk]
//   X_s  = fusion_sees_masked ? R_s : R_s * A  (disallowed entries zeroed)
//   fused row i, from the S rows X_s[i, :] of length nk:
//     sum:    F[i] = sum_s X_s[i]
//     concat: F[i] = W @ concat_s(X_s[i]) + b
//     gate:   e_s = w2 . relu(W1 X_s[i] + b1) + b2;  g = softmax_s(e);
//             F[i] = sum_s g_s X_s[i]                (DIF-SR's VanillaAttention)
//   Z = scale * F, masked to -inf where !A;  P = softmax_j(Z)  (rows with no allowed key:
//   P = 0, so out = 0 and every gradient through the row is 0, never NaN)
//   dropout: P'[i, j] = P[i, j] * keep(b, h, i, j) / (1 - p)
//   out = P' v
//
// Scale: DIF-SR's code fuses the RAW score matrices and divides the fused matrix by
//   sqrt(item head size) (paper eq. 10 writes sqrt(d)); we do the same. A per-source
//   scale is a rescaling of side_q, so it is left to the caller's projections.
// Masking: DIF-SR's code fuses full raw rows, masked entries included, and masks after
//   fusion. For gate/concat that lets a query's fused scores depend on padding keys and,
//   under causal masking, on FUTURE keys (W1 / W mix every column of the row) - a leak
//   when every position is trained on its next item. By default (fusion_sees_masked
//   = false) disallowed entries are zeroed before the fusion, so outputs are invariant to
//   padded and future keys; fusion_sees_masked = true reproduces DIF-SR's code exactly
//   (except that a row with no allowed key outputs 0 instead of a uniform average).
//   For "sum" both settings give the same result.
//
// Dropout mask: keep(b, h, i, j) is a pure function of (seed, t, p) with
//   t = ((b * H + h) * nq + i) * nk + j  (dropout_keep, ops/common/hash_dropout.h), so the backward
//   regenerates it and every backend draws the same mask. Nothing of size B*H*nq*nk is
//   stored.
//
//   dif_attention_backward(grad_out, q, k, v, side_q, side_k, fusion_params,
//                          key_padding_mask, seed, out, lse, fusion, causal, scale,
//                          fusion_sees_masked, dropout_p)
//     -> (grad_q, grad_k, grad_v, grad_side_q[S-1], grad_side_k[S-1],
//         grad_fusion_params[as fusion_params])
//   grad_out [B, H, nq, dv] any strides; out, lse as returned by the forward.
//   Every gradient is `empty_like` its input: the input's strides when it is dense (e.g.
//   the [B, H, n, d] head view of a [B, n, H*d] projection), contiguous otherwise (an
//   expanded, stride-0 input gets the full-size gradient; autograd's expand sums it). Fusion-parameter gradients
//   are reduced over (b, h) in a fixed order: bitwise reproducible for any thread count.
//
// Memory: the CPU kernel works on one batch row (its H blocks) at a time per thread
// (O(H * S * nq * max(nk, a)) scratch per thread); nothing of size B*H*nq*nk is
// allocated or saved, the backward recomputes the scores from q/k and the probabilities
// from lse. A CUDA kernel should tile the same way (one block of queries per CTA).
#include <ATen/core/Tensor.h>

#include <c10/macros/Macros.h>
#include <optional>

#include "ops/common/hash_dropout.h"

#include <cstdint>
#include <string_view>
#include <tuple>
#include <vector>

namespace seqrec::ops {

enum class DifFusion : int { kSum = 0, kConcat = 1, kGate = 2 };

// Maximum number of sources (item + side) a kernel accepts.
constexpr int64_t kDifMaxSources = 16;

// One strided 4-D operand [B, H, rows, cols] as plain pointer + element strides.
struct DifOperand {
  const void* data = nullptr;
  int64_t stride_b = 0, stride_h = 0, stride_row = 0, stride_col = 0;
  int64_t cols = 0;
};

// Everything a kernel needs, validated; no torch types.
struct DifAttnProblem {
  int64_t B = 0, H = 0, nq = 0, nk = 0, dv = 0;
  int64_t num_sources = 1;               // S = 1 + number of side sources
  DifOperand q[kDifMaxSources];          // q[0] = item q, q[s] = side_q[s-1]
  DifOperand k[kDifMaxSources];
  DifOperand v;
  DifFusion fusion = DifFusion::kSum;
  int64_t gate_hidden = 0;               // a (gate only)
  const void* fusion_w = nullptr;        // concat W [nk, S*nk] | gate W1 [a, nk], contiguous
  const void* fusion_b = nullptr;        // concat b [nk]       | gate b1 [a]
  const void* gate_w2 = nullptr;         // [a]
  const void* gate_b2 = nullptr;         // [1]
  const bool* key_padding_mask = nullptr;  // [B, nk] contiguous, nullptr = all real
  bool causal = true;
  bool fusion_sees_masked = false;
  double scale = 1.0;
  double dropout_p = 0.0;
  uint64_t mixed_seed = 0;               // mix64(seed)
  uint64_t dropout_threshold = 0;        // round(p * 2^32); 0 = no dropout
};

// Validates the forward's arguments (messages name the op and the argument) and fills a
// problem. `owned` keeps alive the small contiguous copies it makes (fusion parameters,
// mask); `op` names the caller in messages.
DifAttnProblem dif_attention_check(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   at::TensorList side_q, at::TensorList side_k,
                                   at::TensorList fusion_params, std::string_view fusion,
                                   const std::optional<at::Tensor>& key_padding_mask, bool causal,
                                   std::optional<double> scale, bool fusion_sees_masked,
                                   double dropout_p, const std::optional<at::Tensor>& seed,
                                   std::vector<at::Tensor>& owned, const char* op);

std::tuple<at::Tensor, at::Tensor> dif_attention_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    std::optional<at::TensorList> side_q, std::optional<at::TensorList> side_k,
    std::optional<at::TensorList> fusion_params,  // None = [] (how AOTInductor passes empty lists)
    const std::optional<at::Tensor>& key_padding_mask, const std::optional<at::Tensor>& seed,
    std::string_view fusion, bool causal, std::optional<double> scale, bool fusion_sees_masked,
    double dropout_p);

std::tuple<at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>,
           std::vector<at::Tensor>>
dif_attention_backward_cpu(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                           const at::Tensor& v, at::TensorList side_q, at::TensorList side_k,
                           at::TensorList fusion_params,
                           const std::optional<at::Tensor>& key_padding_mask,
                           const std::optional<at::Tensor>& seed, const at::Tensor& out,
                           const at::Tensor& lse, std::string_view fusion, bool causal,
                           std::optional<double> scale, bool fusion_sees_masked, double dropout_p);

}  // namespace seqrec::ops
