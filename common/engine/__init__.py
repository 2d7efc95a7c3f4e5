"""The one training engine shared by detection and segmentation (see trainer.py for the loop)."""
from common.engine.build import build_optimizer, build_scheduler, check_solver
from common.engine.checkpoint import (CheckpointError, get_rng_state, load_checkpoint,
                                      load_model_state, save_checkpoint, seed_everything,
                                      set_rng_state)
from common.engine.config import SolverConfig
from common.engine.curves import plot_curves
from common.engine.distributed import (all_gather_object, all_reduce_dict, barrier,
                                       broadcast_object, get_rank, get_world_size,
                                       init_distributed, is_distributed, is_main_process)
from common.engine.metrics_log import MetricsLog
from common.engine.schedule import WarmupSchedule, lr_factor
from common.engine.trainer import Trainer, TrainingError, to_device

__all__ = [
    "SolverConfig", "build_optimizer", "build_scheduler", "check_solver", "lr_factor",
    "WarmupSchedule", "save_checkpoint", "load_checkpoint", "load_model_state", "CheckpointError",
    "seed_everything", "get_rng_state", "set_rng_state", "Trainer", "TrainingError", "to_device",
    "MetricsLog", "plot_curves", "init_distributed", "is_distributed", "get_rank",
    "get_world_size", "is_main_process", "all_reduce_dict", "all_gather_object",
    "broadcast_object", "barrier",
]
