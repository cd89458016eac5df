"""``vcesdk-train RECIPE.yaml --out RUN_DIR [--data DIR] [--max-steps N] [--phase P]
[--set KEY=VALUE ...] [--bundle DIR --parity-input CT]``

Trains a recipe on digital phantoms; with --bundle, exports the trained generator to a model
bundle (ONNX + parity) in the same command.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
from pathlib import Path

from vcesdk.bundle import PHASES


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vcesdk-train", description=__doc__.split("\n\n")[1])
    p.add_argument("recipe", help="recipe YAML (e.g. training/recipes/pix2pix3d_demo.yaml)")
    p.add_argument("--out", required=True, help="run folder (checkpoint.pt, log.jsonl)")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="train on a dataset folder (vcesdk-data layout) instead of phantoms "
                        "generated from the recipe; its last data.n_val patients validate")
    p.add_argument("--misaligned-truth", action="store_true",
                   help="with --data: train on the misaligned phase scans, not their aligned "
                        "truth (the misalignment study of 004; validation stays aligned)")
    p.add_argument("--unpaired-ncct", nargs="+", default=None, metavar="CT",
                   help="train on unpaired real scans: NCCT volumes (files or DICOM folders); "
                        "needs --unpaired-cect; for methods that need no pairs (two_stage "
                        "stage 1, cyclegan)")
    p.add_argument("--unpaired-cect", nargs="+", default=None, metavar="CT",
                   help="contrast-enhanced volumes of other patients, for --unpaired-ncct")
    p.add_argument("--max-steps", type=int, default=None, help="override train.steps")
    p.add_argument("--phase", default=None, choices=PHASES,
                   help="override the recipe's target phase (the name's phase suffix follows)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set optim.decay_every=1500 "
                        "(repeatable; stored in the checkpoint's resolved recipe)")
    p.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint "
                   "exists in --out")
    p.add_argument("--bundle", default=None, help="after training, export a bundle here")
    p.add_argument("--parity-input", default=None,
                   help="CT volume (file or DICOM folder) for the export's parity check")
    p.add_argument("--demo", action="store_true", help="mark the bundle as a demonstration "
                   "model, not for clinical use")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--device", default=None, choices=("auto", "cpu", "cuda"),
                   help="override train.device (auto: CUDA when available, else CPU)")
    p.add_argument("--amp", default=None, choices=("off", "bf16", "fp16"),
                   help="override train.amp (mixed precision)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        import torch
    except ImportError:
        print("vcesdk-train: error: torch is not installed; pip install 'vcesdk[train]'",
              file=sys.stderr)
        return 2
    from vcesdk.errors import InputError, VcesdkError

    from .recipe import load_recipe
    from .trainer import Trainer, load_checkpoint, resolve_device

    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        if args.bundle and not args.parity_input:
            raise InputError("--bundle needs --parity-input (a real CT volume to check the "
                             "export on)")
        if args.bundle and Path(args.bundle).exists() and not args.overwrite:
            raise InputError(f"bundle folder exists: {args.bundle} (pass --overwrite)")
        sets = list(args.sets)
        sets += [f"train.device={args.device}"] if args.device else []
        sets += [f"train.amp={args.amp}"] if args.amp else []
        recipe = load_recipe(args.recipe).with_overrides(args.max_steps, args.phase, sets)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            # launched by torchrun: NCCL between GPUs (one per process, LOCAL_RANK), gloo on CPU
            device = resolve_device(recipe.train["device"])
            backend = "nccl" if device.type == "cuda" else "gloo"
            if device.type == "cuda":
                torch.cuda.set_device(device)
            torch.distributed.init_process_group(backend)
        if args.misaligned_truth and not args.data:
            raise InputError("--misaligned-truth needs --data (a vcesdk-data phantoms set made "
                             "with --misalign K)")
        if bool(args.unpaired_ncct) != bool(args.unpaired_cect) or (args.unpaired_ncct
                                                                     and args.data):
            raise InputError("--unpaired-ncct and --unpaired-cect go together, without --data")
        unpaired = (args.unpaired_ncct, args.unpaired_cect) if args.unpaired_ncct else None
        trainer = Trainer(recipe, args.out, resume=not args.no_resume, data=args.data,
                          misaligned_truth=args.misaligned_truth, unpaired=unpaired)
        history = trainer.fit()
        step, rank, world = trainer.step, trainer.rank, trainer.world
        if world > 1:
            torch.distributed.barrier()
            # the networks, wrappers and loaders go while the interpreter is whole, then the
            # group: a gloo group still referenced at interpreter exit can abort the process
            # ("terminate called without an active exception", seen once in 2-process runs)
            del trainer
            gc.collect()
            torch.distributed.destroy_process_group()
            if rank != 0:
                return 0
        last_val = next((h for h in reversed(history) if "val_mae_hu" in h), None)
        print(f"trained {recipe.name} to step {step}; checkpoint "
              f"{Path(args.out) / 'checkpoint.pt'}")
        if last_val:
            print(f"validation MAE {last_val['val_mae_hu']:.2f} HU (NCCT identity "
                  f"{last_val['val_mae_hu_ncct']:.2f} HU)")
        if args.bundle:
            from vcesdk.export import export_bundle

            from vcesdk import read_volume

            vol = read_volume(args.parity_input)
            path = export_bundle(load_checkpoint(args.out), args.bundle, vol, demo=args.demo,
                                 overwrite=args.overwrite)
            print(f"bundle written: {path}")
    except VcesdkError as exc:   # anything else is a bug: a traceback, not one line
        print(f"vcesdk-train: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()   # a run refused after torchrun's start
    return 0


if __name__ == "__main__":
    sys.exit(main())
