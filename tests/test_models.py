"""The model zoo at small inputs, user factories and user weights."""

from __future__ import annotations

import textwrap

import pytest
import torch
from torch import nn

from fq_plugins.errors import ConfigError
from fq_plugins.models import ZOO_MODELS, build_model

pytest.importorskip("timm")


@pytest.mark.parametrize("name", ZOO_MODELS)
def test_zoo_builds_and_runs_at_32px(name):
    torch.manual_seed(0)
    model = build_model(name, in_channels=3, image_size=32, n_classes=5).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    if name.startswith("resnet"):
        assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
        assert isinstance(model.maxpool, nn.Identity)
        with torch.no_grad():  # stride 1 stem, then layers 2–4 halve: 32 → 4
            assert model.forward_features(torch.zeros(1, 3, 32, 32)).shape[-2:] == (4, 4)
    elif name.startswith("deit"):
        assert model.patch_embed.proj.kernel_size == (4, 4)
        assert model.patch_embed.num_patches == 64  # (32 / 4)²
    else:
        with torch.no_grad():  # stem 32 → 16, stages → 8 → 4 → 2
            assert model.forward_features(torch.zeros(1, 3, 32, 32)).shape[-2:] == (2, 2)


def test_zoo_large_inputs_keep_imagenet_stems_and_refuse_tabular():
    m = build_model("resnet18", in_channels=3, image_size=224, n_classes=2)
    assert m.conv1.kernel_size == (7, 7) and not isinstance(m.maxpool, nn.Identity)
    m = build_model("resnet18", in_channels=1, image_size=32, n_classes=2, small_input=False)
    assert m.conv1.kernel_size == (7, 7) and m.conv1.in_channels == 1
    d = build_model("deit_tiny_patch16_224", in_channels=3, image_size=224, n_classes=2)
    assert d.patch_embed.proj.kernel_size == (16, 16)
    with pytest.raises(ConfigError, match=r"at least 8 px.*use model mlp"):
        build_model("resnet50", in_channels=14, image_size=1, n_classes=2)
    with pytest.raises(ConfigError, match="small_input"):
        build_model("resnet18", in_channels=3, image_size=32, n_classes=2, small_input="yes")


def test_existing_names_still_work():
    assert build_model("small_cnn", in_channels=3, image_size=8, n_classes=3)(
        torch.zeros(1, 3, 8, 8)
    ).shape == (1, 3)
    assert build_model("mlp", in_channels=7, image_size=1, n_classes=2)(
        torch.zeros(4, 7, 1, 1)
    ).shape == (4, 2)
    m = build_model("timm:resnet18", in_channels=3, image_size=32, n_classes=4)
    assert m.conv1.kernel_size == (7, 7)  # raw timm: no adaptation
    with pytest.raises(ConfigError, match=r"timm has no architecture 'resnet19'.*resnet18"):
        build_model("timm:resnet19", in_channels=3, image_size=32, n_classes=4)
    with pytest.raises(ConfigError, match=r"unknown model 'resnet81'.*Did you mean"):
        build_model("resnet81", in_channels=3, image_size=32, n_classes=4)


FACTORY = """
from torch import nn

def build(in_channels, image_size, n_classes, hidden=3):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size**2, hidden),
                         nn.ReLU(), nn.Linear(hidden, n_classes))

def wrong(x):
    return nn.Linear(1, 1)

def not_a_module(in_channels, image_size, n_classes):
    return "linear"

def broken(**kwargs):
    raise RuntimeError("out of ideas")

VALUE = 3
"""


def test_user_factory_from_file_and_module(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(textwrap.dedent(FACTORY))
    m = build_model(
        "my_models.py:build", in_channels=2, image_size=4, n_classes=3, base_dir=tmp_path, hidden=5
    )
    assert m[1].in_features == 32 and m[1].out_features == 5 and m[3].out_features == 3
    monkeypatch.syspath_prepend(str(tmp_path))
    m = build_model("my_models:build", in_channels=1, image_size=2, n_classes=2)
    assert m[1].in_features == 4 and m[1].out_features == 3


def test_user_factory_errors(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(textwrap.dedent(FACTORY))
    monkeypatch.syspath_prepend(str(tmp_path))
    kw = {"in_channels": 1, "image_size": 2, "n_classes": 2}
    cases = [
        ("no_such_module_xyz:build", r"'no_such_module_xyz:build'.*cannot import module"),
        ("my_models:biuld", r"'my_models:biuld'.*no attribute 'biuld'.*'build'"),
        ("my_models:wrong", r"'my_models:wrong' has the signature \(x\)"),
        ("my_models:not_a_module", r"returned a str; it must return a torch.nn.Module"),
        ("my_models:broken", r"'my_models:broken' failed.*RuntimeError: out of ideas"),
        ("my_models:VALUE", r"'VALUE' is a int, not a function"),
        ("missing.py:build", r"file .*missing\.py' does not exist"),
        (":build", r"must read 'module:function'"),
    ]
    for value, match in cases:
        with pytest.raises(ConfigError, match=match):
            build_model(value, **kw)
    with pytest.raises(ConfigError, match=r"cannot take in_channels=.*\['depth'\]"):
        build_model("my_models:not_a_module", depth=3, **kw)
    (tmp_path / "bad_syntax.py").write_text("def f(:\n")
    with pytest.raises(ConfigError, match=r"importing .*bad_syntax\.py' failed: SyntaxError"):
        build_model("bad_syntax.py:f", base_dir=tmp_path, **kw)


def test_user_weights_load_and_mismatches_are_listed(tmp_path):
    kw = {"in_channels": 3, "image_size": 8, "n_classes": 3}
    torch.manual_seed(1)
    src = build_model("small_cnn", **kw)
    with torch.no_grad():
        src.head.bias.fill_(0.25)
    torch.save(src.state_dict(), tmp_path / "w.pt")
    torch.save({"state_dict": src.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    for f in ("w.pt", "ckpt.pt"):
        torch.manual_seed(2)
        got = build_model("small_cnn", weights=f, base_dir=tmp_path, **kw)
        for k, v in src.state_dict().items():
            assert torch.equal(got.state_dict()[k], v), k

    # width 8 vs 16: 3 conv weights + 3 BNs × (weight, bias, mean, var) + head.weight = 16
    with pytest.raises(
        ConfigError,
        match=r"shapes differ.*features\.0\.weight \(16, 3, 3, 3\) vs \(8, 3, 3, 3\).*\(16 in all\)",
    ):
        build_model("small_cnn", weights=tmp_path / "w.pt", width=8, **kw)
    sd = dict(src.state_dict())
    del sd["head.bias"]
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "partial.pt")
    with pytest.raises(
        ConfigError, match=r"missing from the file: head\.bias.*not in the model: extra\.weight"
    ):
        build_model("small_cnn", weights=tmp_path / "partial.pt", **kw)
    torch.save({f"module.{k}": v for k, v in src.state_dict().items()}, tmp_path / "ddp.pt")
    with pytest.raises(ConfigError, match=r"strip 'module\.'"):
        build_model("small_cnn", weights=tmp_path / "ddp.pt", **kw)
    torch.save(src, tmp_path / "whole.pt")  # a pickled module: refused by weights_only
    with pytest.raises(ConfigError, match=r"weights_only loading refuses"):
        build_model("small_cnn", weights=tmp_path / "whole.pt", **kw)
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ConfigError, match=r"junk\.pt"):
        build_model("small_cnn", weights=tmp_path / "junk.pt", **kw)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ConfigError, match=r"holds a list, not a state_dict"):
        build_model("small_cnn", weights=tmp_path / "list.pt", **kw)
    with pytest.raises(ConfigError, match=r"nope\.pt' does not exist"):
        build_model("small_cnn", weights=tmp_path / "nope.pt", **kw)
