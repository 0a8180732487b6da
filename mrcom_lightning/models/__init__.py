"""The MrCoM world model's components (DESIGN.md §4), each citing its equation."""

from mrcom_lightning.models.cadm import ContextDynamics, DynamicsPredictions, PredictionLoss, TransitionContext
from mrcom_lightning.models.context import ContextTransformer
from mrcom_lightning.models.latent import LatentCell, LatentSequence
from mrcom_lightning.models.mamba import PreviousStepEncoder, loss_window_length, loss_window_weights
from mrcom_lightning.models.losses import MetaStateLoss, MetaValueLoss, ValueLoss, WorldModelLoss, gradient_norms
from mrcom_lightning.models.tokenizers import DomainDecoder, DomainTokenizer
from mrcom_lightning.models.value import MetaValue, ScenarioValues
from mrcom_lightning.models.world_model import (
    ImaginedState,
    Predictions,
    Rollout,
    ValuePredictions,
    WorldModel,
    WorldModelConfig,
)

__all__ = [
    "ContextDynamics",
    "ContextTransformer",
    "DynamicsPredictions",
    "DomainDecoder",
    "DomainTokenizer",
    "LatentCell",
    "LatentSequence",
    "MetaStateLoss",
    "MetaValue",
    "MetaValueLoss",
    "PredictionLoss",
    "PreviousStepEncoder",
    "ImaginedState",
    "Predictions",
    "Rollout",
    "ScenarioValues",
    "TransitionContext",
    "ValueLoss",
    "ValuePredictions",
    "WorldModel",
    "WorldModelConfig",
    "WorldModelLoss",
    "gradient_norms",
    "loss_window_length",
    "loss_window_weights",
]
