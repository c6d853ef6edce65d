"""Samplers of offline (and fine-tuning) transitions: uniform draws from a dataset held
on the training device, and one TorchRL replay buffer for offline + online data."""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.data.replay_buffers.samplers import RandomSampler


class DeviceSampler:
    """Uniform batches from a dataset held whole on the training device.

    Batch indices are drawn on that device (``torch.randint`` from the global, seeded
    generator), so sampling never waits on the host and can live inside a compiled
    function or a captured CUDA graph. With ``num_seeds=N`` every draw is ``[N, B]``:
    one independent batch per stacked agent (:class:`SeedStackedDMGUpdater`).

    Why not TorchRL's ``TensorDictReplayBuffer`` (``LazyTensorStorage`` on the same device,
    ``RandomSampler``), which draws the same uniform batches: measured side by side in one
    process (``benchmarks/sampler_speed.py``, CPU, one thread, 400k transitions,
    ``benchmarks/results/sampler_speed_cpu_2026-11-30.json``), the buffer took 1.5× as long
    per ``[256]`` batch, 1.7× per seed-stacked ``[5, 256]`` draw and 1.5× per ``[8, 256]``
    ``update_many`` draw. Either is a small share of an iteration on a CPU (a GPU
    comparison is still to be run: ``--devices cuda``), but the buffer is not as fast,
    so this sampler stays; fine-tuning, whose data grow, uses TorchRL's buffer
    (:func:`make_finetune_buffer`).
    """

    def __init__(
        self,
        data: TensorDictBase,
        *,
        batch_size: int,
        num_seeds: int | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        if data.batch_dims != 1 or data.shape[0] == 0:
            raise ValueError(
                f"DeviceSampler needs a non-empty flat dataset (batch size [T]), got {data.shape}."
            )
        self.data = data.exclude("episode").to(device) if device is not None else data
        self.device = self.data.device
        self.batch_size = batch_size
        self.num_seeds = num_seeds
        self.shape = (batch_size,) if num_seeds is None else (num_seeds, batch_size)
        self._leaves = _tensor_leaves(self.data)

    def __len__(self) -> int:
        return self.data.shape[0]

    def sample(self, num: int | None = None) -> TensorDictBase:
        """One batch, or with ``num`` that many stacked (``[num, (N,) B]``) for
        :meth:`DMGUpdater.update_many`.

        ``self.data[index]`` in value, built leaf by leaf (``index_select`` on each tensor,
        then one nested ``TensorDict``): TensorDict's own indexing took ~65 µs a batch of
        256 on one CPU thread, this ~35 µs, ~0.6% of a DMG iteration."""
        shape = self.shape if num is None else (num, *self.shape)
        index = torch.randint(len(self), shape, device=self.device)
        if self._leaves is None:
            return self.data[index]
        flat = index.reshape(-1)
        tree: dict = {}
        for path, leaf in self._leaves:
            node = tree
            for name in path[:-1]:
                node = node.setdefault(name, {})
            node[path[-1]] = leaf.index_select(0, flat).reshape(*shape, *leaf.shape[1:])
        return TensorDict(tree, batch_size=shape, device=self.data.device)


def _tensor_leaves(data: TensorDictBase) -> list[tuple[tuple[str, ...], torch.Tensor]] | None:
    """``data``'s leaves as (key path, tensor), or ``None`` when one is not a plain tensor
    or a nested entry is not a plain ``TensorDict`` (then batches are drawn by indexing
    ``data``)."""
    if type(data) is not TensorDict:
        return None
    leaves = []
    for key in data.keys(include_nested=True, leaves_only=True):
        path = key if isinstance(key, tuple) else (key,)
        for depth in range(1, len(path)):
            if type(data.get(path[:depth])) is not TensorDict:
                return None
        value = data.get(path)
        if type(value) is not torch.Tensor:
            return None
        leaves.append((path, value))
    return leaves


class OfflineFractionSampler(RandomSampler):
    """Draws ``round(offline_fraction · batch)`` indices from the offline part of the storage
    (its first ``num_offline`` entries) and the rest from the online part, uniformly in each.
    Uniform over what there is while the online part is still empty."""

    def __init__(self, num_offline: int, offline_fraction: float) -> None:
        super().__init__()
        if not 0.0 <= offline_fraction <= 1.0:
            raise ValueError(f"offline_fraction must lie in [0, 1], got {offline_fraction}.")
        self.num_offline = int(num_offline)
        self.offline_fraction = float(offline_fraction)

    def sample(self, storage, batch_size: int) -> tuple[torch.Tensor, dict]:
        size = len(storage)
        if size <= self.num_offline or self.num_offline == 0:
            return super().sample(storage, batch_size)
        device = getattr(storage, "device", None)
        n_offline = round(self.offline_fraction * batch_size)
        offline = torch.randint(0, self.num_offline, (n_offline,), device=device)
        online = torch.randint(self.num_offline, size, (batch_size - n_offline,), device=device)
        return torch.cat([offline, online]), {}


def make_finetune_buffer(
    offline_data: TensorDict,
    *,
    online_capacity: int,
    batch_size: int,
    device: torch.device | str = "cpu",
    offline_fraction: float | None = None,
) -> TensorDictReplayBuffer:
    """One TorchRL buffer: every offline transition, then room for ``online_capacity`` online
    ones (nothing is ever overwritten). Sampled uniformly over the union (the paper), or
    with a fixed ``offline_fraction`` of each batch from the offline part."""
    data = offline_data.exclude("episode")
    num_offline = data.shape[0]
    sampler = (
        RandomSampler()
        if offline_fraction is None
        else OfflineFractionSampler(num_offline, offline_fraction)
    )
    buffer = TensorDictReplayBuffer(
        storage=LazyTensorStorage(num_offline + max(int(online_capacity), 0), device=device),
        sampler=sampler,
        batch_size=batch_size,
    )
    buffer.extend(data)
    return buffer
