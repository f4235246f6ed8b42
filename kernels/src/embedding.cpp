// Embedding lookup straight from the packed (bf16) table, so a tied
// embedding / lm_head matrix is stored once.
#include "hotboot/kernels.h"

namespace hotboot::kernels {

void EmbeddingLookup(const PackedMatrix& table, const int32_t* ids, int64_t n, float* out, int64_t ldo) {
  for (int64_t r = 0; r < n; ++r) table.UnpackRow(ids[r], out + r * ldo);
}

}  // namespace hotboot::kernels
