#include "server/tensor_update.h"

#include <spdlog/spdlog.h>

#include <cstring>
#include <map>
#include <memory>

#include "common/base64.h"
#include "common/error.h"
#include "io/json_file.h"

namespace fp4serve {

namespace {

// The newest version byte of torch's IPC handles whose 'c' payload is known (torch 2.13 writes 3, 2.12 and older 2).
constexpr uint8_t kTorchIpcHandleVersion = 3;

// Bounds sizes and offsets so that no byte arithmetic below can overflow (1 TiB: more than any device holds).
constexpr uint64_t kMaxTensorBytes = uint64_t{1} << 40;

// torch's dtype names (str(tensor.dtype) without "torch.") of the dtypes a checkpoint of ours can hold.
DType parse_torch_dtype(const std::string& name, std::string_view where) {
  static const std::map<std::string, DType, std::less<>> dtypes{{"bfloat16", DType::BF16},
                                                                {"float16", DType::F16},
                                                                {"float32", DType::F32},
                                                                {"uint8", DType::U8},
                                                                {"float8_e4m3fn", DType::F8_E4M3}};
  const auto it = dtypes.find(name);
  FP4_CHECK(it != dtypes.end(),
            "{}: field 'dtype' = \"{}\" is not supported; use \"bfloat16\", \"float16\", \"float32\", \"uint8\" or "
            "\"float8_e4m3fn\"",
            where, name);
  return it->second;
}

std::vector<int64_t> int_list(const nlohmann::json& object, std::string_view field, std::string_view where) {
  const nlohmann::json& list = object.at(field);
  FP4_CHECK(list.is_array(), "{}: field '{}' must be a list of integers, got {}", where, field, json_type_name(list));
  std::vector<int64_t> values;
  for (const nlohmann::json& v : list) {
    FP4_CHECK(v.is_number_integer(), "{}: field '{}' must be a list of integers, got {}", where, field, list.dump());
    values.push_back(v.get<int64_t>());
  }
  return values;
}

uint64_t non_negative(const nlohmann::json& object, std::string_view field, std::string_view where) {
  const int64_t value = required_int(object, field, where);
  FP4_CHECK(value >= 0, "{}: field '{}' = {} must be >= 0", where, field, value);
  return static_cast<uint64_t>(value);
}

// torch's handle bytes (c10's CUDACachingAllocator::shareIpcHandle): [version][type]['c': the 64-byte
// cudaIpcMemHandle_t], or the bare 64 bytes before torch versioned them. 'e' (an expandable segment) carries a
// handle of the driver's virtual memory API that only a process given its file descriptor can import.
const uint8_t* cuda_ipc_mem_handle(const std::vector<uint8_t>& handle, const std::string& where) {
  constexpr size_t kBare = cuda::kIpcHandleBytes, kVersioned = 2 + cuda::kIpcHandleBytes;
  if (handle.size() == kBare) return handle.data();
  FP4_CHECK(handle.size() >= 2 && handle[1] != 'e',
            "{}: field 'handle' is an expandable-segment handle (the trainer runs with "
            "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True), which cudaIpcOpenMemHandle cannot open: allocate the "
            "pushed tensors with expandable segments off, or send them inline", where);
  FP4_CHECK(handle.size() == kVersioned && handle[1] == 'c' && handle[0] <= kTorchIpcHandleVersion,
            "{}: field 'handle' holds {} bytes{}; expected storage._share_cuda_()[1]: {} bytes (version <= {}, type "
            "'c', the cudaIpcMemHandle_t) or the bare {}-byte cudaIpcMemHandle_t",
            where, handle.size(),
            handle.size() >= 2 ? fmt::format(" (version {}, type 0x{:02X})", handle[0], handle[1]) : "", kVersioned,
            kTorchIpcHandleVersion, kBare);
  return handle.data() + 2;
}

CudaIpcStorage parse_cuda_ipc(const nlohmann::json& ipc, const std::string& where) {
  const std::string ipc_where = where + ".cuda_ipc";
  FP4_CHECK(ipc.is_object(), "{}: must be an object, got {}", ipc_where, json_type_name(ipc));
  CudaIpcStorage storage{.device = static_cast<int64_t>(non_negative(ipc, "device", ipc_where)),
                         .handle = {},
                         .storage_size_bytes = non_negative(ipc, "storage_size_bytes", ipc_where),
                         .storage_offset_bytes = non_negative(ipc, "storage_offset_bytes", ipc_where)};
  const std::vector<uint8_t> handle =
      base64_decode(required_string(ipc, "handle", ipc_where), ipc_where + ": field 'handle'");
  std::memcpy(storage.handle.data(), cuda_ipc_mem_handle(handle, ipc_where), storage.handle.size());
  return storage;
}

SerializedTensor parse_tensor(const nlohmann::json& entry, const std::string& position) {
  FP4_CHECK(entry.is_object(), "{}: must be an object with 'name', 'dtype', 'size' and 'cuda_ipc' or 'data', got {}",
            position, json_type_name(entry));
  SerializedTensor t;
  t.name = required_string(entry, "name", position);
  t.where = fmt::format("{} ('{}')", position, t.name);
  FP4_CHECK(!t.name.empty(), "{}: field 'name' is empty", position);
  t.dtype = parse_torch_dtype(required_string(entry, "dtype", t.where), t.where);
  FP4_CHECK(entry.contains("size"), "{}: required field 'size' is missing", t.where);
  t.size = int_list(entry, "size", t.where);
  for (int64_t d : t.size) FP4_CHECK(d >= 0, "{}: field 'size' = {} has a negative dimension", t.where, shape_to_string(t.size));
  FP4_CHECK(static_cast<uint64_t>(shape_numel(t.size, t.where)) <= kMaxTensorBytes / dtype_size(t.dtype),
            "{}: field 'size' = {} is larger than any tensor a model of ours holds", t.where, shape_to_string(t.size));

  // Contiguous (C order) only: strides of dimensions of size 1 do not matter, as in torch's is_contiguous().
  if (entry.contains("stride") && !entry["stride"].is_null()) {
    const std::vector<int64_t> stride = int_list(entry, "stride", t.where);
    FP4_CHECK(stride.size() == t.size.size(), "{}: field 'stride' has {} dimensions, 'size' has {}", t.where,
              stride.size(), t.size.size());
    int64_t expected = 1;
    for (size_t i = t.size.size(); i-- > 0;) {
      FP4_CHECK(t.size[i] == 1 || stride[i] == expected,
                "{}: field 'stride' = {} is not contiguous for size {}; send tensor.contiguous()", t.where,
                shape_to_string(stride), shape_to_string(t.size));
      expected *= t.size[i];
    }
  }
  t.storage_offset = optional_int(entry, "storage_offset", t.where).value_or(0);
  FP4_CHECK(t.storage_offset >= 0 && static_cast<uint64_t>(t.storage_offset) <= kMaxTensorBytes,
            "{}: field 'storage_offset' = {} must be >= 0 and within a storage", t.where, t.storage_offset);

  const bool has_data = entry.contains("data") && !entry["data"].is_null();
  const bool has_ipc = entry.contains("cuda_ipc") && !entry["cuda_ipc"].is_null();
  FP4_CHECK(has_data != has_ipc, "{}: give exactly one of 'cuda_ipc' (a CUDA tensor) and 'data' (base64 bytes)",
            t.where);
  if (has_data) {
    FP4_CHECK(t.storage_offset == 0, "{}: field 'storage_offset' must be 0 with inline 'data'", t.where);
    t.data = base64_decode(required_string(entry, "data", t.where), t.where + ": field 'data'");
    FP4_CHECK(t.data.size() == t.nbytes(), "{}: field 'data' holds {} bytes; dtype {} and size {} need {}", t.where,
              t.data.size(), required_string(entry, "dtype", t.where), shape_to_string(t.size), t.nbytes());
  } else {
    t.cuda_ipc = parse_cuda_ipc(entry["cuda_ipc"], t.where);
    const uint64_t first_byte = static_cast<uint64_t>(t.storage_offset) * dtype_size(t.dtype);
    FP4_CHECK(t.cuda_ipc->storage_size_bytes <= kMaxTensorBytes && t.cuda_ipc->storage_offset_bytes <= kMaxTensorBytes,
              "{}: storage_size_bytes {} or storage_offset_bytes {} is larger than any device memory", t.where,
              t.cuda_ipc->storage_size_bytes, t.cuda_ipc->storage_offset_bytes);
    FP4_CHECK(first_byte + t.nbytes() <= t.cuda_ipc->storage_size_bytes,
              "{}: the tensor (storage_offset {} elements, {} bytes) ends past its storage's storage_size_bytes {}",
              t.where, t.storage_offset, t.nbytes(), t.cuda_ipc->storage_size_bytes);
  }
  return t;
}

// One trainer allocation mapped into this process; closed when it goes out of scope (close() reports a failure).
class IpcMapping {
 public:
  IpcMapping(const uint8_t* handle, const std::string& where) : where_(where) {
    try {
      base_ = static_cast<uint8_t*>(cuda::ipc_open(handle));
    } catch (const Error& e) {
      fail("{}: cannot open its CUDA IPC handle: {} (is the trainer's process alive, on this machine's GPU, and "
           "holding the tensor until the response?)", where, e.what());
    }
  }
  ~IpcMapping() {
    if (base_ == nullptr) return;
    try {
      cuda::ipc_close(base_);
    } catch (const Error& e) {
      spdlog::warn("{}: closing its CUDA IPC handle failed: {}", where_, e.what());
    }
  }
  IpcMapping(const IpcMapping&) = delete;
  IpcMapping& operator=(const IpcMapping&) = delete;

  const uint8_t* base() const { return base_; }
  void close() {
    uint8_t* base = std::exchange(base_, nullptr);
    try {
      cuda::ipc_close(base);
    } catch (const Error& e) {
      fail("{}: closing its CUDA IPC handle failed: {}", where_, e.what());
    }
  }

 private:
  std::string where_;  // the first tensor read through it
  uint8_t* base_ = nullptr;
};

}  // namespace

uint64_t SerializedTensor::nbytes() const { return static_cast<uint64_t>(shape_numel(size)) * dtype_size(dtype); }

TensorUpdateRequest parse_update_weights_from_tensor_request(const nlohmann::json& body) {
  const std::string where = "request body";
  FP4_CHECK(body.is_object(), "{}: must be a JSON object, got {}", where, json_type_name(body));
  TensorUpdateRequest request{.tensors = {},
                              .flush_cache = optional_bool(body, "flush_cache", where).value_or(true),
                              .abort_all_requests = optional_bool(body, "abort_all_requests", where).value_or(false),
                              .weight_version = optional_string(body, "weight_version", where)};
  if (const auto format = optional_string(body, "load_format", where))
    fail("{}: load_format \"{}\" is not supported; send the tensors as serialized_named_tensors (README)", where,
         *format);
  FP4_CHECK(body.contains("serialized_named_tensors"), "{}: required field 'serialized_named_tensors' is missing",
            where);
  const nlohmann::json& ranks = body["serialized_named_tensors"];
  FP4_CHECK(ranks.is_array(), "{}: field 'serialized_named_tensors' must be a list with one list of tensors per "
            "tensor-parallel rank, got {}", where, json_type_name(ranks));
  FP4_CHECK(ranks.size() == 1, "{}: field 'serialized_named_tensors' has {} entries (one per tensor-parallel rank); "
            "this server runs tp_size 1: send exactly one", where, ranks.size());
  const nlohmann::json& entries = ranks[0];
  FP4_CHECK(entries.is_array(), "{}: serialized_named_tensors[0] must be a list of tensors, got {}", where,
            json_type_name(entries));
  FP4_CHECK(!entries.empty(), "{}: serialized_named_tensors[0] is empty; give at least one tensor", where);
  for (size_t i = 0; i < entries.size(); ++i)
    request.tensors.push_back(parse_tensor(entries[i], fmt::format("serialized_named_tensors[0][{}]", i)));
  return request;
}

std::vector<HostTensor> copy_to_host(std::vector<SerializedTensor> tensors, bool serving_on_cuda) {
  std::map<std::array<uint8_t, cuda::kIpcHandleBytes>, std::unique_ptr<IpcMapping>> mappings;
  std::vector<HostTensor> host;
  for (SerializedTensor& t : tensors) {
    if (!t.cuda_ipc) {
      host.push_back({std::move(t.name), t.dtype, std::move(t.size), std::move(t.data)});
      continue;
    }
    FP4_CHECK(serving_on_cuda, "{}: a CUDA IPC tensor needs a server on the GPU (--device cuda); this one serves on "
              "the CPU: send the tensor's bytes inline ('data')", t.where);
    // PyTorch's caching allocator places many tensors in one allocation: each allocation is opened once.
    std::unique_ptr<IpcMapping>& mapping = mappings[t.cuda_ipc->handle];
    if (!mapping) mapping = std::make_unique<IpcMapping>(t.cuda_ipc->handle.data(), t.where);
    std::vector<uint8_t> bytes(t.nbytes());
    const uint8_t* first =
        mapping->base() + t.cuda_ipc->storage_offset_bytes + static_cast<uint64_t>(t.storage_offset) * dtype_size(t.dtype);
    try {
      cuda::memcpy_sync(bytes.data(), first, bytes.size(), cuda::CopyKind::DeviceToHost);
    } catch (const Error& e) {
      fail("{}: copying {} bytes from the trainer's device memory failed: {}", t.where, bytes.size(), e.what());
    }
    host.push_back({std::move(t.name), t.dtype, std::move(t.size), std::move(bytes)});
  }
  for (auto& [handle, mapping] : mappings) mapping->close();
  return host;
}

}  // namespace fp4serve
