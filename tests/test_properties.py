"""Property tests (hypothesis): every input either works or raises the library's own error
with a message — never another exception, never a hang. Each case is bounded in time
(hypothesis' deadline) and the inputs are small, so memory stays bounded too."""

from __future__ import annotations

import copy
import hashlib
import io
import json

import numpy as np
import pytest
import torch
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fq_plugins.errors import FQError  # noqa: E402
from fq_plugins.recipe import default_recipe_text, load_recipe, parse_recipe_text  # noqa: E402

SETTINGS = settings(
    max_examples=60,
    deadline=2000,  # ms per case: a hang or an allocation spiral fails the test
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,  # the same cases on every run (CI is reproducible)
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)

DEFAULT = yaml.safe_load(default_recipe_text())


def _paths(d, prefix=()):
    """Every key path of a nested dict/list (lists by index)."""
    yield prefix
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            yield from _paths(v, (*prefix, i))


PATHS = [p for p in _paths(DEFAULT) if p]


def _set(d, path, value):
    cur = d
    for k in path[:-1]:
        cur = cur[k]
    cur[path[-1]] = value


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(PATHS), values), min_size=1, max_size=3))
def test_any_recipe_value_validates_or_is_a_config_error(pm, edits):
    recipe = copy.deepcopy(DEFAULT)
    for path, value in edits:
        try:
            _set(recipe, path, value)
        except (KeyError, IndexError, TypeError):  # an earlier edit replaced the parent
            continue
    try:
        load_recipe(recipe, plugin_manager=pm)
    except FQError as exc:
        assert str(exc).strip()


@SETTINGS
@given(st.dictionaries(st.text(max_size=10), values, max_size=5))
def test_unknown_or_misshapen_sections_are_config_errors(pm, extra):
    try:
        load_recipe({**DEFAULT, **extra}, plugin_manager=pm)
    except FQError as exc:
        assert str(exc).strip()


@SETTINGS
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300).map(lambda b: b.decode("latin-1"))))
def test_any_recipe_text_parses_or_is_a_config_error(text):
    for as_json in (False, True):
        try:
            parse_recipe_text(text, json_format=as_json)
        except FQError as exc:
            assert str(exc).strip()


@SETTINGS
@given(st.binary(max_size=400))
def test_any_recipe_file_bytes_load_or_are_a_config_error(pm, tmp_path, data):
    p = tmp_path / "r.yaml"
    p.write_bytes(data)
    try:
        load_recipe(str(p), plugin_manager=pm)
    except FQError as exc:
        assert str(exc).strip()


# --- npz files ------------------------------------------------------------------------


def _npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


GOOD_NPZ = _npz_bytes(
    x=np.random.default_rng(0).integers(0, 255, (12, 4, 4, 3), dtype=np.uint8),
    y=np.arange(12) % 3,
    age=np.linspace(20, 80, 12),
)

arrays = st.one_of(
    st.integers(0, 3)
    .flatmap(lambda nd: st.lists(st.integers(0, 5), min_size=nd, max_size=nd).map(tuple))
    .flatmap(
        lambda shape: st.sampled_from(["u1", "i8", "f4", "f8", "U3", "?"]).map(
            lambda dt: (np.arange(int(np.prod(shape))) % 7).astype(dt).reshape(shape)
        )
    ),
    st.lists(st.floats(allow_nan=True), max_size=12).map(np.array),
)


@SETTINGS
@given(
    st.dictionaries(st.sampled_from(["x", "y", "age", "z"]), arrays, max_size=4),
    st.lists(st.tuples(st.integers(0, len(GOOD_NPZ) - 1), st.integers(0, 255)), max_size=4),
    st.integers(0, len(GOOD_NPZ)),
)
def test_any_npz_loads_or_is_a_config_error(tmp_path, replace, flips, cut):
    from fq_plugins.data.npz import load_npz

    for i, (name, data) in enumerate(
        [
            ("arrays", _npz_bytes(**replace) if replace else GOOD_NPZ),
            ("bytes", bytes(b ^ dict(flips).get(j, 0) for j, b in enumerate(GOOD_NPZ))),
            ("cut", GOOD_NPZ[:cut]),
        ]
    ):
        p = tmp_path / f"{name}{i}.npz"
        p.write_bytes(data)
        try:
            ds = load_npz(p, {"column": "age", "threshold": 60})
        except FQError as exc:
            assert str(exc).strip()
        else:  # what loads is a consistent dataset
            assert ds.x.dtype == torch.float32 and ds.x.dim() == 4 and len(ds) == len(ds.y) > 0


# --- checkpoint bytes: a valid digest over a crafted payload -------------------------


@pytest.fixture(scope="module")
def fqz_blob():
    from fq_plugins.models import SmallCNN
    from fq_plugins.session import CompressionSession
    from fq_plugins.storage import save_compressed

    torch.manual_seed(0)
    model = SmallCNN(3, 5, width=4)
    session = CompressionSession.from_configs([{"method": "uniform", "bits": 4}])
    session.attach(model)
    model = session.finalize(model).eval()
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        save_compressed(model, session.storage_codes(), f"{d}/m.fqz")
        with open(f"{d}/m.fqz", "rb") as f:
            raw = f.read()
    from fq_plugins.storage import MAGIC

    payload = raw[len(MAGIC) + 32 :]
    return torch.load(io.BytesIO(payload), weights_only=True)


field_values = st.one_of(
    scalars,
    st.lists(st.integers(-5, 10**6), max_size=6),
    st.integers(0, 3).map(lambda n: torch.zeros(n)),
    st.sampled_from([torch.tensor([float("nan")] * 4), torch.zeros(4, dtype=torch.uint8)]),
)


@SETTINGS
@given(st.data())
def test_a_crafted_checkpoint_with_a_valid_digest_is_a_checkpoint_error(tmp_path, fqz_blob, data):
    from fq_plugins.models import SmallCNN
    from fq_plugins.storage import MAGIC, load_compressed

    blob = copy.deepcopy(fqz_blob)
    layer = data.draw(st.sampled_from(sorted(blob["layers"])))
    field = data.draw(st.sampled_from(sorted(blob["layers"][layer])))
    blob["layers"][layer][field] = data.draw(field_values)
    buf = io.BytesIO()
    torch.save(blob, buf)
    payload = buf.getvalue()
    p = tmp_path / "c.fqz"
    p.write_bytes(MAGIC + hashlib.sha256(payload).digest() + payload)
    fresh = SmallCNN(3, 5, width=4)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    try:
        load_compressed(p, fresh)
    except FQError as exc:
        assert str(exc).strip()
        assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())


def test_the_base_cases_are_valid(pm, tmp_path):
    """The properties start from inputs that work, so an error is the edit's doing."""
    load_recipe(copy.deepcopy(DEFAULT), plugin_manager=pm)
    from fq_plugins.data.npz import load_npz

    (tmp_path / "g.npz").write_bytes(GOOD_NPZ)
    assert len(load_npz(tmp_path / "g.npz", {"column": "age", "threshold": 60})) == 12
    assert json.dumps(DEFAULT)
