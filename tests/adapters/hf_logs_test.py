"""What the HF adapter puts in Trainer's logs: train and eval energy as separate phases
(labelled measured / estimated), and the figures as TensorBoard scalars.

Oracle for energy: a test meter reading a counter that the test itself advances — by 1 J
per optimizer step and by 100 J per evaluation batch — so each phase's right total is
known exactly. TensorBoard: the event file read back with tensorboard's own reader.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

pytest.importorskip("transformers")

from transformers import Trainer, TrainerCallback

from fq_plugins import hookimpl
from fq_plugins.adapters.hf import FQCallback
from fq_plugins.manager import get_plugin_manager
from fq_plugins.protocols import Availability, EnergyMeter, EnergyReading

from .test_hf import TextDS, bert, recipe, targs

TRAIN_J, EVAL_BATCH_J = 1.0, 100.0


class Ticks(EnergyMeter):
    """Joules = how far the test advanced :attr:`counter` between start and stop."""

    name = "ticks"
    description = "a counter the test advances (test meter)"
    measured = True
    counter: ClassVar[list[float]] = [0.0]
    _at = 0.0

    def probe(self) -> Availability:
        return Availability("ok")

    def start(self) -> None:
        self._at = self.counter[0]

    def stop(self) -> EnergyReading:
        return EnergyReading(
            self.name, 1.0, {"node": self.counter[0] - self._at}, {"node": "measured:ticks"}
        )


class EstimatedTicks(Ticks):
    name = "ticks_est"
    measured = False

    def stop(self) -> EnergyReading:
        r = super().stop()
        return EnergyReading(self.name, r.seconds, r.joules, {"node": "estimated:ticks"})


class _Meters:
    @hookimpl
    def fq_register_energy_meters(self, register: Any) -> None:
        register(Ticks)
        register(EstimatedTicks)


class Advance(TrainerCallback):
    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
        Ticks.counter[0] += TRAIN_J
        return control

    def on_prediction_step(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
        Ticks.counter[0] += EVAL_BATCH_J
        return control


def _fq(**kw: Any) -> FQCallback:
    pm = get_plugin_manager()
    if pm.pm.get_plugin("hf-test-meters") is None:
        pm.register(_Meters(), name="hf-test-meters")
    spec = recipe({"method": "uniform", "bits": 4})
    spec["energy"] = {"meters": ["ticks", "ticks_est"]}
    return FQCallback.from_recipe(spec, plugin_manager=pm, **kw)


def test_eval_energy_is_its_own_phase(tmp_path: Any) -> None:
    fq = _fq()
    # 40 eval examples / 16 per batch = 3 batches per evaluation; evaluations at steps 2, 4
    args = targs(tmp_path, max_steps=4, eval_strategy="steps", eval_steps=2, logging_steps=1)
    trainer = fq.trainer(
        Trainer,
        model=bert(),
        args=args,
        train_dataset=TextDS(64, 1),
        eval_dataset=TextDS(40, 2),
        callbacks=[Advance()],
    )
    trainer.args.per_device_eval_batch_size = 16
    trainer.train()
    evals = [h for h in trainer.state.log_history if "eval_accuracy" in h]
    assert [h["step"] for h in evals] == [2, 4]
    for h in evals:
        # training so far: 1 J a step, none of the evaluations' 300 J
        assert h["eval_energy_train_ticks_joules_measured"] == h["step"] * TRAIN_J
        assert h["eval_energy_train_ticks_est_joules_estimated"] == h["step"] * TRAIN_J
        # this evaluation only (3 batches), not the previous one
        assert h["eval_energy_eval_ticks_joules_measured"] == 3 * EVAL_BATCH_J
    assert fq.energy["train:ticks"].total_joules == 4 * TRAIN_J
    metrics = trainer.evaluate()
    assert metrics["eval_energy_train_ticks_joules_measured"] == 4 * TRAIN_J
    assert metrics["eval_energy_eval_ticks_joules_measured"] == 3 * EVAL_BATCH_J
    assert fq.energy["eval:ticks"].total_joules == 3 * EVAL_BATCH_J
    assert fq.energy["eval:ticks_est"].estimated and not fq.energy["eval:ticks"].estimated


def test_tensorboard_shows_the_figures(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = tmp_path / "tb"
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(logdir))
    fq = _fq()
    args = targs(tmp_path, max_steps=2, logging_steps=1, report_to=["tensorboard"])
    trainer = fq.trainer(
        Trainer, model=bert(), args=args, train_dataset=TextDS(32, 1), eval_dataset=TextDS(32, 2)
    )
    trainer.train()
    metrics = trainer.evaluate()
    for cb in trainer.callback_handler.callbacks:
        if getattr(cb, "tb_writer", None) is not None:
            cb.tb_writer.flush()
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for key in (
        "accuracy",
        "worst_group_accuracy",
        "eodd",
        "avg_bits",
        "bops",
        "packed_bytes",
        "energy_train_ticks_joules_measured",
        "energy_eval_ticks_joules_measured",
        "energy_eval_ticks_est_joules_estimated",
    ):
        tag = f"eval/{key}"
        assert tag in tags, (tag, sorted(tags))
        (last,) = acc.Scalars(tag)[-1:]
        assert last.value == pytest.approx(metrics[f"eval_{key}"], rel=1e-6)
    for key in ("fq_task", "fq_fairness", "fq_penalty", "fq_total"):
        assert f"train/{key}" in tags
