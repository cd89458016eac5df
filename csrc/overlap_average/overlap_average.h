// Overlap-average kernel: accumulates sliding-window outputs into a running weighted sum and
// finalises it to the weighted mean (uniform weights: Choi et al. 2021, Sci Rep, seed 003;
// Gaussian weights: a per-window importance map supplied by the caller).
#pragma once

#include <cstdint>

namespace vcesdk {

// Accumulate `n_windows` window outputs into `sum` and `weight`.
//   sum:      float32 [C, D, H, W], running weighted sum (modified in place)
//   weight:   float32 [D, H, W], running sum of weights (modified in place)
//   windows:  float32 [B, C, d, h, w], contiguous
//   offsets:  int64   [B, 3], (z, y, x) start of each window in the volume
//   wmap:     float32 [d, h, w] per-voxel weight, or nullptr for uniform weight 1
// Every window must lie inside the volume; the caller checks that.
void overlap_accumulate(float* sum, float* weight, int64_t C, int64_t D, int64_t H, int64_t W,
                        const float* windows, const int64_t* offsets, int64_t B, int64_t d,
                        int64_t h, int64_t w, const float* wmap);

// sum[c, z, y, x] /= weight[z, y, x] where weight > 0; voxels with weight 0 become `empty`.
void overlap_finalize(float* sum, const float* weight, int64_t C, int64_t D, int64_t H,
                      int64_t W, float empty);

}  // namespace vcesdk
