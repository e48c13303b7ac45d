#pragma once
// intent_cluster: soft assignment of sequence positions to intention prototypes
// (layer-normed cosine similarity, temperature softmax over prototypes) and the
// weighted aggregation of positions into one vector per prototype. Used by SINE
// (top-K activated concepts, per-concept attention) and DSS (K prototypes, p(i)).
//
// Shapes (B batch, n positions, D model size, L prototypes, K prototypes used per
// row: K = active.size(1) when `active` is given, K = L otherwise, Dv value size):
//   x             [B, n, D]   float32 / float64; positions (any padding layout)
//   mask          [B, n]      bool; true = real position, false = padding
//   prototypes    [L, D]      same dtype as x
//   tau           float > 0   softmax temperature
//   active        [B, K] int64, optional: indices into the L prototypes (SINE top-K);
//                             every index must lie in [0, L); repeats are allowed
//   active_scale  [B, K], optional (needs `active`): multiplies the selected
//                             prototypes before the normalisation (SINE's sigmoid(s))
//   weights       [B, n] or [B, K, n], optional: per-position weight, shared by the K
//                             prototypes (DSS p(i)) or per prototype (SINE P_{t|k});
//                             absent = all ones
//   values        [B, n, Dv], optional: what is aggregated; absent = x itself
//   eps           float > 0   layer-norm epsilon
// Math (N(u) = normalize(LN(u)), LN without affine, normalize as F.normalize with its
// 1e-12 floor):
//   c_k          = active_scale[b,k] * prototypes[active[b,k]]   (or prototypes[k])
//   probs[b,i,k] = softmax_k(<N(x[b,i]), N(c_k)> / tau) on real positions, 0 on padding
//   intents[b,k] = sum_i probs[b,i,k] * w[b,(k),i] * values[b,i]
// Returns (intents [B, K, Dv], probs [B, n, K]); fully padded rows give zeros.
//
// Memory: only [B, n, K] probabilities are ever materialised (never [B, n, L] when
// `active` is given); the backward recomputes N(x) and N(c) per row from x and the
// prototypes instead of saving them.
//
// Backward: grads for (x, prototypes, active_scale, weights, values), each computed
// only where output_mask says so; a grad not asked for comes back as an empty [0]
// tensor. grad_x includes the aggregation path when `values` is absent. Gradients
// at padded positions are zero. Prototype gradients are reduced in a fixed order
// (deterministic for a given thread count).
//
// Checks (RuntimeError naming the argument): dtypes, ranks, matching sizes, same
// device, tau > 0 and finite, eps > 0 and finite, active indices in range, active_scale only
// with active.
#include <ATen/core/Tensor.h>

#include <array>
#include <optional>
#include <tuple>

namespace seqrec::ops {

std::tuple<at::Tensor, at::Tensor> intent_cluster_cpu(
    const at::Tensor& x, const at::Tensor& mask, const at::Tensor& prototypes, double tau,
    const std::optional<at::Tensor>& active, const std::optional<at::Tensor>& active_scale,
    const std::optional<at::Tensor>& weights, const std::optional<at::Tensor>& values,
    double eps);

// Returns (grad_x, grad_prototypes, grad_active_scale, grad_weights, grad_values).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> intent_cluster_backward_cpu(
    const at::Tensor& grad_intents, const at::Tensor& grad_probs, const at::Tensor& x,
    const at::Tensor& mask, const at::Tensor& prototypes, const at::Tensor& probs, double tau,
    const std::optional<at::Tensor>& active, const std::optional<at::Tensor>& active_scale,
    const std::optional<at::Tensor>& weights, const std::optional<at::Tensor>& values,
    double eps, std::array<bool, 5> output_mask);

}  // namespace seqrec::ops
