"""The attack job (mmie.jobs.robustness.attack): every attack of one (arm, seed) on one load of the arm,
each from the random state the load left (as it would start in a job of its own), in report order;
a failed attack is logged and costs only its own output (PartialFailure), an out-of-memory error ends
the job at once. The attacks themselves are stand-ins here; tests/workflow/test_robustness.py runs them."""
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mmie.failures import PartialFailure
from mmie.jobs import robustness


@pytest.fixture()
def stand_ins(monkeypatch):
    """Every attack records the random numbers it would draw first, and the loaded arm it got."""
    ran: list[tuple] = []

    def draws():
        return (random.random(), float(np.random.rand()), float(torch.rand(1)))

    def record(name):
        def attack(ctx, *args):
            ran.append((name, draws(), ctx.arm_name, args[-1] if name != "quantize" else args[-2]))
        return attack

    def setup(config, arm_name, seed, *rest):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)
        torch.rand(7)            # loading consumes random numbers (an adapter's initialisation)
        return SimpleNamespace(runtime={}), SimpleNamespace(method="lora"), None, None

    monkeypatch.setattr(robustness, "_setup", setup)
    for name in ("relearn", "incontext", "quantize", "probe"):
        monkeypatch.setattr(robustness, name, record(name))
    return ran


def outs(tmp_path, names):
    return [str(tmp_path / "lora" / "seed0" / "robustness" / f"{n}.json") for n in names]


def run(demo_config, tmp_path, names):
    robustness.attack(demo_config, "lora", 0, None, None, outs(tmp_path, names), forget_set="f", retain_set="r",
                      splits=[], detector="d", workdir=str(tmp_path / "w"))


def test_every_attack_runs_once_in_report_order_from_the_same_random_state(demo_config, tmp_path, stand_ins):
    run(demo_config, tmp_path, ["probe", "incontext", "relearn", "quantize"])
    assert [name for name, *_ in stand_ins] == ["relearn", "quantize", "incontext", "probe"]
    assert len({d for _, d, _, _ in stand_ins}) == 1          # each starts where the load left the generators
    assert [out.rsplit("/", 1)[1] for *_, out in stand_ins] == ["relearn.json", "quantize.json", "incontext.json",
                                                                "probe.json"]


def test_a_failed_attack_costs_only_its_output_and_memory_errors_end_the_job(demo_config, tmp_path, stand_ins,
                                                                            monkeypatch):
    def broken(ctx, *args):
        raise RuntimeError("no 4-bit kernel on this CPU")

    monkeypatch.setattr(robustness, "quantize", broken)
    with pytest.raises(PartialFailure) as err:
        run(demo_config, tmp_path, ["relearn", "quantize", "incontext", "probe"])
    assert list(err.value.failed) == outs(tmp_path, ["quantize"])
    assert "no 4-bit kernel" in err.value.failed[outs(tmp_path, ["quantize"])[0]]
    assert [name for name, *_ in stand_ins] == ["relearn", "incontext", "probe"]     # the others still ran

    def oom(ctx, *args):
        raise MemoryError("out of memory")

    monkeypatch.setattr(robustness, "quantize", oom)
    stand_ins.clear()
    with pytest.raises(MemoryError):
        run(demo_config, tmp_path, ["relearn", "quantize", "incontext"])
    assert [name for name, *_ in stand_ins] == ["relearn"]


def test_an_output_for_an_unknown_attack_is_a_wiring_error(demo_config, tmp_path, stand_ins):
    with pytest.raises(ValueError, match="unknown attacks"):
        run(demo_config, tmp_path, ["relearn", "jailbreak"])
    assert stand_ins == []
