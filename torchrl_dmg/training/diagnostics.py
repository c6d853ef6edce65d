"""The overestimation diagnostic: the critics' ``Q(s, a)`` on a fixed sample of dataset
transitions beside the discounted Monte-Carlo return that followed them."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDictBase

from torchrl_dmg.training.updater import ActorCriticUpdater

__all__ = ["OverestimationDiagnostic"]


class OverestimationDiagnostic:
    """``diagnostic()`` -> the row entries ``q_data_mean`` (the mean over ``sample`` of
    ``min_i Q_θi(s, a)``, the critics being trained, not the targets) and
    ``mc_return_mean`` (the mean of its ``mc_return``); with stacked seeds also
    ``q_data_mean/s<seed>`` per agent (``q_data_mean`` is then their mean). A loss without
    critics (BC) gives ``mc_return_mean`` only.

    Args:
        updater: the updater whose critics are measured (any loss, stacked or not).
        sample: the fixed transitions (:func:`torchrl_dmg.data.returns.diagnostic_sample`,
            computed once), on the updater's device.
        seeds: the seeds of the updater's agents (one per stacked agent).
    """

    def __init__(
        self, updater: ActorCriticUpdater, sample: TensorDictBase, seeds: Sequence[int]
    ) -> None:
        self.updater, self.seeds = updater, list(seeds)
        self.mc_return_mean = float(sample["mc_return"].float().mean())
        self.has_critic = "qvalue" in updater.steps.networks
        if self.has_critic:
            network = updater.loss.qvalue_network
            self.inputs = sample.select(*network.in_keys)

    @torch.no_grad()
    def q_per_agent(self) -> torch.Tensor:
        """``mean_sample min_i Q_θi(s, a)`` of each agent, shape ``[len(seeds)]``."""
        network = self.updater.loss.qvalue_network
        params = self.updater.network_params("qvalue")  # [critics] or [agents, critics]
        flat = params.reshape(-1)
        values = []
        for i in range(flat.batch_size[0]):
            with flat[i].to_module(network):
                q = network(self.inputs.clone())["state_action_value"]
            values.append(q.squeeze(-1))
        q = torch.stack(values).reshape(len(self.seeds), -1, self.inputs.shape[0])
        return q.min(1).values.mean(-1)

    def __call__(self) -> dict[str, float]:
        row = {"mc_return_mean": self.mc_return_mean}
        if not self.has_critic:
            return row
        q = self.q_per_agent().float().cpu()
        row["q_data_mean"] = float(q.mean())
        if len(self.seeds) > 1:
            row.update({f"q_data_mean/s{s}": float(v) for s, v in zip(self.seeds, q, strict=True)})
        return row
