"""Training: one accelerate loop for stage 1, stage 2 (with the alignment loss) and fine-tuning."""

from exgra.training.checkpoint import TrainerState, latest_checkpoint, list_checkpoints
from exgra.training.config import TrainConfig, load_train_config
from exgra.training.loop import Run, StepInfo, TrainResult, finish, fit, prepare_run, run_training
from exgra.training.stages import apply_stage, parameter_group, trainable_groups

__all__ = [
    "Run",
    "StepInfo",
    "TrainConfig",
    "TrainResult",
    "TrainerState",
    "apply_stage",
    "finish",
    "fit",
    "latest_checkpoint",
    "list_checkpoints",
    "load_train_config",
    "parameter_group",
    "prepare_run",
    "run_training",
    "trainable_groups",
]
