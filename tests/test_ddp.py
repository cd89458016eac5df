"""DDP under torchrun (gloo, 2 CPU processes) gives the loss curve of 1 process with the same
global batch."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import yaml
from helpers import tiny_recipe


def _run(cmd, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]


def _curve(run_dir):
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return {k: np.array([r[k] for r in rows]) for k in ("loss_d", "loss_g", "l1", "processes")}


def test_ddp_two_processes_match_one(tmp_path):
    r = tiny_recipe(4)
    r = dataclasses.replace(r, train={**r.train, "batch_size": 4, "val_every": 0})
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(r.to_dict()))
    _run([sys.executable, "-m", "vcesdk.training.cli", str(recipe), "--out", str(tmp_path / "one"),
          "--threads", "1"], tmp_path)
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
          "--master_port", "29533", "-m", "vcesdk.training.cli", str(recipe), "--out",
          str(tmp_path / "two"), "--threads", "1"], tmp_path)
    one, two = _curve(tmp_path / "one"), _curve(tmp_path / "two")
    assert len(one["l1"]) == len(two["l1"]) == 4
    assert set(one.pop("processes")) == {1} and set(two.pop("processes")) == {2}
    for k in one:
        np.testing.assert_allclose(two[k], one[k], rtol=2e-3, atol=1e-5)
    assert one["l1"][-1] != one["l1"][0]  # the curve moved: the steps trained
    assert (tmp_path / "two" / "checkpoint.pt").is_file()  # rank 0 wrote it


_TINY = ["--set", "data.n_train=2", "--set", "data.n_val=1", "--set", "data.shape=[8, 32, 32]",
         "--set", "train.val_every=0", "--set", "train.batch_size=4", "--threads", "1"]


def _torchrun(args, tmp_path, port):
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
            "--master_port", str(port), "-m", "vcesdk.training.cli", *args]


def test_mangan_under_torchrun_matches_one_process(tmp_path):
    """A cyclic method (two passes of G per step, G + F in one optimiser) under 2 gloo
    processes: gradients averaged in Method.optimize give the 1-process curve (instance norm:
    batch statistics would differ per half batch, as under DDP)."""
    from vcesdk.training.recipe import builtin_recipe

    args = [str(builtin_recipe("mangan_small")), "--max-steps", "3", *_TINY,
            "--set", "data.crop=[1, 32, 32]", "--set", "generator.config.norm=instance"]
    _run([sys.executable, "-m", "vcesdk.training.cli", *args, "--out", str(tmp_path / "one")],
         tmp_path)
    _run(_torchrun([*args, "--out", str(tmp_path / "two")], tmp_path, 29541), tmp_path)
    rows = {k: [json.loads(line) for line in (tmp_path / k / "log.jsonl").read_text()
                .splitlines()] for k in ("one", "two")}
    assert [r["processes"] for r in rows["two"]] == [2, 2, 2]
    for key in ("l1", "mask_l1", "cycle", "loss_d"):
        np.testing.assert_allclose([r[key] for r in rows["two"]],
                                   [r[key] for r in rows["one"]], rtol=2e-3, atol=1e-5)


def test_staged_methods_train_under_torchrun(tmp_path):
    """Two-stage (pretraining -> stage 1 -> stage 2) and DyeFreeNet (pretraining -> primary ->
    refinement) run every stage under 2 gloo processes and rank 0 checkpoints the step."""
    import torch

    from vcesdk.training.recipe import builtin_recipe

    cases = {"two_stage_small": ["--set", "loss.pretrain_steps=1", "--set",
                                 "loss.stage1_steps=1"],
             "dyefreenet_small": ["--set", "loss.pretrain_steps=1", "--set",
                                  "loss.primary_steps=1"]}
    for port, (name, extra) in enumerate(cases.items(), start=29551):
        out = tmp_path / name
        _run(_torchrun([str(builtin_recipe(name)), "--max-steps", "3", *_TINY, "--set",
                        "data.crop=[3, 32, 32]", *extra, "--out", str(out)], tmp_path, port),
             tmp_path)
        rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
        assert [r["processes"] for r in rows] == [2, 2, 2]
        assert all(np.isfinite(v) for r in rows for k, v in r.items() if k != "time_s")
        assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 3
