"""Residual upsampling decoders of cytoself, NHWC: the paper's (its TensorFlow code, `Decoderres_bicub`) and the
PyTorch re-implementation's (much wider), selected by config.model.decoder.

The paper's decoder runs at the code width of its level (64), halving after each block down to min_features
(32); its convolutions carry a bias and its BatchNorms learn scale and offset. The reference's runs at the
widths it is given (640 -> 320 -> 160 for decoder1), with no bias and no BatchNorm affine.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cytoself_jax.models.layers import ConvBN, ModelConfigError, conv_layer

DECODERS = ("paper", "pytorch_reference")


class ResidualUnit(nn.Module):
    """SiLU(x + BN(conv3x3(SiLU(BN(conv3x3(x)))))), channels unchanged. paper=True: convolutions with bias and
    BatchNorm with scale and offset (the paper's code); False: neither (the PyTorch reference)."""

    paper: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        features = x.shape[-1]
        kw = dict(affine=self.paper, bias=self.paper, dtype=self.dtype)
        h = ConvBN(features, 3, name="conv1", **kw)(x, train)
        h = ConvBN(features, 3, activation=False, name="conv2", **kw)(h, train)
        return nn.silu(h + x)


def _bilinear(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    # Half-pixel centres, i.e. PyTorch's bilinear upsampling with align_corners=False.
    return jax.image.resize(x, (x.shape[0], *size, x.shape[-1]), method="bilinear")


class DecoderBlock(nn.Module):
    """The reference's block: bilinear upsampling to exactly `size` (h, w) -> residual units at the input width ->
    conv3x3-BN-SiLU to `features` channels. (B, h0, w0, C) -> (B, h, w, features)."""

    size: tuple[int, int]
    features: int
    residual_units: int = 2
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = _bilinear(x, self.size)
        for i in range(self.residual_units):
            x = ResidualUnit(dtype=self.dtype, name=f"res{i}")(x, train)
        return ConvBN(self.features, 3, affine=False, dtype=self.dtype, name="out")(x, train)


def paper_padding(size_in: int, size_out: int) -> tuple[int, int]:
    """Zero padding (before, after) that the paper's block puts around its x2-upsampled map of 2*size_in so that a
    3x3 'valid' convolution gives size_out: 2 - (2*size_in - size_out) pixels, the odd one before."""
    pad = 2 - (2 * size_in - size_out)
    if not 0 <= pad <= 2:
        raise ModelConfigError(
            f"paper decoder: cannot go from {size_in} to {size_out} pixels with one x2 upsampling (each encoder "
            "stride must be 2 for config.model.decoder='paper'; use 'pytorch_reference' otherwise)"
        )
    return (pad + 1) // 2, pad // 2


class PaperDecoderBlock(DecoderBlock):
    """The paper's block (the same fields as DecoderBlock): bilinear x2 upsampling -> residual units at the input
    width -> zero padding -> 3x3 'valid' conv (with bias) + BN + SiLU to `features` channels at exactly `size`.
    (B, h0, w0, C) -> (B, h, w, features)."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        h0, w0 = x.shape[1:3]
        pad = (paper_padding(h0, self.size[0]), paper_padding(w0, self.size[1]))
        x = _bilinear(x, (2 * h0, 2 * w0))
        for i in range(self.residual_units):
            x = ResidualUnit(paper=True, dtype=self.dtype, name=f"res{i}")(x, train)
        x = jnp.pad(x, ((0, 0), *pad, (0, 0)))
        return ConvBN(self.features, 3, bias=True, padding="VALID", dtype=self.dtype, name="out")(x, train)


def paper_widths(hidden: int, min_features: int, blocks: int, last: Optional[int] = None) -> tuple[int, ...]:
    """Output channels of each of the paper decoder's blocks: hidden halved after each block, never below
    min_features; `last`, when given, replaces the last block's (decoder2 ends at the local code width)."""
    widths, width = [], hidden
    for _ in range(blocks):
        width = max(width // 2, min_features)
        widths.append(width)
    if last is not None and widths:
        widths[-1] = last
    return tuple(widths)


class Decoder(nn.Module):
    """Optionally a first conv3x3-BN-SiLU to first_features channels (the paper's `include_first`), then one block
    per entry of sizes (to sizes[i] with features[i] channels), then, when out_features is set, a linear 3x3 conv
    (with bias) to out_features channels. (B, h, w, C) -> (B, *sizes[-1], out_features or features[-1]).

    kind: 'paper' (PaperDecoderBlock, x2 upsampling per block) or 'pytorch_reference' (DecoderBlock).
    remat: keep only each block's convolution outputs for the backward pass and recompute the rest (upsampling,
    BatchNorm, SiLU): the same FLOPs in the convolutions, a fraction of the activation memory. Same parameters.
    """

    sizes: Sequence[tuple[int, int]]
    features: Sequence[int]
    kind: str = "pytorch_reference"
    first_features: Optional[int] = None
    out_features: Optional[int] = None
    residual_units: int = 2
    remat: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if len(self.sizes) != len(self.features):
            raise ModelConfigError(f"Decoder: features: expected {len(self.sizes)} entries (one per size), got {self.features}")
        if self.kind not in DECODERS:
            raise ModelConfigError(f"Decoder: kind: expected one of {DECODERS}, got {self.kind!r}")
        paper = self.kind == "paper"
        if self.first_features is not None:
            x = ConvBN(self.first_features, 3, bias=paper, affine=paper, dtype=self.dtype, name="first")(x, train)
        block = PaperDecoderBlock if paper else DecoderBlock
        if self.remat:
            # static_argnums counts self: 2 is `train`, a Python bool that selects the BatchNorm mode
            block = nn.remat(block, static_argnums=(2,), policy=jax.checkpoint_policies.dots_saveable)
        for i, (size, features) in enumerate(zip(self.sizes, self.features)):
            x = block(tuple(size), features, self.residual_units, dtype=self.dtype, name=f"block{i}")(x, train)
        if self.out_features is not None:
            x = conv_layer(self.out_features, 3, 1, "SAME", 1, True, nn.initializers.lecun_normal(), self.dtype,
                           x.shape[-1], name="out")(x)
        return x
