"""The high-resolution GANs of Liu et al.: the dual-path GAN (seed 001_f4ce1725ceedd708.txt) and
DyeFreeNet (seed 002_16e60a882993d7b4.txt). Both share:

    * the "high-resolution generator" (``hrunet2d``): a 5-block encoder (channels 32, 64, 128,
      256, 512; 2x2 max-pool, double 3x3 conv + BN + ReLU) whose block i takes the
      concatenation of every earlier block's output (max-pooled to its resolution; HRNet-style
      dense connections), a U-Net decoder with skips, and a tail that concatenates the last 32
      channels with the input and applies two convs; 3 consecutive slices in (context 1),
      missing neighbours duplicated;
    * self-supervised intensity pretraining: the NCCT multiplied by alpha in (0.5, 1.0, 1.5,
      2.0) -> classes 0..3, classified by the generator's encoder + 3 fully connected layers;
      the encoder then initialises the generator and, frozen, gives the perceptual loss;
    * a conditional discriminator on (input, CECT) pairs trained with MSE + BCE-with-logits
      (real pairs 1, synthetic 0).

Dual-path (001): G loss per path = GAN + 1 x MSE + perceptual (encoder blocks 2-5); the global
path sees the whole image, the local path its four quadrants (stitched back before the loss);
total 0.6 global + 0.4 local. Adam, G 5e-5, D 2e-4, weight decay 5e-4.

DyeFreeNet (002): a primary GAN on the half-resolution image, then an intensity-refinement GAN
on the primary output with a final x2 upsampling; G loss = GAN + 0.01 x MSE + perceptual on
all conv blocks; trained in that order (the refinement generator initialised from the trained
primary one), exported as one cascade. Primary lr 1e-5, refinement 5e-5, weight decay 5e-4.

Our choices where the papers are silent (written in the recipes too): alpha scales the
windowed image in [0, 1] (x' = alpha (x + 1) - 1 in model units); the discriminator is the
pix2pix PatchGAN of the registry (``patchgan2d``); perceptual = mean squared feature
difference per block, equal weights; pretraining runs on the training NCCT (the papers use
NLST) for ``loss.pretrain_steps`` steps at ``loss.pretrain_lr``.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn
from torch.nn import functional as tf

from ..networks import zero_last_conv
from ..registry import create_discriminator, create_generator, register_generator, register_method
from ..slicewise import SliceWise, slice_stacks, unstack_slices
from .base import AdamConfig, Method, adam_with_decay, freeze

if TYPE_CHECKING:
    from ..recipe import Recipe

INTENSITY_LEVELS = (0.5, 1.0, 1.5, 2.0)   # alpha of the pretext task, classes 0..3 (001, 002)
PATH_WEIGHTS = (0.6, 0.4)                 # global, local path (001, Eq. 4)


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(True),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(True))


class DenseEncoder(nn.Module):
    """The HRNet-style dense encoder: block i (i > 0) max-pools, then double-convs the
    concatenation of the previous block's output and every earlier block's output pooled to
    the same resolution. ``forward(x)`` -> the list of block outputs (full, 1/2, ... 1/16)."""

    def __init__(self, in_channels: int, channels: Sequence[int] = (32, 64, 128, 256, 512)
                 ) -> None:
        super().__init__()
        self.channels = [int(c) for c in channels]
        blocks, total = [], 0
        for i, c in enumerate(self.channels):
            blocks.append(_double_conv(in_channels if i == 0 else total, c))
            total += c
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats: list[torch.Tensor] = []
        for i, blk in enumerate(self.blocks):
            if i == 0:
                feats.append(blk(x))
                continue
            # block j < i is 2 ** (i - j) times finer: max-pool it by that factor (static
            # kernels, so the graph exports to ONNX with dynamic image sizes)
            inp = torch.cat([tf.max_pool2d(f, 2 ** (i - j)) for j, f in enumerate(feats)],
                            dim=1)
            feats.append(blk(inp))
        return feats


@register_generator("hrunet2d")
class HRUNet(SliceWise):
    """The high-resolution generator of 001 / 002 (see the module docstring).

    Args:
        in_channels: windows per slice (1).
        out_channels: 1.
        channels: encoder block channels (paper: 32, 64, 128, 256, 512).
        context: neighbouring slices per side stacked as channels (1: 3 consecutive slices).
        residual: channel 0 = the input's centre slice + the network's output, last conv
            zeroed (starts as the identity); our option, not the papers'.

    Shapes: (B, in_channels, d, h, w) -> (B, out_channels, d, h, w) in [-1, 1] ([-2, 2] when
    residual); h and w multiples of 2 ** (len(channels) - 1).
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1,
                 channels: Sequence[int] = (32, 64, 128, 256, 512), context: int = 1,
                 residual: bool = False) -> None:
        super().__init__()
        self.context = int(context)
        cin = in_channels * (2 * self.context + 1)
        self.encoder = DenseEncoder(cin, channels)
        ch = self.encoder.channels
        self.decoder = nn.ModuleList(_double_conv(ch[i + 1] + ch[i], ch[i])
                                     for i in reversed(range(len(ch) - 1)))
        self.tail = nn.Sequential(nn.Conv2d(ch[0] + cin, ch[0], 3, padding=1), nn.ReLU(True),
                                  nn.Conv2d(ch[0], out_channels, 3, padding=1), nn.Tanh())
        self.set_residual(residual)

    def size_multiple(self) -> tuple[int, int, int]:
        m = 2 ** (len(self.encoder.channels) - 1)
        return (1, m, m)

    def forward2d(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.encoder(x)
        h = feats[-1]
        for dec, skip in zip(self.decoder, reversed(feats[:-1])):
            h = dec(torch.cat([tf.interpolate(h, size=skip.shape[-2:], mode="nearest"), skip],
                              dim=1))
        return self.tail(torch.cat([h, x], dim=1))


@register_generator("dyefreenet")
class DyeFreeNet(nn.Module):
    """DyeFreeNet's cascade (002) as one network: the primary generator on the input halved
    in-plane (bilinear), the intensity-refinement generator on the primary output, a final x2
    upsampling (bilinear + 3x3 conv) to the input resolution. The generators end in their own
    Tanh, so the upsampling conv has none (a second Tanh capped the start at +/-0.76 and the
    conv had to learn a gain to undo it: METHOD-REVIEW, DyeFreeNet 2).

    Args:
        in_channels, channels, context: as :class:`HRUNet` (the primary generator; the
            refinement generator takes the primary output, 1 channel, with the same context).
        residual: both generators residual (:class:`HRUNet`): the primary starts as the halved
            input, the refinement as its input, and the refined half-resolution enhancement is
            added to the full-resolution input, so the cascade starts as the identity (our
            option: the half-resolution primary alone caps PSNR at 31 dB, METHOD-REVIEW).

    Shapes: (B, in_channels, d, h, w) -> (B, 1, d, h, w); h, w multiples of
    2 ** len(channels).
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1,
                 channels: Sequence[int] = (32, 64, 128, 256, 512), context: int = 1,
                 residual: bool = False) -> None:
        super().__init__()
        self.residual = bool(residual)
        self.primary = HRUNet(in_channels, 1, channels, context, residual)
        self.refine = HRUNet(1, 1, channels, context, residual)
        self.upsample = nn.Sequential(nn.Conv2d(1, out_channels, 3, padding=1))
        with torch.no_grad():  # starts as plain bilinear upsampling (centre tap 1, no bias)
            self.upsample[0].weight.zero_()
            self.upsample[0].weight[:, 0, 1, 1] = 1.0
            self.upsample[0].bias.zero_()

    def size_multiple(self) -> tuple[int, int, int]:
        m = 2 ** len(self.primary.encoder.channels)
        return (1, m, m)

    def coarse(self, x: torch.Tensor) -> torch.Tensor:
        """The primary GAN's half-resolution output (B, 1, d, h/2, w/2)."""
        return self.primary(halve(x))

    def refined(self, coarse: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The refinement GAN's full-resolution output from a primary output ``coarse`` of the
        input ``x``. Residual: the refined half-resolution enhancement (refined - halved input)
        is upsampled and added to the full-resolution input, so the cascade starts as the
        identity and keeps the input's detail (the enhancement alone is half resolution)."""
        r = self.refine(coarse)
        if self.residual:
            r = r - halve(x[:, :1])
        up = tf.interpolate(slice_stacks(r, 0), scale_factor=2.0, mode="bilinear",
                            align_corners=False)
        out = unstack_slices(self.upsample(up), r.shape[0])
        return out + x[:, :1] if self.residual else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.refined(self.coarse(x), x)


def halve(v: torch.Tensor) -> torch.Tensor:
    """(B, C, d, h, w) -> (B, C, d, h/2, w/2), bilinear in-plane."""
    h, w = v.shape[-2:]
    s = tf.interpolate(slice_stacks(v, 0), size=(h // 2, w // 2), mode="bilinear",
                       align_corners=False)
    return unstack_slices(s, v.shape[0])


def intensity_pretext(x: torch.Tensor, generator: torch.Generator | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """The pretext task of 001 / 002: each image scaled by a random alpha of
    :data:`INTENSITY_LEVELS`, labelled with alpha's index.

    Args:
        x: (N, ...) images in model units [-1, 1] (the window scaled); alpha scales the
            window's [0, 1] image: x' = alpha (x + 1) - 1.

    Returns:
        (x', labels): x' like x, labels int64 (N,) in 0..3 on x's device (drawn on the CPU
        from ``generator``, so runs are reproducible on any device).
    """
    labels = torch.randint(len(INTENSITY_LEVELS), (len(x),), generator=generator).to(x.device)
    alpha = torch.tensor(INTENSITY_LEVELS, dtype=x.dtype, device=x.device)[labels]
    alpha = alpha.reshape(-1, *([1] * (x.dim() - 1)))
    return alpha * (x + 1) - 1, labels


class IntensityClassifier(nn.Module):
    """Encoder (a :class:`DenseEncoder`) + global average pooling + 3 fully connected layers
    -> 4 intensity-level logits (001 Fig. 4)."""

    def __init__(self, in_channels: int, channels: Sequence[int]) -> None:
        super().__init__()
        self.encoder = DenseEncoder(in_channels, channels)
        c = int(channels[-1])
        self.fc = nn.Sequential(nn.Linear(c, c // 2), nn.ReLU(True), nn.Linear(c // 2, c // 4),
                                nn.ReLU(True), nn.Linear(c // 4, len(INTENSITY_LEVELS)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.encoder(x)[-1].mean(dim=(2, 3)))


def split_quadrants(x: torch.Tensor) -> torch.Tensor:
    """(B, C, d, h, w) -> (4B, C, d, h/2, w/2): top-left, top-right, bottom-left,
    bottom-right quadrants stacked along the batch (001's local path)."""
    h, w = x.shape[-2] // 2, x.shape[-1] // 2
    return torch.cat([x[..., :h, :w], x[..., :h, w:], x[..., h:, :w], x[..., h:, w:]], dim=0)


def stitch_quadrants(q: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`split_quadrants`: (4B, C, d, h, w) -> (B, C, d, 2h, 2w)."""
    tl, tr, bl, br = q.chunk(4, dim=0)
    return torch.cat([torch.cat([tl, tr], dim=-1), torch.cat([bl, br], dim=-1)], dim=-2)


def mse_bce(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """The discriminators' loss of 001 / 002: MSE + BCE-with-logits against 1 (real) or 0."""
    target = torch.full_like(logits, 1.0 if real else 0.0)
    return tf.mse_loss(logits, target) + tf.binary_cross_entropy_with_logits(logits, target)


@dataclasses.dataclass(frozen=True)
class DualPathLoss:
    """001's generator loss per path: GAN + ``mse_weight`` x MSE + perceptual (the paper: 1 x
    MSE, on an intensity scale it does not state; our [-1, 1] images make the MSE ~1/16000 of
    a 0-255 one, so the small recipes raise it: METHOD-REVIEW), after ``pretrain_steps`` steps
    of the intensity pretext task at ``pretrain_lr``."""

    mse_weight: float = 1.0
    pretrain_steps: int = 0
    pretrain_lr: float = 1e-4


@dataclasses.dataclass(frozen=True)
class DyeFreeNetLoss(DualPathLoss):
    """002: GAN + ``mse_weight`` (lambda, 0.01 in the paper) x MSE + perceptual;
    ``primary_steps`` steps of the primary GAN before the refinement GAN."""

    mse_weight: float = 0.01
    primary_steps: int = 0


@dataclasses.dataclass(frozen=True)
class DualPathOptim(AdamConfig):
    """001: G at ``lr`` (5e-5), D at ``lr_d`` (2e-4), weight decay 5e-4."""

    lr: float = 5e-5
    lr_d: float = 2e-4
    weight_decay: float = 5e-4


@dataclasses.dataclass(frozen=True)
class DyeFreeNetOptim(AdamConfig):
    """002: primary GAN at ``lr`` (1e-5), refinement GAN at ``lr_refine`` (5e-5), weight decay
    5e-4."""

    lr: float = 1e-5
    lr_refine: float = 5e-5
    weight_decay: float = 5e-4


class _HRGanBase(Method):
    """Shared parts: networks, the intensity pretraining, D step, G loss with perceptual."""

    def __init__(self, recipe: "Recipe", perceptual_blocks: slice) -> None:
        super().__init__(recipe)
        g_cfg = dict(recipe.generator["config"])
        self.generator = create_generator(recipe.generator["name"], g_cfg)
        self.discriminator = create_discriminator(recipe.discriminator["name"],
                                                  recipe.discriminator["config"])
        context = int(g_cfg.get("context", 1))
        self.context = context
        self.perceptual = IntensityClassifier(int(g_cfg.get("in_channels", 1)) *
                                              (2 * context + 1),
                                              g_cfg.get("channels", (32, 64, 128, 256, 512)))
        self.pretrain_steps = int(self.loss.pretrain_steps)
        self.perceptual_blocks = perceptual_blocks
        self.opt_p = torch.optim.Adam(self.perceptual.parameters(),
                                      lr=float(self.loss.pretrain_lr))
        self.seed = int(recipe.train["seed"])

    def pretrain_step(self, x: torch.Tensor) -> dict[str, float]:
        """One step of the intensity pretext task on NCCT slices (with their neighbours)."""
        self.perceptual.train()
        # labels drawn from (seed, step): a resumed run draws what an uninterrupted one would
        rng = torch.Generator().manual_seed(self.seed * 1_000_003 + self.step)
        scaled, labels = intensity_pretext(slice_stacks(x, self.context), rng)
        logits = self.perceptual(scaled)
        loss = tf.cross_entropy(logits, labels)
        self.optimize(self.opt_p, loss)
        return {"pretext_ce": loss.item(),
                "pretext_accuracy": (logits.argmax(1) == labels).float().mean().item()}

    def init_from_pretrained(self, encoder: DenseEncoder) -> None:
        """Copy the pretrained encoder into a generator's encoder (001, 002: "initialised by
        the weights of the pretrained model")."""
        encoder.load_state_dict(self.perceptual.encoder.state_dict())

    def freeze_perceptual(self) -> None:
        """After pretraining the perceptual network is fixed (eval mode, no gradients); called
        every step so that resumed runs are frozen too."""
        freeze(self.perceptual)

    def perceptual_loss(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """Mean squared difference of the frozen pretrained encoder's block features."""
        enc = self.perceptual.encoder
        fa = enc(slice_stacks(fake, self.context))[self.perceptual_blocks]
        fb = enc(slice_stacks(real, self.context))[self.perceptual_blocks]
        return sum(tf.mse_loss(a, b) for a, b in zip(fa, fb)) / len(fa)

    def d_loss(self, d: nn.Module, x: torch.Tensor, real: torch.Tensor,
               fakes: Sequence[torch.Tensor]) -> torch.Tensor:
        """MSE + BCE on (x, real) -> 1 and each (x, fake) -> 0 (fakes detached)."""
        loss = mse_bce(d(torch.cat([x, real], 1)), True)
        return loss + sum(mse_bce(d(torch.cat([x, f.detach()], 1)), False)
                          for f in fakes) / len(fakes)

    def g_loss(self, d: nn.Module, x: torch.Tensor, fake: torch.Tensor, y: torch.Tensor
               ) -> tuple[torch.Tensor, dict[str, float]]:
        """G* = GAN + mse_weight x MSE + perceptual (001 Eq. 3, 002 Eq. 5)."""
        gan = mse_bce(d(torch.cat([x, fake], 1)), True)
        mse = tf.mse_loss(fake, y)
        pcp = self.perceptual_loss(fake, y)
        return gan + self.loss.mse_weight * mse + pcp, {"gan": gan.item(), "mse": mse.item(),
                                                   "pcp": pcp.item(),
                                                   "l1": (fake - y).abs().mean().item()}


@register_method("dual_path")
class DualPath(_HRGanBase):
    """Dual-path GAN (001): see the module docstring. ``optim``: lr (G, 5e-5), lr_d (D, 2e-4),
    weight_decay (5e-4), betas, decay_every / decay_factor; ``loss``: pretrain_steps,
    pretrain_lr, mse_weight (1)."""

    Loss = DualPathLoss
    Optim = DualPathOptim
    NETWORKS = ("generator", "discriminator", "perceptual")

    def __init__(self, recipe: "Recipe") -> None:
        super().__init__(recipe, perceptual_blocks=slice(1, None))
        o = self.optim
        self.opt_g, self.sched_g = adam_with_decay(self.generator.parameters(), o)
        self.opt_d, self.sched_d = adam_with_decay(self.discriminator.parameters(), o,
                                                   lr=o.lr_d)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt_g": self.opt_g, "opt_d": self.opt_d, "opt_p": self.opt_p}

    def schedulers(self) -> dict[str, torch.optim.lr_scheduler.LRScheduler]:
        return {"sched_g": self.sched_g, "sched_d": self.sched_d}

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        if self.step < self.pretrain_steps:
            return self.pretrain_step(x)
        if self.step == self.pretrain_steps:
            self.init_from_pretrained(self.network("generator").encoder)
        self.freeze_perceptual()
        g, d = self.generator, self.discriminator
        fake_global = g(x)
        fake_local = stitch_quadrants(g(split_quadrants(x)))
        loss_d = self.d_loss(d, x, y, [fake_global, fake_local])
        self.optimize(self.opt_d, loss_d)
        lg, terms = self.g_loss(d, x, fake_global, y)
        ll, terms_local = self.g_loss(d, x, fake_local, y)
        loss_g = PATH_WEIGHTS[0] * lg + PATH_WEIGHTS[1] * ll
        self.optimize(self.opt_g, loss_g)
        return {"loss_d": loss_d.item(), "loss_g": loss_g.item(), **terms,
                "l1_local": terms_local["l1"]}


@register_method("dyefreenet")
class DyeFreeNetMethod(_HRGanBase):
    """DyeFreeNet (002): pretraining, then ``loss.primary_steps`` steps of the primary GAN
    (half resolution, lr ``optim.lr``), then the refinement GAN (initialised from the primary
    generator, the primary frozen, lr ``optim.lr_refine``) to the end. ``loss``:
    pretrain_steps, pretrain_lr, primary_steps, mse_weight (0.01).

    Raises:
        ValueError: the generator is not "dyefreenet".
    """

    Loss = DyeFreeNetLoss
    Optim = DyeFreeNetOptim
    NETWORKS = ("generator", "discriminator", "discriminator_x", "perceptual")

    def __init__(self, recipe: "Recipe") -> None:
        super().__init__(recipe, perceptual_blocks=slice(None))
        if recipe.generator["name"] != "dyefreenet":
            raise ValueError("the dyefreenet method trains the 'dyefreenet' cascade generator")
        o = self.optim
        self.primary_steps = int(self.loss.primary_steps)
        # discriminator_x judges the primary (half-resolution) output, discriminator the final
        self.discriminator_x = create_discriminator(recipe.discriminator["name"],
                                                    recipe.discriminator["config"])
        g = self.generator
        self.opt_g1, self.sched_g1 = adam_with_decay(g.primary.parameters(), o)
        self.opt_g2, self.sched_g2 = adam_with_decay(
            [*g.refine.parameters(), *g.upsample.parameters()], o, lr=o.lr_refine)
        self.opt_d1, self.sched_d1 = adam_with_decay(self.discriminator_x.parameters(), o)
        self.opt_d2, self.sched_d2 = adam_with_decay(self.discriminator.parameters(), o,
                                                     lr=o.lr_refine)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt_g1": self.opt_g1, "opt_g2": self.opt_g2, "opt_d1": self.opt_d1,
                "opt_d2": self.opt_d2, "opt_p": self.opt_p}

    def schedulers(self) -> dict[str, torch.optim.lr_scheduler.LRScheduler]:
        return {"sched_g1": self.sched_g1, "sched_g2": self.sched_g2,
                "sched_d1": self.sched_d1, "sched_d2": self.sched_d2}

    def stage(self) -> str:
        """"pretrain", "primary" or "refine" for the current step."""
        if self.step < self.pretrain_steps:
            return "pretrain"
        return "primary" if self.step < self.pretrain_steps + self.primary_steps else "refine"

    def _gan_step(self, d, opt_d, opt_g, x, fake, y) -> dict[str, float]:
        loss_d = self.d_loss(d, x, y, [fake])
        self.optimize(opt_d, loss_d)
        loss_g, terms = self.g_loss(d, x, fake, y)
        self.optimize(opt_g, loss_g)
        return {"loss_d": loss_d.item(), "loss_g": loss_g.item(), **terms}

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        stage = self.stage()
        g = self.network("generator")
        if stage == "pretrain":
            return self.pretrain_step(x)
        self.freeze_perceptual()
        if stage == "primary":
            if self.step == self.pretrain_steps:
                self.init_from_pretrained(g.primary.encoder)
            xh, yh = halve(x), halve(y)
            return self._gan_step(self.discriminator_x, self.opt_d1, self.opt_g1, xh,
                                  g.coarse(x), yh)
        if self.step == self.pretrain_steps + self.primary_steps:
            self._init_refinement(g)
        freeze(g.primary)   # every step, so resumed runs keep it frozen too
        with torch.no_grad():
            coarse = g.coarse(x)
        return self._gan_step(self.discriminator, self.opt_d2, self.opt_g2, x,
                              g.refined(coarse, x), y)

    def _init_refinement(self, g: DyeFreeNet) -> None:
        """The refinement generator starts from the trained primary one (002), every tensor
        whose shape matches (the first encoder block differs: 1 input channel, not C); the
        primary is frozen from here on (eval mode too, so its BatchNorm statistics stay those it
        was trained with). With residual generators the refinement's last conv is zeroed
        after the copy: it starts as the identity on the primary output instead of adding the
        primary's enhancement a second time (METHOD-REVIEW, DyeFreeNet 3)."""
        src = g.primary.state_dict()
        dst = g.refine.state_dict()
        dst.update({k: v for k, v in src.items() if k in dst and dst[k].shape == v.shape})
        g.refine.load_state_dict(dst)
        if g.residual:
            zero_last_conv(g.refine)
        freeze(g.primary)

    def on_step_end(self, step: int) -> None:
        stage = self.stage()
        if stage == "primary":
            self.sched_g1.step()
            self.sched_d1.step()
        elif stage == "refine":
            self.sched_g2.step()
            self.sched_d2.step()
