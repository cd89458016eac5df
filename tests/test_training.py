"""Phantom data, pix2pix3D networks and the trainer (small CPU settings)."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training tests need the train extra (torch)")

from helpers import tiny_recipe  # noqa: E402
from vcesdk.training.methods import create_discriminator, create_generator  # noqa: E402
from vcesdk.training.phantom import LABELS, make_phantom  # noqa: E402
from vcesdk.training.recipe import Recipe  # noqa: E402
from vcesdk.training.trainer import Trainer, load_checkpoint  # noqa: E402

pytestmark = pytest.mark.usefixtures("deterministic")

_LABEL = {v: k for k, v in LABELS.items()}


def _mean(case, phase, tissue):
    mask = case.labels == _LABEL[tissue]
    # the interior only: erode by excluding partial-volume borders via the median
    return float(np.median(case.phases[phase][mask]))


def test_phantom_enhancement_patterns_and_determinism():
    a = make_phantom(7, region="abdomen")
    b = make_phantom(7, region="abdomen")
    c = make_phantom(8, region="abdomen")
    np.testing.assert_array_equal(a.phases["pvp"], b.phases["pvp"])
    assert not np.array_equal(a.labels, c.labels)
    assert a.phases["ncct"].shape == (24, 160, 160) and a.spacing_mm == (4.0, 2.0, 2.0)
    # NCCT: blood ~40 HU, fat ~-100, bone high; PVP (Bae 2010): aorta, portal vein, kidney,
    # liver enhance; fat and bone do not
    assert 25 < _mean(a, "ncct", "aorta") < 55
    assert _mean(a, "pvp", "aorta") - _mean(a, "ncct", "aorta") > 80
    assert _mean(a, "pvp", "portal_vein") - _mean(a, "ncct", "portal_vein") > 80
    assert 30 < _mean(a, "pvp", "liver") - _mean(a, "ncct", "liver") < 75
    assert _mean(a, "pvp", "kidney_cortex") - _mean(a, "ncct", "kidney_cortex") > 90
    assert abs(_mean(a, "pvp", "fat") - _mean(a, "ncct", "fat")) < 8
    assert abs(_mean(a, "pvp", "cortical_bone") - _mean(a, "ncct", "cortical_bone")) < 30
    air = a.labels == 0
    assert abs(float(a.phases["ncct"][air].mean()) + 1000) < 10
    chest = make_phantom(3, region="chest")
    assert (chest.labels == _LABEL["lung"]).sum() > 0 and (chest.labels == _LABEL["liver"]).sum() == 0
    assert _mean(chest, "pvp", "heart_chamber") - _mean(chest, "ncct", "heart_chamber") > 80


def test_noise_is_spatially_correlated():
    case = make_phantom(1, region="abdomen", noise_hu=20.0)
    air = case.phases["ncct"][:, :8, :]  # air rows above the body: noise only
    noise = air - air.mean()
    lag1 = float((noise[:, :, 1:] * noise[:, :, :-1]).mean() / noise.var())
    assert 0.3 < lag1 < 0.95  # white noise would give ~0


def test_unet3d_shapes_and_registry_errors():
    g = create_generator("unet3d", dict(in_channels=3, out_channels=1, base=4,
                                        strides=[[2, 2, 2], [2, 2, 2], [1, 2, 2]]))
    assert g.size_multiple() == (4, 8, 8)
    with torch.no_grad():
        y = g(torch.zeros(2, 3, 8, 24, 32))
    assert y.shape == (2, 1, 8, 24, 32)
    assert float(y.abs().max()) <= 1.0  # Tanh output
    d = create_discriminator("patchgan3d", dict(in_channels=4, base=4))
    assert d(torch.zeros(1, 4, 8, 32, 32)).shape[1] == 1
    with pytest.raises(ValueError, match="unknown generator 'resnet9'; registered: .*unet2d, "
                                         "unet3d"):
        create_generator("resnet9")


def test_recipe_errors_name_keys(tmp_path):
    with pytest.raises(ValueError, match=r"missing \['data'"):
        Recipe.from_dict({k: v for k, v in tiny_recipe(1).to_dict().items() if k != "data"})


def test_command_line_overrides_are_stored_in_the_checkpoint(tmp_path, capsys):
    from vcesdk.training.cli import main
    from vcesdk.training.recipe import builtin_recipe, load_recipe

    torch.set_num_threads(2)
    run = tmp_path / "run"
    assert main([str(builtin_recipe("unet_l1_small")), "--out", str(run), "--max-steps", "2",
                 "--phase", "ap", "--set", "optim.decay_every=1500", "--set",
                 "data.n_train=2", "--set", "data.n_val=1", "--set", "train.val_every=0"]) == 0
    stored = load_checkpoint(run)["recipe"]
    assert stored["phase"] == "ap" and stored["name"] == "unet-l1-small-ap"
    assert stored["optim"]["decay_every"] == 1500 and stored["train"]["steps"] == 2
    assert stored["data"]["n_train"] == 2
    # resuming with other networks, optimiser, data or losses is refused, naming the changes;
    # the checkpoint stays as it was
    sets = ["--set", "optim.decay_every=1500", "--set", "data.n_train=2", "--set",
            "data.n_val=1", "--set", "train.val_every=0"]
    before = (run / "checkpoint.pt").read_bytes()
    assert main([str(builtin_recipe("unet_l1_small")), "--out", str(run), "--max-steps", "3",
                 "--phase", "ap", *sets, "--set", "optim.lr=0.0005", "--set",
                 "generator.config.input_skip=false"]) == 1
    err = capsys.readouterr().err
    assert "was trained with another recipe" in err and "--no-resume" in err
    assert "generator.config.input_skip: True -> False" in err
    assert "optim.lr: 0.001 -> 0.0005" in err
    assert (run / "checkpoint.pt").read_bytes() == before
    # more steps (the train section) resume
    assert main([str(builtin_recipe("unet_l1_small")), "--out", str(run), "--max-steps", "3",
                 "--phase", "ap", *sets]) == 0
    assert load_checkpoint(run)["step"] == 3
    # a key the recipe does not have is refused before any training, naming the valid keys
    assert main([str(builtin_recipe("unet_l1_small")), "--out", str(tmp_path / "bad"),
                 "--set", "optim.learning_rate=1"]) == 1
    err = capsys.readouterr().err
    assert "section 'optim': unknown key(s) ['learning_rate']; valid keys: ['betas'" in err
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ValueError, match="phase must be one of"):
        load_recipe(builtin_recipe("unet_l1_small")).with_overrides(phase="venous")


@pytest.mark.slow
def test_training_loss_falls_and_output_moves_to_target(tmp_path):
    torch.set_num_threads(2)
    recipe = tiny_recipe(60)
    trainer = Trainer(recipe, tmp_path / "run", resume=False, progress=False)
    before = trainer.validate()
    history = trainer.fit()
    l1 = [h["l1"] for h in history]
    assert np.mean(l1[-10:]) < 0.5 * np.mean(l1[:10])
    after = history[-1]
    assert after["val_mae_hu"] < 0.5 * before["val_mae_hu"]
    lines = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    assert len(lines) == 60 and json.loads(lines[-1])["step"] == 60
    # the checkpoint loads with weights_only=True and carries the resolved recipe
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt["step"] == 60 and ckpt["recipe"]["name"] == recipe.name
    assert ckpt["network"]["config"]["base"] == 8
    # resume continues from the stored step
    resumed = Trainer(dataclasses.replace(recipe, train={**recipe.train, "steps": 65}),
                      tmp_path / "run", resume=True, progress=False)
    assert resumed.step == 60
    resumed.fit()
    assert load_checkpoint(tmp_path / "run")["step"] == 65


def test_window_target_trains_the_papers_three_channel_output(tmp_path):
    """003: pix2pix3D predicts the CECT under the three input windows and keeps the first
    (W 2000 / L 0 = [-1000, 1000] HU); pix2pix3d.yaml uses target "windows"."""
    from vcesdk.training.recipe import builtin_recipe, load_recipe

    from vcesdk.intensity import hu_to_channels

    full = load_recipe(builtin_recipe("pix2pix3d"))
    assert full.model_io["target"] == "windows"
    assert full.generator["config"]["out_channels"] == 3
    assert full.discriminator["config"]["in_channels"] == 6
    r = tiny_recipe(2)
    r = dataclasses.replace(
        r, generator={**r.generator, "config": {**r.generator["config"], "out_channels": 3}},
        discriminator={**r.discriminator, "config": {**r.discriminator["config"],
                                                     "in_channels": 6}},
        model_io={**r.model_io, "target": "windows", "hu_range": [-1000, 1000]},
        inference={**r.inference, "compose": "replace"})
    trainer = Trainer(r, tmp_path / "run", progress=False)
    case = trainer.train_data.cases[0]
    np.testing.assert_allclose(trainer.train_data.y[0],
                               hu_to_channels(case.phases["pvp"], trainer.windows))
    history = trainer.fit()
    assert len(history) == 2 and np.isfinite(history[-1]["val_mae_hu"])
    bad = dataclasses.replace(r, model_io={**r.model_io, "hu_range": [-500, 500]})
    with pytest.raises(ValueError, match="channel 0"):
        Trainer(bad, tmp_path / "bad", progress=False)
