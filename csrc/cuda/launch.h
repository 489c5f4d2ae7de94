// What every CUDA registration file needs around a launcher call: the current stream of a
// tensor's device and a check of the launch's error code.
#pragma once
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>
#include <cuda_runtime.h>

#define DA_CHECK_LAUNCH(expr)                                                          \
  do {                                                                                 \
    const cudaError_t err_ = (expr);                                                   \
    TORCH_CHECK(err_ == cudaSuccess, "diffaccel CUDA launch failed: ", cudaGetErrorString(err_)); \
  } while (0)

namespace diffaccel {

inline cudaStream_t stream_of(const at::Tensor& t) {
  return c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
}

// Streaming multiprocessors of a device (a driver attribute query: no synchronization).
inline int sm_count(int device) {
  int n = 0;
  const cudaError_t err = cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device);
  TORCH_CHECK(err == cudaSuccess, "diffaccel: cannot read the SM count: ", cudaGetErrorString(err));
  return n;
}

}  // namespace diffaccel
