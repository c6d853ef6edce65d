"""The typed schema of every recipe's config, checked once at start-up.

Each key has a type and an allowed range with the spec's meaning (λ = ``loss.mixture_coef``
∈ [0, 1], τ = ``loss.expectile`` ∈ (0, 1), ν = ``loss.penalty_coef`` ≥ 0, α =
``loss.temperature`` > 0, steps ≥ 1, intervals ≥ 0, episodes ≥ 1, lr > 0, ...). A value
outside its range is refused in one line naming the key, the value, the range and an example
fix (:class:`~torchrl_dmg.errors.RunRefused`, exit code 2), before anything is written.

The schema lives beside the recipes (the package never imports Hydra or OmegaConf); the
recipes call :func:`validate` through :func:`cli.guarded`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from torchrl_dmg.errors import RunRefused

_MISSING = object()


@dataclass(frozen=True)
class Field:
    """One config key: its type, its allowed values and an example of a good one.

    Args:
        key: the dotted key (``loss.mixture_coef``).
        kind: ``int``, ``float``, ``bool``, ``str``, ``list`` (of ``item``: ints >= 1,
            ``num_cells``; or names, ``data.obs_keys``) or ``object`` (its ``check`` decides).
        low, high: the bounds of a number; ``low_open`` / ``high_open`` exclude them.
        choices: the allowed strings.
        nullable: ``null`` is allowed (it means a documented default).
        example: a good value, shown in the fix.
        meaning: what the key is (a spec symbol), shown in the message.
        check: an extra test returning an error text (or ``None``).
    """

    key: str
    kind: type
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] | None = None
    nullable: bool = False
    example: Any = None
    meaning: str = ""
    check: Callable[[Any], str | None] | None = None
    allowed_text: Callable[[], str] | None = None
    item: type = int

    def allowed(self) -> str:
        """The allowed values, in words: ``a number in [0, 1]``, ``an integer >= 1`` ..."""
        if self.allowed_text is not None:
            text = self.allowed_text()
        elif self.choices is not None:
            text = "one of " + ", ".join(self.choices)
        elif self.kind is bool:
            text = "true or false"
        elif self.kind is list and self.item is str:
            text = "a non-empty list of names"
        elif self.kind is list:
            text = "a list of integers >= 1, e.g. [256,256]"
        elif self.kind is str:
            text = ""  # a free string: its check's message says what is wrong
        else:
            noun = "an integer" if self.kind is int else "a number"
            if self.low is not None and self.high is not None:
                left = "(" if self.low_open else "["
                right = ")" if self.high_open else "]"
                text = f"{noun} in {left}{_num(self.low)}, {_num(self.high)}{right}"
            elif self.low is not None:
                text = f"{noun} {'>' if self.low_open else '>='} {_num(self.low)}"
            elif self.high is not None:
                text = f"{noun} {'<' if self.high_open else '<='} {_num(self.high)}"
            else:
                text = f"{noun} (finite)"
        return (text + " or null" if self.nullable else text) if text else ""

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` (``None``: nothing)."""
        if value is None:
            return None if self.nullable else "must be set"
        if self.kind is bool:
            return None if isinstance(value, bool) else "is not true/false"
        if self.kind is list:
            if not isinstance(value, (list, tuple, ListConfig)) or not len(value):
                return "is not a non-empty list"
            if self.item is str:
                if not all(isinstance(v, str) and v for v in value):
                    return "holds something other than names"
            elif not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value):
                return "holds something other than integers >= 1"
        elif self.kind is str:
            if not isinstance(value, str):
                return "is not a string"
            if self.choices is not None and value not in self.choices:
                return "is not allowed"
        elif self.kind in (int, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return "is not a number" if self.kind is float else "is not an integer"
            if self.kind is int and not isinstance(value, int):
                return "is not an integer"
            if not math.isfinite(value):
                return "is not finite"
            if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
                return "is out of range"
            if self.high is not None and (
                value > self.high or (self.high_open and value == self.high)
            ):
                return "is out of range"
        return self.check(value) if self.check is not None else None

    def message(self, value: Any, problem: str) -> str:
        """The one line: key, value, range, an example fix."""
        meaning = f" ({self.meaning})" if self.meaning else ""
        shown = "null" if value is None else _show(value)
        allowed = self.allowed()
        allowed = f"; allowed: {allowed}" if allowed else ""
        return (
            f"config: {self.key}={shown} {problem}{meaning}{allowed}; "
            f"e.g. {self.key}={_show(self.example)}"
        )


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (ListConfig, list, tuple)):
        return "[" + ",".join(_show(v) for v in value) + "]"
    return str(value)


# ---------------------------------------------------------------- extra checks
def device_problem(value: str) -> str | None:
    """``auto``, ``cpu``, or an accelerator this machine has."""
    import torch

    if value == "auto":
        return None
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        return "is not a device"
    if device.type == "cpu":
        return None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "does not exist here (no CUDA device)"
        if device.index is not None and device.index >= torch.cuda.device_count():
            return f"does not exist here ({torch.cuda.device_count()} CUDA device(s))"
        return None
    if device.type == "mps":
        return None if torch.backends.mps.is_available() else "does not exist here"
    return "is not a device this project trains on"


def dataset_id_problem(value: str) -> str | None:
    from torchrl_dmg.data.local import InvalidDatasetIdError, validate_dataset_id

    try:
        validate_dataset_id(value)
    except InvalidDatasetIdError as err:
        return f"is not a dataset id: {err}"
    return None


def available_devices() -> str:
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cuda = ", cuda" + (f", cuda:0..{count - 1}" if count > 1 else ", cuda:0") if count else ""
    return "auto, cpu" + cuda + " (the devices of this machine)"


# ---------------------------------------------------------------- the schemas
def _f(key: str, kind: type, example: Any, **kw: Any) -> Field:
    return Field(key, kind, example=example, **kw)


def _device(key: str = "device") -> Field:
    return Field(
        key,
        str,
        example="cpu",
        check=device_problem,
        allowed_text=available_devices,
    )


LOSS = (
    _f("loss.mixture_coef", float, 0.25, low=0, high=1, meaning="λ, the mixture coefficient"),
    _f("loss.penalty_coef", float, 0.1, low=0, meaning="ν, the penalty coefficient"),
    _f(
        "loss.expectile",
        float,
        0.7,
        low=0,
        high=1,
        low_open=True,
        high_open=True,
        meaning="τ, the expectile",
    ),
    _f("loss.temperature", float, 3.0, low=0, low_open=True, meaning="α, the inverse temperature"),
    _f("loss.max_weight", float, 3.0, low=0, low_open=True, meaning="w_max, the weight clip"),
    _f("loss.policy_noise", float, 0.2, low=0, meaning="σ of the target policy noise"),
    _f("loss.noise_clip", float, 0.5, low=0, meaning="c, the target noise clip"),
    _f("loss.gamma", float, 0.99, low=0, high=1, high_open=True, meaning="γ, the discount"),
    _f("loss.in_sample_estimator", str, "expectile", choices=("expectile", "xql", "sql")),
    _f("loss.xql_beta", float, 5.0, low=0, low_open=True, meaning="β of XQL"),
    _f("loss.sql_alpha", float, 2.0, low=0, low_open=True, meaning="α of SQL"),
)

FAMILIES = ("pointmaze", "antmaze", "locomotion", "locomotion_expert")  # config/family/*.yaml


def vmap_critics_problem(value: Any) -> str | None:
    return None if value == "auto" or isinstance(value, bool) else "is not allowed"


def value_init_problem(value: Any) -> str | None:
    """``network.value_init``: ``null``, a finite number or ``mc``."""
    if value is None or value == "mc":
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return "is not allowed"
    return None


#: the algorithms recipes/finetune.py fine-tunes (the paper's Table 4: IQL and DMG)
FINETUNE_ALGOS = ("dmg", "iql")


def finetune_algo_problem(value: str) -> str | None:
    """One of :data:`FINETUNE_ALGOS`; TD3+BC and BC are offline baselines."""
    if value in FINETUNE_ALGOS:
        return None
    if value in ("td3bc", "bc"):
        return "is an offline baseline only (fine-tuning compares dmg and iql, the paper's Table 4)"
    return "is not allowed"


#: the algorithms and the iql/td3bc settings (config/algo/*.yaml, config/algo_family/*.yaml)
ALGO_SETTINGS = (
    _f(
        "iql.expectile",
        float,
        0.7,
        low=0,
        high=1,
        low_open=True,
        high_open=True,
        meaning="IQL's τ, the expectile",
    ),
    _f("iql.temperature", float, 3.0, low=0, low_open=True, meaning="IQL's β, the temperature"),
    _f("iql.gamma", float, 0.99, low=0, high=1, high_open=True, meaning="IQL's γ"),
    _f("td3bc.alpha", float, 2.5, low=0, low_open=True, meaning="TD3+BC's α"),
    _f("td3bc.policy_noise", float, 0.2, low=0, meaning="σ of TD3+BC's target policy noise"),
    _f("td3bc.noise_clip", float, 0.5, low=0, meaning="c, TD3+BC's target noise clip"),
    _f("td3bc.gamma", float, 0.99, low=0, high=1, high_open=True, meaning="TD3+BC's γ"),
    _f("data.reward_scale", str, "iql", choices=("iql",), nullable=True),
)

#: the offline baselines' settings
BASELINES = (
    _f("algo", str, "dmg", choices=("dmg", "iql", "td3bc", "bc")),
    *ALGO_SETTINGS,
    _f("diagnostic.size", int, 1024, low=1, meaning="dataset transitions of the Q diagnostic"),
    _f("diagnostic.seed", int, 0, low=0, high=2**31 - 1),
    _f("diagnostic.drop_truncated_tails", bool, False),
)

COMMON = (
    _f(
        "dataset",
        str,
        "local/pointmaze/medium-v0",
        check=dataset_id_problem,
        meaning="a Minari id [namespace/]name-vN",
    ),
    _f("seed", int, 0, low=0, high=2**31 - 1),
    _device(),
    _f("batch_size", int, 256, low=1),
    _f("data.download", bool, True),
    _f("data.check_family", bool, True),
    _f("data.normalize_obs", bool, True),
    _f("data.reward_shift", float, 0.0),
    _f("data.goal_terminal", bool, False),
    _f("data.obs_keys", list, ["observation", "desired_goal"], item=str, nullable=True),
    _f("data.score_reference", str, "auto", choices=("auto", "d4rl", "minari", "raw")),
    _f("family", str, "pointmaze", choices=FAMILIES),
    _f("network.num_cells", list, [256, 256]),
    _f("network.layer_norm", bool, False),
    _f("network.dropout", float, 0.0, low=0, high=1, high_open=True),
    Field(
        "network.vmap_critics",
        object,
        example="auto",
        check=vmap_critics_problem,
        allowed_text=lambda: "auto, true or false",
    ),
    Field(
        "network.value_init",
        object,
        example="mc",
        nullable=True,
        check=value_init_problem,
        allowed_text=lambda: "a number, mc (the data's mean Monte-Carlo return)",
    ),
    _f("optim.lr", float, 3e-4, low=0, low_open=True, meaning="Adam's learning rate"),
    _f("optim.tau", float, 0.005, low=0, high=1, low_open=True, meaning="Polyak rate"),
    _f("optim.policy_freq", int, 2, low=1, meaning="critic steps per actor step"),
    _f("optim.actor_cosine", bool, True),
    _f(
        "optim.actor_cosine_horizon",
        int,
        500_000,
        low=1,
        nullable=True,
        meaning="actor updates of the cosine lr, null: the run's own",
    ),
    _f("compile.mode", str, "auto", choices=("auto", "eager", "compile", "cudagraphs")),
    _f("compile.skip_guards", bool, True, nullable=True),
    _f("compile.matmul_precision", str, "highest", choices=("highest", "high", "medium")),
    _f("eval.interval", int, 5000, low=0, meaning="steps between evaluations, 0: at the end"),
    _f("eval.episodes", int, 10, low=1, meaning="evaluation episodes"),
    _f("eval.max_steps", int, 1000, low=1, nullable=True),
    _f("eval.processes", bool, False),
    _f("logger.backend", str, "csv", choices=("csv", "tensorboard", "wandb")),
    _f("logger.log_interval", int, 1000, low=1, meaning="steps between training rows"),
    _f("logger.project", str, "torchrl-dmg"),
    _f("progress", bool, True),
    _f("guard.stop_on_q_out_of_bounds", bool, False),
    _f("guard.check_interval", int, 1, low=1, meaning="updates between NaN/inf checks"),
    *LOSS,
)

OFFLINE = (
    *COMMON,
    *BASELINES,
    _f("seeds", int, 1, low=1, meaning="agents trained side by side"),
    _f("steps", int, 20000, low=1, meaning="gradient steps"),
    _f("compile.updates_per_call", int, 1, low=1),
    _f(
        "checkpoint.interval", int, 10000, low=0, meaning="steps between checkpoints, 0: at the end"
    ),
    _f("resume", str, "outputs/offline/<run dir>", nullable=True),
)

FINETUNE = (
    *COMMON,
    Field(
        "algo",
        str,
        example="iql",
        check=finetune_algo_problem,
        allowed_text=lambda: "dmg or iql",
    ),
    *ALGO_SETTINGS,
    _f("budget", str, "demo", choices=("demo", "paper")),
    _f("offline_steps", int, 20000, low=0, meaning="offline phase steps (no checkpoint=)"),
    _f("online_steps", int, 20000, low=1, meaning="online env steps"),
    _f("checkpoint", str, "outputs/offline/<run dir>", nullable=True),
    _f("checkpoint_seed", int, 0, low=0, nullable=True),
    _f("utd", int, 1, low=1, meaning="gradient steps per env step"),
    _f("offline_fraction", float, 0.5, low=0, high=1, nullable=True),
    _f(
        "gamma",
        float,
        0.995,
        low=0,
        high=1,
        high_open=True,
        nullable=True,
        meaning="online γ override",
    ),
    _f("schedule.mixture_start", float, 0.25, low=0, high=1, nullable=True, meaning="λ_0"),
    _f("schedule.mixture_end", float, 0.5, low=0, high=1, meaning="λ_end"),
    _f("schedule.penalty_start", float, 0.5, low=0, nullable=True, meaning="ν_0"),
    _f("schedule.penalty_end", float, 0.005, low=0, meaning="ν_end"),
    _f("schedule.decay", float, 0.99, low=0, high=1, low_open=True),
    _f("schedule.interval", int, 1000, low=1),
    _f("exploration.noise", float, 0.1, low=0, meaning="exploration noise / max_action"),
    _f("collector.frames_per_batch", int, 1, low=1),
    _f("checkpoint_interval", int, 10000, low=0, meaning="steps between checkpoints"),
    _f("resume", str, "outputs/finetune/<run dir>", nullable=True),
)


def behaviour_env_problem(value: str) -> str | None:
    from torchrl_dmg.datagen.behaviour.tasks import env_short_name

    try:
        env_short_name(value)
    except ValueError as err:
        return "is not a task of train_behaviour: " + " ".join(str(err).split())
    return None


BEHAVIOUR = (
    _f("env", str, "hopper", check=behaviour_env_problem),
    _f("seed", int, 0, low=0, high=2**31 - 1),
    _f("steps", int, 1_000_000, low=1, meaning="env steps"),
    _f("checkpoint_interval", int, 10000, low=1, meaning="env steps between checkpoints"),
    _f("out_dir", str, "outputs/behaviour/hopper_s0"),
    Field(
        "device",
        str,
        example="cpu",
        allowed_text=lambda: available_devices().removeprefix("auto, "),
        check=lambda v: (
            "is not allowed here (give cpu or cuda)" if v == "auto" else device_problem(v)
        ),
    ),
    _f("resume", bool, True),
    _f("warm_start.actor", str, "torchrl_dmg/datagen/policies/antgoal.pt", nullable=True),
    _f("warm_start.alpha_init", float, 1.0, low=0, low_open=True, meaning="SAC's α at the start"),
    _f("warm_start.fixed_alpha", bool, False),
    _f("warm_start.actor_freeze_updates", int, 0, low=0),
    _f("eval.episodes", int, 10, low=1),
    _f("eval.max_steps", int, 1000, low=1, nullable=True),
    _f("eval.success_episodes", int, 50, low=1),
    _f("collector.init_random_steps", int, 5000, low=0),
    _f("collector.frames_per_batch", int, 1000, low=1),
    _f("collector.num_envs", int, 1, low=1),
    _f("collector.env_processes", bool, False),
    _f("optim.updates_per_step", float, 1.0, low=0, low_open=True, meaning="UTD"),
    _f("optim.batch_size", int, 256, low=1),
    _f("optim.lr", float, 3e-4, low=0, low_open=True),
    _f("optim.gamma", float, 0.99, low=0, high=1, high_open=True),
    _f("optim.tau", float, 0.005, low=0, high=1, low_open=True),
    _f("network.num_cells", list, [256, 256]),
    _f("replay_buffer.size", int, 1_000_000, low=1),
    _f("replay_buffer.mirror_augment", bool, False),
    _f(
        "compile.mode",
        str,
        "compile",
        choices=("compile", "eager", "compile-inductor", "cudagraphs"),
    ),
    _f("compile.sample_chunk", int, 50, low=1),
    _f("progress", bool, True),
)

MAKE_DATASET = (
    _f("env", str, "hopper"),
    _f(
        "quality",
        str,
        "medium",
        nullable=True,
        choices=("random", "medium", "medium-replay", "expert", "medium-expert"),
    ),
    _f("steps", int, 1_000_000, low=1, nullable=True, meaning="transitions per policy"),
    _f("seed", int, 0, low=0, high=2**31 - 1),
    _f("dataset_id", str, "local/mujoco/hopper/medium-v0", nullable=True, check=dataset_id_problem),
    _f("force", bool, False),
    _f("policy_dir", str, "torchrl_dmg/datagen/policies", nullable=True),
    _f("behaviour_run", str, "outputs/behaviour/hopper_s0", nullable=True),
    _f("workers", int, 1, low=1),
    _f("goal_rule", str, "next", choices=("next", "onegoal"), meaning="AntMaze goal rule"),
    _f("progress", bool, True),
)


def file_problem(value: str) -> str | None:
    return None if Path(value).is_file() else "is not a file"


REPORT = (
    _f("out", str, "report"),
    _f("title", str, "Results"),
    _f("intro", str, "results/README.md", nullable=True, check=file_problem),
    _f("bootstrap_seed", int, 0, low=0, high=2**32 - 1),
    _f("studies", bool, True),
)

SCHEMAS: dict[str, tuple[Field, ...]] = {
    "offline": OFFLINE,
    "finetune": FINETUNE,
    "train_behaviour": BEHAVIOUR,
    "make_dataset": MAKE_DATASET,
    "report": REPORT,
}


def problems(cfg: DictConfig, fields: Iterable[Field]) -> list[str]:
    """Every refusal for ``cfg`` (one line each); keys absent from ``cfg`` are skipped
    (an older run's config)."""
    found = []
    for field in fields:
        value = OmegaConf.select(cfg, field.key, default=_MISSING)
        if value is _MISSING:
            continue
        if isinstance(value, DictConfig):
            found.append(field.message("<a group>", "is not a value"))
            continue
        problem = field.problem(value)
        if problem is not None:
            found.append(field.message(value, problem))
    return found


def validate(cfg: DictConfig, recipe: str) -> None:
    """Refuse ``cfg`` in one line (the first problem; a count of the others) when a key of
    ``recipe``'s schema is out of range, plus the cross-key rules."""
    found = problems(cfg, SCHEMAS[recipe])
    found += cross_key_problems(cfg, recipe) if not found else []
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise RunRefused(found[0] + more)


#: make_dataset keys that only the AntMaze navigator reads, with their defaults
MAKE_DATASET_ANTMAZE_ONLY = {"workers": 1, "goal_rule": "next"}


def cross_key_problems(cfg: DictConfig, recipe: str) -> list[str]:
    """Rules joining keys: intervals that must divide, steps that must be multiples, keys
    that apply to one kind of env only."""
    found = []
    if recipe == "offline":
        k = int(cfg.compile.get("updates_per_call", 1))
        if k > 1 and k % int(cfg.optim.policy_freq):
            found.append(
                f"config: compile.updates_per_call={k} must be a multiple of optim.policy_freq "
                f"({cfg.optim.policy_freq}); e.g. compile.updates_per_call=1"
            )
    if recipe == "make_dataset" and not str(cfg.env).startswith("antmaze-"):
        for key, default in MAKE_DATASET_ANTMAZE_ONLY.items():  # else silently ignored
            if cfg[key] != default:
                found.append(
                    f"config: {key}={cfg[key]} applies to AntMaze only (env=antmaze-<variant>); "
                    "the locomotion generator has no such setting: drop it."
                )
    if recipe == "train_behaviour":
        fpb = int(cfg.collector.frames_per_batch)
        for key in ("steps", "checkpoint_interval"):
            if int(cfg[key]) % fpb:
                found.append(
                    f"config: {key}={cfg[key]} must be a multiple of collector.frames_per_batch "
                    f"({fpb}); e.g. {key}={max(fpb, int(cfg[key]) // fpb * fpb)}"
                )
        if fpb % int(cfg.collector.num_envs):
            found.append(
                f"config: collector.frames_per_batch={fpb} must be a multiple of "
                f"collector.num_envs ({cfg.collector.num_envs}); e.g. collector.num_envs=1"
            )
    return found
