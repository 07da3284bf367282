"""Optimisers and schedules: the injected ``optimizer:`` / ``lr_scheduler:`` components, the 0.4.1
replays, and the joint optimiser that makes one iteration one step."""

from intrada_pl.optim.factories import Adam, AdamW, OptimizerFactory, ReferenceSGD, SGD
from intrada_pl.optim.joint import JointOptimizer
from intrada_pl.optim.replay import SGD041
from intrada_pl.optim.replay_adam import Adam041
from intrada_pl.optim.schedule import Poly, PolyDecay

__all__ = ["Adam", "Adam041", "AdamW", "JointOptimizer", "OptimizerFactory", "Poly", "PolyDecay", "ReferenceSGD", "SGD", "SGD041"]
