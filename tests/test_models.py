"""The cytoself model: shapes of the paper model (abstractly, via jax.eval_shape), parameter count, mixed precision,
the embed/decode entry points, randomness, config validation, and a few real training steps on a tiny model."""

import json

import chex
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from conftest import tiny_config

from cytoself_jax.config import apply_ablation, paper_config
from cytoself_jax.models import CytoselfModel, MBConv, ModelConfigError, ModelSpec
from cytoself_jax.models import layers
from cytoself_jax.models.dense_conv import DenseConv
from cytoself_jax.models.depthwise import DepthwiseConv



def rng(seed: int) -> jax.Array:
    """A key of the 'rbg' generator: model init compiles ~3x faster on CPU than with the default threefry."""
    return jax.random.key(seed, impl="rbg")


KEY = rng(0)
RNGS = {"params": KEY, "dropout": KEY}


def make_model(model_cfg, image_shape, num_classes=4):
    return CytoselfModel(ModelSpec.from_config(model_cfg, image_shape, num_classes))


def tiny_model_cfg(**overrides):
    cfg = tiny_config("unused", "unused").model
    cfg.update(overrides)
    return cfg


def abstract(model, x, **apply_kwargs):
    """(variables, output) of a model as shapes only: no real compute."""
    variables = jax.eval_shape(lambda x: model.init(RNGS, x, train=False), x)
    output = jax.eval_shape(lambda v, x: model.apply(v, x, train=False, **apply_kwargs), variables, x)
    return variables, output


def count(tree):
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(tree)))


def _intermediates(decoder: str):
    cfg = paper_config().model
    cfg.decoder = decoder
    model = make_model(cfg, (100, 100, 2), 1311)
    x = jax.ShapeDtypeStruct((3, 100, 100, 2), jnp.float32)
    variables, (out, state) = abstract(model, x, capture_intermediates=True, mutable=["intermediates"])
    return variables, out, state["intermediates"]


@pytest.fixture(scope="module")
def paper_100():
    return _intermediates("paper")


@pytest.fixture(scope="module")
def reference_100():
    return _intermediates("pytorch_reference")


def _shape(inter, *path):
    node = inter
    for p in path:
        node = node[p]
    return node["__call__"][0].shape


def test_paper_model_shapes(paper_100):
    _, out, inter = paper_100
    chex.assert_shape(out.reconstruction, (3, 100, 100, 2))
    chex.assert_shape([out.vq_local.quantized, out.local_prediction, out.z_local], (3, 25, 25, 64))
    chex.assert_shape(out.vq_local.indices, (3, 25, 25, 1))  # 625 codes per image
    chex.assert_shape(out.vq_global.quantized, (3, 4, 4, 576))
    chex.assert_shape(out.vq_global.indices, (3, 4, 4, 9))  # 144 codes per image
    assert set(out.logits) == {"local", "global"}
    chex.assert_shape(list(out.logits.values()), (3, 1311))
    chex.assert_type([out.vq_local.indices, out.vq_global.indices], jnp.int32)
    chex.assert_type([out.vq_local.loss, out.vq_global.loss, *out.logits.values()], jnp.float32)
    shape = lambda *path: _shape(inter, *path)  # noqa: E731

    # Every module on the way: encoders, heads.
    assert shape("encoder_local", "stem") == (3, 50, 50, 32)
    assert shape("encoder_local") == (3, 25, 25, 64)
    assert shape("encoder_global", "stem") == (3, 25, 25, 40)
    assert shape("encoder_global") == (3, 4, 4, 576)
    assert shape("heads_local", "hidden") == shape("heads_global", "hidden") == (3, 1000)
    # The paper's decoders (its own TensorFlow code; docs/PAPER_MODEL.md): a first 3x3 conv to the code width (64), then per
    # block x2 bilinear upsampling, 2 residual layers at the block's input width, and a 'valid' conv after zero
    # padding to the target size with the width halved (min 32).
    # decoder1: 640 -> 64 at 25x25, 64 -> 32 at 50x50, 32 -> 32 at 100x100, a linear 3x3 conv to the 2 channels.
    assert shape("decoder_local", "first") == (3, 25, 25, 64)
    assert [shape("decoder_local", "block0", f"res{i}") for i in range(2)] == [(3, 50, 50, 64)] * 2
    assert shape("decoder_local", "block0") == (3, 50, 50, 32)
    assert [shape("decoder_local", "block1", f"res{i}") for i in range(2)] == [(3, 100, 100, 32)] * 2
    assert shape("decoder_local", "block1") == (3, 100, 100, 32)
    assert shape("decoder_local") == (3, 100, 100, 2)
    # decoder2: 576 -> 64 at 4x4; 3 blocks (ceil(log2(25/4))): upsampled 8 -> 7, 14 -> 13, 26 -> 25; the last block
    # outputs the local code width (64), with no final linear conv.
    assert shape("decoder_global", "first") == (3, 4, 4, 64)
    assert [shape("decoder_global", f"block{i}", "res1") for i in range(3)] == [(3, 8, 8, 64), (3, 14, 14, 32),
                                                                                (3, 26, 26, 32)]
    assert [shape("decoder_global", f"block{i}") for i in range(3)] == [(3, 7, 7, 32), (3, 13, 13, 32), (3, 25, 25, 64)]
    assert "out" not in inter["decoder_global"]


def test_reference_decoder_shapes(reference_100):
    """config.model.decoder='pytorch_reference': the PyTorch re-implementation's 640 -> 320 -> 160 decoders."""
    _, out, inter = reference_100
    shape = lambda *path: _shape(inter, *path)  # noqa: E731
    assert "first" not in inter["decoder_local"] and "first" not in inter["decoder_global"]
    assert [shape("decoder_global", f"block{i}") for i in range(3)] == [(3, 7, 7, 288), (3, 13, 13, 144), (3, 25, 25, 64)]
    assert [shape("decoder_local", f"block{i}") for i in range(2)] == [(3, 50, 50, 320), (3, 100, 100, 160)]
    assert shape("decoder_local") == (3, 100, 100, 2)
    chex.assert_shape(out.reconstruction, (3, 100, 100, 2))


def _paper_decoder_params(width_in: int, hidden: int, blocks: list[tuple[int, int]], out: int = 0) -> int:
    """The paper decoder's parameters counted from its layer shapes: 3x3 convs with bias, BatchNorm scale + offset.
    blocks: (residual width, output width) per block; out: channels of the final linear conv (0: none)."""
    conv_bn = lambda cin, cout: 9 * cin * cout + cout + 2 * cout  # noqa: E731
    n = conv_bn(width_in, hidden)
    for res, width in blocks:
        n += 2 * 2 * conv_bn(res, res) + conv_bn(res, width)
    return n + (9 * blocks[-1][1] * out + out if out else 0)


def test_parameter_counts_of_both_decoders(paper_100, reference_100):
    """The PyTorch reference (the cytoself package's model at these sizes) has 106,957,802 parameters: encoders 3.8M, decoders 38.4M,
    codebooks 0.26M, classifier heads 64.5M. Ours with its decoders: the same encoders, decoders and codebooks;
    heads are the 2-layer perceptrons on the flattened 25x25x64 and 4x4x576 maps (51.8M), 94.3M in all. The
    paper's decoders have 1.18M parameters (57.1M in all)."""
    mlp = lambda n_in: n_in * 1000 + 1000 + 1000 * 1311 + 1311  # noqa: E731
    for variables, decoders, total in ((reference_100[0], 38.4e6, 94.3e6), (paper_100[0], None, 57.1e6)):
        params = variables["params"]
        encoders = count(params["encoder_local"]) + count(params["encoder_global"])
        assert encoders == pytest.approx(3.8e6, rel=0.02)
        assert count(params["vq_local"]) + count(params["vq_global"]) == 2 * 2048 * 64
        assert count(params["heads_local"]) + count(params["heads_global"]) == mlp(25 * 25 * 64) + mlp(4 * 4 * 576)
        if decoders is not None:
            assert count(params["decoder_local"]) + count(params["decoder_global"]) == pytest.approx(decoders, rel=0.01)
        assert count(params) == pytest.approx(total, rel=0.01)
    params = paper_100[0]["params"]
    assert count(params["decoder_local"]) == _paper_decoder_params(640, 64, [(64, 32), (32, 32)], out=2)
    assert count(params["decoder_global"]) == _paper_decoder_params(576, 64, [(64, 32), (32, 32), (32, 64)])


@pytest.mark.parametrize("size,local,glob", [(64, 16, 2), (32, 8, 1)])
def test_other_image_sizes_round_trip(size, local, glob):
    model = make_model(paper_config().model, (size, size, 1), 7)
    _, out = abstract(model, jax.ShapeDtypeStruct((2, size, size, 1), jnp.float32))
    chex.assert_shape(out.reconstruction, (2, size, size, 1))
    chex.assert_shape([out.vq_local.quantized, out.local_prediction], (2, local, local, 64))
    chex.assert_shape(out.vq_global.indices, (2, glob, glob, 9))


def test_ablations_change_the_model():
    no_split = apply_ablation(paper_config(), "no_split").model
    _, out = abstract(make_model(no_split, (100, 100, 2)), jax.ShapeDtypeStruct((1, 100, 100, 2), jnp.float32))
    chex.assert_shape(out.vq_global.quantized, (1, 4, 4, 576))
    chex.assert_shape(out.vq_global.indices, (1, 4, 4, 1))

    no_id = apply_ablation(tiny_config("x", "y"), "no_identification").model
    variables, out = abstract(make_model(no_id, (32, 32, 2)), jax.ShapeDtypeStruct((1, 32, 32, 2), jnp.float32))
    assert out.logits == {}
    assert not any(name.startswith("heads") for name in variables["params"])


def test_bfloat16_compute_keeps_float32_params_and_losses():
    model = make_model(tiny_model_cfg(dtype="bfloat16"), (32, 32, 2))
    variables, out = abstract(model, jax.ShapeDtypeStruct((2, 32, 32, 2), jnp.float32))
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    chex.assert_type(
        [out.vq_local.loss, out.vq_global.loss, out.vq_local.perplexity, out.reconstruction, *out.logits.values()],
        jnp.float32,
    )
    chex.assert_type([out.vq_local.quantized, out.vq_global.quantized], jnp.bfloat16)


def test_embed_runs_no_decoder_or_head():
    model = make_model(tiny_model_cfg(), (32, 32, 2))
    x = jax.ShapeDtypeStruct((2, 32, 32, 2), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(RNGS, x, train=False), x)
    encoders_only = {
        col: {name: v for name, v in tree.items() if name.startswith(("encoder", "vq"))} for col, tree in variables.items()
    }
    assert count(encoders_only) < count(variables)
    vq_local, vq_global = jax.eval_shape(lambda v, x: model.apply(v, x, method=CytoselfModel.embed), encoders_only, x)
    chex.assert_shape([vq_local.indices, vq_global.indices], [(2, 8, 8, 1), (2, 2, 2, 2)])
    with pytest.raises(flax.errors.FlaxError):  # the full model does need the decoders
        jax.eval_shape(lambda v, x: model.apply(v, x, train=False), encoders_only, x)


def mini_model_cfg(**overrides):
    """The smallest complete model (one MBConv per encoder, 16x16 images): few layers, so it compiles fast."""
    cfg = tiny_config("unused", "unused").model
    cfg.encoder_local.update(stages=((2, 3, 2, 8, 1),))
    cfg.encoder_global.update(stages=((2, 3, 2, 8, 1),))
    cfg.vq_global.update(code_dim=4, num_splits=2)
    cfg.decoder_global_features = ()
    cfg.decoder_local_features = (8, 8)
    cfg.update(overrides)
    return cfg


@pytest.fixture(scope="module")
def tiny_run():
    """A real mini model on 8 smooth 16x16x2 images of 4 classes, its variables, and jitted evaluation and
    training-step functions."""
    model = make_model(mini_model_cfg(), (16, 16, 2))
    yy, xx = np.mgrid[:16, :16] / 16.0
    x = jnp.asarray(np.stack([np.sin(6 * xx + p) * np.cos(4 * yy) for p in range(16)]).reshape(8, 16, 16, 2), jnp.float32)
    labels = jnp.arange(8) % 4
    variables = jax.jit(lambda x: model.init(RNGS, x, train=False))(x)

    @jax.jit
    def evaluate(variables, x):
        out = model.apply(variables, x, train=False)
        vq_local, vq_global = model.apply(variables, x, method=CytoselfModel.embed)
        decoded = model.apply(variables, vq_local.quantized, vq_global.quantized, method=CytoselfModel.decode)
        looked_up = model.apply(variables, vq_local.indices, "local", method=CytoselfModel.lookup)
        return out, (vq_local, vq_global), decoded, looked_up

    tx = optax.adam(3e-3)

    def loss_fn(params, state, key):
        out, state = model.apply(
            {"params": params, **state}, x, train=True, rngs={"dropout": key}, mutable=["batch_stats"]
        )
        recon = jnp.mean((out.reconstruction - x) ** 2) / jnp.var(x)
        ce = sum(optax.softmax_cross_entropy_with_integer_labels(v, labels).mean() for v in out.logits.values())
        return recon + out.vq_local.loss + out.vq_global.loss + ce, (recon, out.logits, state)

    @jax.jit
    def train_step(params, state, opt, key):
        (_, (recon, logits, state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, state, key)
        updates, opt = tx.update(grads, opt)
        return optax.apply_updates(params, updates), state, opt, recon, logits

    def start():
        return variables["params"], {"batch_stats": variables["batch_stats"]}, tx.init(variables["params"])

    return model, variables, x, evaluate, train_step, start


def test_eval_is_deterministic_and_embed_decode_lookup_agree(tiny_run):
    model, variables, x, evaluate, _, _ = tiny_run
    result = evaluate(variables, x)
    chex.assert_trees_all_equal(result, evaluate(variables, x))
    out, (vq_local, vq_global), decoded, looked_up = result
    chex.assert_tree_all_finite(out)
    chex.assert_shape(out.reconstruction, x.shape)
    chex.assert_trees_all_close((vq_local, vq_global), (out.vq_local, out.vq_global))
    chex.assert_trees_all_close(decoded, out.reconstruction, atol=1e-5)
    chex.assert_trees_all_close(looked_up, vq_local.quantized, atol=1e-6)


def test_training_mode_needs_a_dropout_rng_and_uses_it(tiny_run):
    model, variables, x, _, train_step, start = tiny_run
    with pytest.raises(flax.errors.InvalidRngError):
        jax.eval_shape(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]), variables, x)
    params, state, opt = start()
    *_, logits_a = train_step(params, state, opt, rng(1))
    _, new_state, _, _, logits_b = train_step(params, state, opt, rng(2))
    assert not np.allclose(logits_a["local"], logits_b["local"])  # head dropout differs between keys
    assert not np.allclose(new_state["batch_stats"]["encoder_local"]["stem"]["bn"]["mean"], 0.0)


def test_a_few_gradient_steps_reduce_the_reconstruction_loss(tiny_run):
    *_, train_step, start = tiny_run
    params, state, opt = start()
    losses = []
    for i in range(8):
        params, state, opt, recon, _ = train_step(params, state, opt, rng(i))
        losses.append(float(recon))
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0], losses


def test_wrong_image_shape_is_a_clear_error(tiny_run):
    model, variables, *_ = tiny_run
    with pytest.raises(ModelConfigError, match=r"images: expected shape \(B, 16, 16, 2\)"):
        jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, 28, 28, 2)), train=False), variables)


def test_drop_path_drops_whole_samples():
    block = MBConv(expand=2, kernel=3, stride=1, out_features=4, drop_path=0.5)
    x = jax.random.normal(jax.random.PRNGKey(0), (32, 4, 4, 4))

    @jax.jit
    def branch_and_dropped(x):
        variables = block.init(KEY, x, train=False)
        run = lambda b, key: b.apply(variables, x, train=True, rngs={"dropout": key}, mutable=["batch_stats"])[0]  # noqa: E731
        return run(block.clone(drop_path=0.0), KEY) - x, run(block, rng(3))

    branch, dropped = branch_and_dropped(x)  # the residual branch with nothing dropped; the block with drop-path
    kept = np.asarray(jnp.all(jnp.isclose(dropped, x + 2.0 * branch, atol=1e-5), axis=(1, 2, 3)))
    gone = np.asarray(jnp.all(dropped == x, axis=(1, 2, 3)))
    np.testing.assert_array_equal(kept | gone, True)
    assert kept.any() and gone.any()


def test_ema_codebooks_live_in_their_own_collection_and_update_in_training():
    model = make_model(tiny_model_cfg(vq_ema=True), (32, 32, 2))
    x = jax.ShapeDtypeStruct((4, 32, 32, 2), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(RNGS, x, train=False), x)
    assert set(variables) == {"params", "batch_stats", "codebook_ema"}
    assert set(variables["codebook_ema"]) == {"vq_local", "vq_global"}
    assert not any(name.startswith("vq") for name in variables["params"])
    _, state = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=True, rngs={"dropout": KEY}, mutable=["batch_stats", "codebook_ema"]),
        variables,
        x,
    )
    assert set(state) == {"batch_stats", "codebook_ema"}


def test_codebook_options_add_only_their_collection_and_default_to_the_paper():
    """Defaults and runs saved before the codebook options existed: the paper's quantizers (no maintenance
    collection); k-means init and restarts on: the same parameters plus codebook_state per quantizer."""
    x = jax.ShapeDtypeStruct((2, 32, 32, 2), jnp.float32)
    saved = tiny_model_cfg().to_dict()
    for field in ("codebook_init", "codebook_kmeans_iterations", "codebook_restart_threshold", "codebook_restart_decay"):
        del saved[field]
    assert ModelSpec.from_config(saved, (32, 32, 2), 4) == ModelSpec.from_config(tiny_model_cfg(), (32, 32, 2), 4)
    default, _ = abstract(make_model(tiny_model_cfg(), (32, 32, 2)), x)
    assert set(default) == {"params", "batch_stats"}
    on, _ = abstract(make_model(tiny_model_cfg(codebook_init="kmeans", codebook_restart_threshold=0.1), (32, 32, 2)), x)
    assert set(on) == {"params", "batch_stats", "codebook_state"}
    chex.assert_trees_all_equal_shapes_and_dtypes(on["params"], default["params"])
    assert {level: set(v) for level, v in on["codebook_state"].items()} == {
        level: {"kmeans_done", "usage", "restarts", "replaced", "replacement"} for level in ("vq_local", "vq_global")}


def test_from_config_accepts_a_json_round_trip():
    cfg = paper_config().model
    loaded = ml_collections.ConfigDict(json.loads(cfg.to_json()))  # tuples come back as lists
    assert ModelSpec.from_config(loaded, [100, 100, 2], 10) == ModelSpec.from_config(cfg, (100, 100, 2), 10)


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda m: m.update(decoder="pytorch_reference", decoder_global_features=(288,)),
         r"config\.model\.decoder_global_features: expected 2"),
        (lambda m: m.update(decoder="pytorch_reference", decoder_local_features=(320, 160, 80)),
         r"config\.model\.decoder_local_features: expected 2"),
        (lambda m: m.update(decoder="tensorflow"), r"config\.model\.decoder: expected one of \('paper', 'pytorch_reference'\)"),
        (lambda m: m.encoder_local.update(stem_stride=4), r"paper decoder: cannot go from 25 to 100 pixels"),
        (lambda m: m.vq_global.update(code_dim=0), r"config\.model\.vq_global\.code_dim: expected an integer >= 1"),
        (lambda m: m.encoder_local.update(stages=((1, 3, 1, 16, 1), (6, 3, 2, 24))), r"encoder_local\.stages\[1\]"),
        (lambda m: m.update(dtype="float16"), r"config\.model\.dtype: expected one of"),
        (lambda m: m.update(heads=("local", "nucleus")), r"config\.model\.heads: expected a subset"),
        (lambda m: m.update(drop_path_rate=1.0), r"config\.model\.drop_path_rate: expected a number in \[0.0, 1.0\)"),
        (lambda m: m.update(decoder_features=(1,)), r"config\.model\.decoder_features: unknown field"),
        (lambda m: m.encoder_global.update(stem_stride=1, stages=((6, 3, 1, 80, 1),)), r"encoder_global: expected at least"),
        (lambda m: m.update(codebook_init="random"), r"config\.model\.codebook_init: expected one of \('uniform', 'kmeans'\)"),
        (lambda m: m.update(codebook_kmeans_iterations=0), r"config\.model\.codebook_kmeans_iterations: expected an integer >= 1"),
        (lambda m: m.update(codebook_restart_threshold=1.5),
         r"config\.model\.codebook_restart_threshold: expected a number in \[0.0, 1.0\)"),
        (lambda m: m.update(codebook_restart_decay=1.0), r"config\.model\.codebook_restart_decay: expected a number in \[0.0, 1.0\)"),
    ],
)
def test_bad_config_is_a_clear_error_naming_the_field(edit, message):
    cfg = paper_config().model
    edit(cfg)
    with pytest.raises(ModelConfigError, match=message):
        ModelSpec.from_config(cfg, (100, 100, 2), 10)


def test_missing_config_field_is_named():
    cfg = paper_config().model.to_dict()
    del cfg["residual_units"]
    with pytest.raises(ModelConfigError, match=r"config\.model\.residual_units: missing"):
        ModelSpec.from_config(cfg, (100, 100, 2), 10)


def test_a_run_saved_before_the_decoder_field_existed_builds_the_reference_decoders():
    """Runs saved before config.model.decoder existed were trained with the PyTorch reference's decoders."""
    cfg = paper_config().model.to_dict()
    for field in ("decoder", "decoder_min_features"):
        del cfg[field]
    spec = ModelSpec.from_config(cfg, (100, 100, 2), 10)
    assert spec.decoder == "pytorch_reference"
    assert spec.decoder_widths()["local"] == {"first": None, "blocks": (320, 160)}
    assert ModelSpec.from_config(paper_config().model, (100, 100, 2), 10).decoder == "paper"


def test_a_run_saved_before_remat_decoders_existed_loads_with_it_off():
    cfg = paper_config().model.to_dict()
    del cfg["remat_decoders"]
    assert ModelSpec.from_config(cfg, (100, 100, 2), 10).remat_decoders is False
    cfg["remat_decoders"] = 1
    with pytest.raises(ModelConfigError, match=r"config\.model\.remat_decoders: expected True or False"):
        ModelSpec.from_config(cfg, (100, 100, 2), 10)


def test_module_dtype_fields_reach_every_layer():
    """Every layer of the bfloat16 model computes in bfloat16 (except the quantizers and float32 logits): every
    module with a kernel (nn.Dense, and the convolutions in whichever form conv_layer picks on this backend:
    DenseConv, DepthwiseConv or nn.Conv) is captured, and each one's output is bfloat16."""
    model = make_model(tiny_model_cfg(dtype="bfloat16"), (32, 32, 2))
    x = jax.ShapeDtypeStruct((1, 32, 32, 2), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(RNGS, x, train=False), x)
    layers = (nn.Conv, nn.Dense, DenseConv, DepthwiseConv)
    _, state = jax.eval_shape(
        lambda v, x: model.apply(
            v, x, train=False, capture_intermediates=lambda m, _: isinstance(m, layers), mutable=["intermediates"]
        ),
        variables,
        x,
    )
    outputs = {_module_path(path, "__call__"): leaf for path, leaf in _with_paths(state["intermediates"])}
    kernels = {_module_path(path, "kernel"): leaf for path, leaf in _with_paths(variables["params"])
               if path[-1].key == "kernel"}
    assert set(outputs) == set(kernels), "a layer with a kernel was not captured"
    assert sum(k.ndim == 4 for k in kernels.values()) == 30 and sum(k.ndim == 2 for k in kernels.values()) == 12
    assert {leaf.dtype for leaf in outputs.values()} == {jnp.dtype(jnp.bfloat16)}


def test_off_the_cpu_conv_layer_builds_plain_convolutions_with_the_same_parameters(monkeypatch):
    """conv_layer's GPU/TPU branch (never taken by CI's CPU backend, so forced here): every convolution is a plain
    nn.Conv, the parameter tree is the CPU forms' tree, and the same parameters give the same outputs."""
    model = make_model(tiny_model_cfg(), (32, 32, 2))
    # One crop: the CPU forms' forward pass below is then test_eval.py's plain forward of one crop, the same program
    # (compiled once per session; the other forms' is this test's own)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 32, 32, 2)), jnp.float32)
    cpu_variables = model.init(RNGS, x, train=False)

    def conv_types():
        called = []  # the filter sees every module call: it records the convolutions' types and captures nothing
        jax.eval_shape(lambda v, x: model.apply(v, x, train=False, mutable=["intermediates"], capture_intermediates=(
            lambda m, _: isinstance(m, (nn.Conv, DenseConv, DepthwiseConv)) and called.append(type(m).__name__))),
            cpu_variables, x)
        return called

    def apply():
        return jax.jit(lambda v, x: model.apply(v, x, train=False))(cpu_variables, x)

    on_cpu = conv_types()
    assert len(on_cpu) == 30 and {"DenseConv", "DepthwiseConv"} <= set(on_cpu)
    expected = apply()
    monkeypatch.setattr(layers.jax, "default_backend", lambda: "gpu")
    assert conv_types() == ["Conv"] * 30
    other_variables = jax.eval_shape(lambda x: model.init(RNGS, x, train=False), x)
    chex.assert_trees_all_equal_shapes_and_dtypes(other_variables, cpu_variables)
    chex.assert_trees_all_close(apply(), expected, atol=2e-4, rtol=2e-4)


def _with_paths(tree):
    return jax.tree_util.tree_flatten_with_path(tree)[0]


def _module_path(path, last: str) -> tuple[str, ...]:
    """The module names of a leaf's path, up to `last` ('kernel' of params, '__call__' of intermediates)."""
    names = [getattr(k, "key", None) for k in path]
    return tuple(names[:names.index(last)])


def test_codebook_defaults_for_older_runs_are_the_configs_defaults():
    """A run saved before the codebook options existed loads with CODEBOOK_FIELD_DEFAULTS; they must be what
    paper_config sets, or such runs would resume as another model."""
    from cytoself_jax.models.cytoself import CODEBOOK_FIELD_DEFAULTS

    model = paper_config().model
    assert {k: model[k] for k in CODEBOOK_FIELD_DEFAULTS} == CODEBOOK_FIELD_DEFAULTS
