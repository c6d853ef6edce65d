"""Offline-to-online DMG fine-tuning on a Minari dataset (spec: "Offline-to-online fine-tuning").

    python recipes/finetune.py                      # D4RL/antmaze/umaze-v1, paper budget (1M + 1M)
    python recipes/finetune.py dataset=local/pointmaze/medium-v0 family=pointmaze budget=demo
    python recipes/finetune.py checkpoint=outputs/offline/<run dir> budget=demo   # from an offline run
    python recipes/finetune.py resume=outputs/finetune/<run dir>      # continue an interrupted run

Reads top to bottom: config -> data (every offline transition, room for the online ones, one
buffer) -> networks and loss -> the offline start (a checkpoint, or an offline phase run here)
-> online loop: one env step with the exploring actor, `utd` updates with the λ/ν schedules,
evaluations, logging, checkpoints -> final score. The machinery lives in torchrl_dmg.training.online.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import hydra
import torch
from cli import guarded, preflight
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from runs import check_same_data, check_start_checkpoint, command_line, logged, resume_finetune
from tqdm.auto import tqdm
from utils import (
    check_config,
    finetune_schedule,
    load_finetune_dataset,
    make_dmg_loss,
    make_online_updater,
    offline_start_state,
    register_resolvers,
    run_offline_phase,
    save_config,
    with_offline_config,
)

from torchrl_dmg.data.offline import check_family
from torchrl_dmg.data.samplers import make_finetune_buffer
from torchrl_dmg.envs import evaluate_scores, make_env, make_online_env, max_episode_steps
from torchrl_dmg.modules import RolloutActor, make_exploration_policy
from torchrl_dmg.recording import MetricsLogger, write_json
from torchrl_dmg.report.plotting import plot_scores
from torchrl_dmg.training import (
    load_checkpoint,
    resolve_device,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from torchrl_dmg.training.checkpoint import (
    load_offline_checkpoint,
    previous_path,
    restart_collection,
    seed_before_collector,
)
from torchrl_dmg.training.guards import FiniteGuard, StopRequest
from torchrl_dmg.training.online import (
    crossed,
    finished_episode_returns,
    make_collector,
    online_data,
    to_transitions,
)

register_resolvers()


@hydra.main(config_path="config", config_name="finetune", version_base="1.3")
@guarded("finetune")  # the schema check first; one-line failures; no stub run directories
def main(cfg: DictConfig) -> dict:
    # ---------------------------------------------------------------- run directory
    resuming = bool(cfg.resume)
    changed = True
    if resuming:  # the run's own config; only online_steps= may change (checked before writing)
        run_dir = Path(cfg.resume)
        cfg, changed = resume_finetune(cfg, command_line())
    else:
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        if cfg.checkpoint:  # an offline run of this dataset, holding checkpoint_seed's agent
            check_start_checkpoint(cfg, command_line())
        # a checkpoint fixes dataset, data, network, loss (and its family's eval settings)
        cfg = with_offline_config(cfg, HydraConfig.get().overrides.task)
    check_config(cfg)
    if cfg.data.get("check_family", True):
        check_family(cfg.dataset, cfg.family)
    if changed:
        save_config(cfg, run_dir)
    guard = FiniteGuard(
        run_dir / "checkpoint.pt", interval=(cfg.get("guard") or {}).get("check_interval", 1)
    )
    stop = StopRequest(f"python recipes/finetune.py resume={run_dir}").install()
    device = resolve_device(cfg.device)
    torch.set_float32_matmul_precision(cfg.compile.get("matmul_precision", "highest"))
    seed_everything(cfg.seed)

    # ---------------------------------------------------------------- data: offline + online, one buffer
    dataset = load_finetune_dataset(cfg, progress=cfg.progress)
    buffer = make_finetune_buffer(
        dataset.data,
        online_capacity=cfg.online_steps,
        batch_size=cfg.batch_size,
        device=device,
        offline_fraction=cfg.offline_fraction,
    )
    num_offline = len(buffer)
    print(
        f"[dmg] dataset={cfg.dataset} offline_transitions={num_offline} online_steps="
        f"{cfg.online_steps} obs_dim={dataset.obs_dim} action_dim={dataset.action_dim} "
        f"seed={cfg.seed} device={device} run_dir={run_dir}"
    )

    # ---------------------------------------------------------------- loss, updater, schedules
    loss = make_dmg_loss(cfg, dataset, device)
    resume_state = None
    ckpt = run_dir / "checkpoint.pt"
    if resuming and any(p.exists() for p in (ckpt, previous_path(ckpt))):
        resume_state = load_checkpoint(ckpt)
        check_same_data(resume_state, dataset, f"resume={run_dir}")
        start = resume_state["updater"]
    elif cfg.checkpoint:
        saved = load_offline_checkpoint(cfg.checkpoint)
        check_same_data(saved, dataset, f"checkpoint={cfg.checkpoint}")
        start = offline_start_state(cfg, loss)
        print(f"[dmg] starting from the offline checkpoint {cfg.checkpoint}")
    else:  # the offline phase, here (continues from run_dir/offline/checkpoint.pt on a resume)
        offline_dir = run_dir / "offline"
        start = run_offline_phase(
            cfg,
            loss,
            buffer,
            dataset,
            offline_dir,
            guard=FiniteGuard(offline_dir / "checkpoint.pt", interval=guard.interval),
            stop=stop,
        )
    updater = make_online_updater(loss, cfg, start)  # constant actor lr online
    schedule = finetune_schedule(cfg)
    if cfg.gamma is not None:
        loss.set_coefficients(gamma=cfg.gamma)
    step = update_step = 0  # online env steps; online gradient steps (the schedules' t)
    start_result = None
    if resume_state is not None:
        if int(resume_state["num_offline"]) != num_offline:
            raise RuntimeError(
                f"The dataset now has {num_offline} transitions, the run was made with "
                f"{resume_state['num_offline']}: cannot rebuild its replay buffer."
            )
        if resume_state["online_data"].numel():
            buffer.extend(resume_state["online_data"].to(device))
        step, update_step = int(resume_state["step"]), int(resume_state["update_step"])
        start_result = resume_state["start_eval"]
        print(f"[dmg] resumed {run_dir} at online step {step} (the env starts a new episode)")
    coefs = schedule.apply(loss, update_step)

    # ---------------------------------------------------------------- online env, exploring actor
    actor = RolloutActor(loss)  # the deterministic actor with the current weights
    env = make_online_env(dataset, device=device)
    policy = make_exploration_policy(actor, env.action_spec, noise=cfg.exploration.noise)
    seed_before_collector(env, cfg.seed + step)  # a resume restarts the episode at `step`
    collector = make_collector(
        env,
        policy,
        total_frames=max(cfg.online_steps - step, 0),
        frames_per_batch=cfg.collector.frames_per_batch,
    )

    eval_env = make_env(
        dataset,
        num_envs=cfg.eval.episodes,
        device=device,
        processes=bool(cfg.eval.get("processes", False)),
    )
    eval_steps = cfg.eval.max_steps or max_episode_steps(dataset)

    def run_eval() -> dict:
        return evaluate_scores(
            eval_env, actor, dataset, max_steps=eval_steps, seed=cfg.seed + 10_000
        )

    logger = MetricsLogger(
        run_dir,
        backend=cfg.logger.backend,
        project=cfg.logger.project,
        config=OmegaConf.to_container(cfg, resolve=True),
    )
    logger.truncate_after(step if resume_state is not None else -1)
    if resume_state is not None:  # last: nothing built above may shift the generators
        set_rng_state(resume_state["rng"])

    def checkpoint(step: int, update_step: int) -> None:
        save_checkpoint(
            run_dir / "checkpoint.pt",
            {
                "step": step,
                "update_step": update_step,
                "updater": updater.state_dict(),
                "online_data": online_data(buffer, num_offline),
                "num_offline": num_offline,
                "schedule": {"t": update_step, **schedule.coefficients(update_step)},
                "start_eval": start_result,
                "rng": rng_state(),
                "config": OmegaConf.to_container(cfg, resolve=True),
                "obs_loc": dataset.obs_loc,
                "obs_scale": dataset.obs_scale,
                "dataset_id": cfg.dataset,
            },
        )

    # ---------------------------------------------------------------- online loop
    if start_result is None:  # the offline policy's score, before any online step
        start_result = run_eval()
        logger.log(0, "eval", {**start_result, **coefs})
    last_score = start_result["normalized_score"] if step == 0 else float("nan")
    bar = tqdm(
        total=cfg.online_steps,
        initial=min(step, cfg.online_steps),
        disable=not cfg.progress,
        desc="dmg online",
        unit="step",
        mininterval=1.0,
    )
    bar.set_postfix(score=f"{last_score:.1f}")
    train_time = 0.0
    for batch in collector:
        frames = batch.numel()
        buffer.extend(to_transitions(batch, reward_shift=dataset.reward_shift, device=device))
        for episode_return in finished_episode_returns(batch):
            logger.log(step + frames, "online", {"episode_return": episode_return})
        t0 = time.perf_counter()
        for _ in range(cfg.utd * frames):
            if schedule.changes_at(update_step):
                coefs = schedule.apply(loss, update_step)
            metrics = updater.update(buffer.sample())
            update_step += 1
            guard(update_step, metrics)  # a NaN/inf loss or Q: stop now, name the step
        train_time += time.perf_counter() - t0
        step += frames
        bar.update(frames)
        if crossed(step, frames, cfg.logger.log_interval):
            row = {k: v.item() for k, v in metrics.items()}
            row.update(coefs, actor_lr=updater.actor_lr, buffer_size=len(buffer))
            row["updates_per_s"] = cfg.utd * cfg.logger.log_interval / max(train_time, 1e-9)
            train_time = 0.0
            logger.log(step, "train", row)
        if crossed(step, frames, cfg.eval.interval) and step < cfg.online_steps:
            result = run_eval()
            last_score = result["normalized_score"]
            logger.log(step, "eval", {**result, **coefs})
            bar.set_postfix(score=f"{last_score:.1f}")
        if crossed(step, frames, cfg.checkpoint_interval):
            checkpoint(step, update_step)
            if step < cfg.online_steps:  # as a resume from this checkpoint would
                restart_collection(collector, cfg.seed + step)
        if step < cfg.online_steps:  # SIGTERM / Ctrl-C: checkpoint here, then stop
            stop.check(
                step, functools.partial(checkpoint, update_step=update_step), unit="online step"
            )
    bar.close()
    collector.shutdown()

    # ---------------------------------------------------------------- final score
    result = run_eval()
    if not logged(logger, step, "eval"):  # a resumed finished run has its final row
        logger.log(step, "eval", {**result, **coefs})
        checkpoint(step, update_step)
    summary = {
        "dataset": cfg.dataset,
        "seed": int(cfg.seed),
        "family": cfg.family,
        "offline_checkpoint": cfg.checkpoint,
        "online_steps": int(step),
        "update_steps": int(update_step),
        "start_normalized_score": start_result["normalized_score"],
        "config": str(run_dir / "config.yaml"),
        "plot": str(run_dir / "scores.png"),
        **dataset.reference.as_dict(),
        **coefs,
        **result,
    }
    write_json(run_dir / "summary.json", summary)
    plot_scores(
        [run_dir],
        run_dir / "scores.png",
        labels=[f"seed {cfg.seed}"],
        title=f"DMG fine-tuning, {cfg.dataset}",
        xlabel="online env steps",
    )
    print(
        f"[dmg] FINAL dataset={cfg.dataset} seed={cfg.seed} online_steps={step} "
        f"normalized_score={result['normalized_score']:.1f} ± {result['normalized_score_std']:.1f} "
        f"(return {result['return_mean']:.1f}, {cfg.eval.episodes} episodes; "
        f"start {start_result['normalized_score']:.1f}) config={run_dir / 'config.yaml'}"
    )
    print(f"[dmg] learning curve: {run_dir / 'scores.png'}")
    return summary


if __name__ == "__main__":
    preflight()  # an unwritable run directory: one line, before Hydra makes it
    main()
