"""Pieces of the online (fine-tuning) loop: the collector, collected steps in the offline
data's format, what a fine-tuning checkpoint keeps of the buffer, and event timing."""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torchrl.collectors import Collector
from torchrl.data import TensorDictReplayBuffer
from torchrl.envs import EnvBase


def make_collector(
    env: EnvBase, policy: TensorDictModuleBase, *, total_frames: int, frames_per_batch: int = 1
) -> Collector:
    """A single-process TorchRL :class:`~torchrl.collectors.Collector` (the successor of
    ``SyncDataCollector``) that steps ``env`` with ``policy`` and resets it when done."""
    return Collector(
        env,
        policy,
        frames_per_batch=frames_per_batch,
        total_frames=total_frames,
        reset_when_done=True,
        trust_policy=True,
        auto_register_policy_transforms=False,  # the actor is stateless: no InitTracker
    )


def finished_episode_returns(batch: TensorDictBase) -> list[float]:
    """Raw returns (``episode_reward``) of the episodes that ended in a collected batch."""
    done = batch["next", "done"].reshape(-1)
    returns = batch["next", "episode_reward"].reshape(done.shape[0], -1)[:, 0]
    return [float(r) for r in returns[done].cpu()]


def to_transitions(
    batch: TensorDictBase, *, reward_shift: float = 0.0, device: torch.device | str | None = None
) -> TensorDict:
    """Collected env steps in the offline data's format: the TED transition keys only, float32
    observations/actions/rewards, and the dataset's ``reward_shift`` added (AntMaze: r - 1)."""
    batch = batch.reshape(-1)
    out = TensorDict(
        {
            "observation": batch["observation"].float(),
            "action": batch["action"].float(),
            "next": {
                "observation": batch["next", "observation"].float(),
                "reward": batch["next", "reward"].float() + reward_shift,
                "terminated": batch["next", "terminated"].bool(),
                "truncated": batch["next", "truncated"].bool(),
                "done": batch["next", "done"].bool(),
            },
        },
        batch_size=batch.batch_size,
    )
    return out.to(device) if device is not None else out


def online_data(buffer: TensorDictReplayBuffer, num_offline: int) -> TensorDict:
    """The online transitions of a fine-tuning buffer (everything after the offline part),
    copied to CPU for a checkpoint."""
    index = torch.arange(num_offline, len(buffer))
    return buffer.storage.get(index).cpu().clone()


def crossed(step: int, frames: int, interval: int | None) -> bool:
    """Whether ``(step - frames, step]`` contains a multiple of ``interval`` (events every
    ``interval`` env steps when a collector batch holds ``frames`` of them)."""
    if not interval:
        return False
    return step // interval > (step - frames) // interval
