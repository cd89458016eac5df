"""The seed papers' methods (#5): the parts a reimplementation gets wrong, pinned by hand-computed
cases, and each small recipe trained, exported and run by the runtime."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="seed-method tests need the train extra (torch)")

from vcesdk.training.methods.mangan import ManGan, MANorm, subtraction_target  # noqa: E402
from vcesdk.training.methods import create_method  # noqa: E402
from vcesdk.training.recipe import builtin_recipe, load_recipe  # noqa: E402
from vcesdk.training.trainer import Trainer  # noqa: E402

from vcesdk.intensity import Window, hu_to_channels, hu_to_output  # noqa: E402
from vcesdk.errors import TrainingError  # noqa: E402

pytestmark = pytest.mark.usefixtures("deterministic")


def _short(name: str, steps: int, **train):
    r = load_recipe(builtin_recipe(name))
    return dataclasses.replace(
        r, data={**r.data, "n_train": 4, "n_val": 1},
        train={**r.train, "steps": steps, "val_every": 0, "ckpt_every": 0, **train},
        optim={**r.optim, "lr": 2e-3, "decay_every": 0})


def _export_checked(tmp_path, lung1_path):
    """Export tmp_path/run to tmp_path/bundle (parity on real CT); the ONNX export must match
    eager PyTorch within 0.5 HU. Returns (bundle path, manifest)."""
    from vcesdk.export import export_bundle
    from vcesdk.training.trainer import load_checkpoint

    from vcesdk import read_volume

    path = export_bundle(load_checkpoint(tmp_path / "run"), tmp_path / "bundle",
                         read_volume(lung1_path))
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["files"]["model.onnx"]["parity"]["max_abs_hu"] < 0.5
    return path, manifest


def _center(conv: torch.nn.Conv2d, weights: list[float], bias: float) -> None:
    """A 3x3 conv that multiplies input channel i by weights[i] at the centre tap only."""
    with torch.no_grad():
        conv.weight.zero_()
        for i, w in enumerate(weights):
            conv.weight[0, i, 1, 1] = w
        conv.bias.fill_(bias)


def test_manorm_matches_the_papers_description_by_hand():
    """000, Fig. 1b: n = norm(x); h = conv(n); gamma, beta = conv([h, mask]); both multiplied
    by the mask; out = n * gamma + beta."""
    torch.manual_seed(0)
    layer = MANorm(channels=1, hidden=1)
    _center(layer.shared[0], [1.0], 0.0)       # h = ReLU(n)
    _center(layer.gamma, [2.0, 0.0], 0.5)      # gamma = 2 h + 0.5
    _center(layer.beta, [0.0, 1.0], 0.1)       # beta = mask + 0.1
    x = np.arange(16, dtype=np.float64).reshape(4, 4) ** 1.5
    mask = np.zeros((4, 4))
    mask[1:3, 1:3] = [[0.5, 1.0], [-0.25, 0.75]]
    n = (x - x.mean()) / np.sqrt(x.var() + 1e-5)      # instance norm, biased variance
    h = np.maximum(n, 0.0)
    gamma, beta = 2.0 * h + 0.5, mask + 0.1
    expected = n * (gamma * mask) + beta * mask
    out = layer(torch.tensor(x, dtype=torch.float32)[None, None],
                torch.tensor(mask, dtype=torch.float32)[None, None])[0, 0].detach().numpy()
    np.testing.assert_allclose(out, expected, atol=1e-4)
    # where the mask is 0 the layer outputs 0: a MABlk leaves non-enhancing regions alone
    assert np.all(out[mask == 0] == 0.0)
    # a half-resolution mask is resized to the features (bilinear)
    small = layer(torch.tensor(x, dtype=torch.float32)[None, None], torch.ones(1, 1, 2, 2))
    assert small.shape == (1, 1, 4, 4)


def test_subtraction_target_is_the_enhancement_in_hu():
    win = Window("liver", 60.0, 500.0)            # 000: L 60 / W 500
    ncct = np.array([[[40.0, -50.0, 100.0]]], np.float32)
    cect = np.array([[[160.0, -50.0, 250.0]]], np.float32)
    x = torch.from_numpy(hu_to_channels(ncct, [win]))
    y = torch.from_numpy(hu_to_output(cect, (-190.0, 310.0))[None])
    s = subtraction_target(x, y).numpy()[0]
    np.testing.assert_allclose(s * 500.0, cect - ncct, atol=1e-3)


def test_mangan_cycle_loss_is_eq1():
    """L_cyc = |F(G(x, M(x))) - x| + |G(F(y), M(F(y))) - y|, with G's mask predicted from
    F(y) in the second term (not from x), and F without a mask."""
    torch.manual_seed(0)
    # the paper's plain generator output (no residual: a residual G starts as the identity and
    # the cycle terms start at 0), instance norms (batch statistics differ slice by slice; an
    # unnormalised MaskNet starts near 0, so both masks of the check below would be ~0)
    method = create_method(_short("mangan_small", 1).with_overrides(
        sets=["generator.config.residual=false", "generator.config.norm=instance",
              "generator.config.feature_norm=instance"]))
    assert isinstance(method, ManGan)
    x = torch.rand(2, 1, 2, 32, 32) * 2 - 1
    y = torch.rand(2, 1, 2, 32, 32) * 2 - 1
    with torch.no_grad():
        terms = method.losses(x, y)
        g = method.generator
        f = method.backward_generator.net

        def per_slice(fn, v):  # 2D function over every slice of (B, 1, d, h, w)
            return torch.stack([fn(v[:, :, k]) for k in range(v.shape[2])], dim=2)

        fake = per_slice(lambda s: g.net(s, g.masknet(s)), x)
        regen = per_slice(lambda s: g.net(f(s), g.masknet(f(s))), y)
        expected = ((per_slice(f, fake) - x).abs().mean() + (regen - y).abs().mean())
        wrong = ((per_slice(f, fake) - x).abs().mean()
                 + (per_slice(lambda s: g.net(f(s), g.masknet(s)), y) - y).abs().mean())
    assert float(terms["cycle"]) == pytest.approx(float(expected), rel=1e-5)
    assert abs(float(terms["cycle"]) - float(wrong)) > 1e-4
    assert float(terms["rec"]) == pytest.approx(float((fake - y).abs().mean()), rel=1e-5)
    assert float(terms["mask"]) == pytest.approx(
        float((per_slice(g.masknet, x) - (y - x) / 2).abs().mean()), rel=1e-5)


def test_mangan_refuses_a_recipe_with_another_output_window():
    r = load_recipe(builtin_recipe("mangan_small"))
    bad = dataclasses.replace(r, model_io={**r.model_io, "hu_range": [-1000, 1000]})
    with pytest.raises(ValueError, match="hu_range"):
        create_method(bad)


@pytest.mark.slow
def test_mangan_small_trains_exports_and_writes_the_subtraction_map(tmp_path, lung1_path):
    from vcesdk import CTVolume, Synthesizer, load_bundle

    # the paper's InstanceNorm in the ResNet layers: at this test's 60 steps x lr 2e-3 the
    # recipe's unnormalised generator (feature_norm none, better over its own 2000 steps at
    # 5e-4: README held-out table) has not left the identity yet (measured: l1 ratio 1.01,
    # validation 19.34 -> 19.33 HU), so the losses below would not move; the noisy target,
    # as when the figures below were measured
    trainer = Trainer(_short("mangan_small", 60).with_overrides(
        sets=["generator.config.feature_norm=instance", "data.noise_free_target=false"]),
        tmp_path / "run", progress=False)
    before = trainer.validate()
    # the residual generator starts as the identity: before training the model is the NCCT
    assert before["val_mae_hu"] == pytest.approx(before["val_mae_hu_ncct"], abs=1e-3)
    history = trainer.fit()
    after = trainer.validate()
    # measured on the 2-core CI machine over seeds 0 and 1 (threads 1 and 2): last/first ten
    # steps l1 0.53, mask_l1 0.28, cycle 0.04; the margins below leave room for other CPUs
    for key, ratio in (("l1", 0.8), ("mask_l1", 0.6), ("cycle", 0.5)):
        v = np.array([h[key] for h in history])
        assert v[-10:].mean() < ratio * v[:10].mean(), key
    # 60 steps move it off the identity without making it worse than the NCCT (measured
    # -0.24 / -0.55 HU against the identity's 19.3 HU)
    assert after["val_mae_hu"] != before["val_mae_hu"]
    assert after["val_mae_hu"] < after["val_mae_hu_ncct"] + 1.0
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert {"generator", "discriminator", "backward_generator"} <= set(ckpt)

    path, manifest = _export_checked(tmp_path, lung1_path)
    assert manifest["output"]["channels"] == 2
    assert manifest["output"]["auxiliary"][0]["name"] == "subtraction"
    bundle = load_bundle(path)
    assert bundle.auxiliary[0].channel == 1 and bundle.auxiliary[0].hu_range == (-500, 500)
    syn = Synthesizer(bundle, contrast_guard="off")
    case = trainer.val_data.cases[0]
    vol = CTVolume(case.phases["ncct"], spacing_zyx_mm=(4.0, 2.0, 2.0))
    out = syn.synthesize(vol)
    sub = syn.last_auxiliary["subtraction"]
    assert sub.shape == vol.shape == out.shape and np.isfinite(sub.hu).all()
    assert -500.0 <= sub.hu.min() and sub.hu.max() <= 500.0
    # voxels outside the model's window (air, cortical bone) keep their HU: the window's edge
    # is all the model saw of them (add_difference composition)
    lo, hi = bundle.output_hu
    outside = (vol.hu < lo - 1.0) | (vol.hu > hi + 1.0)
    assert outside.sum() > 1000 and float(np.abs(out.hu - vol.hu)[outside].max()) < 0.5
    # the evaluation scores the subtraction map against the real one (000's Table 2)
    from vcesdk.training.datacli import main as data_main
    from vcesdk.training.evaluate import evaluate

    held = tmp_path / "held"
    assert data_main(["phantoms", "--out", str(held), "--patients", "1", "--phases", "ncct,pvp",
                      "--seed", "9000", "--size", "96", "96", "16", "--spacing", "4", "2", "2",
                      "--no-dicom", "--jobs", "1"]) == 0
    rep = json.loads((evaluate([path], held, tmp_path / "rep") / "report.json").read_text())
    sub = rep["phases"]["pvp"]["subtraction"][bundle.name]
    assert 0.0 < sub["mae_hu"]["mean"] < 200.0 and sub["psnr"]["mean"] > 10.0


def test_bundle_auxiliary_outputs_are_validated():
    from vcesdk.bundle import auxiliary_from_manifest
    from vcesdk.errors import BundleError

    out = {"channels": 2, "channel": 0,
           "auxiliary": [{"name": "subtraction", "channel": 1, "hu_range": [-500, 500]}]}
    assert auxiliary_from_manifest(out)[0].hu_range == (-500.0, 500.0)
    for bad, msg in ((dict(channel=0), "unused index"), (dict(channel=2), "unused index"),
                     (dict(hu_range=[5, 1]), "hu_range"), (dict(name="a b"), "plain name")):
        aux = [{"name": "subtraction", "channel": 1, "hu_range": [-500, 500], **bad}]
        with pytest.raises(BundleError, match=msg):
            auxiliary_from_manifest({**out, "auxiliary": aux})


def test_two_stage_discriminator_targets_are_the_three_classes():
    """004 Eqs. 1-2: D learns real CECT -> C, synthetic NCCT -> S, real NCCT -> N; G(C->N)
    wants its output classified N."""
    from vcesdk.training.methods.twostage import (
        CLASS_CECT,
        CLASS_NCCT,
        CLASS_SYNTHETIC_NCCT,
        stage1_d_loss,
        stage1_g_loss,
    )

    def d(t):  # logits that depend on which image came in: l_k = -(mean - k)^2
        v = float(t.mean())
        return torch.tensor([[-(v - k) ** 2 for k in range(3)]] * len(t))

    def ce(v, cls):
        logits = np.array([-(v - k) ** 2 for k in range(3)])
        return float(np.log(np.exp(logits).sum()) - logits[cls])

    cect, syn, ncct = (torch.full((2, 1, 1, 4, 4), v) for v in (0.3, 1.6, 2.2))
    expected = (ce(0.3, CLASS_CECT) + ce(1.6, CLASS_SYNTHETIC_NCCT) + ce(2.2, CLASS_NCCT))
    assert float(stage1_d_loss(d, cect, syn, ncct)) == pytest.approx(expected, rel=1e-5)
    assert float(stage1_g_loss(d, syn)) == pytest.approx(ce(1.6, CLASS_NCCT), rel=1e-5)
    assert (CLASS_CECT, CLASS_NCCT, CLASS_SYNTHETIC_NCCT) == (0, 1, 2)
    # the synthetic NCCT is detached in D's loss: no gradient reaches G(C->N) from it
    syn_g = syn.clone().requires_grad_(True)
    net = torch.nn.Conv3d(1, 1, 1)
    stage1_d_loss(lambda t: net(t).mean(dim=(1, 2, 3, 4))[:, None].expand(-1, 3) * 0
                  + net(t).mean(), cect, syn_g, ncct).backward()
    assert syn_g.grad is None


def test_two_stage_perceptual_loss_is_eq4():
    from vcesdk.training.methods.twostage import PERCEPTUAL_WEIGHTS, VGGClassifier, perceptual_loss

    assert PERCEPTUAL_WEIGHTS == (1 / 32, 1 / 16, 1 / 8, 1 / 4)
    torch.manual_seed(0)
    net = VGGClassifier(1, (4, 8, 8, 16, 16)).eval()
    a, b = torch.rand(2, 1, 1, 32, 32), torch.rand(2, 1, 1, 32, 32)
    fa, fb = net.features(a[:, :, 0]), net.features(b[:, :, 0])
    assert [f.shape[1:] for f in fa] == [(4, 16, 16), (8, 8, 8), (8, 4, 4), (16, 2, 2)]
    by_hand = sum(w * float((x - y).abs().sum()) / (x.shape[1] * x.shape[2] * x.shape[3])
                  / len(x) for w, x, y in zip(PERCEPTUAL_WEIGHTS, fa, fb))
    with torch.no_grad():
        assert float(perceptual_loss(net, a, b)) == pytest.approx(by_hand, rel=1e-5)
        assert float(perceptual_loss(net, a, a)) == 0.0


def test_two_stage_variants_run_each_stage():
    from vcesdk.training.methods.twostage import TwoStage

    torch.manual_seed(0)
    x, y = torch.rand(2, 1, 3, 32, 32) * 2 - 1, torch.rand(2, 1, 3, 32, 32) * 2 - 1
    seen = {}
    for variant in ("S", "J", "single", "cycle"):
        r = _short("two_stage_small", 1)
        stage1_terms = {} if variant in ("S", "J") else {"paired_weight": 0.0,
                                                         "identity_weight": 0.0}
        r = dataclasses.replace(r, loss={**r.loss, "variant": variant, "pretrain_steps": 1,
                                         "stage1_steps": 1, **stage1_terms},
                                data={**r.data, "noise_free_target": variant in ("S", "J")})
        m = create_method(r)
        assert isinstance(m, TwoStage)
        for step in (0, 1, 2):
            m.step = step
            seen[(variant, m.stage())] = set(m.train_step(x, y))
    assert seen[("S", "pretrain")] == {"pcp_ce", "pcp_accuracy"}
    assert {"loss_d", "adv"} <= seen[("S", "stage1")] and "l1" not in seen[("S", "stage1")]
    assert {"l1", "pcp"} <= seen[("S", "stage2")] and "loss_d" not in seen[("S", "stage2")]
    assert {"l1", "pcp", "loss_d", "adv"} <= seen[("J", "J")]
    assert "cycle" in seen[("cycle", "cycle")]
    with pytest.raises(ValueError, match="variant"):
        r = _short("two_stage_small", 1)
        create_method(dataclasses.replace(r, loss={**r.loss, "variant": "K"}))


@pytest.mark.slow
def test_two_stage_small_trains_and_exports(tmp_path, lung1_path):
    from vcesdk import CTVolume, Synthesizer

    torch.set_num_threads(2)
    # the paper's plain generators (a residual one starts at the identity, so its loss curve
    # says less about the mechanics; see test_residual_generators_start_as_the_identity)
    r = _short("two_stage_small", 70).with_overrides(sets=["generator.config.residual=false"])
    r = dataclasses.replace(r, loss={**r.loss, "pretrain_steps": 10, "stage1_steps": 20})
    trainer = Trainer(r, tmp_path / "run", progress=False)
    before = trainer.validate()
    history = trainer.fit()
    after = trainer.validate()
    pre = [h["pcp_ce"] for h in history if "pcp_ce" in h]
    s2 = np.array([h["l1"] for h in history if "pcp" in h])
    assert len(pre) == 10 and len(s2) == 40
    assert np.mean(pre[-3:]) < np.mean(pre[:3])
    assert s2[-10:].mean() < 0.7 * s2[:10].mean()
    assert after["val_mae_hu"] < before["val_mae_hu"]
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert {"backward_generator", "discriminator", "perceptual"} <= set(ckpt)
    path, _ = _export_checked(tmp_path, lung1_path)
    vol = CTVolume(trainer.val_data.cases[0].phases["ncct"], spacing_zyx_mm=(4.0, 2.0, 2.0))
    out = Synthesizer(path, contrast_guard="off").synthesize(vol)
    assert out.shape == vol.shape and np.isfinite(out.hu).all()


def test_misaligned_truth_trains_on_the_misaligned_scans(tmp_path):
    """004's misalignment study: train on targets distorted by I + kU, validate on aligned."""
    from vcesdk.training.datacli import main as data_main
    from vcesdk.training.trainer import Trainer as T

    from vcesdk import read_volume

    data = tmp_path / "mis"
    assert data_main(["phantoms", "--out", str(data), "--patients", "3", "--phases", "ncct,pvp",
                      "--size", "64", "64", "8", "--spacing", "4", "4", "4", "--misalign",
                      "0.05", "--no-dicom", "--jobs", "1"]) == 0
    r = _short("unet_l1_small", 1)
    r = dataclasses.replace(r, data={**r.data, "n_val": 1})
    aligned = T(r, tmp_path / "a", progress=False, data=data)
    mis = T(r, tmp_path / "m", progress=False, data=data, misaligned_truth=True)
    first = sorted(p.name for p in data.iterdir() if p.is_dir())[0]
    truth = read_volume(data / first / "pvp_aligned.nii.gz").hu
    moved = read_volume(data / first / "pvp.nii.gz").hu
    assert np.abs(truth - moved).mean() > 5.0      # k = 0.05 moves anatomy by several HU
    np.testing.assert_allclose(aligned.train_data.cases[0].phases["pvp"], truth)
    np.testing.assert_allclose(mis.train_data.cases[0].phases["pvp"], moved)
    np.testing.assert_allclose(mis.val_data.cases[0].phases["pvp"],
                               aligned.val_data.cases[0].phases["pvp"])


def test_intensity_pretext_labels_are_the_alpha_levels():
    """001 / 002: classes 0..3 <-> alpha 0.5, 1.0, 1.5, 2.0 applied to the [0, 1] image."""
    from vcesdk.training.methods.hrgan import INTENSITY_LEVELS, intensity_pretext

    assert INTENSITY_LEVELS == (0.5, 1.0, 1.5, 2.0)
    x = torch.rand(64, 3, 8, 8) * 2 - 1
    scaled, labels = intensity_pretext(x, torch.Generator().manual_seed(0))
    assert labels.dtype == torch.int64 and set(labels.tolist()) == {0, 1, 2, 3}
    for i in range(len(x)):
        alpha = INTENSITY_LEVELS[int(labels[i])]
        # in [0, 1] units the image is multiplied by alpha
        torch.testing.assert_close((scaled[i] + 1) / 2, alpha * (x[i] + 1) / 2)
    assert torch.equal(scaled[labels == 1], x[labels == 1])


def test_quadrant_split_and_stitch_are_exact():
    """001's local path: four N/2 x N/2 quadrants, stitched back without loss or overlap."""
    from vcesdk.training.methods.hrgan import split_quadrants, stitch_quadrants

    x = torch.arange(2 * 1 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 1, 3, 8, 8)
    q = split_quadrants(x)
    assert q.shape == (8, 1, 3, 4, 4)
    assert torch.equal(q[0], x[0, :, :, :4, :4]) and torch.equal(q[2], x[0, :, :, :4, 4:])
    assert torch.equal(q[4], x[0, :, :, 4:, :4]) and torch.equal(q[7], x[1, :, :, 4:, 4:])
    assert torch.equal(stitch_quadrants(q), x)


def test_hr_generator_encoder_is_dense():
    from vcesdk.training.methods.hrgan import DenseEncoder

    enc = DenseEncoder(3, (4, 8, 16))
    # block i sees every earlier block's channels (HRNet-style), pooled to its resolution
    assert [b[0].in_channels for b in enc.blocks] == [3, 4, 12]
    feats = enc(torch.rand(2, 3, 32, 32))
    assert [tuple(f.shape[1:]) for f in feats] == [(4, 32, 32), (8, 16, 16), (16, 8, 8)]


@pytest.mark.slow
@pytest.mark.parametrize("name, stages", [("dual_path_small", {"loss.pretrain_steps": 10}),
                                          ("dyefreenet_small", {"loss.pretrain_steps": 10,
                                                                "loss.primary_steps": 20})])
def test_hr_gans_pretrain_train_and_export(name, stages, tmp_path, lung1_path):
    from vcesdk import Synthesizer, read_volume

    torch.set_num_threads(2)
    r = _short(name, 70).with_overrides(sets=[f"{k}={v}" for k, v in stages.items()]
                                        + ["generator.config.residual=false"])
    trainer = Trainer(r, tmp_path / "run", progress=False)
    before = trainer.validate()
    untrained = {k: v.clone() for k, v in trainer.method.perceptual.state_dict().items()}
    history = trainer.fit()
    pre = [h["pretext_ce"] for h in history if "pretext_ce" in h]
    # 10 pretext steps: the classifier is updated and stays near chance (4 classes: ln 4 =
    # 1.386; measured 1.32-1.43 on this machine, so only "not diverged" is asserted; how far
    # pretraining gets is the benchmark's pretext_accuracy, logged in log.jsonl)
    assert len(pre) == 10 and np.isfinite(pre).all() and max(pre) < 2.0
    trained = trainer.method.perceptual.state_dict()
    assert any(not torch.equal(untrained[k], trained[k]) for k in untrained
               if trained[k].is_floating_point())
    method = trainer.method
    enc = (method.generator.encoder if name == "dual_path_small"
           else method.generator.primary.encoder)
    assert not all(torch.equal(a, b) for a, b in zip(
        enc.state_dict().values(), method.perceptual.encoder.state_dict().values()))
    # the first GAN stage after pretraining (dual path: the only one; DyeFreeNet: the
    # primary GAN, whose L1 is on the half-resolution image) brings the output to the target
    first = np.array([h["l1"] for h in history[10:30]])
    assert first[-5:].mean() < 0.8 * first[:5].mean()
    # and the trained model (DyeFreeNet: the whole cascade) beats the untrained one
    assert trainer.validate()["val_mae_hu"] < before["val_mae_hu"]
    path, _ = _export_checked(tmp_path, lung1_path)
    vol = read_volume(lung1_path)
    out = Synthesizer(path, contrast_guard="off").synthesize(vol)
    assert out.shape == vol.shape and np.isfinite(out.hu).all()


def test_dyefreenet_refinement_starts_from_the_primary():
    from vcesdk.training.methods.hrgan import DyeFreeNetMethod

    r = _short("dyefreenet_small", 1).with_overrides(
        sets=["loss.pretrain_steps=0", "loss.primary_steps=1"])
    m = create_method(r)
    assert isinstance(m, DyeFreeNetMethod)
    x, y = torch.rand(2, 1, 3, 32, 32) * 2 - 1, torch.rand(2, 1, 3, 32, 32) * 2 - 1
    m.step = 0
    assert m.stage() == "primary"
    m.train_step(x, y)
    m.step = 1
    assert m.stage() == "refine"
    m.train_step(x, y)
    g = m.generator
    # the primary is frozen after its stage; the refinement's decoder began as its copy
    assert not any(p.requires_grad for p in g.primary.parameters())
    key = "decoder.0.0.weight"
    assert g.refine.state_dict()[key].shape == g.primary.state_dict()[key].shape


def test_unpaired_volumes_feed_stage_one_without_pairs(tmp_path):
    """004's stage 1 needs no pairs: NCCT and CECT crops come from different scans."""
    from vcesdk.training.data import UnpairedVolumes

    from vcesdk import CTVolume

    rng = np.random.default_rng(0)
    body = np.full((12, 64, 64), -1000.0, np.float32)
    body[:, 12:52, 12:52] = 40.0
    ncct = CTVolume(body + rng.normal(0, 5, body.shape).astype(np.float32), (2.0, 1.0, 1.0))
    cect = CTVolume(np.where(body > 0, 180.0, -1000.0).astype(np.float32), (4.0, 2.0, 2.0))
    r = _short("two_stage_small", 2)
    r = dataclasses.replace(r, data={**r.data, "crop": [3, 32, 32]},
                            loss={**r.loss, "pretrain_steps": 1, "stage1_steps": 1})
    # the recipe's paired stage-1 term (and a noise-free target) need one patient's pairs
    assert r.loss["paired_weight"] > 0
    with pytest.raises(TrainingError, match="--set loss.paired_weight=0"):
        Trainer(r, tmp_path / "refused", progress=False, unpaired=([ncct], [cect]))
    clean = dataclasses.replace(r, data={**r.data, "noise_free_target": True},
                                loss={**r.loss, "paired_weight": 0.0})
    with pytest.raises(TrainingError, match="--set data.noise_free_target=false"):
        Trainer(clean, tmp_path / "refused", progress=False, unpaired=([ncct], [cect]))
    assert not (tmp_path / "refused" / "checkpoint.pt").exists()
    r = dataclasses.replace(r, loss={**r.loss, "paired_weight": 0.0},
                            data={**r.data, "noise_free_target": False})
    trainer = Trainer(r, tmp_path / "run", progress=False, unpaired=([ncct], [cect]))
    data = trainer.train_data
    assert isinstance(data, UnpairedVolumes) and trainer.validate() == {}
    # resampled to the recipe grid (4 x 2 x 2 mm): the 2 x 1 x 1 mm NCCT halves per axis
    assert data.ncct_hu[0].shape == (6, 32, 32) and data.cect_hu[0].shape == (12, 64, 64)
    x, y = data.sample(np.random.default_rng(1), 4, (3, 32, 32))
    assert x.shape == (4, 1, 3, 32, 32) and y.shape == (4, 1, 3, 32, 32)
    # crops hold body (>= 30 % of voxels above -500 HU), not just air
    assert (y > -0.9).mean() > 0.3
    history = trainer.fit()
    assert len(history) == 2 and "val_mae_hu" not in history[-1]


@pytest.mark.parametrize("name", ["mangan_small", "dual_path_small", "dyefreenet_small",
                                  "two_stage_small", "cyclegan_small"])
def test_residual_generators_start_as_the_identity(name):
    """The small recipes' residual option: output channel 0 = the input window + the network,
    whose last conv starts at zero, so the untrained generator returns its input exactly (the
    backward generators too)."""
    torch.manual_seed(0)
    method = create_method(_short(name, 1))
    x = torch.rand(2, 1, 3, 64, 64) * 2 - 1
    nets = [method.generator] + ([method.backward_generator]
                                 if hasattr(method, "backward_generator") else [])
    with torch.no_grad():
        for net in nets:
            net.eval()
            assert torch.equal(net(x)[:, :1], x)


def test_spade_full_res_layers_let_a_residual_generator_remove_noise():
    """spade2d ``full_res`` (our option): the paper's output conv sees the input only through
    a group norm that scales it by each image's feature statistics, so a residual generator
    hardly learns to cancel its input's voxel noise; full-resolution layers on the raw input
    do. Toy CT slices (air, fat, soft tissue, bone in the [-1, 1] window) with noise SD 0.1,
    300 seeded Adam steps of L1 to the noise-free slice each; the noise energy left (measured
    0.58 with the paper's head, 0.22 with two full-resolution layers). Residual generators
    with the option still start as the identity; a negative count is refused."""
    from vcesdk.training.registry import create_generator

    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")

    def batch(gen: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        slices = []
        for _ in range(n):
            c = torch.full((32, 32), -1.0)                                    # air
            cy, cx, r = torch.rand(3, generator=gen) * torch.tensor([8, 8, 6]) + torch.tensor(
                [12, 12, 8])
            c[(yy - cy) ** 2 + (xx - cx) ** 2 < 2.5 * r ** 2] = (
                -0.6 + 0.1 * torch.rand(1, generator=gen))                       # fat
            c[(yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2] = (
                0.1 + 0.3 * torch.rand(1, generator=gen))                        # soft tissue
            c[(yy - cy - 2) ** 2 + (xx - cx) ** 2 < 4] = 1.0                     # bone
            slices.append(c)
        clean = torch.stack(slices)[:, None, None].expand(n, 1, 3, 32, 32)
        return (clean + 0.1 * torch.randn(n, 1, 3, 32, 32, generator=gen)).clamp(-1, 1), clean

    def noise_left(full_res: int) -> float:
        torch.manual_seed(0)
        g = create_generator("spade2d", dict(channels=[8, 8], hidden=8, context=1,
                                             residual=True, full_res=full_res))
        opt = torch.optim.Adam(g.parameters(), lr=2e-3, betas=(0.5, 0.999))
        gen = torch.Generator().manual_seed(1)
        for _ in range(300):
            x, c = batch(gen, 4)
            loss = (g(x) - c).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        x, c = batch(gen, 16)
        with torch.no_grad():
            return float(((g(x) - c) ** 2).mean() / ((x - c) ** 2).mean())

    paper, full = noise_left(0), noise_left(2)
    assert paper > 0.4 and full < 0.5 * paper, (paper, full)
    z = create_generator("spade2d", dict(channels=[8, 8], hidden=8, residual=True, full_res=2))
    x = torch.rand(1, 1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(z(x), x)
    with pytest.raises(ValueError, match="full_res must be >= 0"):
        create_generator("spade2d", dict(full_res=-1))


def test_two_stage_identity_term_asks_g_cn_to_keep_a_real_ncct():
    """loss.identity_weight (our option): stage 1 adds w x |G(C->N)(NCCT) - NCCT|_1 on the
    unpaired NCCT (another patient's: the batch rolled); 0 leaves the paper's adversarial-only
    stage 1."""
    torch.manual_seed(0)
    x, y = torch.rand(2, 1, 3, 32, 32) * 2 - 1, torch.rand(2, 1, 3, 32, 32) * 2 - 1
    base = _short("two_stage_small", 1).with_overrides(sets=[
        "loss.pretrain_steps=0", "loss.stage1_steps=5", "generator.config.residual=false"])
    m = create_method(base)
    m.step = 0
    with torch.no_grad():
        expected = (m.backward_generator(x.roll(1, 0)) - x.roll(1, 0)).abs().mean()
    terms = m.train_step(x, y)
    assert terms["identity"] == pytest.approx(float(expected), rel=1e-5)
    off = create_method(base.with_overrides(sets=["loss.identity_weight=0"]))
    off.step = 0
    assert "identity" not in off.train_step(x, y)


def test_two_stage_paired_term_fits_g_cn_of_the_cect_to_its_own_ncct():
    """loss.paired_weight (our option, registered pairs): stage 1 adds
    w x |G(C->N)(CECT) - NCCT|_1 with the batch's own NCCT (not rolled), both blurred in-plane
    with loss.paired_sigma > 0; only variants with a stage 1 (S, J) take it, and neither
    weight nor sigma may be negative."""
    torch.manual_seed(0)
    x, y = torch.rand(2, 1, 3, 32, 32) * 2 - 1, torch.rand(2, 1, 3, 32, 32) * 2 - 1
    base = _short("two_stage_small", 1).with_overrides(sets=[
        "loss.pretrain_steps=0", "loss.stage1_steps=5", "generator.config.residual=false",
        "loss.identity_weight=0", "loss.paired_weight=10", "loss.paired_sigma=0"])
    m = create_method(base)
    assert m.pair_terms() == ["loss.paired_weight"]
    m.step = 0
    with torch.no_grad():
        expected = (m.backward_generator(y) - x).abs().mean()
    assert m.train_step(x, y)["paired"] == pytest.approx(float(expected), rel=1e-5)
    # loss.paired_sigma: the term compares both images blurred in-plane
    from vcesdk.training.methods.twostage import blur_in_plane

    torch.manual_seed(0)
    b = create_method(base.with_overrides(sets=["loss.paired_sigma=1.5"]))
    b.step = 0
    with torch.no_grad():
        expected = (blur_in_plane(b.backward_generator(y), 1.5) - blur_in_plane(x, 1.5)
                    ).abs().mean()
    assert b.train_step(x, y)["paired"] == pytest.approx(float(expected), rel=1e-5)
    for sets, match in ((["loss.variant=single"], "variant 'single' has no stage 1"),
                        (["loss.paired_sigma=-1"], "paired_sigma must be a finite value >= 0"),
                        (["loss.variant=cycle", "loss.paired_weight=0", "loss.identity_weight=0",
                          "data.noise_free_target=true"], "set data.noise_free_target to false"),
                        (["loss.paired_weight=-1"], "paired_weight must be >= 0")):
        with pytest.raises(ValueError, match=match):
            create_method(base.with_overrides(sets=sets))


def test_blur_in_plane_keeps_hu_and_removes_voxel_noise():
    """The paired term's blur: a Gaussian along H and W only (each slice alone), weights
    summing to 1 (a constant image and each slice's mean away from the borders unchanged),
    white noise of SD 1 down to the SD the kernel predicts, sqrt(sum of squared weights)."""
    from vcesdk.training.methods.twostage import blur_in_plane

    gen = torch.Generator().manual_seed(0)
    const = torch.full((1, 1, 2, 24, 24), 40.0)
    assert torch.allclose(blur_in_plane(const, 1.5), const)
    noise = torch.randn(2, 1, 3, 128, 128, generator=gen)
    sigma = 1.5
    t = torch.arange(-5, 6, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    predicted = float((k ** 2).sum())            # per axis; two axes multiply
    sd = float(blur_in_plane(noise, sigma)[..., 8:-8, 8:-8].std())
    assert sd == pytest.approx(predicted, rel=0.05)
    slab = torch.zeros(1, 1, 3, 16, 16)
    slab[:, :, 1] = 1.0                           # no mixing across slices
    out = blur_in_plane(slab, 2.0)
    assert float(out[:, :, 0].abs().max()) == 0.0 and torch.allclose(out[:, :, 1], slab[:, :, 1])


def test_two_stage_stage2_maps_the_scanned_cect_to_the_noise_free_one():
    """data.noise_free_target for the two-stage method: the batch target holds the scanned
    CECT and the noise-free one; G(C->N) and the adversarial terms see the scanned CECT, stage
    2's reconstruction loss the noise-free one (PhantomPairs keep_noisy)."""
    from vcesdk.training.data import PhantomPairs
    from vcesdk.intensity import windows_from_manifest

    r = _short("two_stage_small", 1)
    r = dataclasses.replace(r, loss={**r.loss, "pretrain_steps": 0, "stage1_steps": 1})
    m = create_method(r)
    assert m.NOISY_AND_CLEAN_TARGET
    torch.manual_seed(0)
    x, noisy, clean = (torch.rand(2, 1, 3, 32, 32) * 2 - 1 for _ in range(3))
    seen = {}
    m.backward_generator.register_forward_hook(
        lambda mod, inp, out: seen.setdefault("g_cn_input", []).append(inp[0]))
    real_rec = m._rec
    m._rec = lambda pred, target: (seen.setdefault("rec_target", []).append(target),
                                   real_rec(pred, target))[1]
    for step in (0, 1):   # stage 1, then stage 2
        m.step = step
        m.train_step(x, torch.cat([noisy, clean], dim=1))
    assert all(torch.equal(t, noisy) for t in seen["g_cn_input"][:1])   # stage 1: scanned
    assert torch.equal(seen["g_cn_input"][-1], noisy)                   # stage 2 input
    assert torch.equal(seen["rec_target"][-1], clean)                   # stage 2 target
    # the dataset hands both over: channel 0 scanned, channel 1 noise-free
    io = r.model_io
    ds = PhantomPairs([3], "pvp", windows_from_manifest(io["windows"]), io["hu_range"],
                      shape=(8, 32, 32), spacing_mm=(4, 4, 4), noise_hu=15.0,
                      target=io.get("target", "image"), noise_free_target=True,
                      keep_noisy=True)
    plain = PhantomPairs([3], "pvp", windows_from_manifest(io["windows"]), io["hu_range"],
                         shape=(8, 32, 32), spacing_mm=(4, 4, 4), noise_hu=15.0,
                         target=io.get("target", "image"))
    clean_only = PhantomPairs([3], "pvp", windows_from_manifest(io["windows"]), io["hu_range"],
                              shape=(8, 32, 32), spacing_mm=(4, 4, 4), noise_hu=15.0,
                              target=io.get("target", "image"), noise_free_target=True)
    assert ds.y[0].shape[0] == 2
    np.testing.assert_array_equal(ds.y[0][0], plain.y[0][0])
    np.testing.assert_array_equal(ds.y[0][1], clean_only.y[0][0])
    assert np.std(ds.y[0][0] - ds.y[0][1]) > 0.005   # the noise (output units)
