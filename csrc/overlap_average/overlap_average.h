// Overlap-average kernels: accumulate sliding-window outputs into a running weighted sum and
// finalise it to the weighted mean (uniform weights: Choi et al. 2021, Sci Rep, seed 003;
// Gaussian weights: a separable per-window importance profile).
#pragma once

#include <cstdint>

namespace vcesdk {

// --- generic path: any offsets, explicit weight volume -------------------------------------
// Accumulate `B` window outputs into `sum` and `weight`.
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

// --- streaming path: windows on a regular grid, separable weights, ring buffer in z --------
// Add `B` windows into a ring accumulator of L slices and finish the slices the batch
// completes: volume slice z lives in ring slice z % L. Weights are separable, weight(z, y, x)
// = wz[z] * wy[y] * wx[x] inside a window (any of wz, wy, wx may be nullptr for 1). Work is
// split over destination rows (slice, row) of every slice the batch spans, so windows of one
// batch may overlap each other without races, and each row is read and written once per batch
// however many windows cover it.
//   ring:        float32 [C, L, H, W]; no clearing needed between uses
//   windows:     float32 [B, C, d, h, w] with element strides (sb, sc, sz, sy) and unit stride
//                along w, so a batch may be a zero-copy view of overlapping windows
//   offsets:     int64 [B, 3]
//   fresh_from:  slices z >= fresh_from were not touched by any earlier batch: their ring
//                slices hold stale data and are cleared before the first add
//   done_below:  slices z < done_below get their last contribution from this batch (the next
//                window of the grid starts at done_below): they are written to `out` as
//                sum / (nz[z] * ny[y] * nx[x]) (the analytic sum of weights) and not kept
//   out:         float32 [C, done_below - zmin, H, W] for slices zmin .. done_below - 1 (zmin =
//                the batch's first slice), element strides (channel, slice) in out_strides,
//                rows contiguous; `stream` writes it with non-temporal stores
// The caller guarantees that the batch spans at most L slices and lies inside the volume.
void ring_accumulate(float* ring, int64_t C, int64_t L, int64_t H, int64_t W,
                     const float* windows, const int64_t* strides, const int64_t* offsets,
                     int64_t B, int64_t d, int64_t h, int64_t w, const float* wz,
                     const float* wy, const float* wx, int64_t fresh_from, int64_t done_below,
                     const float* nz, const float* ny, const float* nx, float* out,
                     const int64_t* out_strides, bool stream);

}  // namespace vcesdk
