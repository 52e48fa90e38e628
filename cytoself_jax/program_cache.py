"""Traced programs kept on disk (jax.export), so that a warm start skips Python tracing as well as compiling.

JAX's persistent compilation cache (compile_cache.py) saves XLA's compile, but every process still traces the
model with flax and lowers it to find the cache key: on the demo model about 11 of the 21 s a warm `train.py`
took before its first step. `cached_program` serializes the traced program with `jax.export` the first time and,
in later processes, loads it instead of tracing; its compiled form still comes from the compilation cache.

A program file is keyed by everything that can change what tracing produces: the caller's `identity` (the
values the function closes over: model spec, loss settings, data variance...), the argument shapes, dtypes and
shardings, the source of this package, the versions of jax, jaxlib, flax and optax, the devices, XLA flags and
the jax settings that change tracing. Editing the code or a setting therefore traces again; nothing stale runs.
The files live in `exported/` inside the compilation cache folder and are on and off with it
($CYTOSELF_JAX_CACHE). A file that cannot be read or a function that cannot be exported (host callbacks) falls
back to plain tracing: the cache only ever costs a trace, never a result.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
from jax import export

from cytoself_jax import provenance

log = logging.getLogger(__name__)

FOLDER = "exported"
_FORMAT = 1  # bump when the file layout below changes
# jax settings that change what tracing produces (beyond the arguments and the code)
_TRACE_SETTINGS = ("jax_enable_x64", "jax_default_matmul_precision", "jax_default_prng_impl",
                   "jax_numpy_rank_promotion", "jax_numpy_dtype_promotion", "jax_threefry_partitionable")


def program_dir() -> Path | None:
    """The folder of exported programs (inside JAX's compilation cache folder), or None when that cache is off."""
    base = jax.config.jax_compilation_cache_dir
    return Path(base) / FOLDER if base else None


@lru_cache(maxsize=1)
def _environment() -> str:
    """Everything outside the call that changes a traced program: package source, versions, devices, flags."""
    versions = provenance.versions(("jax", "jaxlib", "flax", "optax"))
    devices = [(d.platform, d.device_kind, d.id) for d in jax.devices()]
    settings = {name: str(getattr(jax.config, name, None)) for name in _TRACE_SETTINGS}
    return repr((_FORMAT, provenance.source_sha256(), versions, devices, jax.process_count(), os.environ.get("XLA_FLAGS", ""),
                 settings))


def _signature(leaves: Sequence[Any]) -> tuple:
    """Shape, dtype, weak type and sharding of each argument leaf (what jit specializes on)."""
    return tuple((tuple(x.shape), str(x.dtype), bool(getattr(x, "weak_type", False)), repr(x.sharding))
                 for x in leaves)


def cached_program(jitted: Callable, *, name: str, identity: Any, donate_argnums: Sequence[int] = ()) -> Callable:
    """`jitted` (a jax.jit function of jax.Array pytrees) that, per argument signature, loads its traced program
    from disk when an earlier process exported it, and exports it otherwise. Only calls whose arrays are all
    committed (placed with jax.device_put or made by a jitted function) use the cache; others run `jitted`.
    Like a jitted function it has `.eval_shape(*args)`, answered from the kept program without tracing.

    identity: a value whose repr names everything `jitted` closes over (two functions with the same name and
    identity must compute the same thing); donate_argnums: as given to jax.jit, repeated here because an exported
    program does not carry donation. Returns `jitted` unchanged when the compilation cache is off or in a
    multi-process run (each process would export the same program)."""
    folder = program_dir()
    if folder is None or jax.process_count() > 1:
        return jitted
    return _CachedProgram(jitted, folder, name, identity, tuple(donate_argnums))


class _CachedProgram:
    def __init__(self, jitted: Callable, folder: Path, name: str, identity: Any, donate_argnums: tuple[int, ...]):
        self.jitted, self.folder, self.name, self.identity, self.donate_argnums = (
            jitted, folder, name, identity, donate_argnums)
        self.programs: dict[tuple, tuple[export.Exported, Any, Callable] | None] = {}  # None: not exportable

    def __call__(self, *args):
        program = self._program(args)
        if program is None:
            return self.jitted(*args)
        _, out_tree, call = program
        return jax.tree.unflatten(out_tree, call(*jax.tree.leaves(args)))

    def eval_shape(self, *args):
        """The output's shapes and dtypes (jax.ShapeDtypeStruct pytree)."""
        program = self._program(args)
        if program is None:
            return self.jitted.eval_shape(*args)
        exported, out_tree, _ = program
        return jax.tree.unflatten(out_tree, [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in exported.out_avals])

    def _program(self, args) -> tuple[export.Exported, Any, Callable] | None:
        """(exported program, output treedef, jitted call of the flat leaves) for these arguments, or None when
        they are not all committed (an array on the default device has no place of its own in a program over
        several devices) or the function cannot be exported (a host callback)."""
        leaves, in_tree = jax.tree.flatten(args)
        if not all(getattr(x, "committed", False) for x in leaves):
            return None
        signature = (in_tree, _signature(leaves))
        if signature not in self.programs:
            self.programs[signature] = self._load_or_export(args, leaves, signature)
        return self.programs[signature]

    def _load_or_export(self, args, leaves, signature):
        in_tree, leaf_signature = signature
        key = hashlib.sha256(repr((self.name, repr(self.identity), str(in_tree), leaf_signature,
                                   _environment())).encode())
        path = self.folder / f"{self.name}-{key.hexdigest()[:40]}.pkl"
        loaded = _load(path, in_tree)
        if loaded is None:
            try:
                loaded = _export(self.jitted, args, leaves, in_tree)
            except Exception as err:  # noqa: BLE001 -- trace as usual: nothing is lost but the time
                log.debug("%s: not exported (%s); traced in every process", self.name, err)
                return None
            _save(path, in_tree, *loaded)
        exported, out_tree = loaded
        # An exported program does not carry donation: donate the leaves of the donated positional arguments
        sizes = [len(jax.tree.leaves(a)) for a in args]
        donated = tuple(j for i in self.donate_argnums for j in range(sum(sizes[:i]), sum(sizes[:i + 1])))
        return exported, out_tree, jax.jit(exported.call, donate_argnums=donated)  # its shardings are its own


def _export(jitted, args, leaves, in_tree) -> tuple[export.Exported, Any]:
    out_tree = None

    def flat(*flat_leaves):
        nonlocal out_tree
        out = jitted(*jax.tree.unflatten(in_tree, flat_leaves))
        flat_out, out_tree = jax.tree.flatten(out)
        return flat_out

    specs = [jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding, weak_type=getattr(x, "weak_type", False))
             for x in leaves]
    exported = export.export(jax.jit(flat))(*specs)
    return exported, out_tree


def _load(path: Path, in_tree) -> tuple[export.Exported, Any] | None:
    try:
        with open(path, "rb") as f:
            saved = pickle.load(f)
        if saved["format"] != _FORMAT or saved["in_tree"] != in_tree:
            return None
        return export.deserialize(bytearray(saved["exported"])), saved["out_tree"]
    except FileNotFoundError:
        return None
    except Exception as err:  # noqa: BLE001 -- a truncated or foreign file: export again and replace it
        log.debug("%s: unreadable (%s); exporting again", path, err)
        return None


def _save(path: Path, in_tree, exported: export.Exported, out_tree) -> None:
    """Write atomically (a parallel process may write the same file); a read-only cache is not an error."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = pickle.dumps({"format": _FORMAT, "in_tree": in_tree, "out_tree": out_tree,
                             "exported": bytes(exported.serialize())})
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".tmp-", delete=False) as f:
            tmp = Path(f.name)
            f.write(data)
        os.replace(tmp, path)
    except OSError as err:
        log.debug("%s: not written (%s)", path, err)
        if tmp is not None:  # a full disk: leave no partial file behind
            tmp.unlink(missing_ok=True)
