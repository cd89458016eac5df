"""Helpers shared by tests (importable because pytest puts tests/ on sys.path)."""
from __future__ import annotations

import dataclasses

from vcesdk.training.recipe import Recipe, builtin_recipe, load_recipe


def tiny_recipe(steps: int) -> Recipe:
    """The demo recipe shrunk to seconds on 2 CPU cores (8 x 64 x 64 phantoms, base 8)."""
    r = load_recipe(builtin_recipe("pix2pix3d_demo"))
    return dataclasses.replace(
        r,
        generator={"name": "unet3d", "config": dict(in_channels=3, out_channels=1, base=8,
                                                    strides=[[2, 2, 2], [2, 2, 2], [1, 2, 2]])},
        discriminator={"name": "patchgan3d", "config": dict(in_channels=4, base=8)},
        data={**r.data, "shape": [8, 64, 64], "spacing_mm": [4.0, 5.0, 5.0], "n_train": 6,
              "n_val": 2, "crop": [8, 64, 64]},
        train={**r.train, "steps": steps, "batch_size": 2, "val_every": steps,
               "ckpt_every": 0},
        optim={**r.optim, "lr": 1e-3, "decay_every": 0},
    )
