"""torchao host: every fq-plugins compressor as a ``quantize_`` config, and :func:`convert`.

A host is an installer plus a driver (``docs/architecture.md``). Here the installer is
torchao's module handler: ``quantize_(model, CoDeQConfig(bits=4))`` calls our handler per
module, and the handler parametrizes in place (no module swap). The driver is the user's
loop (or the HF callback) with :class:`fq_plugins.engine.Objective` over
:func:`session_of`. Everything else — fields, attach, loss, finalize check, codes — is the
engine's and the methods' own.

**One attach per config and model.** Methods with method-wide state (FairQuant's budget
and importance, MoMos' shared motifs) need all their targets at once, but torchao calls a
handler one module at a time with no model root. On the *first* handler call of a
``quantize_`` call, the config finds that call's ``model``, ``config`` and ``filter_fn``
(torchao 0.18's ``quantize_`` frame), works out every module the call will hand to this
config instance, and attaches them all in one :class:`~fq_plugins.engine.CompressionPipeline`;
the later handler calls of that ``quantize_`` only check that their module was among them.
The pipeline lives on the model (:func:`session_of`, :func:`convert` find it there).

Private torchao pieces used (all here, tested on 0.18.x): the ``quantize_`` frame's
locals, its default filter ``_is_linear``, and the ``FqnToConfig`` matching order.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar, Literal, cast

import torch
from torch import nn

from ..engine.installers import ParametrizeInstaller
from ..errors import ConfigError, MissingDependencyError
from ..protocols import AttachContext, MethodConfig
from ..targets import TargetSpec

try:
    import torchao
    from torchao.core import config as _ao_config
    from torchao.core.config import AOBaseConfig
    from torchao.quantization import FqnToConfig, IntxUnpackedToInt8Tensor
    from torchao.quantization import quant_api as _quant_api
    from torchao.quantization.transform_module import register_quantize_module_handler
except ImportError as exc:  # pragma: no cover - exercised only without torchao
    raise MissingDependencyError("torchao", "torchao", "fq_plugins.adapters.torchao") from exc

if TYPE_CHECKING:
    from ..compressors.ops import QuantCodes
    from ..engine.pipeline import CompressionPipeline, Probe
    from ..manager import FQPluginManager
    from ..session import CompressionSession

__all__ = [
    "TESTED_TORCHAO",
    "BAQConfig",
    "CoDeQConfig",
    "ConversionReport",
    "FQAOConfig",
    "FairQuantConfig",
    "MoMosConfig",
    "TorchaoInstaller",
    "UniformConfig",
    "ao_config_for",
    "convert",
    "load_converted",
    "save_converted",
    "session_of",
    "weight_layers",
]

TESTED_TORCHAO = ((0, 18), (0, 19))
"""torchao versions this module's private pieces are tested on: ``>= 0.18, < 0.19``."""


def _version_tuple(v: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", v)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


if not TESTED_TORCHAO[0] <= _version_tuple(torchao.__version__) < TESTED_TORCHAO[1]:
    warnings.warn(
        f"fq_plugins.adapters.torchao is tested on torchao 0.18.x; found {torchao.__version__}. "
        "quantize_ integration relies on torchao internals; pin `torchao>=0.18,<0.19` "
        "(pip install 'fq-plugins[torchao]') if handlers misbehave",
        stacklevel=2,
    )

# torchao's config_from_dict (HF TorchAoConfig) resolves class names only in these modules
_ao_config.ALLOWED_AO_MODULES.add(__name__)

_QUANTIZE_CODE = inspect.unwrap(_quant_api.quantize_).__code__
_TORCHAO_DEFAULT_FILTER = _quant_api._is_linear
_HOST_ATTR = "_fq_torchao_host"
SUPPORTED_MODULES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)
"""Module types a config attaches to (torchao's low-bit tensors implement linear and conv2d)."""


class TorchaoInstaller(ParametrizeInstaller):
    """The installer of this host: in-place ``parametrize`` from a torchao module handler.

    ``quantize_`` cannot swap the root module and a swap would break the methods' references
    to their modules, so the handler leaves every module in place (state-dict keys become
    ``<module>.parametrizations.<param>.original``), exactly like the default installer.
    """

    name = "torchao"


def weight_layers(module: nn.Module, fqn: str = "") -> bool:
    """A ``filter_fn`` for ``quantize_`` that accepts ``nn.Linear`` and ``nn.Conv2d``."""
    return isinstance(module, SUPPORTED_MODULES)


# --- configs -------------------------------------------------------------------------


_PM: FQPluginManager | None = None


def _default_pm() -> FQPluginManager:
    global _PM
    if _PM is None:
        from ..manager import get_plugin_manager

        _PM = get_plugin_manager()
    return _PM


def _calib_factory(calib: Any) -> Callable[[], Iterator[Any]] | None:
    """``calib`` (a DataLoader, a list of batches, or a zero-argument callable) → factory."""
    if calib is None:
        return None
    if callable(calib) and not hasattr(calib, "__iter__"):
        return cast(Callable[[], Iterator[Any]], calib)
    if isinstance(calib, Iterator):
        raise ConfigError(
            f"calib is a one-shot iterator ({type(calib).__name__}); the method may read it "
            "more than once. Pass a DataLoader, a list of (x, y, group) batches, or a "
            "zero-argument callable returning a fresh iterator",
            key="calib",
        )
    if isinstance(calib, Iterable):
        return lambda: iter(calib)
    raise ConfigError(
        f"calib must be a DataLoader, a list of (x, y, group) batches or a callable; got "
        f"{type(calib).__name__}",
        key="calib",
    )


@dataclasses.dataclass
class _Attachment:
    """What one config instance attached to one model in one ``quantize_`` call."""

    pipeline: CompressionPipeline
    modules: dict[int, str]  # id(module) → name
    config: FQAOConfig
    seen: set[int] = dataclasses.field(default_factory=set)
    """Modules torchao has handed to the handler so far (a check of our target matching)."""


class _Host:
    """The torchao host's record on a model: its pipelines. Not pickled or deep-copied
    (the methods' state is in the model's ``state_dict``; a copy has no live session)."""

    def __init__(self) -> None:
        self.attachments: list[_Attachment] = []
        self.converted = False

    def __getstate__(self) -> dict[str, Any]:
        return {"attachments": [], "converted": self.converted}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.attachments = []
        self.converted = bool(state.get("converted", False))


def _host(model: nn.Module, create: bool = False) -> _Host | None:
    h = model.__dict__.get(_HOST_ATTR)
    if h is None and create:
        h = _Host()
        model.__dict__[_HOST_ATTR] = h
    return h


class FQAOConfig(AOBaseConfig):
    """Base of the generated configs: one fq-plugins method config as a torchao config.

    It *wraps* the method's own pydantic ``Config`` (validated, frozen): ``cfg.method_config``
    holds it and attribute access reads its fields (``cfg.bits``). Keyword fields are the
    method's fields; besides them:

    :param config: a ready method config instead of keyword fields.
    :param calib: calibration batches ``(x, y, group)`` for methods that measure importance
        (FairQuant): a DataLoader, a list, or a zero-argument callable returning an iterator.
    :param group_key: the group field of mapping batches.
    :param n_groups: number of groups (default: inferred from the batches).
    """

    method_name: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    plugin_manager: ClassVar[FQPluginManager | None] = None

    def __init__(
        self,
        config: MethodConfig | None = None,
        *,
        calib: Any = None,
        group_key: str = "group",
        n_groups: int | None = None,
        method_fields: dict[str, Any] | None = None,
        **fields: Any,
    ) -> None:
        from ..recipe import validate_method_config

        cls = type(self)
        if not cls.method_name:
            raise TypeError(
                "FQAOConfig is a base class; use ao_config_for('<method>') or a generated config"
            )
        pm = cls.plugin_manager or _default_pm()
        key = cls.__name__
        fields = {**(method_fields or {}), **fields}  # method_fields: the JSON form
        if config is not None:
            if fields:
                raise ConfigError(
                    f"pass either a method config or keyword fields, not both (got {sorted(fields)})",
                    key=key,
                )
            item: Any = config
        else:
            item = {"method": cls.method_name, **cls.defaults, **self._translate(fields)}
        mc = validate_method_config(item, pm, key=key)
        if mc.method != cls.method_name:
            raise ConfigError(
                f"got a {mc.method!r} config; {key} takes {cls.method_name!r}. Use "
                f"ao_config_for({mc.method!r}) for that method",
                key=f"{key}.method",
            )
        # public attributes are what torchao's config_to_dict serializes (JSON only); the
        # validated config and the calibration source stay private
        self._method_config = mc
        self.method_fields = mc.model_dump(mode="json", exclude_unset=True, exclude={"method"})
        self._calib_source = calib
        self._calib = _calib_factory(calib)
        self.group_key = group_key
        self.n_groups = n_groups

    @property
    def method_config(self) -> MethodConfig:
        """The method's own validated (frozen) pydantic config."""
        return self._method_config

    @property
    def calib(self) -> Any:
        """The calibration batches given (not serialized: pass them again after loading)."""
        return self._calib_source

    @classmethod
    def _translate(cls, fields: dict[str, Any]) -> dict[str, Any]:
        """Shorthand keywords → the method's fields (BAQConfig: ``avg_bits``)."""
        return fields

    def __getattr__(self, name: str) -> Any:
        # only reached when normal lookup fails: read the wrapped method config's fields
        mc = self.__dict__.get("_method_config")
        if mc is not None and name in type(mc).model_fields:
            return getattr(mc, name)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __eq__(self, other: object) -> bool:
        # value equality like torchao's dataclass configs (FqnToConfig compares its tables);
        # the calibration source is not part of the value
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, FQAOConfig)
        return (self.method_config, self.group_key, self.n_groups) == (
            other.method_config,
            other.group_key,
            other.n_groups,
        )

    __hash__ = AOBaseConfig.__hash__

    def __repr__(self) -> str:
        fields = self.method_config.model_dump(exclude_defaults=True, exclude={"method"})
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in fields.items())})"

    def context(self, model: nn.Module) -> AttachContext:
        """The engine's attach context for ``model`` (calibration, device, this installer)."""
        p = next(iter(model.parameters()), None)
        return AttachContext(
            calib_batches=self._calib,
            group_key=self.group_key,
            n_groups=self.n_groups,
            device=p.device if p is not None else torch.device("cpu"),
            installer=TorchaoInstaller(),
        )


_GENERATED: dict[tuple[str, int], type[FQAOConfig]] = {}


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^0-9a-zA-Z]+", name) if part)


def ao_config_for(
    method: str,
    *,
    plugin_manager: FQPluginManager | None = None,
    defaults: dict[str, Any] | None = None,
    class_name: str | None = None,
) -> type[FQAOConfig]:
    """The torchao config class of a registered compressor (built-in or third-party).

    The class wraps the method's own ``Config`` (no second copy of its fields) and has its
    own ``register_quantize_module_handler`` registration (torchao dispatches on the exact
    type). Classes are cached per (method, plugin manager).

    :raises UnknownPluginError: ``method`` is not registered (names the valid ones).
    """
    pm = plugin_manager or _default_pm()
    pm.compressors.get(method, key="method")  # unknown name → error naming the valid ones
    cache_key = (method if defaults is None else f"{method}:{sorted(defaults.items())}", id(pm))
    if class_name is None and cache_key in _GENERATED:
        return _GENERATED[cache_key]
    name = class_name or f"{_camel(method)}AOConfig"
    cls = cast(
        type[FQAOConfig],
        type(
            name,
            (FQAOConfig,),
            {
                "method_name": method,
                "defaults": dict(defaults or {}),
                "plugin_manager": plugin_manager,
                "__module__": __name__,
                "__qualname__": name,
                "__doc__": f"torchao config for the fq-plugins method {method!r} "
                f"(fields: {pm.compressors.get(method).Config.__name__}).",
            },
        ),
    )
    register_quantize_module_handler(cls)(_handler)
    if class_name is None:
        _GENERATED[cache_key] = cls
        if plugin_manager is None and defaults is None:
            globals().setdefault(name, cls)  # found by name by torchao's config_from_dict
    return cls


def __getattr__(name: str) -> Any:
    """``<Method>AOConfig`` for any registered compressor (torchao's ``config_from_dict``
    looks classes up by name in this module)."""
    if name.endswith("AOConfig"):
        pm = _default_pm()
        for method in pm.compressors.names():
            if f"{_camel(method)}AOConfig" == name:
                return ao_config_for(method)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- the handler: one attach per (config, model) --------------------------------------


def _quantize_call() -> tuple[nn.Module, Any, Any] | None:
    """``(model, config, filter_fn)`` of the enclosing torchao ``quantize_`` call, if any."""
    f = sys._getframe(2)
    while f is not None:
        if f.f_code is _QUANTIZE_CODE:
            loc = f.f_locals
            return loc["model"], loc["config"], loc["filter_fn"]
        f = f.f_back  # type: ignore[assignment]
    return None


def _dfs_matches(
    module: nn.Module, filter_fn: Callable[[nn.Module, str], bool], fqn: str = ""
) -> Iterator[tuple[str, nn.Module]]:
    """The modules ``quantize_`` hands to the handler: a match's children are not visited."""
    if filter_fn(module, fqn):
        yield fqn, module
        return
    for name, child in module.named_children():
        yield from _dfs_matches(child, filter_fn, f"{fqn}.{name}" if fqn else name)


def _fqn_assignments(
    root: nn.Module, fqn_config: Any
) -> list[tuple[str, nn.Module, str | None, Any]]:
    """``(module name, module, parameter name or None, config)`` for every handler call that
    ``quantize_(root, fqn_config, filter_fn=None)`` makes — torchao 0.18's matching order
    (parameter fqn, module fqn, parameter regex, module regex, ``_default`` for Linear)."""
    table: dict[str, Any] = fqn_config.fqn_to_config
    out: list[tuple[str, nn.Module, str | None, Any]] = []
    for fqn, module in root.named_modules():
        if not (
            _quant_api.fqn_matches_fqn_config(fqn, fqn_config)
            or _quant_api._module_param_matches_fqn_config(module, fqn, fqn_config)
            or ("_default" in table and _TORCHAO_DEFAULT_FILTER(module))
        ):
            continue
        params = [
            (pn, f"{fqn}.{pn}" if fqn else pn)
            for pn, _ in module.named_parameters()
            if pn in dir(module)
        ]
        found = False
        for pn, pfqn in params:
            if pfqn in table:
                found = True
                if table[pfqn] is not None:
                    out.append((fqn, module, pn, table[pfqn]))
        if not found and fqn in table:
            if table[fqn] is not None:
                out.append((fqn, module, None, table[fqn]))
            continue
        for pn, pfqn in params:
            for pat in table:
                if pat.startswith("re:") and re.fullmatch(pat[3:], pfqn):
                    found = True
                    if table[pat] is not None:
                        out.append((fqn, module, pn, table[pat]))
        if found:
            continue
        hit = next((p for p in table if p.startswith("re:") and re.fullmatch(p[3:], fqn)), None)
        if hit is not None:
            if table[hit] is not None:
                out.append((fqn, module, None, table[hit]))
            continue
        if table.get("_default") is not None:
            out.append((fqn, module, None, table["_default"]))
    return out


def _targets_for(
    config: FQAOConfig, root: nn.Module, outer: Any, filter_fn: Any
) -> tuple[list[tuple[str, nn.Module]], str]:
    """The ``(name, module)`` pairs this ``quantize_`` call gives ``config``, and the parameter."""
    spec = config.method_config.targets
    if isinstance(outer, FqnToConfig):
        # a config quantizes its method's `targets.parameter` ("weight"): torchao also hands
        # over e.g. `bias` when a regex matches every parameter of a module; those are skipped
        hits = [
            (n, m)
            for n, m, p, c in _fqn_assignments(root, outer)
            if c is config and p in (None, spec.parameter)
        ]
        return list(dict((id(m), (n, m)) for n, m in hits).values()), spec.parameter
    if filter_fn is _TORCHAO_DEFAULT_FILTER or filter_fn is None:
        # torchao's default filter is Linear-only; the method's own targets (Conv + Linear
        # by default, include/ignore globs) decide instead
        from ..targets import select_targets

        return [
            (t.name, t.module) for t in select_targets(root, spec, key="targets")
        ], spec.parameter
    return list(_dfs_matches(root, filter_fn)), spec.parameter


def _glob_escape(name: str) -> str:
    return re.sub(r"([\[\]*?])", r"[\1]", name)


def _attach(config: FQAOConfig, root: nn.Module, outer: Any, filter_fn: Any) -> _Attachment:
    from ..engine.pipeline import CompressionPipeline

    pairs, param = _targets_for(config, root, outer, filter_fn)
    for name, mod in pairs:
        if not isinstance(mod, SUPPORTED_MODULES):
            raise ConfigError(
                f"module {name or '<root>'!r} is a {type(mod).__name__}; {type(config).__name__} "
                f"handles {', '.join(t.__name__ for t in SUPPORTED_MODULES)}. Narrow filter_fn "
                "(e.g. fq_plugins.adapters.torchao.weight_layers) or the FqnToConfig keys",
                key="filter_fn",
            )
    if not pairs:
        raise ConfigError(f"{type(config).__name__} matched no module", key="filter_fn")
    types = sorted({"linear" if isinstance(m, nn.Linear) else "conv2d" for _, m in pairs})
    spec = TargetSpec(
        types=cast(Any, types), include=[_glob_escape(n) for n, _ in pairs], parameter=param
    )
    mc = config.method_config.model_copy(update={"targets": spec})
    pm = type(config).plugin_manager or _default_pm()
    pipe = CompressionPipeline(
        [mc], plugin_manager=pm, key=type(config).__name__, context=config.context(root)
    )
    if len(pipe.stages) != 1:  # pragma: no cover - one method is one stage
        raise ConfigError("one method per config", key=type(config).__name__)
    pipe.start(root)
    return _Attachment(pipe, {id(m): n for n, m in pairs}, config)


def _handler(
    module: nn.Module, config: FQAOConfig, *, parameter_name: str | None = None
) -> nn.Module:
    """torchao module handler of every generated config (registered per class)."""
    call = _quantize_call()
    if call is None:
        raise ConfigError(
            f"{type(config).__name__} needs the whole model (its method attaches to all its "
            "targets at once): call torchao's quantize_(model, config) on the model, not the "
            "handler directly on one module",
            key=type(config).__name__,
        )
    root, outer, filter_fn = call
    if parameter_name not in (None, config.method_config.targets.parameter):
        return module  # another tensor of a module whose parameters a regex matched
    host = _host(root, create=True)
    assert host is not None
    if host.converted:
        raise ConfigError(
            "this model was converted already; quantize_ a fresh model", key=type(config).__name__
        )
    att = next((a for a in host.attachments if a.config is config), None)
    if att is None:
        att = _attach(config, root, outer, filter_fn)
        host.attachments.append(att)
    elif id(module) not in att.modules or id(module) in att.seen:
        raise ConfigError(
            f"this {type(config).__name__} instance already attached to this model; create a "
            "new config for a second quantize_ call",
            key=type(config).__name__,
        )
    att.seen.add(id(module))
    return module  # parametrized in place, never swapped


# --- the built-in methods --------------------------------------------------------------


def _builtin(method: str, name: str, defaults: dict[str, Any] | None = None) -> type[FQAOConfig]:
    return ao_config_for(method, defaults=defaults, class_name=name)


UniformConfig = _builtin("uniform", "UniformConfig")
CoDeQConfig = _builtin("codeq", "CoDeQConfig")
MoMosConfig = _builtin("momos", "MoMosConfig")
FairQuantConfig = _builtin("fairquant", "FairQuantConfig")


class BAQConfig(FQAOConfig):
    """FairQuant in mode ``baq`` (learnable per-channel bits). ``avg_bits=`` is shorthand for
    ``budget={"avg_bits": ...}``; FairQuant needs ``calib=`` batches for its importance."""

    method_name = "fairquant"
    defaults: ClassVar[dict[str, Any]] = {"mode": "baq"}

    @classmethod
    def _translate(cls, fields: dict[str, Any]) -> dict[str, Any]:
        fields = dict(fields)
        if "mode" in fields and fields["mode"] != "baq":
            raise ConfigError(
                f"BAQConfig is fairquant mode 'baq'; got mode={fields['mode']!r}. Use "
                "FairQuantConfig for the static and qat modes",
                key="BAQConfig.mode",
            )
        if "avg_bits" in fields:
            if "budget" in fields:
                raise ConfigError("give avg_bits or budget, not both", key="BAQConfig.avg_bits")
            fields["budget"] = {"avg_bits": fields.pop("avg_bits")}
        return fields


register_quantize_module_handler(BAQConfig)(_handler)


# --- training handle -------------------------------------------------------------------


def session_of(model: nn.Module) -> CompressionSession:
    """One :class:`~fq_plugins.session.CompressionSession` over every method ``quantize_``
    attached to ``model`` (for ``Objective(session=...)``, ``param_groups``, ``on_step``…)."""
    from ..session import CompressionSession

    host = _host(model)
    if host is None or not host.attachments:
        raise ConfigError(
            "no fq-plugins method is attached to this model: call quantize_(model, "
            "<fq config>) first (a deepcopy or unpickled model carries the state but no "
            "session: quantize_ the copy again and load_state_dict)",
            key="model",
        )
    methods = [m for a in host.attachments for m in a.pipeline.session.methods]
    session = CompressionSession(methods, plugin_manager=host.attachments[0].pipeline.pm)
    session.attached = True
    return session


# --- convert ---------------------------------------------------------------------------


Target = Literal["speed", "size"]

_SPEED_FORMS: dict[str, dict[int, str]] = {
    # fastest exact form per bit-width, measured by bench/torchao_speed.py (2 vCPU Xeon,
    # torchao 0.18): IntxUnpackedToInt8Tensor dequantizes on every call, so dense float
    # wins at every width on CPU; no fast kernel here takes a learned float32 scale exactly
    "cpu": {b: "dense" for b in range(1, 17)},
}


@dataclasses.dataclass
class ConversionReport:
    """What :func:`convert` did, per layer: ``"intx:int4"`` (a torchao
    ``IntxUnpackedToInt8Tensor``) or ``"dense: <why>"`` (the finalized float weight)."""

    target: str
    layers: dict[str, str]
    max_diff: float | None = None
    """Largest |converted − fake-quantized| output on the probe (None without a probe)."""

    @property
    def torchao_layers(self) -> list[str]:
        return [n for n, f in self.layers.items() if f.startswith("intx:")]


def _intx_dtype(max_code: int) -> torch.dtype | None:
    """The smallest ``torch.intN`` (N ≤ 8) whose range holds ``[-max_code, max_code]``."""
    for n in range(2, 9):
        if max_code <= (1 << (n - 1)) - 1:
            return cast(torch.dtype, getattr(torch, f"int{n}"))
    return None


def _exact_form(qc: QuantCodes, module: nn.Module) -> tuple[str, str]:
    """(``"intx"`` | ``"dense"``, reason) for one layer's codes."""
    if not isinstance(module, SUPPORTED_MODULES):
        return "dense", f"{type(module).__name__} has no torchao low-bit tensor op"
    if qc.offset != 0 or bool((qc.shift != 0).any()):
        return "dense", (
            "sign-dependent shift (value = sign(k)·((|k|−offset)·s + shift)); torchao's "
            "zero_point is sign-independent, so no affine torchao form is exact"
        )
    if _intx_dtype(int(qc.max_code.max())) is None:
        return "dense", f"codes up to {int(qc.max_code.max())} do not fit int8"
    return "intx", ""


def _intx_tensor(qc: QuantCodes, weight: torch.Tensor) -> IntxUnpackedToInt8Tensor:
    c = int(qc.codes.shape[0])
    block = (1, *qc.codes.shape[1:])
    shape = (c,) + (1,) * (qc.codes.dim() - 1)
    dtype = _intx_dtype(int(qc.max_code.max()))
    assert dtype is not None  # checked by _exact_form
    return IntxUnpackedToInt8Tensor(
        qc.codes.to(torch.int8).to(weight.device),
        qc.scale.reshape(shape).to(weight.device, weight.dtype),
        torch.zeros(shape, dtype=torch.int8, device=weight.device),
        dtype,
        block,
        weight.dtype,
        None,
    )


def convert(
    model: nn.Module,
    target: Target = "size",
    *,
    probe: Probe | None = None,
) -> ConversionReport:
    """Finalize every method ``quantize_`` attached (the engine's checked finalize) and put
    torchao tensors built from the methods' exact integer codes and scales in place.

    Codes come from ``storage_codes()`` taken before baking. A layer becomes an
    ``IntxUnpackedToInt8Tensor(codes, scale, zero_point=0)`` when that form is bit-exact
    (symmetric codes, ``shift = 0``, ≤ 8 bits, Linear/Conv2d) and ``target`` asks for it;
    every other layer keeps its finalized dense float weight (exact, never approximated).

    :param target: ``"size"`` — torchao int tensors wherever exact (1 byte per weight in
        memory); ``"speed"`` — the fastest exact form per bit-width on this device
        (measured on CPU: dense float at every width).
    :param probe: outputs of the model on fixed inputs; with it, ``max_diff`` is the largest
        |converted − fake-quantized| difference (0.0 when exact).
    :raises ConfigError: a bad ``target``, or nothing attached.
    """
    if target not in ("speed", "size"):
        raise ConfigError(
            f"target {target!r} is not allowed; use 'size' (torchao int tensors where exact) "
            "or 'speed' (fastest exact form on this device)",
            key="target",
        )
    host = _host(model)
    if host is None or not host.attachments:
        raise ConfigError(
            "nothing to convert: no fq-plugins method is attached to this model (call "
            "quantize_(model, <fq config>) first)",
            key="model",
        )
    from ..engine.pipeline import run_probe

    before = run_probe(probe, model) if probe is not None else None
    names = {id(m): n for n, m in model.named_modules()}
    codes: dict[str, QuantCodes] = {}
    params: dict[str, tuple[nn.Module, str]] = {}
    for att in host.attachments:
        codes.update(att.pipeline.storage_codes())  # exact codes, before anything is baked
        for m in att.pipeline.session.methods:
            for name, mod in m.attached:
                params[name] = (mod, m.config.targets.parameter)
            for t in m.transforms:
                params[t.name] = (t.module, t.param)
    for att in host.attachments:
        att.pipeline.finalize(model)
    device = next(iter(model.parameters())).device.type
    forms = _SPEED_FORMS.get(device, {})
    report: dict[str, str] = {}
    order = {n: i for i, n in enumerate(names.values())}
    for name in sorted(params, key=lambda n: order.get(n, len(order))):
        module, param = params[name]
        qc = codes.get(name)
        if qc is None:
            report[name] = "dense: the method hands over no integer codes (e.g. MoMos motifs)"
            continue
        kind, why = _exact_form(qc, module)
        bits = int(qc.bits.max())
        if kind == "intx" and target == "speed" and forms.get(bits, "dense") == "dense":
            kind, why = (
                "dense",
                f"target='speed': dense float is faster than intx at {bits} bits on {device}",
            )
        if kind == "intx":
            dense = cast(torch.Tensor, getattr(module, param)).detach()
            t = _intx_tensor(qc, dense)
            if not torch.equal(t.dequantize(), dense):
                report[name] = "dense: the torchao tensor does not reproduce the weight exactly"
                continue
            setattr(module, param, nn.Parameter(t, requires_grad=False))
            report[name] = f"intx:{str(t.target_dtype).removeprefix('torch.')}"
        else:
            report[name] = f"dense: {why}"
    host.converted = True
    diff = None
    if probe is not None and before is not None:
        after = run_probe(probe, model)
        diff = float((after - before).abs().max()) if before.numel() else 0.0
    return ConversionReport(target=target, layers=report, max_diff=diff)


# --- serialization ---------------------------------------------------------------------


def save_converted(model: nn.Module, path: str) -> None:
    """Write a converted model's ``state_dict`` as safetensors (torchao tensors flattened
    with torchao's ``flatten_tensor_state_dict``: codes int8, scales, zero points)."""
    from safetensors.torch import save_file
    from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict

    data, metadata = flatten_tensor_state_dict(model.state_dict())
    save_file(data, path, metadata=metadata)


def load_converted(model: nn.Module, path: str) -> nn.Module:
    """Load :func:`save_converted`'s file into a freshly built model of the same architecture
    (torchao tensors are assigned in place of its float weights); returns ``model``.

    :raises ConfigError: the file's keys do not match the model's (names both).
    """
    from safetensors import safe_open
    from safetensors.torch import load_file
    from torchao.prototype.safetensors.safetensors_support import unflatten_tensor_state_dict

    data = load_file(path)
    with safe_open(path, "pt") as f:
        metadata = f.metadata()
    tensors, leftover = unflatten_tensor_state_dict(data, metadata)
    state = {**leftover, **tensors}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
        problem = f"missing {sorted(missing)[:8]}, unexpected {sorted(unexpected)[:8]}"
    except RuntimeError as exc:  # shape mismatches
        missing, unexpected, problem = ["?"], [], str(exc).splitlines()[-1].strip()
    if missing or unexpected:
        raise ConfigError(
            f"{path!r} does not fit this model: {problem}. Build the model exactly as the converted one (same "
            "architecture; methods with activation quantizers add `fq_input_transform` "
            "children: quantize_ and convert the fresh model first, then load)",
            key="path",
        )
    for mod in model.modules():  # torchao tensors are inference weights
        for p in list(mod.parameters(recurse=False)):
            if isinstance(p.data, IntxUnpackedToInt8Tensor) or isinstance(
                p, IntxUnpackedToInt8Tensor
            ):
                p.requires_grad_(False)
    return model
