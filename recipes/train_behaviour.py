"""Train a SAC behaviour policy for a D4RL-style Gym-MuJoCo dataset.

    python recipes/train_behaviour.py env=hopper                 # 1M env steps, outputs/behaviour/hopper_s0
    python recipes/train_behaviour.py env=walker2d steps=300000 seed=1
    python recipes/train_behaviour.py env=hopper                 # again: resumes where it stopped
    python recipes/train_behaviour.py env=antgoal steps=300000 collector.num_envs=4 \
        optim.updates_per_step=0.5 replay_buffer.mirror_augment=true  # the shipped ant: ~82 min on 2 CPU cores
    python recipes/train_behaviour.py env=antgoal device=cuda compile.mode=cudagraphs \
        collector.num_envs=8 collector.env_processes=true       # on a GPU

Checkpoints (actor + deterministic return) every ``checkpoint_interval`` env steps, every
transition collected and the trainer state all go to ``out_dir`` (a fixed path, so that
rerunning a command continues its run). Prints the best checkpoint, its return and its
D4RL normalised score. The machinery lives in :mod:`torchrl_dmg.datagen.behaviour`.
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
from cli import guarded, preflight
from omegaconf import DictConfig, OmegaConf

from torchrl_dmg.datagen.antmaze.ant_policy import goal_reaching_success
from torchrl_dmg.datagen.behaviour import train_sac
from torchrl_dmg.datagen.behaviour.policy import load_behaviour_actor
from torchrl_dmg.datagen.behaviour.tasks import (
    D4RL_REF_SCORES,
    TASK_IDS,
    d4rl_normalized_score,
    env_short_name,
)
from torchrl_dmg.training.guards import StopRequest


@hydra.main(config_path="config", config_name="train_behaviour", version_base="1.3")
@guarded("train_behaviour")  # the schema check first; one-line failures
def main(cfg: DictConfig) -> dict:
    env = env_short_name(str(cfg.env))  # a *-v5 id is accepted too; anything else: an error
    print(
        f"[behaviour] env={TASK_IDS[env]} steps={cfg.steps} seed={cfg.seed} out_dir={cfg.out_dir}"
    )
    # SIGTERM / Ctrl-C: the trainer state is saved after the current batch, then one line
    stop = StopRequest(f"the same command again (it continues {cfg.out_dir})")
    with stop:
        result = _train(cfg, env, stop)
    return _report(cfg, env, result)


def _train(cfg: DictConfig, env: str, stop: StopRequest) -> dict:
    return train_sac(
        TASK_IDS[env],
        stop=stop,
        total_steps=int(cfg.steps),
        out_dir=cfg.out_dir,
        seed=int(cfg.seed),
        checkpoint_interval=int(cfg.checkpoint_interval),
        eval_episodes=int(cfg.eval.episodes),
        eval_max_steps=cfg.eval.max_steps,
        init_random_steps=int(cfg.collector.init_random_steps),
        frames_per_batch=int(cfg.collector.frames_per_batch),
        updates_per_step=float(cfg.optim.updates_per_step),
        batch_size=int(cfg.optim.batch_size),
        buffer_size=int(cfg.replay_buffer.size),
        num_cells=tuple(cfg.network.num_cells),
        lr=float(cfg.optim.lr),
        gamma=float(cfg.optim.gamma),
        tau=float(cfg.optim.tau),
        update_mode=str(cfg.compile.mode),
        sample_chunk=int(cfg.compile.sample_chunk),
        device=str(cfg.device),
        num_envs=int(cfg.collector.num_envs),
        env_processes=bool(cfg.collector.env_processes),
        init_actor=cfg.warm_start.actor,
        alpha_init=float(cfg.warm_start.alpha_init),
        fixed_alpha=bool(cfg.warm_start.fixed_alpha),
        actor_freeze_updates=int(cfg.warm_start.actor_freeze_updates),
        mirror_augment=bool(cfg.replay_buffer.mirror_augment),
        resume=bool(cfg.resume),
        progress=bool(cfg.progress),
    )


def _report(cfg: DictConfig, env: str, result: dict) -> dict:
    """Print and write the summary: the best checkpoint, its return and score."""
    summary = {
        "env": result["env"],
        "seed": int(cfg.seed),
        "steps": result["steps"],
        "best_step": result["best_step"],
        "best_return": result["best_return"],
        "best_checkpoint": result["best_checkpoint"],
        "final_return": result["final_return"],
        "updates_per_s": round(result["updates_per_s"], 2),
        "env_steps_per_s": round(result["env_steps_per_s"], 2),
        "wall_s": round(result["wall_s"], 1),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    if result["best_return"] is not None and env.startswith("antgoal"):
        actor, _ = load_behaviour_actor(result["best_checkpoint"])
        success = goal_reaching_success(actor, episodes=int(cfg.eval.success_episodes))
        summary["goal_reaching"] = success
        print(
            f"[behaviour] BEST env={result['env']} step={result['best_step']} "
            f"return={result['best_return']:.1f} open-space targets 2-6 away reached in 300 "
            f"steps: {100 * success['success_rate']:.0f}% of {success['episodes']} "
            f"(mean steps {success['mean_steps_to_reach']}, {success['falls']} falls) "
            f"checkpoint={result['best_checkpoint']}"
        )
    elif result["best_return"] is not None:
        random_ret, expert_ret = D4RL_REF_SCORES[env]
        best_score = float(d4rl_normalized_score(env, result["best_return"]))
        final_score = float(d4rl_normalized_score(env, result["final_return"]))
        summary.update(best_normalized_score=best_score, final_normalized_score=final_score)
        print(
            f"[behaviour] BEST env={result['env']} step={result['best_step']} "
            f"return={result['best_return']:.1f} d4rl_normalized_score={best_score:.1f} "
            f"(random {random_ret:g}, expert {expert_ret:g}) checkpoint={result['best_checkpoint']}"
        )
        print(
            f"[behaviour] FINAL env={result['env']} step={result['steps']} "
            f"return={result['final_return']:.1f} d4rl_normalized_score={final_score:.1f}"
        )
    print(
        f"[behaviour] speed (this session): {result['updates_per_s']:.1f} updates/s, "
        f"{result['env_steps_per_s']:.1f} env steps/s; total wall {result['wall_s']:.0f} s"
    )
    Path(cfg.out_dir, "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    preflight()  # an unwritable run directory: one line, before Hydra makes it
    main()
