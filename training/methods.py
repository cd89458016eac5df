"""Training methods: each a short class saying what is different about it (networks, losses,
step). The loop that drives them is :mod:`vcesdk.training.trainer`."""
from __future__ import annotations

import abc
from typing import Callable, Sequence

import torch
from torch import nn

from .networks import create_discriminator, create_generator, load_seed_modules
from .recipe import Recipe

_METHODS: dict[str, Callable[..., "Method"]] = {}


def register_method(name: str) -> Callable:
    """Class decorator: make a method constructible by name."""
    def deco(cls):
        _METHODS[name] = cls
        cls.name = name
        return cls
    return deco


def create_method(recipe: Recipe) -> "Method":
    """The method named by ``recipe.method``.

    Raises:
        ValueError: unknown method (the message lists the registered ones).
    """
    load_seed_modules()
    if recipe.method not in _METHODS:
        raise ValueError(f"unknown method {recipe.method!r}; registered: "
                         f"{', '.join(sorted(_METHODS))}")
    return _METHODS[recipe.method](recipe)


def adam_with_decay(params, optim: dict, default_betas: tuple[float, float] = (0.5, 0.999),
                    lr: float | None = None
                    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """Adam with the recipe's lr (or `lr`), betas and weight_decay (0 when absent) and its step
    decay (x ``decay_factor`` every ``decay_every`` steps; never when 0), as every method here
    uses."""
    opt = torch.optim.Adam(params, lr=float(optim["lr"] if lr is None else lr),
                           betas=tuple(optim.get("betas", default_betas)),
                           weight_decay=float(optim.get("weight_decay", 0.0)))
    every = int(optim.get("decay_every", 0)) or 10**9
    return opt, torch.optim.lr_scheduler.StepLR(opt, every, optim.get("decay_factor", 0.1))


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
    d_real = d(torch.cat([x, real], 1))
    d_fake = d(torch.cat([x, fake.detach()], 1))
    return 0.5 * (bce(d_real, torch.full_like(d_real, real_label))
                  + bce(d_fake, torch.zeros_like(d_fake)))


def conditional_g_gan(d: nn.Module, x: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """pix2pix generator adversarial term: BCE(D(x, fake), 1)."""
    logits = d(torch.cat([x, fake], 1))
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

    ``step`` is the number of steps done before the current one (the trainer sets it, resumed
    runs included), for methods whose schedule has phases."""

    name = "base"
    generator: nn.Module
    step: int = 0

    @abc.abstractmethod
    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """One optimisation step on a batch; returns the losses as floats."""

    def on_step_end(self, step: int) -> None:
        """Called after each step (learning-rate schedules)."""

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Named optimisers (for checkpointing)."""
        return {}

    NETWORKS: tuple[str, ...] = ("generator", "discriminator")
    # DDP needs every network run once per backward with all its parameters used: true of the
    # one-generator-pass methods; the staged / cyclic ones (several passes of one network per
    # step, stages that leave parameters unused) train in one process
    SUPPORTS_DDP = False

    def wrap_ddp(self) -> None:
        """Wrap each network in DistributedDataParallel (the process group must exist); the
        optimisers keep working on the same parameters. Gradients are averaged over ranks.

        Raises:
            ValueError: the method does not support DDP (:attr:`SUPPORTS_DDP`).
        """
        from torch.nn.parallel import DistributedDataParallel

        if not self.SUPPORTS_DDP:
            raise ValueError(f"method {self.name!r} does not run under torchrun/DDP (several "
                             f"passes of a network per step or staged training); train it in "
                             f"one process")

        for name in self.NETWORKS:
            net = getattr(self, name, None)
            if isinstance(net, nn.Module) and not isinstance(net, DistributedDataParallel):
                setattr(self, name, DistributedDataParallel(net))

    def network(self, name: str) -> nn.Module:
        """The network `name` without a DistributedDataParallel wrapper."""
        net = getattr(self, name)
        return getattr(net, "module", net)

    def schedulers(self) -> dict[str, torch.optim.lr_scheduler.LRScheduler]:
        """Named learning-rate schedulers (for checkpointing)."""
        return {}


@register_method("pix2pix3d")
class Pix2Pix3D(Method):
    """pix2pix3D (Choi et al. 2021, seed 003): conditional GAN + 100 x L1.

    Generator and discriminator from the recipe's registry entries; Adam (lr 2e-4, beta1 0.5 in
    the paper), learning rate x0.1 every ``optim.decay_every`` steps (the paper: after epoch
    10 of 20); one-sided label smoothing (real label ``loss.real_label``, 0.9 here).
    """

    SUPPORTS_DDP = True

    def __init__(self, recipe: Recipe) -> None:
        super().__init__()
        self.recipe = recipe
        self.generator = create_generator(recipe.generator["name"], recipe.generator["config"])
        self.discriminator = create_discriminator(recipe.discriminator["name"],
                                                  recipe.discriminator["config"])
        self.opt_g, self.sched_g = adam_with_decay(self.generator.parameters(), recipe.optim)
        self.opt_d, self.sched_d = adam_with_decay(self.discriminator.parameters(),
                                                   recipe.optim)
        self.l1_weight = float(recipe.loss.get("l1_weight", 100.0))
        self.gan_weight = float(recipe.loss.get("gan_weight", 1.0))
        self.real_label = float(recipe.loss.get("real_label", 0.9))

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt_g": self.opt_g, "opt_d": self.opt_d}

    def schedulers(self) -> dict[str, torch.optim.lr_scheduler.LRScheduler]:
        return {"sched_g": self.sched_g, "sched_d": self.sched_d}

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        fake = self.generator(x)
        # discriminator: real pairs -> real_label (one-sided smoothing), fake pairs -> 0
        self.opt_d.zero_grad(set_to_none=True)
        loss_d = conditional_d_loss(self.discriminator, x, y, fake, self.real_label)
        loss_d.backward()
        self.opt_d.step()
        # generator: fool D + l1_weight x L1
        self.opt_g.zero_grad(set_to_none=True)
        loss_gan = conditional_g_gan(self.discriminator, x, fake)
        loss_l1 = (fake - y).abs().mean()
        loss_g = self.gan_weight * loss_gan + self.l1_weight * loss_l1
        loss_g.backward()
        self.opt_g.step()
        return {"loss_d": loss_d.item(), "loss_g": loss_g.item(), "loss_gan": loss_gan.item(),
                "l1": loss_l1.item()}

    def on_step_end(self, step: int) -> None:
        self.sched_g.step()
        self.sched_d.step()


@register_method("unet_l1")
class UNetL1(Method):
    """U-Net baseline: the generator alone trained with L1 to the target (no adversary);
    Adam with the recipe's lr / betas, step decay as :class:`Pix2Pix3D`."""

    NETWORKS = ("generator",)
    SUPPORTS_DDP = True

    def __init__(self, recipe: Recipe) -> None:
        super().__init__()
        self.recipe = recipe
        self.generator = create_generator(recipe.generator["name"], recipe.generator["config"])
        self.opt_g, self.sched_g = adam_with_decay(self.generator.parameters(), recipe.optim,
                                                   default_betas=(0.9, 0.999))

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt_g": self.opt_g}

    def schedulers(self) -> dict[str, torch.optim.lr_scheduler.LRScheduler]:
        return {"sched_g": self.sched_g}

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        self.opt_g.zero_grad(set_to_none=True)
        loss = (self.generator(x) - y).abs().mean()
        loss.backward()
        self.opt_g.step()
        return {"l1": loss.item()}

    def on_step_end(self, step: int) -> None:
        self.sched_g.step()


@register_method("pix2pix")
class Pix2Pix(Pix2Pix3D):
    """pix2pix (Isola et al. 2017): the same conditional GAN + 100 x L1 as :class:`Pix2Pix3D`,
    named for the 2D baseline whose recipe uses the planar networks (unet2d, patchgan2d)."""


@register_method("cyclegan")
class CycleGAN(Method):
    """CycleGAN (Zhu et al. 2017), the unpaired baseline of 000_dfb6c11774226ce2.txt and
    001_f4ce1725ceedd708.txt: G (NCCT -> CECT) and F (CECT -> NCCT), unconditional PatchGAN
    discriminators D_Y (on CECT) and D_X (on NCCT), least-squares GAN losses, cycle loss
    ``loss.cycle_weight`` x (|F(G(x)) - x| + |G(F(y)) - y|) (10 in the paper), Adam 2e-4 / 0.5.
    With ``loss.unpaired`` (default true) the targets are rolled along the batch so no image
    meets its own pair (batch size >= 2), as training on unpaired scans.

    F has G's architecture with input and output channels swapped; D_X takes the input
    channels, D_Y the output channels (their ``in_channels`` are set here).
    """

    NETWORKS = ("generator", "backward_generator", "discriminator", "discriminator_x")

    def __init__(self, recipe: Recipe) -> None:
        super().__init__()
        self.recipe = recipe
        g_cfg = dict(recipe.generator["config"])
        c_in, c_out = int(g_cfg.get("in_channels", 3)), int(g_cfg.get("out_channels", 1))
        self.generator = create_generator(recipe.generator["name"], g_cfg)
        self.backward_generator = create_generator(
            recipe.generator["name"], {**g_cfg, "in_channels": c_out, "out_channels": c_in})
        d_cfg = dict(recipe.discriminator["config"])
        self.discriminator = create_discriminator(recipe.discriminator["name"],
                                                  {**d_cfg, "in_channels": c_out})
        self.discriminator_x = create_discriminator(recipe.discriminator["name"],
                                                    {**d_cfg, "in_channels": c_in})
        self.opt_g, self.sched_g = adam_with_decay(
            [*self.generator.parameters(), *self.backward_generator.parameters()], recipe.optim)
        self.opt_d, self.sched_d = adam_with_decay(
            [*self.discriminator.parameters(), *self.discriminator_x.parameters()], recipe.optim)
        self.cycle_weight = float(recipe.loss.get("cycle_weight", 10.0))
        self.unpaired = bool(recipe.loss.get("unpaired", True))
        self.mse = nn.MSELoss()

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt_g": self.opt_g, "opt_d": self.opt_d}

    def schedulers(self) -> dict[str, torch.optim.lr_scheduler.LRScheduler]:
        return {"sched_g": self.sched_g, "sched_d": self.sched_d}

    def _ls(self, logits: torch.Tensor, real: bool) -> torch.Tensor:
        return self.mse(logits, torch.full_like(logits, 1.0 if real else 0.0))

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        if self.unpaired and len(y) > 1:
            y = y.roll(1, dims=0)
        g, f = self.generator, self.backward_generator
        fake_y, fake_x = g(x), f(y)
        self.opt_g.zero_grad(set_to_none=True)
        adv = self._ls(self.discriminator(fake_y), True) + self._ls(self.discriminator_x(fake_x),
                                                                     True)
        cycle = (f(fake_y) - x).abs().mean() + (g(fake_x) - y).abs().mean()
        loss_g = adv + self.cycle_weight * cycle
        loss_g.backward()
        self.opt_g.step()
        self.opt_d.zero_grad(set_to_none=True)
        loss_d = 0.5 * (self._ls(self.discriminator(y), True)
                        + self._ls(self.discriminator(fake_y.detach()), False)
                        + self._ls(self.discriminator_x(x), True)
                        + self._ls(self.discriminator_x(fake_x.detach()), False))
        loss_d.backward()
        self.opt_d.step()
        return {"loss_g": loss_g.item(), "loss_d": loss_d.item(), "cycle": cycle.item(),
                "adv": adv.item()}

    def on_step_end(self, step: int) -> None:
        self.sched_g.step()
        self.sched_d.step()
