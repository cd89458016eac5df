"""Registration of a contrast phase to its NCCT with SimpleITK: affine, then optional B-spline,
on Mattes mutual information (000_dfb6c11774226ce2.txt registers with ANTs the same way: affine
then deformable, mutual information).

Transforms follow ITK: the result maps a point of the fixed (NCCT) image to the point of the
moving (contrast) image that shows the same anatomy; physical points are LPS mm as in
:class:`vcesdk.CTVolume`.
"""
from __future__ import annotations

import dataclasses
import logging

import numpy as np

from vcesdk.volume import CTVolume

_logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Registration:
    """Result of :func:`register`.

    Attributes:
        transform: SimpleITK transform, fixed points -> moving points.
        aligned: the moving volume resampled onto the fixed grid (float32 HU).
        metric: final Mattes mutual information (negative; lower is better).
    """

    transform: object
    aligned: CTVolume
    metric: float

    def displacement_mm(self, fixed: CTVolume) -> np.ndarray:
        """T(x) - x at every fixed voxel: (3, D, H, W) mm, LPS (x, y, z) components."""
        import SimpleITK as sitk

        ref = fixed.to_sitk()
        field = sitk.TransformToDisplacementField(
            self.transform, sitk.sitkVectorFloat64, ref.GetSize(), ref.GetOrigin(),
            ref.GetSpacing(), ref.GetDirection())
        return np.moveaxis(sitk.GetArrayFromImage(field), -1, 0)


def _method(sampling: float, seed: int):
    import SimpleITK as sitk

    r = sitk.ImageRegistrationMethod()
    r.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
    r.SetMetricSamplingStrategy(r.RANDOM)
    r.SetMetricSamplingPercentage(sampling, seed)
    r.SetInterpolator(sitk.sitkLinear)
    r.SetShrinkFactorsPerLevel([4, 2, 1])
    r.SetSmoothingSigmasPerLevel([2.0, 1.0, 0.0])
    r.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    return r


def register(fixed: CTVolume, moving: CTVolume, bspline: bool = False,
             iterations: int = 200, sampling: float = 0.1, mesh_mm: float = 60.0,
             seed: int = 0, default_hu: float = -1024.0) -> Registration:
    """Register `moving` (a contrast phase) to `fixed` (the NCCT).

    Args:
        fixed: NCCT, float32 HU (D, H, W).
        moving: the contrast phase of the same patient, any grid.
        bspline: refine the affine with a B-spline transform (control points every `mesh_mm`).
        iterations: optimiser iterations per resolution level (levels: shrink 4, 2, 1).
        sampling: fraction of fixed voxels sampled for the metric (random, seeded).
        mesh_mm: B-spline control point spacing, mm.
        seed: seed of the metric sampling (same inputs + seed -> same result).
        default_hu: value of fixed voxels that map outside the moving scan.

    Returns:
        The :class:`Registration`.
    """
    import SimpleITK as sitk

    fixed_img, moving_img = fixed.to_sitk(), moving.to_sitk()
    # intensities clipped to the soft-tissue/bone range: air and padding carry no information
    f = sitk.Clamp(fixed_img, sitk.sitkFloat32, -1000.0, 1500.0)
    m = sitk.Clamp(moving_img, sitk.sitkFloat32, -1000.0, 1500.0)
    init = sitk.CenteredTransformInitializer(f, m, sitk.AffineTransform(3),
                                             sitk.CenteredTransformInitializerFilter.GEOMETRY)
    r = _method(sampling, seed)
    r.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4,
                                               numberOfIterations=iterations,
                                               relaxationFactor=0.6,
                                               gradientMagnitudeTolerance=1e-8)
    r.SetOptimizerScalesFromPhysicalShift()
    r.SetInitialTransform(init, inPlace=False)
    affine = r.Execute(f, m)
    metric = r.GetMetricValue()
    _logger.info("affine: MI %.4f after %d iterations (%s)", metric,
                 r.GetOptimizerIteration(), r.GetOptimizerStopConditionDescription())
    transform = affine
    if bspline:
        size = [max(1, int(round(n * s / mesh_mm))) for n, s in zip(f.GetSize(), f.GetSpacing())]
        bs = sitk.BSplineTransformInitializer(f, size)
        rb = _method(sampling, seed)
        rb.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=iterations)
        rb.SetMovingInitialTransform(affine)
        rb.SetInitialTransform(bs, inPlace=True)
        rb.Execute(f, m)
        metric = rb.GetMetricValue()
        transform = sitk.CompositeTransform([affine, bs])
    out = sitk.Resample(moving_img, fixed_img, transform, sitk.sitkLinear, -1024.0,
                        sitk.sitkFloat32)
    return Registration(transform=transform, aligned=CTVolume.from_sitk(out), metric=float(metric))
