"""Checks of a run directory or checkpoint against the recipe and the command line, made
before anything is written: ``resume=`` continues only a run of the same recipe with its
own settings, and ``checkpoint=`` starts fine-tuning only from an offline run of the same
dataset. Each refusal is one line (:class:`~torchrl_dmg.errors.RunRefused`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from torchrl_dmg.errors import RunRefused
from torchrl_dmg.training.checkpoint import load_checkpoint_safely, migrate_config, previous_path

#: keys a resume may be given besides the run's own values
RESUME_MAY_CHANGE = {"resume", "steps", "online_steps", "progress"}


def override_keys(overrides: Sequence[str]) -> list[str]:
    """The keys of Hydra command-line overrides (``+a.b=1`` -> ``a.b``), Hydra's own and
    the config groups' selections excluded."""
    keys = [o.split("=", 1)[0].lstrip("+~") for o in overrides]
    return [k for k in keys if not k.startswith("hydra.")]


def command_line() -> list[str]:
    """This command's overrides (empty outside Hydra)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except Exception:  # noqa: BLE001 - outside a Hydra run
        return []


def recipe_of(state: dict[str, Any]) -> str:
    """The recipe that wrote a checkpoint: ``"offline"`` or ``"finetune"``."""
    return state["recipe"]


def checkpoint_in(path: Path) -> Path:
    return path / "checkpoint.pt" if path.is_dir() else path


def _run_dir(value: str) -> Path:
    run_dir = Path(value)
    if not run_dir.is_dir():
        raise RunRefused(
            f"resume={value} is not a run directory; give the directory of an earlier run, "
            "e.g. resume=outputs/offline/<run dir>"
        )
    return run_dir


def _same_settings(cfg: DictConfig, saved: DictConfig, overrides: Sequence[str], run: Path) -> None:
    for key in override_keys(overrides):
        if key in RESUME_MAY_CHANGE:
            continue
        given = OmegaConf.select(cfg, key, default=None)
        kept = OmegaConf.select(saved, key, default=None)
        if _plain(given) != _plain(kept):
            raise RunRefused(
                f"resume={run}: {key}={_plain(given)} differs from the run's {key}="
                f"{_plain(kept)}; a resume continues a run as it was configured (only the "
                "step budget may change); start a new run for other settings"
            )


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def resume_offline(cfg: DictConfig, overrides: Sequence[str]) -> tuple[DictConfig, dict, bool]:
    """The config and checkpoint of the offline run ``cfg.resume`` and whether its
    ``config.yaml`` must be rewritten (a new ``steps=``); refuses a fine-tuning run, a
    run without a readable checkpoint, or command-line settings that differ from the run's."""
    run_dir = _run_dir(cfg.resume)
    path = run_dir / "checkpoint.pt"
    if not path.exists() and not previous_path(path).exists():
        if (run_dir / "config.yaml").exists() and "online_steps" in OmegaConf.load(
            run_dir / "config.yaml"
        ):
            raise _other_recipe(run_dir, "finetune")
        raise RunRefused(f"resume={run_dir}: no checkpoint.pt there; nothing to resume")
    state = load_checkpoint_safely(path)
    if recipe_of(state) != "offline":
        raise _other_recipe(run_dir, "finetune")
    saved = OmegaConf.create(state["config"])
    _same_settings(cfg, saved, overrides, run_dir)
    new_steps = "steps" in override_keys(overrides) and int(cfg.steps) != int(saved.steps)
    if new_steps:
        if int(cfg.steps) < int(state["step"]):
            raise RunRefused(
                f"resume={run_dir}: steps={cfg.steps} is below the run's checkpoint step "
                f"{state['step']}; e.g. steps={saved.steps}"
            )
        saved.steps = int(cfg.steps)
    return saved, state, new_steps


def resume_finetune(cfg: DictConfig, overrides: Sequence[str]) -> tuple[DictConfig, bool]:
    """The config of the fine-tuning run ``cfg.resume`` and whether it changes (a new
    ``online_steps=``); refuses an offline run and settings that differ from the run's."""
    run_dir = _run_dir(cfg.resume)
    if not (run_dir / "config.yaml").is_file():
        raise RunRefused(f"resume={run_dir}: no config.yaml there; not a run directory")
    saved = OmegaConf.load(run_dir / "config.yaml")
    if "online_steps" not in saved:
        raise _other_recipe(run_dir, "offline")
    saved = OmegaConf.create(migrate_config(OmegaConf.to_container(saved), "finetune"))
    path = run_dir / "checkpoint.pt"
    if path.exists() or previous_path(path).exists():
        state = load_checkpoint_safely(path)
        if recipe_of(state) != "finetune":
            raise _other_recipe(run_dir, "offline")
        done = int(state["step"])
        if int(cfg.online_steps) < done and "online_steps" in override_keys(overrides):
            raise RunRefused(
                f"resume={run_dir}: online_steps={cfg.online_steps} is below the run's "
                f"checkpoint step {done}; e.g. online_steps={saved.online_steps}"
            )
    _same_settings(cfg, saved, overrides, run_dir)
    changed = "online_steps" in override_keys(overrides) and int(cfg.online_steps) != int(
        saved.online_steps
    )
    if changed:
        saved.online_steps = int(cfg.online_steps)
    return saved, changed


def _other_recipe(run_dir: Path, recipe: str) -> RunRefused:
    names = {"offline": "an offline run", "finetune": "a fine-tuning run"}
    return RunRefused(
        f"resume={run_dir} is {names[recipe]}; resume it with its own recipe: "
        f"python recipes/{recipe}.py resume={run_dir}"
    )


def check_start_checkpoint(cfg: DictConfig, overrides: Sequence[str]) -> None:
    """``finetune.py checkpoint=``: an offline checkpoint that loads, of the algorithm asked
    for (``algo``) and of the dataset given on the command line (if one is), holding the
    agent ``checkpoint_seed`` names."""
    path = checkpoint_in(Path(cfg.checkpoint))
    if not path.exists() and not previous_path(path).exists():
        raise RunRefused(
            f"checkpoint={cfg.checkpoint}: no checkpoint there; give an offline run directory "
            "or its checkpoint.pt, e.g. checkpoint=outputs/offline/<run dir>"
        )
    state = load_checkpoint_safely(path)
    if "recipe" not in state:
        raise RunRefused(f"checkpoint={cfg.checkpoint} is not a DMG checkpoint")
    if recipe_of(state) != "offline":
        raise RunRefused(
            f"checkpoint={cfg.checkpoint} is a fine-tuning checkpoint; start from an offline "
            "one (a recipes/offline.py run, or <fine-tuning run>/offline)"
        )
    saved = state["config"]
    asked, trained = str(cfg.algo), str(saved["algo"])
    if asked != trained:
        raise RunRefused(
            f"checkpoint={cfg.checkpoint} is an offline {trained} run, not algo={asked}; "
            f"fine-tune it with algo={trained}, or start from an offline {asked} run"
        )
    if "dataset" in override_keys(overrides) and cfg.dataset != saved["dataset"]:
        raise RunRefused(
            f"checkpoint={cfg.checkpoint} was trained on {saved['dataset']}, not "
            f"dataset={cfg.dataset}; fine-tune it on its own data (drop dataset=) or train "
            f"an offline run on {cfg.dataset}"
        )
    seeds = [int(saved["seed"]) + i for i in range(int(saved["seeds"]))]
    choice = cfg.get("checkpoint_seed")
    if choice is not None and int(choice) not in seeds:
        raise RunRefused(
            f"checkpoint_seed={choice}: {cfg.checkpoint} holds the agent(s) of seed(s) "
            f"{seeds}; e.g. checkpoint_seed={seeds[0]}"
        )


def check_same_data(state: dict[str, Any], dataset: Any, source: str) -> None:
    """The checkpoint's data are the dataset's: the same fingerprint
    (:func:`~torchrl_dmg.data.offline.data_fingerprint`, kept by checkpoints since
    2026-12-07) and the same observation normalisation; otherwise the data changed
    (regenerated on another machine, another dataset under the same id) since it was
    trained."""
    saved, now = state.get("dataset_fingerprint"), getattr(dataset, "fingerprint", "")
    if saved and now and saved != now:
        raise RunRefused(
            f"{source} was trained on other data than {dataset.dataset_id} holds now "
            f"(fingerprint {saved}, now {now}: regenerated, on another machine or by another "
            "MuJoCo build, or another dataset); train a new run on this data, or restore "
            "the dataset it was trained on"
        )
    for key in ("obs_loc", "obs_scale"):
        saved, now = state.get(key), getattr(dataset, key, None)
        if saved is None or now is None:
            continue
        if saved.shape != now.shape or not torch.allclose(saved.cpu().float(), now.cpu().float()):
            raise RunRefused(
                f"{source} was trained on other data than {dataset.dataset_id} holds now "
                f"(its observation statistics differ: regenerated or another dataset); "
                "train a new run on this data"
            )


def logged(logger: Any, step: int, kind: str) -> bool:
    """Whether ``logger`` (a :class:`~torchrl_dmg.recording.MetricsLogger`) holds a
    ``kind`` row at ``step`` (resuming a finished run must not log its final row twice)."""
    return logger.has_row(step, kind)


def score_line(result: dict[str, Any], seeds: Sequence[int] | None = None) -> str:
    """An evaluation's result in one line for the run's log: the normalised score ± its std
    over episodes and the mean return; for stacked seeds each seed's score and their mean."""
    if seeds is None or len(seeds) == 1:
        return (
            f"normalized_score={result['normalized_score']:.1f} "
            f"± {result['normalized_score_std']:.1f} (return {result['return_mean']:.4g})"
        )
    each = ", ".join(f"s{s} {result[f'normalized_score/s{s}']:.1f}" for s in seeds)
    return f"normalized_score {each}; mean over seeds {result['normalized_score']:.1f}"
