"""cytoself model: EfficientNet encoders, split vector quantizers, residual decoders, classifier heads."""

from cytoself_jax.models.cytoself import (
    CytoselfModel,
    CytoselfOutput,
    EncoderSpec,
    ModelSpec,
    QuantizerSpec,
    build_model,
)
from cytoself_jax.models.decoder import Decoder, DecoderBlock, ResidualUnit
from cytoself_jax.models.efficientnet import Encoder, MBConv
from cytoself_jax.models.heads import ClassifierHead
from cytoself_jax.models.layers import ConvBN, ModelConfigError
from cytoself_jax.models.quantizer import (
    VectorQuantizer,
    VQOutput,
    code_histogram,
    ema_update,
    lookup,
    perplexity_from_counts,
    squared_distances,
)

__all__ = [
    "ClassifierHead",
    "ConvBN",
    "CytoselfModel",
    "CytoselfOutput",
    "Decoder",
    "DecoderBlock",
    "Encoder",
    "EncoderSpec",
    "MBConv",
    "ModelConfigError",
    "ModelSpec",
    "QuantizerSpec",
    "ResidualUnit",
    "VQOutput",
    "VectorQuantizer",
    "build_model",
    "code_histogram",
    "ema_update",
    "lookup",
    "perplexity_from_counts",
    "squared_distances",
]
