"""Choosing and shipping the goal-reaching ant: its open-space success rate
(:func:`goal_reaching_success`), and :func:`ship_ant_policy`, which picks the checkpoint of
a ``recipes/train_behaviour.py env=antgoal`` run that navigates the mazes best, copies it
to ``policies/antgoal.pt`` and records its measurements (docs/datasets.md, 'AntMaze
datasets')."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchrl_dmg.datagen.antmaze.datasets import navigator_success
from torchrl_dmg.datagen.antmaze.goal_task import AntGoalEnv
from torchrl_dmg.datagen.antmaze.navigator import ACTION_NOISE
from torchrl_dmg.datagen.behaviour.policy import act, evaluated_checkpoints, load_behaviour_actor
from torchrl_dmg.datagen.locomotion import POLICY_DIR, update_policy_record
from torchrl_dmg.recording import atomic_write


def goal_reaching_success(
    actor: Any,
    *,
    episodes: int = 50,
    seed: int = 0,
    min_dist: float = 2.0,
    max_dist: float = 6.0,
    max_steps: int = 300,
    deterministic: bool = True,
) -> dict[str, float]:
    """Success rate of a goal-reaching ``actor`` (a :mod:`torchrl_dmg.datagen.behaviour` SAC actor)
    in open space: each episode one target ``U(min_dist, max_dist)`` away in a uniformly
    random direction (no targets-ahead share), success when the ant comes within the reach
    radius in ``max_steps`` steps (a fall or a flip ends the episode as a failure, counted
    in ``falls``). Episodes run side by side (episode ``i`` seeded ``seed + i``).

    Returns ``success_rate`` (0..1), ``episodes``, ``mean_steps_to_reach`` (successes only;
    None without any) and ``falls``.
    """
    envs = [
        AntGoalEnv(min_dist=min_dist, max_dist=max_dist, forward_fraction=0.0)
        for _ in range(episodes)
    ]
    generator = torch.Generator().manual_seed(seed)
    try:
        obs = [env.reset(seed=seed + i)[0] for i, env in enumerate(envs)]
        reached_at = np.full(episodes, -1)
        falls = 0
        active = list(range(episodes))
        for t in range(max_steps):
            if not active:
                break
            actions = act(actor, np.stack([obs[i] for i in active]), deterministic, generator)
            still = []
            for i, a in zip(active, actions, strict=True):
                obs[i], _, terminated, _, info = envs[i].step(a)
                if info["reached"]:
                    reached_at[i] = t + 1
                elif terminated:
                    falls += 1
                else:
                    still.append(i)
            active = still
    finally:
        for env in envs:
            env.close()
    ok = reached_at > 0
    return {
        "success_rate": float(ok.mean()),
        "episodes": int(episodes),
        "mean_steps_to_reach": float(reached_at[ok].mean()) if ok.any() else None,
        "falls": int(falls),
    }


def ship_ant_policy(
    run_dir: str | os.PathLike,
    *,
    policy_dir: str | os.PathLike | None = None,
    candidates: int = 3,
    episodes: int = 50,
    mazes: Sequence[str] = ("umaze", "medium", "large"),
    seed: int = 1_000,
    training: str | None = None,
) -> dict[str, Any]:
    """Pick and ship the goal-reaching ant of a ``recipes/train_behaviour.py env=antgoal``
    run: the ``candidates`` checkpoints with the best evaluation return are measured on
    open-space target reaching (:func:`goal_reaching_success`) and as
    the navigator of ``mazes[0]`` (:func:`navigator_success`), ``episodes`` episodes each.
    The one that reaches that maze's goal most often (the ant is there to make maze data;
    ties: open-space success, then the later step) is written to
    ``policy_dir/antgoal.pt`` and measured as the navigator of the other mazes too. The
    record goes to ``policies.json`` under ``"antgoal"``, with every candidate's figures
    and ``training`` (how the run was made: its command and machine) when given."""

    out = Path(policy_dir or POLICY_DIR)
    out.mkdir(parents=True, exist_ok=True)
    rows = evaluated_checkpoints(run_dir)
    paths = {step: path for step, _, path in rows}
    best = sorted(rows, key=lambda r: r[1], reverse=True)[: max(1, candidates)]
    first_maze = mazes[0]
    measured = []
    for step, ret, path in best:
        actor, _ = load_behaviour_actor(path)
        success = goal_reaching_success(actor, episodes=episodes, seed=seed)
        nav = navigator_success(first_maze, episodes=episodes, seed=seed, actor=actor)
        measured.append((nav["success_rate"], success["success_rate"], step, ret, success, nav))
        print(
            f"[ship] antgoal step {step} (eval return {ret:.1f}): navigator {first_maze} "
            f"{100 * nav['success_rate']:.0f}% ({nav['flips']} flips), open-space success "
            f"{100 * success['success_rate']:.0f}% of {episodes}"
        )
    _, _, step, ret, success, first_nav = max(measured, key=lambda m: m[:3])
    ckpt = torch.load(paths[step], map_location="cpu", weights_only=False)
    target = out / "antgoal.pt"
    atomic_write(target, lambda f: torch.save(ckpt, f))
    actor, _ = load_behaviour_actor(target)
    entry: dict[str, Any] = {
        "env": ckpt["env"],
        "checkpoint_step": step,
        "run_steps": rows[-1][0],
        "eval_return_mean": ret,
        "open_space": {
            **success,
            "target_distance": [2.0, 6.0],
            "max_steps": 300,
            "deterministic": True,
        },
        "navigator": {},
        "candidates": [
            {
                "step": m[2],
                "eval_return_mean": m[3],
                f"navigator_{first_maze}": m[0],
                "open_space": m[1],
            }
            for m in measured
        ],
    }
    if training:
        entry["training"] = training
    for maze in mazes:
        nav = (
            first_nav
            if maze == first_maze
            else navigator_success(maze, episodes=episodes, seed=seed, actor=actor)
        )
        entry["navigator"][maze] = {**nav, "action_noise": ACTION_NOISE}
        print(
            f"[ship] navigator {maze}: {100 * nav['success_rate']:.0f}% of {episodes} "
            f"(mean steps of the successes: {nav['mean_steps']}, flips: {nav['flips']})"
        )
    update_policy_record({"antgoal": entry}, out)
    return entry
