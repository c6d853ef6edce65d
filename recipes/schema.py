"""The typed schema of every recipe's config, checked once at start-up.

The config files hold every value; this file holds only what they cannot say: each key's
allowed range with the spec's meaning (λ = ``loss.mixture_coef`` ∈ [0, 1], τ =
``loss.expectile`` ∈ (0, 1), ν = ``loss.penalty_coef`` ≥ 0, α = ``loss.temperature`` > 0,
steps ≥ 1, intervals ≥ 0, episodes ≥ 1, lr > 0, ...). A key's type and the example fix
shown for it are its default in the recipe's config (the same config groups: family,
algo, budget); a key whose default is null names its type and an example. A value outside
its range is refused in one line naming the key, the value, the range and the example
(:class:`~torchrl_dmg.errors.RunRefused`, exit code 2), before anything is written.

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
CONFIG_DIR = Path(__file__).resolve().parent / "config"
#: the config groups whose choice a recipe's config records under the group's name
GROUPS = ("family", "algo", "budget")


@dataclass(frozen=True)
class Field:
    """One config key: its allowed values (its type and example: its default's).

    Args:
        key: the dotted key (``loss.mixture_coef``).
        kind: ``int``, ``float``, ``bool``, ``str``, ``list`` (of ``item``: ints >= 1,
            ``num_cells``; or names, ``data.obs_keys``) or ``object`` (its ``check``
            decides); ``None``: the type of the key's default.
        low, high: the bounds of a number; ``low_open`` / ``high_open`` exclude them.
        choices: the allowed strings.
        nullable: ``null`` is allowed (it means a documented default).
        example: a good value, shown in the fix; ``None``: the key's default.
        meaning: what the key is (a spec symbol), shown in the message.
        check: an extra test returning an error text (or ``None``).
    """

    key: str
    kind: type | None = None
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

    def typed(self, default: Any) -> Field:
        """This field with the type of ``default`` (the key's value in the config files)
        when it names none, and ``default`` as its example when it has none."""
        kind = self.kind
        if kind is None:
            kind = _KINDS.get(type(default))
            if kind is None:
                raise TypeError(f"schema: {self.key} needs a kind (its default is {default!r})")
        example = self.example if self.example is not None else default
        return Field(**{**self.__dict__, "kind": kind, "example": example})

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
        fix = f"; e.g. {self.key}={_show(self.example)}" if self.example is not None else ""
        return f"config: {self.key}={shown} {problem}{meaning}{allowed}{fix}"


#: a default's type -> the field's kind
_KINDS: dict[type, type] = {bool: bool, int: int, float: float, str: str, list: list}


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
def _f(key: str, kind: type | None = None, **kw: Any) -> Field:
    return Field(key, kind, **kw)


def _unit(key: str, **kw: Any) -> Field:
    """A number in [0, 1] (``high_open=True``: [0, 1), as γ)."""
    return _f(key, float, low=0, high=1, **kw)


_PROBABILITY = {"low": 0, "high": 1, "low_open": True, "high_open": True}
_POSITIVE = {"low": 0, "low_open": True}
_SEED = {"low": 0, "high": 2**31 - 1}

LOSS = (
    _unit("loss.mixture_coef", meaning="λ, the mixture coefficient"),
    _f("loss.penalty_coef", float, low=0, meaning="ν, the penalty coefficient"),
    _f("loss.expectile", float, **_PROBABILITY, meaning="τ, the expectile"),
    _f("loss.temperature", float, **_POSITIVE, meaning="α, the inverse temperature"),
    _f("loss.max_weight", float, **_POSITIVE, meaning="w_max, the weight clip"),
    _f("loss.policy_noise", float, low=0, meaning="σ of the target policy noise"),
    _f("loss.noise_clip", float, low=0, meaning="c, the target noise clip"),
    _unit("loss.gamma", high_open=True, meaning="γ, the discount"),
    _f("loss.in_sample_estimator", str, choices=("expectile", "xql", "sql")),
    _f("loss.xql_beta", float, **_POSITIVE, meaning="β of XQL"),
    _f("loss.sql_alpha", float, **_POSITIVE, meaning="α of SQL"),
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


#: the baselines' settings (config/algo/*.yaml, config/algo_family/*.yaml)
ALGO_SETTINGS = (
    _f("iql.expectile", float, **_PROBABILITY, meaning="IQL's τ, the expectile"),
    _f("iql.temperature", float, **_POSITIVE, meaning="IQL's β, the temperature"),
    _unit("iql.gamma", high_open=True, meaning="IQL's γ"),
    _f("iql.actor", choices=("gaussian", "tanh_normal")),
    _f("td3bc.alpha", float, **_POSITIVE, meaning="TD3+BC's α"),
    _f("td3bc.policy_noise", float, low=0, meaning="σ of TD3+BC's target policy noise"),
    _f("td3bc.noise_clip", float, low=0, meaning="c, TD3+BC's target noise clip"),
    _unit("td3bc.gamma", high_open=True, meaning="TD3+BC's γ"),
    _unit("bc.gamma", high_open=True, meaning="γ of BC's diagnostic returns"),
    _f("data.reward_scale", str, choices=("iql",), nullable=True, example="iql"),
)

#: the offline baselines' settings
BASELINES = (
    _f("algo", choices=("dmg", "iql", "td3bc", "bc")),
    *ALGO_SETTINGS,
    _f("diagnostic.size", low=1, meaning="dataset transitions of the Q diagnostic"),
    _f("diagnostic.seed", **_SEED),
    _f("diagnostic.drop_truncated_tails"),
)

COMMON = (
    _f("dataset", check=dataset_id_problem, meaning="a Minari id [namespace/]name-vN"),
    _f("seed", **_SEED),
    _f("device", check=device_problem, allowed_text=available_devices),
    _f("batch_size", low=1),
    _f("data.download"),
    _f("data.check_family"),
    _f("data.normalize_obs"),
    _f("data.reward_shift", float),
    _f("data.goal_terminal", bool),
    _f("data.obs_keys", list, item=str, nullable=True, example=["observation", "desired_goal"]),
    _f("data.score_reference", choices=("auto", "d4rl", "minari", "raw")),
    _f("family", choices=FAMILIES),
    _f("network.num_cells"),
    _f("network.layer_norm"),
    _unit("network.dropout", high_open=True),
    _f(
        "network.vmap_critics",
        object,
        check=vmap_critics_problem,
        allowed_text=lambda: "auto, true or false",
    ),
    _f(
        "network.value_init",
        object,
        example="mc",
        nullable=True,
        check=value_init_problem,
        allowed_text=lambda: "a number, mc (the data's mean Monte-Carlo return)",
    ),
    _f("optim.lr", float, **_POSITIVE, meaning="Adam's learning rate"),
    _f("optim.tau", float, low=0, high=1, low_open=True, meaning="Polyak rate"),
    _f("optim.policy_freq", low=1, meaning="critic steps per actor step"),
    _f("optim.actor_cosine"),
    _f(
        "optim.actor_cosine_horizon",
        int,
        low=1,
        nullable=True,
        example=500_000,
        meaning="actor updates of the cosine lr, null: the run's own",
    ),
    _f("compile.mode", choices=("auto", "eager", "compile", "cudagraphs")),
    _f("compile.skip_guards", bool, nullable=True, example=True),
    _f("compile.matmul_precision", choices=("highest", "high", "medium")),
    _f("eval.interval", low=0, meaning="steps between evaluations, 0: at the end"),
    _f("eval.episodes", low=1, meaning="evaluation episodes"),
    _f("eval.max_steps", int, low=1, nullable=True, example=1000),
    _f("eval.processes"),
    _f("logger.backend", choices=("csv", "tensorboard", "wandb")),
    _f("logger.log_interval", low=1, meaning="steps between training rows"),
    _f("logger.project"),
    _f("progress"),
    _f("guard.stop_on_q_out_of_bounds"),
    _f("guard.check_interval", low=1, meaning="updates between NaN/inf checks"),
    *LOSS,
)

OFFLINE = (
    *COMMON,
    *BASELINES,
    _f("seeds", low=1, meaning="agents trained side by side"),
    _f("steps", low=1, meaning="gradient steps"),
    _f(
        "compile.updates_per_call",
        object,
        check=lambda v: None if v == "auto" or _is_count(v) else "is not auto or an integer >= 1",
        allowed_text=lambda: "auto, or an integer >= 1",
        example=1,
    ),
    _f("checkpoint.interval", low=0, meaning="steps between checkpoints, 0: at the end"),
    _f("resume", str, nullable=True, example="outputs/offline/<run dir>"),
)

FINETUNE = (
    *COMMON,
    _f("algo", check=finetune_algo_problem, allowed_text=lambda: "dmg or iql"),
    *ALGO_SETTINGS,
    _f("budget", choices=("demo", "paper")),
    _f("offline_steps", low=0, meaning="offline phase steps (no checkpoint=)"),
    _f("online_steps", low=1, meaning="online env steps"),
    _f("checkpoint", str, nullable=True, example="outputs/offline/<run dir>"),
    _f("checkpoint_seed", int, low=0, nullable=True, example=0),
    _f("utd", low=1, meaning="gradient steps per env step"),
    _unit("offline_fraction", nullable=True, example=0.5),
    _unit("gamma", high_open=True, nullable=True, example=0.995, meaning="online γ override"),
    _unit("schedule.mixture_start", nullable=True, example=0.25, meaning="λ_0"),
    _unit("schedule.mixture_end", meaning="λ_end"),
    _f("schedule.penalty_start", float, low=0, nullable=True, example=0.5, meaning="ν_0"),
    _f("schedule.penalty_end", float, low=0, meaning="ν_end"),
    _f("schedule.decay", float, low=0, high=1, low_open=True),
    _f("schedule.interval", low=1),
    _f("exploration.noise", float, low=0, meaning="exploration noise / max_action"),
    _f("collector.frames_per_batch", low=1),
    _f("checkpoint_interval", low=0, meaning="steps between checkpoints"),
    _f("resume", str, nullable=True, example="outputs/finetune/<run dir>"),
)


def behaviour_env_problem(value: str) -> str | None:
    from torchrl_dmg.datagen.behaviour.tasks import env_short_name

    try:
        env_short_name(value)
    except ValueError as err:
        return "is not a task of train_behaviour: " + " ".join(str(err).split())
    return None


BEHAVIOUR = (
    _f("env", check=behaviour_env_problem),
    _f("seed", **_SEED),
    _f("steps", low=1, meaning="env steps"),
    _f("checkpoint_interval", low=1, meaning="env steps between checkpoints"),
    _f("out_dir"),
    _f(
        "device",
        allowed_text=lambda: available_devices().removeprefix("auto, "),
        check=lambda v: (
            "is not allowed here (give cpu or cuda)" if v == "auto" else device_problem(v)
        ),
    ),
    _f("resume"),
    _f("warm_start.actor", str, nullable=True, example="torchrl_dmg/datagen/policies/antgoal.pt"),
    _f("warm_start.alpha_init", float, **_POSITIVE, meaning="SAC's α at the start"),
    _f("warm_start.fixed_alpha"),
    _f("warm_start.actor_freeze_updates", low=0),
    _f("eval.episodes", low=1),
    _f("eval.max_steps", int, low=1, nullable=True, example=1000),
    _f("eval.success_episodes", low=1),
    _f("collector.init_random_steps", low=0),
    _f("collector.frames_per_batch", low=1),
    _f("collector.num_envs", low=1),
    _f("collector.env_processes"),
    _f("optim.updates_per_step", float, **_POSITIVE, meaning="UTD"),
    _f("optim.batch_size", low=1),
    _f("optim.lr", float, **_POSITIVE),
    _unit("optim.gamma", high_open=True),
    _f("optim.tau", float, low=0, high=1, low_open=True),
    _f("network.num_cells"),
    _f("replay_buffer.size", low=1),
    _f("replay_buffer.mirror_augment"),
    _f("compile.mode", choices=("compile", "eager", "compile-inductor", "cudagraphs")),
    _f("compile.sample_chunk", low=1),
    _f("progress"),
)

MAKE_DATASET = (
    _f("env"),
    _f(
        "quality",
        str,
        nullable=True,
        example="medium",
        choices=("random", "medium", "medium-replay", "expert", "medium-expert"),
    ),
    _f("steps", int, low=1, nullable=True, example=1_000_000, meaning="transitions per policy"),
    _f("seed", **_SEED),
    _f(
        "dataset_id",
        str,
        nullable=True,
        example="local/mujoco/hopper/medium-v0",
        check=dataset_id_problem,
    ),
    _f("force"),
    _f("policy_dir", str, nullable=True, example="torchrl_dmg/datagen/policies"),
    _f("behaviour_run", str, nullable=True, example="outputs/behaviour/hopper_s0"),
    _f("workers", low=1),
    _f("goal_rule", choices=("next", "onegoal"), meaning="AntMaze goal rule"),
    _f("progress"),
)


def file_problem(value: str) -> str | None:
    return None if Path(value).is_file() else "is not a file"


REPORT = (
    _f("out"),
    _f("title"),
    _f("intro", str, nullable=True, example="results/README.md", check=file_problem),
    _f("bootstrap_seed", low=0, high=2**32 - 1),
    _f("studies"),
    _f("published"),
)

SCHEMAS: dict[str, tuple[Field, ...]] = {
    "offline": OFFLINE,
    "finetune": FINETUNE,
    "train_behaviour": BEHAVIOUR,
    "make_dataset": MAKE_DATASET,
    "report": REPORT,
}


def defaults(cfg: DictConfig, recipe: str, *, groups: bool = True) -> DictConfig:
    """``recipe``'s config as its files set it, with ``cfg``'s config group choices
    (family, algo, budget; ``groups=False``: the files' own choices): the defaults the
    fields take their types and examples from."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    choices = [f"{g}={cfg[g]}" for g in GROUPS if groups and isinstance(cfg.get(g), str)]
    if GlobalHydra.instance().is_initialized():  # inside the recipe's own Hydra app
        return compose(recipe, overrides=choices)
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose(recipe, overrides=choices)


def problems(cfg: DictConfig, fields: Iterable[Field], recipe: str) -> list[str]:
    """Every refusal for ``cfg`` (one line each), the fields typed by the config files'
    values (:func:`defaults`); keys absent from ``cfg`` are skipped."""
    base = defaults(cfg, recipe)
    found = []
    for field in fields:
        value = OmegaConf.select(cfg, field.key, default=_MISSING)
        if value is _MISSING:
            continue
        typed = field.typed(_default(base, field.key))
        problem = "is not a value" if isinstance(value, DictConfig) else typed.problem(value)
        if problem is None:
            continue
        if field.key in GROUPS:  # a group's own key (algo): the example is the files' choice
            typed = field.typed(_default(defaults(cfg, recipe, groups=False), field.key))
        found.append(
            typed.message("<a group>" if isinstance(value, DictConfig) else value, problem)
        )
    return found


def _default(base: DictConfig, key: str) -> Any:
    value = OmegaConf.select(base, key, default=None, throw_on_missing=False)
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def validate(cfg: DictConfig, recipe: str) -> None:
    """Refuse ``cfg`` in one line (the first problem; a count of the others) when a key of
    ``recipe``'s schema is out of range, plus the cross-key rules."""
    found = problems(cfg, SCHEMAS[recipe], recipe)
    found += cross_key_problems(cfg, recipe) if not found else []
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise RunRefused(found[0] + more)


#: make_dataset keys that only the AntMaze navigator reads, with their defaults
MAKE_DATASET_ANTMAZE_ONLY = {"workers": 1, "goal_rule": "next"}


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _cpu_has_bf16() -> bool:
    from torchrl_dmg.training.compile import cpu_has_bf16

    return cpu_has_bf16()


def cross_key_problems(cfg: DictConfig, recipe: str) -> list[str]:
    """Rules joining keys: intervals that must divide, steps that must be multiples, keys
    that apply to one kind of env only."""
    found = []
    if recipe == "offline":
        k = cfg.compile.get("updates_per_call", 1)
        k = 1 if k == "auto" else int(k)  # auto picks a K that fits (recipes/utils.py)
        if k > 1 and k % int(cfg.optim.policy_freq):
            found.append(
                f"config: compile.updates_per_call={k} must be a multiple of optim.policy_freq "
                f"({cfg.optim.policy_freq}); e.g. compile.updates_per_call=1"
            )
        if (
            int(cfg.get("seeds", 1)) > 1
            and cfg.compile.mode != "eager"
            and cfg.compile.matmul_precision != "highest"
            and cfg.network.vmap_critics is False
            and str(cfg.device) in ("auto", "cpu")
            and _cpu_has_bf16()
        ):
            found.append(
                f"config: seeds={cfg.seeds} compiled with bf16 matmuls "
                f"(compile.matmul_precision={cfg.compile.matmul_precision}) need "
                "network.vmap_critics=true or auto: with a loop over the critics, inductor's "
                "AVX-512 code returns NaN (torch 2.13); or compile.mode=eager"
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
