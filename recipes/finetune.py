"""Offline-to-online DMG (or IQL) fine-tuning on a Minari dataset (spec: "Offline-to-online
fine-tuning"; IQL for the paper's Table 4).

    python recipes/finetune.py                      # local/antmaze/umaze-v3 (made on first use), demo budget
    python recipes/finetune.py budget=paper         # the paper's 1M offline + 1M online steps
    python recipes/finetune.py dataset=local/pointmaze/medium-v0 family=pointmaze budget=demo
    python recipes/finetune.py checkpoint=outputs/offline/<run dir> budget=demo   # from an offline run
    python recipes/finetune.py resume=outputs/finetune/<run dir>      # continue an interrupted run
    python recipes/finetune.py algo=iql checkpoint=outputs/offline/<an algo=iql run>  # IQL

Reads top to bottom: config -> data (every offline transition, room for the online ones, one
buffer) -> networks and loss -> the offline start (a checkpoint, or an offline phase run here)
-> online loop: one env step with the exploring actor, `utd` updates with the λ/ν schedules
(DMG's), evaluations, logging, checkpoints -> final score. The loop is
torchrl_dmg.training.online.train_online.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import hydra
import torch
from algos import algo_name, exploration_policy, make_loss, prepare_rewards, set_discount
from cli import guarded, preflight
from hydra.core.hydra_config import HydraConfig
from offline import train as train_offline_phase
from omegaconf import DictConfig, OmegaConf
from runs import (
    check_same_data,
    check_start_checkpoint,
    command_line,
    resume_finetune,
    score_line,
)
from utils import (
    finetune_schedule,
    load_finetune_dataset,
    make_online_updater,
    offline_phase_config,
    offline_start_state,
    register_resolvers,
    save_config,
    with_offline_config,
)

from torchrl_dmg.data.offline import check_family
from torchrl_dmg.data.samplers import make_finetune_buffer
from torchrl_dmg.envs import evaluate_scores, make_env, make_online_env, max_episode_steps
from torchrl_dmg.modules import RolloutActor
from torchrl_dmg.recording import (
    MetricsLogger,
    describe_machine,
    machine_info,
    open_run_log,
    say,
    write_json,
)
from torchrl_dmg.report.plotting import plot_scores
from torchrl_dmg.training import (
    resolve_device,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from torchrl_dmg.training.checkpoint import (
    finetune_checkpoint_state,
    load_checkpoint_if_any,
    load_offline_checkpoint,
    lock_run_dir,
    seed_before_collector,
)
from torchrl_dmg.training.guards import FiniteGuard, StopRequest
from torchrl_dmg.training.online import (
    OnlineState,
    make_collector,
    online_data,
    to_transitions,
    train_online,
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
    if cfg.data.check_family:
        check_family(cfg.dataset, cfg.family)
    lock_run_dir(run_dir)  # one process per run directory
    if changed:
        save_config(cfg, run_dir)
    open_run_log(run_dir / "finetune.log")  # every session's messages, stamped, appended
    guard = FiniteGuard(run_dir / "checkpoint.pt", interval=cfg.guard.check_interval)
    resume_hint = f"python recipes/finetune.py resume={run_dir}"
    stop = StopRequest(resume_hint).install()
    device = resolve_device(cfg.device)
    torch.set_float32_matmul_precision(cfg.compile.matmul_precision)
    seed_everything(cfg.seed)

    # ---------------------------------------------------------------- data: offline + online, one buffer
    dataset = load_finetune_dataset(cfg, progress=cfg.progress)
    reward_scale = prepare_rewards(cfg, dataset)  # an algorithm's reward scale (IQL's), online too
    algo = algo_name(cfg)
    buffer = make_finetune_buffer(
        dataset.data,
        online_capacity=cfg.online_steps,
        batch_size=cfg.batch_size,
        device=device,
        offline_fraction=cfg.offline_fraction,
    )
    num_offline = len(buffer)
    say(
        f"[dmg] algo={algo} dataset={cfg.dataset} ({dataset.fingerprint}) "
        f"offline_transitions={num_offline} online_steps="
        f"{cfg.online_steps} obs_dim={dataset.obs_dim} action_dim={dataset.action_dim} "
        f"seed={cfg.seed} device={device} run_dir={run_dir}"
    )
    say(f"[dmg] machine: {describe_machine()}", echo=False)

    # ---------------------------------------------------------------- loss, updater, schedules
    loss = make_loss(cfg, dataset, device)
    resume_state = load_checkpoint_if_any(run_dir / "checkpoint.pt") if resuming else None
    if resume_state is not None:
        check_same_data(resume_state, dataset, f"resume={run_dir}")
        start = resume_state["updater"]
    elif cfg.checkpoint:
        saved = load_offline_checkpoint(cfg.checkpoint)
        check_same_data(saved, dataset, f"checkpoint={cfg.checkpoint}")
        start = offline_start_state(cfg, loss)
        say(f"[dmg] starting from the offline checkpoint {cfg.checkpoint}")
    else:  # the offline phase: an offline run in run_dir/offline, continued on a resume
        offline_dir = run_dir / "offline"
        phase_cfg = offline_phase_config(cfg)
        save_config(phase_cfg, offline_dir)
        _, phase = train_offline_phase(
            phase_cfg,
            offline_dir,
            load_checkpoint_if_any(offline_dir / "checkpoint.pt"),
            dataset=dataset,
            resume_hint=resume_hint,
            evaluate=False,
        )
        start = phase.state_dict()
    updater = make_online_updater(loss, cfg, start)  # constant actor lr online
    schedule = finetune_schedule(cfg) if algo == "dmg" else None  # the λ/ν schedule is DMG's
    if cfg.gamma is not None:
        set_discount(loss, cfg.gamma)
    state = OnlineState()  # online env steps, online gradient steps (the schedules' t)
    if resume_state is not None:
        if int(resume_state["num_offline"]) != num_offline:
            raise RuntimeError(
                f"The dataset now has {num_offline} transitions, the run was made with "
                f"{resume_state['num_offline']}: cannot rebuild its replay buffer."
            )
        if resume_state["online_data"].numel():
            buffer.extend(resume_state["online_data"].to(device))
        state.step, state.update_step = int(resume_state["step"]), int(resume_state["update_step"])
        state.start_eval = resume_state["start_eval"]
        say(f"[dmg] resumed {run_dir} at online step {state.step} (the env starts a new episode)")

    # ---------------------------------------------------------------- online env, exploring actor
    actor = RolloutActor(loss)  # the actor with the current weights (deterministic in evaluation)
    env = make_online_env(dataset, device=device)
    policy = exploration_policy(algo, actor, env.action_spec, cfg.exploration.noise)
    seed_before_collector(env, cfg.seed + state.step)  # a resume restarts the episode at `step`
    collector = make_collector(
        env,
        policy,
        total_frames=max(cfg.online_steps - state.step, 0),
        frames_per_batch=cfg.collector.frames_per_batch,
    )

    eval_env = make_env(
        dataset,
        num_envs=cfg.eval.episodes,
        device=device,
        processes=cfg.eval.processes,
    )
    eval_steps = cfg.eval.max_steps or max_episode_steps(dataset)

    def run_eval() -> dict:
        t0 = time.perf_counter()
        result = evaluate_scores(
            eval_env, actor, dataset, max_steps=eval_steps, seed=cfg.seed + 10_000
        )
        seconds = time.perf_counter() - t0
        result["eval_s"] = seconds  # in its eval row, as the offline recipe's
        say(
            f"[dmg] online step {state.step}: {score_line(result)} (evaluation {seconds:.0f} s)",
            echo=False,
        )
        return result

    config = OmegaConf.to_container(cfg, resolve=True)
    logger = MetricsLogger(
        run_dir,
        backend=cfg.logger.backend,
        project=cfg.logger.project,
        config=config,
    )
    logger.truncate_after(state.step if resume_state is not None else -1)
    if resume_state is not None:  # last: nothing built above may shift the generators
        set_rng_state(resume_state["rng"])

    def coefficients(t: int) -> dict[str, float]:
        return schedule.coefficients(t) if schedule is not None else {}

    def checkpoint(state: OnlineState) -> None:
        save_checkpoint(
            run_dir / "checkpoint.pt",
            finetune_checkpoint_state(
                state.step,
                state.update_step,
                updater,
                config,
                dataset,
                online_data=online_data(buffer, num_offline),
                num_offline=num_offline,
                schedule={"t": state.update_step, **coefficients(state.update_step)},
                start_eval=state.start_eval,
            ),
        )

    # ---------------------------------------------------------------- online loop
    result = train_online(
        updater,
        buffer,
        collector,
        state,
        steps=cfg.online_steps,
        logger=logger,
        log_interval=cfg.logger.log_interval,
        evaluate=run_eval,
        eval_interval=cfg.eval.interval,
        checkpoint=checkpoint,
        checkpoint_interval=cfg.checkpoint_interval,
        seed=cfg.seed,
        utd=cfg.utd,
        schedule=schedule,
        to_buffer=partial(  # the offline data's conventions
            to_transitions,
            reward_shift=dataset.reward_shift,
            reward_scale=reward_scale,
            goal_terminal=dataset.goal_terminal,
            device=device,
        ),
        progress=cfg.progress,
        desc=f"{algo} online",
        guard=guard,  # NaN/inf stop (torchrl_dmg.training.guards)
        stop=stop,  # SIGTERM / Ctrl-C: checkpoint, then stop
    )

    # ---------------------------------------------------------------- final score
    step, coefs, start_result = state.step, state.coefs, state.start_eval
    summary = {
        "algo": algo,
        "dataset": cfg.dataset,
        "seed": int(cfg.seed),
        "family": cfg.family,
        "dataset_fingerprint": dataset.fingerprint,
        "offline_checkpoint": cfg.checkpoint,
        "online_steps": int(step),
        "update_steps": int(state.update_step),
        "start_normalized_score": start_result["normalized_score"],
        "config": str(run_dir / "config.yaml"),
        "plot": str(run_dir / "scores.png"),
        **dataset.reference.as_dict(),
        **coefs,
        **result,
        "machine": machine_info(),
    }
    write_json(run_dir / "summary.json", summary)
    plot_scores(
        [run_dir],
        run_dir / "scores.png",
        labels=[f"seed {cfg.seed}"],
        title=f"{algo.upper()} fine-tuning, {cfg.dataset}",
        xlabel="online env steps",
    )
    say(
        f"[dmg] FINAL dataset={cfg.dataset} seed={cfg.seed} online_steps={step} "
        f"normalized_score={result['normalized_score']:.1f} ± {result['normalized_score_std']:.1f} "
        f"(return {result['return_mean']:.1f}, {cfg.eval.episodes} episodes; "
        f"start {start_result['normalized_score']:.1f}) algo={algo} config={run_dir / 'config.yaml'}"
    )
    say(f"[dmg] learning curve: {run_dir / 'scores.png'}")
    return summary


if __name__ == "__main__":
    preflight(lock=True)  # an unwritable or busy run directory: one line, before Hydra
    main()
