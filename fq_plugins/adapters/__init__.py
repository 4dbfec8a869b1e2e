"""Adapters: the engine hosted by other model-optimization stacks.

Each adapter is a sub-module that imports its host library only when it is imported
itself (``import fq_plugins.adapters.hf`` needs transformers; this package imports nothing):

* :mod:`fq_plugins.adapters.torchao` — torchao ``quantize_`` configs;
* :mod:`fq_plugins.adapters.hf` — Hugging Face ``Trainer``: ``FQCallback``.

They live under ``fq_plugins.adapters`` rather than a top-level ``adapters`` package so
they never shadow AdapterHub's ``adapters`` distribution.
"""

from __future__ import annotations

__all__: list[str] = []
