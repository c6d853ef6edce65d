"""Wire ``DMGLoss`` wrongly, as a TorchRL user might, and record the one line each mistake
gets: the second table of docs/bad_inputs.md, which ``benchmarks/bad_inputs.py`` writes.

    python benchmarks/loss_misuse.py        # prints the table
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from tensordict import TensorDict
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator

from torchrl_dmg.modules import make_dmg_networks
from torchrl_dmg.objectives import DMGLoss

OBS, ACT, BATCH = 3, 2, 8


def _networks():
    torch.manual_seed(0)
    return make_dmg_networks(OBS, ACT, -1.0, 1.0, num_cells=(8, 8))


def _batch(action_high: float = 1.0) -> TensorDict:
    return TensorDict(
        {
            "observation": torch.randn(BATCH, OBS),
            "action": torch.rand(BATCH, ACT) * 2 * action_high - action_high,
            ("next", "observation"): torch.randn(BATCH, OBS),
            ("next", "reward"): torch.randn(BATCH, 1),
            ("next", "done"): torch.zeros(BATCH, 1, dtype=torch.bool),
            ("next", "terminated"): torch.zeros(BATCH, 1, dtype=torch.bool),
        },
        batch_size=[BATCH],
    )


class _Critic(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.mlp = MLP(in_features=OBS + ACT, out_features=1, num_cells=[8])

    def forward(self, obs, act):
        return self.mlp(torch.cat([obs, act], -1))


def _stochastic_actor():
    actor, qvalue, value = _networks()
    stochastic = ProbabilisticActor(
        TensorDictModule(
            torch.nn.Sequential(torch.nn.Linear(OBS, 2 * ACT), NormalParamExtractor()),
            in_keys=["observation"],
            out_keys=["loc", "scale"],
        ),
        in_keys=["loc", "scale"],
        distribution_class=TanhNormal,
    )
    DMGLoss(stochastic, qvalue, value, bounds=(-1.0, 1.0))


def _critic_reads(in_key: str, out_keys: list[str] | None = None):
    def case():
        actor, _, value = _networks()
        critic = ValueOperator(_Critic(), in_keys=["observation", in_key], out_keys=out_keys)
        DMGLoss(actor, critic, value, bounds=(-1.0, 1.0))

    return case


#: (mistake, code, what it does)
CASES: list[tuple[str, str, Callable[[], object]]] = [
    (
        "a stochastic actor",
        "DMGLoss(ProbabilisticActor(...), qvalue, value, bounds=(-1, 1))",
        _stochastic_actor,
    ),
    (
        "one critic",
        "DMGLoss(actor, qvalue, value, bounds=(-1, 1), num_qvalue_nets=1)",
        lambda: DMGLoss(*_networks(), bounds=(-1.0, 1.0), num_qvalue_nets=1),
    ),
    (
        "infinite bounds",
        "DMGLoss(actor, qvalue, value, bounds=(-inf, inf))",
        lambda: DMGLoss(*_networks(), bounds=(-float("inf"), float("inf"))),
    ),
    (
        "a critic that does not read the action",
        'ValueOperator(net, in_keys=["observation", "obs_action"])',
        _critic_reads("obs_action"),
    ),
    (
        "a critic that reads it but writes another key",
        'ValueOperator(net, in_keys=["observation", "action"], out_keys=["q"])',
        _critic_reads("action", ["q"]),
    ),
    (
        "a renamed key no network uses",
        'loss.set_keys(state_action_value="q")',
        lambda: DMGLoss(*_networks(), bounds=(-1.0, 1.0)).set_keys(state_action_value="q"),
    ),
    (
        "an unknown key name",
        'loss.set_keys(not_a_key="x")',
        lambda: DMGLoss(*_networks(), bounds=(-1.0, 1.0)).set_keys(not_a_key="x"),
    ),
    (
        "dataset actions outside the bounds",
        "loss(batch)  # actions in [-2, 2], bounds (-1, 1)",
        lambda: DMGLoss(*_networks(), bounds=(-1.0, 1.0))(_batch(action_high=2.0)),
    ),
    (
        "γ in the constructor",
        "DMGLoss(actor, qvalue, value, bounds=(-1, 1), gamma=0.99)",
        lambda: DMGLoss(*_networks(), bounds=(-1.0, 1.0), gamma=0.99),
    ),
    (
        "the priority key in the constructor",
        'DMGLoss(actor, qvalue, value, bounds=(-1, 1), priority_key="p")',
        lambda: DMGLoss(*_networks(), bounds=(-1.0, 1.0), priority_key="p"),
    ),
]


def run_cases() -> list[tuple[str, str, str, str]]:
    """Each case's (mistake, code, exception type, message); a case that raises nothing
    is reported as such."""
    rows = []
    for mistake, code, case in CASES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                case()
            except Exception as error:  # noqa: BLE001 - the message is what is recorded
                rows.append((mistake, code, type(error).__name__, str(error)))
                continue
        rows.append((mistake, code, "-", "(no error)"))
    return rows


def table() -> str:
    lines = [
        "| # | mistake | code | error | the line raised |",
        "|---|---|---|---|---|",
    ]
    for i, (mistake, code, kind, message) in enumerate(run_cases(), 1):
        message = message.replace("|", "\\|")
        lines.append(f"| L{i} | {mistake} | `{code}` | {kind} | {message} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
