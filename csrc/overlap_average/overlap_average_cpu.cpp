#include "overlap_average.h"

#include <cstring>
#include <vector>

#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#endif

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
namespace {

// Store one finished row: dst[x] = src[x] / (nzy * nx[x]). With `stream`, non-temporal stores
// (the output volume is written once and not read again by the stitcher, so it should not
// evict the ring and the windows from the cache) where dst is 16-byte aligned.
inline void store_row(float* __restrict dst, const float* __restrict src, float nzy,
                      const float* __restrict nx, int64_t W, bool stream) {
#if defined(__SSE__) || defined(__x86_64__)
  if (stream && (reinterpret_cast<uintptr_t>(dst) & 15u) == 0) {
    int64_t x = 0;
    for (; x + 4 <= W; x += 4) {
      const __m128 v = _mm_div_ps(_mm_loadu_ps(src + x),
                                  _mm_mul_ps(_mm_set1_ps(nzy), _mm_loadu_ps(nx + x)));
      _mm_stream_ps(dst + x, v);
    }
    for (; x < W; ++x) dst[x] = src[x] / (nzy * nx[x]);
    return;
  }
#else
  (void)stream;
#endif
#pragma omp simd
  for (int64_t x = 0; x < W; ++x) dst[x] = src[x] / (nzy * nx[x]);
}

// Up to four window rows at once: dst[i] (+)= wx[i] * sum_j wt[j] * src[j][i] (wx == nullptr:
// 1; unit wt skipped), so the destination row is loaded and stored once per group rather
// than once per window (the loop is bound by loads and stores, not by memory bandwidth).
template <int M, bool Weighted, bool Assign>
inline void add_rows(float* __restrict dst, const float* const* src, const float* wt,
                     const float* __restrict wx, int64_t n) {
  const float* __restrict s0 = src[0];
  const float* __restrict s1 = M > 1 ? src[1] : src[0];
  const float* __restrict s2 = M > 2 ? src[2] : src[0];
  const float* __restrict s3 = M > 3 ? src[3] : src[0];
  const float w0 = wt[0], w1 = M > 1 ? wt[1] : 0.f, w2 = M > 2 ? wt[2] : 0.f,
              w3 = M > 3 ? wt[3] : 0.f;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    float v;
    if (Weighted) {
      v = w0 * s0[i];
      if (M > 1) v += w1 * s1[i];
      if (M > 2) v += w2 * s2[i];
      if (M > 3) v += w3 * s3[i];
      if (wx != nullptr) v *= wx[i];
    } else {
      v = s0[i];
      if (M > 1) v += s1[i];
      if (M > 2) v += s2[i];
      if (M > 3) v += s3[i];
    }
    dst[i] = Assign ? v : dst[i] + v;
  }
}

template <bool Weighted, bool Assign>
void add_group_t(float* dst, const float* const* src, const float* wt, const float* wx, int m,
                 int64_t n) {
  switch (m) {
    case 1: add_rows<1, Weighted, Assign>(dst, src, wt, wx, n); break;
    case 2: add_rows<2, Weighted, Assign>(dst, src, wt, wx, n); break;
    case 3: add_rows<3, Weighted, Assign>(dst, src, wt, wx, n); break;
    default: add_rows<4, Weighted, Assign>(dst, src, wt, wx, n); break;
  }
}

// AVX2 where the CPU has it (chosen at load time; the wheel itself targets baseline x86-64).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__GLIBC__)
__attribute__((target_clones("avx2", "default")))  // needs ifunc (glibc)
#endif
void add_group(float* dst, const float* const* src, const float* wt, const float* wx, int m,
               int64_t n, bool weighted, bool assign) {
  if (weighted) {
    if (assign) add_group_t<true, true>(dst, src, wt, wx, m, n);
    else add_group_t<true, false>(dst, src, wt, wx, m, n);
  } else {
    if (assign) add_group_t<false, true>(dst, src, wt, wx, m, n);
    else add_group_t<false, false>(dst, src, wt, wx, m, n);
  }
}

}  // namespace

void ring_accumulate(float* ring, int64_t C, int64_t L, int64_t H, int64_t W,
                     const float* windows, const int64_t* strides, const int64_t* offsets,
                     int64_t B, int64_t d, int64_t h, int64_t w, const float* wz,
                     const float* wy, const float* wx, int64_t fresh_from, int64_t done_below,
                     const float* nz, const float* ny, const float* nx, float* out,
                     const int64_t* out_strides, bool stream) {
  if (B <= 0) return;
  int64_t zmin = offsets[0], zmax = offsets[0] + d;
  for (int64_t b = 1; b < B; ++b) {
    zmin = offsets[3 * b] < zmin ? offsets[3 * b] : zmin;
    zmax = offsets[3 * b] + d > zmax ? offsets[3 * b] + d : zmax;
  }
  const int64_t sb = strides[0], sc = strides[1], sz = strides[2], sy = strides[3];
  const int64_t ring_channel = L * H * W;
  const int64_t nrows = zmax - zmin;
  // One destination row (volume slice z, row y) per iteration, every row of the slices the
  // batch spans: a slice entered for the first time (z >= fresh_from) is cleared here, not
  // after it was finished, and a slice the batch finishes (z < done_below) goes straight from
  // the row to `out` divided by the analytic weight sum, without a pass of its own.
  const bool weighted = wz != nullptr || wy != nullptr || wx != nullptr;
#pragma omp parallel
  {
    std::vector<float> tmp(static_cast<size_t>(W));
    std::vector<const float*> src(static_cast<size_t>(B));
    std::vector<float> wt(static_cast<size_t>(B));
    std::vector<int64_t> xs(static_cast<size_t>(B));
#pragma omp for collapse(2) schedule(static)
    for (int64_t iz = 0; iz < nrows; ++iz) {
      for (int64_t y = 0; y < H; ++y) {
        const int64_t z = zmin + iz;
        const bool fresh = z >= fresh_from, done = z < done_below;
        for (int64_t c = 0; c < C; ++c) {
          float* ring_row = ring + c * ring_channel + ((z % L) * H + y) * W;
          // a finished row is summed in a private buffer, so the ring slot is never written
          float* acc = done ? tmp.data() : ring_row;
          int n = 0;  // the batch's windows that cover this row
          for (int64_t b = 0; b < B; ++b) {
            const int64_t oz = offsets[3 * b], oy = offsets[3 * b + 1];
            const int64_t lz = z - oz, ly = y - oy;
            if (lz < 0 || lz >= d || ly < 0 || ly >= h) continue;
            src[n] = windows + b * sb + c * sc + lz * sz + ly * sy;
            wt[n] = (wz ? wz[lz] : 1.0f) * (wy ? wy[ly] : 1.0f);
            xs[n] = offsets[3 * b + 2];
            ++n;
          }
          // a fresh row whose first group spans it whole is assigned, not cleared and added
          bool assign = fresh && n > 0 && xs[0] == 0 && w == W;
          if (fresh && !assign) {
            std::memset(acc, 0, static_cast<size_t>(W) * sizeof(float));
          } else if (!fresh && done) {
            std::memcpy(acc, ring_row, static_cast<size_t>(W) * sizeof(float));
          }
          for (int k = 0; k < n;) {  // groups of up to four windows at the same x
            int m = 1;
            while (k + m < n && m < 4 && xs[k + m] == xs[k]) ++m;
            add_group(acc + xs[k], src.data() + k, wt.data() + k, wx, m, w, weighted, assign);
            assign = false;
            k += m;
          }
          if (done) {
            float* dst = out + c * out_strides[0] + (z - zmin) * out_strides[1] + y * W;
            store_row(dst, acc, nz[z] * ny[y], nx, W, stream);
          }
        }
      }
    }
#if defined(__SSE__) || defined(__x86_64__)
    if (stream) _mm_sfence();  // order this thread's non-temporal stores before returning
#endif
  }
}

}  // namespace vcesdk
