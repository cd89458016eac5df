"""MAN-GAN (Zhao et al., seed 000_dfb6c11774226ce2.txt): mask-adaptive normalisation GAN with
cycle consistency, NCCT -> one contrast phase (one model per phase).

Networks (2D, slice by slice, on the window L 60 / W 500 the paper uses):
    * MaskNet M: encoder-decoder with 3 residual blocks at the bottleneck; predicts the
      subtraction image ("mask", CECT - NCCT of the windowed images), trained with L1 to the
      real one.
    * Generator G: the pix2pix ResNet generator (7x7 conv, 2 stride-2 convs, residual blocks,
      2 transposed convs, 7x7 output conv, Tanh) whose residual blocks are mask-adaptive blocks
      (MABlk): the normalisation layers are MANorm.
    * MANorm: the features are normalised (parameter-free instance norm) and processed by a
      conv; the predicted mask (resized to the features) is concatenated to them; two convs
      predict gamma and beta; both are multiplied elementwise by the mask; out = norm(x) *
      gamma + beta. Outside the enhancing regions (mask 0) a MABlk adds nothing, so G changes
      the NCCT only where MaskNet predicts enhancement.
    * Backward generator F (CECT -> NCCT): the plain pix2pix ResNet generator, no mask (the
      paper: "the backward generator does not apply the mask image").
    * Discriminator: the pix2pix PatchGAN on (input, output) pairs ("patchgan2d").

Loss of G, M and F (weights in the recipe's ``loss``; the paper gives no weights: we take
pix2pix's 100 for reconstruction and CycleGAN's 10 for the cycle, and 100 for the mask):
    GAN(D(x, G(x, M(x)))) + rec x |G(x, M(x)) - y|_1 + mask x |M(x) - s|_1
    + cycle x (|F(G(x, M(x))) - x|_1 + |G(F(y), M(F(y))) - y|_1)            (Eq. 1)
with s the real subtraction image. Images are the window L 60 / W 500 scaled to [-1, 1] (the
paper's 0-255 image); in those units the subtraction is s = (y - x) / 2, so s x 500 is the
enhancement in HU (what the exported subtraction channel carries).

The exported generator ("mangan") returns 2 channels: 0 = sCECT (window units), 1 = the
predicted subtraction map; the bundle declares channel 1 as the auxiliary output
"subtraction" (HU range [-W, W]), which ``vcesdk synthesize`` writes as its own series.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..networks import norm_layer
from ..registry import create_discriminator, create_generator, register_generator, register_method
from ..slicewise import SliceWise
from .base import Method, adam_with_decay, conditional_d_loss, conditional_g_gan, require_same_window

if TYPE_CHECKING:
    from ..recipe import Recipe


class ResBlock(nn.Module):
    """pix2pix residual block: reflect-pad 3x3 conv, norm, ReLU, 3x3 conv, norm; x + block."""

    def __init__(self, c: int, feature_norm: str = "instance") -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), norm_layer(c, feature_norm, 2),
            nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), norm_layer(c, feature_norm, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class MANorm(nn.Module):
    """Mask-adaptive normalisation (000, Fig. 1b).

    Args:
        channels: feature channels C.
        hidden: channels of the conv that processes the normalised features.
        mask_channels: channels of the mask (1).
        norm: the parameter-free normalisation: "batch" (the paper: MANorm "replaces the batch
            normalization layer") or "instance".

    ``forward(x, mask)``: x (N, C, h, w), mask (N, mask_channels, H, W) at any resolution
    (resized to h x w, bilinear). Returns n * (gamma * m) + beta * m with n = instance-norm(x)
    (no affine), h = ReLU(conv3x3(n)), gamma = conv3x3([h, m]), beta = conv3x3([h, m]).
    """

    def __init__(self, channels: int, hidden: int = 64, mask_channels: int = 1,
                 norm: str = "instance") -> None:
        super().__init__()
        if norm not in ("instance", "batch"):
            raise ValueError(f"MANorm norm must be 'instance' or 'batch', got {norm!r}")
        self.norm = (nn.BatchNorm2d(channels, affine=False) if norm == "batch"
                     else nn.InstanceNorm2d(channels, affine=False))
        self.shared = nn.Sequential(nn.Conv2d(channels, hidden, 3, padding=1), nn.ReLU(True))
        self.gamma = nn.Conv2d(hidden + mask_channels, channels, 3, padding=1)
        self.beta = nn.Conv2d(hidden + mask_channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        n = self.norm(x)
        if mask.shape[-2:] != x.shape[-2:]:
            mask = nn.functional.interpolate(mask, size=x.shape[-2:], mode="bilinear",
                                             align_corners=False)
        a = torch.cat([self.shared(n), mask], dim=1)
        return n * (self.gamma(a) * mask) + self.beta(a) * mask


class MABlock(nn.Module):
    """Mask-adaptive residual block (MABlk): the pix2pix residual block with MANorm in place
    of each normalisation layer: x + MANorm(conv(ReLU(MANorm(conv(x)))))."""

    def __init__(self, c: int, hidden: int = 64, norm: str = "instance") -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3))
        self.norm1 = MANorm(c, hidden, norm=norm)
        self.conv2 = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3))
        self.norm2 = MANorm(c, hidden, norm=norm)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.norm1(self.conv1(x), mask))
        return x + self.norm2(self.conv2(h), mask)


class ResnetGenerator2d(nn.Module):
    """pix2pix / CycleGAN ResNet generator (Johnson et al.; ``resnet_9blocks``): 7x7 conv, two
    stride-2 3x3 convs, ``blocks`` residual blocks, two stride-2 transposed convs, 7x7 conv,
    Tanh. (N, in_channels, h, w) -> (N, out_channels, h, w), h and w multiples of 4.

    With ``mask_adaptive`` the residual blocks are :class:`MABlock` and forward takes the mask.
    `norm` is MANorm's; `feature_norm` that of the other layers (one of
    :data:`~vcesdk.training.networks.NORMS`).
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, base: int = 64,
                 blocks: int = 9, mask_adaptive: bool = False, hidden: int = 64,
                 norm: str = "instance", feature_norm: str = "instance") -> None:
        super().__init__()
        c = base
        f = feature_norm
        self.head = nn.Sequential(
            nn.ReflectionPad2d(3), nn.Conv2d(in_channels, c, 7), norm_layer(c, f, 2), nn.ReLU(True),
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), norm_layer(2 * c, f, 2), nn.ReLU(True),
            nn.Conv2d(2 * c, 4 * c, 3, stride=2, padding=1), norm_layer(4 * c, f, 2), nn.ReLU(True))
        self.mask_adaptive = mask_adaptive
        self.blocks = nn.ModuleList(MABlock(4 * c, hidden, norm) if mask_adaptive
                                    else ResBlock(4 * c, f)
                                    for _ in range(blocks))
        self.tail = nn.Sequential(
            nn.ConvTranspose2d(4 * c, 2 * c, 3, stride=2, padding=1, output_padding=1),
            norm_layer(2 * c, f, 2), nn.ReLU(True),
            nn.ConvTranspose2d(2 * c, c, 3, stride=2, padding=1, output_padding=1),
            norm_layer(c, f, 2), nn.ReLU(True),
            nn.ReflectionPad2d(3), nn.Conv2d(c, out_channels, 7), nn.Tanh())

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.head(x)
        for blk in self.blocks:
            h = blk(h, mask) if self.mask_adaptive else blk(h)
        return self.tail(h)


class MaskNet(nn.Module):
    """MaskNet (000): encoder (7x7 conv, two stride-2 convs), 3 residual blocks at the
    bottleneck, decoder (two transposed convs, 7x7 conv, Tanh): the subtraction image in
    [-1, 1]. (N, in_channels, h, w) -> (N, 1, h, w)."""

    def __init__(self, in_channels: int = 1, base: int = 32, blocks: int = 3,
                 feature_norm: str = "instance") -> None:
        super().__init__()
        self.net = ResnetGenerator2d(in_channels, 1, base, blocks, feature_norm=feature_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@register_generator("mangan")
class ManGanGenerator(SliceWise):
    """The MAN-GAN forward path as one network: MaskNet, then the mask-adaptive generator.

    Args:
        in_channels: input windows (1: L 60 / W 500).
        out_channels: 2 (sCECT, subtraction); the bundle reads channel 0 as the image.
        base, blocks: the generator's width and MABlk count (paper: pix2pix's 64 and 9).
        mask_base: MaskNet width.
        hidden: MANorm's hidden conv channels.
        norm: MANorm's normalisation, "batch" (the paper) or "instance".
        feature_norm: the other layers' normalisation in MaskNet and the generator,
            "instance" (pix2pix's, the paper's), "batch" or "none" (one of
            :data:`~vcesdk.training.networks.NORMS`).
        residual: channel 0 = the input window + the generator's output (last conv zeroed:
            starts as the identity); our option (METHOD-REVIEW: +6.8 dB at the small size).
        context: neighbouring slices per side fed to MaskNet and the generator as channels
            (0: the paper's single slice; 1: three slices, as 001 / 002 / 004 do).

    Shapes: (B, in_channels, d, h, w) -> (B, 2, d, h, w), h and w multiples of 4; each slice
    on its own.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 2, base: int = 64,
                 blocks: int = 9, mask_base: int = 32, hidden: int = 64,
                 norm: str = "instance", residual: bool = False, context: int = 0,
                 feature_norm: str = "instance") -> None:
        super().__init__()
        if out_channels != 2:
            raise ValueError(f"mangan returns (sCECT, subtraction): out_channels must be 2, "
                             f"got {out_channels}")
        self.context = int(context)
        cin = in_channels * (2 * self.context + 1)
        self.masknet = MaskNet(cin, mask_base, feature_norm=feature_norm)
        self.net = ResnetGenerator2d(cin, 1, base, blocks, mask_adaptive=True,
                                     hidden=hidden, norm=norm, feature_norm=feature_norm)
        self.set_residual(residual)

    def size_multiple(self) -> tuple[int, int, int]:
        return (1, 4, 4)

    def forward2d(self, x: torch.Tensor) -> torch.Tensor:
        mask = self.masknet(x)
        return torch.cat([self.net(x, mask), mask], dim=1)


@register_generator("resnet2d")
class ResnetGenerator(SliceWise):
    """The pix2pix ResNet generator on the SDK's 5D layout (slice by slice): MAN-GAN's
    backward generator F, and a baseline on its own. (B, C, d, h, w) -> (B, C', d, h, w)."""

    def __init__(self, in_channels: int = 1, out_channels: int = 1, base: int = 64,
                 blocks: int = 9, residual: bool = False) -> None:
        super().__init__()
        self.net = ResnetGenerator2d(in_channels, out_channels, base, blocks)
        self.set_residual(residual)

    def size_multiple(self) -> tuple[int, int, int]:
        return (1, 4, 4)

    def forward2d(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def subtraction_target(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The real subtraction image (000: "subtracting the ground-truth CT image from the input
    CT image", CECT - NCCT) of two images in the same window scaled to [-1, 1]: (y - x) / 2,
    in [-1, 1]; x 2 the window width it is in HU."""
    return 0.5 * (y - x)


@dataclasses.dataclass(frozen=True)
class ManGanLoss:
    """MAN-GAN's loss weights (the paper gives none): reconstruction ``l1_weight`` (pix2pix's
    100), ``mask_weight`` (100), ``cycle_weight`` (CycleGAN's 10), ``gan_weight`` (1)."""

    l1_weight: float = 100.0
    mask_weight: float = 100.0
    cycle_weight: float = 10.0
    gan_weight: float = 1.0


@register_method("mangan")
class ManGan(Method):
    """MAN-GAN training (see the module docstring). Adam with the recipe's lr (paper 1e-4) and
    betas; G, M and F share one optimiser, D its own.

    Raises:
        ValueError: the recipe's model_io is not one window mapped onto itself, or the target
            is not "image".
    """

    Loss = ManGanLoss
    NETWORKS = ("generator", "discriminator", "backward_generator")

    def __init__(self, recipe: "Recipe") -> None:
        super().__init__(recipe)
        io = recipe.model_io
        require_same_window(io["windows"], io["hu_range"], "MAN-GAN")
        if io.get("target", "image") != "image":
            raise ValueError("MAN-GAN predicts the phase image (model_io.target: image)")
        g_cfg = dict(recipe.generator["config"])
        self.generator = create_generator(recipe.generator["name"], g_cfg)
        self.backward_generator = create_generator(
            "resnet2d", {"in_channels": 1, "out_channels": int(g_cfg.get("in_channels", 1)),
                         "base": int(g_cfg.get("base", 64)),
                         "blocks": int(g_cfg.get("blocks", 9)),
                         "residual": bool(g_cfg.get("residual", False))})
        self.discriminator = create_discriminator(recipe.discriminator["name"],
                                                  recipe.discriminator["config"])
        self.opt_g, self.sched_g = adam_with_decay(
            [*self.generator.parameters(), *self.backward_generator.parameters()], self.optim)
        self.opt_d, self.sched_d = adam_with_decay(self.discriminator.parameters(), self.optim)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt_g": self.opt_g, "opt_d": self.opt_d}

    def schedulers(self) -> dict[str, torch.optim.lr_scheduler.LRScheduler]:
        return {"sched_g": self.sched_g, "sched_d": self.sched_d}

    def losses(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """The generator-side loss terms of one batch (x, y: (B, 1, d, h, w) in [-1, 1]).

        Returns tensors: "mask" |M(x) - s|, "rec" |G(x, M(x)) - y|, "cycle" (Eq. 1), "fake"
        G(x, M(x)) (B, 1, d, h, w) for the discriminator.
        """
        out = self.generator(x)
        fake, mask = out[:, :1], out[:, 1:]
        back = self.backward_generator(fake)                       # F(G(x, M(x)))
        regen = self.generator(self.backward_generator(y))[:, :1]  # G(F(y), M(F(y)))
        cycle = (back - x).abs().mean() + (regen - y).abs().mean()
        return {"mask": (mask - subtraction_target(x, y)).abs().mean(),
                "rec": (fake - y).abs().mean(), "cycle": cycle, "fake": fake}

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        terms = self.losses(x, y)
        fake = terms["fake"]
        loss_d = conditional_d_loss(self.discriminator, x, y, fake)
        self.optimize(self.opt_d, loss_d)
        gan = conditional_g_gan(self.discriminator, x, fake)
        w = self.loss
        loss_g = (w.gan_weight * gan + w.l1_weight * terms["rec"] + w.mask_weight * terms["mask"]
                  + w.cycle_weight * terms["cycle"])
        self.optimize(self.opt_g, loss_g)
        return {"loss_d": loss_d.item(), "loss_g": loss_g.item(), "gan": gan.item(),
                "l1": terms["rec"].item(), "mask_l1": terms["mask"].item(),
                "cycle": terms["cycle"].item()}
