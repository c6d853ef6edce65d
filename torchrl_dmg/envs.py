"""Environments that see observations exactly as the offline data stores them: evaluation
(batched, seeded, scored) and the fine-tuning collection env."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torchrl.envs import (
    CatTensors,
    DoubleToFloat,
    EnvBase,
    GymWrapper,
    ObservationNorm,
    RewardSum,
    TransformedEnv,
)
from torchrl.envs.utils import ExplorationType, set_exploration_type

from torchrl_dmg._compat import drop_adroit_reward_notice
from torchrl_dmg.data.offline import OfflineDataset


class _FinishedCopy:
    """Stands in for a copy whose episode has ended (and that was not reset) during one
    :meth:`SkipFinishedVectorEnv.step`: it answers with its last observation, reward 0
    and the same ``terminated`` / ``truncated``, without stepping the simulation."""

    def __init__(self, obs, terminated: bool, truncated: bool) -> None:
        self.obs, self.terminated, self.truncated = obs, bool(terminated), bool(truncated)

    def step(self, action):
        return self.obs, 0.0, self.terminated, self.truncated, {}


class SkipFinishedVectorEnv(gym.vector.SyncVectorEnv):
    """Gymnasium's ``SyncVectorEnv`` (autoreset off) that does not step a copy whose episode
    has ended until it is reset: it stays at its last observation with reward 0 and its
    ``done`` flags. Gymnasium refuses such a step; TorchRL's rollout asks for one when it
    stops only once every copy is done (``break_when_all_done``), which is what an
    evaluation of one episode per copy wants: the copies that finish early cost nothing
    after, and the rollout ends with the last episode instead of at the time limit."""

    def __init__(self, env_fns) -> None:
        super().__init__(env_fns, autoreset_mode=gym.vector.AutoresetMode.DISABLED)

    def step(self, actions):
        finished = np.flatnonzero(self._autoreset_envs)
        if not len(finished):
            return super().step(actions)
        real = {i: self.envs[i] for i in finished}
        for i in finished:
            self.envs[i] = _FinishedCopy(
                self._env_obs[i], self._terminations[i], self._truncations[i]
            )
        self._autoreset_envs[finished] = False  # Gymnasium's check: stepping them is meant
        try:
            return super().step(actions)
        finally:
            for i, env in real.items():
                self.envs[i] = env


def _base_env(
    dataset: OfflineDataset, eval_env: bool, num_envs: int = 1, processes: bool = False
) -> EnvBase:
    def gym_env():  # also run in each worker process of an AsyncVectorEnv
        drop_adroit_reward_notice()  # the env's entry point may import gymnasium-robotics
        return dataset.minari_dataset.recover_environment(eval_env=eval_env)

    if num_envs == 1:
        return GymWrapper(gym_env())
    # One Gymnasium vector env, one TorchRL env of batch [num_envs]: half the wall of a
    # SerialEnv of TorchRL envs, whose per-copy TensorDict work outweighs a MuJoCo step.
    # TorchRL resets finished copies itself (partial resets), so Gymnasium's autoreset is off.
    # ``processes``: one process per copy (Gymnasium's AsyncVectorEnv), for machines with
    # cores to spare (a GPU machine, where evaluation otherwise waits on one CPU core).
    # In one process, a copy whose episode has ended is not stepped again before its reset
    # (SkipFinishedVectorEnv): an evaluation's rollout stops when every copy is done.
    if processes:
        vector = gym.vector.AsyncVectorEnv(
            [gym_env] * num_envs, autoreset_mode=gym.vector.AutoresetMode.DISABLED
        )
    else:
        vector = SkipFinishedVectorEnv([gym_env] * num_envs)
    return GymWrapper(vector)


def make_env(
    dataset: OfflineDataset,
    *,
    num_envs: int = 1,
    eval_env: bool = True,
    device: torch.device | str = "cpu",
    processes: bool = False,
) -> TransformedEnv:
    """TorchRL env for ``dataset`` with the same observation pipeline as its transitions.

    Dict observations are concatenated in ``dataset.obs_keys`` order into ``observation``,
    cast to float32 and normalised with the dataset's ``obs_loc``/``obs_scale`` (identity
    when normalisation is off). Rewards are left raw: scores use the env's own returns.
    ``num_envs > 1`` batches copies in one Gymnasium ``SyncVectorEnv`` (copy ``i`` seeded
    ``seed + i`` by ``set_seed(seed)``), or with ``processes`` one process per copy
    (``AsyncVectorEnv``: the same episodes, stepped in parallel). Such a batched env stays
    on the CPU whatever ``device`` says (TorchRL's wrapper of a vector env reads its
    partial-reset mask with ``.numpy()``, which fails on a CUDA tensor); :func:`evaluate`
    runs a policy on another device by moving its inputs there and its actions back.
    """

    base = _base_env(dataset, eval_env, num_envs, processes)
    transforms = []
    if dataset.obs_keys is not None:
        transforms.append(
            CatTensors(
                in_keys=list(dataset.obs_keys), out_key="observation", del_keys=True, sort=False
            )
        )
    transforms.append(DoubleToFloat())
    transforms.append(
        ObservationNorm(
            loc=dataset.obs_loc.clone(),
            scale=dataset.obs_scale.clone(),
            in_keys=["observation"],
            standard_normal=True,
        )
    )
    env = TransformedEnv(base, transforms[0])
    for t in transforms[1:]:
        env.append_transform(t)
    return env.to("cpu" if num_envs > 1 else device)


def make_online_env(
    dataset: OfflineDataset, *, device: torch.device | str = "cpu"
) -> TransformedEnv:
    """The dataset's data-collection env (``eval_env=False``) with the data's observation
    pipeline, plus ``episode_reward`` (TorchRL's :class:`~torchrl.envs.RewardSum`, raw env
    rewards) to report online returns. Time limits give ``truncated``, never ``terminated``.
    """
    env = make_env(dataset, eval_env=False, device=device)
    env.append_transform(RewardSum())
    return env


class PolicyOnDevice(TensorDictModuleBase):
    """``policy`` acting in an env on another device: its inputs are moved to ``device``,
    its outputs back to the env's."""

    def __init__(self, policy, device: torch.device) -> None:
        super().__init__()
        self.policy, self.device = policy, torch.device(device)
        self.in_keys = list(policy.in_keys)
        self.out_keys = list(policy.out_keys)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        outputs = self.policy(tensordict.select(*self.in_keys).to(self.device))
        return tensordict.update(outputs.select(*self.out_keys).to(tensordict.device))


def policy_device(policy) -> torch.device | None:
    """Where ``policy`` computes: its ``params`` TensorDict's device (the project's
    :class:`~torchrl_dmg.modules.ParamsPolicy`), else its first parameter's."""
    params = getattr(policy, "params", None)
    if isinstance(params, TensorDictBase) and params.device is not None:
        return params.device
    first = next(iter(policy.parameters()), None) if hasattr(policy, "parameters") else None
    return None if first is None else first.device


def episode_returns(rollout) -> torch.Tensor:
    """Return of the first episode of each env in a ``[num_envs, T]`` rollout."""
    reward = rollout["next", "reward"].reshape(*rollout.batch_size, -1)[..., 0]
    done = rollout["next", "done"].reshape(*rollout.batch_size, -1)[..., 0].to(torch.int64)
    after_first_done = (done.cumsum(-1) - done) > 0
    return torch.where(after_first_done, torch.zeros_like(reward), reward).sum(-1)


def episode_successes(rollout) -> torch.Tensor:
    """1.0 for each env whose first episode earned a positive reward (reached the goal of a
    sparse goal-reaching task) at or before its first ``done``, else 0.0: a success
    whether the env terminates at the goal or goes on paying at every step there."""
    reward = rollout["next", "reward"].reshape(*rollout.batch_size, -1)[..., 0]
    done = rollout["next", "done"].reshape(*rollout.batch_size, -1)[..., 0].to(torch.int64)
    after_first_done = (done.cumsum(-1) - done) > 0
    reached = (reward > 0) & ~after_first_done
    return reached.any(-1).to(reward.dtype)


def _gym_env(env: EnvBase):
    """The Gymnasium env under a (transformed) TorchRL wrapper, or ``None``."""
    base = env.base_env if isinstance(env, TransformedEnv) else env
    return getattr(base, "_env", None)


@torch.no_grad()
def _rollout(env: EnvBase, policy, *, max_steps: int, seed: int | None):
    if seed is not None:
        env.set_seed(seed)
    device = policy_device(policy)
    if device is not None and env.device is not None and device != env.device:
        policy = PolicyOnDevice(policy, device)
    # one episode per copy: stop once every copy is done where finished copies are not
    # stepped (one env, or SkipFinishedVectorEnv), else run the time limit out
    until_all_done = not env.batch_size or isinstance(_gym_env(env), SkipFinishedVectorEnv)
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        rollout = env.rollout(
            max_steps, policy, break_when_any_done=False, break_when_all_done=until_all_done
        )
    if not env.batch_size:
        rollout = rollout.unsqueeze(0)
    return rollout


def evaluate(
    env: EnvBase, policy, *, max_steps: int, seed: int | None = None, success: bool = False
) -> np.ndarray:
    """Deterministic returns of one episode per batched env copy (``success``: 1/0 per
    episode instead, :func:`episode_successes`).

    Runs up to ``max_steps`` steps (the env's time limit), so every copy finishes its first
    episode; anything after a copy's first ``done`` is ignored. In one process a copy is
    not stepped after its episode ends and the rollout stops when every copy is done
    (:class:`SkipFinishedVectorEnv`); copies in processes run to ``max_steps``.
    """
    rollout = _rollout(env, policy, max_steps=max_steps, seed=seed)
    per_episode = episode_successes(rollout) if success else episode_returns(rollout)
    return per_episode.cpu().numpy().astype(np.float64)


def _evaluate_both(env, policy, *, max_steps, seed) -> tuple[np.ndarray, np.ndarray]:
    rollout = _rollout(env, policy, max_steps=max_steps, seed=seed)
    returns = episode_returns(rollout).cpu().numpy().astype(np.float64)
    return returns, episode_successes(rollout).cpu().numpy().astype(np.float64)


def summarize_returns(
    returns: np.ndarray, dataset: OfflineDataset, successes: np.ndarray | None = None
) -> dict[str, float]:
    """Mean/std of the returns and of the normalised scores: the success rate in percent
    on datasets scored by success (AntMaze, :attr:`OfflineDataset.success_scored`; needs
    ``successes``), else the reference-score normalisation (the returns themselves when
    the dataset has no reference scores)."""
    if dataset.success_scored:
        if successes is None:
            raise ValueError(f"{dataset.dataset_id} is scored by success: pass successes")
        scores = 100.0 * np.asarray(successes, dtype=np.float64)
    elif dataset.has_reference_scores:
        scores = dataset.normalized_score(returns)
    else:
        scores = returns
    return {
        "return_mean": float(np.mean(returns)),
        "return_std": float(np.std(returns)),
        "normalized_score": float(np.mean(scores)),
        "normalized_score_std": float(np.std(scores)),
    }


def evaluate_scores(
    env: EnvBase,
    policy,
    dataset: OfflineDataset,
    *,
    max_steps: int,
    seed: int | None = None,
) -> dict[str, float]:
    """:func:`evaluate`, summarised by :func:`summarize_returns`."""
    returns, successes = _evaluate_both(env, policy, max_steps=max_steps, seed=seed)
    return summarize_returns(returns, dataset, successes)


def evaluate_agents(
    env: EnvBase,
    policy,
    dataset: OfflineDataset,
    *,
    num_agents: int,
    max_steps: int,
    seed: int | None = None,
) -> list[dict[str, float]]:
    """One :func:`evaluate` rollout for ``num_agents`` stacked agents at once: the env's
    ``num_agents * E`` copies are split in consecutive blocks of ``E``, agent ``i`` acting
    in block ``i`` (as :class:`~torchrl_dmg.modules.SeedStackedPolicy` does)."""
    returns, successes = _evaluate_both(env, policy, max_steps=max_steps, seed=seed)
    if returns.shape[0] % num_agents:
        raise ValueError(
            f"{returns.shape[0]} env copies cannot be split evenly among {num_agents} agents."
        )
    return [
        summarize_returns(r, dataset, s)
        for r, s in zip(
            returns.reshape(num_agents, -1), successes.reshape(num_agents, -1), strict=True
        )
    ]


def summarize_seeds(seeds: list[int], per_seed: list[dict]) -> dict:
    """One seed: its scores as they are. Several: the mean and std across seeds, plus
    every seed's own figures under ``<metric>/s<seed>``."""
    result = {
        f"{k}/s{seed}": v for seed, r in zip(seeds, per_seed, strict=True) for k, v in r.items()
    }
    if len(seeds) == 1:
        return {**per_seed[0], **result}
    scores = np.array([r["normalized_score"] for r in per_seed])
    returns = np.array([r["return_mean"] for r in per_seed])
    return {
        "normalized_score": float(scores.mean()),
        "normalized_score_std": float(scores.std()),
        "return_mean": float(returns.mean()),
        "return_std": float(returns.std()),
        **result,
    }


def max_episode_steps(dataset: OfflineDataset, eval_env: bool = True) -> int:
    """The time limit of the dataset's (evaluation) environment."""
    drop_adroit_reward_notice()
    spec = dataset.minari_dataset.recover_environment(eval_env=eval_env).spec
    if spec is None or spec.max_episode_steps is None:
        raise ValueError(
            f"The environment of '{dataset.dataset_id}' has no time limit; set eval.max_steps."
        )
    return int(spec.max_episode_steps)
