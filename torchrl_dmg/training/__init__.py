"""One update machinery, schedules, checkpoints and RNG state, the offline and online loops.

The public pieces, by module: :mod:`~torchrl_dmg.training.updater` (``ActorCriticUpdater``,
``DMGUpdater``), :mod:`~torchrl_dmg.training.steps` (what an update of DMG, IQL, TD3+BC or
BC is), :mod:`~torchrl_dmg.training.seed_stacking` (``SeedStackedUpdater``),
:mod:`~torchrl_dmg.training.compile` (how a step is compiled or captured),
:mod:`~torchrl_dmg.training.schedules`, :mod:`~torchrl_dmg.training.checkpoint` (seeding,
RNG state, safe checkpoint files), :mod:`~torchrl_dmg.training.guards` (NaN/inf and SIGTERM
stops), :mod:`~torchrl_dmg.training.offline` (``train_offline``) and
:mod:`~torchrl_dmg.training.online` (``train_online``).
"""

from torchrl_dmg.training.checkpoint import (
    load_checkpoint,
    offline_checkpoint_state,
    offline_start_state,
    resolve_device,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from torchrl_dmg.training.offline import train_offline, value_bounds
from torchrl_dmg.training.online import OnlineState, train_online
from torchrl_dmg.training.schedules import FinetuneSchedule
from torchrl_dmg.training.seed_stacking import (
    SeedStackedDMGUpdater,
    SeedStackedUpdater,
    unstack_updater_state,
)
from torchrl_dmg.training.steps import LossSteps, steps_for
from torchrl_dmg.training.updater import ActorCriticUpdater, DMGUpdater, UpdateMode

__all__ = [
    "ActorCriticUpdater",
    "DMGUpdater",
    "LossSteps",
    "FinetuneSchedule",
    "OnlineState",
    "SeedStackedDMGUpdater",
    "SeedStackedUpdater",
    "UpdateMode",
    "load_checkpoint",
    "offline_checkpoint_state",
    "offline_start_state",
    "resolve_device",
    "rng_state",
    "save_checkpoint",
    "seed_everything",
    "set_rng_state",
    "train_offline",
    "train_online",
    "steps_for",
    "unstack_updater_state",
    "value_bounds",
]
