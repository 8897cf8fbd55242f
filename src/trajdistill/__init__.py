"""trajdistill: dataset distillation by matching training trajectories (MTT and STM)."""
__version__ = "0.1.0"
