"""Offline DMG on a Minari dataset.

    python recipes/offline.py                                  # local PointMaze Medium (generated once)
    python recipes/offline.py dataset=mujoco/hopper/medium-v0 family=locomotion steps=1000000
    python recipes/offline.py resume=outputs/offline/<run dir>  # continue an interrupted run

Reads top to bottom: config -> data -> networks and loss -> update loop with periodic
evaluation, logging and checkpoints -> final score. The machinery lives in torchrl_dmg.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from torchrl_dmg.data.offline import load_offline_dataset
from torchrl_dmg.envs import evaluate_scores, make_env, max_episode_steps
from torchrl_dmg.recording import MetricsLogger, save_config, write_json
from torchrl_dmg.training import (
    load_checkpoint,
    make_dmg_loss,
    make_offline_buffer,
    make_updater,
    offline_checkpoint_state,
    resolve_device,
    save_checkpoint,
    seed_everything,
    set_rng_state,
    train_offline,
)


@hydra.main(config_path="config", config_name="offline", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    # ---------------------------------------------------------------- run directory
    resume_state = None
    if cfg.resume:
        run_dir = Path(cfg.resume)
        resume_state = load_checkpoint(run_dir / "checkpoint.pt")
        saved = OmegaConf.create(resume_state["config"])
        saved.steps = cfg.steps  # the only thing a resume may change: train longer
        cfg = saved
    else:
        run_dir = Path(HydraConfig.get().runtime.output_dir)
    save_config(cfg, run_dir)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)

    # ---------------------------------------------------------------- data
    dataset = load_offline_dataset(
        cfg.dataset,
        obs_keys=cfg.data.obs_keys,
        normalize_obs=cfg.data.normalize_obs,
        reward_shift=cfg.data.reward_shift,
        download=cfg.data.download,
        progress=cfg.progress,
    )
    buffer = make_offline_buffer(dataset.data, batch_size=cfg.batch_size, device=device)
    print(
        f"[dmg] dataset={cfg.dataset} transitions={len(buffer)} obs_dim={dataset.obs_dim} "
        f"action_dim={dataset.action_dim} seed={cfg.seed} device={device} run_dir={run_dir}"
    )

    # ---------------------------------------------------------------- loss and updater
    loss = make_dmg_loss(cfg, dataset, device)
    updater = make_updater(cfg, loss, steps=cfg.steps)
    step = 0
    if resume_state is not None:
        updater.load_state_dict(resume_state["updater"])
        set_rng_state(resume_state["rng"])
        step = int(resume_state["step"])
        print(f"[dmg] resumed {run_dir} at step {step}")

    eval_env = make_env(dataset, num_envs=cfg.eval.episodes, device=device)
    eval_steps = cfg.eval.max_steps or max_episode_steps(dataset)
    actor = loss.actor_network  # functional module; parameters are swapped in at eval

    def run_eval(step: int) -> dict:
        with loss.actor_network_params.to_module(actor):
            return evaluate_scores(
                eval_env, actor, dataset, max_steps=eval_steps, seed=cfg.seed + 10_000
            )

    config = OmegaConf.to_container(cfg, resolve=True)
    logger = MetricsLogger(
        run_dir, backend=cfg.logger.backend, project=cfg.logger.project, config=config
    )
    logger.truncate_after(step)

    def checkpoint(step: int) -> None:
        save_checkpoint(
            run_dir / "checkpoint.pt", offline_checkpoint_state(step, updater, config, dataset)
        )

    def evaluate_and_log(step: int) -> float:
        result = run_eval(step)
        logger.log(step, "eval", result)
        return result["normalized_score"]

    # ---------------------------------------------------------------- training loop
    step = train_offline(
        updater,
        buffer,
        start=step,
        steps=cfg.steps,
        logger=logger,
        log_interval=cfg.logger.log_interval,
        checkpoint=checkpoint,
        checkpoint_interval=cfg.checkpoint.interval,
        evaluate=evaluate_and_log,
        eval_interval=cfg.eval.interval,
        progress=cfg.progress,
    )

    # ---------------------------------------------------------------- final score
    result = run_eval(step)
    logger.log(step, "eval", result)
    checkpoint(step)
    summary = {
        "dataset": cfg.dataset,
        "seed": int(cfg.seed),
        "steps": int(step),
        "family": cfg.family,
        "config": str(run_dir / "config.yaml"),
        **result,
    }
    write_json(run_dir / "summary.json", summary)
    print(
        f"[dmg] FINAL dataset={cfg.dataset} seed={cfg.seed} steps={step} "
        f"normalized_score={result['normalized_score']:.1f} ± {result['normalized_score_std']:.1f} "
        f"(return {result['return_mean']:.1f}, {cfg.eval.episodes} episodes) "
        f"config={run_dir / 'config.yaml'}"
    )
    return summary


if __name__ == "__main__":
    main()
