"""examples/offline_iql_style.py: a TorchRL-style offline script (TorchRL's
sota-implementations/iql) that trains with IQLLoss and, changing the actor and the loss's
constructor only, with DMGLoss."""

from __future__ import annotations

import ast
import difflib
import importlib.util
import math
import subprocess

import pytest
from recipe_runner import ROOT

EXAMPLE = ROOT / "examples" / "offline_iql_style.py"
#: lines added plus lines removed between the IQL and the DMG path, outside the actor
MAX_CHANGED_LINES = 10


def _example():
    spec = importlib.util.spec_from_file_location("offline_iql_style", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _TakeBranch(ast.NodeTransformer):
    """Resolves every ``if <...loss> == "<name>"`` on the switch to the branch ``loss``
    takes: the script as it would read written for one loss only."""

    def __init__(self, loss: str) -> None:
        self.loss = loss

    def _switch(self, test: ast.expr) -> bool | None:
        if (
            isinstance(test, ast.Compare)
            and isinstance(test.ops[0], ast.Eq)
            and isinstance(test.comparators[0], ast.Constant)
            and ast.unparse(test.left) in ("loss", "args.loss")
        ):
            return test.comparators[0].value == self.loss
        return None

    def visit_If(self, node: ast.If):
        taken = self._switch(node.test)
        if taken is None:
            return self.generic_visit(node)
        return [self.visit(s) for s in (node.body if taken else node.orelse)]

    def visit_IfExp(self, node: ast.IfExp):
        taken = self._switch(node.test)
        if taken is None:
            return self.generic_visit(node)
        return self.visit(node.body if taken else node.orelse)


def _formatted(tree: ast.Module) -> list[str]:
    """Source lines as the house formats them (``ruff format``, the project's settings)."""
    from ruff.__main__ import find_ruff_bin

    source = ast.unparse(tree)
    command = [find_ruff_bin(), "format", "--stdin-filename", str(EXAMPLE), "-"]
    out = subprocess.run(
        command, input=source, capture_output=True, text=True, check=True, cwd=ROOT
    )
    return out.stdout.splitlines()


def _path(loss: str) -> tuple[list[str], list[str]]:
    """(the actor builder, everything else) of the script written for ``loss`` alone, as
    formatted source lines (comments and docstrings aside); imported names that path does
    not use are dropped."""
    tree = ast.fix_missing_locations(_TakeBranch(loss).visit(ast.parse(EXAMPLE.read_text())))
    for node in ast.walk(tree):  # what follows a return of the taken branch is dead code
        for field in ("body", "orelse"):
            block = getattr(node, field, None)
            if isinstance(block, list):
                ends = [i for i, s in enumerate(block) if isinstance(s, ast.Return)]
                setattr(node, field, block[: ends[0] + 1] if ends else block)
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            node.names = [a for a in node.names if (a.asname or a.name) in used]
    tree.body = [n for n in tree.body if not isinstance(n, ast.ImportFrom) or n.names]
    actor = [n for n in tree.body if getattr(n, "name", None) == "make_actor"]
    rest = [n for n in tree.body if getattr(n, "name", None) != "make_actor"]
    return tuple(_formatted(ast.Module(body=part, type_ignores=[])) for part in (actor, rest))


def _changed(a: list[str], b: list[str]) -> list[str]:
    diff = difflib.unified_diff(a, b, lineterm="", n=0)
    return [line for line in diff if line[:1] in "+-" and line[:3] not in ("+++", "---")]


def test_the_dmg_path_changes_at_most_ten_lines_of_the_iql_path_beyond_the_actor():
    (iql_actor, iql), (dmg_actor, dmg) = _path("iql"), _path("dmg")
    changed = _changed(iql, dmg)
    print(f"beyond the actor: {len(changed)} lines changed (+/-):", *changed, sep="\n  ")
    print(f"the actor (make_actor): {len(_changed(iql_actor, dmg_actor))} lines changed")
    assert any("DMGLoss(" in line for line in changed) and any(
        "IQLLoss(" in line for line in changed
    )
    assert len(changed) <= MAX_CHANGED_LINES
    for actor, rest in ((iql_actor, iql), (dmg_actor, dmg)):  # each path is a whole script
        compile("\n".join(rest + actor), str(EXAMPLE), "exec")
    # everything else, the update included, is shared: one optimizer, the summed loss_*
    # terms, SoftUpdate each step
    shared = "\n".join(dmg)
    assert "SoftUpdate(" in shared and 'startswith("loss_")' in shared


@pytest.mark.parametrize("loss", ["iql", "dmg"])
def test_the_example_trains_with_each_loss(loss, tiny_dataset_env):
    import torch

    torch.set_num_threads(1)
    example = _example()
    result = example.main(
        ["--loss", loss, "--dataset", tiny_dataset_env, "--steps", "300", "--batch-size", "64"]
        + ["--eval-episodes", "2"]
    )
    losses = result["losses"]
    assert len(losses) == 300 and set(losses[0]) == {"loss_actor", "loss_qvalue", "loss_value"}
    assert all(math.isfinite(v) for row in losses for v in row.values())
    first = sum(r["loss_qvalue"] for r in losses[:20]) / 20
    last = sum(r["loss_qvalue"] for r in losses[-20:]) / 20
    assert last < first, f"{loss}: the critic loss went from {first:.4f} to {last:.4f}"
    assert math.isfinite(result["normalized_score"])  # evaluated with the trained actor


@pytest.mark.parametrize("loss", ["iql", "dmg"])
def test_each_loss_term_reaches_only_its_own_network(loss):
    """Why one optimizer over the summed terms is each network's own step."""
    import torch
    from tensordict import TensorDict
    from torchrl.data import Bounded
    from torchrl.modules import MLP, ValueOperator
    from torchrl.objectives import IQLLoss

    from torchrl_dmg.objectives import DMGLoss

    torch.manual_seed(0)
    spec, batch = Bounded(-1.0, 1.0, shape=(2,)), 16
    actor = _example().make_actor(loss, 4, spec, [32])
    qvalue = ValueOperator(
        MLP(in_features=6, out_features=1, num_cells=[32]), ["observation", "action"]
    )
    value = ValueOperator(MLP(in_features=4, out_features=1, num_cells=[32]), ["observation"])
    if loss == "iql":
        module = IQLLoss(actor, qvalue, value, temperature=3.0, expectile=0.7)
    else:
        module = DMGLoss(actor, qvalue, value, action_spec=spec)
    module.make_value_estimator(gamma=0.99)
    data = TensorDict(
        {
            "observation": torch.randn(batch, 4),
            "action": torch.rand(batch, 2) * 2 - 1,
            ("next", "observation"): torch.randn(batch, 4),
            ("next", "reward"): torch.randn(batch, 1),
            ("next", "done"): torch.zeros(batch, 1, dtype=torch.bool),
            ("next", "terminated"): torch.zeros(batch, 1, dtype=torch.bool),
        },
        [batch],
    )
    for term, network in [
        ("loss_actor", "actor"),
        ("loss_qvalue", "qvalue"),
        ("loss_value", "value"),
    ]:
        module.zero_grad(set_to_none=True)
        module(data)[term].backward()
        reached = {
            name.split("_network_params")[0]
            for name, p in module.named_parameters()
            if p.grad is not None and p.grad.abs().sum() > 0
        }
        assert reached == {network}, f"{loss}: {term} reaches {sorted(reached)}"
