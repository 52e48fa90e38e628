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
    CODEBOOK_INITS,
    VectorQuantizer,
    apply_codebook_replacements,
    VQOutput,
    code_histogram,
    ema_update,
    kmeans,
    lookup,
    perplexity_from_counts,
    restart_dead_codes,
    sample_rows,
    squared_distances,
)

__all__ = [
    "CODEBOOK_INITS",
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
    "apply_codebook_replacements",
    "build_model",
    "code_histogram",
    "ema_update",
    "kmeans",
    "lookup",
    "perplexity_from_counts",
    "restart_dead_codes",
    "sample_rows",
    "squared_distances",
]
