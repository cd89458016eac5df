// Python bindings for vcesdk's native kernels (module vcesdk._C).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <sstream>
#include <stdexcept>
#include <string>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "overlap_average/overlap_average.h"

namespace py = pybind11;

namespace {

using F32 = py::array_t<float, py::array::c_style>;
using I64 = py::array_t<int64_t, py::array::c_style>;

std::string shape_str(const py::array& a) {
  std::ostringstream s;
  s << "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s << (i ? ", " : "") << a.shape(i);
  s << ")";
  return s.str();
}

void require(bool ok, const std::string& msg) {
  if (!ok) throw std::invalid_argument(msg);
}

void accumulate(py::array sum_obj, py::array weight_obj, py::array windows_obj,
                py::array offsets_obj, py::object wmap_obj) {
  // Refuse anything that would need a copy: the kernel writes into sum and weight in place.
  require(py::isinstance<F32>(sum_obj) && (sum_obj.flags() & py::array::c_style) &&
              sum_obj.writeable(),
          "sum must be a writeable C-contiguous float32 array");
  require(py::isinstance<F32>(weight_obj) && (weight_obj.flags() & py::array::c_style) &&
              weight_obj.writeable(),
          "weight must be a writeable C-contiguous float32 array");
  F32 sum = py::reinterpret_borrow<F32>(sum_obj);
  F32 weight = py::reinterpret_borrow<F32>(weight_obj);
  F32 windows = F32::ensure(windows_obj);
  I64 offsets = I64::ensure(offsets_obj);
  require(windows && offsets, "windows must be float32 and offsets int64 arrays");
  require(sum.ndim() == 4, "sum must have shape (C, D, H, W), got " + shape_str(sum));
  require(weight.ndim() == 3, "weight must have shape (D, H, W), got " + shape_str(weight));
  require(windows.ndim() == 5,
          "windows must have shape (B, C, d, h, w), got " + shape_str(windows));
  const int64_t C = sum.shape(0), D = sum.shape(1), H = sum.shape(2), W = sum.shape(3);
  const int64_t B = windows.shape(0), d = windows.shape(2), h = windows.shape(3),
                w = windows.shape(4);
  require(weight.shape(0) == D && weight.shape(1) == H && weight.shape(2) == W,
          "weight shape " + shape_str(weight) + " does not match sum shape " + shape_str(sum));
  require(windows.shape(1) == C, "windows have " + std::to_string(windows.shape(1)) +
                                     " channels, sum has " + std::to_string(C));
  require(offsets.ndim() == 2 && offsets.shape(0) == B && offsets.shape(1) == 3,
          "offsets must have shape (" + std::to_string(B) + ", 3), got " + shape_str(offsets));
  const float* wmap_ptr = nullptr;
  F32 wmap;
  if (!wmap_obj.is_none()) {
    wmap = F32::ensure(wmap_obj);
    require(wmap && wmap.ndim() == 3 && wmap.shape(0) == d && wmap.shape(1) == h &&
                wmap.shape(2) == w,
            "weight map must be float32 with the window shape (" + std::to_string(d) + ", " +
                std::to_string(h) + ", " + std::to_string(w) + ")");
    wmap_ptr = wmap.data();
  }
  const int64_t* off = offsets.data();
  for (int64_t b = 0; b < B; ++b) {
    const int64_t oz = off[3 * b], oy = off[3 * b + 1], ox = off[3 * b + 2];
    if (oz < 0 || oy < 0 || ox < 0 || oz + d > D || oy + h > H || ox + w > W) {
      std::ostringstream s;
      s << "window " << b << " at offset (" << oz << ", " << oy << ", " << ox << ") with size ("
        << d << ", " << h << ", " << w << ") does not fit in the volume (" << D << ", " << H
        << ", " << W << ")";
      throw std::invalid_argument(s.str());
    }
  }
  float* s = sum.mutable_data();
  float* wt = weight.mutable_data();
  const float* win = windows.data();
  {
    py::gil_scoped_release release;
    vcesdk::overlap_accumulate(s, wt, C, D, H, W, win, off, B, d, h, w, wmap_ptr);
  }
}

void finalize(py::array sum_obj, py::array weight_obj, float empty) {
  require(py::isinstance<F32>(sum_obj) && (sum_obj.flags() & py::array::c_style) &&
              sum_obj.writeable() && sum_obj.ndim() == 4,
          "sum must be a writeable C-contiguous float32 array of shape (C, D, H, W)");
  F32 sum = py::reinterpret_borrow<F32>(sum_obj);
  F32 weight = F32::ensure(weight_obj);
  require(weight && weight.ndim() == 3 && weight.shape(0) == sum.shape(1) &&
              weight.shape(1) == sum.shape(2) && weight.shape(2) == sum.shape(3),
          "weight shape " + shape_str(weight_obj) + " does not match sum shape " +
              shape_str(sum));
  float* s = sum.mutable_data();
  const float* wt = weight.data();
  const int64_t C = sum.shape(0), D = sum.shape(1), H = sum.shape(2), W = sum.shape(3);
  {
    py::gil_scoped_release release;
    vcesdk::overlap_finalize(s, wt, C, D, H, W, empty);
  }
}

const float* optional_vector(const py::object& obj, int64_t n, const char* name, F32& holder) {
  if (obj.is_none()) return nullptr;
  holder = F32::ensure(obj);
  require(holder && holder.ndim() == 1 && holder.shape(0) == n,
          std::string(name) + " must be None or a float32 vector of length " +
              std::to_string(n));
  return holder.data();
}

F32 writeable_f32(py::array obj, const char* name, py::ssize_t ndim) {
  require(py::isinstance<F32>(obj) && (obj.flags() & py::array::c_style) && obj.writeable() &&
              obj.ndim() == ndim,
          std::string(name) + " must be a writeable C-contiguous float32 array with " +
              std::to_string(ndim) + " dimensions, got " + shape_str(obj));
  return py::reinterpret_borrow<F32>(obj);
}

void ring_accumulate(py::array ring_obj, py::array windows_obj, py::array offsets_obj,
                     py::object wz_obj, py::object wy_obj, py::object wx_obj, int64_t fresh_from,
                     int64_t done_below, py::array nz_obj, py::array ny_obj, py::array nx_obj,
                     py::object out_obj, bool stream) {
  F32 ring = writeable_f32(ring_obj, "ring", 4);
  // windows may be any float32 view whose last axis is contiguous (e.g. overlapping windows
  // of one volume taken with as_strided); anything else is copied to C order first
  py::array_t<float> windows;
  bool strided_ok = py::isinstance<py::array_t<float>>(windows_obj) && windows_obj.ndim() == 5 &&
                    windows_obj.strides(4) == static_cast<py::ssize_t>(sizeof(float));
  for (int i = 0; strided_ok && i < 4; ++i)
    strided_ok = windows_obj.strides(i) >= 0 &&
                 windows_obj.strides(i) % static_cast<py::ssize_t>(sizeof(float)) == 0;
  if (strided_ok) {
    windows = py::reinterpret_borrow<py::array_t<float>>(windows_obj);
  } else {
    windows = F32::ensure(windows_obj);
  }
  I64 offsets = I64::ensure(offsets_obj);
  require(windows && windows.ndim() == 5,
          "windows must be float32 (B, C, d, h, w), got " + shape_str(windows_obj));
  const int64_t C = ring.shape(0), L = ring.shape(1), H = ring.shape(2), W = ring.shape(3);
  const int64_t B = windows.shape(0), d = windows.shape(2), h = windows.shape(3),
                w = windows.shape(4);
  require(windows.shape(1) == C, "windows have " + std::to_string(windows.shape(1)) +
                                     " channels, the ring has " + std::to_string(C));
  require(offsets && offsets.ndim() == 2 && offsets.shape(0) == B && offsets.shape(1) == 3,
          "offsets must be int64 (" + std::to_string(B) + ", 3), got " + shape_str(offsets_obj));
  require(B >= 1, "a batch needs at least one window");
  require(d <= L, "window depth " + std::to_string(d) + " exceeds the ring depth " +
                      std::to_string(L));
  const int64_t* off = offsets.data();
  int64_t zmin = 0, zmax = 0;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t oz = off[3 * b], oy = off[3 * b + 1], ox = off[3 * b + 2];
    if (oz < 0 || oy < 0 || ox < 0 || oy + h > H || ox + w > W) {
      std::ostringstream m;
      m << "window " << b << " at offset (" << oz << ", " << oy << ", " << ox
        << ") does not fit the plane (" << H << ", " << W << ")";
      throw std::invalid_argument(m.str());
    }
    zmin = b == 0 || oz < zmin ? oz : zmin;
    zmax = b == 0 || oz + d > zmax ? oz + d : zmax;
  }
  require(zmax - zmin <= L, "the batch spans slices " + std::to_string(zmin) + ".." +
                                std::to_string(zmax - 1) + ", more than the ring's " +
                                std::to_string(L) + " slices");
  require(zmin <= done_below && done_below <= zmax,
          "done_below " + std::to_string(done_below) + " must lie in the batch's slices [" +
              std::to_string(zmin) + ", " + std::to_string(zmax) + "]");
  require(zmin <= fresh_from, "fresh_from " + std::to_string(fresh_from) +
                                  " lies below the batch's first slice " + std::to_string(zmin));
  F32 nz = F32::ensure(nz_obj), ny = F32::ensure(ny_obj), nx = F32::ensure(nx_obj);
  require(nz && nz.ndim() == 1 && nz.shape(0) >= done_below,
          "nz must be float32 covering slice done_below - 1");
  require(ny && ny.ndim() == 1 && ny.shape(0) == H, "ny must be float32 of length H");
  require(nx && nx.ndim() == 1 && nx.shape(0) == W, "nx must be float32 of length W");
  // out: (C, done_below - zmin, H, W) float32 with contiguous rows and planes; the channel and
  // slice strides are free, so it may be a slab view of a (C, D, H, W) volume
  float* o = nullptr;
  int64_t out_strides[2] = {0, 0};
  py::array out;
  if (done_below > zmin) {
    require(!out_obj.is_none(), "out is required when the batch finishes slices");
    out = py::reinterpret_borrow<py::array>(out_obj);
    require(py::isinstance<py::array_t<float>>(out) && out.writeable() && out.ndim() == 4 &&
                out.shape(0) == C && out.shape(1) == done_below - zmin && out.shape(2) == H &&
                out.shape(3) == W &&
                out.strides(3) == static_cast<py::ssize_t>(sizeof(float)) &&
                out.strides(2) == static_cast<py::ssize_t>(W * sizeof(float)) &&
                out.strides(1) % static_cast<py::ssize_t>(sizeof(float)) == 0 &&
                out.strides(0) % static_cast<py::ssize_t>(sizeof(float)) == 0,
            "out must be a writeable float32 array of shape (" + std::to_string(C) + ", " +
                std::to_string(done_below - zmin) + ", " + std::to_string(H) + ", " +
                std::to_string(W) + ") with contiguous planes, got " + shape_str(out));
    o = static_cast<float*>(out.mutable_data());
    out_strides[0] = out.strides(0) / static_cast<int64_t>(sizeof(float));
    out_strides[1] = out.strides(1) / static_cast<int64_t>(sizeof(float));
  }
  F32 hz, hy, hx;
  const float* wz = optional_vector(wz_obj, d, "wz", hz);
  const float* wy = optional_vector(wy_obj, h, "wy", hy);
  const float* wx = optional_vector(wx_obj, w, "wx", hx);
  float* r = ring.mutable_data();
  const float* win = windows.data();
  int64_t strides[4];
  for (int i = 0; i < 4; ++i) strides[i] = windows.strides(i) / static_cast<int64_t>(sizeof(float));
  {
    py::gil_scoped_release release;
    vcesdk::ring_accumulate(r, C, L, H, W, win, strides, off, B, d, h, w, wz, wy, wx,
                            fresh_from, done_below, nz.data(), ny.data(), nx.data(), o,
                            out_strides, stream);
  }
}

py::dict build_info() {
  py::dict info;
#ifdef _OPENMP
  info["openmp"] = true;
  info["openmp_version"] = _OPENMP;
  info["max_threads"] = omp_get_max_threads();
#else
  info["openmp"] = false;
  info["openmp_version"] = 0;
  info["max_threads"] = 1;
#endif
#if defined(__clang__)
  info["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  info["compiler"] = std::string("gcc ") + __VERSION__;
#elif defined(_MSC_VER)
  info["compiler"] = std::string("msvc ") + std::to_string(_MSC_VER);
#else
  info["compiler"] = std::string("unknown");
#endif
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "vcesdk native kernels (overlap-average stitching of sliding-window outputs).";
  m.def("overlap_accumulate", &accumulate, py::arg("sum"), py::arg("weight"), py::arg("windows"),
        py::arg("offsets"), py::arg("weight_map") = py::none(),
        R"doc(Add a batch of window outputs into a running weighted sum, in place; releases the GIL.

Args:
    sum: float32 (C, D, H, W), C-contiguous, writeable: running weighted sum.
    weight: float32 (D, H, W), C-contiguous, writeable: running sum of weights.
    windows: float32 (B, C, d, h, w): window outputs.
    offsets: int64 (B, 3): (z, y, x) start voxel of each window in the volume.
    weight_map: float32 (d, h, w) per-voxel weight (e.g. Gaussian), or None for weight 1.

Raises:
    ValueError: wrong dtype, layout or shape, or a window outside the volume.)doc");
  m.def("overlap_finalize", &finalize, py::arg("sum"), py::arg("weight"), py::arg("empty") = 0.0f,
        R"doc(Divide the running sum by the weight in place (weighted mean); releases the GIL.

Voxels no window covered (weight 0) are set to `empty`.

Raises:
    ValueError: wrong dtype, layout or shape.)doc");
  m.def("ring_accumulate", &ring_accumulate, py::arg("ring"), py::arg("windows"),
        py::arg("offsets"), py::arg("wz"), py::arg("wy"), py::arg("wx"), py::arg("fresh_from"),
        py::arg("done_below"), py::arg("nz"), py::arg("ny"), py::arg("nx"),
        py::arg("out") = py::none(), py::arg("stream") = false,
        R"doc(Add a batch of grid windows into a z-ring accumulator and write the slices it
finishes; releases the GIL.

Volume slice z is kept in ring slice z % L. Weights are separable: wz[z] * wy[y] * wx[x]
inside a window (None = 1). Each destination row is read and written once per batch. Slices
z >= fresh_from (never touched before) are cleared before their first add; slices
zmin <= z < done_below (zmin: the batch's first slice) are finished by this batch and written
to out[c, z - zmin] = sum / (nz[z] * ny[y] * nx[x]) without a pass of their own.

Args:
    ring: float32 (C, L, H, W), C-contiguous, writeable.
    windows: float32 (B, C, d, h, w).
    offsets: int64 (B, 3): (z, y, x) window starts in the volume, grid order.
    wz, wy, wx: float32 (d,), (h,), (w,) weight profiles, or None.
    fresh_from: first slice no earlier batch touched.
    done_below: start slice of the grid's next window (D after the last batch).
    nz, ny, nx: float32 per-axis sums of weights over the grid (coverage counts for "mean").
    out: float32 (C, done_below - zmin, H, W) with contiguous planes (any channel / slice
        stride, e.g. a slab view of the output volume); None when nothing is finished.
    stream: write out with non-temporal stores (output not read back soon).

Raises:
    ValueError: wrong dtype or shape, a window outside the plane, a batch spanning more
        slices than the ring holds, or fresh_from / done_below outside the batch.)doc");
  m.def("build_info", &build_info, "Compiler and OpenMP settings the extension was built with.");
}
