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
  m.def("build_info", &build_info, "Compiler and OpenMP settings the extension was built with.");
}
