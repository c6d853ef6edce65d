"""Behaviour policies for D4RL-style Gym-MuJoCo datasets, trained online with TorchRL's SAC.

D4RL collected its locomotion datasets with policies from an online SAC run (rlkit:
256-256 ReLU networks, double Q, automatic entropy tuning, one gradient step per env
step): *medium* from a checkpoint at about a third of expert return, *expert* from the
final policy, *medium-replay* from everything that run's replay buffer saw until the
medium checkpoint. :func:`train_sac` reproduces such a run with stock TorchRL pieces
(:class:`~torchrl.envs.GymEnv`, a :class:`~torchrl.collectors.Collector`,
:class:`~torchrl.data.TensorDictReplayBuffer` on a
:class:`~torchrl.data.LazyTensorStorage`, :class:`~torchrl.objectives.SACLoss`,
:class:`~torchrl.objectives.SoftUpdate`) and keeps what building those datasets needs:

* ``out_dir/checkpoints/step_<steps:08d>.pt``: the actor and its deterministic return,
  every ``checkpoint_interval`` env steps (:func:`load_behaviour_actor`, :func:`act`);
* ``out_dir/transitions/``: every transition collected, in collection order, with the
  env step it was collected at (:func:`load_transitions`);
* ``out_dir/progress.csv``: one row per checkpoint;
* ``out_dir/state.pt``: the full trainer state, so that ``train_sac(..., resume=True)``
  continues an interrupted run (the replay buffer is rebuilt from the transitions).

Speed (one CPU thread): the update is SACLoss's forward, one backward of the summed
losses and one step of the grouped Adam optimisers, as in TorchRL's SAC example. By
default the loss forward runs under ``torch.compile`` with the ``aot_eager`` backend,
which removes TensorDict's per-op Python overhead but runs the ATen kernels eagerly;
on CPU this beats both eager and the inductor backend (see :func:`train_sac`).
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import InteractionType, TensorDictModule
from tensordict.nn.distributions import NormalParamExtractor
from torch import nn
from torchrl.collectors import Collector
from torchrl.data import Bounded, LazyTensorStorage, TensorDictReplayBuffer
from torchrl.envs import DoubleToFloat, GymEnv, ParallelEnv, SerialEnv, TransformedEnv
from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator
from torchrl.objectives import SACLoss, SoftUpdate, group_optimizers

from torchrl_dmg.checkpointing import restart_collection, seed_before_collector
from torchrl_dmg.recording import atomic_write
from torchrl_dmg.training import _optimizer_step, rng_state, set_rng_state

# Gymnasium v5 ids of the D4RL locomotion tasks, by short name.
ENV_IDS: dict[str, str] = {
    "hopper": "Hopper-v5",
    "halfcheetah": "HalfCheetah-v5",
    "walker2d": "Walker2d-v5",
}

# Every task train_sac can learn: the locomotion tasks and the goal-reaching ant that
# steers AntMaze data collection (torchrl_dmg.antgoal, registered on first use).
TASK_IDS: dict[str, str] = {
    **ENV_IDS,
    "antgoal": "torchrl_dmg/AntGoal-v2",  # D4RL's ant (torchrl_dmg.antgoal)
    "antgoal-uniform": "torchrl_dmg/AntGoalUniform-v2",  # no targets-ahead share
}

# D4RL reference returns (random, expert) for the normalised score
# 100 * (return - random) / (expert - random).
D4RL_REF_SCORES: dict[str, tuple[float, float]] = {
    "hopper": (-20.272305, 3234.3),
    "halfcheetah": (-280.178953, 12135.0),
    "walker2d": (1.629008, 4592.3),
}

UPDATE_MODES = ("eager", "compile", "compile-inductor", "cudagraphs")


# ---------------------------------------------------------------- env names and scores
def resolve_env_name(env_name: str) -> str:
    """The Gymnasium id for a short name (``"hopper"``, ``"antgoal"``) or an id
    (``"Hopper-v5"``); the goal-reaching ant's id is registered on the way."""
    env_id = TASK_IDS.get(env_name, env_name)
    if env_id.startswith("torchrl_dmg/AntGoal") and env_id not in TASK_IDS.values():
        raise ValueError(
            f"{env_id} was the goal-reaching task of Gymnasium's gear-150 ant, retired: the "
            f"AntMaze ant is now D4RL's (torchrl_dmg.d4rl_ant); use env=antgoal "
            f"({TASK_IDS['antgoal']}) or env=antgoal-uniform ({TASK_IDS['antgoal-uniform']})."
        )
    if env_id not in TASK_IDS.values():
        allowed = ", ".join(f"{k} ({v})" for k, v in TASK_IDS.items())
        raise ValueError(f"Unknown environment {env_name!r}; allowed: {allowed}.")
    if env_id.startswith("torchrl_dmg/AntGoal"):
        import torchrl_dmg.antgoal  # noqa: F401  (registers the id with Gymnasium)
    return env_id


def env_short_name(env_name: str) -> str:
    env_id = resolve_env_name(env_name)
    return next(k for k, v in TASK_IDS.items() if v == env_id)


def d4rl_normalized_score(env_name: str, returns: float | np.ndarray) -> float | np.ndarray:
    """D4RL's normalised score: 0 = random policy, 100 = D4RL's expert."""
    low, high = D4RL_REF_SCORES[env_short_name(env_name)]
    return 100.0 * (np.asarray(returns, dtype=np.float64) - low) / (high - low)


# ---------------------------------------------------------------- networks
def make_sac_actor(
    obs_dim: int,
    act_dim: int,
    action_spec: Bounded | None = None,
    num_cells: Sequence[int] = (256, 256),
) -> ProbabilisticActor:
    """SAC actor: ReLU MLP -> (loc, scale) -> TanhNormal within the action bounds.

    ``scale = softplus(x + b) + 1e-4`` (``b`` such that the initial scale is 1, TorchRL's
    ``biased_softplus_1.0``). Reads ``observation``, writes ``action`` (sampled under
    ``ExplorationType.RANDOM``, the default, or ``tanh(loc)`` under ``DETERMINISTIC``).
    ``action_spec`` defaults to ``[-1, 1]^act_dim``, the bounds of the MuJoCo tasks.
    """
    if action_spec is None:
        action_spec = Bounded(-1.0, 1.0, shape=(act_dim,))
    net = nn.Sequential(
        MLP(
            in_features=obs_dim,
            out_features=2 * act_dim,
            num_cells=list(num_cells),
            activation_class=nn.ReLU,
        ),
        NormalParamExtractor(scale_mapping="biased_softplus_1.0", scale_lb=1e-4),
    )
    return ProbabilisticActor(
        TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"]),
        in_keys=["loc", "scale"],
        out_keys=["action"],
        spec=action_spec,
        distribution_class=TanhNormal,
        distribution_kwargs={
            "low": action_spec.space.low,
            "high": action_spec.space.high,
            "tanh_loc": False,
        },
        default_interaction_type=InteractionType.RANDOM,
        return_log_prob=False,
    )


def make_sac_qvalue(obs_dim: int, act_dim: int, num_cells: Sequence[int] = (256, 256)):
    """Critic Q(s, a): ReLU MLP on ``[observation, action]``; writes ``state_action_value``."""
    mlp = MLP(
        in_features=obs_dim + act_dim,
        out_features=1,
        num_cells=list(num_cells),
        activation_class=nn.ReLU,
    )
    return ValueOperator(mlp, in_keys=["observation", "action"])


# ---------------------------------------------------------------- running a behaviour actor
def load_behaviour_actor(path: str | os.PathLike) -> tuple[ProbabilisticActor, dict]:
    """Rebuild the actor saved in a ``checkpoints/step_*.pt`` file.

    Returns ``(actor, meta)``; ``meta`` is the checkpoint without the weights (``env``,
    ``step``, ``obs_dim``, ``act_dim``, ``num_cells``, ``eval_return_mean`` ...).
    """
    ckpt = torch.load(Path(path), map_location="cpu", weights_only=False)
    act_dim = int(ckpt["act_dim"])
    low = torch.as_tensor(ckpt.get("action_low", [-1.0] * act_dim), dtype=torch.float32)
    high = torch.as_tensor(ckpt.get("action_high", [1.0] * act_dim), dtype=torch.float32)
    spec = Bounded(low, high, shape=(act_dim,))
    actor = make_sac_actor(int(ckpt["obs_dim"]), act_dim, spec, tuple(ckpt["num_cells"]))
    actor.load_state_dict(ckpt["actor"])
    actor.eval()
    meta = {k: v for k, v in ckpt.items() if k != "actor"}
    return actor, meta


@torch.no_grad()
def act(
    actor: ProbabilisticActor,
    obs: np.ndarray,
    deterministic: bool,
    generator: torch.Generator | None = None,
) -> np.ndarray:
    """Actions of ``actor`` for a batch of observations ``[B, obs_dim]`` (or one ``[obs_dim]``).

    ``deterministic``: ``tanh(loc)`` scaled to the bounds (the evaluation action).
    Otherwise a sample of the TanhNormal, as D4RL collected its data; the Gaussian noise
    is drawn from ``generator`` (the global torch RNG when ``None``), so a seeded
    generator gives reproducible datasets. Returns float32 actions of the same batch shape.
    """
    obs_t = torch.as_tensor(np.asarray(obs), dtype=torch.float32)
    single = obs_t.ndim == 1
    if single:
        obs_t = obs_t.unsqueeze(0)
    dist = actor.get_dist(TensorDict({"observation": obs_t}, batch_size=obs_t.shape[:1]))
    if deterministic:
        action = dist.deterministic_sample
    else:
        noise = torch.randn(dist.loc.shape, generator=generator, dtype=dist.loc.dtype)
        action = dist.loc + dist.scale * noise
        for transform in dist.transforms:
            action = transform(action)
    action = action.numpy().astype(np.float32, copy=False)
    return action[0] if single else action


def evaluate_actor(
    actor: ProbabilisticActor,
    env_name: str,
    *,
    episodes: int = 10,
    max_steps: int | None = None,
    seed: int = 0,
    deterministic: bool = True,
) -> np.ndarray:
    """Undiscounted returns of ``episodes`` episodes (episode ``i`` seeded ``seed + i``),
    the episodes stepped side by side so that each actor call is one batch.
    ``max_steps``: a time limit below Gymnasium's (1000 steps for the v5 tasks)."""
    import gymnasium as gym

    env_id = resolve_env_name(env_name)
    kwargs = {} if max_steps is None else {"max_episode_steps": int(max_steps)}
    envs = [gym.make(env_id, **kwargs) for _ in range(episodes)]
    generator = torch.Generator().manual_seed(seed)
    try:
        obs = [env.reset(seed=seed + i)[0] for i, env in enumerate(envs)]
        returns = np.zeros(episodes, dtype=np.float64)
        active = list(range(episodes))
        while active:
            actions = act(actor, np.stack([obs[i] for i in active]), deterministic, generator)
            still = []
            for i, a in zip(active, actions, strict=True):
                obs[i], reward, terminated, truncated, _ = envs[i].step(a)
                returns[i] += float(reward)
                if not (terminated or truncated):
                    still.append(i)
            active = still
    finally:
        for env in envs:
            env.close()
    return returns


# ---------------------------------------------------------------- transition store
class TransitionStore:
    """Every transition collected, in order, as one append-only raw binary file per field
    under ``root`` (``<field>.bin``) plus ``meta.json`` (dtypes, row shapes, row count).

    The row count in ``meta.json`` is written (atomically) after the rows themselves, so
    a crash mid-append leaves at most some unreferenced bytes, cut on the next append or
    on :meth:`truncate`. Read with :func:`load_transitions`.
    """

    def __init__(self, root: str | os.PathLike, obs_dim: int, act_dim: int) -> None:
        self.root = Path(root)
        self.fields = {
            "observation": ("float32", (obs_dim,)),
            "action": ("float32", (act_dim,)),
            "reward": ("float32", ()),
            "next_observation": ("float32", (obs_dim,)),
            "terminated": ("bool", ()),
            "truncated": ("bool", ()),
            "step": ("int64", ()),
        }
        self.root.mkdir(parents=True, exist_ok=True)
        meta_path = self.root / "meta.json"
        if meta_path.is_file():
            meta = json.loads(meta_path.read_text())
            saved = {k: (v["dtype"], tuple(v["shape"])) for k, v in meta["fields"].items()}
            if saved != self.fields:
                raise ValueError(f"{self.root} holds transitions of another shape: {saved}.")
            self.count = int(meta["count"])
        else:
            self.count = 0
            for name in self.fields:
                (self.root / f"{name}.bin").touch()
            self._write_meta()

    def _row_bytes(self, name: str) -> int:
        dtype, shape = self.fields[name]
        return np.dtype(dtype).itemsize * math.prod(shape)

    def _write_meta(self) -> None:
        meta = {
            "fields": {k: {"dtype": d, "shape": list(s)} for k, (d, s) in self.fields.items()},
            "count": self.count,
        }
        _atomic_write_text(self.root / "meta.json", json.dumps(meta, indent=1))

    def __len__(self) -> int:
        return self.count

    def append(self, rows: dict[str, np.ndarray]) -> None:
        n = len(rows["step"])
        for name, (dtype, shape) in self.fields.items():
            arr = np.ascontiguousarray(rows[name], dtype=dtype).reshape(n, *shape)
            with open(self.root / f"{name}.bin", "r+b") as f:
                f.truncate(self.count * self._row_bytes(name))  # drop a torn earlier append
                f.seek(0, os.SEEK_END)
                f.write(arr.tobytes())
                f.flush()
                os.fsync(f.fileno())
        self.count += n
        self._write_meta()

    def truncate(self, count: int) -> None:
        """Keep the first ``count`` rows (a resume drops what came after its state)."""
        if count > self.count:
            raise ValueError(f"Cannot keep {count} transitions: only {self.count} stored.")
        for name in self.fields:
            os.truncate(self.root / f"{name}.bin", count * self._row_bytes(name))
        self.count = count
        self._write_meta()

    def mark_last_truncated(self) -> None:
        """Flag the last row as an episode cut (its episode does not go on after a resume)."""
        if self.count == 0:
            return
        with open(self.root / "terminated.bin", "rb") as f:
            f.seek(self.count - 1)
            terminated = f.read(1) == b"\x01"
        if not terminated:
            with open(self.root / "truncated.bin", "r+b") as f:
                f.seek(self.count - 1)
                f.write(b"\x01")

    def read(self, start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
        stop = self.count if stop is None else min(stop, self.count)
        out = {}
        for name, (dtype, shape) in self.fields.items():
            size = math.prod(shape)
            with open(self.root / f"{name}.bin", "rb") as f:
                f.seek(start * self._row_bytes(name))
                data = np.fromfile(f, dtype=dtype, count=max(stop - start, 0) * size)
            out[name] = data.reshape(-1, *shape)
        return out


def load_transitions(out_dir: str | os.PathLike, max_step: int | None = None) -> dict:
    """Transitions of a :func:`train_sac` run, in collection order: ``observation``,
    ``action``, ``reward``, ``next_observation``, ``terminated``, ``truncated`` and
    ``step`` (the env step count after the transition, 1-based). ``max_step``: only the
    transitions collected until then (``step <= max_step``), e.g. a checkpoint's step for
    D4RL's medium-replay. An episode still running at ``max_step`` ends there unflagged.
    """
    root = Path(out_dir) / "transitions"
    meta = json.loads((root / "meta.json").read_text())
    fields = meta["fields"]
    obs_dim = fields["observation"]["shape"][0]
    act_dim = fields["action"]["shape"][0]
    store = TransitionStore(root, obs_dim, act_dim)
    return store.read(0, max_step)  # step == row index + 1


# ---------------------------------------------------------------- small helpers
def _atomic_torch_save(path: Path, obj: Any) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def _atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


_PROGRESS_COLUMNS = (
    "step",
    "eval_return_mean",
    "eval_return_std",
    "wall_s",
    "updates_per_s",
    "env_steps_per_s",
    "num_updates",
    "alpha",
    "entropy",
    "loss_qvalue",
    "loss_actor",
)


def _read_progress(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write_progress(path: Path, rows: list[dict]) -> None:
    lines = [",".join(_PROGRESS_COLUMNS)]
    lines += [",".join(str(row.get(c, "")) for c in _PROGRESS_COLUMNS) for row in rows]
    _atomic_write_text(path, "\n".join(lines) + "\n")


def _checkpoint_path(out_dir: Path, step: int) -> Path:
    return out_dir / "checkpoints" / f"step_{step:08d}.pt"


def evaluated_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, float, Path]]:
    """``(step, eval_return_mean, checkpoint path)`` of every evaluated checkpoint of a
    :func:`train_sac` run, in step order (its ``progress.csv``); an error if there is none."""
    run_dir = Path(run_dir)
    rows = _read_progress(run_dir / "progress.csv")
    if not rows:
        raise ValueError(f"{run_dir} has no evaluated checkpoints yet (no progress.csv rows).")
    return [
        (int(r["step"]), float(r["eval_return_mean"]), _checkpoint_path(run_dir, int(r["step"])))
        for r in rows
    ]


# ---------------------------------------------------------------- the SAC update
class _ForeachSoftUpdate(SoftUpdate):
    """:class:`~torchrl.objectives.SoftUpdate` whose :meth:`step` is a single
    ``torch._foreach_lerp_`` over all (target, source) pairs, the same update as the
    per-parameter ``lerp_`` loop of the parent without its per-key TensorDict lookups."""

    _pairs: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None

    def step(self) -> None:
        if self._pairs is None:
            targets, sources = [], []
            for key in self._sources.keys(include_nested=True, leaves_only=True):
                target_key = (f"target_{key[0]}", *key[1:])
                targets.append(self._targets.get(target_key).data)
                sources.append(self._sources.get(key).data)
            self._pairs = (targets, sources)
        torch._foreach_lerp_(*self._pairs, 1.0 - self.eps)


class _SACUpdater:
    """SACLoss + grouped Adam + SoftUpdate; :meth:`update` is one UTD-1 gradient step.

    ``mode="cudagraphs"`` (CUDA only): the whole step (loss, backward, Adam, target
    update) is compiled with inductor and replayed as one CUDA graph
    (:class:`tensordict.nn.CudaGraphModule`), as in TorchRL's SAC example; the optimiser is
    capturable. The other modes compile (or not) the loss forward only.
    """

    def __init__(
        self,
        actor: ProbabilisticActor,
        qvalue: ValueOperator,
        action_spec: Bounded,
        *,
        lr: float,
        gamma: float,
        tau: float,
        mode: str,
        vmap_critics: bool | None,
        alpha_init: float = 1.0,
        fixed_alpha: bool = False,
        cudagraph_warmup: int = 5,
    ) -> None:
        if mode not in UPDATE_MODES:
            raise ValueError(f"update_mode must be one of {UPDATE_MODES}, got {mode!r}.")
        device = next(iter(actor.parameters())).device
        graphs = mode == "cudagraphs"
        if graphs and device.type != "cuda":
            raise ValueError(
                f"update_mode='cudagraphs' needs device='cuda' (the networks are on {device}); "
                "use update_mode='compile' on CPU."
            )
        if vmap_critics is None:
            # Measured on one CPU thread: vmapped critics are faster in eager (fewer Python
            # calls), two plain matmuls faster once compiled (the vmapped linear layers
            # become slower batched matmuls). On a GPU fewer kernels win.
            vmap_critics = mode in ("eager", "cudagraphs")
        self.loss = SACLoss(
            actor,
            qvalue,
            num_qvalue_nets=2,
            loss_function="l2",
            alpha_init=alpha_init,
            fixed_alpha=fixed_alpha,
            action_spec=action_spec,
            target_entropy="auto",  # -act_dim
            delay_actor=False,
            delay_qvalue=True,
            deactivate_vmap=not vmap_critics,
        )
        self.loss.make_value_estimator(gamma=gamma)
        _ = self.loss.target_entropy  # registers its buffer now, outside any compiled code
        self.target_updater = _ForeachSoftUpdate(self.loss, tau=tau)
        kwargs = {"fused": True, **({"capturable": True} if graphs else {})}
        self.optimizer = group_optimizers(
            torch.optim.Adam(_leaves(self.loss.actor_network_params), lr=lr, **kwargs),
            torch.optim.Adam(_leaves(self.loss.qvalue_network_params), lr=lr, **kwargs),
            *([] if fixed_alpha else [torch.optim.Adam([self.loss.log_alpha], lr=lr, **kwargs)]),
        )
        self.mode = mode
        self.num_updates = 0
        self._loss_fn = self.loss
        self._step_fn = self._step
        self._critic_step_fn = self._critic_step
        if mode != "eager":
            from tensordict.nn.functional_modules import _exclude_td_from_pytree

            # see torchrl_dmg.training.DMGUpdater: no recompile per call under vmap
            _exclude_td_from_pytree().set()
        if mode in ("compile", "compile-inductor"):
            backend = "aot_eager" if mode == "compile" else "inductor"
            self._loss_fn = torch.compile(self.loss, backend=backend)
        elif graphs:
            from tensordict.nn import CudaGraphModule

            # two graphs, no Python branch inside either: the full step, and the step
            # that leaves the actor as it is (a warm-started actor's critic warm-up)
            self._step_fn, self._critic_step_fn = (
                CudaGraphModule(
                    torch.compile(fn, backend="inductor"),
                    in_keys=[],
                    out_keys=[],
                    warmup=cudagraph_warmup,
                )
                for fn in (self._step, self._critic_step)
            )

    def _step(self, batch: TensorDictBase) -> TensorDictBase:
        losses = self._loss_fn(batch)
        (losses["loss_actor"] + losses["loss_qvalue"] + losses["loss_alpha"]).backward()
        _optimizer_step(self.optimizer)
        _target_step(self.target_updater)
        return losses.detach()

    def _critic_step(self, batch: TensorDictBase) -> TensorDictBase:
        # the critic's TD target is computed without gradient, so only the critics get
        # gradients and Adam skips the actor and alpha. Alpha stays too: with the actor
        # held, its loss would push it one way for the whole warm-up (x20 in 10k steps).
        losses = self._loss_fn(batch)
        losses["loss_qvalue"].backward()
        _optimizer_step(self.optimizer)
        _target_step(self.target_updater)
        return losses.detach()

    def update(self, batch: TensorDictBase, train_actor: bool = True) -> TensorDictBase:
        """One gradient step; ``train_actor=False`` updates the critics and their targets
        and leaves the actor and alpha as they are."""
        losses = (self._step_fn if train_actor else self._critic_step_fn)(batch)
        self.num_updates += 1
        return losses

    def state_dict(self) -> dict[str, Any]:
        return {
            "loss": self.loss.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "num_updates": self.num_updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loss.load_state_dict(state["loss"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.num_updates = int(state["num_updates"])


@torch.compiler.disable
def _target_step(target_updater: SoftUpdate) -> None:
    """The Polyak update, outside torch.compile (one foreach kernel; captured by a CUDA
    graph like any eager CUDA work)."""
    target_updater.step()


def _leaves(params: TensorDictBase) -> list[torch.Tensor]:
    return list(params.values(include_nested=True, leaves_only=True))


def _buffer_td(rows: dict[str, np.ndarray]) -> TensorDict:
    """Replay-buffer entries (what SACLoss reads) from transition-store rows."""
    n = len(rows["step"])
    terminated = torch.as_tensor(rows["terminated"]).reshape(n, 1)
    truncated = torch.as_tensor(rows["truncated"]).reshape(n, 1)
    return TensorDict(
        {
            "observation": torch.as_tensor(rows["observation"]),
            "action": torch.as_tensor(rows["action"]),
            "next": {
                "observation": torch.as_tensor(rows["next_observation"]),
                "reward": torch.as_tensor(rows["reward"]).reshape(n, 1),
                "terminated": terminated,
                "done": terminated | truncated,
            },
        },
        batch_size=[n],
    )


def _mirrored_rows(rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The mirror images of AntGoal transitions (:func:`torchrl_dmg.antgoal.mirror_observation`;
    reward, termination and truncation are mirror-invariant)."""
    from torchrl_dmg.antgoal import mirror_action, mirror_observation

    return {
        **rows,
        "observation": mirror_observation(rows["observation"]),
        "next_observation": mirror_observation(rows["next_observation"]),
        "action": mirror_action(rows["action"]),
    }


def _store_rows(batch: TensorDictBase, first_step: int) -> dict[str, np.ndarray]:
    """Transition-store rows from a collector batch whose first transition is env step
    ``first_step`` (1-based). A batch of several envs (``[num_envs, T]``) is stored env
    after env, each env's last transition marked truncated (its episode goes on in the
    next batch, which the store cannot join to this part)."""
    truncated = batch["next", "truncated"].clone()
    if batch.ndim > 1:
        truncated[..., -1, :] = True
        batch = batch.reshape(-1)
        truncated = truncated.reshape(batch.shape[0], -1)
    n = batch.numel()
    nxt = batch["next"]
    return {
        "observation": batch["observation"].numpy(),
        "action": batch["action"].numpy(),
        "reward": nxt["reward"].reshape(n).numpy(),
        "next_observation": nxt["observation"].numpy(),
        "terminated": nxt["terminated"].reshape(n).numpy(),
        "truncated": truncated.reshape(n).numpy(),
        "step": np.arange(first_step, first_step + n, dtype=np.int64),
    }


def _make_envs(env_id: str, num_envs: int, processes: bool):
    """The training env(s): one TorchRL GymEnv, or ``num_envs`` of them batched."""

    def make() -> TransformedEnv:
        resolve_env_name(env_id)  # registers the project's tasks in a fresh worker process
        return TransformedEnv(GymEnv(env_id), DoubleToFloat())

    if num_envs == 1:
        return make()
    return (ParallelEnv if processes else SerialEnv)(num_envs, make)


def _warm_start(
    actor: nn.Module,
    path: str | os.PathLike,
    *,
    obs_dim: int,
    act_dim: int,
    num_cells: tuple[int, ...],
) -> None:
    """Load an earlier actor's weights into ``actor``; a clear error when its sizes differ."""
    source, meta = load_behaviour_actor(path)
    got = (int(meta["obs_dim"]), int(meta["act_dim"]), tuple(int(c) for c in meta["num_cells"]))
    if got != (obs_dim, act_dim, num_cells):
        raise ValueError(
            f"init_actor={path} has obs_dim, act_dim, num_cells = {got}, but this run has "
            f"{(obs_dim, act_dim, num_cells)}; warm-start from an actor of the same task "
            "and network size (network.num_cells)."
        )
    actor.load_state_dict(source.state_dict())


@torch.no_grad()
def _sync_actor(actor: nn.Module, train_actor: nn.Module) -> None:
    """Copy the trained weights into the acting (CPU) actor; nothing when they are one."""
    if actor is not train_actor:
        for dst, src in zip(actor.parameters(), train_actor.parameters(), strict=True):
            dst.copy_(src)


# ---------------------------------------------------------------- training
def train_sac(
    env_name: str,
    *,
    total_steps: int,
    out_dir: str | os.PathLike,
    seed: int = 0,
    checkpoint_interval: int = 10_000,
    eval_episodes: int = 10,
    eval_max_steps: int | None = None,
    init_random_steps: int = 5_000,
    frames_per_batch: int = 1_000,
    updates_per_step: float = 1.0,
    batch_size: int = 256,
    buffer_size: int = 1_000_000,
    num_cells: Sequence[int] = (256, 256),
    lr: float = 3e-4,
    gamma: float = 0.99,
    tau: float = 0.005,
    update_mode: str = "compile",
    vmap_critics: bool | None = None,
    sample_chunk: int = 50,
    device: str | torch.device = "cpu",
    num_envs: int = 1,
    env_processes: bool = False,
    init_actor: str | os.PathLike | None = None,
    alpha_init: float = 1.0,
    fixed_alpha: bool = False,
    actor_freeze_updates: int = 0,
    mirror_augment: bool = False,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train a SAC behaviour policy on a Gym-MuJoCo task, checkpointing along the way.

    Standard SAC (double Q with Polyak targets, ``tau``; TanhNormal actor; automatic
    entropy tuning towards ``-act_dim``; Adam, ``lr``), update-to-data ratio 1: after each
    collector batch of ``frames_per_batch`` env steps, that many gradient steps on
    ``batch_size`` transitions drawn uniformly from the replay buffer (the last
    ``buffer_size`` transitions). The first ``init_random_steps`` env steps use uniform
    random actions, and no update happens before they are collected.

    Every ``checkpoint_interval`` env steps (and at ``total_steps``): ``eval_episodes``
    deterministic episodes (``tanh(loc)``; Gymnasium's 1000-step limit, or
    ``eval_max_steps``), then ``checkpoints/step_<steps:08d>.pt``, a ``progress.csv`` row
    and ``state.pt`` (the trainer state), each written atomically. Transitions are
    appended to ``transitions/`` after every batch.

    Args:
        env_name: ``hopper``/``halfcheetah``/``walker2d`` or their ``*-v5`` ids.
        update_mode: ``"compile"`` (default; ``torch.compile`` of the loss with the
            ``aot_eager`` backend), ``"eager"``, ``"compile-inductor"`` (slower than
            ``aot_eager`` on CPU, kept for comparison), or ``"cudagraphs"`` (CUDA only:
            the whole update compiled and replayed as a CUDA graph). Compiling costs
            ~10-60 s once.
        vmap_critics: vmap the two critics (SACLoss's default) or loop over them; ``None``
            picks the faster one for ``update_mode``.
        updates_per_step: gradient steps per env step (the update-to-data ratio): after
            each collector batch, ``round(frames_per_batch * updates_per_step)`` updates.
            Below 1 on a CPU, where the updates cost far more than the env steps.
        sample_chunk: updates whose batches are drawn from the buffer in one ``sample``
            call (the same uniform draws as one call per update: the buffer does not change
            during an update phase; fewer Python calls). 1: one ``sample`` per update.
        device: where the networks, the update and the replay buffer live. The envs
            step on the CPU with a CPU copy of the actor, refreshed after every update
            phase (so a collector batch is collected with the weights of its start).
        num_envs: envs stepped side by side (``frames_per_batch / num_envs`` steps each
            per batch; in-process :class:`~torchrl.envs.SerialEnv`, or one process each
            with ``env_processes`` (:class:`~torchrl.envs.ParallelEnv`)). With more than
            one env, ``transitions/`` holds each env's part of a batch in turn and an
            episode that continues into the next batch is cut there (marked truncated):
            every transition is exact, episodes are split at batch boundaries.
        init_actor: warm start: the actor's initial weights, from a checkpoint of an
            earlier run (``checkpoints/step_*.pt``) or a shipped policy with the same
            observation and action sizes and hidden layers (e.g. to go on training an
            ant on a changed task). The critics start fresh; with ``init_random_steps=0``
            the warm-started actor collects from the first step.
        alpha_init: the entropy coefficient's start value (1.0: SAC's usual start; for a
            warm start, the trained run's last ``alpha`` avoids a burst of entropy).
        fixed_alpha: keep alpha at ``alpha_init`` (no entropy tuning). For a warm start:
            fresh Adam moments let an adaptive alpha move ~``lr`` per step in log space, and
            a walking ant's entropy sits just below the target, so alpha rose x7 within 10k
            steps of the actor's release and the gait degraded.
        actor_freeze_updates: the first this many gradient steps update the critics
            and their targets only (actor and alpha held), so that fresh critics learn
            the warm-started actor's values before its first gradient.
        mirror_augment: AntGoal tasks only: every transition also enters the replay buffer
            as its mirror image (y -> -y in the torso frame; the ant, its physics and the
            reward are symmetric), so SAC sees twice the data and both turning directions
            alike (a plain run's ant turned right far better than left). The buffer holds
            ``buffer_size`` real transitions and their images; ``transitions/`` keeps the
            real ones only.
        resume: continue from ``out_dir/state.pt`` if there is one (a fresh start
            otherwise). Without it, an ``out_dir`` holding a state is an error.

    Returns:
        A summary: ``steps``, ``best_step``, ``best_return``, ``best_checkpoint``,
        ``final_return``, ``checkpoints`` (step -> path), ``session_steps``,
        ``updates_per_s`` and ``env_steps_per_s`` (this call), ``wall_s`` (all calls),
        ``out_dir``.
    """
    env_id = resolve_env_name(env_name)
    out_dir = Path(out_dir)
    num_cells = tuple(int(c) for c in num_cells)
    for name, value in (
        ("total_steps", total_steps),
        ("frames_per_batch", frames_per_batch),
        ("checkpoint_interval", checkpoint_interval),
        ("batch_size", batch_size),
        ("eval_episodes", eval_episodes),
        ("sample_chunk", sample_chunk),
        ("num_envs", num_envs),
    ):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}.")
    if not updates_per_step > 0:
        raise ValueError(f"updates_per_step must be > 0, got {updates_per_step}.")
    updates_per_batch = max(1, round(frames_per_batch * updates_per_step))
    if actor_freeze_updates < 0:
        raise ValueError(f"actor_freeze_updates must be >= 0, got {actor_freeze_updates}.")
    if not alpha_init > 0:
        raise ValueError(f"alpha_init must be > 0, got {alpha_init}.")
    if mirror_augment and not env_id.startswith("torchrl_dmg/AntGoal"):
        raise ValueError(
            f"mirror_augment=True needs an AntGoal task (its ant is mirror-symmetric), not "
            f"{env_id}."
        )
    if init_actor is not None and not Path(init_actor).is_file():
        raise FileNotFoundError(
            f"init_actor={init_actor} is not a file; give a checkpoints/step_*.pt of an "
            "earlier train_sac run or a shipped policy file."
        )
    if total_steps % frames_per_batch or checkpoint_interval % frames_per_batch:
        raise ValueError(
            f"total_steps ({total_steps}) and checkpoint_interval ({checkpoint_interval}) "
            f"must be multiples of frames_per_batch ({frames_per_batch})."
        )
    if frames_per_batch % num_envs:
        raise ValueError(
            f"frames_per_batch ({frames_per_batch}) must be a multiple of num_envs ({num_envs})."
        )
    if update_mode not in UPDATE_MODES:
        raise ValueError(f"update_mode must be one of {UPDATE_MODES}, got {update_mode!r}.")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device} was asked for, but torch sees no CUDA device.")

    state_path = out_dir / "state.pt"
    state = None
    if state_path.is_file():
        if not resume:
            raise FileExistsError(
                f"{out_dir} already holds a run (state.pt); pass resume=True to continue it "
                "or choose another out_dir."
            )
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        if state["env"] != env_id:
            raise ValueError(f"{out_dir} holds a {state['env']} run, not {env_id}.")
        num_cells = tuple(state["num_cells"])
        seed = int(state["seed"])
    else:  # a fresh start: clear what an earlier run cut short before its first state
        for stale in ("transitions", "checkpoints"):
            shutil.rmtree(out_dir / stale, ignore_errors=True)
        (out_dir / "progress.csv").unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

    # ------------------------------------------------------------ env, networks, loss
    env = _make_envs(env_id, num_envs, env_processes)
    obs_dim = int(env.observation_spec["observation"].shape[-1])
    act_dim = int(env.action_spec.shape[-1])
    action_spec = env.action_spec_unbatched.clone()
    # ``actor`` steps the envs and is evaluated (CPU); ``train_actor`` is the one trained
    # (the same module on a CPU run, a copy on ``device`` otherwise)
    actor = make_sac_actor(obs_dim, act_dim, action_spec, num_cells)
    if init_actor is not None and state is None:
        _warm_start(actor, init_actor, obs_dim=obs_dim, act_dim=act_dim, num_cells=num_cells)
    train_actor = actor
    if device.type != "cpu":
        train_actor = make_sac_actor(obs_dim, act_dim, action_spec.to(device), num_cells)
        train_actor.load_state_dict(actor.state_dict())
        train_actor.to(device)
    qvalue = make_sac_qvalue(obs_dim, act_dim, num_cells).to(device)
    updater = _SACUpdater(
        train_actor,
        qvalue,
        action_spec.to(device),
        lr=lr,
        gamma=gamma,
        tau=tau,
        mode=update_mode,
        vmap_critics=vmap_critics,
        alpha_init=alpha_init,
        fixed_alpha=fixed_alpha,
    )
    store = TransitionStore(out_dir / "transitions", obs_dim, act_dim)
    capacity = min(buffer_size, total_steps)
    # batches are drawn sample_chunk at a time, the size given at each sample() call
    replay = TensorDictReplayBuffer(
        storage=LazyTensorStorage(capacity * (2 if mirror_augment else 1), device=device)
    )

    def to_replay(rows: dict[str, np.ndarray]) -> None:
        replay.extend(_buffer_td(rows).to(device))
        if mirror_augment:
            replay.extend(_buffer_td(_mirrored_rows(rows)).to(device))

    steps = 0
    wall_before = 0.0
    rows = []
    if state is not None:
        steps = int(state["steps"])
        wall_before = float(state["wall_s"])
        updater.load_state_dict(state["updater"])
        store.truncate(steps)  # transitions after the state are redone
        store.mark_last_truncated()  # the episode running at the state ends there
        if steps:
            to_replay(store.read(max(0, steps - capacity), steps))
        rows = [r for r in _read_progress(out_dir / "progress.csv") if int(r["step"]) <= steps]
        for path in (out_dir / "checkpoints").glob("step_*.pt"):
            if int(path.stem.split("_")[1]) > steps:
                path.unlink()
        _sync_actor(actor, train_actor)
    else:
        store.truncate(0)
    _write_progress(out_dir / "progress.csv", rows)

    def summary(session: dict[str, float]) -> dict[str, Any]:
        best_row = max(rows, key=lambda r: float(r["eval_return_mean"]), default=None)
        return {
            "env": env_id,
            "out_dir": str(out_dir),
            "steps": steps,
            "best_step": int(best_row["step"]) if best_row else None,
            "best_return": float(best_row["eval_return_mean"]) if best_row else None,
            "best_checkpoint": (
                str(_checkpoint_path(out_dir, int(best_row["step"]))) if best_row else None
            ),
            "final_return": float(rows[-1]["eval_return_mean"]) if rows else None,
            "checkpoints": {
                int(p.stem.split("_")[1]): str(p)
                for p in sorted((out_dir / "checkpoints").glob("step_*.pt"))
            },
            **session,
        }

    if steps >= total_steps:
        env.close()
        return summary(
            {
                "session_steps": 0,
                "updates_per_s": 0.0,
                "env_steps_per_s": 0.0,
                "wall_s": wall_before,
            }
        )

    # the episode restarts, seeded, at every state save (as a resume from it must)
    seed_before_collector(env, seed * 1_000_003 + steps)
    collector = Collector(
        env,
        actor,
        frames_per_batch=frames_per_batch,
        total_frames=total_steps - steps,
        init_random_frames=max(0, init_random_steps - steps),
        reset_when_done=True,
        trust_policy=True,
        auto_register_policy_transforms=False,  # the actor is stateless
    )
    if state is not None:  # last: nothing built above may shift the generators
        set_rng_state(state["rng"])

    pbar = None
    if progress:
        from tqdm.auto import tqdm

        pbar = tqdm(
            total=total_steps,
            initial=steps,
            unit="step",
            desc=f"SAC {env_id}",
            dynamic_ncols=True,
            smoothing=0.05,
        )
        if rows:
            pbar.set_postfix(eval=f"{float(rows[-1]['eval_return_mean']):.0f}")

    session_start = time.perf_counter()
    session_steps = 0
    session_updates = 0
    session_update_time = 0.0
    window = {"update_time": 0.0, "updates": 0, "steps": 0, "start": time.perf_counter()}
    last_losses = None
    try:
        for batch in collector:
            n = batch.numel()
            new_rows = _store_rows(batch, steps + 1)
            store.append(new_rows)
            to_replay(new_rows)
            steps += n
            session_steps += n
            window["steps"] += n

            if steps >= init_random_steps:
                t0 = time.perf_counter()
                remaining = updates_per_batch
                while remaining:
                    k = min(sample_chunk, remaining)
                    draws = replay.sample(batch_size * k).reshape(k, batch_size)
                    for i in range(k):
                        last_losses = updater.update(
                            draws[i], train_actor=updater.num_updates >= actor_freeze_updates
                        )
                    remaining -= k
                _sync_actor(actor, train_actor)
                dt = time.perf_counter() - t0
                session_update_time += dt
                session_updates += updates_per_batch
                window["update_time"] += dt
                window["updates"] += updates_per_batch
            if pbar is not None:
                pbar.update(n)

            if steps % checkpoint_interval == 0 or steps >= total_steps:
                returns = evaluate_actor(
                    actor,
                    env_id,
                    episodes=eval_episodes,
                    max_steps=eval_max_steps,
                    seed=10_000 * (seed + 1),
                )
                now = time.perf_counter()
                wall = wall_before + now - session_start
                row = {
                    "step": steps,
                    "eval_return_mean": float(returns.mean()),
                    "eval_return_std": float(returns.std()),
                    "wall_s": round(wall, 2),
                    "updates_per_s": round(
                        window["updates"] / window["update_time"] if window["updates"] else 0.0,
                        2,
                    ),
                    "env_steps_per_s": round(window["steps"] / (now - window["start"]), 2),
                    "num_updates": updater.num_updates,
                }
                if last_losses is not None:
                    for key in ("alpha", "entropy", "loss_qvalue", "loss_actor"):
                        row[key] = f"{float(last_losses[key]):.5g}"
                _atomic_torch_save(
                    _checkpoint_path(out_dir, steps),
                    {
                        "env": env_id,
                        "step": steps,
                        "obs_dim": obs_dim,
                        "act_dim": act_dim,
                        "num_cells": list(num_cells),
                        "action_low": action_spec.space.low.tolist(),
                        "action_high": action_spec.space.high.tolist(),
                        "actor": {k: v.clone() for k, v in actor.state_dict().items()},
                        "eval_return_mean": row["eval_return_mean"],
                        "eval_return_std": row["eval_return_std"],
                    },
                )
                rows.append({k: str(v) for k, v in row.items()})
                _write_progress(out_dir / "progress.csv", rows)
                _atomic_torch_save(
                    state_path,
                    {
                        "env": env_id,
                        "seed": seed,
                        "num_cells": list(num_cells),
                        "steps": steps,
                        "wall_s": wall,
                        "updater": updater.state_dict(),
                        "rng": rng_state(),
                        "hparams": {
                            "total_steps": total_steps,
                            "checkpoint_interval": checkpoint_interval,
                            "init_random_steps": init_random_steps,
                            "frames_per_batch": frames_per_batch,
                            "updates_per_step": updates_per_step,
                            "batch_size": batch_size,
                            "buffer_size": buffer_size,
                            "lr": lr,
                            "gamma": gamma,
                            "tau": tau,
                            "num_envs": num_envs,
                            "update_mode": update_mode,
                            "device": str(device),
                            "init_actor": None if init_actor is None else str(init_actor),
                            "alpha_init": alpha_init,
                            "fixed_alpha": fixed_alpha,
                            "actor_freeze_updates": actor_freeze_updates,
                            "mirror_augment": mirror_augment,
                        },
                    },
                )
                if steps < total_steps:  # as a resume from this state would
                    store.mark_last_truncated()
                    restart_collection(collector, seed * 1_000_003 + steps)
                if pbar is not None:
                    pbar.set_postfix(
                        eval=f"{row['eval_return_mean']:.0f}", upd_s=row["updates_per_s"]
                    )
                window = {
                    "update_time": 0.0,
                    "updates": 0,
                    "steps": 0,
                    "start": time.perf_counter(),
                }
    finally:
        collector.shutdown()
        if pbar is not None:
            pbar.close()

    session_s = time.perf_counter() - session_start
    return summary(
        {
            "session_steps": session_steps,
            "updates_per_s": session_updates / session_update_time if session_updates else 0.0,
            "env_steps_per_s": session_steps / session_s,
            "wall_s": wall_before + session_s,
        }
    )
