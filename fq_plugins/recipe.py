"""The recipe: one config for every host (``fq-plugins run``, HF Trainer, NNCF, torchao).

A YAML/JSON file or a dict, validated by pydantic v2 into typed objects. Each item of
``compress`` is validated by its method's own ``Config``. Unknown keys and bad values raise
:class:`~fq_plugins.errors.ConfigError` naming the key path, the value, what is allowed and
the fix. ``Recipe.model_dump(mode="json")`` round-trips through :func:`load_recipe`.
"""

from __future__ import annotations

import json
import os
import re
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ._config import StrictConfig
from .data.fitzpatrick import Fitzpatrick17kSpec
from .data.images import ImagesSpec
from .data.isic import ISIC2019Spec
from .data.npz import GroupSpec
from .data.tabular import TabularSpec
from .errors import ConfigError, close_matches
from .fairness.regularizers import RegularizerSpec
from .protocols import MeterConfig, MethodConfig

if TYPE_CHECKING:
    from .energy.carbon import CarbonModel
    from .manager import FQPluginManager

__all__ = [
    "RUN_ONLY_KEYS",
    "SCHEMA_VERSION",
    "CarbonSpec",
    "CompressionRecipe",
    "DataSpec",
    "EnergySpec",
    "FairnessSpec",
    "FinetuneSpec",
    "ModelSpec",
    "Recipe",
    "TrainSpec",
    "default_recipe_text",
    "load_compression_recipe",
    "load_recipe",
    "validate_meter_config",
    "validate_method_config",
]


SCHEMA_VERSION = 1
"""The recipe schema this fq-plugins reads (the recipe's ``version`` key)."""


class _Strict(StrictConfig):
    # frozen: after validation no value can change, so nothing unvalidated reaches the code
    model_config = ConfigDict(extra="forbid", frozen=True)


class SyntheticSpec(_Strict):
    """The embedded dataset's knobs (see :func:`fq_plugins.data.make_synthetic`)."""

    n: int = Field(6000, ge=20, le=2_000_000)
    n_classes: int = Field(8, ge=2, le=100)
    image_size: int = Field(16, ge=4, le=256)
    minority_fraction: float = Field(0.2, gt=0, lt=1)
    majority_amplitude: float = Field(0.2, gt=0)
    minority_amplitude: float = Field(0.14, gt=0)
    minority_noise: float = Field(1.2, gt=0)


_SECTION_SOURCES = {
    "images": "{csv: labels.csv, root: images/, label: dx, groups: [{column: sex}]}",
    "fitzpatrick17k": "{csv: fitzpatrick17k.csv, images: images/, groups: binary}",
    "isic2019": "{ground_truth_csv: ISIC_2019_Training_GroundTruth.csv, metadata_csv: "
    "ISIC_2019_Training_Metadata.csv, images: images/}",
    "tabular": "{path: adult.csv, label: income, groups: [{column: sex}]}",
}
"""Data sources whose options live in a section named after them (with an example)."""

_PATH_KEYS = {
    "images": ("csv", "root"),
    "fitzpatrick17k": ("csv", "images"),
    "isic2019": ("ground_truth_csv", "metadata_csv", "images"),
    "tabular": ("path",),
}
"""Which keys of each source's section are paths (read relative to the recipe's folder)."""


class SelectionSpec(_Strict):
    """``data.selection``: train on a subset chosen by a data selector (coreset)."""

    selector: str = Field(
        "random", description="A registered data selector: random, el2n, kcenter, …"
    )
    fraction: float = Field(gt=0, le=1, description="Share of the training examples kept.")
    group_aware: bool = Field(
        False, description="Keep every group's share (or, with floor, a minimum per group)."
    )
    floor: float | None = Field(
        None, gt=0, lt=1, description="With group_aware: minimum share per group."
    )
    warmup_epochs: int | None = Field(
        None, ge=0, description="Model-based selectors: warm-up epochs on the full set."
    )
    options: dict[str, Any] = Field(default_factory=dict, description="The selector's own options.")

    @field_validator("selector")
    @classmethod
    def _known_selector(cls, v: str, info: ValidationInfo) -> str:
        pm = (info.context or {}).get("plugin_manager")
        if pm is not None:
            pm.selectors.get(v, key="data.selection.selector")
        return v


class DataSpec(_Strict):
    """``data``: where examples, labels and group ids come from."""

    source: Literal["synthetic", "npz", "images", "fitzpatrick17k", "isic2019", "tabular"] = (
        "synthetic"
    )
    path: str | None = Field(None, description="For source npz; $VARS and ~ are expanded.")
    group: GroupSpec | None = Field(None, description="For source npz: the group column.")
    x_key: str = "x"
    y_key: str = "y"
    layout: Literal["auto", "nhwc", "nchw"] = Field(
        "auto", description="For source npz: image axes; auto tells them by the square axes."
    )
    test_fraction: float = Field(0.25, gt=0, lt=1)
    max_examples: int | None = Field(None, ge=10, description="Stratified subsample first.")
    normalize: bool = Field(True, description="Standardize channels with train statistics.")
    synthetic: SyntheticSpec = Field(default_factory=SyntheticSpec)
    selection: SelectionSpec | None = Field(
        None, description="Train on a subset of the training split (data frugality)."
    )
    images: ImagesSpec | None = Field(None, description="For source images: folder + CSV.")
    fitzpatrick17k: Fitzpatrick17kSpec | None = Field(
        None, description="For source fitzpatrick17k."
    )
    isic2019: ISIC2019Spec | None = Field(None, description="For source isic2019.")
    tabular: TabularSpec | None = Field(None, description="For source tabular: CSV/Parquet.")

    @model_validator(mode="after")
    def _source_needs_its_section(self) -> DataSpec:
        if self.source in _SECTION_SOURCES and getattr(self, self.source) is None:
            example = _SECTION_SOURCES[self.source]
            raise ValueError(
                f"source {self.source!r} needs its options under `{self.source}:`, e.g. {example}"
            )
        return self

    @model_validator(mode="after")
    def _npz_needs_path(self) -> DataSpec:
        if self.source == "npz":
            if not self.path:
                raise ValueError("source 'npz' needs `path: FILE.npz`")
            if self.group is None:
                raise ValueError(
                    "source 'npz' needs `group: {column: NAME, ...}` (e.g. {column: age, threshold: 60})"
                )
        return self


class ModelSpec(_Strict):
    """``model``: ``small_cnn``, ``mlp``, the zoo (``resnet18``, ``resnet50``,
    ``deit_tiny_patch16_224``, ``tiny_vit_5m_224``, adapted to small inputs),
    ``timm:<architecture>`` or ``module:function`` — never
    pretrained; ``weights`` loads your own state_dict (``weights_only=True``)."""

    name: str = "small_cnn"
    kwargs: dict[str, Any] = Field(default_factory=dict)
    weights: str | None = Field(
        None, description="A state_dict file (torch.save) loaded after building; $VARS and ~ expanded."
    )


class TrainSpec(_Strict):
    """``train``: FP32 training of the reference model (AdamW)."""

    epochs: int = Field(6, ge=0)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    grad_clip: float | None = Field(None, gt=0)
    threads: int | None = Field(
        None, ge=1, description="torch.set_num_threads; default: all cores."
    )
    device: str = Field(
        "auto",
        pattern=r"^(auto|cpu|cuda(:\d+)?|mps|xpu(:\d+)?)$",
        description="auto (CUDA when available, else CPU) | cpu | cuda | cuda:N | mps | xpu; "
        "under torchrun, cuda is each rank's GPU (LOCAL_RANK).",
    )


class FinetuneSpec(_Strict):
    """``finetune``: training of each compressed variant (QAT), with the fairness regularizer."""

    epochs: int = Field(2, ge=0)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)


class FairnessSpec(_Strict):
    """``fairness``: where group ids come from, the training regularizer, the metrics."""

    group_key: str = "group"
    regularizer: RegularizerSpec = Field(default_factory=RegularizerSpec)
    metrics: list[str] = Field(
        default_factory=lambda: ["group_accuracy", "worst_group_accuracy", "accuracy_gap"]
    )
    undefined: str = Field(
        "skip",
        description="Undefined rates (a group with no example of a class): nan | zero | skip; "
        "passed to every metric that accepts `undefined`.",
    )
    pos_label: int = Field(
        1,
        ge=0,
        description="Binary tasks: the positive class of the rate metrics (fairlearn's pos_label); "
        "passed to every metric that accepts `pos_label`.",
    )

    @property
    def metric_options(self) -> dict[str, Any]:
        """The options every metric that accepts them is built with (``undefined``, ``pos_label``)."""
        return {"undefined": self.undefined, "pos_label": self.pos_label}

    @field_validator("undefined")
    @classmethod
    def _undefined_policy(cls, v: str) -> str:
        from .fairness.rates import check_undefined

        return check_undefined(v)

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, v: list[str], info: ValidationInfo) -> list[str]:
        pm = (info.context or {}).get("plugin_manager")
        if pm is not None:
            for i, name in enumerate(v):
                pm.metrics.get(name, key=f"fairness.metrics[{i}]")
        return v


class CarbonSpec(_Strict):
    """``energy.carbon``: turn joules into gCO2e (never geolocated).

    One intensity source at most: ``country`` (ISO code, bundled table), or
    ``intensity_g_per_kwh``, or ``world_average: true`` (flagged estimate). With none, the
    report shows energy only. ``pue`` ≥ 1 multiplies the energy (data-centre overhead).
    """

    country: str | None = None
    pue: float = 1.0
    intensity_g_per_kwh: float | None = None
    world_average: bool = False

    @model_validator(mode="after")
    def _valid(self) -> CarbonSpec:
        self.model()  # raises ConfigError naming the key, the value and the fix
        return self

    def model(self) -> CarbonModel | None:
        """The carbon model, or ``None`` when no intensity source is given."""
        from .energy.carbon import CarbonModel

        return CarbonModel.from_spec(
            country=self.country,
            intensity_g_per_kwh=self.intensity_g_per_kwh,
            pue=self.pue,
            world_average=self.world_average,
        )


MeterItem = str | SerializeAsAny[MeterConfig]
"""One ``energy.meters`` item: a meter name, or its ``Config`` (``name`` plus options)."""


class EnergySpec(_Strict):
    """``energy``: meters wrapping each phase; ``auto`` = first measured meter, else estimate.

    Each item of ``meters`` is a name (``cpu_time``, ``auto``) or a mapping of ``name`` plus
    that meter's options (``{name: rapl, poll_seconds: 1}``), validated by the meter's own
    ``Config``. Names stay strings; mappings become the meter's Config.
    """

    meters: list[MeterItem] = Field(default_factory=lambda: list[MeterItem](["auto"]), min_length=1)
    carbon: CarbonSpec = Field(default_factory=CarbonSpec)

    @field_validator("meters", mode="before")
    @classmethod
    def _validate_meters(cls, v: Any, info: ValidationInfo) -> Any:
        pm = (info.context or {}).get("plugin_manager")
        if pm is None or not isinstance(v, list):
            return v
        return [
            validate_meter_config(item, pm, key=f"energy.meters[{i}]") for i, item in enumerate(v)
        ]


def validate_meter_config(item: Any, pm: FQPluginManager, *, key: str) -> str | MeterConfig:
    """Validate one ``energy.meters`` item by its meter's own ``Config``.

    A name is returned as is once its meter is known and its options all have defaults;
    a mapping (or a Config) is returned as the meter's Config. ``auto`` is a plain name.
    """
    if isinstance(item, str):
        if item == "auto":
            return item
        meter = pm.meters.get(item, key=key)
        meter_config_from(meter.Config, {"name": item}, key=key, label="")
        return item
    if isinstance(item, MeterConfig):
        meter = pm.meters.get(item.name, key=f"{key}.name")
        if isinstance(item, meter.Config):
            return item
        item = item.model_dump()
    if not isinstance(item, dict):
        raise ConfigError(
            "each meter is a name (auto, cpu_time, …) or a mapping of `name` plus the "
            f"meter's options, like {{name: rapl, poll_seconds: 1}}; got {item!r}",
            key=key,
        )
    if "name" not in item:
        raise ConfigError(
            f"missing `name` in {item!r}; allowed: {', '.join(pm.meters.names())}. "
            "Write the meter as {name: NAME, OPTION: VALUE, …}",
            key=f"{key}.name",
        )
    name = item["name"]
    if name == "auto":
        extra = sorted(str(k) for k in item if k != "name")
        raise ConfigError(
            "`auto` takes no options"
            + (f" (got {', '.join(extra)})" if extra else "")
            + ": it picks the first measured meter that probes ok, with its defaults. Write "
            "the plain name `auto`, or name the meter to configure it: {name: rapl, poll_seconds: 1}",
            key=key,
        )
    meter = pm.meters.get(str(name), key=f"{key}.name")
    return meter_config_from(meter.Config, dict(item), key=key, label="")


def meter_config_from(
    config_cls: type[MeterConfig], data: dict[str, Any], *, key: str, label: str
) -> MeterConfig:
    """``config_cls`` validated from ``data`` (``name`` plus options).

    :param key: the key path of the item (``energy.meters[1]``) that prefixes each error.
    :param label: what the options belong to, when ``key`` is empty (a constructor's name).
    :raises ConfigError: one line per unknown option (its value, the allowed keys, a
        close match), missing option (how to give it) or bad value (the value and the rule).
    """
    fields = config_cls.model_fields
    meter = data.get("name")
    lines: list[str] = []
    suggested: set[str] = set()  # a misspelt option is not reported missing as well
    if config_cls.model_config.get("extra") == "forbid":
        allowed = sorted(fields)
        for k, v in data.items():
            if k not in fields:
                hint = close_matches(str(k), allowed)
                suggested.update(a for a in allowed if repr(a) in hint)
                lines.append(
                    f"{_loc_str(key, (k,))}: unknown option {k!r} (got {v!r}) of meter "
                    f"{meter!r}. Allowed keys here: {', '.join(allowed)}."
                    + (f" Did you mean {hint}?" if hint else "")
                )
    for k, field in fields.items():
        if field.is_required() and k not in data and k not in suggested:
            what = f" ({field.description.rstrip('.')})" if field.description else ""
            lines.append(
                f"{_loc_str(key, (k,))}: meter {meter!r} needs option {k!r}{what}; write it "
                f"as a mapping: {{name: {meter}, {k}: VALUE}}"
            )
    if not lines:
        try:
            return config_cls.model_validate(data)
        except ValidationError as exc:
            text = _format_errors(exc, config_cls, prefix=key)
            lines = text.removeprefix("invalid recipe:\n  ").split("\n  ")
    if label:
        msg = f"{label}: {lines[0]}" if len(lines) == 1 else f"{label}:\n  " + "\n  ".join(lines)
    else:  # one line per key path, so a recipe's other errors line up beside these
        msg = "\n  ".join(lines)
    err = ConfigError(msg)
    err.located = True  # the message already names the key paths
    raise err


class OutputSpec(_Strict):
    dir: str = Field("fq-runs", description="Parent folder; each run writes DIR/<time>-<name>/.")


MethodList = list[SerializeAsAny[MethodConfig]]


class CompressionRecipe(_Strict):
    """The host-neutral part of a recipe: what the HF callback, the NNCF adapter and the
    torchao configs read. ``compress`` is the pipeline (methods apply in order)."""

    version: int = Field(SCHEMA_VERSION, description="Recipe schema version.")
    compress: MethodList = Field(default_factory=list)
    fairness: FairnessSpec = Field(default_factory=FairnessSpec)
    energy: EnergySpec = Field(default_factory=EnergySpec)

    @field_validator("version")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v > SCHEMA_VERSION:
            raise ValueError(
                f"this recipe is schema version {v}; this fq-plugins reads version "
                f"{SCHEMA_VERSION}: upgrade fq-plugins, or write the recipe for version {SCHEMA_VERSION}"
            )
        if v < 1:
            raise ValueError(f"version must be ≥ 1; got {v}")
        return v

    @field_validator("compress", mode="before")
    @classmethod
    def _validate_compress(cls, v: Any, info: ValidationInfo) -> Any:
        return _validate_methods(v, info, "compress")


_VARIANT_NAME = re.compile(r"[A-Za-z0-9_.+-]{1,100}")

RUN_ONLY_KEYS = ("name", "seed", "seeds", "data", "model", "train", "compare", "finetune", "output")
"""Recipe sections only ``fq-plugins run`` reads (its data, model and training loop)."""


class Recipe(CompressionRecipe):
    """A whole ``fq-plugins run`` job: the host-neutral part plus data, model, training,
    and ``compare``: named pipelines that ``fq-plugins run`` evaluates beside ``compress``."""

    name: str = Field("run", pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = 0
    seeds: list[int] | None = Field(
        None,
        min_length=1,
        max_length=100,
        description="Run every variant once per seed (data split, initialisation, training) "
        "and report mean ± std; replaces `seed`.",
    )
    data: DataSpec = Field(default_factory=DataSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    compare: dict[str, MethodList] = Field(default_factory=dict)
    finetune: FinetuneSpec = Field(default_factory=FinetuneSpec)
    output: OutputSpec = Field(default_factory=OutputSpec)

    @field_validator("compare", mode="before")
    @classmethod
    def _validate_compare(cls, v: Any, info: ValidationInfo) -> Any:
        if not isinstance(v, dict):
            return v
        out = {}
        for name, methods in v.items():
            if (
                not isinstance(name, str)
                or not _VARIANT_NAME.fullmatch(name)
                or name in (".", "..")
            ):
                raise ConfigError(
                    f"variant name {name!r} is not allowed: it names files in the run folder, so "
                    "use 1–100 letters, digits and _ . + - (no '/', no spaces), e.g. 'uniform-4'",
                    key=f"compare.{name}" if isinstance(name, str) and name else "compare",
                )
            out[name] = _validate_methods(methods, info, f"compare.{name}")
        return out

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, v: list[int] | None) -> list[int] | None:
        if v is not None:
            dup = sorted({s for s in v if v.count(s) > 1})
            if dup:
                raise ValueError(f"seeds repeat {dup}; give each seed once, e.g. [0, 1, 2]")
        return v

    @property
    def seed_list(self) -> list[int]:
        """The seeds a run uses: ``seeds``, or ``[seed]``."""
        return list(self.seeds) if self.seeds is not None else [self.seed]

    def variants(self) -> dict[str, list[MethodConfig]]:
        """Named pipelines to evaluate: the main ``compress`` (named after its methods) first."""
        out: dict[str, list[MethodConfig]] = {}
        if self.compress:
            out[_pipeline_name(self.compress)] = list(self.compress)
        for name, methods in self.compare.items():
            if name in out:
                raise ConfigError(
                    f"variant name {name!r} is also the name of the main `compress` pipeline; rename it",
                    key=f"compare.{name}",
                )
            out[name] = list(methods)
        return out


def _pipeline_name(methods: list[MethodConfig]) -> str:
    parts = []
    for m in methods:
        bits = getattr(m, "bits", None)
        parts.append(
            f"{m.method}-{bits}"
            if isinstance(bits, int) and getattr(m, "budget", None) is None
            else m.method
        )
    return "+".join(parts)


def _validate_methods(v: Any, info: ValidationInfo, key: str) -> Any:
    pm = (info.context or {}).get("plugin_manager")
    if pm is None or not isinstance(v, list):
        return v
    from .engine.pipeline import plan_stages

    out = [validate_method_config(item, pm, key=f"{key}[{i}]") for i, item in enumerate(v)]
    plan_stages(out, pm, key=key)
    return out


def validate_method_config(item: Any, pm: FQPluginManager, *, key: str) -> MethodConfig:
    """Validate one ``compress`` item by its method's own ``Config``."""
    if isinstance(item, MethodConfig):
        cls = pm.compressors.get(item.method, key=f"{key}.method")
        if isinstance(item, cls.Config):
            return item
        item = item.model_dump()
    if not isinstance(item, dict):
        raise ConfigError(
            f"each method must be a mapping like {{method: uniform, bits: 4}}; got {item!r}",
            key=key,
        )
    if "method" not in item:
        raise ConfigError(
            f"missing `method`; allowed: {', '.join(pm.compressors.names())}", key=f"{key}.method"
        )
    cls = pm.compressors.get(str(item["method"]), key=f"{key}.method")
    try:
        return cls.Config.model_validate(item)
    except ValidationError as exc:
        err = ConfigError(_format_errors(exc, cls.Config, prefix=key))
        err.located = True  # the message already names the key paths
        raise err from None


# --- error formatting ----------------------------------------------------------------


def _loc_str(prefix: str, loc: tuple[Any, ...]) -> str:
    s = prefix
    for part in loc:
        if isinstance(part, int):
            s += f"[{part}]"
        else:
            s += f".{part}" if s else str(part)
    return s


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class that owns the last key of ``loc`` (for allowed-key lists)."""
    cur: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if (
            not (isinstance(cur, type) and issubclass(cur, BaseModel))
            or part not in cur.model_fields
        ):
            return None
        ann = cur.model_fields[part].annotation
        cur = _unwrap_model(ann)
    return cur if isinstance(cur, type) and issubclass(cur, BaseModel) else None


def _unwrap_model(ann: Any) -> Any:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in get_args(ann) if get_origin(ann) is not None else ():
        found = _unwrap_model(arg)
        if found is not None:
            return found
    return None


def _config_error(err: Any) -> ConfigError | None:
    """A ConfigError our own validators raised (pydantic wraps it as a value_error)."""
    inner = (err.get("ctx") or {}).get("error")
    return inner if isinstance(inner, ConfigError) else None


def _raise_validation(exc: ValidationError, model: type[BaseModel], prefix: str = "") -> NoReturn:
    """Re-raise a lone ConfigError as itself (keeps UnknownPluginError); else format all."""
    errs = exc.errors(include_url=False)
    inner = _config_error(errs[0]) if len(errs) == 1 else None
    if inner is not None and (inner.key is not None or getattr(inner, "located", False)):
        raise inner from None  # keeps its type (e.g. UnknownPluginError) and key path
    raise ConfigError(_format_errors(exc, model, prefix)) from None


def _format_errors(exc: ValidationError, model: type[BaseModel], prefix: str = "") -> str:
    lines = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        where = _loc_str(prefix, loc) or "(recipe)"
        value = err.get("input")
        if err["type"] == "extra_forbidden":
            owner = _model_at(model, loc)
            allowed = sorted(owner.model_fields) if owner else []
            hint = close_matches(str(loc[-1]), allowed)
            lines.append(
                f"{where}: unknown key {loc[-1]!r}. Allowed keys here: {', '.join(allowed)}."
                + (f" Did you mean {hint}?" if hint else "")
            )
        elif (inner := _config_error(err)) is not None:
            located = inner.key is not None or getattr(inner, "located", False)
            lines.append(str(inner) if located else f"{where}: {inner}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            shown = "" if isinstance(value, dict) else f" (got {value!r})"
            lines.append(f"{where}: {msg}{shown}.")
    return "invalid recipe:\n  " + "\n  ".join(lines) if len(lines) > 1 else lines[0]


# --- loading -------------------------------------------------------------------------


def default_recipe_text() -> str:
    """The embedded default recipe that ``fq-plugins run`` uses with no arguments."""
    return (
        resources.files("fq_plugins").joinpath("recipes/default.yaml").read_text(encoding="utf-8")
    )


MAX_RECIPE_BYTES = 1 << 20
"""A recipe file larger than this (1 MiB) is refused rather than read."""


class _RecipeYamlLoader(yaml.SafeLoader):
    """Safe YAML without aliases (an alias bomb expands to gigabytes) or duplicate keys
    (where the last one would silently win)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.YAMLError(
                f"aliases (*{event.anchor}) are not allowed in recipes{event.start_mark}; "
                "write the value out"
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.YAMLError(f"duplicate key {key!r}{key_node.start_mark}; keep one")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}; keep one")
        out[k] = v
    return out


def parse_recipe_text(text: str, *, json_format: bool = False, source: str = "recipe") -> Any:
    """YAML (or JSON) recipe text → data, refusing aliases and duplicate keys."""
    kind = "JSON" if json_format else "YAML"
    try:
        if json_format:
            return json.loads(text, object_pairs_hook=_no_duplicate_keys)
        return yaml.load(text, Loader=_RecipeYamlLoader)
    except (yaml.YAMLError, ValueError) as exc:
        raise ConfigError(f"{source} is not valid {kind}: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{source} is nested too deeply to be a recipe") from None


def _read_file(path: Path) -> Any:
    if not path.exists():
        raise ConfigError(f"recipe file {str(path)!r} does not exist; check the path")
    if path.is_dir():
        raise ConfigError(f"recipe path {str(path)!r} is a folder; give a .yaml or .json file")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_RECIPE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read recipe file {str(path)!r}: {exc.strerror or exc}") from None
    if len(raw) > MAX_RECIPE_BYTES:
        raise ConfigError(
            f"recipe file {str(path)!r} is larger than {MAX_RECIPE_BYTES // 1024} KiB; a recipe "
            "is a small YAML/JSON file — check the path"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"recipe file {str(path)!r} is not UTF-8 text (byte {exc.start}); save it as UTF-8"
        ) from None
    if "\x00" in text:
        raise ConfigError(f"recipe file {str(path)!r} holds NUL bytes: it is not a text file")
    return parse_recipe_text(
        text, json_format=path.suffix.lower() == ".json", source=f"recipe file {str(path)!r}"
    )


def load_recipe(
    source: str | os.PathLike[str] | dict[str, Any] | None = None,
    *,
    plugin_manager: FQPluginManager | None = None,
    overrides: dict[str, Any] | None = None,
) -> Recipe:
    """Validate a recipe from a file path (YAML or JSON), a dict, or ``None`` (the default).

    :param overrides: dotted keys → values applied before validation
        (``{"train.epochs": 1}``).
    """
    from .manager import get_plugin_manager

    base_dir: Path | None = None
    if source is None:
        data = yaml.safe_load(default_recipe_text())
    elif isinstance(source, dict):
        data = source
    else:
        path = Path(os.path.expanduser(os.fspath(source)))
        data = _read_file(path)
        base_dir = path.resolve().parent
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"a recipe must be a mapping of sections (compress, fairness, …); got {type(data).__name__}"
        )
    data = dict(data)
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    pm = plugin_manager or get_plugin_manager()
    section = data.get("data")
    if base_dir is not None and isinstance(section, dict) and isinstance(section.get("path"), str):
        # a relative data path is read relative to the recipe file when it exists there
        p = Path(os.path.expanduser(os.path.expandvars(section["path"])))
        if not p.is_absolute() and not p.exists() and (base_dir / p).exists():
            data["data"] = section = {**section, "path": str(base_dir / p)}
    if base_dir is not None and isinstance(section, dict):
        for src, keys in _PATH_KEYS.items():
            sub = section.get(src)
            if isinstance(sub, dict):
                sub = dict(sub)
                for k in keys:
                    v = sub.get(k)
                    if isinstance(v, str):
                        p = Path(os.path.expanduser(os.path.expandvars(v)))
                        if not p.is_absolute() and not p.exists() and (base_dir / p).exists():
                            sub[k] = str(base_dir / p)
                data["data"] = section = {**section, src: sub}
    try:
        return Recipe.model_validate(data, context={"plugin_manager": pm})
    except ValidationError as exc:
        _raise_validation(exc, Recipe)


def load_compression_recipe(
    source: str | os.PathLike[str] | dict[str, Any] | CompressionRecipe,
    *,
    plugin_manager: FQPluginManager | None = None,
) -> CompressionRecipe:
    """The host-neutral recipe an adapter needs: ``compress``, ``fairness``, ``energy``.

    A full ``fq-plugins run`` recipe is accepted too (the same file can drive both): it is
    validated whole and its run-only sections are simply not used by the host.
    """
    from .manager import get_plugin_manager

    if isinstance(source, CompressionRecipe):
        return source
    pm = plugin_manager or get_plugin_manager()
    if isinstance(source, dict):
        data: Any = source
    else:
        path = Path(os.path.expanduser(os.fspath(source)))
        data = _read_file(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"a recipe must be a mapping of sections (compress, fairness, energy); got {type(data).__name__}"
        )
    if any(k in data for k in RUN_ONLY_KEYS):
        return load_recipe(
            source if not isinstance(source, dict) else dict(data), plugin_manager=pm
        )
    try:
        return CompressionRecipe.model_validate(data, context={"plugin_manager": pm})
    except ValidationError as exc:
        _raise_validation(exc, CompressionRecipe)


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    cur = data
    for part in parts[:-1]:
        nxt = cur.get(part)
        if nxt is None:
            nxt = cur[part] = {}
        elif not isinstance(nxt, dict):
            raise ConfigError(f"cannot set {dotted!r}: {part!r} is not a section", key=dotted)
        else:
            nxt = cur[part] = dict(nxt)
        cur = nxt
    cur[parts[-1]] = value
