"""The two-level cytoself model: encoders, split vector quantizers, decoders and identification heads.

Wiring (paper, Methods; both reference implementations): encoder1 maps the image to a continuous local map z1,
quantized by VQ1 into the local representation q1; encoder2 encodes z1 (not q1) further into z2, quantized by VQ2
into the global representation q2. decoder2 predicts the local map from q2; decoder1 reconstructs the image
from concat(q1, q2 resized to the local size). Classifier heads read q1 and/or q2.

config.model.decoder picks the decoders and the resizing of q2 that go together: 'paper' (the paper's own code:
narrow decoders at the code width, bilinear resizing) or 'pytorch_reference' (the PyTorch re-implementation:
640 -> 320 -> 160 wide decoders, nearest-neighbour resizing), kept for side-by-side benchmarks.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Mapping, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from cytoself_jax.models.decoder import DECODERS, Decoder, paper_padding, paper_widths
from cytoself_jax.models.efficientnet import Encoder, Stage
from cytoself_jax.models.heads import ClassifierHead
from cytoself_jax.models.layers import ModelConfigError
from cytoself_jax.models.quantizer import CODEBOOK_INITS, VectorQuantizer, VQOutput

LEVELS = ("local", "global")
DTYPES = ("float32", "bfloat16")
MODEL_FIELDS = (
    "dtype",
    "encoder_local",
    "encoder_global",
    "drop_path_rate",
    "vq_local",
    "vq_global",
    "vq_commitment",
    "vq_ema",
    "vq_ema_decay",
    "vq_ema_epsilon",
    "codebook_init",
    "codebook_kmeans_iterations",
    "codebook_restart_threshold",
    "codebook_restart_decay",
    "decoder",
    "decoder_min_features",
    "decoder_global_features",
    "decoder_local_features",
    "residual_units",
    "remat_decoders",
    "heads",
    "head_hidden",
    "head_dropout",
)
# Fields added after runs were first saved: a run's config.json without one gets this default, which is what the
# code did before the field existed (runs saved before 'decoder' existed used the PyTorch reference's decoders).
# The codebook options' defaults are also the current config's (off: the paper's quantizer), so such runs resume.
CODEBOOK_FIELD_DEFAULTS = {"codebook_init": "uniform", "codebook_kmeans_iterations": 10,
                           "codebook_restart_threshold": 0.0, "codebook_restart_decay": 0.99}
_MODEL_FIELD_DEFAULTS = {"remat_decoders": False, "decoder": "pytorch_reference", "decoder_min_features": 32,
                         **CODEBOOK_FIELD_DEFAULTS}
_ENCODER_FIELDS = ("stem_features", "stem_stride", "stages")
_VQ_FIELDS = ("num_codes", "code_dim", "num_splits")
_PREFIX = "config.model"


def _check_fields(cfg: Mapping[str, Any], path: str, expected: Sequence[str], optional: Sequence[str] = ()) -> None:
    keys = set(cfg.keys())
    for field in expected:
        if field not in keys and field not in optional:
            raise ModelConfigError(f"{path}.{field}: missing (expected the fields {', '.join(expected)})")
    for field in sorted(keys - set(expected)):
        raise ModelConfigError(f"{path}.{field}: unknown field (expected only {', '.join(expected)})")


def _int(value: Any, field: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ModelConfigError(f"{field}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def _float(value: Any, field: str, low: float, high: float, high_inclusive: bool = False) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    ok = ok and low <= value and (value <= high if high_inclusive else value < high)
    if not ok:
        raise ModelConfigError(f"{field}: expected a number in [{low}, {high}{']' if high_inclusive else ')'}, got {value!r}")
    return float(value)


def _int_tuple(value: Any, field: str) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ModelConfigError(f"{field}: expected a sequence of integers, got {value!r}")
    return tuple(_int(v, f"{field}[{i}]") for i, v in enumerate(value))


def _downsample(size: tuple[int, int], stride: int) -> tuple[int, int]:
    # 'SAME' convolutions (and the reference's k//2 padding for odd k) give ceil(size / stride).
    return (math.ceil(size[0] / stride), math.ceil(size[1] / stride))


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
    """One encoder half: stem conv (stem_features, stem_stride) and MBConv stages (expand, kernel, stride, out,
    repeats)."""

    stem_features: int
    stem_stride: int
    stages: tuple[Stage, ...]

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], path: str) -> EncoderSpec:
        _check_fields(cfg, path, _ENCODER_FIELDS)
        stages = cfg["stages"]
        if isinstance(stages, (str, bytes)) or not isinstance(stages, Sequence) or not stages:
            raise ModelConfigError(f"{path}.stages: expected a non-empty sequence of (expand, kernel, stride, out, repeats)")
        parsed = []
        for i, stage in enumerate(stages):
            values = _int_tuple(stage, f"{path}.stages[{i}]")
            if len(values) != 5:
                raise ModelConfigError(f"{path}.stages[{i}]: expected (expand, kernel, stride, out, repeats), got {stage!r}")
            parsed.append(values)
        return cls(
            stem_features=_int(cfg["stem_features"], f"{path}.stem_features"),
            stem_stride=_int(cfg["stem_stride"], f"{path}.stem_stride"),
            stages=tuple(parsed),
        )

    def sizes(self, size: tuple[int, int]) -> tuple[tuple[int, int], ...]:
        """Spatial sizes the encoder passes through for an input of `size`: the input size, then the size after
        each downsampling step (stride > 1); the last entry is the output size."""
        sizes = [tuple(size)]
        for stride in (self.stem_stride, *(stage[2] for stage in self.stages)):
            if stride > 1:
                sizes.append(_downsample(sizes[-1], stride))
        return tuple(sizes)


@dataclasses.dataclass(frozen=True)
class QuantizerSpec:
    """A codebook of num_codes codes of code_dim, applied to num_splits chunks of each position's vector."""

    num_codes: int
    code_dim: int
    num_splits: int

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], path: str) -> QuantizerSpec:
        _check_fields(cfg, path, _VQ_FIELDS)
        return cls(**{f: _int(cfg[f], f"{path}.{f}") for f in _VQ_FIELDS})

    @property
    def width(self) -> int:
        """Channels of the quantized map: num_splits * code_dim."""
        return self.num_splits * self.code_dim


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything that defines a CytoselfModel: the config.model fields, the image shape and the class count."""

    image_shape: tuple[int, int, int]
    num_classes: int
    dtype: str
    encoder_local: EncoderSpec
    encoder_global: EncoderSpec
    drop_path_rate: float
    vq_local: QuantizerSpec
    vq_global: QuantizerSpec
    vq_commitment: float
    vq_ema: bool
    vq_ema_decay: float
    vq_ema_epsilon: float
    codebook_init: str
    codebook_kmeans_iterations: int
    codebook_restart_threshold: float
    codebook_restart_decay: float
    decoder: str
    decoder_min_features: int
    decoder_global_features: tuple[int, ...]
    decoder_local_features: tuple[int, ...]
    residual_units: int
    remat_decoders: bool
    heads: tuple[str, ...]
    head_hidden: int
    head_dropout: float

    @classmethod
    def from_config(cls, model_cfg: Mapping[str, Any], image_shape: Sequence[int], num_classes: int) -> ModelSpec:
        """Validate config.model (an ml_collections.ConfigDict, or any mapping with the same fields) for images
        of image_shape (H, W, C) and num_classes protein ids; raises ModelConfigError naming the bad field."""
        p = _PREFIX
        _check_fields(model_cfg, p, MODEL_FIELDS, optional=tuple(_MODEL_FIELD_DEFAULTS))
        model_cfg = {**_MODEL_FIELD_DEFAULTS, **model_cfg}
        shape = _int_tuple(image_shape, "image_shape")
        if len(shape) != 3:
            raise ModelConfigError(f"image_shape: expected (height, width, channels), got {tuple(image_shape)!r}")
        dtype = model_cfg["dtype"]
        if dtype not in DTYPES:
            raise ModelConfigError(f"{p}.dtype: expected one of {DTYPES}, got {dtype!r}")
        if model_cfg["codebook_init"] not in CODEBOOK_INITS:
            raise ModelConfigError(f"{p}.codebook_init: expected one of {CODEBOOK_INITS}, got {model_cfg['codebook_init']!r}")
        if model_cfg["decoder"] not in DECODERS:
            raise ModelConfigError(f"{p}.decoder: expected one of {DECODERS}, got {model_cfg['decoder']!r}")
        heads = model_cfg["heads"]
        if isinstance(heads, str) or not isinstance(heads, Sequence) or any(h not in LEVELS for h in heads):
            raise ModelConfigError(f"{p}.heads: expected a subset of {LEVELS}, got {heads!r}")
        if len(set(heads)) != len(heads):
            raise ModelConfigError(f"{p}.heads: expected each level at most once, got {tuple(heads)!r}")
        for flag in ("vq_ema", "remat_decoders"):
            if not isinstance(model_cfg[flag], bool):
                raise ModelConfigError(f"{p}.{flag}: expected True or False, got {model_cfg[flag]!r}")
        spec = cls(
            image_shape=shape,
            num_classes=_int(num_classes, "num_classes"),
            dtype=dtype,
            encoder_local=EncoderSpec.from_config(model_cfg["encoder_local"], f"{p}.encoder_local"),
            encoder_global=EncoderSpec.from_config(model_cfg["encoder_global"], f"{p}.encoder_global"),
            drop_path_rate=_float(model_cfg["drop_path_rate"], f"{p}.drop_path_rate", 0.0, 1.0),
            vq_local=QuantizerSpec.from_config(model_cfg["vq_local"], f"{p}.vq_local"),
            vq_global=QuantizerSpec.from_config(model_cfg["vq_global"], f"{p}.vq_global"),
            vq_commitment=_float(model_cfg["vq_commitment"], f"{p}.vq_commitment", 0.0, math.inf),
            vq_ema=model_cfg["vq_ema"],
            vq_ema_decay=_float(model_cfg["vq_ema_decay"], f"{p}.vq_ema_decay", 0.0, 1.0),
            vq_ema_epsilon=_float(model_cfg["vq_ema_epsilon"], f"{p}.vq_ema_epsilon", 0.0, math.inf),
            codebook_init=model_cfg["codebook_init"],
            codebook_kmeans_iterations=_int(model_cfg["codebook_kmeans_iterations"], f"{p}.codebook_kmeans_iterations"),
            codebook_restart_threshold=_float(model_cfg["codebook_restart_threshold"],
                                              f"{p}.codebook_restart_threshold", 0.0, 1.0),
            codebook_restart_decay=_float(model_cfg["codebook_restart_decay"], f"{p}.codebook_restart_decay", 0.0, 1.0),
            decoder=model_cfg["decoder"],
            decoder_min_features=_int(model_cfg["decoder_min_features"], f"{p}.decoder_min_features"),
            decoder_global_features=_int_tuple(model_cfg["decoder_global_features"], f"{p}.decoder_global_features"),
            decoder_local_features=_int_tuple(model_cfg["decoder_local_features"], f"{p}.decoder_local_features"),
            residual_units=_int(model_cfg["residual_units"], f"{p}.residual_units", minimum=0),
            remat_decoders=model_cfg["remat_decoders"],
            heads=tuple(heads),
            head_hidden=_int(model_cfg["head_hidden"], f"{p}.head_hidden"),
            head_dropout=_float(model_cfg["head_dropout"], f"{p}.head_dropout", 0.0, 1.0),
        )
        spec._check_decoders()
        return spec

    def _check_decoders(self) -> None:
        steps_global = len(self.global_sizes) - 1
        if steps_global == 0:
            raise ModelConfigError(
                f"{_PREFIX}.encoder_global: expected at least one stride > 1 (decoder2 upsamples once per step)"
            )
        steps_local = len(self.local_sizes) - 1
        if self.decoder == "paper":
            for sizes in (self.global_sizes, self.local_sizes):
                for big, small in zip(sizes, sizes[1:]):
                    for a, b in zip(small, big):
                        paper_padding(a, b)
            return
        if len(self.decoder_global_features) != steps_global - 1:
            raise ModelConfigError(
                f"{_PREFIX}.decoder_global_features: expected {steps_global - 1} channel counts (decoder2 has one "
                f"block per stride-2 step of encoder_global, {steps_global}, and its last block outputs the "
                f"vq_local width), got {self.decoder_global_features!r}"
            )
        if len(self.decoder_local_features) != steps_local:
            raise ModelConfigError(
                f"{_PREFIX}.decoder_local_features: expected {steps_local} channel counts (decoder1 has one block "
                f"per stride-2 step of encoder_local), got {self.decoder_local_features!r}"
            )

    def decoder_widths(self) -> dict[str, dict[str, Any]]:
        """Per decoder ('global' = decoder2, 'local' = decoder1): the first conv's width (None: no first conv) and
        each block's output width. paper: the first conv runs at the level's code width, halved after each block
        down to decoder_min_features, decoder2 ending at the local map's width; pytorch_reference: the
        configured decoder_*_features."""
        if self.decoder == "paper":
            steps_global, steps_local = len(self.global_sizes) - 1, len(self.local_sizes) - 1
            g, l, m = self.vq_global.code_dim, self.vq_local.code_dim, self.decoder_min_features
            return {
                "global": {"first": g, "blocks": paper_widths(g, m, steps_global, last=self.vq_local.width)},
                "local": {"first": l, "blocks": paper_widths(l, m, steps_local)},
            }
        return {
            "global": {"first": None, "blocks": (*self.decoder_global_features, self.vq_local.width)},
            "local": {"first": None, "blocks": tuple(self.decoder_local_features)},
        }

    @property
    def compute_dtype(self) -> Any:
        """The jnp dtype of activations (parameters are always float32)."""
        return jnp.dtype(self.dtype)

    @property
    def local_sizes(self) -> tuple[tuple[int, int], ...]:
        """Spatial sizes encoder1 passes through, from the image size to the local map's."""
        return self.encoder_local.sizes(self.image_shape[:2])

    @property
    def global_sizes(self) -> tuple[tuple[int, int], ...]:
        """Spatial sizes encoder2 passes through, from the local map's size to the global map's."""
        return self.encoder_global.sizes(self.local_sizes[-1])

    @property
    def local_shape(self) -> tuple[int, int, int]:
        """(h, w, channels) of the local representation (100x100 paper model: 25x25x64)."""
        return (*self.local_sizes[-1], self.vq_local.width)

    @property
    def global_shape(self) -> tuple[int, int, int]:
        """(h, w, channels) of the global representation (100x100 paper model: 4x4x576)."""
        return (*self.global_sizes[-1], self.vq_global.width)


@flax.struct.dataclass
class CytoselfOutput:
    """reconstruction (B,H,W,C) float32; local_prediction: decoder2's prediction (B,h1,w1,D1) float32 of the local
    map; z_local: encoder1's output before quantization (B,h1,w1,D1) float32 (decoder2's target in the paper);
    vq_local, vq_global: VQOutput of each level; logits: level -> (B, num_classes) float32 per head."""

    reconstruction: jax.Array
    local_prediction: jax.Array
    z_local: jax.Array
    vq_local: VQOutput
    vq_global: VQOutput
    logits: dict[str, jax.Array]


class CytoselfModel(nn.Module):
    """cytoself for images (B, *spec.image_shape). Variable collections: params, batch_stats, codebook_ema when
    spec.vq_ema, and codebook_state when k-means initialisation or code restarts are on. train=True needs a
    'dropout' rng (stochastic depth, head dropout, codebook maintenance) and the collections other than params
    mutable."""

    spec: ModelSpec

    def setup(self) -> None:
        s = self.spec
        dtype = s.compute_dtype
        vq = dict(commitment_cost=s.vq_commitment, use_ema=s.vq_ema, ema_decay=s.vq_ema_decay, ema_epsilon=s.vq_ema_epsilon,
                  codebook_init=s.codebook_init, kmeans_iterations=s.codebook_kmeans_iterations,
                  restart_threshold=s.codebook_restart_threshold, restart_decay=s.codebook_restart_decay)

        def encoder(e: EncoderSpec, width: int) -> Encoder:
            return Encoder(e.stem_features, e.stem_stride, e.stages, width, s.drop_path_rate, dtype=dtype)

        self.encoder_local = encoder(s.encoder_local, s.vq_local.width)
        self.vq_local = VectorQuantizer(s.vq_local.num_codes, s.vq_local.code_dim, s.vq_local.num_splits, **vq)
        self.encoder_global = encoder(s.encoder_global, s.vq_global.width)
        self.vq_global = VectorQuantizer(s.vq_global.num_codes, s.vq_global.code_dim, s.vq_global.num_splits, **vq)
        # Decoders upsample back through exactly the sizes the encoders passed through, in reverse.
        widths = s.decoder_widths()
        common = dict(kind=s.decoder, residual_units=s.residual_units, remat=s.remat_decoders, dtype=dtype)
        self.decoder_global = Decoder(
            sizes=s.global_sizes[-2::-1], features=widths["global"]["blocks"], first_features=widths["global"]["first"],
            **common,
        )
        self.decoder_local = Decoder(
            sizes=s.local_sizes[-2::-1], features=widths["local"]["blocks"], first_features=widths["local"]["first"],
            out_features=s.image_shape[2], **common,
        )
        self.heads = {level: ClassifierHead(s.num_classes, s.head_hidden, s.head_dropout, dtype=dtype) for level in s.heads}

    def _check_shape(self, name: str, array: jax.Array, expected: tuple[int, ...]) -> None:
        if array.ndim != len(expected) + 1 or tuple(array.shape[1:]) != tuple(expected):
            raise ModelConfigError(
                f"CytoselfModel: {name}: expected shape (B, {', '.join(map(str, expected))}) from the model spec, "
                f"got {tuple(array.shape)}"
            )

    def _encode(self, x: jax.Array, train: bool) -> tuple[jax.Array, VQOutput, VQOutput]:
        self._check_shape("images", x, self.spec.image_shape)
        z_local = self.encoder_local(x, train)
        vq_local = self.vq_local(z_local, train)
        vq_global = self.vq_global(self.encoder_global(z_local, train), train)
        return z_local, vq_local, vq_global

    def _decode(self, q_local: jax.Array, q_global: jax.Array, train: bool) -> jax.Array:
        self._check_shape("q_local", q_local, self.spec.local_shape)
        self._check_shape("q_global", q_global, self.spec.global_shape)
        dtype = self.spec.compute_dtype
        batch, h, w = q_local.shape[:3]
        # The paper's code resizes bilinearly (UpConcat2D), the PyTorch reference by nearest neighbour.
        method = "bilinear" if self.spec.decoder == "paper" else "nearest"
        up = jax.image.resize(q_global.astype(dtype), (batch, h, w, q_global.shape[-1]), method=method)
        x = jnp.concatenate([q_local.astype(dtype), up], axis=-1)
        return self.decoder_local(x, train).astype(jnp.float32)

    def __call__(self, x: jax.Array, train: bool) -> CytoselfOutput:
        """Images (B, H, W, C) -> CytoselfOutput (training and evaluation forward pass)."""
        z_local, vq_local, vq_global = self._encode(x, train)
        batch = x.shape[0]
        codes = {"local": vq_local.quantized, "global": vq_global.quantized}
        return CytoselfOutput(
            reconstruction=self._decode(vq_local.quantized, vq_global.quantized, train),
            local_prediction=self.decoder_global(vq_global.quantized, train).astype(jnp.float32),
            z_local=z_local.astype(jnp.float32),
            vq_local=vq_local,
            vq_global=vq_global,
            logits={level: head(codes[level].reshape(batch, -1), train) for level, head in self.heads.items()},
        )

    def embed(self, x: jax.Array) -> tuple[VQOutput, VQOutput]:
        """Images (B, H, W, C) -> (vq_local, vq_global) in evaluation mode; runs only encoders and quantizers."""
        return self._encode(x, train=False)[1:]

    def decode(self, q_local: jax.Array, q_global: jax.Array) -> jax.Array:
        """Reconstruct images (B, H, W, C) float32 from quantized maps q_local (B, *local_shape) and q_global
        (B, *global_shape), in evaluation mode (e.g. after zeroing codes of the local map)."""
        return self._decode(q_local, q_global, train=False)

    def lookup(self, indices: jax.Array, level: str) -> jax.Array:
        """Quantized map (B, h, w, S*D) float32 of code indices (B, h, w, S) from the codebook of `level`."""
        if level not in LEVELS:
            raise ModelConfigError(f"CytoselfModel.lookup: level: expected one of {LEVELS}, got {level!r}")
        return (self.vq_local if level == "local" else self.vq_global).vectors(indices)


def build_model(config: Mapping[str, Any], image_shape: tuple[int, int, int], num_classes: int) -> CytoselfModel:
    """The model of an experiment config (its `model` section) for images (H, W, C) and num_classes proteins:
    the one factory of training, runs loaded for analysis, and the benchmarks."""
    return CytoselfModel(ModelSpec.from_config(config["model"], image_shape, num_classes))
