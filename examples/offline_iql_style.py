"""Offline RL written the way TorchRL's ``sota-implementations/iql/iql_offline.py`` is, short,
on a local Minari dataset, with TorchRL's ``IQLLoss`` or this project's ``DMGLoss``:

    python examples/offline_iql_style.py --loss iql
    python examples/offline_iql_style.py --loss dmg --dataset local/pointmaze/medium-v0

Data into a TorchRL replay buffer, networks from ``torchrl.modules``, one loss module, ONE
optimizer over the sum of its ``loss_*`` terms, ``SoftUpdate`` after every step, then an
evaluation. The two losses share every line but the actor (IQL's is a TanhNormal policy,
DMG's deterministic) and the loss's constructor; ``tests/test_torchrl_example.py`` counts
them. How this update differs from the recipes' (the paper's delayed actor step):
docs/torchrl_example.md.
"""

from __future__ import annotations

import argparse

import torch
from tensordict.nn import NormalParamExtractor, TensorDictModule, TensorDictSequential
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.modules import MLP, ProbabilisticActor, TanhModule, TanhNormal, ValueOperator
from torchrl.objectives import IQLLoss, SoftUpdate

from torchrl_dmg.data.offline import load_offline_dataset
from torchrl_dmg.envs import evaluate_scores, make_env, max_episode_steps
from torchrl_dmg.objectives import DMGLoss


def make_actor(loss: str, obs_dim: int, action_spec, num_cells: list[int]) -> TensorDictModule:
    """The policy: a TanhNormal distribution for IQL, a deterministic tanh-squashed MLP for
    DMG (its TD3-style actor step differentiates Q through the action)."""
    n_act = action_spec.shape[-1]
    if loss == "iql":
        net = torch.nn.Sequential(
            MLP(in_features=obs_dim, out_features=2 * n_act, num_cells=num_cells),
            NormalParamExtractor(),
        )
        module = TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"])
        return ProbabilisticActor(
            module,
            in_keys=["loc", "scale"],
            spec=action_spec,
            distribution_class=TanhNormal,
            distribution_kwargs={"low": action_spec.space.low, "high": action_spec.space.high},
        )
    net = MLP(in_features=obs_dim, out_features=n_act, num_cells=num_cells)
    module = TensorDictModule(net, in_keys=["observation"], out_keys=["param"])
    return TensorDictSequential(module, TanhModule(["param"], ["action"], spec=action_spec))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loss", choices=("iql", "dmg"), default="dmg")
    parser.add_argument("--dataset", default="local/pointmaze/umaze-v0")
    parser.add_argument("--steps", type=int, default=2_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--gamma", type=float, default=0.99)
    parser.add_argument("--tau", type=float, default=0.005)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)

    # Create the replay buffer: every transition of the dataset (TorchRL's script:
    # make_offline_replay_buffer); observation = observation ‖ desired goal, normalised
    dataset = load_offline_dataset(
        args.dataset,
        obs_keys=["observation", "desired_goal"],
        normalize_obs=True,
        download=False,
        progress=False,
    )
    replay_buffer = TensorDictReplayBuffer(
        storage=LazyTensorStorage(dataset.data.shape[0]), batch_size=args.batch_size
    )
    replay_buffer.extend(dataset.data)
    eval_env = make_env(dataset, num_envs=max(args.eval_episodes, 1))  # the data's transforms

    # Create the agent (make_iql_model)
    cells, obs_dim = [256, 256], dataset.obs_dim
    actor = make_actor(args.loss, obs_dim, eval_env.action_spec_unbatched, cells)
    q_in = obs_dim + dataset.action_dim
    qvalue = ValueOperator(
        MLP(in_features=q_in, out_features=1, num_cells=cells), in_keys=["observation", "action"]
    )
    value = ValueOperator(
        MLP(in_features=obs_dim, out_features=1, num_cells=cells), in_keys=["observation"]
    )

    # Create the loss (make_loss)
    if args.loss == "iql":
        loss_module = IQLLoss(actor, qvalue, value, temperature=3.0, expectile=0.7)
    else:
        loss_module = DMGLoss(actor, qvalue, value, action_spec=eval_env.action_spec_unbatched)
    loss_module.make_value_estimator(gamma=args.gamma)
    target_net_updater = SoftUpdate(loss_module, tau=args.tau)

    # Create the optimizer: one over every trained parameter (the targets are buffers)
    optimizer = torch.optim.Adam(loss_module.parameters(), lr=args.lr)

    def update(data):
        optimizer.zero_grad(set_to_none=True)
        loss_info = loss_module(data)
        sum(v for k, v in loss_info.items() if k.startswith("loss_")).backward()
        optimizer.step()
        target_net_updater.step()
        return loss_info.detach()

    history = []
    for step in range(args.steps):
        loss_info = update(replay_buffer.sample())
        history.append({k: float(v) for k, v in loss_info.items() if k.startswith("loss_")})
        if step % 500 == 0 or step == args.steps - 1:
            print(
                f"[{args.loss}] step {step}: "
                + ", ".join(f"{k}={v:.4f}" for k, v in history[-1].items())
            )

    result = {"losses": history}
    if args.eval_episodes:  # the deterministic policy (IQL: its distribution's mode)
        steps = max_episode_steps(dataset)
        result.update(evaluate_scores(eval_env, actor, dataset, max_steps=steps, seed=args.seed))
        print(f"[{args.loss}] normalized_score={result['normalized_score']:.1f}")
    return result


if __name__ == "__main__":
    main()
