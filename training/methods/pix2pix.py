"""The baselines: pix2pix3D (003), its L1-only U-Net, pix2pix 2D (Isola et al. 2017) and
CycleGAN (Zhu et al. 2017)."""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch
from torch import nn

from vcesdk.errors import RecipeError

from ..registry import create_discriminator, create_generator, register_method
from .base import AdamConfig, Method, adam_with_decay, conditional_d_loss, conditional_g_gan

if TYPE_CHECKING:
    from ..recipe import Recipe


@dataclasses.dataclass(frozen=True)
class Pix2PixLoss:
    """pix2pix's generator loss: ``gan_weight`` x GAN + ``l1_weight`` x L1 (100 in Isola et al.
    2017 and 003); one-sided label smoothing with ``real_label`` (003: 0.9).

    ``d_on_image``: with a residual target (``model_io.target: residual``), the discriminator
    judges the image the residual makes, NCCT + residual, shown in the last input window, as
    the paper's discriminator judges images; judging the residual itself teaches the generator
    the two scans' noise texture the real residuals carry (METHOD-REVIEW, pix2pix3D: -1.2 dB).
    """

    l1_weight: float = 100.0
    gan_weight: float = 1.0
    real_label: float = 0.9
    d_on_image: bool = True


@dataclasses.dataclass(frozen=True)
class L1Loss:
    """The U-Net baseline's loss: ``l1_weight`` x L1."""

    l1_weight: float = 1.0


@dataclasses.dataclass(frozen=True)
class UNetOptim(AdamConfig):
    """Adam with PyTorch's default betas (no adversary to balance)."""

    betas: tuple[float, float] = (0.9, 0.999)


@dataclasses.dataclass(frozen=True)
class CycleGANLoss:
    """CycleGAN: ``cycle_weight`` (lambda, 10 in Zhu et al. 2017) x the two cycle L1 terms;
    ``unpaired``: roll the targets along the batch so no image meets its own pair."""

    cycle_weight: float = 10.0
    unpaired: bool = True


class ImageView(nn.Module):
    """A residual output shown as the image it makes: NCCT (HU, from the first input window)
    + residual (HU, over ``hu_range``), clipped to the last input window and scaled to
    [-1, 1]. (B, C, ...) inputs and (B, 1, ...) residual -> (B, 1, ...).

    Raises:
        RecipeError: the first input window does not cover the last one (the NCCT's HU there
            would be clipped).
    """

    def __init__(self, windows, hu_range) -> None:
        super().__init__()
        first, last = windows[0], windows[-1]
        self.in_lo, self.in_w = first["level"] - first["width"] / 2, float(first["width"])
        self.lo, self.w = last["level"] - last["width"] / 2, float(last["width"])
        if self.lo < self.in_lo or self.lo + self.w > self.in_lo + self.in_w:
            raise RecipeError("loss.d_on_image needs the first input window to cover the last "
                              f"one, got {first} and {last}")
        self.r_lo, self.r_w = float(hu_range[0]), float(hu_range[1] - hu_range[0])

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        ncct = self.in_lo + (x[:, :1] + 1) * (self.in_w / 2)
        image = ncct + self.r_lo + (residual.to(ncct.dtype) + 1) * (self.r_w / 2)
        return ((image - self.lo) * (2 / self.w) - 1).clamp(-1, 1)


@register_method("pix2pix3d")
class Pix2Pix3D(Method):
    """pix2pix3D (Choi et al. 2021, seed 003): conditional GAN + 100 x L1.

    Generator and discriminator from the recipe's registry entries; Adam (lr 2e-4, beta1 0.5 in
    the paper), learning rate x0.1 every ``optim.decay_every`` steps (the paper: after epoch
    10 of 20); one-sided label smoothing (real label ``loss.real_label``, 0.9 here).
    """

    Loss = Pix2PixLoss
    SUPPORTS_DDP = True

    def __init__(self, recipe: "Recipe") -> None:
        super().__init__(recipe)
        self.generator = create_generator(recipe.generator["name"], recipe.generator["config"])
        self.discriminator = create_discriminator(recipe.discriminator["name"],
                                                  recipe.discriminator["config"])
        self.opt_g, self.sched_g = adam_with_decay(self.generator.parameters(), self.optim)
        self.opt_d, self.sched_d = adam_with_decay(self.discriminator.parameters(), self.optim)
        io = recipe.model_io
        self.image_view = (ImageView(io["windows"], io["hu_range"])
                           if self.loss.d_on_image and io.get("target") == "residual" else None)

    def d_pair_view(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """What the discriminator sees of an output (the generator's or the target): the
        output itself, or with a residual target the image it makes (:class:`ImageView`)."""
        return out if self.image_view is None else self.image_view(x, out)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt_g": self.opt_g, "opt_d": self.opt_d}

    def schedulers(self) -> dict[str, torch.optim.lr_scheduler.LRScheduler]:
        return {"sched_g": self.sched_g, "sched_d": self.sched_d}

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        fake = self.generator(x)
        real_view, fake_view = self.d_pair_view(x, y), self.d_pair_view(x, fake)
        # discriminator: real pairs -> real_label (one-sided smoothing), fake pairs -> 0
        loss_d = conditional_d_loss(self.discriminator, x, real_view, fake_view,
                                    self.loss.real_label)
        self.optimize(self.opt_d, loss_d)
        # generator: fool D + l1_weight x L1
        loss_gan = conditional_g_gan(self.discriminator, x, fake_view)
        loss_l1 = (fake - y).abs().mean()
        loss_g = self.loss.gan_weight * loss_gan + self.loss.l1_weight * loss_l1
        self.optimize(self.opt_g, loss_g)
        return {"loss_d": loss_d.item(), "loss_g": loss_g.item(), "loss_gan": loss_gan.item(),
                "l1": loss_l1.item()}


@register_method("unet_l1")
class UNetL1(Method):
    """U-Net baseline: the generator alone trained with L1 to the target (no adversary);
    Adam with the recipe's lr / betas, step decay as :class:`Pix2Pix3D`."""

    Loss = L1Loss
    Optim = UNetOptim
    NETWORKS = ("generator",)
    NEEDS_DISCRIMINATOR = False
    SUPPORTS_DDP = True

    def __init__(self, recipe: "Recipe") -> None:
        super().__init__(recipe)
        self.generator = create_generator(recipe.generator["name"], recipe.generator["config"])
        self.opt_g, self.sched_g = adam_with_decay(self.generator.parameters(), self.optim)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt_g": self.opt_g}

    def schedulers(self) -> dict[str, torch.optim.lr_scheduler.LRScheduler]:
        return {"sched_g": self.sched_g}

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        l1 = (self.generator(x) - y).abs().mean()
        self.optimize(self.opt_g, self.loss.l1_weight * l1)
        return {"l1": l1.item()}


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

    Loss = CycleGANLoss
    NETWORKS = ("generator", "backward_generator", "discriminator", "discriminator_x")
    MIN_WINDOWS_PER_PROCESS = 2   # the targets are rolled along each process's batch

    def __init__(self, recipe: "Recipe") -> None:
        super().__init__(recipe)
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
            [*self.generator.parameters(), *self.backward_generator.parameters()], self.optim)
        self.opt_d, self.sched_d = adam_with_decay(
            [*self.discriminator.parameters(), *self.discriminator_x.parameters()], self.optim)
        self.mse = nn.MSELoss()

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt_g": self.opt_g, "opt_d": self.opt_d}

    def schedulers(self) -> dict[str, torch.optim.lr_scheduler.LRScheduler]:
        return {"sched_g": self.sched_g, "sched_d": self.sched_d}

    def _ls(self, logits: torch.Tensor, real: bool) -> torch.Tensor:
        return self.mse(logits, torch.full_like(logits, 1.0 if real else 0.0))

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        if self.loss.unpaired and len(y) > 1:
            y = y.roll(1, dims=0)
        g, f = self.generator, self.backward_generator
        fake_y, fake_x = g(x), f(y)
        adv = self._ls(self.discriminator(fake_y), True) + self._ls(self.discriminator_x(fake_x),
                                                                     True)
        cycle = (f(fake_y) - x).abs().mean() + (g(fake_x) - y).abs().mean()
        loss_g = adv + self.loss.cycle_weight * cycle
        self.optimize(self.opt_g, loss_g)
        loss_d = 0.5 * (self._ls(self.discriminator(y), True)
                        + self._ls(self.discriminator(fake_y.detach()), False)
                        + self._ls(self.discriminator_x(x), True)
                        + self._ls(self.discriminator_x(fake_x.detach()), False))
        self.optimize(self.opt_d, loss_d)
        return {"loss_g": loss_g.item(), "loss_d": loss_d.item(), "cycle": cycle.item(),
                "adv": adv.item()}
