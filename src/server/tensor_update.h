// The body of POST /update_weights_from_tensor and the copy of its tensors into host memory. SGLang's clients send
// pickled torch tensors, which C++ cannot read; this JSON carries exactly what torch.multiprocessing's
// reduce_tensor (storage._share_cuda_()) produces for a CUDA tensor, or the bytes themselves (README, "Weight
// update from tensors", is the format's reference):
//   {"serialized_named_tensors": [[{"name", "dtype", "size", "stride", "storage_offset",
//                                   "cuda_ipc": {"device", "handle", "storage_size_bytes", "storage_offset_bytes"}
//                                   | "data": base64}, ...]],   one list per tensor-parallel rank (tp 1: one)
//    "flush_cache": true, "abort_all_requests": false, "weight_version": null}
// Every error names the entry (serialized_named_tensors[0][i], the tensor's name) and the field.
#pragma once
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "server/engine_service.h"
#include "tensor/cuda_memory.h"

namespace fp4serve {

// What torch's storage._share_cuda_() returns for the tensor's storage (the event and ref-counter fields left
// out: the client synchronizes before sending and keeps its tensors alive until the response).
struct CudaIpcStorage {
  int64_t device = 0;                                   // the trainer's device index (informational: tp 1, one GPU)
  std::array<uint8_t, cuda::kIpcHandleBytes> handle{};  // cudaIpcMemHandle_t of the allocation holding the storage
                                                        // (taken out of torch's versioned handle bytes)
  uint64_t storage_size_bytes = 0;
  uint64_t storage_offset_bytes = 0;  // where the storage starts inside that allocation
};

struct SerializedTensor {
  std::string where;  // "serialized_named_tensors[0][3] ('model.norm.weight')"
  std::string name;
  DType dtype = DType::U8;
  Shape size;
  int64_t storage_offset = 0;  // elements into the storage (tensor.storage_offset())
  std::vector<uint8_t> data;   // the inline form: the tensor's bytes, C order
  std::optional<CudaIpcStorage> cuda_ipc;
  uint64_t nbytes() const;
};

struct TensorUpdateRequest {
  std::vector<SerializedTensor> tensors;
  bool flush_cache = true;
  bool abort_all_requests = false;
  std::optional<std::string> weight_version;
};

// Throws Error naming the entry and field: unknown dtype, non-contiguous stride, bad base64, data of the wrong
// length, a storage too small for the tensor, a tensor-parallel size other than 1.
TensorUpdateRequest parse_update_weights_from_tensor_request(const nlohmann::json& body);

// Copies every tensor into host memory: inline bytes as they are, CUDA IPC tensors from the trainer's device memory
// (each allocation opened once, closed when done, on error paths too). CUDA IPC needs a server on the GPU
// (`serving_on_cuda`); otherwise, or when a handle cannot be opened or read, throws naming the tensor.
std::vector<HostTensor> copy_to_host(std::vector<SerializedTensor> tensors, bool serving_on_cuda);

}  // namespace fp4serve
