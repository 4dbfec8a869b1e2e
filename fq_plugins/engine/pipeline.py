"""The compression pipeline every host drives: stages, per-stage finalize, the check, exports.

A ``compress`` list is split into stages (:func:`plan_stages`): a structural method (it
changes shapes at finalize, e.g. BMRS removes channels) is trained and finalized alone,
before the methods after it attach to the smaller model. The host trains each stage its
own way (``fit``, HF Trainer, an NNCF loop); the pipeline attaches, finalizes, checks that
the finalized model computes what the fake-quantized one did, and exports::

    pipe = CompressionPipeline(recipe.compress, plugin_manager=pm, context=ctx)
    model = pipe.start(model)
    while True:
        train(model, pipe.session)                 # the host's loop, if pipe.wants_training
        if pipe.is_last_stage:
            break
        model = pipe.next_stage(model, probe)      # finalize this stage (checked), attach next
    final = pipe.finalize(model, probe)            # checked: pipe.max_diff
    pipe.save(final, "model.fqz")                  # exact integer codes, packed
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import ConfigError
from ..protocols import AttachContext, CompressionStats, MethodConfig
from ..session import CompressionSession, is_structural

if TYPE_CHECKING:
    from ..accounting import ModelCost
    from ..compressors.ops import QuantCodes
    from ..manager import FQPluginManager
    from ..storage import SaveResult

__all__ = ["FINALIZE_TOLERANCE", "CompressionPipeline", "Probe", "plan_stages", "run_probe"]

Probe = Callable[[nn.Module], torch.Tensor]
"""Outputs of a model on fixed inputs, compared before and after finalize (the pipeline
calls it in eval mode under ``no_grad``)."""

FINALIZE_TOLERANCE = 1e-4
"""Largest |finalized − fake-quantized| output difference hosts accept without a warning."""


def plan_stages(
    configs: Sequence[MethodConfig], pm: FQPluginManager, *, key: str = "compress"
) -> list[list[int]]:
    """Split a pipeline into stages (lists of indices) that each get a session of their own.

    A structural method (``structural = True``: it changes shapes at finalize) is trained
    and finalized alone, before the methods after it attach to the smaller model (prune,
    then quantize). It must come before every other method: a quantizer's per-channel bits
    would no longer match the channels a later pruning leaves.
    """
    stages: list[list[int]] = []
    seen_plain = False
    for i, cfg in enumerate(configs):
        cls = pm.compressors.get(cfg.method, key=f"{key}[{i}].method")
        if is_structural(cls):
            if seen_plain:
                raise ConfigError(
                    f"{cfg.method!r} changes the model's shape (it removes channels), so it must "
                    "come before the other methods of the pipeline: move it to the front "
                    "(prune first, then quantize the smaller model)",
                    key=f"{key}[{i}].method",
                )
            stages.append([i])
        else:
            if not stages or is_structural(pm.compressors.get(configs[stages[-1][0]].method)):
                stages.append([])
            stages[-1].append(i)
            seen_plain = True
    return stages


@torch.no_grad()
def run_probe(probe: Probe, model: nn.Module) -> torch.Tensor:
    """``probe(model)`` in eval mode (no BatchNorm update, no gate sampling), mode restored."""
    was_training = model.training
    model.eval()
    try:
        return probe(model).detach()
    finally:
        model.train(was_training)


def _max_abs_diff(before: torch.Tensor, after: torch.Tensor) -> float:
    if before.numel() == 0:
        return 0.0
    return float((after.detach() - before.detach()).abs().max())


class CompressionPipeline:
    """The stages of one method list on one model (see the module docstring).

    :param methods: the recipe's method configs (validated, or dicts).
    :param context: calibration batches, example input, installer… for every attach.
    """

    def __init__(
        self,
        methods: Sequence[MethodConfig | dict[str, object]],
        *,
        plugin_manager: FQPluginManager | None = None,
        key: str = "compress",
        context: AttachContext | None = None,
    ) -> None:
        from ..manager import get_plugin_manager
        from ..recipe import validate_method_config

        self.pm = plugin_manager or get_plugin_manager()
        self.key = key
        self.configs = [
            validate_method_config(m, self.pm, key=f"{key}[{i}]") for i, m in enumerate(methods)
        ]
        if not self.configs:
            raise ConfigError("a compression pipeline needs at least one method", key=key)
        self.stages = plan_stages(self.configs, self.pm, key=key)
        self.context = context
        self.stage = -1
        self._session: CompressionSession | None = None
        self.earlier: list[CompressionSession] = []
        self.stage_diffs: list[float] = []
        self.final_diff: float | None = None
        self.finalized = False

    # --- stages -----------------------------------------------------------------------

    @property
    def session(self) -> CompressionSession:
        """The session of the current stage."""
        if self._session is None:
            raise RuntimeError("call start(model) first")
        return self._session

    @property
    def is_last_stage(self) -> bool:
        return self.stage == len(self.stages) - 1

    @property
    def wants_training(self) -> bool:
        """False when every method of the current stage is post-training (e.g. static)."""
        return any(m.wants_training() for m in self.session.methods)

    @property
    def stage_label(self) -> str:
        """``""`` for a one-stage pipeline, else ``":<stage number>"`` (for phase names)."""
        return "" if len(self.stages) == 1 else f":{self.stage + 1}"

    def _attach(self, model: nn.Module) -> None:
        self.stage += 1
        idx = self.stages[self.stage]
        session = CompressionSession.from_configs(
            [self.configs[i] for i in idx], plugin_manager=self.pm, key=self.key, first_index=idx[0]
        )
        session.attach(model, self.context)
        self._session = session

    def start(self, model: nn.Module) -> nn.Module:
        """Attach the first stage to ``model`` (before any optimizer is built)."""
        if self.stage != -1:
            raise RuntimeError("this pipeline has started already; make one per model")
        self._attach(model)
        return model

    def _checked_finalize(
        self, model: nn.Module, probe: Probe | None, before: torch.Tensor | None = None
    ) -> tuple[nn.Module, float | None]:
        if before is None and probe is not None:
            before = run_probe(probe, model)
        final = self.session.finalize(model)
        if probe is None or before is None:
            return final, None
        return final, _max_abs_diff(before, run_probe(probe, final))

    def next_stage(self, model: nn.Module, probe: Probe | None = None) -> nn.Module:
        """Finalize the current (structural) stage, checked, and attach the next one to the
        model it returns; returns that model."""
        if self.is_last_stage:
            raise RuntimeError("this is the last stage: call finalize()")
        final, diff = self._checked_finalize(model, probe)
        if diff is not None:
            self.stage_diffs.append(diff)
        self.earlier.append(self.session)
        self._attach(final)
        return final

    def finalize(
        self,
        model: nn.Module,
        probe: Probe | None = None,
        *,
        reference: torch.Tensor | None = None,
    ) -> nn.Module:
        """Finalize the last stage; returns the plain model. With ``probe``, the largest
        output difference to the fake-quantized model (all stages) is :attr:`max_diff`;
        ``reference`` is ``probe(model)`` when the host has computed it already."""
        if not self.is_last_stage:
            raise RuntimeError(
                f"stage {self.stage + 1} of {len(self.stages)}: call next_stage() first"
            )
        final, diff = self._checked_finalize(model, probe, reference)
        self.final_diff = diff
        self.finalized = True
        return final

    @property
    def max_diff(self) -> float | None:
        """Largest |finalized − fake-quantized| output over every checked stage."""
        found = [*self.stage_diffs, *([self.final_diff] if self.final_diff is not None else [])]
        return max(found) if found else None

    # --- what the host reports --------------------------------------------------------

    def sessions(self) -> list[CompressionSession]:
        return [*self.earlier, *([self._session] if self._session is not None else [])]

    def stats(self) -> list[CompressionStats]:
        """Every method's stats, all stages in order."""
        return [st for s in self.sessions() for st in s.stats()]

    def summaries(self) -> list[str]:
        """Every method's one-line summary, all stages in order."""
        return [line for s in self.sessions() for line in s.summaries()]

    def cost(self, model: nn.Module, example_input: torch.Tensor | None = None) -> ModelCost:
        """Bits, sparsity, packed size and BOPs of the (finalized) model."""
        return self.session.cost(model, example_input)

    def storage_codes(self) -> dict[str, QuantCodes]:
        """Exact codes of the quantized weights (the last stage's; earlier stages are
        structural and quantize nothing)."""
        return self.session.storage_codes()

    # --- exports ----------------------------------------------------------------------

    def export_compact(self, prefix: str) -> dict[str, int]:
        """Each method's compact form of its own, written to ``<prefix>.<method>`` before
        finalize (MoMos: motifs + indices); ``{path: bytes}``."""
        if self.finalized:
            raise RuntimeError("export_compact must run before finalize()")
        out: dict[str, int] = {}
        for m in self.session.methods:
            path = f"{prefix}.{m.name}"
            written = m.export_compact(path)
            if written is not None:
                out[path] = int(written)
        return out

    def save(self, model: nn.Module, path: str) -> SaveResult:
        """Write the finalized model with its exact integer codes (:mod:`fq_plugins.storage`)."""
        from ..storage import save_compressed

        if not self.finalized:
            raise RuntimeError("save() needs the finalized model: call finalize() first")
        return save_compressed(model, self.storage_codes(), path)
