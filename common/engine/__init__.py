"""The one training engine shared by detection and segmentation (see trainer.py for the loop).

A training tool reads top to bottom (device, seeds and SyncBN through ``common.tooling``):

    device = select_device(args.device)              # joins torchrun's process group, if any
    seed_process(cfg.solver.seed, cfg.solver.deterministic)     # seed + rank
    model = sync_batchnorm(build_model(cfg.model, meta), norm)  # SyncBN under several processes
    optimizer = build_optimizer(model, cfg.solver)
    scheduler = build_scheduler(optimizer, cfg.solver)
    s = cfg.solver
    trainer = Trainer(model, optimizer, scheduler, make_data_iter, output_dir=out, max_iters=s.max_iters,
                      device=device, amp=s.amp, clip_grad_norm=s.clip_grad_norm, accumulate=s.accumulate,
                      checkpoint_period=s.checkpoint_period, eval_period=s.eval_period,
                      log_period=s.log_period, evaluate=evaluate, validation_loss=None,
                      best_metric=s.best_metric, early_stop_patience=s.early_stop_patience,
                      keep_checkpoints=s.keep_checkpoints, config_yaml=to_yaml(cfg))
    if args.resume:
        trainer.resume()
    summary = trainer.train()
    if is_main_process():
        plot_curves(out / "metrics.csv", out)
"""
from common.engine.build import (build_optimizer, build_scheduler, check_solver, scale_to_batch,
                                 schedule_in_epochs)
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
    "SolverConfig", "build_optimizer", "build_scheduler", "check_solver", "lr_factor", "scale_to_batch",
    "schedule_in_epochs",
    "WarmupSchedule", "save_checkpoint", "load_checkpoint", "load_model_state", "CheckpointError",
    "seed_everything", "get_rng_state", "set_rng_state", "Trainer", "TrainingError", "to_device",
    "MetricsLog", "plot_curves", "init_distributed", "is_distributed", "get_rank",
    "get_world_size", "is_main_process", "all_reduce_dict", "all_gather_object",
    "broadcast_object", "barrier",
]
