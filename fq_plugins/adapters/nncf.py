"""NNCF host: the methods inside an existing ``nncf.quantize`` pipeline, down to OpenVINO.

A host is an installer plus a driver (``docs/architecture.md``). Here the installer puts
every method's weight transform into NNCF's own hook storage as a post-function hook on
the parameter (``register_post_function_hook(model, "conv.weight", 0, hook)``); the driver
is the user's loop (or the HF callback) with :func:`objective` / :func:`penalty`. Loss,
stages, finalize check, codes and report are the engine's::

    q = nncf.quantize(model, nncf.Dataset(calib))          # their pipeline, unchanged
    q = fq_nncf.apply(q, "recipe.yaml", calib=train_loader)
    loss = fq_nncf.objective(q)(q(x), y, g).total           # task + fairness + penalties
    q = fq_nncf.finalize(q, probe=...)                       # NNCF integer quantizers
    ov_model, report = fq_nncf.to_openvino(q, x)             # u2/u3/u4/i8 weight constants

**Starting from NNCF's quantizers.** Where ``nncf.quantize`` put a ``SymmetricQuantizer``
on a target's weight (a pre-hook on the op's weight port), :func:`apply` removes it and puts
an :class:`NNCFRangeClip` with its ``scale`` in front of the method's transform: the weight
is clipped to NNCF's range ``[-scale, scale]``, so an absmax method (Uniform, BAQ) sees
``max|w| = scale`` and its step is NNCF's ``scale / level_high``. A BAQ run whose budget
starts at 8 bits (``levels: {8: 1.0}``) therefore equals NNCF's int8 model at step 0.
NNCF's activation quantizers stay where they are and keep running.

**Finalize** bakes the methods (the engine's checked finalize), folds our hooks out of the
hook storage (``nncf.strip`` would leave them running), and puts an NNCF
``SymmetricQuantizer`` back on every layer whose codes are symmetric
(``value = k·Δ_c``: Uniform, BAQ without dead-zone) with ``num_bits`` = the layer's widest
learned bit-width and ``scale_c = Δ_c·level_high`` (so its grid contains every code).
CoDeQ's and the dead-zone codes (``value = sign(k)·(|k|·s + shift)``) are no uniform grid: those
layers stay dense float in torch and get their true-size codes only in OpenVINO.

**OpenVINO** (:func:`to_openvino`, pip ``openvino``): NNCF's torch backend strips only
8-bit quantizers, so every weight quantizer is widened to an exact 8-bit one (its grid
contains the codes), stripped and converted; then each weight constant is replaced by its
codes at their true width — ``u2``/``u3``/``u4`` with a zero point for 2/3/4 bits, ``i8``
for 5–8 bits (widened: OpenVINO has no u5/u6/u7) — followed by ``Convert → Subtract →
Multiply`` (CoDeQ: ``+ shift·sign``), in front of the original weight FakeQuantize.

Checkpoints use NNCF's own format: ``nncf.torch.get_config(q)`` + ``q.state_dict()``,
restored with ``load_from_config(..., allowed_modules=ALLOWED_MODULES)`` (NNCF's default
plus this module, never ``"*"``) — or :func:`restore`, which also re-creates the methods'
``MethodState`` children.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import importlib
import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from ..errors import ConfigError, FQError, MissingDependencyError
from ..protocols import AttachContext

try:
    import nncf
    from nncf.common.quantization.structs import QuantizationScheme
    from nncf.torch.function_hook.hook_storage import HookStorage, decode_hook_name
    from nncf.torch.function_hook.serialization import DEFAULT_ALLOWED_MODULES, load_from_config
    from nncf.torch.function_hook.wrapper import (
        get_hook_storage,
        is_wrapped,
        register_post_function_hook,
        wrap_model,
    )
    from nncf.torch.layer_utils import StatefulModuleInterface
    from nncf.torch.quantization.layers import (
        AsymmetricQuantizer,
        PTQuantizerSpec,
        SymmetricQuantizer,
    )
except ImportError as exc:  # pragma: no cover - exercised only without nncf
    raise MissingDependencyError("nncf", "nncf", "fq_plugins.adapters.nncf") from exc

if TYPE_CHECKING:
    from ..engine.objective import Objective
    from ..engine.pipeline import CompressionPipeline, Probe
    from ..manager import FQPluginManager
    from ..recipe import CompressionRecipe
    from ..session import CompressionSession

__all__ = [
    "ALLOWED_MODULES",
    "CHECK_CONFIG",
    "TESTED_NNCF",
    "FQWeightHook",
    "NNCFHookInstaller",
    "NNCFRangeClip",
    "OpenVINOReport",
    "SequentialWrapper",
    "WeightCompressionPlan",
    "apply",
    "compress_weights",
    "finalize",
    "objective",
    "penalty",
    "pipeline_of",
    "restore",
    "session_of",
    "to_openvino",
    "wrap_sequential",
]

TESTED_NNCF = ((3, 4), (3, 5))
"""NNCF versions this module's imports are tested on: ``>= 3.4, < 3.5``."""

ALLOWED_MODULES: tuple[str, ...] = (*DEFAULT_ALLOWED_MODULES, __name__)
"""``allowed_modules`` for ``nncf.torch.load_from_config``: NNCF's default plus this module."""

TRANSFORM_MODULES: tuple[str, ...] = ("fq_plugins.*",)
"""Where a hook's inner transform class may be imported from on restore (plus the packages of
the registered compressor plugins)."""

_HOST_ATTR = "_fq_nncf_host"
_WEIGHT_PORT = 1  # NNCF's weight quantizer: pre-hook on the conv/linear op's port 1


def _version_ok() -> bool:
    parts = [int(p) for p in nncf.__version__.split(".")[:2] if p.isdigit()]
    return TESTED_NNCF[0] <= tuple(parts) < TESTED_NNCF[1]


if not _version_ok():  # pragma: no cover - depends on the installed version
    import warnings

    warnings.warn(
        f"fq_plugins.adapters.nncf is tested on nncf 3.4.x; found {nncf.__version__}. "
        "pin `nncf>=3.4,<3.5` (pip install 'fq-plugins[nncf]') if hooks misbehave",
        stacklevel=2,
    )


# --- the hook modules (NNCF-serializable) --------------------------------------------


def _allowed_transform_patterns() -> tuple[str, ...]:
    from ..manager import get_plugin_manager

    pats = list(TRANSFORM_MODULES)
    try:
        pm = get_plugin_manager()
        for name in pm.compressors.names():
            mod = getattr(pm.compressors.get(name), "__module__", "") or ""
            top = mod.split(".")[0]
            if top:
                pats.append(f"{top}.*")
    except FQError:  # pragma: no cover - a broken plugin set still restores built-ins
        pass
    return tuple(dict.fromkeys(pats))


def _json_value(v: Any) -> bool:
    if v is None or isinstance(v, (bool, int, float, str)):
        return not (isinstance(v, float) and not math.isfinite(v))
    if isinstance(v, (list, tuple)):
        return all(_json_value(x) for x in v)
    return False


def describe_module(module: nn.Module) -> dict[str, Any]:
    """A JSON skeleton of ``module``: class path, plain attributes, parameter and buffer
    shapes, children. Values come back from the ``state_dict``.

    :raises FQError: an attribute is neither JSON nor a tensor/module (it would be lost).
    """
    cls = type(module)
    attrs: dict[str, Any] = {}
    for k, v in module.__dict__.items():
        if k.startswith("_") or k == "training":
            continue
        if not _json_value(v):
            raise FQError(
                f"{cls.__module__}.{cls.__qualname__}.{k} = {v!r} is not JSON; an NNCF "
                "checkpoint could not restore it. Keep transform state in buffers, parameters "
                "or JSON attributes (str, int, float, bool, lists of them)"
            )
        attrs[k] = list(v) if isinstance(v, tuple) else v

    def tens(d: dict[str, torch.Tensor | None]) -> dict[str, Any]:
        return {
            n: None if t is None else {"shape": list(t.shape), "dtype": str(t.dtype)}
            for n, t in d.items()
        }

    return {
        "cls": f"{cls.__module__}:{cls.__qualname__}",
        "attrs": attrs,
        "params": tens(dict(module._parameters)),
        "buffers": tens(dict(module._buffers)),
        "persistent": sorted(set(module._buffers) - set(module._non_persistent_buffers_set)),
        "training": module.training,
        "children": {n: describe_module(c) for n, c in module._modules.items() if c is not None},
    }


def build_module(desc: dict[str, Any]) -> nn.Module:
    """The module :func:`describe_module` described, with empty tensors of the right shapes.

    :raises FQError: the class is outside :data:`TRANSFORM_MODULES` and the registered
        compressor packages, missing, or not an ``nn.Module``.
    """
    mod_path, _, qualname = str(desc.get("cls", "")).partition(":")
    pats = _allowed_transform_patterns()
    if not any(fnmatch.fnmatchcase(mod_path, p) or mod_path == p.removesuffix(".*") for p in pats):
        raise FQError(
            f"refusing to restore transform class {mod_path}:{qualname}: its module is not one "
            f"of {pats}. Only fq-plugins transforms and those of registered compressor plugins "
            "are restored from an NNCF config"
        )
    try:
        obj: Any = importlib.import_module(mod_path)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise FQError(f"cannot import transform class {mod_path}:{qualname}: {exc}") from exc
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise FQError(f"{mod_path}:{qualname} is not an nn.Module class")
    m = obj.__new__(obj)
    nn.Module.__init__(m)
    for k, v in desc.get("attrs", {}).items():
        object.__setattr__(m, k, v)

    def empty(spec: dict[str, Any]) -> torch.Tensor:
        return torch.zeros(
            spec["shape"], dtype=getattr(torch, spec["dtype"].removeprefix("torch."))
        )

    for n, spec in desc.get("params", {}).items():
        m.register_parameter(n, None if spec is None else nn.Parameter(empty(spec)))
    persistent = set(desc.get("persistent", []))
    for n, spec in desc.get("buffers", {}).items():
        m.register_buffer(n, None if spec is None else empty(spec), persistent=n in persistent)
    for n, cd in desc.get("children", {}).items():
        m.add_module(n, build_module(cd))
    m.train(bool(desc.get("training", True)))
    return m


class FQWeightHook(nn.Module, StatefulModuleInterface):
    """NNCF post-function hook on a parameter that runs one fq-plugins weight transform.

    The transform is the child ``transform`` (its parameters and buffers are in the
    model's ``state_dict`` under ``__nncf_hooks.post_hooks.<param>__0.<i>.transform.*``).
    """

    def __init__(self, transform: nn.Module) -> None:
        super().__init__()
        self.transform = transform

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.transform(w))

    def get_config(self) -> dict[str, Any]:
        return {"transform": describe_module(self.transform)}

    @classmethod
    def from_config(cls, state: dict[str, Any]) -> FQWeightHook:
        return cls(build_module(state["transform"]))


class _RangeClip(torch.autograd.Function):
    """``clamp(w, -r, r)`` with the straight-through gradient ``[|w| ≤ r]`` from one saved
    boolean mask (autograd of ``maximum(minimum(w, r), -r)`` builds a mask per op and splits
    the gradient at ties; profiled: a large part of the adapter's extra time per step)."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        inside = w.abs() <= r
        ctx.save_for_backward(inside)
        return torch.clamp(w, min=-r, max=r)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (inside,) = ctx.saved_tensors
        return grad * inside, None


class NNCFRangeClip(nn.Module, StatefulModuleInterface):
    """``clamp(w, -r_c, r_c)`` with NNCF's weight-quantizer range ``r = |scale| + eps``.

    Put in front of the methods' transforms where ``apply`` removed an NNCF weight quantizer,
    so they start from NNCF's range. ``num_bits`` and ``narrow_range`` of the removed
    quantizer are kept for :func:`finalize`.
    """

    range: torch.Tensor

    def __init__(
        self, scale_shape: list[int], num_bits: int = 8, narrow_range: bool = True
    ) -> None:
        super().__init__()
        self.register_buffer("range", torch.ones(scale_shape))
        self.num_bits = int(num_bits)
        self.narrow_range = bool(narrow_range)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, _RangeClip.apply(w, self.range.to(w.dtype)))

    def get_config(self) -> dict[str, Any]:
        return {
            "scale_shape": list(self.range.shape),
            "num_bits": self.num_bits,
            "narrow_range": self.narrow_range,
        }

    @classmethod
    def from_config(cls, state: dict[str, Any]) -> NNCFRangeClip:
        return cls(list(state["scale_shape"]), int(state["num_bits"]), bool(state["narrow_range"]))


# --- the installer ---------------------------------------------------------------------


def _hooks_on(storage: HookStorage, param_name: str) -> list[tuple[str, nn.Module]]:
    """Post-hooks on parameter ``param_name`` (port 0), in execution order."""
    key = f"{param_name.replace('.', ':')}__0"
    if key not in storage.post_hooks:
        return []
    d = cast(nn.ModuleDict, storage.post_hooks[key])
    return [(f"post_hooks.{key}.{i}", h) for i, h in d.items()]


class NNCFHookInstaller:
    """Installer of this host: NNCF post-function hooks on the targets' parameters."""

    name = "nncf"

    def __init__(self, root: nn.Module) -> None:
        if not is_wrapped(root):
            raise ConfigError(
                f"{type(root).__name__} is not an NNCF-wrapped model; call fq_nncf.apply "
                "(it wraps) or nncf.quantize first",
                key="model",
            )
        self.root = root
        self._names = {id(m): n for n, m in root.named_modules()}

    @property
    def storage(self) -> HookStorage:
        return get_hook_storage(self.root)

    def param_name(self, module: nn.Module, param: str) -> str:
        name = self._names.get(id(module))
        if name is None:
            self._names = {id(m): n for n, m in self.root.named_modules()}
            name = self._names.get(id(module))
        if name is None:
            raise ConfigError(
                f"{type(module).__name__} is not a module of the NNCF model", key="targets"
            )
        return f"{name}.{param}" if name else param

    def install(self, module: nn.Module, param: str, transform: nn.Module) -> None:
        if not isinstance(getattr(module, param, None), torch.Tensor):
            raise ValueError(
                f"{type(module).__name__} has no tensor {param!r} to transform; "
                "check `targets.parameters` in the recipe"
            )
        register_post_function_hook(
            self.root, self.param_name(module, param), 0, FQWeightHook(transform)
        )

    def _hooks(self, module: nn.Module, param: str) -> list[tuple[str, nn.Module]]:
        return _hooks_on(self.storage, self.param_name(module, param))

    def transforms(self, module: nn.Module, param: str) -> list[nn.Module]:
        return [h.transform for _, h in self._hooks(module, param) if isinstance(h, FQWeightHook)]

    def original(self, module: nn.Module, param: str) -> torch.Tensor:
        return cast(torch.Tensor, getattr(module, param))

    @torch.no_grad()
    def input_of(self, module: nn.Module, param: str, transform: nn.Module) -> torch.Tensor:
        value = self.original(module, param)
        for _, h in self._hooks(module, param):
            if isinstance(h, FQWeightHook) and h.transform is transform:
                return value.detach()
            value = h(value)
        raise ValueError(f"the transform is not installed on {type(module).__name__}.{param}")

    @torch.no_grad()
    def bake(self, module: nn.Module, param: str) -> None:
        hooks = self._hooks(module, param)
        if not hooks:
            return
        p = cast(torch.Tensor, getattr(module, param))
        value = p.detach()
        for _, h in hooks:
            value = h(value)
        p.data.copy_(value)
        for name, _ in hooks:
            self.storage.delete_hook(name)


# --- apply ----------------------------------------------------------------------------


class SequentialWrapper(nn.Module):
    """A top-level ``nn.Sequential`` as a module NNCF can wrap (parameters under ``body.``)."""

    def __init__(self, body: nn.Sequential) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.body(x))


def wrap_sequential(model: nn.Module) -> nn.Module:
    """``model`` itself, or a :class:`SequentialWrapper` around a top-level ``nn.Sequential``
    (NNCF's forward wrapper breaks on one): call it before ``nncf.quantize``."""
    return SequentialWrapper(model) if type(model) is nn.Sequential else model


@dataclasses.dataclass
class _Host:
    """What :func:`apply` attached to one model; not copied or pickled (the state is in the
    model's ``state_dict``)."""

    pipeline: CompressionPipeline
    recipe: CompressionRecipe
    installer: NNCFHookInstaller
    finalized: bool = False

    def __deepcopy__(self, memo: dict[int, Any]) -> None:
        return None

    def __reduce__(self) -> Any:
        return (type(None), ())


def _calib_factory(calib: Any) -> Callable[[], Iterator[Any]] | None:
    if calib is None:
        return None
    if callable(calib) and not hasattr(calib, "__iter__"):
        return cast(Callable[[], Iterator[Any]], calib)
    if isinstance(calib, Iterator):
        raise ConfigError(
            f"calib is a one-shot iterator ({type(calib).__name__}); a method may read it more "
            "than once. Pass a DataLoader, a list of (x, y, group) batches, or a zero-argument "
            "callable returning a fresh iterator",
            key="calib",
        )
    if hasattr(calib, "__iter__"):
        return lambda: iter(calib)
    raise ConfigError(
        f"calib must be a DataLoader, a list of (x, y, group) batches or a callable; got "
        f"{type(calib).__name__}",
        key="calib",
    )


def _take_nncf_weight_quantizers(
    root: nn.Module, installer: NNCFHookInstaller, targets: Any
) -> None:
    """Replace NNCF's weight quantizer of each target by an :class:`NNCFRangeClip` with its
    scale, as the first post-hook on the parameter."""
    storage = installer.storage
    by_module: dict[str, list[str]] = {}
    for hook_name, h in list(storage.named_hooks()):
        kind, op_name, port = decode_hook_name(hook_name)
        if (
            kind == "pre_hooks"
            and port == _WEIGHT_PORT
            and isinstance(h, (SymmetricQuantizer, AsymmetricQuantizer))
        ):
            # NNCF names ops "<module path with / for .>/<fn>/<call>"
            by_module.setdefault(op_name.rsplit("/", 2)[0].replace("/", "."), []).append(hook_name)
    for t in targets:
        found = by_module.get(t.name, [])
        if not found or t.param != "weight":
            continue
        hook_name = found[0]
        q = storage.get_submodule(hook_name)
        if isinstance(q, AsymmetricQuantizer):
            raise ConfigError(
                f"NNCF put an asymmetric weight quantizer on {t.name!r}; fq-plugins methods "
                "start from symmetric ones. Quantize with NNCF's default (symmetric weights) "
                "or leave this layer out of the recipe's targets",
                key="targets",
            )
        assert isinstance(q, SymmetricQuantizer)
        w = installer.original(t.module, t.param)
        scale = q.scale.detach().abs() + q.eps
        if scale.numel() not in (1, w.shape[0]):
            raise ConfigError(
                f"NNCF's weight quantizer of {t.name!r} has scale shape {tuple(scale.shape)}; "
                f"expected per-output-channel ({w.shape[0]}) or per-tensor",
                key="targets",
            )
        clip = NNCFRangeClip(list(scale.shape), q.num_bits, bool(q.narrow_range))
        clip.range.copy_(scale)
        clip.to(w.device)
        storage.delete_hook(hook_name)
        register_post_function_hook(root, installer.param_name(t.module, t.param), 0, clip)


def apply(
    model: nn.Module,
    recipe: Any,
    *,
    calib: Any = None,
    group_key: str | None = None,
    n_groups: int | None = None,
    example_input: torch.Tensor | None = None,
    plugin_manager: FQPluginManager | None = None,
    start_from_nncf: bool = True,
) -> nn.Module:
    """Attach the recipe's ``compress`` methods to ``model`` as NNCF hooks; returns the model.

    :param model: the output of ``nncf.quantize`` (wrapped), or a plain model (wrapped here;
        a top-level ``nn.Sequential`` is first put in a :class:`SequentialWrapper`).
    :param recipe: a recipe path, dict or :class:`~fq_plugins.recipe.CompressionRecipe`.
    :param calib: ``(x, y, group)`` batches for methods that measure importance (FairQuant):
        a DataLoader, a list, or a zero-argument callable returning an iterator.
    :param start_from_nncf: replace NNCF's weight quantizers on the targets by their range
        (see the module docstring); False leaves them in place after our transform.
    :raises ConfigError: a bad recipe, calib, or a model already carrying an attach.
    """
    from ..engine.pipeline import CompressionPipeline
    from ..recipe import load_compression_recipe
    from ..targets import select_targets

    rec = load_compression_recipe(recipe, plugin_manager=plugin_manager)
    if not rec.compress:
        raise ConfigError(
            "the recipe's compress list is empty: name at least one method", key="compress"
        )
    if _host(model) is not None:
        raise ConfigError(
            "fq-plugins methods are attached to this model already; apply once per model",
            key="model",
        )
    model = wrap_sequential(model)
    model = wrap_model(model)
    installer = NNCFHookInstaller(model)
    p = next(iter(model.parameters()), None)
    ctx = AttachContext(
        calib_batches=_calib_factory(calib),
        group_key=group_key or rec.fairness.group_key,
        n_groups=n_groups,
        device=p.device if p is not None else torch.device("cpu"),
        example_input=example_input,
        installer=installer,
    )
    pipe = CompressionPipeline(rec.compress, plugin_manager=plugin_manager, context=ctx)
    if start_from_nncf:
        for i, cfg in enumerate(pipe.configs):
            _take_nncf_weight_quantizers(
                model, installer, select_targets(model, cfg.targets, key=f"compress[{i}].targets")
            )
    pipe.start(model)
    model.__dict__[_HOST_ATTR] = _Host(pipe, rec, installer)
    return model


def _host(model: nn.Module) -> _Host | None:
    h = model.__dict__.get(_HOST_ATTR)
    return h if isinstance(h, _Host) else None


def pipeline_of(model: nn.Module) -> CompressionPipeline:
    """The :class:`~fq_plugins.engine.CompressionPipeline` :func:`apply` attached."""
    h = _host(model)
    if h is None:
        raise ConfigError(
            "no fq-plugins method is attached to this model: call fq_nncf.apply(model, recipe) "
            "first (a deepcopy or reloaded model carries the state but no session: apply to "
            "the fresh model again, then load_state_dict)",
            key="model",
        )
    return h.pipeline


def session_of(model: nn.Module) -> CompressionSession:
    """The current stage's session (``param_groups``, ``on_step``, ``stats``…)."""
    return pipeline_of(model).session


def penalty(model: nn.Module) -> torch.Tensor:
    """Σ of the attached methods' (already weighted) penalties, a 0-d tensor."""
    return session_of(model).penalty()


def objective(model: nn.Module, *, n_groups: int | None = None) -> Objective:
    """The engine's :class:`~fq_plugins.engine.Objective` for the recipe :func:`apply` read:
    ``objective(q)(logits, y, groups).total`` = task + λ·fairness + penalties."""
    from ..engine.objective import Objective

    h = _host(model)
    pipe = pipeline_of(model)
    assert h is not None
    return Objective.from_recipe(h.recipe, pipe.session, n_groups=n_groups)


# --- finalize ---------------------------------------------------------------------------


def _nncf_weight_quantizer(
    step: torch.Tensor, bits: int, device: torch.device
) -> SymmetricQuantizer:
    """A signed narrow-range NNCF ``SymmetricQuantizer`` whose step per channel is ``step``."""
    shape = tuple(step.shape)
    spec = PTQuantizerSpec(
        num_bits=bits,
        mode=QuantizationScheme.SYMMETRIC,
        signedness_to_force=True,
        narrow_range=True,
        half_range=False,
        scale_shape=shape,
        logarithm_scale=False,
    )
    q = SymmetricQuantizer(spec)
    with torch.no_grad():
        q.scale.copy_(step * float(q.level_high) - q.eps)
    return q.to(device)


def _weight_op_hook_name(storage: HookStorage, module_name: str, module: nn.Module) -> str | None:
    """``pre_hooks.<op>__1`` of the op consuming ``module``'s weight, if a graph op is known."""
    kind = (
        "conv2d"
        if isinstance(module, nn.Conv2d)
        else "linear"
        if isinstance(module, nn.Linear)
        else None
    )
    if kind is None:
        return None
    return f"{module_name.replace('.', '/')}/{kind}/0"  # NNCF's op naming


def finalize(model: nn.Module, probe: Probe | None = None) -> nn.Module:
    """Bake the methods (checked with ``probe``: :attr:`pipeline_of(model).max_diff`), remove
    our hooks from NNCF's storage, and put NNCF integer quantizers with the learned bits on
    every layer whose codes are a symmetric grid. Returns the (still NNCF-wrapped) model.
    Single-stage recipes only here; a structural stage (BMRS) first: finalize it with the
    engine (``pipeline_of(q).next_stage``) before."""
    h = _host(model)
    pipe = pipeline_of(model)
    assert h is not None
    if h.finalized:
        raise ConfigError("this model was finalized already", key="model")
    if not pipe.is_last_stage:
        raise ConfigError(
            f"stage {pipe.stage + 1} of {len(pipe.stages)} is structural: call "
            "pipeline_of(q).next_stage(q, probe) and train the next stage first",
            key="model",
        )
    targets: dict[str, tuple[nn.Module, str]] = {}
    for m in pipe.session.methods:
        for t in m.transforms:
            targets[t.name] = (t.module, t.param)
    from ..engine.pipeline import run_probe

    reference = run_probe(probe, model) if probe is not None else None
    final = pipe.finalize(model, probe, reference=reference)
    codes = pipe.storage_codes()
    storage = h.installer.storage
    # clips and any hook left on a target parameter are folded too
    for mod, param in targets.values():
        h.installer.bake(mod, param)
    from nncf.torch.function_hook.wrapper import register_pre_function_hook

    for name, qc in codes.items():
        mod, param = targets[name]
        op = _weight_op_hook_name(storage, name, mod)
        if op is None or param != "weight" or qc.offset != 0 or bool((qc.shift != 0).any()):
            continue  # not a symmetric grid (CoDeQ, dead-zone): dense float in torch
        bits = _bits_for_codes(int(qc.max_code.max()))
        if bits is None or bits > 8:
            continue
        w = cast(torch.Tensor, getattr(mod, param))
        step = qc.scale.to(w.device).reshape((-1,) + (1,) * (w.dim() - 1))
        register_pre_function_hook(
            final, op, _WEIGHT_PORT, _nncf_weight_quantizer(step, bits, w.device)
        )
    if probe is not None and reference is not None:
        # the check covers the NNCF quantizers just put back, not only the engine's bake
        after = run_probe(probe, final)
        diff = float((after - reference).abs().max()) if reference.numel() else 0.0
        pipe.final_diff = max(diff, pipe.final_diff or 0.0)
    h.finalized = True
    final.__dict__[_HOST_ATTR] = h
    return final


def _bits_for_codes(max_code: int) -> int | None:
    """Smallest narrow-range signed bit-width ``B ≥ 2`` with ``2^(B−1) − 1 ≥ max_code``."""
    for b in range(2, 17):
        if max_code <= (1 << (b - 1)) - 1:
            return b
    return None


# --- checkpoints ------------------------------------------------------------------------


def restore(
    model: nn.Module, config: dict[str, Any], state_dict: dict[str, torch.Tensor]
) -> nn.Module:
    """An NNCF checkpoint (``nncf.torch.get_config(q)`` + ``q.state_dict()``) on a freshly
    built ``model``: ``load_from_config(..., allowed_modules=ALLOWED_MODULES)``, the methods'
    ``MethodState`` children re-created, then ``load_state_dict`` (strict). For inference and
    evaluation; to train on, ``apply`` the recipe to a fresh model and ``load_state_dict``."""
    from ..protocols import MethodState

    model = wrap_sequential(model)
    try:
        q = load_from_config(model, config, allowed_modules=cast(Any, ALLOWED_MODULES))
    except nncf.InternalError as exc:
        raise FQError(f"NNCF refused this checkpoint config: {exc}") from exc
    for key in state_dict:
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            if part.startswith("fq_state_"):
                host = q.get_submodule(".".join(parts[:i]))
                if part not in host._modules:
                    host.add_module(part, MethodState())
                st = cast(MethodState, host._modules[part])
                leaf = ".".join(parts[i + 1 :])
                if leaf != "_extra_state" and leaf not in st._buffers:
                    st.register_buffer(leaf, torch.zeros_like(state_dict[key]))
                break
    q.load_state_dict(state_dict)
    return q


# --- OpenVINO ---------------------------------------------------------------------------


@dataclasses.dataclass
class OpenVINOReport:
    """What :func:`to_openvino` stored per layer: ``"u2"``, ``"u3"``, ``"u4"``, ``"i8"`` (codes
    at that element type) or ``"f32: <why>"``; ``true_size`` lists layers whose element type
    has exactly their learned bit-width."""

    layers: dict[str, str]
    bits: dict[str, int]
    max_diff: float | None = None

    @property
    def true_size(self) -> list[str]:
        return [
            n
            for n, t in self.layers.items()
            if t in ("u2", "u3", "u4") or (t in ("i8", "u8") and self.bits[n] == 8)
        ]

    @property
    def widened(self) -> dict[str, str]:
        return {
            n: f"{self.bits[n]} bits stored as {t}"
            for n, t in self.layers.items()
            if n not in self.true_size
        }


def _match_layer(
    data: Any, deq_scale: Any, layers: dict[str, Any], codes: dict[str, Any], used: set[str]
) -> tuple[str | None, Any]:
    """Which of our layers an OpenVINO weight constant is, and the per-channel factor
    OpenVINO folded into it (a BatchNorm): int8 constants by their codes, float ones by
    ``value_c = ratio_c · w_c``."""
    import numpy as np

    for n, w in layers.items():
        if n in used or w.shape != data.shape:
            continue
        if deq_scale is not None:
            if np.array_equal(data.astype(np.int64), codes[n].codes.numpy()):
                return n, np.ones((w.shape[0],) + (1,) * (w.ndim - 1), dtype=np.float64)
            continue
        flat_w = w.reshape(w.shape[0], -1).astype(np.float64)
        flat_v = np.asarray(data, dtype=np.float64).reshape(w.shape[0], -1)
        idx = np.abs(flat_w).argmax(axis=1)
        top = flat_w[np.arange(w.shape[0]), idx]
        if np.any(top == 0):
            continue
        ratio = flat_v[np.arange(w.shape[0]), idx] / top
        if np.allclose(
            flat_v,
            flat_w * ratio[:, None],
            rtol=0,
            atol=1e-5 * max(1e-12, float(np.abs(flat_v).max())),
        ):
            return n, ratio.reshape((-1,) + (1,) * (w.ndim - 1))
    return None, None


_OV_TYPES = {2: "u2", 3: "u3", 4: "u4"}

CHECK_CONFIG: dict[str, str] = {"EXECUTION_MODE_HINT": "ACCURACY"}
"""OpenVINO CPU config of :func:`to_openvino`'s check: float32 throughout (the CPU plugin's
default may run bf16 and quantize activations dynamically, see docs/adapters/nncf.md)."""


def to_openvino(
    model: nn.Module, example_input: torch.Tensor, *, check: bool = True
) -> tuple[Any, OpenVINOReport]:
    """The finalized model as an OpenVINO model with low-bit weight constants.

    :param model: the output of :func:`finalize`.
    :param check: compile on CPU with :data:`CHECK_CONFIG` (float32) and record
        ``max_diff`` = max |OpenVINO − torch| outputs.
    :raises MissingDependencyError: openvino is not installed.
    :raises ConfigError: the model was not finalized.
    """
    try:
        import numpy as np
        import openvino as ov
        import openvino.opset13 as ops
        from openvino import op as ov_op
    except ImportError as exc:
        raise MissingDependencyError(
            "openvino", "openvino", "fq_plugins.adapters.nncf.to_openvino"
        ) from exc
    h = _host(model)
    if h is None or not h.finalized:
        raise ConfigError("to_openvino needs the model fq_nncf.finalize returned", key="model")
    codes = h.pipeline.storage_codes()
    from ..engine.pipeline import run_probe

    ref = run_probe(lambda m: m(example_input), model) if check else None
    m = copy.deepcopy(model).eval()
    storage = get_hook_storage(m)
    # NNCF's torch strip converts only 8-bit quantizers: widen each weight quantizer to an
    # exact 8-bit one with the same step (its grid contains the codes)
    for hook_name, q in list(storage.named_hooks()):
        kind, _, port = decode_hook_name(hook_name)
        if (
            kind == "pre_hooks"
            and port == _WEIGHT_PORT
            and isinstance(q, SymmetricQuantizer)
            and q.num_bits < 8
        ):
            step = (q.scale.detach().abs() + q.eps) / float(q.level_high)
            storage.set_submodule(hook_name, _nncf_weight_quantizer(step, 8, step.device))
    stripped = nncf.strip(m, do_copy=False, example_input=example_input)
    ov_model = ov.convert_model(stripped, example_input=example_input)
    # our layers by weight shape and value (the stripped weights are k·Δ, exact)
    layers = {
        n: cast(torch.Tensor, stripped.get_submodule(n).weight).detach().cpu().numpy()
        for n in codes
    }
    report: dict[str, str] = {}
    bits: dict[str, int] = {}
    used: set[str] = set()
    for node in list(ov_model.get_ordered_ops()):
        if node.get_type_name() != "Constant" or len(node.get_output_partial_shape(0)) < 2:
            continue
        data = node.get_data()
        users = [t.get_node() for t in node.output(0).get_target_inputs()]
        deq_scale = None
        ov_codes, tail = data, None
        if (
            node.get_element_type() in (ov.Type.i8, ov.Type.u8)
            and len(users) == 1
            and users[0].get_type_name() == "Convert"
        ):
            # OpenVINO's frontend already turned NNCF's 8-bit weight FakeQuantize into
            # Constant(i8) → Convert → Multiply(scale), or Constant(u8) → Convert →
            # Subtract(zero point) → Multiply(scale)
            tail = users[0]
            nxt = [t.get_node() for t in tail.output(0).get_target_inputs()]
            if node.get_element_type() == ov.Type.u8:
                zp_node = nxt[0].input_value(1).get_node() if len(nxt) == 1 else None
                if zp_node is not None and zp_node.get_type_name() == "Convert":
                    zp_node = zp_node.input_value(0).get_node()
                if (
                    len(nxt) == 1
                    and nxt[0].get_type_name() == "Subtract"
                    and zp_node is not None
                    and zp_node.get_type_name() == "Constant"
                ):
                    ov_codes = data.astype(np.int64) - zp_node.get_data().astype(np.int64)
                    tail = nxt[0]
                    nxt = [t.get_node() for t in tail.output(0).get_target_inputs()]
                else:
                    nxt = []
            if len(nxt) == 1 and nxt[0].get_type_name() == "Multiply":
                other = nxt[0].input_value(1).get_node()
                if other.get_type_name() == "Constant":
                    deq_scale = other.get_data()
        name, ratio = _match_layer(ov_codes, deq_scale, layers, codes, used)
        if name is None:
            continue
        used.add(name)
        qc = codes[name]
        bits[name] = int(qc.bits.max())
        k = qc.codes.numpy()
        top = int(np.abs(k).max())
        width = _bits_for_codes(top) or 16
        if deq_scale is not None and tail is not None:
            if not np.array_equal(ov_codes.astype(np.int64), k):
                report[name] = (
                    "i8: OpenVINO's int8 codes differ from the method's (kept as converted)"
                )
                continue
            if width > 4:
                report[name] = "i8" if node.get_element_type() == ov.Type.i8 else "u8"
                continue
            et = _OV_TYPES[width]
            zp = (1 << (width - 1)) - 1
            c = ov_op.Constant(
                getattr(ov.Type, et), ov.Shape(list(k.shape)), (k + zp).reshape(-1).tolist()
            )
            x = ops.subtract(ops.convert(c, "f32"), ops.constant(np.float32(zp)))
            for target in list(tail.output(0).get_target_inputs()):
                target.replace_source_output(x.output(0))
            report[name] = et
            continue
        shape_c = (-1,) + (1,) * (k.ndim - 1)
        # OpenVINO may fold a BatchNorm into the weight: value_c = ratio_c · w_c
        scale = (qc.scale.numpy().reshape(shape_c) * ratio).astype(np.float32)
        if width <= 4:
            et = _OV_TYPES[width]
            zp = (1 << (width - 1)) - 1
        elif width <= 8:
            et, zp = "i8", 0
        else:
            report[name] = f"f32: codes up to {top} do not fit 8 bits"
            continue
        c = ov_op.Constant(
            getattr(ov.Type, et), ov.Shape(list(k.shape)), (k + zp).reshape(-1).tolist()
        )
        x = ops.convert(c, "f32")
        if zp:
            x = ops.subtract(x, ops.constant(np.float32(zp)))
        mag = ops.multiply(x, ops.constant(scale))
        if qc.offset or bool((qc.shift != 0).any()):
            # value = sign(k)·((|k| − offset)·s + shift), all of it times the folded ratio
            shift = (qc.shift.numpy().reshape(shape_c) * ratio).astype(np.float32)
            off = ops.multiply(
                ops.sign(x), ops.constant((shift - qc.offset * scale).astype(np.float32))
            )
            mag = ops.add(mag, off)
        for target in list(node.output(0).get_target_inputs()):
            target.replace_source_output(mag.output(0))
        report[name] = et
    for n in codes:
        report.setdefault(n, "f32: weight constant not found in the OpenVINO graph")
        bits.setdefault(n, int(codes[n].bits.max()))
    diff = None
    if check and ref is not None:
        # OpenVINO's CPU defaults are not float32: bf16 inference on CPUs with AVX512-BF16 or
        # AMX, and dynamic int8 quantization of the activations of compressed-weight layers.
        # The check compares the graph itself, so it runs in float32 (ACCURACY mode).
        compiled = ov.compile_model(ov_model, "CPU", CHECK_CONFIG)
        out = compiled(example_input.detach().cpu().numpy())[0]
        diff = float(np.abs(out - ref.cpu().numpy()).max())
    return ov_model, OpenVINOReport(layers=report, bits=bits, max_diff=diff)


# --- nncf.compress_weights with group-aware sensitivities --------------------------------

_PRIMARY_MODES = ("int4_sym", "int4_asym")
_BACKUP_MODES = ("int8_asym", "int8_sym")


@dataclasses.dataclass
class WeightCompressionPlan:
    """Which layers :func:`compress_weights` gave NNCF's primary (4-bit) and which its
    backup (8-bit) precision, and why.

    ``scores[name]`` is the layer's group-aware importance per weight (FairQuant's
    ``importance`` with ``granularity: tensor``, or the ``sensitivities`` given);
    ``nodes[name]`` the NNCF graph node the layer's weight feeds; ``ratio`` the achieved
    fraction of the candidate weights at the primary precision (NNCF's ``ratio``)."""

    primary: list[str]
    backup: list[str]
    scores: dict[str, float]
    params: dict[str, int]
    nodes: dict[str, str]
    mode: str
    backup_mode: str
    requested_ratio: float
    ratio: float
    fixed_backup: list[str] = dataclasses.field(default_factory=list)
    """Weighted layers NNCF never compresses to the primary precision (convolutions; embeddings
    without ``all_layers``): left to the backup call, outside the ratio."""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _nncf_mode(value: str, allowed: tuple[str, ...], key: str) -> Any:
    v = str(getattr(value, "value", value)).lower()
    if v not in allowed:
        raise ConfigError(
            f"{v!r} is not supported here; allowed: {', '.join(allowed)} (NNCF 3.4's torch "
            "backend has no INT2/INT3 decompressors, and two precision levels are all "
            "compress_weights mixes)",
            key=key,
        )
    return nncf.CompressWeightsMode(v)


def _weight_nodes(model: nn.Module, example_input: Any, all_layers: bool) -> tuple[dict, dict]:
    """``{module name: NNCF node name}`` for the layers NNCF's weight compression may put in
    the primary precision (MatMul-type ops; embeddings with ``all_layers``), and for the other
    weighted ops it compresses (always at the backup precision)."""
    from nncf.quantization.algorithms.weight_compression.torch_backend import (
        PTWeightCompressionAlgoBackend as Backend,
    )
    from nncf.torch.function_hook.nncf_graph.nncf_graph_builder import build_nncf_graph

    graph = build_nncf_graph(model, example_input)
    backend = Backend()
    primary: dict[str, str] = {}
    other: dict[str, str] = {}
    for node in graph.get_all_nodes():
        if not Backend.is_node_with_weights(node, graph):
            continue
        for wname, _ in Backend.get_weight_names_and_port_ids(node, graph):
            mod = wname.rsplit(".", 1)[0] if wname.endswith(".weight") else None
            if mod is None:
                continue
            ok = node.metatype in backend.matmul_metatypes or (
                all_layers and node.metatype in backend.embedding_metatypes
            )
            (primary if ok else other)[mod] = node.node_name
    return primary, other


def compress_weights(
    model: nn.Module,
    calib: Any = None,
    *,
    ratio: float = 0.8,
    mode: str = "int4_sym",
    backup_mode: str = "int8_asym",
    group_size: int = 128,
    importance: Any = None,
    sensitivities: dict[str, float] | None = None,
    n_groups: int | None = None,
    group_key: str = "group",
    all_layers: bool = False,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    example_input: torch.Tensor | None = None,
    **nncf_kwargs: Any,
) -> tuple[nn.Module, WeightCompressionPlan]:
    """``nncf.compress_weights`` with the primary/backup split chosen by FairQuant's
    group-aware importance instead of NNCF's own sensitivity metric.

    NNCF mixes two precisions by ``ratio`` and has no public way to pass sensitivities. This
    ranks the layers with :func:`~fq_plugins.compressors.fairquant.importance.group_importance`
    (or takes ``sensitivities``), chooses the primary layers with FairQuant's MILP at levels
    {4, 8} and the budget ``ratio`` (the least important weights go to 4 bits), then calls
    ``nncf.compress_weights`` twice with complementary ``ignored_scope``\\ s: ``mode`` on the
    chosen layers, ``backup_mode`` on the rest.

    :param calib: ``(x, y, group)`` batches (a DataLoader, list or callable), as for
        :func:`apply`; also NNCF's tracing input (the first batch's ``x``).
    :param ratio: fraction of the candidate weights (NNCF's ratio-defining layers) at ``mode``.
    :param importance: FairQuant ``importance`` options (``signal``, ``reducer``,
        ``calib_batches``, ``group_source``, ``hawq_samples``); ``granularity`` is ``tensor``.
    :param sensitivities: per-layer scores (higher = keep at the backup precision); given,
        no calibration pass runs.
    :param nncf_kwargs: passed to the primary ``nncf.compress_weights`` call (``awq``,
        ``scale_estimation``, ``gptq``, ``subset_size``, …; the 8-bit call takes none of them).
    :returns: the compressed model (NNCF compresses in place, as ``nncf.compress_weights``)
        and the :class:`WeightCompressionPlan`.
    """
    from ..compressors.fairquant import ImportanceSpec
    from ..compressors.fairquant.allocation import allocate_bits
    from ..compressors.fairquant.importance import group_importance
    from ..engine.batches import unpack_batch

    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1:
        raise ConfigError(f"ratio must be a number in [0, 1]; got {ratio!r}", key="ratio")
    primary_mode = _nncf_mode(mode, _PRIMARY_MODES, "mode")
    backup = _nncf_mode(backup_mode, _BACKUP_MODES, "backup_mode")
    for k in ("ignored_scope", "dataset", "ratio", "mode", "group_size"):
        if k in nncf_kwargs:
            raise ConfigError(
                f"{k} is set by fq_nncf.compress_weights itself; pass ratio/mode/group_size "
                "as its own arguments (layers to leave alone: exclude them from the model's "
                "candidates with sensitivities)",
                key=k,
            )
    from pydantic import ValidationError

    from ..recipe import _raise_validation

    try:
        spec = ImportanceSpec.model_validate({**dict(importance or {}), "granularity": "tensor"})
    except ValidationError as exc:
        _raise_validation(exc, ImportanceSpec, "importance")
    model = wrap_sequential(model)
    factory = _calib_factory(calib)
    if example_input is None:
        if factory is None:
            raise ConfigError(
                "compress_weights needs calib batches (or example_input with sensitivities) "
                "to trace the model",
                key="calib",
            )
        example_input = unpack_batch(next(iter(factory())), group_key=group_key)[0]
    cand, other = _weight_nodes(model, example_input, all_layers)
    if not cand:
        raise ConfigError(
            f"{type(model).__name__} has no layer NNCF's weight compression can put at "
            f"{primary_mode.value} (Linear/MatMul; embeddings with all_layers=True)",
            key="model",
        )
    params = {n: int(cast(torch.Tensor, model.get_submodule(n).weight).numel()) for n in cand}
    if sensitivities is not None:
        unknown = sorted(set(sensitivities) - set(cand))
        missing = sorted(set(cand) - set(sensitivities))
        if unknown or missing:
            raise ConfigError(
                f"sensitivities must name exactly the candidate layers {sorted(cand)}; "
                f"unknown {unknown}, missing {missing}",
                key="sensitivities",
            )
        scores = {n: float(sensitivities[n]) for n in cand}
        bad = {n: v for n, v in scores.items() if not math.isfinite(v) or v < 0}
        if bad:
            raise ConfigError(
                f"sensitivities must be finite and ≥ 0; got {bad}", key="sensitivities"
            )
    else:
        if factory is None:
            raise ConfigError(
                "group-aware sensitivities need calib batches (x, y, group); pass calib, or "
                "your own sensitivities",
                key="calib",
            )
        batches = (unpack_batch(b, group_key=group_key) for b in factory())
        imp = group_importance(
            model,
            batches,
            [(n, model.get_submodule(n)) for n in cand],
            signal=spec.signal,
            reducer=spec.reducer,
            calib_batches=spec.calib_batches,
            n_groups=n_groups,
            group_source=spec.group_source,
            granularity="tensor",
            cvar_alpha=spec.cvar_alpha,
            hawq_samples=spec.hawq_samples,
            loss_fn=loss_fn,
        )
        scores = {n: float(imp.scores[n].reshape(-1)[0]) for n in cand}
    total = sum(params.values())
    if ratio >= 1:
        chosen = set(cand)
    elif ratio <= 0:
        chosen = set()
    else:
        alloc = allocate_bits(
            {n: torch.tensor([scores[n]], dtype=torch.float64) for n in cand},
            {n: params[n] for n in cand},
            levels=(4, 8),
            avg_bits=8.0 - 4.0 * float(ratio),
        )
        chosen = {n for n in cand if int(alloc.bits[n].reshape(-1)[0]) == 4}
    primary = [n for n in cand if n in chosen]
    rest = [n for n in cand if n not in chosen]
    # NNCF's dataset: the calibration inputs (data-aware options such as awq use them)
    inputs = [example_input]
    if factory is not None:
        n_max = spec.calib_batches
        inputs = [
            unpack_batch(b, group_key=group_key)[0]
            for _, b in zip(range(n_max), factory(), strict=False)
        ]
    dataset = nncf.Dataset(inputs)
    if primary:
        model = nncf.compress_weights(
            model,
            mode=primary_mode,
            ratio=1.0,
            group_size=group_size,
            all_layers=True,
            dataset=dataset,
            ignored_scope=nncf.IgnoredScope(names=[cand[n] for n in rest] + list(other.values())),
            **nncf_kwargs,
        )
    if rest or other:
        model = nncf.compress_weights(
            model,
            mode=backup,
            dataset=dataset,
            ignored_scope=nncf.IgnoredScope(names=[cand[n] for n in primary]),
        )
    plan = WeightCompressionPlan(
        primary=primary,
        backup=rest,
        scores=scores,
        params=params,
        nodes=dict(cand),
        mode=primary_mode.value,
        backup_mode=backup.value,
        requested_ratio=float(ratio),
        ratio=sum(params[n] for n in primary) / total,
        fixed_backup=sorted(other),
    )
    return model, plan
