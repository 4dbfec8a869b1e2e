"""Energy under DDP: one reading per physical device, summed once.

Rules the meters follow:

* **RAPL** counters are per node (a CPU package serves every rank on it): only local
  rank 0 reads them; the other local ranks return an empty reading marked ``deferred``.
* **NVML** reads the GPU of the local rank (``CUDA_VISIBLE_DEVICES`` respected).
* **cpu_time** estimates count the calling process only, so every rank's figure is its own.

:func:`reduce_reading_across_ranks` then gathers one meter's reading from every rank and
:func:`combine_readings` adds them, keyed by *physical device* (``details["devices"]``:
domain → a host-qualified id such as ``node1:intel-rapl:0`` or the GPU's UUID). A device
reported by several ranks (e.g. two ranks sharing one GPU) is counted once, from the lowest
rank. Domains without a device id (per-process estimates) are per rank and all added. If
any rank's reading is missing, the combined figure is missing (a partial sum would be an
undercount), with every rank's reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..protocols import EnergyReading

__all__ = ["combine_readings", "reduce_reading_across_ranks"]


def combine_readings(readings: Sequence[EnergyReading]) -> EnergyReading:
    """Add per-rank readings of one meter, each physical device once (rank order = list order).

    Domain names stay as the meters wrote them when they do not collide (one node); a
    domain name that two different devices use (``cpu:0`` on two nodes) becomes
    ``<device id>`` so both are kept.
    """
    if not readings:
        raise ValueError("combine_readings needs at least one reading")
    meter = readings[0].meter
    seconds = max(r.seconds for r in readings)
    missing = [f"rank {i}: {r.missing}" for i, r in enumerate(readings) if r.missing is not None]
    if missing:
        return EnergyReading(
            meter, seconds, missing="; ".join(missing), details={"ranks": len(readings)}
        )
    seen_devices: dict[str, int] = {}
    entries: list[tuple[str, str, float, str, str | None]] = []  # (domain, key, J, method, dev)
    duplicates: list[str] = []
    for rank, r in enumerate(readings):
        devices: dict[str, str] = dict(r.details.get("devices") or {})
        for dom, joules in r.joules.items():
            dev = devices.get(dom)
            if dev is not None:
                if dev in seen_devices:
                    duplicates.append(f"{dev} (rank {rank}, kept rank {seen_devices[dev]})")
                    continue
                seen_devices[dev] = rank
                key = dev
            else:
                key = f"rank{rank}/{dom}"
            entries.append((dom, key, joules, r.methods.get(dom, "unknown"), dev))
    names: dict[str, int] = {}
    for dom, *_ in entries:
        names[dom] = names.get(dom, 0) + 1
    joules_out: dict[str, float] = {}
    methods_out: dict[str, str] = {}
    devices_out: dict[str, str] = {}
    for dom, key, j, method, dev in entries:
        label = dom if names[dom] == 1 else key
        joules_out[label] = joules_out.get(label, 0.0) + j
        methods_out[label] = method
        if dev is not None:
            devices_out[label] = dev
    details: dict[str, Any] = {"ranks": len(readings), "devices": devices_out}
    if duplicates:
        details["counted_once"] = duplicates
    deferred = [i for i, r in enumerate(readings) if "deferred" in r.details]
    if deferred:
        details["deferred_ranks"] = deferred
    return EnergyReading(meter, seconds, joules_out, methods_out, details=details)


def reduce_reading_across_ranks(reading: EnergyReading) -> EnergyReading:
    """Combine ``reading`` over every DDP rank (a collective: every rank must call it).

    Without an initialized process group, returns ``reading`` unchanged.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return reading
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, reading)
    return combine_readings(gathered)
