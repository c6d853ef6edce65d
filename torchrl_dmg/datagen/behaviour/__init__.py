"""The SAC behaviour-policy trainer: the tasks it learns (:mod:`.tasks`), its SAC settings and
updater (:mod:`.sac`), the run itself (:mod:`.trainer`, :func:`train_sac`), the transitions a
run collects (:mod:`.transitions`) and loading and acting with a trained actor
(:mod:`.policy`)."""

from torchrl_dmg.datagen.behaviour.sac import SACSettings
from torchrl_dmg.datagen.behaviour.trainer import train_sac

__all__ = ["SACSettings", "train_sac"]
