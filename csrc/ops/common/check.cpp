// Shared argument checks for the operator kernels (see common/check.h).
#include "ops/common/check.h"

#include <string>

namespace seqrec::ops {

void check_tensor(const at::Tensor& t, const char* op, const char* name, at::ScalarType dtype,
                  int64_t dim) {
  TORCH_CHECK(t.defined(), op, ": argument '", name, "' is undefined");
  TORCH_CHECK(t.scalar_type() == dtype, op, ": argument '", name, "' must have dtype ", dtype,
              ", got ", t.scalar_type());
  TORCH_CHECK(dim < 0 || t.dim() == dim, op, ": argument '", name, "' must be ", dim,
              "-dimensional, got shape ", t.sizes());
}

SameDevice& SameDevice::operator()(const char* name, const at::Tensor& t) {
  if (!t.defined()) return *this;
  if (!first_device_) {
    first_device_ = t.device();
    first_name_ = name;
    return *this;
  }
  TORCH_CHECK(t.device() == *first_device_, op_,
              ": expected all tensors to be on the same device, but argument '", name, "' is on ",
              t.device(), " while '", first_name_, "' is on ", *first_device_);
  return *this;
}

SameDevice& SameDevice::operator()(const char* name, const std::optional<at::Tensor>& t) {
  return t.has_value() ? (*this)(name, *t) : *this;
}

SameDevice& SameDevice::operator()(const char* name, at::TensorList ts) {
  for (size_t i = 0; i < ts.size(); ++i) {
    const std::string element = std::string(name) + "[" + std::to_string(i) + "]";
    (*this)(element.c_str(), ts[i]);
  }
  return *this;
}

void check_host_tensor(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), op, ": argument '", name,
              "' must be a CPU tensor (it is read on the host, whatever the device of the other "
              "arguments), got ", t.device());
}

}  // namespace seqrec::ops
