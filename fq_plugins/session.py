"""CompressionSession: attach every method of a recipe in order, sum penalties, report, finalize."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .accounting import UNQUANTIZED_BITS, ModelCost, model_cost
from .errors import ConfigError
from .protocols import AttachContext, CompressionStats, Compressor, MethodConfig
from .targets import select_targets

if TYPE_CHECKING:
    from .compressors.ops import QuantCodes
    from .manager import FQPluginManager

__all__ = ["CompressionSession", "is_structural"]


def is_structural(method: Compressor | type[Compressor]) -> bool:
    """True for methods that change the model's shape at finalize (BMRS removes channels)."""
    return bool(method.structural)


def __getattr__(name: str) -> object:
    if name == "plan_stages":  # moved to the engine; kept importable from here
        from .engine.pipeline import plan_stages

        return plan_stages
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class CompressionSession:
    """Runs a list of compressors over one model.

    Typical use::

        session = CompressionSession.from_configs(recipe.compress)
        session.attach(model)                      # before building the optimizer
        opt = torch.optim.AdamW(session.param_groups(model, lr=1e-3))
        loss = task_loss + session.penalty()       # each step; then session.on_step(step)
        cost = session.cost(model, example_input)  # bits, sparsity, packed size, BOPs
        model = session.finalize(model)            # plain model, same outputs
    """

    def __init__(
        self,
        methods: Sequence[Compressor],
        *,
        plugin_manager: FQPluginManager | None = None,
        key: str = "compress",
        first_index: int = 0,
    ) -> None:
        self.methods = list(methods)
        self.pm = plugin_manager
        self.key = key
        self.first_index = first_index
        structural = [m.name for m in self.methods if is_structural(m)]
        if structural and len(self.methods) > 1:
            raise ConfigError(
                f"{structural[0]!r} changes the model's shape at finalize, so it needs a session "
                "of its own: attach it, train, finalize, then start a new session for the next "
                "methods on the smaller model (`fq-plugins run` does this for a recipe list)",
                key=key,
            )
        self.attached = False
        self.finalized = False
        self._final_bits: dict[str, torch.Tensor] | None = None
        self._final_stats: list[CompressionStats] | None = None
        self._final_codes: dict[str, QuantCodes] | None = None

    @classmethod
    def from_configs(
        cls,
        configs: Sequence[MethodConfig | dict[str, Any]],
        *,
        plugin_manager: FQPluginManager | None = None,
        key: str = "compress",
        first_index: int = 0,
    ) -> CompressionSession:
        """Instantiate each method by its registered name (``config.method``).

        ``key`` is the recipe path of the list and ``first_index`` the recipe index of the
        first config, used in error messages.
        """
        from .manager import get_plugin_manager
        from .recipe import validate_method_config

        pm = plugin_manager or get_plugin_manager()
        methods = []
        for i, cfg in enumerate(configs, start=first_index):
            cfg = validate_method_config(cfg, pm, key=f"{key}[{i}]")
            methods.append(pm.compressors.get(cfg.method, key=f"{key}[{i}].method")(cfg))
        return cls(methods, plugin_manager=pm, key=key, first_index=first_index)

    def attach(self, model: nn.Module, context: AttachContext | None = None) -> nn.Module:
        """Attach every method, in order, to the modules its ``targets`` select."""
        if self.attached:
            raise RuntimeError("this session is already attached; create a new session per model")
        for i, method in enumerate(self.methods, start=self.first_index):
            targets = select_targets(model, method.config.targets, key=f"{self.key}[{i}].targets")
            if context is not None and context.installer is not None:
                method.installer = context.installer
            try:
                method.attach(model, targets, context)
            except ConfigError as exc:
                if exc.key is not None and not exc.key.startswith(self.key):
                    # a method names keys relative to its own config; give the recipe path
                    msg = str(exc).removeprefix(f"{exc.key}: ")
                    raise ConfigError(msg, key=f"{self.key}[{i}].{exc.key}") from None
                raise
        self.attached = True
        if self.pm is not None and not (context is not None and context.dry_run):
            self.pm.after_attach(self, model)  # observers see real attaches, not checks
        return model

    def penalty(self) -> torch.Tensor:
        """Sum of the methods' (already weighted) penalties."""
        total: torch.Tensor | None = None
        for m in self.methods:
            p = m.penalty()
            total = p if total is None else total + p.to(total.device)
        return total if total is not None else torch.zeros(())

    def param_groups(
        self, model: nn.Module, *, lr: float, weight_decay: float = 0.0
    ) -> list[dict[str, Any]]:
        """The methods' own param groups plus one group with every other trainable parameter."""
        groups: list[dict[str, Any]] = []
        taken: set[int] = set()
        for m in self.methods:
            for g in m.param_groups():
                params = [p for p in g["params"] if id(p) not in taken]
                taken.update(id(p) for p in params)
                if params:
                    groups.append({"lr": lr, "weight_decay": weight_decay, **g, "params": params})
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in taken]
        return [{"params": rest, "lr": lr, "weight_decay": weight_decay}, *groups]

    def on_step(self, step: int) -> None:
        for m in self.methods:
            m.on_step(step)

    def on_epoch_end(self, epoch: int) -> None:
        for m in self.methods:
            m.on_epoch_end(epoch)

    def stats(self) -> list[CompressionStats]:
        """Each method's stats (as recorded at finalize, once finalized)."""
        if self._final_stats is not None:
            return list(self._final_stats)
        return [m.stats() for m in self.methods]

    def bit_widths(self) -> dict[str, torch.Tensor]:
        """Per-channel weight bits by module name; a later method overrides an earlier one."""
        if self._final_bits is not None:
            return dict(self._final_bits)
        bits: dict[str, torch.Tensor] = {}
        for st in self.stats():
            for name, layer in st.layers.items():
                if layer.bits is not None:
                    bits[name] = layer.bits
        return bits

    def act_bits(self) -> float:
        """Activation bits for BOPs: the lowest any method fake-quantizes to, else 32."""
        found = [b for m in self.methods if (b := m.act_bits()) is not None]
        return min(found) if found else UNQUANTIZED_BITS

    def storage_codes(self) -> dict[str, QuantCodes]:
        """Exact integer codes of every quantized weight by module name (a later method's
        codes replace an earlier one's); after :meth:`finalize`, the ones taken before it."""
        if self._final_codes is not None:
            return dict(self._final_codes)
        codes: dict[str, QuantCodes] = {}
        for m in self.methods:
            codes.update(m.storage_codes())
        return codes

    def cost(
        self,
        model: nn.Module,
        example_input: torch.Tensor | None = None,
        *,
        act_bits: float | None = None,
    ) -> ModelCost:
        """Bits, sparsity, packed size and BOPs of ``model`` (see :mod:`fq_plugins.accounting`).

        ``act_bits`` defaults to :meth:`act_bits` (32 = the weights-only convention).
        """
        a = self.act_bits() if act_bits is None else act_bits
        cost = model_cost(model, self.bit_widths(), example_input=example_input, act_bits=a)
        # A method with a stored form of its own (MoMos: motifs + indices) reports its bytes
        # for the layers it covers; those replace the layers' dense weight bytes.
        for m in self.methods:
            own = m.storage_size()
            if own is not None:
                dense = sum(lc.packed_bytes for lc in cost.layers if lc.name in own.layers)
                cost.packed_bytes += int(own.bytes) - dense
        return cost

    def summaries(self) -> list[str]:
        """Each method's one-line summary, where it has one."""
        return [line for m in self.methods if (line := m.summary()) is not None]

    def finalize(self, model: nn.Module) -> nn.Module:
        """Bake every method in (attach order); returns a plain model with the same outputs.

        Every method first makes its last adjustment (``before_finalize``); then the codes,
        bits and stats are taken, and only then is anything baked, so a method whose
        transform another bakes along (a chain on one weight) still hands over exact codes.
        """
        for m in self.methods:
            m.before_finalize()
        self._final_bits = self.bit_widths()
        self._final_stats = self.stats()
        self._final_codes = self.storage_codes()
        for i, m in enumerate(self.methods):
            model = m.finalize(model)
            if is_structural(m):  # what it removed is known only after finalize
                self._final_stats[i] = m.stats()
        self.finalized = True
        return model
