"""D4RL-style Gym-MuJoCo locomotion datasets (hopper, halfcheetah, walker2d), made locally.

D4RL's ``hopper-medium-v2`` and friends need the internet (Minari's ``mujoco/*`` copies) or
the dead mujoco-py stack; this module rebuilds them on Gymnasium's v5 tasks from behaviour
policies this project trains itself (:mod:`torchrl_dmg.datagen.behaviour.trainer`, SAC as in D4RL):

* ``random``: uniform random actions.
* ``medium``: the stochastic policy of a SAC checkpoint at about a third of the expert
  return. ``expert``: the best checkpoint of that run. Both are shipped with the package
  (``torchrl_dmg/datagen/policies/<env>-<medium|expert>.pt``, see the README's table), so
  these datasets regenerate in minutes without retraining.
* ``medium-expert``: the ``medium`` and ``expert`` datasets concatenated (each
  ``num_steps`` long, as D4RL's 2M-step medium-expert).
* ``medium-replay``: every transition the SAC run collected until the medium checkpoint
  (its replay buffer), in collection order. It needs that run's transition store
  (``outputs/behaviour/<env>_s0`` by default, ``recipes/train_behaviour.py``).

Episodes follow the task: ``terminated`` when the body falls (hopper, walker2d),
``truncated`` at Gymnasium's 1000-step limit or when the collection budget ends
mid-episode. Actions are sampled from the TanhNormal of the SAC actor (D4RL collected
with the stochastic policy). ``ref_min_score``/``ref_max_score`` are D4RL's reference
returns, so ``minari.get_normalized_score`` puts scores on the paper's scale.

Datasets are written through :func:`torchrl_dmg.data.local.building_dataset`: a crashed
or interrupted collection leaves nothing that loads as a dataset, an existing complete one
is reused, a partial one is rebuilt.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from minari.data_collector.episode_buffer import EpisodeBuffer
from tqdm.auto import tqdm

from torchrl_dmg.data.local import is_complete, publish_dataset
from torchrl_dmg.datagen.behaviour.policy import (
    act,
    evaluate_actor,
    evaluated_checkpoints,
    load_behaviour_actor,
)
from torchrl_dmg.datagen.behaviour.tasks import D4RL_REF_SCORES, ENV_IDS, d4rl_normalized_score
from torchrl_dmg.datagen.behaviour.transitions import load_transitions
from torchrl_dmg.recording import atomic_write, write_json

__all__ = [
    "DEFAULT_NUM_STEPS",
    "LOCOMOTION_ENVS",
    "POLICY_DIR",
    "QUALITIES",
    "generate_locomotion_dataset",
    "locomotion_dataset_id",
    "pack_medium_replay",
    "ship_behaviour_policies",
    "shipped_policy",
]

#: Short name -> Gymnasium v5 id (the D4RL tasks).
LOCOMOTION_ENVS: dict[str, str] = ENV_IDS
QUALITIES = ("random", "medium", "medium-replay", "expert", "medium-expert")
#: transitions per dataset (D4RL: 1M; medium-expert is two of them)
DEFAULT_NUM_STEPS = 1_000_000
#: the shipped behaviour policies
POLICY_DIR = Path(__file__).resolve().parent / "policies"
#: where recipes/train_behaviour.py writes its run (medium-replay reads it)
DEFAULT_BEHAVIOUR_RUN = "outputs/behaviour/{env}_s0"
#: envs stepped side by side during collection (one batched actor call per step)
_NUM_ENVS = 16
_GENERATOR_VERSION = 1


def locomotion_dataset_id(env: str, quality: str) -> str:
    """``local/mujoco/<env>/<quality>-v0`` (mirrors Minari's ``mujoco/<env>/<quality>-v0``)."""
    _check(env, quality)
    return f"local/mujoco/{env}/{quality}-v0"


def _check_env(env: str) -> None:
    if env not in LOCOMOTION_ENVS:
        raise ValueError(f"Unknown env {env!r}; choose one of {sorted(LOCOMOTION_ENVS)}.")


def _check(env: str, quality: str) -> None:
    _check_env(env)
    if quality not in QUALITIES:
        raise ValueError(f"Unknown quality {quality!r}; choose one of {list(QUALITIES)}.")


def shipped_policy(env: str, level: str, policy_dir: str | os.PathLike | None = None) -> Path:
    """Path of the shipped ``medium`` or ``expert`` behaviour policy of ``env``."""
    path = Path(policy_dir or POLICY_DIR) / f"{env}-{level}.pt"
    if not path.is_file():
        raise FileNotFoundError(
            f"No {level} behaviour policy for {env} at {path}. Train one with "
            f"`python recipes/train_behaviour.py env={env}` and copy the chosen checkpoint "
            f"there (see the README, 'Locomotion datasets')."
        )
    return path


def _collect(
    env: str, num_steps: int, seed: int, policy_path: Path | None, progress: bool
) -> list[dict[str, np.ndarray]]:
    """``num_steps`` transitions from ``_NUM_ENVS`` envs stepped side by side, as whole
    episodes (in order of completion; the ones still running at the end are truncated)."""
    envs = [gym.make(LOCOMOTION_ENVS[env]) for _ in range(_NUM_ENVS)]
    actor = load_behaviour_actor(policy_path)[0] if policy_path is not None else None
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    space = envs[0].action_space
    low, high = space.low.astype(np.float32), space.high.astype(np.float32)
    episodes: list[dict[str, np.ndarray]] = []
    obs = [e.reset(seed=seed + i)[0] for i, e in enumerate(envs)]
    running: list[dict[str, list]] = [_new_episode(o) for o in obs]
    collected = 0
    try:
        with tqdm(total=num_steps, disable=not progress, desc=f"{env} collect", unit="step") as bar:
            while collected < num_steps:
                n = min(_NUM_ENVS, num_steps - collected)
                if actor is None:
                    actions = rng.uniform(low, high, size=(n, low.shape[0])).astype(np.float32)
                else:
                    actions = act(actor, np.stack(obs[:n]), False, generator)
                for i in range(n):
                    next_obs, reward, terminated, truncated, _ = envs[i].step(actions[i])
                    ep = running[i]
                    ep["actions"].append(actions[i])
                    ep["rewards"].append(reward)
                    ep["terminations"].append(terminated)
                    ep["truncations"].append(truncated)
                    ep["observations"].append(next_obs)
                    if terminated or truncated:
                        episodes.append(_finish(ep))
                        next_obs = envs[i].reset()[0]
                        running[i] = _new_episode(next_obs)
                    obs[i] = next_obs
                collected += n
                bar.update(n)
    finally:
        for e in envs:
            e.close()
    for ep in running:  # the budget ends these mid-episode: truncated there
        if ep["actions"]:
            ep["truncations"][-1] = True
            episodes.append(_finish(ep))
    return episodes


def _new_episode(obs: np.ndarray) -> dict[str, list]:
    keys = ("actions", "rewards", "terminations", "truncations")
    return {"observations": [obs], **{k: [] for k in keys}}


def _finish(ep: dict[str, list]) -> dict[str, np.ndarray]:
    return {
        "observations": np.asarray(ep["observations"], dtype=np.float64),
        "actions": np.asarray(ep["actions"], dtype=np.float32),
        "rewards": np.asarray(ep["rewards"], dtype=np.float64),
        "terminations": np.asarray(ep["terminations"], dtype=bool),
        "truncations": np.asarray(ep["truncations"], dtype=bool),
    }


def _replay_transitions(run_dir: Path, max_step: int) -> dict[str, np.ndarray]:
    """The SAC run's transitions up to ``max_step``; the last one closes its episode."""
    data = load_transitions(run_dir, max_step=max_step)
    data["truncated"] = data["truncated"].astype(bool).reshape(-1)
    data["terminated"] = data["terminated"].astype(bool).reshape(-1)
    if len(data["truncated"]) and not data["terminated"][-1]:
        data["truncated"][-1] = True  # a running episode ends there (truncated)
    return data


def _episodes(data: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Flat transitions (``observation``, ``action``, ``reward``, ``next_observation``,
    ``terminated``, ``truncated``; the last one ends an episode) as Minari episodes."""
    ends = np.flatnonzero(data["terminated"] | data["truncated"]) + 1
    episodes, start = [], 0
    for end in ends.tolist():
        episodes.append(
            {
                "observations": np.concatenate(
                    [data["observation"][start:end], data["next_observation"][end - 1 : end]]
                ).astype(np.float64),
                "actions": data["action"][start:end].astype(np.float32),
                "rewards": data["reward"][start:end].astype(np.float64).reshape(-1),
                "terminations": data["terminated"][start:end],
                "truncations": data["truncated"][start:end],
            }
        )
        start = end
    return episodes


def pack_medium_replay(
    run_dir: str | os.PathLike, env: str, *, policy_dir: str | os.PathLike | None = None
) -> Path:
    """Store the SAC run's transitions until the shipped medium checkpoint compactly
    (``<env>-medium-replay.npz`` beside the policies: compressed, each episode's
    observations once plus its last next-observation), so ``medium-replay`` regenerates
    without rerunning the training."""
    medium = torch.load(shipped_policy(env, "medium", policy_dir), weights_only=False)
    data = _replay_transitions(Path(run_dir), int(medium["step"]))
    ends = np.flatnonzero(data["terminated"] | data["truncated"])
    target = Path(policy_dir or POLICY_DIR) / f"{env}-medium-replay.npz"
    arrays = dict(
        observation=data["observation"].astype(np.float32),
        action=data["action"].astype(np.float32),
        reward=data["reward"].astype(np.float32).reshape(-1),
        terminated=data["terminated"],
        truncated=data["truncated"],
        last_next_observation=data["next_observation"][ends].astype(np.float32),
        until_step=np.int64(medium["step"]),
    )
    atomic_write(target, lambda f: np.savez_compressed(f, **arrays))
    return target


def _unpack_medium_replay(path: Path, until_step: int) -> dict[str, np.ndarray]:
    with np.load(path) as packed:
        data = {k: packed[k] for k in packed.files}
    packed_until = int(data.pop("until_step"))
    if packed_until != until_step:
        raise ValueError(
            f"{path} holds a run until step {packed_until}, but the medium policy "
            f"is from step {until_step}: pack it again (pack_medium_replay) after shipping."
        )
    ends = np.flatnonzero(data["terminated"] | data["truncated"])
    next_obs = np.empty_like(data["observation"])
    next_obs[:-1] = data["observation"][1:]
    next_obs[ends] = data.pop("last_next_observation")
    data["next_observation"] = next_obs
    return data


def _buffers(episodes: list[dict[str, np.ndarray]], seed: int) -> list:
    return [
        EpisodeBuffer(id=i, seed=seed if i == 0 else None, **ep) for i, ep in enumerate(episodes)
    ]


def _medium_replay_episodes(
    env: str,
    policy_dir: str | os.PathLike | None,
    behaviour_run: str | os.PathLike | None,
    params: dict[str, Any],
) -> tuple[list[dict[str, np.ndarray]], str]:
    """The episodes of ``medium-replay`` and their description; records the source in
    ``params``."""
    medium = shipped_policy(env, "medium", policy_dir)
    meta = torch.load(medium, map_location="cpu", weights_only=False)
    until = int(meta["step"])
    run = Path(behaviour_run or DEFAULT_BEHAVIOUR_RUN.format(env=env))
    packed = Path(policy_dir or POLICY_DIR) / f"{env}-medium-replay.npz"
    if behaviour_run is None and packed.is_file():  # the shipped one: what medium came from
        data, run = _unpack_medium_replay(packed, until), packed
    elif (run / "transitions" / "meta.json").is_file():
        data = _replay_transitions(run, until)
    else:
        raise FileNotFoundError(
            f"medium-replay is the SAC run's replay buffer until its medium checkpoint "
            f"(step {until}), and neither a run at {run} nor a packed copy at {packed} "
            f"was found. Rerun the documented training: `python "
            f"recipes/train_behaviour.py env={env} steps={until}` (or pass "
            "behaviour_run=<its directory>)."
        )
    episodes = _episodes(data)
    params.update(behaviour_run=str(run), until_step=until)
    return episodes, f"all transitions of the SAC run until its medium checkpoint ({run})"


def _policy_episodes(
    env: str,
    quality: str,
    num_steps: int,
    seed: int,
    policy_dir: str | os.PathLike | None,
    progress: bool,
    params: dict[str, Any],
) -> tuple[list[dict[str, np.ndarray]], str]:
    """The episodes of a policy-collected quality (random, medium, expert, medium-expert)
    and their description; records the policies in ``params``."""
    levels = {"random": [None], "medium": ["medium"], "expert": ["expert"]}
    levels["medium-expert"] = ["medium", "expert"]
    episodes = []
    for level in levels[quality]:
        path = shipped_policy(env, level, policy_dir) if level else None
        episodes += _collect(env, num_steps, seed, path, progress)
        if path is not None:
            params[f"{level}_policy"] = path.name
    params["num_steps"] = num_steps
    return episodes, {
        "random": "uniform random actions",
        "medium": "the shipped medium SAC policy (stochastic)",
        "expert": "the shipped expert SAC policy (stochastic)",
        "medium-expert": "the medium then the expert dataset, concatenated",
    }[quality]


def generate_locomotion_dataset(
    env: str = "hopper",
    quality: str = "medium",
    num_steps: int | None = None,
    seed: int = 0,
    dataset_id: str | None = None,
    force: bool = False,
    progress: bool = True,
    *,
    policy_dir: str | os.PathLike | None = None,
    behaviour_run: str | os.PathLike | None = None,
) -> str:
    """Generate (or reuse) a local Minari locomotion dataset and return its id.

    Args:
        env: ``"hopper"``, ``"halfcheetah"`` or ``"walker2d"``.
        quality: one of :data:`QUALITIES` (see the module docstring).
        num_steps: transitions to collect (default 1M, as D4RL; ``medium-expert`` holds
            twice that, ``medium-replay`` whatever the SAC run saw until its medium
            checkpoint and ignores it).
        seed: seeds the envs and the action sampling: same arguments, same data.
        dataset_id: Minari id (default :func:`locomotion_dataset_id`).
        force: rebuild even if a complete dataset with this id exists.
        policy_dir: where the ``<env>-<medium|expert>.pt`` policies are (default: shipped).
        behaviour_run: the SAC run directory for ``medium-replay`` (default
            ``outputs/behaviour/<env>_s0``).
    """
    _check(env, quality)
    dataset_id = dataset_id or locomotion_dataset_id(env, quality)
    num_steps = int(num_steps if num_steps is not None else DEFAULT_NUM_STEPS)
    if num_steps <= 0:
        raise ValueError(f"num_steps must be positive, got {num_steps}.")
    if not force and is_complete(dataset_id):
        return dataset_id
    params: dict[str, Any] = {
        "generator": "torchrl_dmg.datagen.locomotion.generate_locomotion_dataset",
        "generator_version": _GENERATOR_VERSION,
        "env": env,
        "env_id": LOCOMOTION_ENVS[env],
        "quality": quality,
        "seed": seed,
    }
    if quality == "medium-replay":
        episodes, description = _medium_replay_episodes(env, policy_dir, behaviour_run, params)
    else:
        episodes, description = _policy_episodes(
            env, quality, num_steps, seed, policy_dir, progress, params
        )
    ref_min, ref_max = D4RL_REF_SCORES[env]
    spec = gym.spec(LOCOMOTION_ENVS[env])
    publish_dataset(
        dataset_id,
        _buffers(episodes, seed),
        env_spec=spec,
        eval_env_spec=spec,
        algorithm_name=f"SAC behaviour policy ({quality})",
        code_permalink="torchrl_dmg/datagen/locomotion.py",
        ref_min_score=ref_min,
        ref_max_score=ref_max,
        description=(
            f"D4RL-style {LOCOMOTION_ENVS[env]} {quality} data: {description}. "
            f"Reference scores are D4RL's. Generator parameters: {params}."
        ),
        generator_params=params,
        requirements=["gymnasium[mujoco]>=1.0"],
    )
    return dataset_id


def ship_behaviour_policies(
    run_dir: str | os.PathLike,
    env: str,
    *,
    policy_dir: str | os.PathLike | None = None,
    episodes: int = 10,
    seed: int = 1_000,
    max_steps: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Pick the ``expert`` (best evaluated checkpoint) and ``medium`` (the checkpoint before
    it whose return is closest to a third of the expert's) policies of a
    ``recipes/train_behaviour.py`` run, evaluate each anew (``episodes`` deterministic
    episodes, seeds ``seed + i``), and write them to ``policy_dir`` as
    ``<env>-<level>.pt`` (the actor only) plus their record in ``policies.json``. Returns
    the two new record entries."""
    _check_env(env)
    out = Path(policy_dir or POLICY_DIR)
    out.mkdir(parents=True, exist_ok=True)
    rows = evaluated_checkpoints(run_dir)
    paths = {step: path for step, _, path in rows}
    expert_step, expert_return, _ = max(rows, key=lambda r: r[1])
    earlier = [r for r in rows if r[0] <= expert_step]
    medium_step = min(earlier, key=lambda r: abs(r[1] - expert_return / 3))[0]
    record = {}
    for level, step in (("medium", medium_step), ("expert", expert_step)):
        ckpt = torch.load(paths[step], map_location="cpu", weights_only=False)
        target = out / f"{env}-{level}.pt"
        atomic_write(target, lambda f, ckpt=ckpt: torch.save(ckpt, f))
        actor, _ = load_behaviour_actor(target)
        returns = evaluate_actor(actor, env, episodes=episodes, seed=seed, max_steps=max_steps)
        scores = d4rl_normalized_score(env, returns)
        record[f"{env}-{level}"] = {
            "env": LOCOMOTION_ENVS[env],
            "level": level,
            "checkpoint_step": step,
            "run_steps": rows[-1][0],
            "episodes": episodes,
            "return_mean": float(returns.mean()),
            "return_std": float(returns.std()),
            "normalized_score": float(scores.mean()),
            "normalized_score_std": float(scores.std()),
            "d4rl_ref_scores": list(D4RL_REF_SCORES[env]),
        }
        print(
            f"[ship] {target.name}: step {step}, return {returns.mean():.1f} ± "
            f"{returns.std():.1f}, normalised {scores.mean():.1f}"
        )
    update_policy_record(record, out)
    return record


def update_policy_record(entries: dict[str, Any], policy_dir: str | os.PathLike | None = None):
    """Merge ``entries`` into ``policies.json`` (the record of the shipped policies)."""
    path = Path(policy_dir or POLICY_DIR) / "policies.json"
    record = json.loads(path.read_text()) if path.is_file() else {}
    record.update(entries)
    write_json(path, record)
