"""Offline DMG (or a baseline: IQL, TD3+BC, BC) on a Minari dataset.

    python recipes/offline.py                                  # local PointMaze Medium (generated once)
    python recipes/offline.py algo=iql                         # algo=dmg|iql|td3bc|bc, same harness
    python recipes/offline.py dataset=mujoco/hopper/medium-v0 family=locomotion steps=1000000
    python recipes/offline.py seeds=5                          # 5 seeds trained at once (vmapped)
    python recipes/offline.py resume=outputs/offline/<run dir>  # continue an interrupted run

Reads top to bottom: config -> data -> networks and loss -> update loop with periodic
evaluation, logging and checkpoints -> final score. The machinery lives in torchrl_dmg.
"""

from __future__ import annotations

import time
from pathlib import Path

import hydra
import torch
from algos import algo_name, make_loss, prepare_rewards
from cli import guarded, preflight
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from runs import check_same_data, command_line, logged, resume_offline, score_line
from utils import (
    discount,
    load_dataset,
    make_updater,
    register_resolvers,
    save_config,
    updates_per_call,
    value_init,
)

from torchrl_dmg.data.offline import OfflineDataset, check_family
from torchrl_dmg.data.returns import diagnostic_sample
from torchrl_dmg.data.samplers import DeviceSampler
from torchrl_dmg.envs import evaluate_agents, make_env, max_episode_steps, summarize_seeds
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
    ActorCriticUpdater,
    offline_checkpoint_state,
    resolve_device,
    save_checkpoint,
    seed_everything,
    set_rng_state,
    train_offline,
    value_bounds,
)
from torchrl_dmg.training.checkpoint import lock_run_dir
from torchrl_dmg.training.diagnostics import OverestimationDiagnostic
from torchrl_dmg.training.guards import FiniteGuard, StopRequest

register_resolvers()


@hydra.main(config_path="config", config_name="offline", version_base="1.3")
@guarded("offline")  # the schema check first; one-line failures; no stub run directories
def main(cfg: DictConfig) -> dict:
    # ---------------------------------------------------------------- run directory
    resume_state = None
    if cfg.resume:  # the run's own config; only steps= may change (checked before any write)
        run_dir = Path(cfg.resume)
        cfg, resume_state, changed = resume_offline(cfg, command_line())
        lock_run_dir(run_dir)  # one process per run directory
        if changed:
            save_config(cfg, run_dir)
    else:
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        lock_run_dir(run_dir)
        save_config(cfg, run_dir)
    open_run_log(run_dir / "offline.log")  # every session's messages, stamped, appended
    summary, _ = train(cfg, run_dir, resume_state)
    return summary


def train(
    cfg: DictConfig,
    run_dir: Path,
    resume_state: dict | None = None,
    *,
    dataset: OfflineDataset | None = None,
    resume_hint: str | None = None,
    evaluate: bool = True,
) -> tuple[dict | None, ActorCriticUpdater]:
    """The offline run of ``cfg`` in ``run_dir`` (from ``resume_state``, a checkpoint of
    it), also fine-tuning's offline phase (``recipes/finetune.py``): that one passes its
    ``dataset`` (rewards already prepared) and ``evaluate=False`` (no evaluations, no
    summary: its online phase scores the start). Returns the summary and the updater."""
    device = resolve_device(cfg.device)
    torch.set_float32_matmul_precision(cfg.compile.matmul_precision)
    seeds = [cfg.seed + i for i in range(cfg.seeds)]
    stacked = len(seeds) > 1  # N agents: stacked parameters, one vmapped update
    if cfg.data.check_family:
        check_family(cfg.dataset, cfg.family)
    seed_everything(cfg.seed)

    # ---------------------------------------------------------------- data
    if dataset is None:
        dataset = load_dataset(cfg)  # a local dataset this project makes: generated once
        prepare_rewards(cfg, dataset)  # an algorithm's reward scale (IQL on Gym-MuJoCo)
    algo, gamma = algo_name(cfg), discount(cfg)
    # the whole dataset on the training device; [seeds, batch] draws when stacked
    sampler = DeviceSampler(
        dataset.data,
        batch_size=cfg.batch_size,
        num_seeds=len(seeds) if stacked else None,
        device=device,
    )
    say(
        f"[dmg] algo={algo} dataset={cfg.dataset} ({dataset.fingerprint}) transitions={len(sampler)} "
        f"obs_dim={dataset.obs_dim} "
        f"action_dim={dataset.action_dim} seeds={seeds} device={device} run_dir={run_dir}"
    )
    say(f"[dmg] scores: {dataset.reference.describe()}")
    say(f"[dmg] machine: {describe_machine()}", echo=False)

    # ---------------------------------------------------------------- losses and updater
    losses = []
    for seed in seeds:  # each agent initialised from its own seed
        seed_everything(seed)
        losses.append(make_loss(cfg, dataset, device))
    if cfg.network.value_init is not None:
        say(
            f"[dmg] critics and V start at {value_init(cfg, dataset):.2f} "
            f"(network.value_init={cfg.network.value_init})"
        )
    seed_everything(cfg.seed)
    updater = make_updater(cfg, losses if stacked else losses[0], steps=cfg.steps)
    step = 0
    if resume_state is not None:
        check_same_data(resume_state, dataset, f"resume={run_dir}")
        updater.load_state_dict(resume_state["updater"])
        set_rng_state(resume_state["rng"])
        step = int(resume_state["step"])
        say(f"[dmg] resumed {run_dir} at step {step}")

    per_call = updates_per_call(cfg, device, step)  # compile.updates_per_call, auto resolved
    say(
        f"[dmg] update: compile.mode={cfg.compile.mode} resolved to {updater.mode}, {per_call} iteration(s) per call"
    )

    run_eval, diagnostic = None, None
    if evaluate:
        # one batched env: cfg.eval.episodes copies per agent, all agents acting at once
        eval_env = make_env(
            dataset,
            num_envs=cfg.eval.episodes * len(seeds),
            device=device,
            processes=cfg.eval.processes,
        )
        eval_steps = cfg.eval.max_steps or max_episode_steps(dataset)
        policy = updater.policy()
        # overestimation: Q on fixed dataset transitions beside their Monte-Carlo returns
        diagnostic = OverestimationDiagnostic(
            updater,
            diagnostic_sample(
                dataset.data,
                gamma,
                size=cfg.diagnostic.size,
                seed=cfg.diagnostic.seed,
                drop_truncated_tails=cfg.diagnostic.drop_truncated_tails,
            ).to(device),
            seeds,
        )

        def run_eval(step: int) -> dict:
            per_seed = evaluate_agents(
                eval_env,
                policy,
                dataset,
                num_agents=len(seeds),
                max_steps=eval_steps,
                seed=cfg.seed + 10_000,
            )
            return summarize_seeds(seeds, per_seed)

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
        t0 = time.perf_counter()
        result = run_eval(step)
        seconds = time.perf_counter() - t0
        logger.log(step, "eval", {**result, "eval_s": seconds})
        say(
            f"[dmg] step {step}: {score_line(result, seeds)} (evaluation {seconds:.0f} s)",
            echo=False,
        )
        return result["normalized_score"]

    # ---------------------------------------------------------------- training loop
    stop = StopRequest(resume_hint or f"python recipes/offline.py resume={run_dir}")
    with stop:  # SIGTERM / Ctrl-C: checkpoint at the next iteration boundary, then stop
        step = train_offline(
            updater,
            sampler,
            start=step,
            steps=cfg.steps,
            logger=logger,
            log_interval=cfg.logger.log_interval,
            checkpoint=checkpoint,
            checkpoint_interval=cfg.checkpoint.interval,
            evaluate=evaluate_and_log if evaluate else None,
            eval_interval=cfg.eval.interval if evaluate else 0,
            progress=cfg.progress,
            updates_per_call=per_call,
            value_bounds=value_bounds(dataset.data["next", "reward"], gamma),
            diagnostic=diagnostic,
            desc=algo if evaluate else f"{algo} offline",
            guard=FiniteGuard(run_dir / "checkpoint.pt", interval=cfg.guard.check_interval),
            stop=stop,
            stop_on_q_out_of_bounds=cfg.guard.stop_on_q_out_of_bounds,
        )
    if not evaluate:
        checkpoint(step)
        return None, updater

    # ---------------------------------------------------------------- final score
    t0 = time.perf_counter()
    result = run_eval(step)
    if not logged(logger, step, "eval"):  # a resumed finished run has its final row
        logger.log(step, "eval", {**result, "eval_s": time.perf_counter() - t0})
        checkpoint(step)
    summary = {
        "algo": algo,
        "dataset": cfg.dataset,
        "seed": int(cfg.seed),
        "seeds": seeds,
        "steps": int(step),
        "family": cfg.family,
        "dataset_fingerprint": dataset.fingerprint,
        "transitions": len(dataset.data),
        "updates_per_call": per_call,
        "config": str(run_dir / "config.yaml"),
        "plot": str(run_dir / "scores.png"),
        **dataset.reference.as_dict(),
        **result,
        "machine": machine_info(),
    }
    write_json(run_dir / "summary.json", summary)
    plot_scores(
        [run_dir],
        run_dir / "scores.png",
        labels=[f"seeds {seeds[0]}-{seeds[-1]}" if stacked else f"seed {seeds[0]}"],
        title=f"{algo.upper()} offline, {cfg.dataset}",
        xlabel="gradient steps",
    )
    for seed in seeds:
        say(
            f"[dmg] FINAL dataset={cfg.dataset} seed={seed} steps={step} "
            f"normalized_score={result[f'normalized_score/s{seed}']:.1f} "
            f"± {result[f'normalized_score_std/s{seed}']:.1f} "
            f"(return {result[f'return_mean/s{seed}']:.1f}, {cfg.eval.episodes} episodes) "
            f"algo={algo} config={run_dir / 'config.yaml'}"
        )
    if stacked:
        say(
            f"[dmg] FINAL dataset={cfg.dataset} seeds={seeds} steps={step} normalized_score "
            f"mean over seeds {result['normalized_score']:.1f} ± {result['normalized_score_std']:.1f} "
            f"(std across seeds) algo={algo} config={run_dir / 'config.yaml'}"
        )
    say(f"[dmg] learning curve: {run_dir / 'scores.png'}")
    return summary, updater


if __name__ == "__main__":
    preflight(lock=True)  # an unwritable or busy run directory: one line, before Hydra
    main()
