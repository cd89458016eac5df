"""The work around the model made cheaper (issue #18 part 1) gives the same results as before:
the vectorised contrast guard against its slice-by-slice reference, the resampling onto a
reference grid against SimpleITK's own reference-image path, the per-slice int16 conversion of
the DICOM writer against the whole-volume one."""
from __future__ import annotations

import numpy as np
import pytest

import vcesdk
from vcesdk import contrast
from vcesdk.data import sample_ct
from vcesdk.volume import CTVolume, hu_to_int16, resample_volume

from conftest import CHEST_CTA, shared


def _slice_blood_pool(hu: np.ndarray) -> list[tuple[float, float]]:
    """(area cm^2, median HU) of each blood-pool region of one axial slice, (H, W) HU at
    contrast.PIXEL_MM, with SimpleITK's filters slice by slice: the reference the one-pass
    contrast._stack_blood_pool must match."""
    import SimpleITK as sitk

    def image(a: np.ndarray):
        img = sitk.GetImageFromArray(a)
        img.SetSpacing((contrast.PIXEL_MM, contrast.PIXEL_MM))
        return img

    img = image(hu)
    mean = sitk.GetArrayFromImage(sitk.Mean(img, [contrast._BOX_RADIUS] * 2))
    sd = sitk.GetArrayFromImage(sitk.Noise(img, [contrast._BOX_RADIUS] * 2))
    lo, hi = contrast.LUMEN_HU
    cand = (mean > lo) & (mean < hi) & (sd < 25.0 + 0.1 * mean)
    if not cand.any():
        return []
    labels = sitk.ConnectedComponent(image(cand.astype(np.uint8)))
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(labels)
    lab = sitk.GetArrayFromImage(labels)
    inner_r, outer_r = (int(round(mm / contrast.PIXEL_MM)) for mm in contrast._RING_MM)
    found = []
    for label in stats.GetLabels():
        area = stats.GetPhysicalSize(label) / 100.0
        if not contrast.AREA_CM2[0] <= area <= contrast.AREA_CM2[1]:
            continue
        comp = lab == label
        # the ring is cut from the component's bounding box grown by the outer radius
        x0, y0, w, h = stats.GetBoundingBox(label)
        ys = slice(max(0, y0 - outer_r), min(hu.shape[0], y0 + h + outer_r))
        xs = slice(max(0, x0 - outer_r), min(hu.shape[1], x0 + w + outer_r))
        sub = image(comp[ys, xs].astype(np.uint8))
        outer = sitk.GetArrayFromImage(sitk.BinaryDilate(sub, [outer_r] * 2)) > 0
        inner = sitk.GetArrayFromImage(sitk.BinaryDilate(sub, [inner_r] * 2)) > 0
        ring = hu[ys, xs][outer & ~inner]
        if ring.size == 0:
            continue
        med = float(np.median(hu[comp]))
        if np.mean(ring > med + 50.0) < 0.05 and np.mean(ring < med - 100.0) > 0.6:
            found.append((area, med))
    return found


def _reference_estimate(vol: CTVolume) -> contrast.ContrastEstimate:
    """estimate_contrast with the slice-by-slice ITK reference in place of the stack pass."""
    fast = contrast._stack_blood_pool
    contrast._stack_blood_pool = lambda hu: [_slice_blood_pool(s) for s in hu]
    try:
        return contrast.estimate_contrast(vol)
    finally:
        contrast._stack_blood_pool = fast


def test_box_mean_sd_matches_itk_filters():
    import SimpleITK as sitk

    rng = np.random.default_rng(3)
    stack = rng.normal(40.0, 60.0, (3, 17, 23)).astype(np.float32)
    stack[1, 4:10, 5:12] = 200.0  # a flat region: variance exactly 0 inside
    mean, sd = contrast._box_mean_sd(stack)
    for k in range(stack.shape[0]):
        img = sitk.GetImageFromArray(stack[k])
        ref_mean = sitk.GetArrayFromImage(sitk.Mean(img, [contrast._BOX_RADIUS] * 2))
        ref_sd = sitk.GetArrayFromImage(sitk.Noise(img, [contrast._BOX_RADIUS] * 2))
        np.testing.assert_allclose(mean[k], ref_mean, rtol=1e-6, atol=1e-4)
        np.testing.assert_allclose(sd[k], ref_sd, rtol=1e-5, atol=1e-3)
    assert sd[1, 7, 8] == 0.0 and mean[1, 7, 8] == 200.0


@pytest.mark.parametrize("source", ["sample", "lung1", "hcc048", "chest_cta"])
def test_stack_guard_equals_slice_reference(source, lung1_path, hcc_volume):
    """Same estimate, field for field (floats exactly), as the slice-by-slice reference, on
    native inputs (sample, lung1) and enhanced ones (hcc048 portal venous, chest CTA)."""
    vol = {"sample": lambda: vcesdk.read_volume(sample_ct()),
           "lung1": lambda: vcesdk.read_volume(lung1_path),
           "hcc048": lambda: hcc_volume,
           "chest_cta": lambda: vcesdk.read_volume(
               shared(f"{CHEST_CTA}/aorta_report_ct_cropped.nii.gz"))}[source]()
    fast = contrast.estimate_contrast(vol)
    assert fast == _reference_estimate(vol)
    if source in ("hcc048", "chest_cta"):
        assert fast.enhanced and fast.slices_with_blood_pool >= 20


def test_stack_guard_keeps_slices_apart():
    """A region in one slice and one straight above it in the next stay two regions (the
    stack is labelled with an empty slice between slices)."""
    hu = np.full((2, 60, 60), -100.0, dtype=np.float32)  # fat around
    hu[:, 20:32, 20:32] = 250.0  # a 12 x 12 pixel lumen in both slices
    stack = contrast._stack_blood_pool(hu)
    assert stack == [_slice_blood_pool(hu[0]), _slice_blood_pool(hu[1])]
    # its 8 x 8 core passes the 5 x 5 homogeneity test: 64 x 2.25 mm^2 = 1.44 cm^2 per slice
    assert len(stack[0]) == 1 and stack[0][0] == pytest.approx((1.44, 250.0))


def _itk_reference_image_resample(vol: CTVolume, reference: CTVolume, default_hu: float
                                  ) -> np.ndarray:
    """What resample_volume(reference=...) did before: SetReferenceImage on a full copy."""
    import SimpleITK as sitk

    f = sitk.ResampleImageFilter()
    f.SetInterpolator(sitk.sitkLinear)
    f.SetDefaultPixelValue(float(default_hu))
    f.SetOutputPixelType(sitk.sitkFloat32)
    f.SetReferenceImage(reference.to_sitk())
    return sitk.GetArrayFromImage(f.Execute(vol.to_sitk()))


def test_resample_onto_reference_grid_is_bit_identical(lung1_path):
    """Model grid (4 x 2 x 2 mm) back onto lung1's 5 x 0.57 x 0.57 mm grid, and onto an
    oblique grid: identical voxels to SimpleITK's reference-image path."""
    vol = vcesdk.read_volume(lung1_path)
    model = resample_volume(vol, (4.0, 2.0, 2.0), default_hu=-1024.0)
    rng = np.random.default_rng(0)
    delta = model.with_hu(rng.uniform(0.0, 300.0, model.shape).astype(np.float32))
    for default in (0.0, -1024.0):
        got = resample_volume(delta, (), reference=vol, default_hu=default).hu
        assert np.array_equal(got, _itk_reference_image_resample(delta, vol, default))
    c, s = np.cos(np.radians(20.0)), np.sin(np.radians(20.0))
    oblique = CTVolume(hu=np.zeros((20, 64, 64), np.float32), spacing_zyx_mm=(3.0, 1.5, 1.5),
                       origin_xyz_mm=(-40.0, -30.0, vol.origin_xyz_mm[2]),
                       direction=np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]))
    got = resample_volume(delta, (), reference=oblique, default_hu=0.0)
    assert got.shape == oblique.shape and got.spacing_zyx_mm == oblique.spacing_zyx_mm
    assert np.array_equal(got.direction, oblique.direction)
    assert np.array_equal(got.hu, _itk_reference_image_resample(delta, oblique, 0.0))


def test_int16_slice_rounds_and_clips_as_before():
    hu = np.array([[-40000.0, -32768.6, -2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 32767.4, 32767.6,
                    1e9, 12.49]], dtype=np.float32)
    want = np.clip(np.rint(hu), -32768, 32767).astype(np.int16)
    got = hu_to_int16(hu)
    assert got.dtype == np.int16 and np.array_equal(got, want)


def test_onnx_runtime_workers_sleep_between_runs():
    """The runtime's ONNX Runtime session does not spin its intra-op workers after a run (they
    took the cores from the stitcher: vcesdk.backends.onnxruntime.ALLOW_SPINNING)."""
    from vcesdk.backends.onnxruntime import ALLOW_SPINNING

    synth = vcesdk.Synthesizer(vcesdk.DEFAULT_BUNDLE, providers=["CPUExecutionProvider"])
    opts = synth._backend._session.get_session_options()
    assert opts.get_session_config_entry(ALLOW_SPINNING) == "0"


# --- the streaming main job: same output as composing the whole volume after the model ------

def _whole_volume_reference(syn: "vcesdk.Synthesizer", vol: CTVolume) -> np.ndarray:
    """The output as the runtime made it before streaming: stitch every window, then compose
    the whole model grid and bring it onto the input grid in one pass (resampled, or only
    reoriented for a bundle on the native grid)."""
    from vcesdk.intensity import channels_to_hu, enhancement_hu
    from vcesdk.planning import prepare_model_input
    from vcesdk.stitch import sliding_window
    from vcesdk.volume import orient_volume, orientation_code

    b = syn.bundle
    prep = prepare_model_input(b, vol)
    stitched = sliding_window(prep.channels, syn.predict_windows, prep.window, prep.stride,
                              blend=b.blend, batch_size=b.batch_size)
    D, H, W = prep.work.shape
    pred = channels_to_hu(stitched[b.output_channel, :D, :H, :W], b.output_hu)
    delta = enhancement_hu(pred, prep.work.hu, b.compose, b.output_hu, b.difference_floor_hu)
    model_grid = prep.work.with_hu(delta)
    back = (resample_volume(model_grid, (), reference=vol, default_hu=0.0).hu
            if b.resample_mm is not None else orient_volume(model_grid, orientation_code(vol)).hu)
    return vol.hu + back


@pytest.mark.parametrize("flip", [False, True], ids=["slices-upward", "slices-downward"])
def test_streamed_output_equals_the_whole_volume_compose(flip):
    """The sample through the demo PVP bundle (resampled 3 mm -> 4 x 2 x 2 mm and back):
    streamed output within 1e-3 HU of the whole-volume compose (the same interpolation from a
    slab of the model grid: only the rounding of the continuous index differs), every input
    slice handed out once, and with slices running upward some before the last window ran."""
    vol = vcesdk.read_volume(sample_ct())
    if flip:  # the same anatomy stored with the slice axis reversed
        vol = CTVolume(hu=vol.hu[::-1].copy(), spacing_zyx_mm=vol.spacing_zyx_mm,
                       origin_xyz_mm=tuple(vol.affine @ [0, 0, vol.shape[0] - 1, 1])[:3],
                       direction=vol.direction * [1, 1, -1])
    syn = vcesdk.Synthesizer(vcesdk.DEFAULT_BUNDLE, providers=["CPUExecutionProvider"],
                             hu_check="off", contrast_guard="off")
    windows = [0, 0]  # done, total
    got: list = []  # (k0, slices, windows done when handed out)

    def progress(done: int, total: int) -> None:
        windows[:] = [done, total]

    def on_slices(k0: int, hu: np.ndarray) -> None:
        got.append((k0, hu.copy(), windows[0]))

    out = syn.synthesize(vol, progress=progress, on_slices=on_slices)
    ref = _whole_volume_reference(syn, vol)
    np.testing.assert_allclose(out.hu, ref, rtol=0, atol=1e-3)
    covered = np.zeros(vol.shape[0], int)
    for k0, hu, _ in got:
        covered[k0:k0 + hu.shape[0]] += 1
        np.testing.assert_array_equal(hu, out.hu[k0:k0 + hu.shape[0]])
    assert (covered == 1).all()
    if not flip:  # inferior slices are final while superior windows still run
        k0, hu, done = got[0]
        assert k0 == 0 and hu.shape[0] < vol.shape[0] and done < windows[1]


def test_synthesize_to_streams_the_same_dicom_series(tmp_path):
    """The main job's DICOM series, written slice by slice by a thread during the synthesis,
    holds the same pixels (int16 HU) and geometry as the returned volume written at once."""
    vol = vcesdk.read_volume(sample_ct())
    syn = vcesdk.Synthesizer(vcesdk.DEFAULT_BUNDLE, providers=["CPUExecutionProvider"])
    out = syn.synthesize_to(vol, tmp_path / "streamed", like=vol)
    assert syn.last_write_wait_s is not None and syn.last_write_wait_s >= 0
    vcesdk.write_volume(out, tmp_path / "whole", like=vol)
    a, b = (vcesdk.read_volume(tmp_path / n) for n in ("streamed", "whole"))
    np.testing.assert_array_equal(a.hu, b.hu)
    np.testing.assert_array_equal(a.hu, hu_to_int16(out.hu))
    assert a.shape == vol.shape and np.allclose(a.origin_xyz_mm, vol.origin_xyz_mm)
    assert len(list((tmp_path / "streamed").iterdir())) == vol.shape[0]


def test_a_failed_slice_write_leaves_nothing(tmp_path, monkeypatch):
    """A write error in the writer thread reaches the caller; no output folder is left."""
    from vcesdk.errors import VolumeWriteError
    from vcesdk.io import dicom

    calls = [0]
    real = dicom.DicomSeriesWriter._write_slice

    def failing(self, k, hu):
        calls[0] += 1
        if calls[0] == 3:
            raise VolumeWriteError("disk full (simulated)")
        return real(self, k, hu)

    monkeypatch.setattr(dicom.DicomSeriesWriter, "_write_slice", failing)
    vol = vcesdk.read_volume(sample_ct())
    syn = vcesdk.Synthesizer(vcesdk.DEFAULT_BUNDLE, providers=["CPUExecutionProvider"])
    with pytest.raises(VolumeWriteError, match="disk full"):
        syn.synthesize_to(vol, tmp_path / "out", like=vol)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("shape, spacing", [
    ((24, 64, 64), (4, 2, 2)),      # no padding
    ((5, 100, 90), (4, 2, 2)),      # thin (last slice repeated) and padded in-plane
    ((30, 101, 122), (3, 3, 3)),    # resampled, padded on every axis
])
def test_channels_are_made_in_place_in_the_padded_input(shape, spacing):
    """prepare_model_input writes the channels straight into the padded model input: the same
    values as windowing, repeating the last slice and padding one step after the other."""
    from vcesdk.intensity import hu_to_channels
    from vcesdk.planning import plan_windows, prepare_model_input

    b = vcesdk.load_bundle(vcesdk.DEFAULT_BUNDLE)
    vol = CTVolume(hu=np.random.default_rng(7).uniform(-1100, 1500, shape).astype(np.float32),
                   spacing_zyx_mm=spacing)
    got = prepare_model_input(b, vol)
    ch = hu_to_channels(got.work.hu, b.windows)
    padded, window, _ = plan_windows(b, got.work.shape)
    if ch.shape[1] < window[0]:
        ch = np.concatenate([ch, np.repeat(ch[:, -1:], window[0] - ch.shape[1], axis=1)], 1)
    ref = np.empty((len(b.windows), *padded), np.float32)
    ref[:] = hu_to_channels(np.float32([b.pad_hu]), b.windows)[:, 0, None, None, None]
    ref[:, :ch.shape[1], :ch.shape[2], :ch.shape[3]] = ch
    np.testing.assert_array_equal(got.channels, ref)


def test_a_refused_synthesis_writes_nothing(tmp_path):
    """synthesize_to: an error before or during the synthesis leaves no file and no folder."""
    from vcesdk.errors import MemoryBudgetError

    vol = vcesdk.read_volume(sample_ct())
    syn = vcesdk.Synthesizer(vcesdk.DEFAULT_BUNDLE, providers=["CPUExecutionProvider"],
                             memory_budget_mb=1)
    with pytest.raises(MemoryBudgetError):
        syn.synthesize_to(vol, tmp_path / "new" / "scect_pvp", like=vol)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("code", ["LPS", "RAS"])
def test_a_bundle_on_the_native_grid_composes_per_slab_and_orients_back(tmp_path, code):
    """A bundle without resampling (input.resample null): slabs are composed on the model grid
    as they finish and the whole result is oriented back once; same values as composing the
    whole stitched volume, for an input already in the model's orientation and one that is
    not (RAS: two axes flipped)."""
    import json
    import shutil

    from vcesdk.volume import orient_volume

    b_dir = tmp_path / "native"
    shutil.copytree(vcesdk.DEFAULT_BUNDLE, b_dir)
    m = json.loads((b_dir / "manifest.json").read_text())
    m["input"]["resample"] = None
    (b_dir / "manifest.json").write_text(json.dumps(m))
    z, y, x = np.meshgrid(np.arange(20), np.arange(48), np.arange(40), indexing="ij")
    hu = np.where(np.hypot(y - 24, x - 20) < 17, 40.0 + 3.0 * z + 0.5 * x, -1000.0)
    vol = orient_volume(CTVolume(hu=hu.astype(np.float32), spacing_zyx_mm=(4.0, 2.0, 2.0)),
                        code)
    syn = vcesdk.Synthesizer(b_dir, providers=["CPUExecutionProvider"], hu_check="off",
                             contrast_guard="off")
    got = []
    out = syn.synthesize(vol, on_slices=lambda k0, s: got.append((k0, s.shape[0])))
    assert got == [(0, vol.shape[0])]   # one pass at the end
    np.testing.assert_allclose(out.hu, _whole_volume_reference(syn, vol), rtol=0, atol=1e-4)
    assert np.abs(out.hu - vol.hu).max() > 1.0   # the model did enhance something
