"""RAPL energy counters through Linux powercap sysfs (Intel and AMD).

Zones read (under ``/sys/class/powercap``, or ``$FQ_POWERCAP_ROOT``, or the ``root``
argument):

* ``intel-rapl:N`` / ``amd-rapl:N`` whose ``name`` is ``package-K`` (or ``package``):
  the CPU package → domain ``cpu:K``;
* their sub-zones ``…:N:M`` whose ``name`` is ``dram`` → domain ``dram:K``.

``core``/``uncore`` sub-zones are parts of the package and ``psys`` covers the whole
platform (it overlaps the package), so neither is added; ``intel-rapl-mmio`` duplicates
the package counter and is ignored. Every figure is labelled ``measured:rapl``.

Counters are µJ and wrap at ``max_energy_range_uj``: when a reading is below the previous
one, the delta is ``end + max_range − start``. One wrap between two readings is detected;
to keep it at most one, a background thread samples every ``poll_seconds`` (default 10 s;
a package wraps after ``max_range / power``, ~20 min at 200 W for the common 262 kJ range).

Since Linux 5.10 (CVE-2020-8694) ``energy_uj`` is readable by root only on most
distributions: :meth:`RaplMeter.probe` then reports ``permission_denied`` with the fix, and
:meth:`RaplMeter.start` raises :class:`RaplPermissionError` with the same text.

Under DDP, the package counters belong to the node, not to a rank: only local rank 0
(``LOCAL_RANK``, set by torchrun) reads them; other ranks return an empty reading marked
``deferred``, so summing over ranks counts each package once (see :mod:`.ddp`).
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from typing import ClassVar

from pydantic import Field

from .._markers import hookimpl
from ..errors import FQError
from ..hookspecs import RegisterFn
from ..protocols import Availability, EnergyMeter, EnergyReading, MeterConfig

__all__ = [
    "DEFAULT_POWERCAP_ROOT",
    "RaplConfig",
    "RaplDomain",
    "RaplMeter",
    "RaplPermissionError",
    "discover_domains",
    "powercap_root",
]

DEFAULT_POWERCAP_ROOT = "/sys/class/powercap"
METHOD = "measured:rapl"

_ZONE = re.compile(r"^(intel|amd)-rapl:(\d+)$")
_SUBZONE = re.compile(r"^(intel|amd)-rapl:(\d+):(\d+)$")


class RaplPermissionError(FQError, PermissionError):
    """The RAPL counters exist but this user may not read them; the message has the fix."""


def powercap_root(root: str | os.PathLike[str] | None = None) -> str:
    """The sysfs root: ``root`` if given, else ``$FQ_POWERCAP_ROOT``, else /sys/class/powercap."""
    if root is not None:
        return os.fspath(root)
    return os.environ.get("FQ_POWERCAP_ROOT") or DEFAULT_POWERCAP_ROOT


def permission_fix(root: str) -> str:
    """The one-paragraph fix for an unreadable ``energy_uj``."""
    return (
        f"RAPL energy counters under {root} are readable by root only (Linux ≥ 5.10, "
        "CVE-2020-8694). Fix: run `sudo chmod o+r "
        f"{root}/intel-rapl:*/energy_uj {root}/intel-rapl:*:*/energy_uj` "
        "(use amd-rapl on AMD; resets at reboot — a udev rule makes it permanent), or run "
        "as root, or use the labelled estimate with `energy: {meters: [cpu_time]}`."
    )


class RaplDomain:
    """One readable powercap zone: its folder, domain label and counter range (µJ)."""

    def __init__(self, path: str, label: str, max_range_uj: int, device_id: str) -> None:
        self.path = path
        self.label = label
        self.max_range_uj = max_range_uj
        self.device_id = device_id

    @property
    def energy_file(self) -> str:
        return os.path.join(self.path, "energy_uj")

    def read_uj(self) -> int:
        """Current counter value in µJ (raises PermissionError / OSError / ValueError)."""
        with open(self.energy_file, encoding="ascii") as f:
            return int(f.read().strip())

    def __repr__(self) -> str:
        return f"RaplDomain({self.label!r}, {self.path!r}, max_range_uj={self.max_range_uj})"


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return None


def _package_index(name: str, zone_index: int) -> int | None:
    """``package-K`` → K; AMD's bare ``package`` → the zone index; anything else → None."""
    m = re.fullmatch(r"package-(\d+)", name)
    if m:
        return int(m.group(1))
    return zone_index if name == "package" else None


def discover_domains(root: str | os.PathLike[str] | None = None) -> list[RaplDomain]:
    """Package and DRAM zones under the powercap root, sorted by label (may be empty)."""
    root = powercap_root(root)
    try:
        entries = sorted(os.listdir(root))
    except OSError:
        return []
    host = socket.gethostname()
    zones: dict[str, str] = {}  # zone dir name -> path
    for e in entries:
        if _ZONE.match(e) or _SUBZONE.match(e):
            zones[e] = os.path.join(root, e)
    # Sub-zones may sit only inside their package folder (as under /sys/devices/virtual).
    for e, path in list(zones.items()):
        if _ZONE.match(e):
            try:
                inner = sorted(os.listdir(path))
            except OSError:
                continue
            for sub in inner:
                if _SUBZONE.match(sub) and sub not in zones:
                    zones[sub] = os.path.join(path, sub)
    domains: list[RaplDomain] = []
    packages: dict[tuple[str, int], int] = {}  # (vendor, zone index) -> package index
    for e, path in zones.items():
        m = _ZONE.match(e)
        if not m:
            continue
        name = _read_text(os.path.join(path, "name")) or ""
        pkg = _package_index(name, int(m.group(2)))
        if pkg is None:  # psys and other platform-wide zones overlap the package
            continue
        packages[(m.group(1), int(m.group(2)))] = pkg
        domains.append(_domain(path, f"cpu:{pkg}", f"{host}:{e}"))
    for e, path in zones.items():
        m = _SUBZONE.match(e)
        if not m:
            continue
        pkg_i = packages.get((m.group(1), int(m.group(2))))
        if pkg_i is None:
            continue
        if (_read_text(os.path.join(path, "name")) or "") == "dram":
            domains.append(_domain(path, f"dram:{pkg_i}", f"{host}:{e}"))
    return sorted(domains, key=lambda d: d.label)


def _domain(path: str, label: str, device_id: str) -> RaplDomain:
    text = _read_text(os.path.join(path, "max_energy_range_uj"))
    try:
        max_range = int(text) if text else 0
    except ValueError:
        max_range = 0
    return RaplDomain(path, label, max_range, device_id)


def wrap_delta(start_uj: int, end_uj: int, max_range_uj: int) -> int:
    """Energy between two counter values (µJ), allowing for one wrap-around."""
    if end_uj >= start_uj:
        return end_uj - start_uj
    if max_range_uj <= 0:
        raise RuntimeError(
            f"RAPL counter went backwards ({start_uj} → {end_uj} µJ) and the zone has no "
            "max_energy_range_uj to unwrap it"
        )
    return end_uj + max_range_uj - start_uj


def _local_rank() -> int:
    try:
        return int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        return 0


class RaplConfig(MeterConfig):
    """Options of the ``rapl`` meter."""

    root: str | None = Field(
        None,
        min_length=1,
        description="powercap sysfs root; default $FQ_POWERCAP_ROOT, else /sys/class/powercap.",
    )
    poll_seconds: float | None = Field(
        10.0,
        ge=0,
        description="background sampling period (s) that keeps counter wrap-arounds "
        "detectable; 0 or null samples only at the start and end of each phase.",
    )
    max_watts: float = Field(
        2000.0,
        gt=0,
        description="A counter below its previous value is taken as a wrap-around only if the "
        "unwrapped energy means at most this average power per zone; otherwise the counter was "
        "reset (driver reload, VM migration) and the phase's figure is missing.",
    )


class RaplMeter(EnergyMeter):
    """CPU package and DRAM energy from RAPL counters (``measured:rapl``).

    :param root: powercap sysfs root; default ``$FQ_POWERCAP_ROOT`` or /sys/class/powercap.
    :param poll_seconds: background sampling period (s) that keeps wrap-arounds detectable;
        ``None`` or 0 samples only at ``start``/``stop`` (and on :meth:`sample`).
    :param local_rank: this process's rank on its node; default ``$LOCAL_RANK`` or 0. Only
        local rank 0 reads the node's counters. Not a recipe option (torchrun sets it).
    """

    name: ClassVar[str] = "rapl"
    description: ClassVar[str] = (
        "CPU package + DRAM energy from Intel/AMD RAPL counters in powercap sysfs (measured)."
    )
    measured: ClassVar[bool] = True
    Config: ClassVar[type[MeterConfig]] = RaplConfig
    config: RaplConfig

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        poll_seconds: float | None = 10.0,
        local_rank: int | None = None,
        max_watts: float = 2000.0,
    ) -> None:
        super().__init__(
            self.make_config(
                root=None if root is None else os.fspath(root),
                poll_seconds=poll_seconds,
                max_watts=max_watts,
            )
        )
        self.root = powercap_root(self.config.root)
        self.poll_seconds = self.config.poll_seconds
        self.local_rank = _local_rank() if local_rank is None else local_rank
        self._domains: list[RaplDomain] = []
        self._last: dict[str, int] = {}
        self._t_last = 0.0
        self._acc: dict[str, int] = {}
        self._wraps = 0
        self._t0: float | None = None
        self._lock = threading.Lock()
        self._stop_evt = threading.Event()
        self._thread: threading.Thread | None = None
        self._poll_error: BaseException | None = None

    @property
    def reads_counters(self) -> bool:
        """False on local ranks > 0: the node's counters are read by local rank 0."""
        return self.local_rank == 0

    def probe(self) -> Availability:
        domains = discover_domains(self.root)
        if not domains:
            return Availability(
                "missing",
                f"no RAPL package zones (intel-rapl:N / amd-rapl:N) under {self.root}: not a "
                "Linux host with Intel/AMD RAPL, or a VM/container without powercap. Point "
                "FQ_POWERCAP_ROOT at the powercap folder if it lives elsewhere.",
            )
        for d in domains:
            try:
                d.read_uj()
            except PermissionError:
                return Availability("permission_denied", permission_fix(self.root))
            except (OSError, ValueError) as exc:
                return Availability("error", f"cannot read {d.energy_file}: {exc}")
        labels = ", ".join(d.label for d in domains)
        return Availability("ok", f"RAPL domains {labels} under {self.root}")

    # --- sampling --------------------------------------------------------------------

    def _read_all(self) -> dict[str, int]:
        out = {}
        for d in self._domains:
            try:
                out[d.label] = d.read_uj()
            except PermissionError:
                raise RaplPermissionError(permission_fix(self.root)) from None
        return out

    def sample(self) -> None:
        """Read every counter now and add the deltas since the previous read (µJ)."""
        with self._lock:
            now = self._read_all()
            t = time.perf_counter()
            dt = t - self._t_last
            for d in self._domains:
                prev = self._last[d.label]
                cur = now[d.label]
                delta = wrap_delta(prev, cur, d.max_range_uj)
                if cur < prev:
                    watts = delta / 1e6 / max(dt, 1e-9)
                    if watts > self.config.max_watts:
                        raise RuntimeError(
                            f"RAPL counter {d.energy_file} went backwards ({prev} → {cur} µJ) "
                            f"{dt:.3g} s after the previous reading; as a wrap-around that "
                            f"would be {delta / 1e6:.4g} J, i.e. {watts:.4g} W > max_watts "
                            f"{self.config.max_watts:g} W, so the counter was reset (driver "
                            "reload, VM migration) and this phase's energy cannot be measured"
                        )
                    self._wraps += 1
                self._acc[d.label] += delta
                self._last[d.label] = cur
            self._t_last = t

    def _poll(self) -> None:
        assert self.poll_seconds is not None
        while not self._stop_evt.wait(self.poll_seconds):
            try:
                self.sample()
            except BaseException as exc:  # reported by stop(); the phase's figure goes missing
                self._poll_error = exc
                return

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._poll_error = None
        self._wraps = 0
        if not self.reads_counters:
            return
        self._domains = discover_domains(self.root)
        if not self._domains:
            raise FQError(self.probe().reason)
        self._last = self._read_all()
        self._t_last = time.perf_counter()
        self._acc = {d.label: 0 for d in self._domains}
        if self.poll_seconds is not None and self.poll_seconds > 0:
            self._stop_evt.clear()
            self._thread = threading.Thread(target=self._poll, name="fq-rapl-poll", daemon=True)
            self._thread.start()

    def stop(self) -> EnergyReading:
        if self._t0 is None:
            raise RuntimeError("RaplMeter.stop() called before start()")
        seconds = time.perf_counter() - self._t0
        self._t0 = None
        if self._thread is not None:
            self._stop_evt.set()
            self._thread.join()
            self._thread = None
        if not self.reads_counters:
            return EnergyReading(
                self.name,
                seconds,
                details={
                    "deferred": f"local rank {self.local_rank}: the node's RAPL counters are "
                    "read by local rank 0 (counted once per node)"
                },
            )
        if self._poll_error is not None:
            raise RuntimeError(f"RAPL sampling failed: {self._poll_error}") from self._poll_error
        self.sample()
        return EnergyReading(
            meter=self.name,
            seconds=seconds,
            joules={lab: uj / 1e6 for lab, uj in self._acc.items()},
            methods={lab: METHOD for lab in self._acc},
            details={
                "devices": {d.label: d.device_id for d in self._domains},
                "wraps": self._wraps,
                "root": self.root,
            },
        )


@hookimpl
def fq_register_energy_meters(register: RegisterFn) -> None:
    register(RaplMeter)
