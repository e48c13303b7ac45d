// The single registration point of seqrec's compiled core.
//
//  * TORCH_LIBRARY(seqrec): the schema of every tensor operator, then one
//    TORCH_LIBRARY_IMPL block per dispatch key. Autograd and fake (meta) kernels are
//    registered from Python (python/seqrec/ops/), which owns them.
//  * PYBIND11_MODULE(_C): the data engine (parsers, id maps, CSR sequences, batching,
//    sampling), which trades in NumPy arrays, never in torch types.
//
// Importing seqrec._C runs the registrations.

#include <cstring>
#include <string_view>

#include <torch/library.h>
#include <pybind11/gil_safe_call_once.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "data/checks.h"
#include "data/errors.h"
#include "data/readers.h"
#include "data/sampling.h"
#include "data/sequences.h"

#include "ops/common/hash_dropout_cpu.h"
#include "ops/intent_cluster/intent_cluster.h"
#include "ops/dif_attention/dif_attention.h"
#include "ops/dropout/dropout.h"
#include "ops/rank_topk/rank_topk.h"
#include "ops/seq_mask/seq_mask.h"

namespace py = pybind11;
namespace sd = seqrec::data;

namespace {

using LongArray = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;
using DoubleArray = py::array_t<double, py::array::c_style | py::array::forcecast>;

// Hands a vector to NumPy without copying: the array owns it through a capsule.
template <typename T>
py::array_t<T> to_numpy(std::vector<T>&& v, std::vector<py::ssize_t> shape = {}) {
  auto* owned = new std::vector<T>(std::move(v));
  py::capsule free_when_done(owned, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  if (shape.empty()) shape = {static_cast<py::ssize_t>(owned->size())};
  return py::array_t<T>(shape, owned->data(), free_when_done);
}

py::list tokens_of(const sd::IdMap& map) { return py::cast(map.tokens()); }

// Array arguments of the engine functions: 1-D, of the expected kind of number, as a
// contiguous int64 / float64 array. Any other input (a float or string array where
// ids are expected, a matrix) is a DataError naming the function and the argument;
// what the values must satisfy is checked in csrc/data/checks.h.
py::array as_numbers(const char* fn, const char* arg, const py::handle& obj, const char* kinds,
                     const char* expected) {
  py::array arr = py::array::ensure(obj);
  if (!arr) {
    PyErr_Clear();
    throw sd::DataError(std::string(fn) + ": " + arg + " must be an array of " + expected);
  }
  if (arr.ndim() != 1)
    throw sd::DataError(std::string(fn) + ": " + arg + " must be 1-D, got " +
                        std::to_string(arr.ndim()) + " dimensions");
  if (arr.size() > 0 && std::string_view(kinds).find(arr.dtype().kind()) == std::string_view::npos)
    throw sd::DataError(std::string(fn) + ": " + arg + " must hold " + expected + ", got dtype " +
                        std::string(py::str(arr.dtype())));
  return arr;
}

LongArray longs(const char* fn, const char* arg, const py::handle& obj) {
  return LongArray::ensure(as_numbers(fn, arg, obj, "iu", "integers"));
}

DoubleArray doubles(const char* fn, const char* arg, const py::handle& obj) {
  return DoubleArray::ensure(as_numbers(fn, arg, obj, "iuf", "numbers"));
}

int64_t size_of(const py::array& a) { return static_cast<int64_t>(a.size()); }

sd::CsrView csr_view(const LongArray& indptr, const LongArray& items, int64_t num_items) {
  return {indptr.data(), items.data(), size_of(indptr) - 1, size_of(items), num_items};
}

// DataError messages quote file content; the readers make it printable UTF-8 already,
// and decoding with backslashreplace keeps any byte that slips through visible instead
// of turning the whole message into a UnicodeDecodeError.
PYBIND11_CONSTINIT py::gil_safe_call_once_and_store<py::object> data_error_type;

void register_data_error(py::module_& m) {
  data_error_type.call_once_and_store_result(
      [&]() { return py::object(py::exception<sd::DataError>(m, "DataError", PyExc_ValueError)); });
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const sd::DataError& e) {
      const char* msg = e.what();
      PyObject* text = PyUnicode_DecodeUTF8(msg, static_cast<Py_ssize_t>(std::strlen(msg)),
                                            "backslashreplace");
      if (text == nullptr) {
        PyErr_Clear();
        text = PyUnicode_FromString("(the error message could not be decoded)");
      }
      py::set_error(data_error_type.get_stored(), py::reinterpret_steal<py::object>(text));
    }
  });
}

void bind_data_engine(py::module_& m) {
  register_data_error(m);

  m.def("read_s3rec_text", [](const std::string& path) {
    sd::SequenceTable t;
    {
      py::gil_scoped_release nogil;
      t = sd::read_s3rec_text(path);
    }
    py::dict out;
    out["user_tokens"] = tokens_of(t.users);
    out["item_tokens"] = tokens_of(t.items);
    out["indptr"] = to_numpy(std::move(t.indptr));
    out["items"] = to_numpy(std::move(t.item_ids));
    return out;
  }, py::arg("path"), "Parse an S3-Rec text file into id maps and CSR sequences.");

  m.def("read_atomic", [](const std::string& path, const std::vector<std::string>& fields) {
    sd::AtomicTable t;
    {
      py::gil_scoped_release nogil;
      t = sd::read_atomic(path, fields);
    }
    py::list columns;
    for (auto& c : t.columns) {
      py::dict col;
      col["name"] = c.name;
      col["type"] = c.type;
      if (c.type == "token" || c.type == "token_seq") {
        col["vocab"] = tokens_of(c.vocab);
        col["codes"] = to_numpy(std::move(c.codes));
      } else {
        col["values"] = to_numpy(std::move(c.values));
      }
      if (!c.indptr.empty()) col["indptr"] = to_numpy(std::move(c.indptr));
      columns.append(col);
    }
    py::dict out;
    out["num_rows"] = t.num_rows;
    out["columns"] = columns;
    return out;
  }, py::arg("path"), py::arg("fields") = std::vector<std::string>{},
     "Parse the requested columns of a RecBole atomic file (all when fields is empty).");

  m.def("group_by_user", [](const py::object& users_in, const py::object& items_in,
                            const py::object& timestamps_in, int64_t num_users) {
    constexpr const char* fn = "group_by_user";
    const LongArray users = longs(fn, "users", users_in);
    const LongArray items = longs(fn, "items", items_in);
    std::optional<DoubleArray> timestamps;
    if (!timestamps_in.is_none()) timestamps = doubles(fn, "timestamps", timestamps_in);
    sd::check::same_length(fn, "users", size_of(users), "items", size_of(items));
    if (timestamps) sd::check::same_length(fn, "users", size_of(users), "timestamps", size_of(*timestamps));
    sd::Csr csr;
    {
      py::gil_scoped_release nogil;
      csr = sd::group_by_user(users.data(), items.data(), timestamps ? timestamps->data() : nullptr,
                              size_of(users), num_users);
    }
    py::object times = py::none();
    if (timestamps) times = to_numpy(std::move(csr.times));
    return py::make_tuple(to_numpy(std::move(csr.indptr)), to_numpy(std::move(csr.values)), times);
  }, py::arg("users"), py::arg("items"), py::arg("timestamps"), py::arg("num_users"),
     "CSR of users' items in time order: (indptr, items, timestamps in that order or None).");

  m.def("natural_order", [](const std::vector<std::string>& tokens) -> py::object {
    std::vector<int64_t> order;
    bool known;
    {
      py::gil_scoped_release nogil;
      known = sd::natural_order(tokens, order);
    }
    if (!known) return py::none();
    return to_numpy(std::move(order));
  }, py::arg("tokens"),
     "Indices of tokens in natural order (integers by value, then text), or None when Python must decide.");

  m.def("kcore", [](const py::object& indptr_in, const py::object& items_in, int64_t num_items,
                    int64_t min_user, int64_t min_item) {
    const LongArray indptr = longs("kcore", "indptr", indptr_in);
    const LongArray items = longs("kcore", "items", items_in);
    sd::Csr csr{{indptr.data(), indptr.data() + indptr.size()},
                {items.data(), items.data() + items.size()}};
    sd::KCoreResult r;
    {
      py::gil_scoped_release nogil;
      r = sd::kcore(csr, num_items, min_user, min_item);
    }
    return py::make_tuple(to_numpy(std::move(r.sequences.indptr)),
                          to_numpy(std::move(r.sequences.values)), to_numpy(std::move(r.kept_users)),
                          to_numpy(std::move(r.kept_items)));
  }, py::arg("indptr"), py::arg("items"), py::arg("num_items"), py::arg("min_user"),
     py::arg("min_item"));

  m.def("train_batch", [](const py::object& indptr_in, const py::object& items_in, int64_t num_items,
                          const py::object& users_in, const py::object& prefix_len_in,
                          int64_t max_len, int64_t num_negatives, uint64_t seed, uint64_t stream) {
    constexpr const char* fn = "train_batch";
    const LongArray indptr = longs(fn, "indptr", indptr_in), items = longs(fn, "items", items_in);
    const LongArray users = longs(fn, "users", users_in);
    const LongArray prefix_len = longs(fn, "prefix_len", prefix_len_in);
    sd::check::same_length(fn, "users", size_of(users), "prefix_len", size_of(prefix_len));
    const int64_t b = size_of(users);
    sd::TrainBatch t;
    {
      py::gil_scoped_release nogil;
      t = sd::build_train_batch(csr_view(indptr, items, num_items), users.data(), prefix_len.data(),
                                b, max_len, num_negatives, seed, stream);
    }
    return py::make_tuple(to_numpy(std::move(t.input_ids), {b, max_len}),
                          to_numpy(std::move(t.target_ids), {b, max_len}),
                          to_numpy(std::move(t.negative_ids), {b, max_len, num_negatives}),
                          to_numpy(std::move(t.lengths)));
  }, py::arg("indptr"), py::arg("items"), py::arg("num_items"), py::arg("users"),
     py::arg("prefix_len"), py::arg("max_len"), py::arg("num_negatives"), py::arg("seed"),
     py::arg("stream"));

  m.def("eval_batch", [](const py::object& indptr_in, const py::object& items_in, int64_t num_items,
                         const py::object& users_in, const py::object& prefix_len_in, int64_t max_len) {
    constexpr const char* fn = "eval_batch";
    const LongArray indptr = longs(fn, "indptr", indptr_in), items = longs(fn, "items", items_in);
    const LongArray users = longs(fn, "users", users_in);
    const LongArray prefix_len = longs(fn, "prefix_len", prefix_len_in);
    sd::check::same_length(fn, "users", size_of(users), "prefix_len", size_of(prefix_len));
    const int64_t b = size_of(users);
    sd::EvalBatch e;
    {
      py::gil_scoped_release nogil;
      e = sd::build_eval_batch(csr_view(indptr, items, num_items), users.data(), prefix_len.data(),
                               b, max_len);
    }
    return py::make_tuple(to_numpy(std::move(e.input_ids), {b, max_len}),
                          to_numpy(std::move(e.lengths)), to_numpy(std::move(e.target)),
                          to_numpy(std::move(e.history_indptr)),
                          to_numpy(std::move(e.history_items)));
  }, py::arg("indptr"), py::arg("items"), py::arg("num_items"), py::arg("users"),
     py::arg("prefix_len"), py::arg("max_len"));

  m.def("sample_unseen", [](const py::object& indptr_in, const py::object& items_in, int64_t num_items,
                            const py::object& users_in, int64_t num_negatives, uint64_t seed,
                            uint64_t stream) {
    constexpr const char* fn = "sample_unseen";
    const LongArray indptr = longs(fn, "indptr", indptr_in), items = longs(fn, "items", items_in);
    const LongArray users = longs(fn, "users", users_in);
    const int64_t b = size_of(users);
    std::vector<int64_t> out;
    {
      py::gil_scoped_release nogil;
      out = sd::sample_unseen(csr_view(indptr, items, num_items), users.data(), b, num_negatives,
                              seed, stream);
    }
    return to_numpy(std::move(out), {b, num_negatives});
  }, py::arg("indptr"), py::arg("items"), py::arg("num_items"), py::arg("users"),
     py::arg("num_negatives"), py::arg("seed"), py::arg("stream"));
}

}  // namespace

TORCH_LIBRARY(seqrec, m) {
  m.def("rank_topk(Tensor scores, Tensor history_indptr, Tensor history_items, Tensor target, int k, bool exclude_history=True) -> (Tensor topk_items, Tensor rank)");
  m.def("rank_sampled(Tensor scores) -> Tensor rank");
  m.def(
      "intent_cluster(Tensor x, Tensor mask, Tensor prototypes, float tau, Tensor? active=None, "
      "Tensor? active_scale=None, Tensor? weights=None, Tensor? values=None, float eps=1e-05) "
      "-> (Tensor intents, Tensor probs)");
  m.def(
      "intent_cluster_backward(Tensor grad_intents, Tensor grad_probs, Tensor x, Tensor mask, "
      "Tensor prototypes, Tensor probs, float tau, Tensor? active, Tensor? active_scale, "
      "Tensor? weights, Tensor? values, float eps, bool[5] output_mask) -> (Tensor grad_x, "
      "Tensor grad_prototypes, Tensor grad_active_scale, Tensor grad_weights, Tensor grad_values)");
  m.def("seq_mask(Tensor item_seq, Tensor? item_attributes=None, *, int num_items, int mask_token, "
        "float mask_prob, int seed, bool mask_last=True) -> (Tensor masked_items, "
        "Tensor pos_items, Tensor neg_items, Tensor masked_segment_seq, Tensor pos_segment, "
        "Tensor neg_segment, Tensor segment_start, Tensor segment_len, Tensor attribute_targets)");
  // Optional inputs are Tensor? / Tensor[]? with default None: AOTInductor's proxy
  // executor passes an empty tensor list as None (a plain Tensor[] then fails with
  // "Expected a value of type 'List[Tensor]' for argument 'side_q'"), and torch.export
  // leaves out arguments at their defaults. None means [] for the lists.
  m.def("dif_attention(Tensor q, Tensor k, Tensor v, Tensor[]? side_q=None, Tensor[]? side_k=None, Tensor[]? fusion_params=None, Tensor? key_padding_mask=None, Tensor? seed=None, *, str fusion=\"sum\", bool causal=True, float? scale=None, bool fusion_sees_masked=False, float dropout_p=0.0) -> (Tensor out, Tensor lse)");
  m.def("dif_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor[] side_q, Tensor[] side_k, Tensor[] fusion_params, Tensor? key_padding_mask, Tensor? seed, Tensor out, Tensor lse, str fusion, bool causal, float? scale, bool fusion_sees_masked, float dropout_p) -> (Tensor grad_q, Tensor grad_k, Tensor grad_v, Tensor[] grad_side_q, Tensor[] grad_side_k, Tensor[] grad_fusion_params)");
  m.def("dropout(Tensor x, Tensor seed, float p) -> Tensor");
}

TORCH_LIBRARY_IMPL(seqrec, CPU, m) {
  m.impl("rank_topk", &seqrec::ops::rank_topk_cpu);
  m.impl("rank_sampled", &seqrec::ops::rank_sampled_cpu);
  m.impl("intent_cluster", &seqrec::ops::intent_cluster_cpu);
  m.impl("intent_cluster_backward", &seqrec::ops::intent_cluster_backward_cpu);
  m.impl("seq_mask", &seqrec::ops::seq_mask_cpu);
  m.impl("dif_attention", &seqrec::ops::dif_attention_cpu);
  m.impl("dif_attention_backward", &seqrec::ops::dif_attention_backward_cpu);
  m.impl("dropout", &seqrec::ops::dropout_cpu);
}

#ifdef SEQREC_WITH_CUDA
TORCH_LIBRARY_IMPL(seqrec, CUDA, m) {
}
#endif

PYBIND11_MODULE(_C, m) {
  m.doc() = "seqrec compiled core: torch operators (torch.ops.seqrec) and the data engine";
  m.def("cuda_built", []() {
#ifdef SEQREC_WITH_CUDA
    return true;
#else
    return false;
#endif
  }, "True when the CUDA kernels were compiled into this build.");
  m.def("cpu_dropout_path", []() { return seqrec::ops::avx2_enabled() ? "avx2" : "baseline"; },
        "The loops the CPU kernels hash dropout masks with: \"avx2\", or \"baseline\" (no AVX2, "
        "or SEQREC_CPU_AVX2=0). Both draw the same masks.");
  auto data = m.def_submodule("data", "The C++ data engine: parsers, CSR sequences, batching, sampling");
  bind_data_engine(data);
}
