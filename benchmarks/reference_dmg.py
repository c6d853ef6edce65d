"""A plain eager PyTorch DMG update written straight from ``dmg-spec.md``.

This is the yardstick for the speed benchmark: it is how the authors' style of code
(one ``nn.Module`` per network, separate critics, ``copy.deepcopy`` targets, Python
loops over parameters for Polyak averaging) performs. It is deliberately independent
of :mod:`torchrl_dmg` so that it can also serve as a cross-check of the numbers.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F


def _mlp(inp: int, out: int, hidden: int = 256) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(inp, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, out),
    )


class ReferenceDMG:
    """Value step, critic step, delayed actor step and Polyak update, as in the spec."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        *,
        max_action: float = 1.0,
        mixture_coef: float = 0.25,
        penalty_coef: float = 0.1,
        expectile: float = 0.7,
        temperature: float = 3.0,
        max_weight: float = 3.0,
        policy_noise: float = 0.2,
        noise_clip: float = 0.5,
        gamma: float = 0.99,
        tau: float = 0.005,
        policy_freq: int = 2,
        lr: float = 3e-4,
        device: str | torch.device = "cpu",
    ) -> None:
        self.actor = _mlp(obs_dim, act_dim).to(device)
        self.q1 = _mlp(obs_dim + act_dim, 1).to(device)
        self.q2 = _mlp(obs_dim + act_dim, 1).to(device)
        self.value = _mlp(obs_dim, 1).to(device)
        self.actor_target = copy.deepcopy(self.actor)
        self.q1_target = copy.deepcopy(self.q1)
        self.q2_target = copy.deepcopy(self.q2)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=lr)
        self.critic_opt = torch.optim.Adam([*self.q1.parameters(), *self.q2.parameters()], lr=lr)
        self.value_opt = torch.optim.Adam(self.value.parameters(), lr=lr)
        self.max_action = max_action
        self.lmbda, self.nu, self.expectile = mixture_coef, penalty_coef, expectile
        self.alpha, self.max_weight = temperature, max_weight
        self.policy_noise, self.noise_clip = policy_noise, noise_clip
        self.gamma, self.tau, self.policy_freq = gamma, tau, policy_freq
        self.total_it = 0

    def pi(self, net: nn.Module, obs: torch.Tensor) -> torch.Tensor:
        return self.max_action * torch.tanh(net(obs))

    def update(self, obs, action, reward, next_obs, terminated) -> None:
        """One iteration; all tensors are ``[batch, dim]`` (reward/terminated ``[batch, 1]``)."""
        self.total_it += 1
        sa = torch.cat([obs, action], -1)
        with torch.no_grad():
            target_q = torch.min(self.q1_target(sa), self.q2_target(sa))
        # value step (expectile regression)
        u = target_q - self.value(obs)
        value_loss = (torch.abs(self.expectile - (u < 0).float()) * u.pow(2)).mean()
        self.value_opt.zero_grad()
        value_loss.backward()
        self.value_opt.step()
        # critic step
        with torch.no_grad():
            noise = (torch.randn_like(action) * self.policy_noise).clamp(
                -self.noise_clip, self.noise_clip
            )
            next_action = (self.pi(self.actor_target, next_obs) + noise * self.max_action).clamp(
                -self.max_action, self.max_action
            )
            nsa = torch.cat([next_obs, next_action], -1)
            next_q = torch.min(self.q1_target(nsa), self.q2_target(nsa))
            mixed = self.lmbda * next_q + (1 - self.lmbda) * self.value(next_obs)
            y = reward + self.gamma * (1 - terminated.float()) * mixed
        critic_loss = F.mse_loss(self.q1(sa), y) + F.mse_loss(self.q2(sa), y)
        self.critic_opt.zero_grad()
        critic_loss.backward()
        self.critic_opt.step()
        # delayed actor step
        if self.total_it % self.policy_freq == 0:
            with torch.no_grad():
                weight = torch.exp(self.alpha * (target_q - self.value(obs))).clamp(
                    max=self.max_weight
                )
            pi = self.pi(self.actor, obs)
            psa = torch.cat([obs, pi], -1)
            q = torch.min(self.q1(psa), self.q2(psa))
            bc = ((pi - action) ** 2).mean(-1, keepdim=True)
            actor_loss = -q.mean() / q.abs().mean().detach() + self.nu * (weight * bc).mean()
            self.actor_opt.zero_grad()
            actor_loss.backward()
            self.actor_opt.step()
            with torch.no_grad():
                for net, tgt in (
                    (self.actor, self.actor_target),
                    (self.q1, self.q1_target),
                    (self.q2, self.q2_target),
                ):
                    for p, tp in zip(net.parameters(), tgt.parameters(), strict=True):
                        tp.data.copy_(self.tau * p.data + (1 - self.tau) * tp.data)
