"""Training: one accelerate loop for stage 1, stage 2 (with the alignment loss) and fine-tuning."""

from exgra.training.checkpoint import TrainerState, latest_checkpoint, list_checkpoints
from exgra.training.config import TrainConfig, load_train_config
from exgra.training.loop import StepInfo, TrainResult, run_training
from exgra.training.stages import apply_stage, parameter_group, trainable_groups

__all__ = [
    "StepInfo",
    "TrainConfig",
    "TrainResult",
    "TrainerState",
    "apply_stage",
    "latest_checkpoint",
    "list_checkpoints",
    "load_train_config",
    "parameter_group",
    "run_training",
    "trainable_groups",
]
