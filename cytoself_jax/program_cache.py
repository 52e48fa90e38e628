"""Traced programs kept on disk (jax.export), so that a warm start skips Python tracing as well as compiling.

JAX's persistent compilation cache (compile_cache.py) saves XLA's compile, but every process still traces the
model with flax and lowers it to find the cache key: on the demo model about 11 of the 21 s a warm `train.py`
took before its first step. `cached_program` serializes the traced program with `jax.export` the first time and,
in later processes, loads it instead of tracing; its compiled form still comes from the compilation cache.

The key is complete by construction: a program is made by a *factory*, a module-level function without closure
or defaults, from *inputs* that are all hashed (the whole config, the dataset record, the mesh: values that
canonicalize below, nothing else is accepted). The factory therefore sees nothing the key does not name except
code, and the key also has the source of this package and of the factory's module, the versions of the
libraries a trace runs through, every jax setting, the devices and XLA_FLAGS, and the arguments' tree, shapes,
dtypes and shardings. Editing the code, a setting or any config field traces again; nothing stale runs.

A file is one JSON header line (format, program name, key) then `Exported.serialize()`'s bytes (a flatbuffer
with the StableHLO module and the argument and result trees); reading it executes no code (no pickle). Result
trees may hold dicts, lists, tuples, None and the pytree nodes registered with jax.export (train_state.py
registers the train state's). The files live in `exported/` inside the compilation cache folder and are on
and off with it ($CYTOSELF_JAX_CACHE). A file that cannot be read or a program that cannot be exported (host
callbacks, an unregistered node) falls back to plain tracing: the cache only ever costs a trace, never a result.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import sys
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import ml_collections
from jax import export
from jax.sharding import Mesh

from cytoself_jax import provenance

log = logging.getLogger(__name__)

FOLDER = "exported"
SUFFIX = ".jaxexport"
_FORMAT = 2  # bump when the file layout below changes
# The libraries a trace of the model runs through (their code is not in the source hash)
_LIBRARIES = ("jax", "jaxlib", "flax", "optax", "numpy", "ml_dtypes", "ml_collections")


def program_dir() -> Path | None:
    """The folder of exported programs (inside JAX's compilation cache folder), or None when that cache is off."""
    base = jax.config.jax_compilation_cache_dir
    return Path(base) / FOLDER if base else None


def device_description() -> list:
    """(platform, kind, id, platform version) of every device, and the process count."""
    devices = jax.devices()
    version = devices[0].client.platform_version if devices else ""
    return [[d.platform, d.device_kind, d.id, version] for d in devices] + [jax.process_count()]


@lru_cache(maxsize=1)
def _environment() -> str:
    """Everything outside the call that changes a traced program: package source, library versions, every jax
    setting, devices and XLA flags (computed once per process)."""
    settings = sorted((name, repr(value)) for name, value in jax.config.values.items())
    return repr((_FORMAT, provenance.source_sha256(), provenance.versions(_LIBRARIES), device_description(),
                 os.environ.get("XLA_FLAGS", ""), settings))


def canonical(value: Any) -> Any:
    """`value` as a JSON-able tree that keeps every type (a tuple is not a list, 1 is not 1.0 nor True) and
    orders mapping keys: config dicts, dicts, sequences, str/int/float/bool/None, numpy scalars and a Mesh.
    Raises TypeError for anything else, so that an input whose content the key would not see is refused."""
    if isinstance(value, ml_collections.ConfigDict):
        return ["ConfigDict", canonical(value.to_dict())]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"cached_program: dict keys must be strings, found {list(value)[:5]}")
        return ["dict", [[k, canonical(value[k])] for k in sorted(value)]]
    if isinstance(value, (list, tuple)):
        return [type(value).__name__, [canonical(v) for v in value]]
    if value is None or isinstance(value, (str, bool, int, float)):
        return [type(value).__name__, repr(value)]
    if hasattr(value, "dtype") and getattr(value, "shape", None) == ():  # numpy scalar
        return [str(value.dtype), repr(value.item())]
    if isinstance(value, Mesh):
        return ["Mesh", list(value.axis_names), list(value.devices.shape),
                [[d.platform, d.device_kind, d.id] for d in value.devices.flat]]
    raise TypeError(f"cached_program: an input of type {type(value).__name__} cannot be part of a program's key; "
                    "pass configs, JSON values or a Mesh")


def _factory_identity(factory: Callable) -> list:
    """Module, name and module source of a factory, after checking that it can see nothing but its inputs, its
    module's code and the libraries: a module-level function without closure or default values."""
    module = sys.modules.get(getattr(factory, "__module__", None) or "")
    if (not inspect.isfunction(factory) or factory.__closure__ or factory.__defaults__ or factory.__kwdefaults__
            or module is None or getattr(module, factory.__name__, None) is not factory):
        raise TypeError(f"cached_program: factory {factory!r}: expected a module-level function without closure "
                        "or default values (what it builds from must be in its inputs, which are hashed)")
    source = hashlib.sha256(inspect.getsource(module).encode()).hexdigest()
    return [factory.__module__, factory.__qualname__, source]


def _signature(leaves: Sequence[Any]) -> tuple:
    """Shape, dtype, weak type and sharding of each argument leaf (what jit specializes on)."""
    return tuple((tuple(x.shape), str(x.dtype), bool(getattr(x, "weak_type", False)), repr(x.sharding))
                 for x in leaves)


def cached_program(factory: Callable[..., Callable], *inputs: Any, donate_argnums: Sequence[int] = ()) -> Callable:
    """The jitted function `factory(*inputs)` (a jax.jit function of jax.Array pytrees) that, per argument
    signature, loads its traced program from disk when an earlier process exported it for the same key, and
    exports it otherwise. The factory is called only when a program must be traced. Only calls whose arrays are
    all committed (placed with jax.device_put or made by a jitted function) use the disk; others run the jitted
    function. Like a jitted function it has `.eval_shape(*args)`, answered from the kept program without tracing.

    factory: a module-level function without closure or defaults; inputs: everything it builds the program from
    (e.g. config, dataset record, mesh), each accepted by `canonical`; donate_argnums: as the jitted function
    donates, repeated here because an exported program does not carry donation. Returns `factory(*inputs)` itself
    when the compilation cache is off or in a multi-process run (each process would export the same program)."""
    identity = repr((_factory_identity(factory), canonical(list(inputs))))
    folder = program_dir()
    if folder is None or jax.process_count() > 1:
        return factory(*inputs)
    return _CachedProgram(lambda: factory(*inputs), folder, factory.__name__, identity, tuple(donate_argnums))


class _CachedProgram:
    def __init__(self, make: Callable[[], Callable], folder: Path, name: str, identity: str,
                 donate_argnums: tuple[int, ...]):
        self.make, self.folder, self.name, self.identity, self.donate_argnums = (
            make, folder, name, identity, donate_argnums)
        self._jitted: Callable | None = None
        self.programs: dict[tuple, tuple[export.Exported, Callable] | None] = {}  # None: not exportable

    @property
    def jitted(self) -> Callable:
        """The factory's jitted function, made on first use."""
        if self._jitted is None:
            self._jitted = self.make()
        return self._jitted

    def __call__(self, *args):
        program = self._program(args)
        if program is None:
            return self.jitted(*args)
        return program[1](*args)

    def eval_shape(self, *args):
        """The output's shapes and dtypes (jax.ShapeDtypeStruct pytree)."""
        program = self._program(args)
        if program is None:
            return self.jitted.eval_shape(*args)
        exported = program[0]
        return jax.tree.unflatten(exported.out_tree,
                                  [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in exported.out_avals])

    def key(self, args) -> str:
        """The file key of a call with these arguments (sha256, hex)."""
        leaves, in_tree = jax.tree.flatten(args)
        return hashlib.sha256(repr((self.name, self.identity, str(in_tree), _signature(leaves),
                                    _environment())).encode()).hexdigest()

    def _program(self, args) -> tuple[export.Exported, Callable] | None:
        """(exported program, its jitted call) for these arguments, or None when they are not all committed (an
        array on the default device has no place of its own in a program over several devices) or the function
        cannot be exported (a host callback, a result node jax.export cannot serialize)."""
        leaves, in_tree = jax.tree.flatten(args)
        if not all(getattr(x, "committed", False) for x in leaves):
            return None
        signature = (in_tree, _signature(leaves))
        if signature not in self.programs:
            self.programs[signature] = self._load_or_export(args)
        return self.programs[signature]

    def _load_or_export(self, args):
        key = self.key(args)
        path = self.folder / f"{self.name}-{key[:40]}{SUFFIX}"
        exported = _load(path, self.name, key)
        if exported is None:
            specs = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding,
                                                                weak_type=getattr(x, "weak_type", False)), args)
            try:
                exported = export.export(self.jitted)(*specs)
                data = exported.serialize()
            except Exception as err:  # noqa: BLE001 -- trace as usual: nothing is lost but the time
                log.info("%s: not kept on disk (%s); traced in every process", self.name, err)
                return None
            _save(path, _header(self.name, key) + bytes(data))
        # its shardings are its own; donation is not part of an exported program
        return exported, jax.jit(exported.call, donate_argnums=self.donate_argnums)


def _header(name: str, key: str) -> bytes:
    return json.dumps({"format": _FORMAT, "program": name, "key": key}).encode() + b"\n"


def _load(path: Path, name: str, key: str) -> export.Exported | None:
    """The program in `path` when its header names this program and key; None when absent or unreadable."""
    try:
        data = path.read_bytes()
        header, _, body = data.partition(b"\n")
        if header != _header(name, key).rstrip(b"\n"):
            return None
        return export.deserialize(bytearray(body))
    except FileNotFoundError:
        return None
    except Exception as err:  # noqa: BLE001 -- a truncated or foreign file: export again and replace it
        log.debug("%s: unreadable (%s); exporting again", path, err)
        return None


def _save(path: Path, data: bytes) -> None:
    """Write atomically (a parallel process may write the same file); a read-only cache is not an error."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".tmp-", delete=False) as f:
            tmp = Path(f.name)
            f.write(data)
        os.replace(tmp, path)
    except OSError as err:
        log.debug("%s: not written (%s)", path, err)
        if tmp is not None:  # a full disk: leave no partial file behind
            tmp.unlink(missing_ok=True)
