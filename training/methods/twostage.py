"""Two-stage neural contrast enhancement (Seo et al., seed 004_f128e01a994d2141.txt), robust to
misaligned NCCT / CECT pairs.

    * Stage 1: G(C->N) turns a real CECT into a synthetic NCCT, adversarially only, against a
      3-class discriminator D (real CECT / real NCCT / synthetic NCCT; Eqs. 1-2): it needs no
      pairs, and its output stays aligned with its CECT.
    * Stage 2: G(N->C), the model that ships, learns synthetic NCCT -> real CECT with
      lambda x L1 + perceptual loss (Eqs. 3-5, lambda = 10).
    * Perceptual network: a VGG16-BN-shaped classifier trained here (first ``pretrain_steps``
      steps) to tell NCCT from CECT on the training set; features after its first four
      max-pools, weights 1/32, 1/16, 1/8, 1/4, each |.|_1 normalised by W x H x C (Eq. 4).
    * Generators: six SPADE residual blocks (512, 512, 256, 128, 64, 32 channels), each followed
      by bilinear upsampling; the input (3 consecutive slices) conditions every SPADE block and
      is concatenated after every upsampling; group norm, LeakyReLU 0.2 (Sec. 3.3, Fig. 4).
    * D: DCGAN's discriminator with its strided convs replaced by conv + bilinear
      downsampling, group norm, LeakyReLU 0.2, channels 64 ... 2048; class logits averaged over
      the last feature map.

Variants (``loss.variant``): "S" (stage 1 for ``loss.stage1_steps`` steps, then stage 2 with
G(C->N) frozen; the paper's Ours-S), "J" (both stages every step, end to end; Ours-J), and the
paper's baselines "single" (G(N->C) with an adversarial loss only, against a real / synthetic
CECT discriminator) and "cycle" (CycleGAN with the same networks, L1 + perceptual cycle loss).

Our choices where the paper is silent (written in the recipes too): the generators see and
predict one window (W 300 / L 50 in [-1, 1], as 256 x 256 in the paper), output the centre
slice (the paper outputs three; the runtime stitches one output per slice); the SPADE hidden
conv has ``hidden`` channels; group norm uses gcd(32, C) groups; adversarial terms are
cross-entropy on class logits for every variant.
"""
from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn
from torch.nn import functional as tf

from ..registry import (
    create_discriminator,
    create_generator,
    register_discriminator,
    register_generator,
    register_method,
)
from ..slicewise import SliceWise, slice_stacks
from .base import Method, adam_with_decay, freeze, require_same_window

if TYPE_CHECKING:
    from ..recipe import Recipe

CLASS_CECT, CLASS_NCCT, CLASS_SYNTHETIC_NCCT = 0, 1, 2   # the 3 classes of D (Eq. 1)
PERCEPTUAL_WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4)        # w_1..w_4 of Eq. 4 (Sec. 4.1)
VARIANTS = ("S", "J", "single", "cycle")


def group_norm(channels: int, affine: bool = True) -> nn.GroupNorm:
    """Group norm with gcd(32, C) groups (32 where C allows, as is usual)."""
    return nn.GroupNorm(math.gcd(32, channels), channels, affine=affine)


class SPADE(nn.Module):
    """SPADE (Park et al. 2019) with group norm: norm(x) * (1 + gamma(c)) + beta(c), gamma and
    beta predicted from the conditioning image c resized (bilinear) to x."""

    def __init__(self, channels: int, cond_channels: int, hidden: int = 128) -> None:
        super().__init__()
        self.norm = group_norm(channels, affine=False)
        self.shared = nn.Sequential(nn.Conv2d(cond_channels, hidden, 3, padding=1),
                                    nn.LeakyReLU(0.2, True))
        self.gamma = nn.Conv2d(hidden, channels, 3, padding=1)
        self.beta = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        cond = tf.interpolate(cond, size=x.shape[-2:], mode="bilinear", align_corners=False)
        a = self.shared(cond)
        return self.norm(x) * (1 + self.gamma(a)) + self.beta(a)


class SPADEResBlock(nn.Module):
    """SPADE residual block (004 Fig. 4b): two SPADE-LeakyReLU-conv3x3 steps, learned 1x1
    shortcut (after SPADE) when the channel count changes."""

    def __init__(self, cin: int, cout: int, cond_channels: int, hidden: int) -> None:
        super().__init__()
        mid = min(cin, cout)
        self.n0, self.c0 = SPADE(cin, cond_channels, hidden), nn.Conv2d(cin, mid, 3, padding=1)
        self.n1, self.c1 = SPADE(mid, cond_channels, hidden), nn.Conv2d(mid, cout, 3, padding=1)
        self.skip = None
        if cin != cout:
            self.ns, self.skip = SPADE(cin, cond_channels, hidden), nn.Conv2d(cin, cout, 1,
                                                                              bias=False)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        dx = self.c0(tf.leaky_relu(self.n0(x, cond), 0.2))
        dx = self.c1(tf.leaky_relu(self.n1(dx, cond), 0.2))
        s = x if self.skip is None else self.skip(self.ns(x, cond))
        return s + dx


@register_generator("spade2d")
class SpadeGenerator(SliceWise):
    """The generators of 004 (G(N->C) and G(C->N)).

    Args:
        in_channels: input windows per slice (1).
        out_channels: output channels (1: the centre slice).
        channels: output channels of the SPADE residual blocks (paper: 512, 512, 256, 128, 64,
            32); one bilinear x2 upsampling after each, so inputs are a multiple of
            2 ** len(channels) in-plane (64 in the paper's 256 x 256).
        hidden: SPADE conditioning conv channels.
        context: neighbouring slices per side fed as channels (1: 3 consecutive slices).
        residual: channel 0 = the input's centre slice + the network's output, last conv
            zeroed: G(C->N) then starts as the identity and makes "only small modifications",
            which the paper relies on (our option: METHOD-REVIEW, two-stage 1).
        full_res: conv3x3 + LeakyReLU layers (``channels[-1]`` wide) after the output's group
            norm, on its features concatenated with the raw input, then the output conv (our
            option; 0 = the paper's single output conv). The paper's output conv sees the input
            only through a group norm, which scales it by each image's feature statistics, so
            a residual generator hardly learns to cancel its input's voxel noise: trained on
            real NCCT -> noise-free NCCT phantom slices for 400 steps it leaves 0.995 of the
            noise, with ``full_res`` 2 0.82 (two_stage_small's header for the whole method).

    The network starts from the input bilinearly downsampled by 2 ** len(channels), and
    concatenates the (resized) input after every upsampling.
    Shapes: (B, in_channels, d, h, w) -> (B, out_channels, d, h, w).
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1,
                 channels: Sequence[int] = (512, 512, 256, 128, 64, 32), hidden: int = 128,
                 context: int = 1, residual: bool = False, full_res: int = 0) -> None:
        super().__init__()
        if int(full_res) < 0:
            raise ValueError(f"spade2d full_res must be >= 0, got {full_res}")
        self.context = int(context)
        cond = in_channels * (2 * self.context + 1)
        self.levels = len(channels)
        self.head = nn.Conv2d(cond, int(channels[0]), 3, padding=1)
        blocks, cin = [], int(channels[0])
        for c in channels:
            blocks.append(SPADEResBlock(cin, int(c), cond, hidden))
            cin = int(c) + cond
        self.blocks = nn.ModuleList(blocks)
        self.full_res = int(full_res)
        if self.full_res:
            self.out_norm = nn.Sequential(group_norm(cin), nn.LeakyReLU(0.2, True))
            layers: list[nn.Module] = []
            cin += cond
            for _ in range(self.full_res):
                layers += [nn.Conv2d(cin, int(channels[-1]), 3, padding=1),
                           nn.LeakyReLU(0.2, True)]
                cin = int(channels[-1])
            self.out = nn.Sequential(*layers, nn.Conv2d(cin, out_channels, 3, padding=1),
                                     nn.Tanh())
        else:
            self.out = nn.Sequential(group_norm(cin), nn.LeakyReLU(0.2, True),
                                     nn.Conv2d(cin, out_channels, 3, padding=1), nn.Tanh())
        self.set_residual(residual)

    def size_multiple(self) -> tuple[int, int, int]:
        return (1, 2 ** self.levels, 2 ** self.levels)

    def forward2d(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        k = 2 ** self.levels
        feat = self.head(tf.interpolate(x, size=(h // k, w // k), mode="bilinear",
                                        align_corners=False))
        for blk in self.blocks:
            feat = tf.interpolate(blk(feat, x), scale_factor=2.0, mode="bilinear",
                                  align_corners=False)
            feat = torch.cat([feat, tf.interpolate(x, size=feat.shape[-2:], mode="bilinear",
                                                   align_corners=False)], dim=1)
        if self.full_res:
            feat = torch.cat([self.out_norm(feat), x], dim=1)
        return self.out(feat)


@register_discriminator("dcgan_classes")
class DCGANClassifier(nn.Module):
    """004's discriminator: DCGAN's, with every strided conv replaced by conv3x3 + bilinear
    x0.5 downsampling; group norm (not on the first layer), LeakyReLU 0.2; class logits from a
    1x1 conv averaged over the last map.

    Args:
        in_channels: windows per slice; ``context`` neighbours per side are stacked as in the
            generators.
        channels: per-layer channels (paper: 64, 128, 256, 512, 1024, 2048).
        num_classes: 3 (real CECT / real NCCT / synthetic NCCT) or 2 (real / synthetic).
        context: neighbouring slices per side.

    Shapes: (B, in_channels, d, h, w) -> logits (B*d, num_classes), slice-major.
    """

    def __init__(self, in_channels: int = 1,
                 channels: Sequence[int] = (64, 128, 256, 512, 1024, 2048),
                 num_classes: int = 3, context: int = 1) -> None:
        super().__init__()
        self.context = int(context)
        layers: list[nn.Module] = []
        cin = in_channels * (2 * self.context + 1)
        for i, c in enumerate(channels):
            layers += [nn.Conv2d(cin, int(c), 3, padding=1)]
            if i:
                layers.append(group_norm(int(c)))
            layers += [nn.LeakyReLU(0.2, True), nn.Upsample(scale_factor=0.5, mode="bilinear",
                                                            align_corners=False)]
            cin = int(c)
        self.features = nn.Sequential(*layers)
        self.classify = nn.Conv2d(cin, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(slice_stacks(x, self.context))).mean(dim=(2, 3))


class VGGClassifier(nn.Module):
    """VGG16-BN-shaped NCCT / CECT classifier (004's perceptual network, trained in-project).

    Args:
        in_channels: image channels (1 window).
        widths: channels of the five conv stages (VGG16: 64, 128, 256, 512, 512); stage i has
            2, 2, 3, 3, 3 conv3x3 + BN + ReLU layers, each stage ends in a 2x2 max-pool.

    ``features(x)``: x (N, C, h, w) -> the maps after the first four max-pools.
    ``forward(x)``: (N, 2) logits (NCCT = 0, CECT = 1) from global average pooling.
    """

    def __init__(self, in_channels: int = 1, widths: Sequence[int] = (64, 128, 256, 512, 512)
                 ) -> None:
        super().__init__()
        stages, cin = [], in_channels
        for n, c in zip((2, 2, 3, 3, 3), widths):
            layers: list[nn.Module] = []
            for _ in range(n):
                layers += [nn.Conv2d(cin, int(c), 3, padding=1), nn.BatchNorm2d(int(c)),
                           nn.ReLU(True)]
                cin = int(c)
            layers.append(nn.MaxPool2d(2))
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.head = nn.Linear(cin, 2)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for stage in self.stages[:4]:
            x = stage(x)
            out.append(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return self.head(x.mean(dim=(2, 3)))


def perceptual_loss(net: VGGClassifier, a: torch.Tensor, b: torch.Tensor,
                    weights: Sequence[float] = PERCEPTUAL_WEIGHTS) -> torch.Tensor:
    """Eq. 4: sum_i w_i |phi_i(a) - phi_i(b)|_1 / (W_i H_i C_i), averaged over the batch.

    Args:
        net: the trained classifier (its features after the first four max-pools).
        a, b: (B, C, d, h, w) images in [-1, 1] (slices go into the batch), h and w multiples
            of 16.
    """
    fa, fb = net.features(slice_stacks(a, 0)), net.features(slice_stacks(b, 0))
    return sum(w * (x - y).abs().mean() for w, x, y in zip(weights, fa, fb))


def class_loss(logits: torch.Tensor, cls: int) -> torch.Tensor:
    """Cross-entropy H(1_cls, D(.)) of every row of (N, K) logits against one class."""
    return tf.cross_entropy(logits, torch.full((len(logits),), cls, dtype=torch.long,
                                               device=logits.device))


def stage1_d_loss(d: nn.Module, real_cect: torch.Tensor, synthetic_ncct: torch.Tensor,
                  real_ncct: torch.Tensor) -> torch.Tensor:
    """D's objective in stage 1 (Eq. 1): H(1_C, D(real CECT)) + H(1_S, D(G(C->N)(x))) +
    H(1_N, D(real NCCT)); the synthetic NCCT is detached."""
    return (class_loss(d(real_cect), CLASS_CECT)
            + class_loss(d(synthetic_ncct.detach()), CLASS_SYNTHETIC_NCCT)
            + class_loss(d(real_ncct), CLASS_NCCT))


def stage1_g_loss(d: nn.Module, synthetic_ncct: torch.Tensor) -> torch.Tensor:
    """G(C->N)'s objective in stage 1 (Eq. 2): H(1_N, D(G(C->N)(x))): its output should be
    taken for a real NCCT."""
    return class_loss(d(synthetic_ncct), CLASS_NCCT)


@dataclasses.dataclass(frozen=True)
class TwoStageLoss:
    """004's settings: ``variant`` (S, J, single, cycle), ``l1_weight`` (lambda of Eq. 5, 10),
    the perceptual classifier's ``pretrain_steps`` at ``pretrain_lr`` and its
    ``perceptual_widths`` (VGG16: 64, 128, 256, 512, 512), ``stage1_steps`` (variant S).

    ``identity_weight`` (our option, 0 = the paper): stage 1 also asks G(C->N) to return a
    real NCCT unchanged, ``identity_weight`` x |G(C->N)(NCCT) - NCCT|_1 (CycleGAN's identity
    loss, Zhu et al. 2017; it needs no pairs, the NCCT is another patient's). Measured here:
    the adversarial term alone removes the blood-pool enhancement but also darkens soft tissue
    by 25-35 HU (its discriminator's group norms hide global HU offsets), which stage 2 then
    learns to add to every real NCCT.

    ``paired_weight`` (our option, 0 = the paper): where the pairs are registered (the
    phantom, ``vcesdk-data store`` after registration), stage 1 also asks G(C->N)(CECT) to be
    its own NCCT, ``paired_weight`` x |G(C->N)(CECT) - NCCT|_1. The paper's stage 1 is
    adversarial only because its pairs are misaligned; at the small recipes' size that stage 1
    is what fails (METHOD-REVIEW: a perfect stage 1 takes stage 2 from 24.1 to 31.9 dB).

    ``paired_sigma`` (our option, 0 = a plain L1): the paired term compares both images after
    an in-plane Gaussian blur of this sigma (voxels). The scanned NCCT's noise is independent
    of the CECT's, so a plain L1 to it makes G(C->N) a denoiser, and stage 2 would learn on
    inputs smoother than a real NCCT. On blurred images the term aligns HU, not voxel noise:
    G(C->N)(CECT) keeps 12.8-13.2 of the CECT's 14.6 HU of noise (sigma 1.5, PVP phantoms)."""

    variant: str = "S"
    l1_weight: float = 10.0
    pretrain_steps: int = 0
    pretrain_lr: float = 1e-3
    perceptual_widths: tuple[int, ...] = (64, 128, 256, 512, 512)
    stage1_steps: int = 0
    identity_weight: float = 0.0
    paired_weight: float = 0.0
    paired_sigma: float = 0.0


def blur_in_plane(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur along H and W of a (B, C, D, H, W) tensor (sigma in voxels,
    kernel truncated at 3 sigma, replicated borders); same shape, float32 (computed in
    float32 also under autocast)."""
    r = max(1, int(math.ceil(3.0 * sigma)))
    t = torch.arange(-r, r + 1, dtype=torch.float32, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    b, c, d, h, w = x.shape
    with torch.autocast(x.device.type, enabled=False):
        y = x.float().reshape(b * c * d, 1, h, w)
        y = tf.conv2d(tf.pad(y, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
        y = tf.conv2d(tf.pad(y, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return y.reshape(b, c, d, h, w)


@register_method("two_stage")
class TwoStage(Method):
    """Seo et al. (004): see the module docstring. ``loss``: variant, l1_weight (lambda, 10),
    pretrain_steps (perceptual classifier), stage1_steps (variant S), pretrain_lr,
    identity_weight, paired_weight and paired_sigma (stage-1 terms of variants S / J, see
    :class:`TwoStageLoss`).

    Raises:
        ValueError: unknown variant, model_io not one window mapped onto itself, a negative
            identity_weight / paired_weight, either set for a variant without stage 1, a
            negative or non-finite paired_sigma, or data.noise_free_target for the paper's
            baselines (single / cycle).
    """

    Loss = TwoStageLoss
    MIN_WINDOWS_PER_PROCESS = 2   # the adversarial terms see another window's NCCT (rolled)
    # data.noise_free_target, variants S and J (set in __init__): stage 1 and the adversarial
    # terms see the scanned CECT; stage 2 maps G(C->N)(scanned CECT), whose noise is the
    # CECT's own, to the noise-free CECT. With the scanned CECT as its target stage 2 learns
    # to pass noise through (NCCT noise kept 1.07 on the held-out set); with the noise-free
    # CECT fed to G(C->N) too, its input is smoother than a real NCCT (kept 1.04, no gain)
    NOISY_AND_CLEAN_TARGET = False
    NETWORKS = ("generator", "discriminator", "backward_generator", "perceptual",
                "discriminator_x")

    def __init__(self, recipe: "Recipe") -> None:
        super().__init__(recipe)
        io, loss = recipe.model_io, self.loss
        require_same_window(io["windows"], io["hu_range"], "the two-stage method")
        self.variant = str(loss.variant)
        if self.variant not in VARIANTS:
            raise ValueError(f"loss.variant must be one of {VARIANTS}, got {self.variant!r}")
        self.NOISY_AND_CLEAN_TARGET = self.variant in ("S", "J")
        sigma = float(loss.paired_sigma)
        if not (sigma >= 0 and math.isfinite(sigma)):
            raise ValueError(f"loss.paired_sigma must be a finite value >= 0, got {sigma:g}")
        for key in ("identity_weight", "paired_weight"):
            value = float(getattr(loss, key))
            if value < 0:
                raise ValueError(f"loss.{key} must be >= 0, got {value:g}")
            if value and self.variant not in ("S", "J"):
                raise ValueError(f"loss.{key} is a stage-1 term of variants S and J; variant "
                                 f"{self.variant!r} has no stage 1 (set it to 0)")
        if self.variant in ("single", "cycle") and recipe.data.get("noise_free_target"):
            raise ValueError(f"variant {self.variant!r} is the paper's baseline against the "
                             f"scanned CECT: set data.noise_free_target to false")
        g_name, g_cfg = recipe.generator["name"], dict(recipe.generator["config"])
        self.generator = create_generator(g_name, g_cfg)                 # G(N->C)
        self.backward_generator = create_generator(g_name, g_cfg)        # G(C->N)
        d_name, d_cfg = recipe.discriminator["name"], dict(recipe.discriminator["config"])
        classes = 3 if self.variant in ("S", "J") else 2
        self.discriminator = create_discriminator(d_name, {**d_cfg, "num_classes": classes})
        if self.variant == "cycle":   # D_N for the C->N direction
            self.discriminator_x = create_discriminator(d_name, {**d_cfg, "num_classes": 2})
        self.perceptual = VGGClassifier(int(g_cfg.get("in_channels", 1)),
                                        loss.perceptual_widths)
        self.l1_weight = float(loss.l1_weight)
        self.pretrain_steps = int(loss.pretrain_steps)
        self.stage1_steps = int(loss.stage1_steps)
        gens = [*self.generator.parameters(), *self.backward_generator.parameters()]
        self.opt_g, self.sched_g = adam_with_decay(gens, self.optim)
        ds = [*self.discriminator.parameters(),
              *(self.discriminator_x.parameters() if self.variant == "cycle" else [])]
        self.opt_d, self.sched_d = adam_with_decay(ds, self.optim)
        self.opt_p = torch.optim.Adam(self.perceptual.parameters(), lr=float(loss.pretrain_lr))

    def pair_terms(self) -> list[str]:
        return ["loss.paired_weight"] if self.loss.paired_weight else []

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt_g": self.opt_g, "opt_d": self.opt_d, "opt_p": self.opt_p}

    def schedulers(self) -> dict[str, torch.optim.lr_scheduler.LRScheduler]:
        return {"sched_g": self.sched_g, "sched_d": self.sched_d}

    def stage(self) -> str:
        """What the current step trains: "pretrain", "stage1", "stage2" or the variant."""
        if self.step < self.pretrain_steps:
            return "pretrain"
        if self.variant == "S":
            return "stage1" if self.step < self.pretrain_steps + self.stage1_steps else "stage2"
        return self.variant

    def _pretrain(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        self.perceptual.train()
        logits = self.perceptual(torch.cat([slice_stacks(x, 0), slice_stacks(y, 0)]))
        n = len(logits) // 2
        loss = class_loss(logits[:n], 0) + class_loss(logits[n:], 1)
        self.optimize(self.opt_p, loss)
        acc = ((logits[:n].argmax(1) == 0).float().mean() + (logits[n:].argmax(1) == 1)
               .float().mean()) / 2
        return {"pcp_ce": loss.item(), "pcp_accuracy": acc.item()}

    def _rec(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, ...]:
        l1 = (pred - target).abs().mean()
        pcp = perceptual_loss(self.perceptual, pred, target)
        return self.l1_weight * l1 + pcp, l1, pcp     # Eq. 5

    def _step_d(self, loss: torch.Tensor) -> None:
        self.optimize(self.opt_d, loss)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        # y: the scanned CECT, or with data.noise_free_target (scanned, noise-free) channels
        y, y_goal = (y[:, :1], y[:, 1:]) if y.shape[1] == 2 else (y, y)
        stage = self.stage()
        if stage == "pretrain":
            return self._pretrain(x, y)
        freeze(self.perceptual)   # every step, so resumed runs are frozen too
        # the NCCT the adversarial terms see is another patient's (unpaired, as in stage 1)
        x_unpaired = x.roll(1, dims=0) if len(x) > 1 else x
        g_nc, g_cn, d = self.generator, self.backward_generator, self.discriminator
        out: dict[str, float] = {}
        if stage in ("stage1", "J"):
            syn = g_cn(y)
            loss_d = stage1_d_loss(d, y, syn, x_unpaired)
            self._step_d(loss_d)
            adv = stage1_g_loss(d, syn)
            loss_g = adv
            if self.loss.identity_weight:   # a real NCCT passes G(C->N) unchanged
                ident = (g_cn(x_unpaired) - x_unpaired).abs().mean()
                loss_g = loss_g + self.loss.identity_weight * ident
                out.update(identity=ident.item())
            if self.loss.paired_weight:     # registered pairs: G(C->N)(CECT) = its NCCT
                sigma = float(self.loss.paired_sigma)
                paired = ((blur_in_plane(syn, sigma) - blur_in_plane(x, sigma)) if sigma
                          else (syn - x)).abs().mean()
                loss_g = loss_g + self.loss.paired_weight * paired
                out.update(paired=paired.item())
            if stage == "J":   # end to end: stage 2's loss also trains G(C->N)
                rec, l1, pcp = self._rec(g_nc(syn), y_goal)
                loss_g = loss_g + rec
                out.update(l1=l1.item(), pcp=pcp.item())
            out.update(loss_d=loss_d.item(), adv=adv.item())
        elif stage == "stage2":
            with torch.no_grad():
                syn = g_cn(y)     # G(C->N) frozen (Ours-S)
            loss_g, l1, pcp = self._rec(g_nc(syn), y_goal)
            out.update(l1=l1.item(), pcp=pcp.item())
        elif stage == "single":
            fake = g_nc(x)
            self._step_d(class_loss(d(y), 0) + class_loss(d(fake.detach()), 1))
            loss_g = class_loss(d(fake), 0)
            out.update(l1=(fake - y).abs().mean().item())
        else:   # cycle: CycleGAN with L1 + perceptual cycle terms
            fake_c, fake_n = g_nc(x), g_cn(y)
            dx = self.discriminator_x
            self._step_d(class_loss(d(y), 0) + class_loss(d(fake_c.detach()), 1)
                         + class_loss(dx(x), 0) + class_loss(dx(fake_n.detach()), 1))
            cyc_x, l1_x, _ = self._rec(g_cn(fake_c), x)
            cyc_y, l1_y, _ = self._rec(g_nc(fake_n), y)
            loss_g = class_loss(d(fake_c), 0) + class_loss(dx(fake_n), 0) + cyc_x + cyc_y
            out.update(cycle=(l1_x + l1_y).item(), l1=(fake_c - y).abs().mean().item())
        self.optimize(self.opt_g, loss_g)
        out["loss_g"] = loss_g.item()
        return out
