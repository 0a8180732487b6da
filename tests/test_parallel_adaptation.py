"""The main job on every core: `--threads auto`, adaptation runs side by side with the sequential
scores, and one progress bar over them (issue 33)."""

from __future__ import annotations

import io
import math
import re
import types
from pathlib import Path

import pytest
import torch

from mrcom_lightning import threads
from mrcom_lightning.adaptation import AdaptationConfig, FineTuneSettings, ReplaySettings, RolloutSettings, parallel
from mrcom_lightning.adaptation.parallel import AdaptationRun, adapt_all
from mrcom_lightning.agents import SACConfig
from mrcom_lightning.models import WorldModelConfig
from mrcom_lightning.module import MrCoM
from mrcom_lightning.scenarios import MetaScenarioSet

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
TINY = WorldModelConfig(
    embed_dim=16, hidden_dim=32, stochastic_dim=8, deterministic_dim=16, auxiliary_dim=4, context_length=4, heads=4, reward_bins=31
)
# 60 real steps in 30-step episodes, learning from step 21, a model round every 10 steps, fine-tuned.
TINY_ADAPT = AdaptationConfig(
    env_steps=60, episode_steps=30, history_length=6, eval_every=30, eval_episodes=1,
    sac=SACConfig(hidden_dim=32, batch_size=16, warmup_steps=20),
    rollout=RolloutSettings(horizon=2, every=10, starts=8), replay=ReplaySettings(model_updates_per_step=1, pool_rounds=2),
    fine_tune=FineTuneSettings(steps=2),
)  # fmt: skip
SCENARIOS = MetaScenarioSet(domains=("hopper", "cheetah"), num_val=1)


def tiny_model() -> MrCoM:
    torch.manual_seed(0)
    return MrCoM(world_model=TINY, domain_dims={"hopper": (15, 4), "cheetah": (17, 6)}, num_scenarios=2).eval()


def trainer(progress_bar: bool = False):
    """What the callback reads of a trainer: the scenarios, the loggers, whether bars are shown."""
    return types.SimpleNamespace(
        datamodule=types.SimpleNamespace(hparams=types.SimpleNamespace(dataset=types.SimpleNamespace(scenarios=SCENARIOS))),
        loggers=[], global_step=0, is_global_zero=True, progress_bar_callback=object() if progress_bar else None,
    )  # fmt: skip


# --- threads ---------------------------------------------------------------------------------


@pytest.fixture
def alone(monkeypatch, tmp_path):
    """No launcher around this process; its torch threads restored afterwards."""
    monkeypatch.chdir(tmp_path)  # where the CLI's checkpoint folder would go
    monkeypatch.delenv(threads.PARALLEL_WORKER_ENV, raising=False)
    monkeypatch.delenv(threads.THREADS_ENV, raising=False)
    before = torch.get_num_threads()
    yield monkeypatch
    torch.set_num_threads(before)


def cli_threads(*args: str) -> int:
    """The torch threads `mrcom fit --config configs/quick.yaml ARGS` runs with: its classes built
    as `mrcom` builds them, nothing run, no MLflow store made."""
    from mrcom_lightning.datamodules import MultiScenarioDataModule
    from mrcom_lightning.lightning_cli import MrCoMCLI, trainer_defaults

    torch.set_num_threads(1)
    args = ["--config", str(ROOT / "configs/quick.yaml"), "--trainer.logger", "false", *args]
    MrCoMCLI(MrCoM, MultiScenarioDataModule, args=args, run=False, trainer_defaults=trainer_defaults(),
             save_config_callback=None, load_from_checkpoint_support=False)  # fmt: skip
    return torch.get_num_threads()


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
def test_threads_auto_is_every_available_core_for_a_run_alone(alone):
    cores = len(threads.os.sched_getaffinity(0))
    assert threads.resolve_threads("auto") == cores
    assert cli_threads("--threads", "auto") == cores
    assert cli_threads("--threads", "1") == 1


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
def test_threads_auto_is_one_in_a_parallel_worker_or_what_its_launcher_gave(alone):
    alone.setenv(threads.PARALLEL_WORKER_ENV, "1")
    assert cli_threads("--threads", "auto") == 1
    assert threads.resolve_workers("auto", cells=6) == 1  # its launcher fills the cores already
    alone.setenv(threads.THREADS_ENV, "3")  # a launcher's cell of three cores
    assert threads.resolve_threads("auto") == 3 and threads.resolve_workers("auto", cells=6) == 3
    alone.delenv(threads.PARALLEL_WORKER_ENV)
    alone.delenv(threads.THREADS_ENV)
    alone.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert threads.resolve_workers("auto", cells=6) == 4 and threads.resolve_workers("auto", cells=2) == 2
    with pytest.raises(ValueError, match="threads must be 'auto' or an integer >= 1, got 0"):
        threads.resolve_threads(0)


# --- runs side by side ------------------------------------------------------------------------


def test_two_workers_give_the_callbacks_sequential_scores():
    """Two targets, each with the model and plain SAC: four runs in two processes, as in one."""
    from mrcom_lightning.callbacks import ScenarioAdaptation

    scores = {}
    for workers in (1, 2):
        callback = ScenarioAdaptation(targets=["val/*/0"], adaptation=TINY_ADAPT, baseline=True, workers=workers)
        scores[workers] = callback._run(trainer(), tiny_model(), callback.targets, baseline=True)
    assert {key.rsplit("/", 1)[1] for key in scores[1] if key.endswith("score")} == {"score", "sac_score"}
    assert sorted(scores[1]) == sorted(scores[2])
    assert scores[2] == scores[1]  # every value: scores, real steps, imagined share, model errors


def test_a_failed_run_names_itself_and_its_error():
    bad = AdaptationRun("val/hopper-0", SCENARIOS.draw("val")[0], use_model=True, seed=0)
    wrong_model = MrCoM(world_model=TINY, domain_dims={"walker": (24, 6)}, num_scenarios=1)
    with pytest.raises(RuntimeError, match=r"adaptation val/hopper-0 mrcom seed0 failed: ValueError: target domain"):
        adapt_all([bad], TINY_ADAPT, wrong_model, workers=1, progress=False)


# --- one progress bar ---------------------------------------------------------------------------


def shown_steps(text: str) -> list[int]:
    """The real steps done in each drawing of the bar (`  45/120 [`)."""
    return [int(done) for done, _ in re.findall(r"(\d+)/(\d+) \[", text)]


def test_the_progress_bar_advances_over_all_runs_to_their_total(monkeypatch):
    monkeypatch.setattr(parallel, "SHOW_EVERY_S", 0.02)
    monkeypatch.setattr(parallel, "WRITE_EVERY_S", 0.0)
    stream = io.StringIO()
    hopper, cheetah = (spec for spec in SCENARIOS.draw("val"))
    runs = [AdaptationRun("val/hopper-0", hopper, True, 0), AdaptationRun("val/cheetah-0", cheetah, False, 0)]
    adapt_all(runs, TINY_ADAPT, tiny_model(), workers=1, progress=True, stream=stream)
    text = stream.getvalue()
    steps = shown_steps(text)
    total = 2 * TINY_ADAPT.env_steps
    assert f"/{total} [" in text and "Adaptation (2 runs, 1 at a time)" in text
    assert len(set(steps)) >= 3 and steps == sorted(steps) and steps[-1] == total, steps
    assert re.search(r"last score: val/(hopper|cheetah)-0 (mrcom|sac) seed0 \d+\.\d", text)


def test_no_bar_when_progress_bars_are_off(capsys):
    from mrcom_lightning.callbacks import ScenarioAdaptation

    callback = ScenarioAdaptation(targets=["val/hopper/0"], adaptation=TINY_ADAPT, workers=1)
    callback._run(trainer(progress_bar=False), tiny_model(), callback.targets, baseline=False)
    captured = capsys.readouterr()
    assert "Adaptation" not in captured.out + captured.err and "step/s" not in captured.out + captured.err


def test_adapt_reports_its_progress_every_few_steps_and_at_each_evaluation():
    from mrcom_lightning.adaptation import adapt, loop

    calls = []
    hopper = SCENARIOS.draw("val")[0]
    result = adapt(hopper, TINY_ADAPT, None, use_model=False, progress=False, on_progress=lambda *args: calls.append(args))
    every = loop.PROGRESS_EVERY
    assert [steps for steps, _ in calls] == list(range(every, TINY_ADAPT.env_steps + 1, every))
    scores = dict(calls)
    assert all(math.isnan(scores[steps]) for steps in range(every, TINY_ADAPT.eval_every, every))
    assert [scores[steps] for steps in result.eval_steps] == result.eval_scores
