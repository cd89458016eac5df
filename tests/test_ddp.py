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
