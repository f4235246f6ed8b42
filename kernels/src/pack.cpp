// Weight conversion and repacking into the panel layout of PackedMatrix.
#include <algorithm>
#include <limits>
#include <vector>

#include "internal.h"

namespace hotboot::kernels {

bool PackedMatrix::Reset(int64_t n, int64_t k) {
  n_ = k_ = 0;
  buf_.Clear();
  if (n <= 0 || k <= 0) return n == 0 || k == 0;
  const int64_t panels = (n + kPanel - 1) / kPanel;
  if (panels > std::numeric_limits<int64_t>::max() / kPanel / k) return false;
  if (!buf_.Reset(static_cast<size_t>(panels * kPanel * k))) return false;
  n_ = n;
  k_ = k;
  return true;
}

namespace {

// Row `r` of a source of `type` as bf16.
void RowToBf16(const void* src, SrcType type, int64_t r, int64_t k, float* tmp, uint16_t* out) {
  switch (type) {
    case SrcType::kBf16:
      std::memcpy(out, static_cast<const uint16_t*>(src) + r * k, static_cast<size_t>(k) * 2);
      return;
    case SrcType::kF16:
      F16ToF32(static_cast<const uint16_t*>(src) + r * k, tmp, static_cast<size_t>(k));
      F32ToBf16(tmp, out, static_cast<size_t>(k));
      return;
    case SrcType::kF32:
      F32ToBf16(static_cast<const float*>(src) + r * k, out, static_cast<size_t>(k));
      return;
  }
}

}  // namespace

void PackedMatrix::PackRows(int64_t row0, const void* src, SrcType type, int64_t nrows,
                            ThreadPool* pool) {
  if (nrows <= 0 || k_ == 0) return;
  const int64_t k = k_;
  const int64_t first_panel = row0 / kPanel;
  const int64_t last_panel = (row0 + nrows - 1) / kPanel;
  ParallelFor(pool, last_panel - first_panel + 1, [&](int64_t b, int64_t e) {
    std::vector<float> tmp(static_cast<size_t>(k));
    std::vector<uint16_t> rows(static_cast<size_t>(k) * kPanel);
    for (int64_t p = first_panel + b; p < first_panel + e; ++p) {
      const int64_t r_begin = std::max(row0, p * kPanel);
      const int64_t r_end = std::min(row0 + nrows, (p + 1) * kPanel);
      uint16_t* panel = buf_.data() + p * kPanel * k;
      for (int64_t r = r_begin; r < r_end; ++r) {
        uint16_t* row = rows.data() + (r - p * kPanel) * k;
        RowToBf16(src, type, r - row0, k, tmp.data(), row);
      }
      for (int64_t r = r_begin; r < r_end; ++r) {
        const int j = static_cast<int>(r - p * kPanel);
        const uint16_t* row = rows.data() + j * k;
        uint16_t* dst = panel + Slot(j);
        for (int64_t c = 0; c < k; ++c) dst[c * kPanel] = row[c];
      }
    }
  });
}

void PackedMatrix::UnpackRow(int64_t row, float* out) const {
  const int64_t p = row / kPanel;
  const uint16_t* src = buf_.data() + p * kPanel * k_ + Slot(static_cast<int>(row - p * kPanel));
  for (int64_t c = 0; c < k_; ++c) out[c] = Bf16ToF32(src[c * kPanel]);
}

}  // namespace hotboot::kernels
