"""What every training method shares: the :class:`Method` base class (networks, optimisers,
device, mixed precision, gradient averaging across processes), the typed optimiser config and
its Adam helper, and the pix2pix conditional GAN losses several methods use.

A method is a short class saying what is different about it (networks, losses, step); it
declares its ``loss`` and ``optim`` recipe sections as dataclasses (:attr:`Method.Loss`,
:attr:`Method.Optim`), so a recipe is checked against them when it loads. The loop that drives
methods is :mod:`vcesdk.training.trainer`.
"""
from __future__ import annotations

import abc
import contextlib
import dataclasses
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch
from torch import nn

if TYPE_CHECKING:  # the recipe module imports this package, never the other way at run time
    from ..recipe import Recipe

AMP_MODES = ("off", "bf16", "fp16")
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclasses.dataclass(frozen=True)
class AdamConfig:
    """The ``optim`` section every method reads: Adam (Kingma & Ba 2015) with a step decay.

    Attributes:
        lr: learning rate.
        betas: Adam's (beta1, beta2); pix2pix and its descendants use (0.5, 0.999).
        weight_decay: L2 penalty (001 / 002: 5e-4).
        decay_every: multiply the learning rate by ``decay_factor`` every this many steps
            (0: never).
        decay_factor: the step decay's factor.
    """

    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = 0.0
    decay_every: int = 0
    decay_factor: float = 0.1


@dataclasses.dataclass(frozen=True)
class NoLoss:
    """A method whose loss has no settings."""


def adam_with_decay(params, optim: AdamConfig, lr: float | None = None
                    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """Adam with the config's lr (or ``lr``), betas and weight decay, and its step decay (x
    ``decay_factor`` every ``decay_every`` steps; never when 0), as every method here uses."""
    opt = torch.optim.Adam(params, lr=float(optim.lr if lr is None else lr),
                           betas=tuple(float(b) for b in optim.betas),
                           weight_decay=float(optim.weight_decay))
    every = int(optim.decay_every) or 10**9
    return opt, torch.optim.lr_scheduler.StepLR(opt, every, float(optim.decay_factor))


def freeze(net: nn.Module) -> None:
    """Eval mode and no gradients: a network trained earlier in the run (a perceptual-loss
    network after its pretraining) that later steps only read."""
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)


def conditional_d_loss(d: nn.Module, x: torch.Tensor, real: torch.Tensor, fake: torch.Tensor,
                       real_label: float = 1.0) -> torch.Tensor:
    """pix2pix discriminator loss on (input, output) pairs: 0.5 x (BCE(D(x, real), real_label)
    + BCE(D(x, fake), 0)), the fake detached; logits in, BCE-with-logits."""
    bce = nn.functional.binary_cross_entropy_with_logits
    d_real = d(torch.cat([x, real.to(x.dtype)], 1))
    d_fake = d(torch.cat([x, fake.detach().to(x.dtype)], 1))
    return 0.5 * (bce(d_real, torch.full_like(d_real, real_label))
                  + bce(d_fake, torch.zeros_like(d_fake)))


def conditional_g_gan(d: nn.Module, x: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """pix2pix generator adversarial term: BCE(D(x, fake), 1)."""
    logits = d(torch.cat([x, fake.to(x.dtype)], 1))
    return nn.functional.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))


def require_same_window(windows: Sequence[dict], hu_range: Sequence[float], who: str) -> None:
    """Check that a recipe translates one windowed image into the same window (000, 004: the
    paper's images are one display window, and the methods compare input and output pixels).

    Raises:
        ValueError: several windows, or an output hu_range other than the window's.
    """
    w = windows[0]
    lo, hi = w["level"] - w["width"] / 2, w["level"] + w["width"] / 2
    if len(windows) != 1 or abs(lo - hu_range[0]) > 1e-6 or abs(hi - hu_range[1]) > 1e-6:
        raise ValueError(f"{who} translates one windowed image into the same window: model_io "
                         f"needs one window and hu_range [{lo}, {hi}], got {len(windows)} "
                         f"window(s) and {list(hu_range)}")


class Method(nn.Module, abc.ABC):
    """Base class: owns the networks and optimisers; ``train_step`` does one update.

    Every network is a submodule, so ``method.to(device)`` moves them all (the optimisers keep
    the same parameters). ``train_step`` runs inside :meth:`autocast` (the trainer enters it);
    every backward pass and optimiser step goes through :meth:`optimize`, which leaves autocast
    for the backward pass, scales fp16 losses with a GradScaler per optimiser, and averages
    gradients over the processes of a run where the networks are not DDP-wrapped.

    ``step`` is the number of steps done before the current one (the trainer sets it, resumed
    runs included), for methods whose schedule has phases.

    Class attributes:
        Loss, Optim: dataclasses of the recipe's ``loss`` and ``optim`` sections (defaults =
            the paper's values where it gives them); ``self.loss`` / ``self.optim`` hold the
            recipe's values as these types.
        NETWORKS: the checkpointed networks, the exported generator first.
        NEEDS_DISCRIMINATOR: the recipe must name a discriminator.
        MIN_WINDOWS_PER_PROCESS: windows each process needs per step (2 for methods that
            unpair a batch by rolling it).
        SUPPORTS_DDP: every network runs as one DistributedDataParallel module (every
            parameter used in every backward, no buffers changed between the passes of one
            step); the staged / cyclic methods average gradients in :meth:`optimize` and take
            rank 0's buffers (BatchNorm statistics) after every step instead
            (:meth:`sync_buffers`), so they train under torchrun too.
    """

    name = "base"
    Loss: type = NoLoss
    Optim: type = AdamConfig
    NETWORKS: tuple[str, ...] = ("generator", "discriminator")
    NEEDS_DISCRIMINATOR = True
    MIN_WINDOWS_PER_PROCESS = 1
    SUPPORTS_DDP = False
    # with data.noise_free_target: False = the target is the noise-free phase; True = the
    # batch target holds two channels, the scanned (noisy) phase then the noise-free one
    NOISY_AND_CLEAN_TARGET = False
    generator: nn.Module
    step: int = 0
    pretrain_steps: int = 0

    def __init__(self, recipe: "Recipe") -> None:
        super().__init__()
        self.recipe = recipe
        self.loss = self.Loss(**recipe.loss)
        self.optim = self.Optim(**recipe.optim)
        self.amp = str(recipe.train.get("amp", "off"))   # checked with the recipe
        self._scalers: dict[int, Any] = {}
        self._grad_sync_world = 1

    @abc.abstractmethod
    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """One optimisation step on a batch (on the method's device); returns the losses."""

    def pair_terms(self) -> list[str]:
        """The recipe keys of the active loss terms that take a batch's NCCT and target to be
        the same patient on the same grid (registered pairs); the trainer refuses them for
        unpaired or misaligned training. None for most methods."""
        return []

    def on_step_end(self, step: int) -> None:
        """Called after each step: every scheduler of :meth:`schedulers` steps once the
        method's pretraining (``pretrain_steps``, 0 for most) is over."""
        if step > self.pretrain_steps:
            for sched in self.schedulers().values():
                sched.step()

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Named optimisers (for checkpointing)."""
        return {}

    def schedulers(self) -> dict[str, torch.optim.lr_scheduler.LRScheduler]:
        """Named learning-rate schedulers (for checkpointing)."""
        return {}

    @property
    def device(self) -> torch.device:
        """Where the method's networks are."""
        return next(self.parameters()).device

    def autocast(self) -> contextlib.AbstractContextManager:
        """``torch.autocast`` on the method's device with the recipe's ``train.amp`` dtype (a
        no-op context when amp is "off")."""
        if self.amp == "off":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=_AMP_DTYPES[self.amp])

    def _scaler(self, opt: torch.optim.Optimizer):
        if self.amp != "fp16":
            return None
        key = id(opt)
        if key not in self._scalers:
            self._scalers[key] = torch.amp.GradScaler(self.device.type)
        return self._scalers[key]

    def optimize(self, opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        """Zero ``opt``'s gradients, back-propagate ``loss`` (outside autocast; scaled under
        fp16), average the gradients over the run's processes where networks are not
        DDP-wrapped, and step ``opt``."""
        opt.zero_grad(set_to_none=True)
        scaler = self._scaler(opt)
        with torch.autocast(self.device.type, enabled=False):
            (scaler.scale(loss) if scaler is not None else loss).backward()
        if self._grad_sync_world > 1:
            self._average_gradients(opt)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()

    def _average_gradients(self, opt: torch.optim.Optimizer) -> None:
        """All-reduce (mean) the gradients of ``opt``'s parameters in one flat buffer per
        dtype. Only parameters with a gradient take part (those of the networks this stage
        trains): every rank runs the same stage, so every rank reduces the same buffer, and
        parameters without one stay untouched by Adam, as in one process."""
        params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for p in params:
            by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
        for grads in by_dtype.values():
            flat = torch.cat([g.reshape(-1) for g in grads])
            torch.distributed.all_reduce(flat)
            flat /= self._grad_sync_world
            offset = 0
            for g in grads:
                g.copy_(flat[offset:offset + g.numel()].view_as(g))
                offset += g.numel()

    def sync_buffers(self) -> None:
        """Where gradients are averaged in :meth:`optimize`: every process takes rank 0's
        buffers (BatchNorm running statistics), as DDP's broadcast_buffers does, so the
        frozen networks and the exported generator are the same on every rank."""
        if self._grad_sync_world > 1:
            for b in self.buffers():
                torch.distributed.broadcast(b, 0)

    def wrap_ddp(self, device_ids: list[int] | None = None) -> None:
        """Make the method's updates average gradients over the processes of a torchrun run
        (the process group must exist): DistributedDataParallel around each network where
        :attr:`SUPPORTS_DDP`, else gradient averaging in :meth:`optimize`.

        Args:
            device_ids: the CUDA device of this rank ([LOCAL_RANK]); None on CPU.
        """
        from torch.nn.parallel import DistributedDataParallel

        world = torch.distributed.get_world_size()
        if not self.SUPPORTS_DDP:
            self._grad_sync_world = world
            # every rank starts from rank 0's weights, as DDP's constructor does
            for p in self.parameters():
                torch.distributed.broadcast(p.data, 0)
            return
        for name in self.NETWORKS:
            net = getattr(self, name, None)
            if isinstance(net, nn.Module) and not isinstance(net, DistributedDataParallel):
                setattr(self, name, DistributedDataParallel(net, device_ids=device_ids))

    def network(self, name: str) -> nn.Module:
        """The network `name` without a DistributedDataParallel wrapper."""
        net = getattr(self, name)
        return getattr(net, "module", net)

    def scaler_states(self) -> Iterator[tuple[str, dict]]:
        """(optimiser name, GradScaler state) for checkpointing fp16 runs."""
        for name, opt in self.optimizers().items():
            if id(opt) in self._scalers:
                yield name, self._scalers[id(opt)].state_dict()

    def load_scaler_state(self, name: str, state: dict) -> None:
        """Restore the GradScaler of optimiser ``name`` (fp16 runs)."""
        scaler = self._scaler(self.optimizers()[name])
        if scaler is not None:
            scaler.load_state_dict(state)
