#include <cuda.h>

#include <cstring>
#include <string>

#include "common/error.h"
#include "kernels/cuda/cuda_check.cuh"
#include "tensor/cuda_memory.h"

namespace fp4serve::cuda {

void* device_alloc_zeroed(size_t nbytes) {
  void* ptr = nullptr;
  FP4_CUDA_CHECK(cudaMalloc(&ptr, nbytes == 0 ? 1 : nbytes));
  FP4_CUDA_CHECK(cudaMemset(ptr, 0, nbytes));
  return ptr;
}

void device_free(void* ptr) noexcept { cudaFree(ptr); }

void memcpy_sync(void* dst, const void* src, size_t nbytes, CopyKind kind) {
  cudaMemcpyKind k = kind == CopyKind::HostToDevice   ? cudaMemcpyHostToDevice
                     : kind == CopyKind::DeviceToHost ? cudaMemcpyDeviceToHost
                                                      : cudaMemcpyDeviceToDevice;
  FP4_CUDA_CHECK(cudaMemcpy(dst, src, nbytes, k));
}

void memset_zero_sync(void* dst, size_t nbytes) { FP4_CUDA_CHECK(cudaMemset(dst, 0, nbytes)); }

void* pinned_host_alloc(size_t nbytes) {
  void* ptr = nullptr;
  FP4_CUDA_CHECK(cudaMallocHost(&ptr, nbytes == 0 ? 1 : nbytes));
  return ptr;
}

void pinned_host_free(void* ptr) noexcept { cudaFreeHost(ptr); }

struct PinnedUploader::Slot {
  void* host = nullptr;
  cudaEvent_t copied = nullptr;  // recorded after the slot's last copy
};

PinnedUploader::PinnedUploader(size_t buffer_bytes, int n_buffers)
    : buffer_bytes_(buffer_bytes), slots_(new Slot[n_buffers]), n_slots_(n_buffers) {
  try {
    FP4_CUDA_CHECK(cudaStreamCreateWithFlags(reinterpret_cast<cudaStream_t*>(&stream_), cudaStreamNonBlocking));
    for (int i = 0; i < n_slots_; ++i) {
      FP4_CUDA_CHECK(cudaMallocHost(&slots_[i].host, buffer_bytes));
      FP4_CUDA_CHECK(cudaEventCreateWithFlags(&slots_[i].copied, cudaEventDisableTiming));
    }
  } catch (...) {
    release();
    throw;
  }
}

PinnedUploader::~PinnedUploader() { release(); }

void PinnedUploader::release() noexcept {
  if (stream_ != nullptr) cudaStreamSynchronize(static_cast<cudaStream_t>(stream_));
  for (int i = 0; i < n_slots_; ++i) {
    if (slots_[i].copied != nullptr) cudaEventDestroy(slots_[i].copied);
    if (slots_[i].host != nullptr) cudaFreeHost(slots_[i].host);
  }
  delete[] slots_;
  slots_ = nullptr;
  n_slots_ = 0;
  if (stream_ != nullptr) cudaStreamDestroy(static_cast<cudaStream_t>(stream_));
  stream_ = nullptr;
}

uint8_t* PinnedUploader::buffer() { return static_cast<uint8_t*>(slots_[current_].host); }

void PinnedUploader::upload(void* device_dst, size_t nbytes) {
  const auto stream = static_cast<cudaStream_t>(stream_);
  Slot& slot = slots_[current_];
  FP4_CUDA_CHECK(cudaMemcpyAsync(device_dst, slot.host, nbytes, cudaMemcpyHostToDevice, stream));
  FP4_CUDA_CHECK(cudaEventRecord(slot.copied, stream));
  current_ = (current_ + 1) % n_slots_;
  FP4_CUDA_CHECK(cudaEventSynchronize(slots_[current_].copied));  // a never-recorded event is complete
}

void PinnedUploader::finish() { FP4_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(stream_))); }

DeviceMemoryInfo device_memory_info() {
  DeviceMemoryInfo info{};
  FP4_CUDA_CHECK(cudaMemGetInfo(&info.free_bytes, &info.total_bytes));
  return info;
}

void* ipc_open(const uint8_t* handle) {
  static_assert(sizeof(cudaIpcMemHandle_t) == kIpcHandleBytes);
  cudaIpcMemHandle_t ipc_handle;
  std::memcpy(&ipc_handle, handle, kIpcHandleBytes);
  void* base = nullptr;
  FP4_CUDA_CHECK(cudaIpcOpenMemHandle(&base, ipc_handle, cudaIpcMemLazyEnablePeerAccess));
  return base;
}

void ipc_close(void* base) { FP4_CUDA_CHECK(cudaIpcCloseMemHandle(base)); }

namespace {

// The driver functions this file calls, looked up once through the runtime (which also creates the primary context
// they run in). The 12.0 ABI of each: these signatures have not changed since CUDA 10.2.
struct DriverVmApi {
  decltype(&::cuGetErrorName) get_error_name;
  decltype(&::cuMemGetAllocationGranularity) get_granularity;
  decltype(&::cuMemAddressReserve) address_reserve;
  decltype(&::cuMemAddressFree) address_free;
  decltype(&::cuMemCreate) create;
  decltype(&::cuMemMap) map;
  decltype(&::cuMemSetAccess) set_access;
  decltype(&::cuMemUnmap) unmap;
  decltype(&::cuMemRelease) release;
};

template <typename Function>
void look_up(const char* symbol, Function& out) {
  void* fn = nullptr;
  cudaDriverEntryPointQueryResult found{};
  FP4_CUDA_CHECK(cudaGetDriverEntryPointByVersion(symbol, &fn, 12000, cudaEnableDefault, &found));
  if (found != cudaDriverEntryPointSuccess || fn == nullptr)
    throw Error(std::string("the CUDA driver has no ") + symbol + " (a driver for CUDA 12.0 or later is needed for "
                "releasable device memory)");
  out = reinterpret_cast<Function>(fn);
}

const DriverVmApi& driver() {
  static const DriverVmApi api = [] {
    FP4_CUDA_CHECK(cudaFree(nullptr));  // initializes the runtime and its primary context
    DriverVmApi a{};
    look_up("cuGetErrorName", a.get_error_name);
    look_up("cuMemGetAllocationGranularity", a.get_granularity);
    look_up("cuMemAddressReserve", a.address_reserve);
    look_up("cuMemAddressFree", a.address_free);
    look_up("cuMemCreate", a.create);
    look_up("cuMemMap", a.map);
    look_up("cuMemSetAccess", a.set_access);
    look_up("cuMemUnmap", a.unmap);
    look_up("cuMemRelease", a.release);
    return a;
  }();
  return api;
}

void check_driver(CUresult status, const char* call, const char* file, int line) {
  if (status == CUDA_SUCCESS) return;
  const char* name = "unknown CUresult";
  driver().get_error_name(status, &name);
  throw Error(std::string("CUDA driver error ") + name + " in " + call + " at " + file + ":" + std::to_string(line));
}
#define FP4_CU_CHECK(call) check_driver((call), #call, __FILE__, __LINE__)

int current_device() {
  int device = 0;
  FP4_CUDA_CHECK(cudaGetDevice(&device));
  return device;
}

CUmemAllocationProp device_allocation(int device) {
  CUmemAllocationProp prop{};
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  prop.location.id = device;
  return prop;
}

CUdeviceptr address(void* ptr) { return reinterpret_cast<CUdeviceptr>(ptr); }

}  // namespace

size_t vm_granularity() {
  const CUmemAllocationProp prop = device_allocation(current_device());
  size_t granularity = 0;
  FP4_CU_CHECK(driver().get_granularity(&granularity, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM));
  return granularity;
}

void* vm_reserve(size_t nbytes) {
  CUdeviceptr base = 0;
  FP4_CU_CHECK(driver().address_reserve(&base, nbytes, 0, 0, 0));
  return reinterpret_cast<void*>(base);
}

void vm_free_reservation(void* base, size_t nbytes) noexcept { driver().address_free(address(base), nbytes); }

uint64_t vm_map_new(void* at, size_t nbytes) {
  const int device = current_device();
  const CUmemAllocationProp prop = device_allocation(device);
  CUmemGenericAllocationHandle handle = 0;
  FP4_CU_CHECK(driver().create(&handle, nbytes, &prop, 0));
  const CUresult mapped = driver().map(address(at), nbytes, 0, handle, 0);
  if (mapped != CUDA_SUCCESS) {
    driver().release(handle);
    FP4_CU_CHECK(mapped);
  }
  CUmemAccessDesc access{};
  access.location = prop.location;
  access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  const CUresult accessible = driver().set_access(address(at), nbytes, &access, 1);
  if (accessible != CUDA_SUCCESS) {
    driver().unmap(address(at), nbytes);
    driver().release(handle);
    FP4_CU_CHECK(accessible);
  }
  return handle;
}

void vm_unmap(void* at, size_t nbytes, uint64_t handle) {
  FP4_CUDA_CHECK(cudaDeviceSynchronize());  // no kernel may still use the memory
  FP4_CU_CHECK(driver().unmap(address(at), nbytes));
  FP4_CU_CHECK(driver().release(handle));
}

}  // namespace fp4serve::cuda
