"""The training loop: one small module that drives any :class:`~.methods.Method`, on the
recipe's device (``train.device``: CUDA when available, else CPU) with its mixed precision
(``train.amp``), under torchrun with DDP (NCCL on CUDA, gloo on CPU).

Checkpoints hold the generator/discriminator/optimiser state, the step, the resolved recipe and
the generator's registry name and config, as plain CPU tensors, numbers and strings, so they
load with ``torch.load(weights_only=True)`` anywhere and resume on another device.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from vcesdk.errors import InputError, RecipeError, TrainingError
from vcesdk.intensity import ADDITIVE_COMPOSE, channels_to_hu, enhancement_hu, windows_from_manifest

from .data import DatasetPairs, PhantomPairs, UnpairedVolumes, WindowStream, dataset_patients
from .methods import Method, create_generator, create_method
from .recipe import Recipe, recipe_changes

_logger = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``).

    Raises:
        InputError: no such file.
    """
    p = Path(path)
    if p.is_dir():
        p = p / CHECKPOINT
    if not p.is_file():
        raise InputError(f"checkpoint not found: {p}")
    return torch.load(p, map_location="cpu", weights_only=True)


def resolve_device(name: str) -> torch.device:
    """The torch device of a recipe's ``train.device``: "auto" = CUDA when available, else the
    CPU; under torchrun on CUDA, the GPU of this process (``LOCAL_RANK``).

    Raises:
        TrainingError: "cuda" asked for where torch sees no CUDA device.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise TrainingError("train.device is 'cuda' but torch sees no CUDA device (this "
                                f"torch {torch.__version__} build: cuda "
                                f"{torch.version.cuda}); use --device cpu or auto")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(name)


def to_cpu(obj: Any) -> Any:
    """Tensors in (nested dicts / lists of) ``obj`` moved to the CPU: device-free
    checkpoints."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def bundle_for(model: str | os.PathLike, scratch: str | os.PathLike, parity) -> Path:
    """A bundle folder for ``model``: the model itself when it is a bundle folder, else its
    checkpoint (a run folder or a ``checkpoint.pt``) exported into a new folder under
    ``scratch`` (ONNX, parity checked on the CTVolume ``parity``, as ``vcesdk export`` does).

    Raises:
        InputError: neither a bundle nor a checkpoint.
    """
    p = Path(model)
    if (p / "manifest.json").is_file():
        return p
    ckpt = p / CHECKPOINT if p.is_dir() else p
    if not ckpt.is_file():
        raise InputError(f"{model} is neither a bundle (manifest.json) nor a run folder / "
                         f"checkpoint ({CHECKPOINT})")
    from vcesdk.export import export_bundle

    scratch = Path(scratch)
    return export_bundle(load_checkpoint(ckpt), scratch / f"bundle{len(list(scratch.iterdir()))}",
                         parity)


def _progress_terms(losses: dict[str, float], shown: int = 2) -> dict[str, str]:
    """The loss terms the progress bar shows: the reconstruction term where the method has one
    (``l1``; CycleGAN's ``cycle``; a pretraining's ``pcp_ce``), then ``loss_g``."""
    keys = [k for k in ("l1", "cycle", "pcp_ce", "loss_g") if k in losses]
    return {k: f"{losses[k]:.4f}" for k in keys[:shown]}


def generator_from_checkpoint(ckpt: dict[str, Any]) -> torch.nn.Module:
    """Rebuild the generator (eval mode, CPU) from a checkpoint dict."""
    g = create_generator(ckpt["network"]["name"], ckpt["network"]["config"])
    g.load_state_dict(ckpt["generator"])
    return g.eval()


class Trainer:
    """Trains one recipe on phantom pairs, validating, logging and checkpointing as it goes.

    Args:
        recipe: the resolved recipe.
        out_dir: run folder: checkpoint.pt, recipe.json, log.jsonl.
        resume: continue from out_dir/checkpoint.pt when it exists.
        progress: show a tqdm progress bar.
        data: a dataset folder (vcesdk-data layout) instead of the recipe's phantoms.
        misaligned_truth: with ``data``, train on ``<phase>.nii.gz`` even where an aligned
            ``<phase>_aligned.nii.gz`` exists (004's misalignment study); validation always
            uses the aligned truth.
        unpaired: (NCCT volumes, contrast-enhanced volumes) of different patients: train on
            :class:`~vcesdk.training.data.UnpairedVolumes` (no validation: there is no
            truth); for methods that need no pairs (004's stage 1, CycleGAN).
    """

    def __init__(self, recipe: Recipe, out_dir: str | os.PathLike, resume: bool = True,
                 progress: bool = True, data: str | os.PathLike | None = None,
                 misaligned_truth: bool = False,
                 unpaired: tuple[Sequence, Sequence] | None = None) -> None:
        self.recipe = recipe
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.progress = progress
        t = recipe.train
        self.device = resolve_device(t["device"])
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            torch.backends.cudnn.benchmark = True
        torch.manual_seed(int(t["seed"]))
        try:  # network and method constructors check their configs with ValueError
            self.method: Method = create_method(recipe).to(self.device)
        except RecipeError:
            raise
        except ValueError as exc:
            raise RecipeError(f"recipe {recipe.name!r}: {exc}") from None
        d = recipe.data
        self.windows = windows_from_manifest(recipe.model_io["windows"])
        self.output_hu = tuple(recipe.model_io["hu_range"])
        common = dict(phase=recipe.phase, windows=self.windows, output_hu=self.output_hu,
                      shape=d["shape"], spacing_mm=d["spacing_mm"], noise_hu=d["noise_hu"],
                      target=recipe.model_io.get("target", "image"))
        seed0 = int(d.get("seed", 0))
        clean = bool(d["noise_free_target"])
        both = clean and self.method.NOISY_AND_CLEAN_TARGET
        pair_terms = ((["data.noise_free_target=false"] if clean else [])
                      + [f"{key}=0" for key in self.method.pair_terms()])
        if pair_terms and (unpaired is not None or misaligned_truth):
            raise TrainingError(f"this recipe needs aligned pairs of one patient, not "
                                f"--unpaired-* or --misaligned-truth training: --set "
                                f"{' --set '.join(pair_terms)}")
        # a resume is checked (and the networks restored) before any data is read or generated
        self.step = 0
        self.history: list[dict] = []
        ck = self.out / CHECKPOINT
        if resume and ck.is_file():
            self._restore(load_checkpoint(ck))
        if unpaired is not None:
            self.train_data = UnpairedVolumes(unpaired[0], unpaired[1], self.windows,
                                              self.output_hu, d["spacing_mm"])
            self.val_data = None
        elif data is not None:  # a dataset folder: the last n_val patients validate
            names = dataset_patients(data, recipe.phase)
            n_val = min(int(d["n_val"]), max(0, len(names) - 1))
            if len(names) < 2:
                raise TrainingError(f"{data} holds {len(names)} patient(s) with ncct and "
                                 f"{recipe.phase}; training needs 2 or more")
            pair_args = dict(phase=recipe.phase, windows=self.windows,
                             output_hu=self.output_hu, target=common["target"])
            # the misalignment study of 004: train on the misaligned phase scans, validate on
            # the aligned truth
            self.train_data = DatasetPairs(data, names[:len(names) - n_val],
                                           aligned=not misaligned_truth,
                                           noise_free_target=clean, keep_noisy=both,
                                           **pair_args)
            self.val_data = DatasetPairs(data, names[len(names) - n_val:], **pair_args)
        else:
            self.train_data = PhantomPairs(range(seed0, seed0 + int(d["n_train"])),
                                           noise_free_target=clean, keep_noisy=both, **common)
            # validation patients use seeds never used in training
            self.val_data = PhantomPairs(range(seed0 + 100_000,
                                               seed0 + 100_000 + int(d["n_val"])), **common)
        # under torchrun every rank draws the same global batch (same seed) and trains on its
        # slice; gradients are averaged (DDP, or Method.optimize), so the curve matches one
        # process up to per-process BatchNorm batch statistics
        self.world, self.rank = 1, 0
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            self.world = torch.distributed.get_world_size()
            self.rank = torch.distributed.get_rank()
        if self.world > 1:
            if int(recipe.train["batch_size"]) % self.world:
                raise TrainingError(f"train.batch_size {recipe.train['batch_size']} is not "
                                    f"divisible by the {self.world} processes")
        need = self.method.MIN_WINDOWS_PER_PROCESS
        if int(recipe.train["batch_size"]) // self.world < need:
            raise TrainingError(f"method {recipe.method!r} needs {need} windows per process "
                                f"and step; train.batch_size {recipe.train['batch_size']} over "
                                f"{self.world} process(es) gives fewer")
        if self.world > 1:
            self.method.wrap_ddp([self.device.index] if self.device.type == "cuda" else None)
        if self.rank == 0:
            (self.out / "recipe.json").write_text(json.dumps(recipe.to_dict(), indent=2))

    def _restore(self, ckpt: dict[str, Any]) -> None:
        where = self.out / CHECKPOINT
        try:
            stored = Recipe.from_dict(ckpt["recipe"])
        except (KeyError, RecipeError) as exc:
            raise TrainingError(f"{where} was written with a recipe this version cannot read "
                                f"({exc}): start over with --no-resume or another --out"
                                ) from None
        changes = recipe_changes(stored, self.recipe)
        if changes:
            raise TrainingError(f"{where} was trained with another recipe ({'; '.join(changes)}"
                                f"): resume with the recipe it was trained with, or start over "
                                f"with --no-resume or another --out")
        for name in self.method.NETWORKS:
            if name in ckpt and hasattr(self.method, name):
                self.method.network(name).load_state_dict(ckpt[name])
        # optimiser state follows its parameters' device (Optimizer.load_state_dict casts)
        for name, obj in {**self.method.optimizers(), **self.method.schedulers()}.items():
            if name in ckpt:
                obj.load_state_dict(ckpt[name])
        for name, state in ckpt.get("grad_scalers", {}).items():
            self.method.load_scaler_state(name, state)
        self.step = int(ckpt["step"])
        _logger.info("resumed %s at step %d", self.out, self.step)

    def checkpoint(self) -> Path:
        """Write out_dir/checkpoint.pt atomically; returns its path."""
        ckpt: dict[str, Any] = {
            "step": self.step,
            "generator": self.method.network("generator").state_dict(),
            "network": {"name": self.recipe.generator["name"],
                        "config": self.recipe.generator["config"]},
            "recipe": self.recipe.to_dict(),
        }
        for name in self.method.NETWORKS[1:]:  # discriminator(s), backward generator
            if hasattr(self.method, name):
                ckpt[name] = self.method.network(name).state_dict()
        for name, obj in {**self.method.optimizers(), **self.method.schedulers()}.items():
            ckpt[name] = obj.state_dict()
        scalers = dict(self.method.scaler_states())
        if scalers:
            ckpt["grad_scalers"] = scalers
        ckpt = to_cpu(ckpt)
        path = self.out / CHECKPOINT
        tmp = path.with_suffix(".pt.partial")
        torch.save(ckpt, tmp)
        os.replace(tmp, path)
        return path

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean absolute error in HU of the generator and of the NCCT identity baseline on the
        validation phantoms. Whole volumes go through :func:`vcesdk.sliding_window` with the
        recipe's inference window and stride, as the runtime runs them (cropped in-plane to
        the network's size multiple)."""
        from vcesdk.stitch import sliding_window

        if self.val_data is None:  # unpaired real scans: no truth to validate against
            return {}
        g = self.method.network("generator").eval()
        mult = g.size_multiple() if hasattr(g, "size_multiple") else (1, 1, 1)
        inf = self.recipe.inference
        mae_model, mae_ident = [], []

        def predictor(batch: np.ndarray) -> np.ndarray:
            x = torch.from_numpy(np.array(batch, dtype=np.float32)).to(self.device)
            with self.method.autocast():
                return g(x).float().cpu().numpy()

        for x, case in zip(self.val_data.x, self.val_data.cases):
            H, W = (n - n % m for n, m in zip(x.shape[2:], mult[1:]))
            window = (int(inf["window_slices"]), H, W)
            stride = (int(inf["stride"][0]), H, W)
            out = sliding_window(np.ascontiguousarray(x[:, :, :H, :W]), predictor, window,
                                 stride, blend=inf["blend"], batch_size=2)
            pred = channels_to_hu(out[0], self.output_hu)
            target = case.phases[self.recipe.phase][:, :H, :W]
            ncct = case.phases["ncct"][:, :H, :W]
            if inf.get("compose", "replace") in ADDITIVE_COMPOSE:  # as the runtime composes
                pred = ncct + enhancement_hu(pred, ncct, inf["compose"], self.output_hu,
                                             inf.get("difference_floor_hu"))
            # the metric on the run's device, as the losses
            t, p, n = (torch.from_numpy(np.ascontiguousarray(a)).to(self.device)
                       for a in (target, pred, ncct))
            mae_model.append(float((p - t).abs().mean()))
            mae_ident.append(float((n - t).abs().mean()))
        g.train()
        return {"val_mae_hu": float(np.mean(mae_model)),
                "val_mae_hu_ncct": float(np.mean(mae_ident))}

    def _log(self, record: dict) -> None:
        self.history.append(record)
        with open(self.out / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def fit(self) -> list[dict]:
        """Train to ``train.steps``; returns the logged records."""
        t = self.recipe.train
        steps, bs = int(t["steps"]), int(t["batch_size"])
        val_every = int(t.get("val_every", 0))
        ckpt_every = int(t.get("ckpt_every", 0))
        crop = self.recipe.data["crop"]
        bar = None
        if self.progress and self.rank == 0:
            from tqdm import tqdm

            bar = tqdm(total=steps, initial=self.step, desc=f"train {self.recipe.name}",
                       unit="step")
        self.method.train()
        t0 = time.perf_counter()
        workers = int(t["workers"])
        stream = WindowStream(self.train_data, int(t["seed"]), bs, crop, self.step, steps)
        batches = torch.utils.data.DataLoader(
            stream, batch_size=None, num_workers=workers,
            pin_memory=self.device.type == "cuda", persistent_workers=False,
            prefetch_factor=4 if workers else None)
        for x, y in batches:
            if self.world > 1:
                part = slice(self.rank * bs // self.world, (self.rank + 1) * bs // self.world)
                x, y = x[part], y[part]
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            self.method.step = self.step
            with self.method.autocast():
                losses = self.method.train_step(x, y)
            if self.world > 1:  # the logged losses are those of the global batch
                names = sorted(losses)
                v = torch.tensor([losses[n] for n in names], dtype=torch.float64,
                                 device=self.device)
                torch.distributed.all_reduce(v)
                losses = {n: float(a) / self.world for n, a in zip(names, v.tolist())}
            self.method.sync_buffers()
            self.step += 1
            self.method.on_step_end(self.step)
            record = {"step": self.step, "time_s": round(time.perf_counter() - t0, 3),
                      "processes": self.world, **losses}
            if self.rank == 0:
                if val_every and (self.step % val_every == 0 or self.step == steps):
                    record.update(self.validate())
                self._log(record)
                if ckpt_every and self.step % ckpt_every == 0:
                    self.checkpoint()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(_progress_terms(losses))
        if bar is not None:
            bar.close()
        if self.rank == 0:
            self.checkpoint()
        return self.history
