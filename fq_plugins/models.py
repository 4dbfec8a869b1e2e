"""Models built from code (no weight downloads): small built-ins, a zoo of timm
architectures adapted to small inputs, raw ``timm:<arch>``, a user's own factory, and
optional user weights.

=========================  ============================================================
name                        what is built
=========================  ============================================================
``small_cnn``               :class:`SmallCNN` (≈ 25 k parameters)
``mlp``                     :class:`MLP` over the flattened input (tabular: F features)
``resnet18``, ``resnet50``  timm ResNets; small inputs get a CIFAR stem (3×3 stride-1
                            conv, no max-pool)
``deit_tiny_patch16_224``   timm DeiT-Tiny with ``img_size`` = the input and, for small
                            inputs, patches giving an 8×8 grid (4 px at 32 px)
``tiny_vit_5m_224``         timm TinyViT-5M; small inputs get a stride-2 stem (not 4) and
                            attention windows fitted to each stage's resolution
``timm:<arch>``             any timm architecture as timm builds it (no adaptation)
``module:function``         ``function(in_channels=, image_size=, n_classes=, **kwargs)``
                            from an importable module or a ``path/to/file.py``
=========================  ============================================================

"Small" is ``image_size < 128`` unless ``small_input: true|false`` is given. Everything is
built with ``pretrained=False``; ``weights=`` loads a user's ``state_dict`` (read with
``torch.load(weights_only=True)``) and lists any mismatched keys or shapes.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import math
import os
import pickle
import sys
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .errors import ConfigError, MissingDependencyError, close_matches

__all__ = [
    "BUILTIN_MODELS",
    "MLP",
    "SMALL_INPUT_BELOW",
    "ZOO_MODELS",
    "SmallCNN",
    "build_model",
    "load_weights",
]


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU stages (``features``) and a linear ``head`` (≈ 25 k params at width 16).

    A module rather than a top-level ``nn.Sequential``, which NNCF's wrapper cannot take.
    """

    def __init__(self, in_channels: int, n_classes: int, width: int = 16) -> None:
        super().__init__()

        def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
            return [
                nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]

        self.features = nn.Sequential(
            *block(in_channels, width, 1),
            *block(width, 2 * width, 2),
            *block(2 * width, 4 * width, 2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(4 * width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class MLP(nn.Module):
    """Flatten → two hidden ReLU layers → ``head``."""

    def __init__(self, in_features: int, n_classes: int, hidden: int = 128) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
        )
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


ZOO_MODELS = ("resnet18", "resnet50", "deit_tiny_patch16_224", "tiny_vit_5m_224")
BUILTIN_MODELS = ("small_cnn", "mlp", *ZOO_MODELS)
SMALL_INPUT_BELOW = 128
"""Inputs narrower than this many pixels get the zoo's small-input adaptations."""
MIN_ZOO_IMAGE_SIZE = 8


def _timm(name: str) -> Any:
    try:
        import timm
    except ImportError:
        raise MissingDependencyError("timm", "timm", f"model {name!r}") from None
    return timm


def _patch_size(image_size: int, small: bool) -> int:
    """16 for large inputs divisible by 16; else the largest divisor of the side giving a
    grid of at least 8×8 patches (32 px → 4, 64 px → 8)."""
    if not small and image_size % 16 == 0:
        return 16
    cap = max(1, image_size // 8)
    return max(d for d in range(1, cap + 1) if image_size % d == 0)


def _window(resolution: int, default: int) -> int:
    """A stage's attention window: the whole map when it fits in the default window, else
    the largest divisor of the map not above the default (no padding), unless that is
    under half the default (then timm's padded default)."""
    if resolution <= default:
        return resolution
    d = max(k for k in range(1, default + 1) if resolution % k == 0)
    return d if 2 * d >= default else default


def _zoo(
    arch: str, in_channels: int, image_size: int, n_classes: int, key: str, **kwargs: Any
) -> nn.Module:
    if image_size < MIN_ZOO_IMAGE_SIZE:
        raise ConfigError(
            f"{arch} needs images of at least {MIN_ZOO_IMAGE_SIZE} px; the data has "
            f"{image_size} px (tabular data has 1): use model mlp (or small_cnn)",
            key=key,
        )
    small_input = kwargs.pop("small_input", None)
    if small_input is not None and not isinstance(small_input, bool):
        raise ConfigError(
            f"small_input must be true, false or unset (auto: image_size < "
            f"{SMALL_INPUT_BELOW}); got {small_input!r}",
            key="model.kwargs.small_input",
        )
    small = image_size < SMALL_INPUT_BELOW if small_input is None else small_input
    timm = _timm(arch)
    common = {"pretrained": False, "num_classes": n_classes, "in_chans": in_channels}
    if arch.startswith("resnet"):
        model = timm.create_model(arch, **common, **kwargs)
        if small:
            if not isinstance(model.conv1, nn.Conv2d):
                raise ConfigError(
                    f"{arch} with these kwargs has a {type(model.conv1).__name__} stem, which "
                    "the small-input (CIFAR) stem cannot replace; set small_input: false",
                    key="model.kwargs",
                )
            width = model.conv1.out_channels
            model.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
            nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
            model.maxpool = nn.Identity()
        return model
    if arch.startswith("deit"):
        kwargs.setdefault("img_size", image_size)
        kwargs.setdefault("patch_size", _patch_size(image_size, small))
        return timm.create_model(arch, **common, **kwargs)
    # tiny_vit: a stem of two stride-2 convs, then stages 2..4 each halve the map.
    res = math.ceil(image_size / 2) if small else math.ceil(image_size / 4)
    if "window_sizes" not in kwargs:
        default = (7, 7, 14, 7)
        windows = []
        for i, d in enumerate(default):
            if i:
                res = math.ceil(res / 2)
            windows.append(_window(res, d))
        kwargs["window_sizes"] = windows
    model = timm.create_model(arch, **common, **kwargs)
    if small:
        model.patch_embed.conv2.conv.stride = (1, 1)
    return model


def _import_factory(value: str, base_dir: str | os.PathLike[str] | None, key: str) -> Any:
    where, _, attr = value.rpartition(":")
    if not where or not attr:
        raise ConfigError(
            f"model factory {value!r} must read 'module:function' or 'path/to/file.py:function'",
            key=key,
        )
    try:
        if where.endswith(".py"):
            path = os.path.expanduser(os.path.expandvars(where))
            if not os.path.isabs(path):
                path = os.path.join(os.fspath(base_dir) if base_dir else os.getcwd(), path)
            if not os.path.isfile(path):
                raise ConfigError(f"model factory {value!r}: file {path!r} does not exist", key=key)
            mod_name = "fq_user_model_" + hashlib.sha1(path.encode()).hexdigest()[:12]
            spec = importlib.util.spec_from_file_location(mod_name, path)
            if spec is None or spec.loader is None:
                raise ConfigError(f"model factory {value!r}: cannot load {path!r}", key=key)
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop(mod_name, None)
                raise
        else:
            module = importlib.import_module(where)
    except ConfigError:
        raise
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"model factory {value!r}: cannot import module {exc.name or where!r} ({exc}); "
            "install it, run from the folder holding it, or give 'path/to/file.py:function'",
            key=key,
        ) from None
    except Exception as exc:  # the module's own code failed while importing
        raise ConfigError(
            f"model factory {value!r}: importing {where!r} failed: {type(exc).__name__}: {exc}",
            key=key,
        ) from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(module) if not n.startswith("_")]
            hint = close_matches(part, names)
            raise ConfigError(
                f"model factory {value!r}: {where!r} has no attribute {attr!r}"
                + (f"; did you mean {hint}?" if hint else ""),
                key=key,
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(
            f"model factory {value!r}: {attr!r} is a {type(obj).__name__}, not a function",
            key=key,
        )
    return obj


def _call_factory(
    value: str, fn: Any, key: str, in_channels: int, image_size: int, n_classes: int, **kwargs: Any
) -> nn.Module:
    args = {"in_channels": in_channels, "image_size": image_size, "n_classes": n_classes}
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: just call it
        sig = None
    if sig is not None:
        try:
            sig.bind(**args, **kwargs)
        except TypeError as exc:
            raise ConfigError(
                f"model factory {value!r} has the signature {sig}, which cannot take "
                f"in_channels=, image_size=, n_classes="
                + (f" and {sorted(kwargs)}" if kwargs else "")
                + f" ({exc}); give it those keyword parameters (or **kwargs), or change "
                "model.kwargs",
                key=key,
            ) from None
    try:
        model = fn(**args, **kwargs)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"model factory {value!r} failed with {args | kwargs}: {type(exc).__name__}: {exc}",
            key=key,
        ) from exc
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model factory {value!r} returned a {type(model).__name__}; it must return a "
            "torch.nn.Module",
            key=key,
        )
    return model


def _state_dict(obj: Any, path: str, key: str) -> Mapping[str, torch.Tensor]:
    def is_state(m: Any) -> bool:
        return (
            isinstance(m, Mapping)
            and bool(m)
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in m.items())
        )

    if is_state(obj):
        return obj
    if isinstance(obj, Mapping):
        for sub in ("state_dict", "model_state_dict", "model"):
            if is_state(obj.get(sub)):
                return obj[sub]
    raise ConfigError(
        f"{path!r} holds a {type(obj).__name__}, not a state_dict (names → tensors, or a "
        "checkpoint with one under 'state_dict'/'model'); save it with "
        "torch.save(model.state_dict(), path)",
        key=key,
    )


def _listing(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", … ({len(items)} in all)" if len(items) > limit else "")


def load_weights(
    model: nn.Module,
    weights: str | os.PathLike[str],
    *,
    base_dir: str | os.PathLike[str] | None = None,
    key: str = "model.weights",
) -> nn.Module:
    """Load a user's ``state_dict`` into ``model`` (in place; returned for chaining).

    The file is read with ``torch.load(weights_only=True)`` (no code runs from it) onto the
    CPU and copied into the model's parameters wherever they live.

    :raises ConfigError: a missing or unreadable file, one that is no state_dict, or keys and
        shapes that do not match the model (all listed).
    """
    path = os.path.expanduser(os.path.expandvars(os.fspath(weights)))
    if not os.path.isabs(path) and base_dir is not None:
        path = os.path.join(os.fspath(base_dir), path)
    if not os.path.isfile(path):
        raise ConfigError(f"weights file {path!r} does not exist", key=key)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ConfigError(
            f"{path!r} holds objects other than tensors, which weights_only loading refuses "
            f"({str(exc).splitlines()[0][:200]}); save model.state_dict() instead of the model",
            key=key,
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError, KeyError) as exc:
        raise ConfigError(
            f"cannot read {path!r} as a torch file: {type(exc).__name__}: {str(exc)[:300]}",
            key=key,
        ) from None
    state = _state_dict(obj, path, key)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing from the file: {_listing(missing)}")
        if unexpected:
            parts.append(f"not in the model: {_listing(unexpected)}")
        if shapes:
            parts.append(f"shapes differ (file vs model): {_listing(shapes)}")
        hint = ""
        if unexpected and all(k.startswith("module.") for k in state):
            hint = " The file was saved from a DDP/DataParallel wrapper: strip 'module.'."
        raise ConfigError(
            f"weights {path!r} do not fit the model: "
            + "; ".join(parts)
            + "."
            + hint
            + " Build the model the weights were trained as (model name, kwargs, classes, "
            "image size).",
            key=key,
        )
    model.load_state_dict(state, strict=True)
    return model


def build_model(
    name: str,
    *,
    in_channels: int,
    image_size: int,
    n_classes: int,
    key: str = "model.name",
    weights: str | os.PathLike[str] | None = None,
    base_dir: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a model by name (see the module docs), never pretrained.

    :param weights: a ``state_dict`` file loaded after building (:func:`load_weights`).
    :param base_dir: where a relative ``path/file.py:function`` or ``weights`` path starts.
    :param kwargs: the architecture's own options (timm's, the factory's, ``width``/``hidden``
        of the built-ins; ``small_input`` for the zoo).
    """
    model: nn.Module
    if name == "small_cnn":
        model = SmallCNN(in_channels, n_classes, **kwargs)
    elif name == "mlp":
        model = MLP(in_channels * image_size * image_size, n_classes, **kwargs)
    elif name in ZOO_MODELS:
        model = _zoo(name, in_channels, image_size, n_classes, key, **kwargs)
    elif name.startswith("timm:"):
        timm = _timm(name)
        arch = name.split(":", 1)[1]
        if arch not in timm.list_models():
            hint = close_matches(arch, timm.list_models())
            raise ConfigError(
                f"timm has no architecture {arch!r}; see timm.list_models()"
                + (f". Did you mean {hint}?" if hint else ""),
                key=key,
            )
        model = timm.create_model(
            arch, pretrained=False, num_classes=n_classes, in_chans=in_channels, **kwargs
        )
    elif ":" in name:
        fn = _import_factory(name, base_dir, key)
        model = _call_factory(name, fn, key, in_channels, image_size, n_classes, **kwargs)
    else:
        hint = close_matches(name, BUILTIN_MODELS)
        raise ConfigError(
            f"unknown model {name!r}; allowed: {', '.join(BUILTIN_MODELS)}, 'timm:<architecture>' "
            "(e.g. timm:resnet18, needs pip install 'fq-plugins[timm]') or your own "
            "'module:function'" + (f". Did you mean {hint}?" if hint else ""),
            key=key,
        )
    if weights is not None:
        load_weights(model, weights, base_dir=base_dir, key="model.weights")
    return model
