"""The host-neutral engine: what ``fq-plugins run`` and every adapter drive.

* :class:`Objective` — task loss + fairness regularizer + the methods' penalties, as named
  :class:`LossTerms`;
* :class:`CompressionPipeline` — stages (structural first), per-stage finalize, the
  finalize-equals-fake-quant check, exports;
* :func:`evaluate` / :func:`build_report` — confusion table → metrics → cost → report;
* installers (:class:`ParametrizeInstaller` by default) — where a method's weight transform
  goes; the adapters add NNCF hook storage and torchao handlers;
* :func:`fit` — a small training loop for users' own scripts.

Energy phases are measured by :class:`fq_plugins.energy.tracker.EnergyTracker`.
"""

from __future__ import annotations

from .batches import unpack_batch
from .evaluator import build_report, compute_metrics, evaluate
from .fit import fit
from .installers import Installer, ParametrizeInstaller, default_installer, install_input_transform
from .objective import LossTerms, Objective
from .pipeline import FINALIZE_TOLERANCE, CompressionPipeline, plan_stages

__all__ = [
    "FINALIZE_TOLERANCE",
    "CompressionPipeline",
    "Installer",
    "LossTerms",
    "Objective",
    "ParametrizeInstaller",
    "build_report",
    "compute_metrics",
    "default_installer",
    "evaluate",
    "fit",
    "install_input_transform",
    "plan_stages",
    "unpack_batch",
]
