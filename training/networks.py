"""The generic networks (registered in :mod:`.registry`): the U-Nets and PatchGANs of the baselines.

pix2pix3D (Choi et al. 2021, seed 003, "Deep learning model development" and Supplementary
Fig. S1):
    * generator: 3D U-Net. Encoder block = strided conv3d + LeakyReLU(0.2) + InstanceNorm;
      decoder block = nearest-neighbour upsample + conv3d (resize-convolution, against
      checkerboard artefacts) + ReLU + InstanceNorm, then concatenation with encoder block
      n - i; output Tanh.
    * discriminator: 3D PatchGAN whose conv module is the generator's encoder block.
"""
from __future__ import annotations

from typing import List, Sequence

import torch
from torch import nn

from .registry import register_discriminator, register_generator


def zero_last_conv(net: nn.Module) -> None:
    """Zero the weight and bias of the last convolution registered in ``net``: a generator
    with a residual output (input + network) then starts as the identity, as the demo's
    enhancement model starts at "no enhancement" (METHOD-REVIEW: generators that must redraw
    the whole image cannot even copy the NCCT at the small recipes' size)."""
    convs = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]
    if not convs:
        raise ValueError(f"{type(net).__name__} has no convolution to zero")
    with torch.no_grad():
        convs[-1].weight.zero_()
        if convs[-1].bias is not None:
            convs[-1].bias.zero_()

def add_input(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Residual output: channel 0 of ``out`` plus channel 0 of the input ``x`` (the first input
    window, which must be the output's window), other output channels as they are.
    (B, C', ...) and (B, C, ...) -> (B, C', ...)."""
    return torch.cat([out[:, :1] + x[:, :1], out[:, 1:]], dim=1)


NORMS = ("instance", "batch", "none")
"""Feature normalisations of the generators: "instance" (the papers'; statistics of each window,
so the features depend on the field of view: a network trained on crops sees other statistics
on whole planes), "batch" (running statistics at inference) or "none"."""


def norm_layer(channels: int, kind: str = "instance", dims: int = 3) -> nn.Module:
    """The normalisation `kind` (one of :data:`NORMS`) for `dims`-D (2 or 3) feature maps of
    `channels` channels: InstanceNorm (affine), BatchNorm or identity.

    Raises:
        ValueError: an unknown `kind`.
    """
    if kind == "instance":
        return (nn.InstanceNorm3d if dims == 3 else nn.InstanceNorm2d)(channels, affine=True)
    if kind == "batch":
        return (nn.BatchNorm3d if dims == 3 else nn.BatchNorm2d)(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {kind!r}")


def _kernel_padding(stride: Sequence[int], planar: bool) -> tuple[tuple, tuple]:
    """Kernel 4 on stride-2 axes, 3 otherwise, padding 1; planar: depth kernel 1, padding 0
    (each slice on its own: a 2D convolution)."""
    kernel = tuple(4 if s == 2 else 3 for s in stride)
    if planar:
        return (1, *kernel[1:]), (0, 1, 1)
    return kernel, (1, 1, 1)


class EncoderBlock3d(nn.Sequential):
    """Strided conv3d (kernel 4, padding 1) + LeakyReLU(0.2) + InstanceNorm (Choi et al.)."""

    def __init__(self, cin: int, cout: int, stride: Sequence[int], norm: bool = True,
                 planar: bool = False, norm_kind: str = "instance") -> None:
        kernel, padding = _kernel_padding(stride, planar)
        layers: list[nn.Module] = [
            nn.Conv3d(cin, cout, kernel, stride=tuple(stride), padding=padding),
            nn.LeakyReLU(0.2, inplace=True)]
        if norm:
            layers.append(norm_layer(cout, norm_kind))
        super().__init__(*layers)


def upsample_nearest(x: torch.Tensor, scale: List[int]) -> torch.Tensor:
    """Nearest-neighbour upsampling of (N, C, D, H, W) by integer factors (sd, sh, sw).

    out[..., z, y, x] = x[..., z // sd, y // sh, x // sw]: the same values as
    ``F.interpolate(x, scale_factor=scale, mode="nearest")``, written as a broadcast and a
    reshape (ONNX: MatMul along x, Expand + Reshape along z and y, which ONNX Runtime runs as
    row copies); ONNX Runtime's 5D nearest ``Resize`` took 64 % of the demo U-Net's CPU time
    (benchmarks/ort_cpu_options.py, ONNX Runtime 1.32 profile, this project's 2-core CPU).
    """
    if scale[0] == 1 and scale[1] == 1 and scale[2] == 1:
        return x
    sw = scale[2]
    if not torch.jit.is_scripting():  # (TorchScript skips this block)
        if sw != 1 and torch.onnx.is_in_onnx_export():
            # ONNX Runtime broadcasts an innermost axis element by element (Expand, Concat:
            # 2 GB/s here); along x the copy is a product with a 0/1 matrix instead,
            # u[i, j] = (j // sw == i), exact for finite values and run as one GEMM
            w = x.shape[-1]
            cols = torch.arange(w * sw, device=x.device) // sw
            u = (cols[None, :] == torch.arange(w, device=x.device)[:, None]).to(x.dtype)
            x = torch.matmul(x, u)
            sw = 1
    n, c, d, h, w = x.shape
    y = x.reshape(n, c, d, 1, h, 1, w, 1).expand(n, c, d, scale[0], h, scale[1], w, sw)
    return y.reshape(n, c, d * scale[0], h * scale[1], w * sw)


class DecoderBlock3d(nn.Module):
    """Nearest upsample + conv3d (resize-convolution) + ReLU + InstanceNorm, then skip concat."""

    def __init__(self, cin: int, cout: int, scale: Sequence[int], planar: bool = False,
                 norm_kind: str = "instance") -> None:
        super().__init__()
        self.scale = [int(s) for s in scale]
        kernel, padding = _kernel_padding((1, 1, 1), planar)
        self.conv = nn.Conv3d(cin, cout, kernel, padding=padding)
        self.act = nn.ReLU(inplace=True)
        self.norm = norm_layer(cout, norm_kind)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = upsample_nearest(x, self.scale)
        x = self.norm(self.act(self.conv(x)))
        return x if skip is None else torch.cat([x, skip], dim=1)


@register_generator("unet3d")
class UNet3D(nn.Module):
    """pix2pix3D generator (Choi et al. 2021): 3D U-Net with resize-convolution and Tanh.

    Args:
        in_channels: input channels (3 windows in the paper).
        out_channels: output channels.
        base: channels of the first encoder block; doubled per level up to max_channels.
        strides: per-level (z, y, x) downsampling strides (2 or 1); their product per axis is
            the size divisor (see :meth:`size_multiple`). The paper uses 2 on every axis.
        max_channels: channel cap.
        planar: every kernel 1 deep (z strides must be 1): a 2D U-Net applied slice by slice
            (registered as "unet2d" for the pix2pix 2D baseline).
        residual: output channel 0 = input channel 0 + the network's (Tanh) output, the last
            conv zero-initialised so training starts at the identity (our option, not the
            paper's; the first input window must be the output's).
        norm: "instance" (the paper's), "batch" or "none" (see :data:`NORMS`; InstanceNorm
            normalises each window by its own statistics, so a network trained on crops sees
            other statistics on the whole-plane windows of inference).
        zero_init: zero the last conv (our option): a residual *target* (sCECT - NCCT) then
            starts at "no enhancement", as ``residual`` starts an image target at the identity.
        input_skip: a full-resolution level (our option, Ronneberger et al. 2015's U-Net has
            one): the input joins the upsampled last decoder level through two 3 x 3 (x 3)
            convs of ``base`` channels before the output conv. Without it (the paper's network)
            the first encoder block already halves the resolution and the output is a nearest
            upsampling of half-resolution features: it cannot follow voxel-scale structure
            such as the input's noise, which a model must remove to pass the ~62 % of the
            phantom headroom an exact enhancer keeps.
        head_channels: channels of the ``input_skip`` level's two convs (0: ``base``); the
            full-resolution capacity a denoising output needs (our option).

    Raises:
        ValueError: an unknown norm, strides that are not (z, y, x) triples of 1 or 2, z
            strides on a planar network, a negative head_channels.

    Shapes: input float32 (B, in_channels, d, h, w) in [-1, 1] with each of d, h, w a multiple
    of :meth:`size_multiple`; output (B, out_channels, d, h, w) in [-1, 1].
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 1, base: int = 64,
                 strides: Sequence[Sequence[int]] = ((2, 2, 2),) * 4,
                 max_channels: int = 512, planar: bool = False, residual: bool = False,
                 norm: str = "instance", zero_init: bool = False, input_skip: bool = False,
                 head_channels: int = 0) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
        self.residual = bool(residual)
        strides = [tuple(int(v) for v in s) for s in strides]
        if not strides or any(len(s) != 3 or any(v not in (1, 2) for v in s) for s in strides):
            raise ValueError(f"strides must be a list of (z, y, x) triples of 1 or 2, got "
                             f"{strides}")
        if planar and any(s[0] != 1 for s in strides):
            raise ValueError(f"a planar (2D) network needs z strides of 1, got {strides}")
        if int(head_channels) < 0:
            raise ValueError(f"head_channels must be 0 (base) or positive, got {head_channels}")
        chans = [min(base * 2 ** i, max_channels) for i in range(len(strides))]
        self.strides = strides
        self.encoders = nn.ModuleList()
        cin = in_channels
        for i, (c, s) in enumerate(zip(chans, strides)):
            self.encoders.append(EncoderBlock3d(cin, c, s, norm=i > 0, planar=planar,
                                                norm_kind=norm))
            cin = c
        self.decoders = nn.ModuleList()
        # decoder i upsamples the output of level n-i and concatenates encoder level n-i-1
        for i in range(len(strides) - 1, 0, -1):
            cout = chans[i - 1]
            self.decoders.append(DecoderBlock3d(cin, cout, strides[i], planar=planar,
                                                norm_kind=norm))
            cin = cout + chans[i - 1]
        self.final_scale = [int(v) for v in strides[0]]
        kernel, padding = _kernel_padding((1, 1, 1), planar)
        self.input_skip = bool(input_skip)
        if self.input_skip:
            head = int(head_channels) or chans[0]
            self.input_head = nn.Sequential(
                nn.Conv3d(cin + in_channels, head, kernel, padding=padding),
                nn.LeakyReLU(0.2, inplace=True),
                nn.Conv3d(head, head, kernel, padding=padding),
                nn.LeakyReLU(0.2, inplace=True))
            cin = head
        else:  # TorchScript compiles both branches of forward: the attribute must exist
            self.input_head = nn.Identity()
        self.final = nn.Conv3d(cin, out_channels, kernel, padding=padding)
        if self.residual or zero_init:
            zero_last_conv(self)

    def size_multiple(self) -> tuple[int, int, int]:
        """(d, h, w) divisor every input size must be a multiple of."""
        m = [1, 1, 1]
        for s in self.strides:
            m = [a * b for a, b in zip(m, s)]
        return tuple(m)  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips, h = [], x
        for enc in self.encoders:
            h = enc(h)
            skips.append(h)
        skips.pop()  # the bottleneck is h itself
        for dec in self.decoders:
            h = dec(h, skips.pop())
        h = upsample_nearest(h, self.final_scale)
        if self.input_skip:
            h = self.input_head(torch.cat([h, x], dim=1))
        out = torch.tanh(self.final(h))
        return add_input(out, x) if self.residual else out


@register_discriminator("patchgan3d")
class PatchGAN3D(nn.Module):
    """3D PatchGAN (pix2pix; Choi et al. 2021): conditional, on (input, output) concatenated.

    Args:
        in_channels: channels of input + output concatenated.
        base: channels of the first block, doubled per block (cap 512).
        strides: per-block (z, y, x) strides; the paper's 70 x 70 x 4 receptive field comes
            from three stride-2 blocks in-plane.

    Returns logits (B, 1, d', h', w'), one per patch (no sigmoid; use BCE-with-logits).
    """

    def __init__(self, in_channels: int = 4, base: int = 64,
                 strides: Sequence[Sequence[int]] = ((1, 2, 2), (2, 2, 2), (2, 2, 2)),
                 planar: bool = False) -> None:
        super().__init__()
        if planar and any(int(s[0]) != 1 for s in strides):
            raise ValueError(f"a planar (2D) discriminator needs z strides of 1, got {strides}")
        layers: list[nn.Module] = []
        cin = in_channels
        for i, s in enumerate(strides):
            c = min(base * 2 ** i, 512)
            layers.append(EncoderBlock3d(cin, c, s, norm=i > 0, planar=planar))
            cin = c
        layers.append(EncoderBlock3d(cin, min(cin * 2, 512), (1, 1, 1), planar=planar))
        kernel, padding = _kernel_padding((1, 1, 1), planar)
        layers.append(nn.Conv3d(min(cin * 2, 512), 1, kernel, padding=padding))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@register_generator("unet2d")
class UNet2D(UNet3D):
    """pix2pix 2D generator (Isola et al. 2017 as used by the seeds' 2D baselines): the U-Net
    above with 1-deep kernels, so each slice is translated on its own; (B, C, d, h, w) in and
    out, d usually 1. Strides are (y, x) pairs."""

    def __init__(self, in_channels: int = 3, out_channels: int = 1, base: int = 64,
                 strides: Sequence[Sequence[int]] = ((2, 2),) * 8, max_channels: int = 512,
                 residual: bool = False, norm: str = "instance", zero_init: bool = False,
                 input_skip: bool = False) -> None:
        super().__init__(in_channels, out_channels, base, [(1, *s) for s in strides],
                         max_channels, planar=True, residual=residual, norm=norm,
                         zero_init=zero_init, input_skip=input_skip)


@register_discriminator("patchgan2d")
class PatchGAN2D(PatchGAN3D):
    """pix2pix 70 x 70 PatchGAN (Isola et al. 2017), slice by slice (1-deep kernels)."""

    def __init__(self, in_channels: int = 4, base: int = 64,
                 strides: Sequence[Sequence[int]] = ((2, 2), (2, 2), (2, 2))) -> None:
        super().__init__(in_channels, base, [(1, *s) for s in strides], planar=True)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@register_generator("unet25d")
class UNet25D(nn.Module):
    """pix2pix 2.5D generator (001_f4ce1725ceedd708.txt and 003's 2.5D baseline): each output
    slice is predicted by a 2D U-Net from that slice and its two neighbours stacked as
    channels (3 x in_channels); the first and last slice repeat their edge neighbour. `norm`,
    `zero_init` and `input_skip` as for :class:`UNet3D`.

    Shapes: (B, in_channels, d, h, w) -> (B, out_channels, d, h, w), any d >= 1.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 1, base: int = 64,
                 strides: Sequence[Sequence[int]] = ((2, 2),) * 8, max_channels: int = 512,
                 context: int = 1, norm: str = "instance", zero_init: bool = False,
                 input_skip: bool = False) -> None:
        super().__init__()
        self.context = int(context)
        self.net = UNet2D(in_channels * (2 * self.context + 1), out_channels, base, strides,
                          max_channels, norm=norm, zero_init=zero_init, input_skip=input_skip)

    def size_multiple(self) -> tuple[int, int, int]:
        return self.net.size_multiple()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, d, h, w = x.shape
        k = self.context
        padded = torch.cat([x[:, :, :1]] * k + [x] + [x[:, :, -1:]] * k, dim=2)
        # (B, C, d, 2k+1, h, w): the neighbourhood of every slice, then slices into the batch
        stacks = torch.stack([padded[:, :, i:i + d] for i in range(2 * k + 1)], dim=3)
        stacks = stacks.permute(0, 2, 1, 3, 4, 5).reshape(b * d, c * (2 * k + 1), 1, h, w)
        out = self.net(stacks)  # (B*d, out, 1, h, w)
        return out.reshape(b, d, -1, h, w).permute(0, 2, 1, 3, 4)
