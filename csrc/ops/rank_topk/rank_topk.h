#pragma once
// rank_topk: the evaluator's operator. Full-ranking scores -> each user's top-k list
// and the rank of the target item, in one pass over the score row; and the sampled
// protocol (target vs stored negatives).
//
// Contract (checked on the CPU; a CUDA kernel `rank_topk_cuda` keeps the same one):
//
//   rank_topk(scores, history_indptr, history_items, target, k, exclude_history=True)
//     scores          [U, I] float32 / float64 / float16 / bfloat16, any strides.
//                     Column 0 is the padding item and is never a candidate; the
//                     candidates are items 1..I-1.
//     history_indptr  [U+1] int64, CSR row pointer local to this block:
//                     indptr[0] == 0, non-decreasing, indptr[U] == nnz.
//     history_items   [nnz] int64 in 0..I-1; row u's history is
//                     history_items[indptr[u]:indptr[u+1]] (order and duplicates do not
//                     matter; 0 is allowed and means nothing: padding is never ranked).
//     target          [U] int64 in 1..I-1.
//     k               >= 0 (k = 0 computes only the rank). Capped at I - 1, the number
//                     of candidate items, before anything is allocated: k' = min(k, I - 1).
//   returns
//     topk_items      [U, k'] int64: the k' best candidates, best first; order by score
//                     descending, ties broken by the lower item id; padded with 0 when
//                     the user has fewer than k candidates.
//     rank            [U] int64: 0-based rank of the target =
//                     #{candidate c != target : score[c] >= score[target]}.
//
//   Candidates: items 1..I-1, minus (when exclude_history) the user's history items,
//   except the target, which is always a candidate (always ranked).
//   Tie rule: a candidate whose score equals the target's counts as ranked above it
//   (ties count against the model), so a constant score gives the worst rank.
//   NaN anywhere in a ranked row raises (it has no place in an order).
//
//   rank_sampled(scores) -> rank
//     scores  [U, 1+N] float32 / float64 / float16 / bfloat16, any strides; column 0 is
//             the target, columns 1..N the sampled negatives.
//     rank    [U] int64 = #{j in 1..N : scores[u, j] >= scores[u, 0]} (same tie rule).
//
// Memory: O(U*k) outputs plus O(I) scratch per thread; nothing of size U*I.
#include <ATen/core/Tensor.h>

#include <tuple>

namespace seqrec::ops {

std::tuple<at::Tensor, at::Tensor> rank_topk_cpu(const at::Tensor& scores,
                                                 const at::Tensor& history_indptr,
                                                 const at::Tensor& history_items,
                                                 const at::Tensor& target, int64_t k,
                                                 bool exclude_history);

at::Tensor rank_sampled_cpu(const at::Tensor& scores);

}  // namespace seqrec::ops
