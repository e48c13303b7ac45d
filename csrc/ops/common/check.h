#pragma once
// Argument validation shared by every operator: messages name the operator, the
// argument and what was expected, and surface in Python as RuntimeError.
#include <ATen/core/Tensor.h>
#include <ATen/core/List.h>

#include <optional>

namespace seqrec::ops {

// dtype must match exactly; dim < 0 accepts any rank.
void check_tensor(const at::Tensor& t, const char* op, const char* name, at::ScalarType dtype,
                  int64_t dim);

// Every tensor argument of an op on one device: the first defined tensor fixes it and
// any other one on another device raises, naming both arguments and both devices (the
// same words as the Python check in seqrec/ops/_checks.py, which the fake kernels and
// the references run). Usage, arguments in schema order:
//   SameDevice{op}("q", q)("k", k)("side_q", side_q)("key_padding_mask", mask);
// Optional arguments that are absent and undefined tensors are skipped; list elements
// are named "side_q[0]", ...
class SameDevice {
 public:
  explicit SameDevice(const char* op) : op_(op) {}
  SameDevice& operator()(const char* name, const at::Tensor& t);
  SameDevice& operator()(const char* name, const std::optional<at::Tensor>& t);
  SameDevice& operator()(const char* name, at::TensorList ts);

 private:
  const char* op_;
  std::string first_name_;
  std::optional<at::Device> first_device_;
};

// A scalar the kernels read on the host (a dropout seed): must be a CPU tensor,
// whatever the device of the other arguments.
void check_host_tensor(const at::Tensor& t, const char* op, const char* name);

}  // namespace seqrec::ops
