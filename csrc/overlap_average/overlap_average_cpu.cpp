#include "overlap_average.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace vcesdk {
namespace {

// One row of one window: sum += weight * value, weight_row += weight (once per window row).
inline void add_row_uniform(float* __restrict dst, const float* __restrict src, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] += src[i];
}

inline void add_row_weighted(float* __restrict dst, const float* __restrict src,
                             const float* __restrict wrow, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] += src[i] * wrow[i];
}

inline void add_weight_uniform(float* __restrict dst, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] += 1.0f;
}

}  // namespace

void overlap_accumulate(float* sum, float* weight, int64_t C, int64_t D, int64_t H, int64_t W,
                        const float* windows, const int64_t* offsets, int64_t B, int64_t d,
                        int64_t h, int64_t w, const float* wmap) {
  const int64_t win_channel = d * h * w;
  const int64_t win_size = C * win_channel;
  const int64_t vol_channel = D * H * W;
  // Windows may overlap one another, so they are added one after the other; inside a window
  // every (channel, z, y) row maps to a distinct destination row, so rows run in parallel.
  for (int64_t b = 0; b < B; ++b) {
    const int64_t oz = offsets[3 * b], oy = offsets[3 * b + 1], ox = offsets[3 * b + 2];
    const float* win = windows + b * win_size;
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t z = 0; z < d; ++z) {
      for (int64_t y = 0; y < h; ++y) {
        const int64_t dst_row = ((oz + z) * H + (oy + y)) * W + ox;
        const int64_t src_row = (z * h + y) * w;
        if (wmap == nullptr) {
          add_weight_uniform(weight + dst_row, w);
          for (int64_t c = 0; c < C; ++c)
            add_row_uniform(sum + c * vol_channel + dst_row, win + c * win_channel + src_row, w);
        } else {
          const float* wrow = wmap + src_row;
          add_row_uniform(weight + dst_row, wrow, w);
          for (int64_t c = 0; c < C; ++c)
            add_row_weighted(sum + c * vol_channel + dst_row, win + c * win_channel + src_row,
                             wrow, w);
        }
      }
    }
  }
}

void overlap_finalize(float* sum, const float* weight, int64_t C, int64_t D, int64_t H,
                      int64_t W, float empty) {
  const int64_t n = D * H * W;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float wt = weight[i];
    if (wt > 0.0f) {
      for (int64_t c = 0; c < C; ++c) sum[c * n + i] /= wt;
    } else {
      for (int64_t c = 0; c < C; ++c) sum[c * n + i] = empty;
    }
  }
}

}  // namespace vcesdk

namespace vcesdk {

void ring_accumulate(float* ring, int64_t C, int64_t L, int64_t H, int64_t W,
                     const float* windows, const int64_t* strides, const int64_t* offsets,
                     int64_t B, int64_t d, int64_t h, int64_t w, const float* wz,
                     const float* wy, const float* wx) {
  if (B <= 0) return;
  int64_t zmin = offsets[0], zmax = offsets[0] + d, ymin = offsets[1], ymax = offsets[1] + h;
  for (int64_t b = 1; b < B; ++b) {
    zmin = offsets[3 * b] < zmin ? offsets[3 * b] : zmin;
    zmax = offsets[3 * b] + d > zmax ? offsets[3 * b] + d : zmax;
    ymin = offsets[3 * b + 1] < ymin ? offsets[3 * b + 1] : ymin;
    ymax = offsets[3 * b + 1] + h > ymax ? offsets[3 * b + 1] + h : ymax;
  }
  const int64_t sb = strides[0], sc = strides[1], sz = strides[2], sy = strides[3];
  const int64_t ring_channel = L * H * W;
  const int64_t nz = zmax - zmin, ny = ymax - ymin;
  // One destination row (volume slice z, row y) per iteration: all windows of the batch that
  // cover it are added while the row is hot in cache.
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t iz = 0; iz < nz; ++iz) {
    for (int64_t iy = 0; iy < ny; ++iy) {
      const int64_t z = zmin + iz, y = ymin + iy;
      const int64_t dst_row = ((z % L) * H + y) * W;
      for (int64_t b = 0; b < B; ++b) {
        const int64_t oz = offsets[3 * b], oy = offsets[3 * b + 1], ox = offsets[3 * b + 2];
        const int64_t lz = z - oz, ly = y - oy;
        if (lz < 0 || lz >= d || ly < 0 || ly >= h) continue;
        const float wzy = (wz ? wz[lz] : 1.0f) * (wy ? wy[ly] : 1.0f);
        const float* src = windows + b * sb + lz * sz + ly * sy;
        for (int64_t c = 0; c < C; ++c) {
          float* __restrict dst = ring + c * ring_channel + dst_row + ox;
          const float* __restrict s = src + c * sc;
          if (wx != nullptr) {
#pragma omp simd
            for (int64_t i = 0; i < w; ++i) dst[i] += s[i] * (wzy * wx[i]);
          } else if (wzy != 1.0f) {
#pragma omp simd
            for (int64_t i = 0; i < w; ++i) dst[i] += s[i] * wzy;
          } else {
#pragma omp simd
            for (int64_t i = 0; i < w; ++i) dst[i] += s[i];
          }
        }
      }
    }
  }
}

void ring_finalize(float* ring, int64_t C, int64_t L, int64_t H, int64_t W, int64_t z0,
                   int64_t z1, const float* nz, const float* ny, const float* nx, float* out) {
  const int64_t n = z1 - z0;
  const int64_t ring_channel = L * H * W;
  const int64_t out_channel = n * H * W;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t iz = 0; iz < n; ++iz) {
    for (int64_t y = 0; y < H; ++y) {
      const int64_t z = z0 + iz;
      const float nzy = nz[z] * ny[y];
      for (int64_t c = 0; c < C; ++c) {
        float* __restrict src = ring + c * ring_channel + ((z % L) * H + y) * W;
        float* __restrict dst = out + c * out_channel + (iz * H + y) * W;
#pragma omp simd
        for (int64_t x = 0; x < W; ++x) {
          dst[x] = src[x] / (nzy * nx[x]);
          src[x] = 0.0f;
        }
      }
    }
  }
}

}  // namespace vcesdk
