"""Prediction error with standardised against symlog observations (the `obs_normalization` switch).

Trains two world models that differ only in `model.world_model.obs_normalization` on the same
data and the same batches, then reports their validation reconstruction and open-loop errors
(raw units, per domain) and those of a "repeat the last observation" predictor for scale.

    python benchmarks/obs_normalization.py --root data/multi --steps 600

`--root` is a dataset `mrcom fit --config configs/multi.yaml` collected (the default trains on
a small random dataset collected into a temporary directory). The last line is
`standardize_over_symlog_open_loop=<value>` (mean over domains of the ratio of open-loop MSEs;
below 1: standardising predicts better).
"""

import os

os.environ.setdefault("MUJOCO_GL", "disable")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mrcom_lightning.datamodules import MultiScenarioDataModule  # noqa: E402
from mrcom_lightning.data.collect import DatasetConfig, is_complete  # noqa: E402
from mrcom_lightning.models import WorldModelConfig  # noqa: E402
from mrcom_lightning.module import MrCoM  # noqa: E402
from mrcom_lightning.scenarios import MetaScenarioSet  # noqa: E402


def dataset_config(root: str | None, tmp: str) -> DatasetConfig:
    if root is not None:
        import json
        from pathlib import Path

        if not is_complete(root):
            raise SystemExit(f"{root} is not a complete dataset")
        config = json.loads((Path(root) / "dataset.json").read_text())["config"]
        config["scenarios"] = MetaScenarioSet(**config["scenarios"])
        from mrcom_lightning.agents import SACConfig

        config["sac"] = SACConfig(**config["sac"])
        config["root"] = root  # the manifest's root is relative to where it was collected
        return DatasetConfig(**config)
    return DatasetConfig(root=f"{tmp}/random", scenarios=MetaScenarioSet(num_train=3), behaviour="random",
                         episodes_per_scenario=4, test_episodes_per_scenario=2, episode_steps=250)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default=None, help="a collected dataset (default: a small random one)")
    parser.add_argument("--steps", type=int, default=600, help="training steps per model")
    parser.add_argument("--horizon", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        dm = MultiScenarioDataModule(dataset_config(args.root, tmp), batch_size=32, sequence_length=32, prompt_length=20)
        dm.prepare_data()
        dm.setup("fit")
        mean, std = dm.observation_statistics()
        small = WorldModelConfig(embed_dim=64, hidden_dim=128, stochastic_dim=32, deterministic_dim=64, auxiliary_dim=8)
        models = {}
        for norm in ("standardize", "symlog"):
            torch.manual_seed(0)
            model = MrCoM(world_model=dataclasses.replace(small, obs_normalization=norm), domain_dims=dm.domain_dims,
                          num_scenarios=dm.num_scenarios, lr=3e-4, open_loop_horizon=args.horizon)
            model.world_model.set_observation_statistics(mean, std)
            models[norm] = (model, model.configure_optimizers())
        stream = dm.train_stream()
        start = time.perf_counter()
        for step in range(args.steps):
            batch = {k: torch.as_tensor(v) for k, v in stream.batch(0, step, 1).items()}
            for model, optimizer in models.values():
                terms, _ = model.losses(batch)
                optimizer.zero_grad(set_to_none=True)
                terms["total"].backward()
                optimizer.step()
        print(f"trained 2 models x {args.steps} steps (reduced sizes) in {time.perf_counter() - start:.0f}s")

        results = {}
        with torch.no_grad():
            for norm, (model, _) in models.items():
                model.eval()
                for batch in dm.val_dataloader():
                    model._evaluate(batch, "val")
                scalars, _ = model.metrics["val"].compute("val")
                results[norm] = {k: float(v) for k, v in scalars.items()}
    ratios = []
    for domain in dm.domains:
        s, y = results["standardize"], results["symlog"]
        key_obs, key_ol = f"val/{domain}/obs_mse", f"val/{domain}/open_loop_mse"
        print(f"{domain:8s} obs_mse standardize {s[key_obs]:8.4f} symlog {y[key_obs]:8.4f} | open_loop_mse "
              f"standardize {s[key_ol]:8.4f} symlog {y[key_ol]:8.4f} repeat-last {y[f'val/{domain}/naive_open_loop_mse']:8.4f}")
        ratios.append(s[key_ol] / y[key_ol])
    print(f"standardize_over_symlog_open_loop={np.mean(ratios):.3f}")


if __name__ == "__main__":
    main()
