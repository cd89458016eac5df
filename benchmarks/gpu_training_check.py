"""Training on a CUDA GPU, measured in one short run (issue [training]; at most ~10 minutes on
one GPU): steps per second of the paper-sized pix2pix3D recipe and of dual_path with AMP off
and bf16, and a few hundred steps of one small recipe on CUDA beside the same steps on the
CPU, to show the loss falls there as here.

    python benchmarks/gpu_training_check.py --json runs/gpu_training.json [--small-steps 300]
        [--timed-steps 20] [--cpu-compare]

Prints one line per measurement and writes them all to --json. Needs torch with CUDA; exits
with a one-line error where none is present (nothing is written).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def _recipe(name: str, steps: int, *sets: str):
    from vcesdk.training.recipe import builtin_recipe, load_recipe

    return load_recipe(builtin_recipe(name)).with_overrides(steps, None, [
        "train.val_every=0", "train.ckpt_every=0", *sets])


def steps_per_second(name: str, amp: str, steps: int, sets: tuple[str, ...]) -> dict:
    """Time ``steps`` steps (after 3 warm-up steps, synchronised) of recipe ``name`` on CUDA."""
    import torch

    from vcesdk.training.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        recipe = _recipe(name, 3 + steps, "train.device=cuda", f"train.amp={amp}", *sets)
        trainer = Trainer(recipe, Path(tmp) / "run", progress=False)
        torch.cuda.reset_peak_memory_stats()
        t0 = None
        original = trainer.method.on_step_end

        def timed(step: int) -> None:  # start the clock after the warm-up steps
            nonlocal t0
            original(step)
            if step == 3:
                torch.cuda.synchronize()
                t0 = time.perf_counter()

        trainer.method.on_step_end = timed
        history = trainer.fit()
        torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    return {"recipe": name, "amp": amp, "steps": steps, "steps_per_s": steps / seconds,
            "peak_gpu_memory_gb": torch.cuda.max_memory_allocated() / 2**30,
            "last_losses": {k: v for k, v in history[-1].items()
                            if k not in ("step", "time_s", "processes")}}


def loss_curve(name: str, device: str, steps: int) -> dict:
    """``steps`` steps of a small recipe on ``device``: first / last 20-step mean L1 and the
    validation MAE (HU) before and after."""
    import numpy as np

    from vcesdk.training.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(_recipe(name, steps, f"train.device={device}"), Path(tmp) / "run",
                          progress=False)
        before = trainer.validate()
        t0 = time.perf_counter()
        history = trainer.fit()
        seconds = time.perf_counter() - t0
        after = trainer.validate()
    l1 = np.array([h["l1"] for h in history])
    return {"recipe": name, "device": device, "steps": steps, "seconds": seconds,
            "l1_first20": float(l1[:20].mean()), "l1_last20": float(l1[-20:].mean()),
            "val_mae_hu_before": before["val_mae_hu"], "val_mae_hu_after": after["val_mae_hu"],
            "val_mae_hu_ncct": after["val_mae_hu_ncct"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", required=True, help="where to write the measurements")
    p.add_argument("--timed-steps", type=int, default=20)
    p.add_argument("--small-steps", type=int, default=300)
    p.add_argument("--cpu-compare", action="store_true",
                   help="also train the small recipe on the CPU for the same steps")
    args = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print(f"gpu_training_check: error: torch {torch.__version__} sees no CUDA device",
              file=sys.stderr)
        return 1
    out = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
           "cuda": torch.version.cuda, "runs": []}
    # the paper-sized recipes on one synthetic 512 x 512 x 16 phantom (pix2pix3D) / 256 x 256
    # slices (dual path), batch as in the papers
    jobs = [("pix2pix3d", ("data.n_train=1", "data.n_val=1")),
            ("dual_path", ("data.n_train=1", "data.n_val=1", "loss.pretrain_steps=0"))]
    for name, sets in jobs:
        for amp in ("off", "bf16"):
            r = steps_per_second(name, amp, args.timed_steps, sets)
            out["runs"].append(r)
            print(f"{name} amp={amp}: {r['steps_per_s']:.2f} steps/s, peak "
                  f"{r['peak_gpu_memory_gb']:.1f} GB", flush=True)
    devices = ["cuda"] + (["cpu"] if args.cpu_compare else [])
    for device in devices:
        r = loss_curve("unet_l1_small", device, args.small_steps)
        out["runs"].append(r)
        print(f"unet_l1_small on {device}: L1 {r['l1_first20']:.4f} -> {r['l1_last20']:.4f}, "
              f"val MAE {r['val_mae_hu_before']:.1f} -> {r['val_mae_hu_after']:.1f} HU "
              f"(NCCT {r['val_mae_hu_ncct']:.1f}) in {r['seconds']:.0f} s", flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
