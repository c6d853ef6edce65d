"""Local AntMaze datasets, generated as real Minari datasets (no internet needed).

Two generators share the environments of :mod:`torchrl_dmg.datagen.antmaze.mazes`:

* :func:`generate_antmaze_navigator_dataset` (``local/antmaze/<variant>-v3``): D4RL-style
  data from a goal-reaching ant (:mod:`torchrl_dmg.datagen.antmaze.goal_task`, trained with
  the project's SAC and shipped as ``policies/antgoal.pt``) steered along maze waypoints by
  a :class:`~torchrl_dmg.datagen.antmaze.navigator.WaypointNavigator`, with D4RL's variants
  (umaze, umaze-diverse, medium-play, medium-diverse, large-play, large-diverse). With ``goal_rule="onegoal"`` the ant keeps its
  first commanded goal to the episode's end, as D4RL's generator did
  (``local/antmaze/<variant>-onegoal-v3``).
* :func:`generate_antmaze_dataset` (``local/antmaze/<maze>-random-v1``): a *placeholder* whose
  behaviour policy is **uniform random actions**: the ant jitters around its start cell and
  practically never reaches the goal, so the data only exercise the AntMaze code path end to
  end (29-dim observations, 8-dim actions, sparse reward shifted by -1, the evaluation env and
  its success-rate score).

What both store:

* Environment: ``torchrl_dmg/AntMazeD4RL_{UMaze,Medium,Large}-v0`` (:mod:`torchrl_dmg.datagen.antmaze.d4rl_ant`:
  gymnasium-robotics ``AntMaze-v5`` with D4RL's ant, ``gear 30``, 0.1 s per step; 27-dim
  ant state as in ``AntMaze_*-v4`` and Minari's D4RL AntMaze datasets, plus 2-dim
  ``achieved_goal`` = the ant's xy and 2-dim ``desired_goal``), sparse reward,
  ``continuing_task=True``, ``reset_target=False``, with ONE fixed goal cell (``"g"``) and ONE
  fixed reset cell (``"r"``) in the maze map - the cells of D4RL's evaluation task. The goal
  must be fixed because the AntMaze observation used for training (``achieved_goal`` then
  ``observation``) does not contain the goal; online fine-tuning steps this same env.
* Episodes: the env is reset (seed ``seed + i`` for episode ``i``) every ``episode_steps`` steps
  (placeholder default: the env's own limit, 700 for UMaze and 1000 for Medium/Large; the
  navigator datasets: 1000, as D4RL); every episode ends
  ``truncated``, never ``terminated`` (the task is continuing; gymnasium-robotics also ignores
  the ant's own "unhealthy" termination).
* Rewards: 1 when the ant's xy is within 0.45 of the goal (gymnasium-robotics' radius; D4RL
  used 0.5), else 0. Training shifts them by -1 (family ``antmaze``).
* Evaluation env (``eval_env_spec``): the same maze, start and goal cells with
  ``continuing_task=False``: the episode terminates with reward 1 on the step the ant reaches
  the goal, so a return is 1 for a success and 0 otherwise. With ``ref_min_score = 0`` and
  ``ref_max_score = 1`` the normalised score (x100) is the success rate in percent, as D4RL
  reports AntMaze scores. (With ``continuing_task=True`` the return would count every step
  spent at the goal, which is not a success rate.)
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from minari.data_collector.episode_buffer import EpisodeBuffer
from tqdm.auto import tqdm

from torchrl_dmg.data.local import is_complete, stored_generator_params, stored_generator_version
from torchrl_dmg.datagen.antmaze.goal_task import torso_upright
from torchrl_dmg.datagen.antmaze.mazes import (
    antmaze_dataset_id,
    antmaze_entry,
    make_antmaze_env,
    publish_antmaze,
    variant_entry,
)
from torchrl_dmg.datagen.antmaze.navigator import (
    ACTION_NOISE,
    WAYPOINT_JITTER,
    NavigatedAnt,
    ant_policy_path,
    load_ant_policy,
    noisy_actions,
)
from torchrl_dmg.datagen.behaviour.policy import (
    load_behaviour_actor,
)

#: Episode length of the navigator datasets (D4RL: 1000 steps).
NAVIGATOR_EPISODE_STEPS = 1000


#: Default size of the navigator datasets (D4RL: 1M transitions).
NAVIGATOR_NUM_STEPS = 1_000_000


#: episodes stepped side by side (one batched policy call per step)
EPISODE_GROUP = 16


#: Bumped whenever the data a given set of arguments produces changes; a stored dataset of
#: another version is rebuilt.
_NAVIGATOR_VERSION = 5

#: What the navigator does when the ant reaches its commanded goal: ``"next"`` sends it to
#: the next goal cell (the ``local/antmaze/<variant>-v3`` datasets); ``"onegoal"`` keeps
#: that goal to the episode's end, as D4RL's generator did (one target per reset;
#: ``local/antmaze/<variant>-onegoal-v3``).
GOAL_RULES = ("next", "onegoal")


def navigate_episodes(
    maze: str,
    task: str,
    lengths: list[int],
    seed: int,
    first_episode: int,
    actor,
    noise: float,
    hold_goal: bool = False,
) -> list[dict[str, Any]]:
    """Episodes ``first_episode, ...`` of the given lengths, stepped side by side. An
    episode whose ant ends a step on its back (:func:`~torchrl_dmg.datagen.antmaze.goal_task.is_flipped`,
    from which it cannot get up) stops there (``"flipped": True``): the rest would be
    the ant lying still. On reaching its commanded goal the ant is sent to the next one
    (the datasets' rule), or with ``hold_goal`` keeps that goal to the episode's end
    (D4RL's generator: one target per episode; ``benchmarks/navigator_goal_rule.py``)."""
    keys = ("observation", "achieved_goal", "desired_goal")
    ants = [NavigatedAnt(maze, task, max(lengths)) for _ in lengths]
    try:
        episodes = []
        for j, ant in enumerate(ants):
            i = first_episode + j
            obs, info = ant.reset(seed + i, (seed, i))
            episodes.append(
                {
                    "observations": {k: [np.asarray(obs[k], dtype=np.float64)] for k in keys},
                    "actions": [],
                    "rewards": [],
                    "success": [bool(info["success"])],
                    "commanded_goal": [ant.commanded.copy()],
                    "flipped": False,
                }
            )
        for t in range(max(lengths)):
            live = [j for j, n in enumerate(lengths) if t < n and not episodes[j]["flipped"]]
            if not live:
                break
            actions = noisy_actions(actor, [ants[j] for j in live], noise)
            for j, action in zip(live, actions, strict=True):
                obs, reward, _, _, info = ants[j].step(action, recommand=not hold_goal)
                ep = episodes[j]
                for k in keys:
                    ep["observations"][k].append(np.asarray(obs[k], dtype=np.float64))
                ep["actions"].append(action)
                ep["rewards"].append(float(reward))
                ep["success"].append(bool(info["success"]))
                ep["commanded_goal"].append(ants[j].commanded.copy())
                ep["flipped"] = ants[j].flipped
    finally:
        for ant in ants:
            ant.env.close()
    return episodes


#: A flip-ending episode keeps its steps up to its last state whose torso's up axis is
#: above this (cos 37°): the tumble is cut.
FLIP_CUT_UPRIGHT = 0.8


def flip_cut(observations: np.ndarray) -> int:
    """How many transitions of a flip-ending episode the datasets keep: those before its
    last observation (``[T + 1, 27]``, the ant's own state) with ``torso_upright >
    FLIP_CUT_UPRIGHT``, so that its final next-observation is that upright state.

    Why: an episode is truncated, not terminated, at the flip, so the critics would
    bootstrap V(s') at a state lying on its back or tumbling, which no observation of the
    data resembles; V there is pure extrapolation, and the in-sample value steps (IQL's and
    DMG's expectile) spread it until the critics diverge (AntMaze medium-play at 1M steps:
    Q reached +1e7 against a Monte-Carlo return of -89; with the tumbles cut, it stayed at
    the return). D4RL's ant rarely flips, and ``d4rl.qlearning_dataset`` drops every
    timeout transition."""
    upright = np.flatnonzero(torso_upright(observations) > FLIP_CUT_UPRIGHT)
    return int(upright[-1]) if len(upright) else 0


def generate_antmaze_navigator_dataset(
    variant: str = "umaze",
    num_steps: int | None = None,
    seed: int = 0,
    dataset_id: str | None = None,
    force: bool = False,
    progress: bool = True,
    *,
    episode_steps: int = NAVIGATOR_EPISODE_STEPS,
    noise: float = ACTION_NOISE,
    policy_dir: str | os.PathLike | None = None,
    workers: int = 1,
    goal_rule: str | None = None,
) -> str:
    """Generate (or reuse) a D4RL-style AntMaze dataset and return its Minari id.

    The shipped goal-reaching ant (:func:`~torchrl_dmg.datagen.antmaze.navigator.ant_policy_path`) walks towards the waypoints of
    a :class:`~torchrl_dmg.datagen.antmaze.navigator.WaypointNavigator`, its deterministic action plus ``N(0, noise^2)`` (clipped
    to [-1, 1]); when the ant reaches its commanded goal, the next one is drawn from the
    variant's goal cells (:data:`~torchrl_dmg.datagen.antmaze.mazes.ANTMAZE_VARIANTS`). Episodes of ``episode_steps`` steps,
    every one truncated (never terminated); an episode whose ant flips over stops there and
    is cut back to its last upright state (:func:`flip_cut`), so the data hold no flipped
    or tumbling state. Episode ``i`` resets with seed ``seed + i``
    and draws its start, goals, waypoint jitter and action noise from its own stream
    (``SeedSequence(seed, spawn_key=(i,))``): the same arguments give the same data.

    The stored env is the maze's evaluation task (fixed goal and reset cells, sparse reward,
    continuing): rewards are 1 within 0.45 of the *evaluation* goal, whatever the ant was
    commanded; ``desired_goal`` is that goal. The evaluation env terminates on success,
    ``ref_min_score = 0``, ``ref_max_score = 1``: the normalised score is the success rate.
    ``infos`` keep ``success`` and the ``commanded_goal``.

    ``goal_rule`` (:data:`GOAL_RULES`, default ``"next"``) is what happens on reaching the
    commanded goal: the next one is drawn, or (``"onegoal"``, D4RL's rule) the ant keeps
    it to the episode's end; the default id names the rule
    (:func:`~torchrl_dmg.datagen.antmaze.mazes.antmaze_dataset_id`) and a stored dataset
    made under the other rule is rebuilt, not reused.

    ``workers > 1`` steps the episodes in that many processes, each taking whole groups of
    :data:`EPISODE_GROUP` episodes (the groups a single process steps side by side), so the
    data are the same for any number of workers.
    """

    maze, task = variant_entry(variant)
    variant = variant.lower()
    goal_rule = goal_rule or "next"
    if goal_rule not in GOAL_RULES:
        raise ValueError(f"goal_rule must be one of {GOAL_RULES}, got {goal_rule!r}")
    dataset_id = dataset_id or antmaze_dataset_id(variant, goal_rule)
    num_steps = int(num_steps if num_steps is not None else NAVIGATOR_NUM_STEPS)
    episode_steps = int(episode_steps)
    if num_steps <= 0 or episode_steps <= 0:
        raise ValueError("num_steps and episode_steps must be positive")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if not force and is_complete(dataset_id):
        stored = stored_generator_params(dataset_id) or {}
        # a stored dataset that records no rule holds "next" data
        if stored.get("generator_version") == _NAVIGATOR_VERSION and (
            stored.get("goal_rule", "next") == goal_rule
        ):
            return dataset_id
    policy = ant_policy_path(policy_dir)
    actor, meta = load_ant_policy(policy)

    hold_goal = goal_rule == "onegoal"
    buffers, stats = _collect_navigated(
        maze, task, variant, num_steps, episode_steps, seed, noise, workers, policy, actor,
        progress, hold_goal,
    )  # fmt: skip
    settings = {"num_steps": num_steps, "seed": seed, "episode_steps": episode_steps}
    settings["noise"] = noise
    settings["goal_rule"] = goal_rule
    _publish_navigated(dataset_id, variant, settings, buffers, stats, policy, meta)
    return dataset_id


def _collect_navigated(
    maze: str,
    task: str,
    variant: str,
    num_steps: int,
    episode_steps: int,
    seed: int,
    noise: float,
    workers: int,
    policy: Path,
    actor,
    progress: bool,
    hold_goal: bool = False,
) -> tuple[list, dict[str, int]]:
    """The episode buffers of a navigator dataset and their counts (``steps_at_goal``,
    ``flipped``: episodes ended by a flip, ``flip_steps_cut``: their tumbles' steps)."""
    # groups of EPISODE_GROUP episodes (stepped side by side) are drawn in order until their
    # steps fill num_steps (episodes that end with a flip are shorter); the last episode is
    # cut to fit. Each group is a function of its index only: any number of workers gives
    # the same data.
    group_lengths = [episode_steps] * EPISODE_GROUP
    buffers = []
    steps_at_goal = flipped = steps_cut = collected = 0
    pool = None
    if workers > 1:
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        job = partial(
            _navigate_group, maze=maze, task=task, seed=seed, policy=str(policy), noise=noise,
            hold_goal=hold_goal,
        )  # fmt: skip
    bar = tqdm(total=num_steps, disable=not progress, desc=f"antmaze {variant}", unit="step")
    try:
        first = 0
        while collected < num_steps:
            # one wave: a group per worker (no more than the missing steps can use)
            needed = -(-(num_steps - collected) // (episode_steps * EPISODE_GROUP))
            starts = [first + g * EPISODE_GROUP for g in range(max(1, min(workers, needed)))]
            if pool is not None:
                wave = pool.map(job, [(f, group_lengths) for f in starts])
            else:
                wave = [
                    navigate_episodes(
                        maze, task, group_lengths, seed, f, actor, noise, hold_goal=hold_goal
                    )
                    for f in starts
                ]
            for f, group_episodes in zip(starts, wave, strict=True):
                for j, ep in enumerate(group_episodes):
                    if collected >= num_steps:
                        break
                    kept = len(ep["actions"])
                    if ep["flipped"]:
                        kept = flip_cut(np.stack(ep["observations"]["observation"]))
                        steps_cut += len(ep["actions"]) - kept
                    if kept == 0:
                        continue
                    length = min(kept, num_steps - collected)
                    collected += length
                    flipped += int(ep["flipped"] and length == kept)
                    steps_at_goal += int(np.sum(ep["success"][1 : length + 1]))
                    buffers.append(_episode_buffer(ep, len(buffers), seed + f + j, length))
                    bar.update(length)
            first = starts[-1] + EPISODE_GROUP
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)

    stats = {"steps_at_goal": steps_at_goal, "flipped": flipped, "flip_steps_cut": steps_cut}
    return buffers, stats


def _publish_navigated(
    dataset_id: str,
    variant: str,
    settings: dict[str, Any],
    buffers: list,
    stats: dict[str, int],
    policy: Path,
    meta: dict[str, Any],
) -> None:
    """Write a navigator dataset with its generator parameters and description."""
    maze, task = variant_entry(variant)
    num_steps, seed = settings["num_steps"], settings["seed"]
    episode_steps, noise = settings["episode_steps"], settings["noise"]
    env_id, start, goal, _ = antmaze_entry(maze)
    params = {
        "generator": "torchrl_dmg.datagen.antmaze.datasets.generate_antmaze_navigator_dataset",
        "generator_version": _NAVIGATOR_VERSION,
        "variant": variant,
        "maze": maze,
        "task": task,
        "env_id": env_id,
        "num_steps": num_steps,
        "seed": seed,
        "episode_steps": episode_steps,
        "action_noise": noise,
        "goal_rule": settings["goal_rule"],
        "waypoint_jitter": WAYPOINT_JITTER,
        "policy": policy.name,
        "policy_step": int(meta.get("step", -1)),
        "reset_cell": list(start),
        "goal_cell": list(goal),
        "steps_at_goal": stats["steps_at_goal"],
        "episodes": len(buffers),
        "episodes_ended_flipped": stats["flipped"],
        "flip_steps_cut": stats["flip_steps_cut"],
        "flip_cut_upright": FLIP_CUT_UPRIGHT,
    }
    description = (
        f"D4RL-style AntMaze data on {env_id} ({variant}: {task} task) made by "
        "torchrl_dmg: a goal-reaching SAC ant steered along jittered waypoints of shortest "
        f"maze paths, Gaussian action noise sigma={noise}, {num_steps} steps in episodes of "
        f"{episode_steps} (truncated, never terminated; an episode whose ant flips over is "
        "cut back to its last upright state). Rewards are the evaluation task's "
        f"(sparse, goal cell {goal}); evaluation env: reset cell {start}, goal cell {goal}, "
        "terminated at the goal; ref scores 0 / 1, so the normalised score is the success "
        f"rate. Parameters: {params}."
    )
    env = make_antmaze_env(maze, max_episode_steps=episode_steps)
    publish_antmaze(
        dataset_id,
        buffers,
        env,
        maze,
        "goal-reaching SAC ant + waypoint navigator",
        description,
        params,
    )


def _episode_buffer(ep: dict[str, Any], index: int, episode_seed: int, length: int):
    """Minari episode ``index`` from the first ``length`` steps of a navigated episode
    reset with ``episode_seed`` (the last step marked truncated: the episodes never
    terminate)."""

    truncations = np.zeros(length, dtype=bool)
    truncations[-1] = True
    return EpisodeBuffer(
        id=index,
        seed=episode_seed,
        observations={k: np.stack(v[: length + 1]) for k, v in ep["observations"].items()},
        actions=np.stack(ep["actions"][:length]),
        rewards=np.asarray(ep["rewards"][:length], dtype=np.float64),
        terminations=np.zeros(length, dtype=bool),
        truncations=truncations,
        infos={
            "success": np.asarray(ep["success"][: length + 1]),
            "commanded_goal": np.stack(ep["commanded_goal"][: length + 1]),
        },
    )


def _navigate_group(group, *, maze, task, seed, policy, noise, hold_goal=False):
    """:func:`navigate_episodes` of ``group = (first episode, lengths)`` in a worker
    process, with the actor loaded from ``policy`` (once per process)."""

    cached = _WORKER_ACTOR.get(policy)
    if cached is None:
        cached = _WORKER_ACTOR[policy] = load_behaviour_actor(policy)[0]
    first, lengths = group
    return navigate_episodes(maze, task, lengths, seed, first, cached, noise, hold_goal=hold_goal)


_WORKER_ACTOR: dict[str, Any] = {}


def navigator_success(
    maze: str,
    *,
    episodes: int = 50,
    seed: int = 0,
    noise: float = ACTION_NOISE,
    policy_dir: str | os.PathLike | None = None,
    actor=None,
) -> dict[str, float]:
    """Success rate of the navigator on the maze's evaluation task: the evaluation env
    (reset cell to goal cell, its time limit: 700 steps in umaze, 1000 otherwise),
    commanded straight to the evaluation goal, with ``noise`` on the actions as in the
    datasets. Episode ``i`` is seeded ``seed + i``.

    Returns ``success_rate`` (0..1), ``episodes``, ``mean_steps`` (successes only; None
    without any) and ``flips`` (episodes that ended with the ant on its back).
    """
    if actor is None:
        actor = load_ant_policy(ant_policy_path(policy_dir))[0]
    horizon = antmaze_entry(maze)[3]
    successes, steps_taken = [], []
    flips = 0
    for first in range(0, episodes, EPISODE_GROUP):
        n = min(EPISODE_GROUP, episodes - first)
        ants = [NavigatedAnt(maze, "fixed", horizon, continuing=False) for _ in range(n)]
        try:
            for j, ant in enumerate(ants):
                i = first + j
                ant.reset(seed + i, (seed, i), to_eval_goal=True)
            done_at = [0] * n
            live = list(range(n))
            for t in range(horizon):
                if not live:
                    break
                actions = noisy_actions(actor, [ants[j] for j in live], noise)
                still = []
                for j, action in zip(live, actions, strict=True):
                    _, _, terminated, _, info = ants[j].step(action, recommand=False)
                    if terminated or info["success"]:
                        done_at[j] = t + 1
                    elif ants[j].flipped:  # it cannot get up: a failure
                        flips += 1
                    else:
                        still.append(j)
                live = still
            successes += [d > 0 for d in done_at]
            steps_taken += [d for d in done_at if d > 0]
        finally:
            for ant in ants:
                ant.env.close()
    return {
        "success_rate": float(np.mean(successes)),
        "episodes": int(episodes),
        "mean_steps": float(np.mean(steps_taken)) if steps_taken else None,
        "flips": flips,
    }


# ---------------------------------------------------------------- placeholder: random actions
#: Default size of the placeholder datasets (D4RL used 1M steps); about a minute on one core.
RANDOM_NUM_STEPS = 100_000


#: Bumped whenever the data a given set of arguments produces changes; a stored dataset of
#: another version is rebuilt.
_RANDOM_VERSION = 2


_POLICIES = ("random",)
#: Version of the random-action AntMaze ids (``local/antmaze/<maze>-random-v1``)
RANDOM_DATASET_VERSION = 1


def default_antmaze_dataset_id(maze: str, policy: str = "random") -> str:
    """Default local Minari id, e.g. ``local/antmaze/umaze-random-v1``."""
    antmaze_entry(maze)
    return f"local/antmaze/{maze.lower()}-{policy}-v{RANDOM_DATASET_VERSION}"


def _collect_episode(
    base: gym.Env, rng: np.random.Generator, length: int, seed: int
) -> dict[str, Any]:
    """One episode of uniform random actions, stepping the unwrapped env (no time limit)."""
    keys = ("observation", "achieved_goal", "desired_goal")
    obs, info = base.reset(seed=seed)
    low = base.action_space.low.astype(np.float32)
    high = base.action_space.high.astype(np.float32)
    observations = {k: [np.asarray(obs[k], dtype=np.float64)] for k in keys}
    actions = rng.uniform(low, high, size=(length, low.shape[0])).astype(np.float32)
    rewards = np.empty(length, dtype=np.float64)
    success = [bool(info["success"])]
    for t in range(length):
        obs, reward, _terminated, _truncated, info = base.step(actions[t])
        for k in keys:
            observations[k].append(np.asarray(obs[k], dtype=np.float64))
        rewards[t] = reward
        success.append(bool(info["success"]))
    return {
        "observations": {k: np.stack(v) for k, v in observations.items()},
        "actions": actions,
        "rewards": rewards,
        "success": np.asarray(success),
    }


def _collect_random(
    env, num_steps: int, episode_steps: int, seed: int, progress: bool
) -> tuple[list, int]:
    """Episodes of uniform random actions (buffers) and the steps they spent at the goal;
    ``env`` is closed on an error."""
    rng = np.random.default_rng(seed)
    buffers = []
    steps_at_goal = 0
    try:
        with tqdm(
            total=num_steps, disable=not progress, desc="antmaze collect", unit="step"
        ) as bar:
            done_steps = 0
            while done_steps < num_steps:
                i = len(buffers)
                length = min(episode_steps, num_steps - done_steps)
                ep = _collect_episode(env.unwrapped, rng, length, seed + i)
                truncations = np.zeros(length, dtype=bool)
                truncations[-1] = True
                steps_at_goal += int(ep["success"][1:].sum())
                buffers.append(
                    EpisodeBuffer(
                        id=i,
                        seed=seed + i,
                        observations=ep["observations"],
                        actions=ep["actions"],
                        rewards=ep["rewards"],
                        terminations=np.zeros(length, dtype=bool),
                        truncations=truncations,
                        infos={"success": ep["success"]},
                    )
                )
                done_steps += length
                bar.update(length)
    except BaseException:
        env.close()
        raise

    return buffers, steps_at_goal


def _publish_random(dataset_id: str, maze: str, env, buffers: list, params: dict) -> None:
    """Write the placeholder dataset with its description (closes ``env``)."""
    env_id, start, goal = params["env_id"], tuple(params["reset_cell"]), tuple(params["goal_cell"])
    num_steps, episode_steps, policy = (
        params["num_steps"],
        params["episode_steps"],
        params["policy"],
    )
    description = (
        f"PLACEHOLDER AntMaze data on {env_id} (sparse reward, continuing task, fixed reset cell "
        f"{start} and goal cell {goal}) from a uniform random policy: it exercises the AntMaze "
        f"pipeline but does not reach the goal. {num_steps} steps in episodes of {episode_steps} "
        "steps (truncated, never terminated). Evaluation env: the same cells with "
        "continuing_task=False (terminated with reward 1 at the goal); ref_min_score 0 and "
        f"ref_max_score 1, so the normalised score is the success rate. Parameters: {params}."
    )
    publish_antmaze(
        dataset_id, buffers, env, maze, f"{policy} policy (placeholder)", description, params
    )


def generate_antmaze_dataset(
    maze: str = "umaze",
    num_steps: int | None = None,
    seed: int = 0,
    dataset_id: str | None = None,
    policy: str = "random",
    force: bool = False,
    progress: bool = True,
    *,
    episode_steps: int | None = None,
) -> str:
    """Generate (or reuse) a local placeholder AntMaze Minari dataset and return its id.

    Args:
        maze: ``"umaze"``, ``"medium"`` or ``"large"``.
        num_steps: transitions to collect (default :data:`RANDOM_NUM_STEPS`); the last episode
            is shorter when ``episode_steps`` does not divide it.
        seed: episode ``i`` resets with ``seed + i``; the actions come from
            ``np.random.default_rng(seed)``. Same seed and arguments give identical data.
        dataset_id: Minari id (default ``local/antmaze/<maze>-<policy>-v1``).
        policy: behaviour policy; only ``"random"`` (uniform actions, a placeholder: see the
            module docstring).
        force: rebuild even if a complete dataset with this id exists.
        progress: show a tqdm bar while collecting.
        episode_steps: steps per episode (default: the env's limit, 700 / 1000 / 1000); this is
            also the ``max_episode_steps`` of the stored (online) env.

    Existing complete datasets made by this generator version are returned untouched (their
    other parameters are not compared: pass ``force=True`` or another ``dataset_id``). The
    dataset is published atomically with :func:`torchrl_dmg.data.local.building_dataset`.
    """

    env_id, start, goal, horizon = antmaze_entry(maze)
    maze = maze.lower()
    if policy not in _POLICIES:
        raise ValueError(f"unknown policy {policy!r}; expected one of {list(_POLICIES)}")
    dataset_id = dataset_id or default_antmaze_dataset_id(maze, policy)
    num_steps = int(num_steps if num_steps is not None else RANDOM_NUM_STEPS)
    episode_steps = int(episode_steps or horizon)
    if num_steps <= 0 or episode_steps <= 0:
        raise ValueError("num_steps and episode_steps must be positive")
    if not force and is_complete(dataset_id):
        if stored_generator_version(dataset_id) == _RANDOM_VERSION:
            return dataset_id

    env = make_antmaze_env(maze, max_episode_steps=episode_steps)
    buffers, steps_at_goal = _collect_random(env, num_steps, episode_steps, seed, progress)
    params = {
        "generator": "torchrl_dmg.datagen.antmaze.datasets.generate_antmaze_dataset",
        "generator_version": _RANDOM_VERSION,
        "maze": maze,
        "env_id": env_id,
        "policy": policy,
        "num_steps": num_steps,
        "seed": seed,
        "episode_steps": episode_steps,
        "reset_cell": list(start),
        "goal_cell": list(goal),
        "steps_at_goal": steps_at_goal,
    }
    _publish_random(dataset_id, maze, env, buffers, params)
    return dataset_id
