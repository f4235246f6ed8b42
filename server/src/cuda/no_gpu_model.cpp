// Builds without the CUDA toolkit (no nvcc) have no GPU model: the server
// runs on the CPU, and says why when asked for a GPU.
#include "../gpu_model.h"

namespace hotboot {

bool GpuUsable() { return false; }

Result<std::unique_ptr<Model>> LoadGpuModel(const std::string&, const LoadOptions&, LoadTimings*) {
  return NotFound("this hotboot-server was built without the CUDA toolkit, so it has no GPU kernels");
}

}  // namespace hotboot
