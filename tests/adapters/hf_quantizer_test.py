"""``from_pretrained(..., quantization_config=FQQuantizationConfig(recipe))`` and back.

Tiny BERT from a config saved to ``tmp_path`` (no hub). Oracles: the model that was saved
(its logits and every state-dict tensor, compared with ``torch.equal``), the safetensors
file read with the safetensors library, and the stock transformers load.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

from safetensors.torch import load_file  # noqa: E402
from transformers import BertForSequenceClassification, Trainer  # noqa: E402
from transformers.quantizers import auto  # noqa: E402

from fq_plugins.adapters import hf  # noqa: E402
from fq_plugins.adapters.hf import (  # noqa: E402
    QUANT_METHOD,
    FQCallback,
    FQHfQuantizer,
    FQQuantizationConfig,
    base_state_dict,
    register_fq_quantizer,
)
from fq_plugins.errors import ConfigError, FQError  # noqa: E402
from fq_plugins.storage import CheckpointError  # noqa: E402

from .test_hf import BAQ, TextDS, bert, recipe, targs  # noqa: E402

METHODS = {
    "baq": BAQ,
    "bmrs": {"method": "bmrs", "gate_lr": 0.1},
    "codeq": {"method": "codeq", "bits": 4},
    "uniform": {"method": "uniform", "bits": 3},
    "momos": {"method": "momos", "block_size": 4, "capacity": 0.05},
}


def _plain(tmp_path: Any) -> str:
    path = str(tmp_path / "plain")
    bert(0).save_pretrained(path)
    return path


def _load(path: str, method: dict[str, Any] | None = None) -> Any:
    cfg = None
    if method is not None:
        cfg = FQQuantizationConfig(recipe(method), calib_dataset=TextDS(32, 1))
    return BertForSequenceClassification.from_pretrained(path, quantization_config=cfg)


def _move_method_state(model: torch.nn.Module) -> None:
    """What training does to the methods' own tensors: move them off their initial values."""
    plain = set(bert().state_dict())
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, t in model.state_dict(keep_vars=True).items():
            if name not in plain and not name.endswith(".original") and t.is_floating_point():
                t.add_(0.05 * torch.randn(t.shape, generator=gen))


def _logits(model: Any) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=TextDS(16, 7).x).logits


@pytest.mark.parametrize("name", list(METHODS))
def test_save_and_reload_is_bit_identical(tmp_path: Any, name: str) -> None:
    model = _load(_plain(tmp_path), METHODS[name])
    assert isinstance(model.hf_quantizer, FQHfQuantizer)
    assert model.hf_quantizer.pipeline is not None
    _move_method_state(model)
    model.save_pretrained(str(tmp_path / "q"))

    saved = load_file(str(tmp_path / "q" / "model.safetensors"))
    # every plain weight under its own name (a stock load finds them), no parametrize key
    assert set(bert().state_dict()) <= set(saved)
    assert not any(k.endswith(".original") for k in saved)
    want = model.state_dict()
    for k, v in want.items():
        plain_key = k.replace(".parametrizations.weight.original", ".weight")
        assert torch.equal(saved[plain_key], v), k
    cfg = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    assert cfg["quant_method"] == QUANT_METHOD
    assert cfg["recipe"]["compress"][0]["method"] == METHODS[name]["method"]

    loaded = BertForSequenceClassification.from_pretrained(str(tmp_path / "q"))
    assert isinstance(loaded.hf_quantizer, FQHfQuantizer)
    got = loaded.state_dict()
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k
    assert torch.equal(_logits(loaded), _logits(model))


def test_load_without_fq_plugins_is_the_fp32_model(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _load(_plain(tmp_path), METHODS["codeq"])
    _move_method_state(model)
    model.save_pretrained(str(tmp_path / "q"))
    latent = {k: v for k, v in base_state_dict(model).items() if k in bert().state_dict()}
    # fq-plugins not imported: transformers does not know the quant_method
    monkeypatch.delitem(auto.AUTO_QUANTIZATION_CONFIG_MAPPING, QUANT_METHOD)
    monkeypatch.delitem(auto.AUTO_QUANTIZER_MAPPING, QUANT_METHOD)
    stock = BertForSequenceClassification.from_pretrained(str(tmp_path / "q"))
    assert getattr(stock, "hf_quantizer", None) is None
    sd = stock.state_dict()
    assert sd.keys() == latent.keys()
    for k in sd:
        assert torch.equal(sd[k], latent[k]), k
    # ... which is the unquantized model: the fake-quantized one differs
    ref = bert()
    ref.load_state_dict(latent)
    assert torch.equal(_logits(stock), _logits(ref))
    assert not torch.equal(_logits(stock), _logits(model))


def test_trainer_fine_tunes_a_loaded_model_and_saves_it(tmp_path: Any) -> None:
    model = _load(_plain(tmp_path), BAQ)
    fq = FQCallback.from_recipe(recipe(BAQ))
    trainer = fq.trainer(
        Trainer, model=model, args=targs(tmp_path, max_steps=3), train_dataset=TextDS(48, 1)
    )
    assert fq.pipeline is model.hf_quantizer.pipeline  # adopted, not attached twice
    bits_before = {k: v.clone() for k, v in model.state_dict().items() if "bit_logit" in k}
    trainer.train()
    assert any(not torch.equal(v, model.state_dict()[k]) for k, v in bits_before.items())
    trainer.save_model(str(tmp_path / "tuned"))
    loaded = BertForSequenceClassification.from_pretrained(str(tmp_path / "tuned"))
    want, got = model.state_dict(), loaded.state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert torch.equal(_logits(loaded), _logits(model))


def test_callback_with_other_methods_is_refused(tmp_path: Any) -> None:
    model = _load(_plain(tmp_path), METHODS["uniform"])
    fq = FQCallback.from_recipe(recipe({"method": "uniform", "bits": 4}))
    with pytest.raises(ConfigError, match=r"model.config.quantization_config.recipe"):
        fq.trainer(Trainer, model=model, args=targs(tmp_path), train_dataset=TextDS(32, 1))
    # the fix the message names works
    fq = FQCallback.from_recipe(model.config.quantization_config.recipe)
    fq.trainer(Trainer, model=model, args=targs(tmp_path), train_dataset=TextDS(32, 1))
    assert fq.pipeline is model.hf_quantizer.pipeline


def test_plain_named_state_dict_loads_into_the_parametrized_model(tmp_path: Any) -> None:
    # Trainer resumes with model.load_state_dict(safetensors file, strict=False): the file
    # of a quantizer-loaded model has plain names, which must reach the parametrized tensors
    a = _load(_plain(tmp_path), METHODS["codeq"])
    b = _load(_plain(tmp_path), METHODS["codeq"])
    _move_method_state(a)
    with torch.no_grad():
        a.bert.encoder.layer[0].intermediate.dense.parametrizations.weight.original.mul_(1.5)
    result = b.load_state_dict(base_state_dict(a), strict=False)
    assert not result.missing_keys and not result.unexpected_keys
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_checkpoint_of_another_recipe_is_refused(tmp_path: Any) -> None:
    model = _load(_plain(tmp_path), METHODS["codeq"])
    model.save_pretrained(str(tmp_path / "q"))
    cfg_path = tmp_path / "q" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["quantization_config"]["recipe"]["compress"] = [BAQ]
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"does not hold the state.*fairquant|missing"):
        BertForSequenceClassification.from_pretrained(str(tmp_path / "q"))


def test_config_fields_and_errors() -> None:
    cfg = FQQuantizationConfig(
        recipe(METHODS["uniform"]), calib_dataset=TextDS(8, 1), example_input=TextDS(4, 1).x
    )
    d = cfg.to_dict()
    assert set(d) == {"quant_method", "recipe", "example_input", "n_groups", "input_key",
                      "label_key"}
    assert d["example_input"] == {"shape": [4, 10], "dtype": "int64"}
    json.dumps(d)  # JSON only: no dataset in config.json
    again = FQQuantizationConfig.from_dict(d)
    assert again.to_dict() == d
    with pytest.raises(ConfigError, match="needs a recipe"):
        FQQuantizationConfig()
    with pytest.raises(ConfigError, match=r"unknown fields \['bits'\]"):
        FQQuantizationConfig(recipe(METHODS["uniform"]), bits=4)
    with pytest.raises(ConfigError, match="quant_method='torchao'"):
        FQQuantizationConfig(recipe(METHODS["uniform"]), quant_method="torchao")
    with pytest.raises(ConfigError, match="no methods"):
        FQQuantizationConfig({"compress": []})


def test_registration_is_idempotent(monkeypatch: pytest.MonkeyPatch) -> None:
    register_fq_quantizer()
    register_fq_quantizer()
    assert auto.AUTO_QUANTIZATION_CONFIG_MAPPING[QUANT_METHOD] is FQQuantizationConfig
    assert auto.AUTO_QUANTIZER_MAPPING[QUANT_METHOD] is FQHfQuantizer
    # this module imported a second time (new class objects): the first ones stay
    first = type("FQHfQuantizer", (FQHfQuantizer,), {"__module__": hf.__name__})
    monkeypatch.setitem(auto.AUTO_QUANTIZER_MAPPING, QUANT_METHOD, first)
    register_fq_quantizer()
    assert auto.AUTO_QUANTIZER_MAPPING[QUANT_METHOD] is first
    # another package holding the name: a clear error, not a silent overwrite
    other = type("Other", (FQHfQuantizer,), {"__module__": "someone_else"})
    monkeypatch.setitem(auto.AUTO_QUANTIZER_MAPPING, QUANT_METHOD, other)
    with pytest.raises(FQError, match=r"registered already, by someone_else.Other"):
        register_fq_quantizer()


@pytest.mark.slow
def test_trainer_checkpoint_of_a_loaded_model_resumes_exactly(tmp_path: Any) -> None:
    # Trainer's checkpoints of a quantizer-loaded model have plain names (save_pretrained
    # goes through the quantizer); resume_from_checkpoint must still restore every tensor
    plain = _plain(tmp_path)

    def run(name: str, resume: str | None, disturb: bool) -> Any:
        model = _load(plain, BAQ)
        if disturb:  # a resumed run starts from other values everywhere
            _move_method_state(model)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.01)
        fq = FQCallback.from_recipe(recipe(BAQ))
        args = targs(
            tmp_path,
            output_dir=str(tmp_path / name),
            max_steps=4,
            save_strategy="steps",
            save_steps=2,
            num_train_epochs=2,
        )
        trainer = fq.trainer(Trainer, model=model, args=args, train_dataset=TextDS(32, 1))
        trainer.train(resume_from_checkpoint=resume)
        return model

    full = run("a", None, False)
    saved = load_file(str(tmp_path / "a" / "checkpoint-2" / "model.safetensors"))
    assert not any(k.endswith(".original") for k in saved)  # plain names in the checkpoint
    resumed = run("b", str(tmp_path / "a" / "checkpoint-2"), True)
    sa, sb = full.state_dict(), resumed.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
