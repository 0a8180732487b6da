"""Soft Actor-Critic (Haarnoja et al. 2018): the agent, its replay and its training loop.

SAC produces the behaviour policies of the datasets (DESIGN.md §3) and is the learner of
scenario adaptation (DESIGN.md §5).
"""

from mrcom_lightning.agents.replay import ReplayBuffer
from mrcom_lightning.agents.sac import SAC, Actor, Critic, SACConfig, soft_update
from mrcom_lightning.agents.train import EVAL_SEED, TrainResult, evaluate, train_sac

__all__ = [
    "EVAL_SEED",
    "Actor",
    "Critic",
    "ReplayBuffer",
    "SAC",
    "SACConfig",
    "TrainResult",
    "evaluate",
    "soft_update",
    "train_sac",
]
