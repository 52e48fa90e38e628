"""The experiment configuration: the paper's defaults, the ablations, and checks on user overrides.

Config files in `configs/` call these builders, so every experiment is a small override of one base and
the ablation study can apply the same switches programmatically.
"""

from __future__ import annotations

import ast
from typing import Sequence

import ml_collections

ABLATIONS = ("full", "no_fiducial", "no_distance", "no_split", "no_identification")


def paper_config() -> ml_collections.ConfigDict:
    """The full cytoself model and training protocol of Kobayashi et al. 2022 (Methods of the paper;
    every difference from the later PyTorch re-implementation in docs/PAPER_MODEL.md)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.workdir = "runs/full"

    c.data = ml_collections.ConfigDict()
    c.data.path = "data/opencell"
    # Which store channels the model sees, protein first. Paper: protein + nuclear distance transform.
    c.data.channels = ("protein", "distance")
    c.data.split_fractions = (0.8, 0.1, 0.1)
    c.data.split_seed = 0
    # Which of a protein's fields goes to which split: its seeded field order rotated by this many places, so
    # folds 0..3 of a protein with 4 fields (yeast) make each field the test field once (data/splits.py).
    c.data.split_fold = 0
    # Proteins kept out of training altogether (no crop in train, val or test; not a classifier class), for eval
    # to place as proteins the model never saw: a fraction in [0, 1) of the store's proteins (chosen with
    # heldout_seed) or a tuple of protein names; 0 = none. Any type: --config.data.heldout_proteins=0.2 or
    # --config.data.heldout_proteins="('YAL001C', 'YBR002W')". dataset.json lists the proteins held out.
    c.data.heldout_proteins = ml_collections.FieldReference(0.0, field_type=object)
    c.data.heldout_seed = 0
    c.data.allow_single_field = False
    c.data.num_workers = 4
    c.data.prefetch = 4
    # When set (>0 proteins), train.py draws the built-in synthetic data into `path` if that folder does not exist
    # yet; data.path must name the same folder (a mistyped data.path is refused, never drawn into).
    c.data.synthetic = ml_collections.ConfigDict(
        # complexes > 0: proteins of one family sharing a pattern, listed in <path>_complexes.csv (eval --complexes)
        dict(proteins=0, crops_per_protein=120, fields_per_protein=6, size=64, seed=0, complexes=0, path="")
    )

    c.model = ml_collections.ConfigDict()
    c.model.dtype = "float32"
    c.model.encoder_local = ml_collections.ConfigDict(
        dict(stem_features=32, stem_stride=2, stages=((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 1, 40, 2)))
    )
    c.model.encoder_global = ml_collections.ConfigDict(
        dict(
            stem_features=40,
            stem_stride=1,
            stages=((6, 3, 2, 80, 3), (6, 5, 2, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)),
        )
    )
    c.model.drop_path_rate = 0.2
    c.model.vq_local = ml_collections.ConfigDict(dict(num_codes=2048, code_dim=64, num_splits=1))
    c.model.vq_global = ml_collections.ConfigDict(dict(num_codes=2048, code_dim=64, num_splits=9))
    c.model.vq_commitment = 0.25
    c.model.vq_ema = False
    c.model.vq_ema_decay = 0.99
    c.model.vq_ema_epsilon = 1e-5
    # Codebook health, beyond the paper (whose behaviour these defaults keep): 'kmeans' replaces the uniform
    # codebook on the first training step by codebook_kmeans_iterations Lloyd iterations over that batch's encoder
    # outputs. codebook_restart_threshold > 0 restarts dead codes: an EMA (decay codebook_restart_decay) of each
    # code's assignments per training batch starts at 1, and a code whose EMA falls below the threshold (in
    # [0, 1); 0 = off) gets a random encoder output of the current batch: an unused code is restarted after
    # log(threshold) / log(decay) steps (0.1 and 0.99: 230). Both work with the EMA codebook (vq_ema) too.
    c.model.codebook_init = "uniform"
    c.model.codebook_kmeans_iterations = 10
    c.model.codebook_restart_threshold = 0.0
    c.model.codebook_restart_decay = 0.99
    # 'paper': the decoders of the paper's own TensorFlow code (docs/PAPER_MODEL.md): at the code width of
    # each level, halving per block down to decoder_min_features; bilinear resizing of the global map.
    # 'pytorch_reference': the PyTorch re-implementation's ~75x costlier decoders with the widths below (and
    # nearest-neighbour resizing), kept for side-by-side benchmarks against it.
    c.model.decoder = "paper"
    c.model.decoder_min_features = 32
    c.model.decoder_global_features = (288, 144)  # pytorch_reference only
    c.model.decoder_local_features = (320, 160)  # pytorch_reference only
    c.model.residual_units = 2
    # Recompute the decoders' upsampling, BatchNorm and SiLU in the backward pass instead of keeping them:
    # the decoders hold ~96% of the activations; same results, for batches that do not fit otherwise.
    c.model.remat_decoders = False
    c.model.heads = ("local", "global")
    c.model.head_hidden = 1000
    c.model.head_dropout = 0.5

    # Total loss = sum of weighted terms (the paper's Methods, "Training"): image reconstruction / the training data's variance,
    # decoder2's reconstruction of encoder1's output, both VQ losses, both classifier cross-entropies.
    c.loss = ml_collections.ConfigDict(dict(reconstruction=1.0, local_prediction=1.0, vq=1.0, classification=1.0))
    # decoder2's target: 'z_local' (the paper: encoder1's output before quantization, gradients flowing into
    # encoder1) or 'quantized_local' (the stop-gradient quantized local map, this project's earlier choice).
    c.loss.local_prediction_target = "z_local"
    # The reconstruction MSE is divided by 'dataset': one constant, the pixel variance of the training split
    # (dataset.json 'data_variance'), as both reference codes do; 'batch': each batch's own variance (runs saved
    # before this field existed; it makes the validation loss depend on the eval batch size).
    c.loss.reconstruction_variance = "dataset"

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 64
    c.train.learning_rate = 4e-4
    c.train.max_epochs = 200
    # The paper's Keras callbacks: ReduceLROnPlateau (lr x plateau_factor after plateau_patience epochs whose
    # monitored value is not below its best by more than plateau_min_delta, the Keras default 1e-4; its own best,
    # counter restarted after a drop) and EarlyStopping / ModelCheckpoint (stop after early_stop_patience epochs
    # without any decrease, the paper's min_delta 0; the best checkpoint at the lowest value).
    c.train.plateau_patience = 4
    c.train.plateau_factor = 0.1
    c.train.plateau_min_delta = 1e-4
    c.train.plateau_min_lr = 1e-8  # the TF code's early_stop_lr, its ReduceLROnPlateau's min_lr
    c.train.early_stop_patience = 12
    c.train.max_steps_per_epoch = 0  # 0 = the whole training split each epoch
    # Mid-epoch checkpoints, for runs that may be preempted: besides the one at each epoch's end, 'latest' is also
    # saved every checkpoint_every_steps steps and every checkpoint_every_minutes minutes (whichever comes first;
    # 0 = off). They hold the epoch's position, so --resume continues the epoch at the next batch; they never
    # become 'best' (only validated epochs do). SIGTERM saves one at the next step boundary
    # (several processes: the next multiple of log_every_steps) whatever these say.
    c.train.checkpoint_every_steps = 0
    c.train.checkpoint_every_minutes = 0.0
    c.train.eval_batch_size = 256
    c.train.log_every_steps = 10
    c.train.min_codebook_perplexity = 0.0  # warn when a codebook's validation perplexity falls below this
    # Model selection (best checkpoint, plateau schedule, early stop) follows config.train.monitor on the
    # validation split, and only from epoch select_from_epoch on (1-based): earlier epochs are never "best" and
    # count towards no patience. The paper's rule: 'loss', the total validation loss, from epoch 3 (its callbacks
    # act when the 0-based epoch > callbacks_start_from = 1). 'loss_without_vq' (the total without the VQ terms,
    # which grow as codes come into use) is the switch docs/PAPER_MODEL.md argues for; it stays off until
    # trainings measure it better (issue 27).
    c.train.monitor = "loss"
    c.train.select_from_epoch = 3
    return c


def apply_ablation(c: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    """Switch off one component of the paper's model, as in its Table 1; returns the same config."""
    if name not in ABLATIONS:
        raise ValueError(f"ablation: expected one of {ABLATIONS}, got {name!r}")
    if name == "no_fiducial":
        c.data.channels = ("protein",)
    elif name == "no_distance":
        if "distance" not in c.data.channels:
            raise ValueError(f"ablation: 'no_distance' does not apply: data.channels {tuple(c.data.channels)} has no "
                             "'distance' channel to replace by the nucleus mask")
        c.data.channels = tuple("nucleus" if ch == "distance" else ch for ch in c.data.channels)
    elif name == "no_split":
        g = c.model.vq_global
        g.code_dim, g.num_splits = g.code_dim * g.num_splits, 1
    elif name == "no_identification":
        c.model.heads = ()
    return c


def small_model(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Shrink the model so that it trains on a laptop CPU in minutes (same architecture, fewer channels)."""
    m = c.model
    m.encoder_local.stem_features = 16
    m.encoder_local.stages = ((1, 3, 1, 8, 1), (4, 3, 2, 16, 1), (4, 5, 1, 24, 1))
    m.encoder_global.stem_features = 24
    m.encoder_global.stages = ((4, 3, 2, 32, 1), (4, 5, 2, 48, 1), (4, 5, 2, 64, 1), (4, 3, 1, 96, 1))
    m.vq_local.update(num_codes=512, code_dim=32, num_splits=1)
    m.vq_global.update(num_codes=512, code_dim=32, num_splits=4)
    m.decoder_global_features = (64, 48)  # pytorch_reference only
    m.decoder_local_features = (48, 32)
    m.residual_units = 1
    m.head_hidden = 256
    m.drop_path_rate = 0.1
    return c


def apply_overrides(c: ml_collections.ConfigDict, overrides: Sequence[str]) -> ml_collections.ConfigDict:
    """Set fields from 'dotted.field=value' strings (value read as a Python literal, else kept as a string), as
    `--set` of the benchmarks and the ablation runner; returns the same config. Unknown fields are an error."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item}: expected FIELD=VALUE, e.g. model.remat_decoders=True")
        node = c
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
        if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
            raise ValueError(f"--set {item}: the config has no field {key!r}")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        try:
            node[leaf] = value
        except TypeError as e:  # ConfigDict keeps each field's type
            raise ValueError(f"--set {item}: {e}") from None
    return c
