"""The baselines (TorchRL's IQLLoss, TD3BCLoss, BCLoss) in the update machinery DMG uses:
every update mode (CUDA graphs where a GPU is present), stacked seeds, K updates per call,
the overestimation diagnostic."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from torchrl.objectives import SoftUpdate

from torchrl_dmg.objectives.baselines import make_bc_loss, make_iql_loss, make_td3bc_loss
from torchrl_dmg.training import ActorCriticUpdater, SeedStackedUpdater, steps_for
from torchrl_dmg.training.diagnostics import OverestimationDiagnostic

OBS, ACT, BATCH = 5, 2, 32
LOW, HIGH = -torch.ones(ACT), torch.ones(ACT)
BUILDERS = {"iql": make_iql_loss, "td3bc": make_td3bc_loss, "bc": make_bc_loss}
POLICY_FREQ = {"iql": 1, "td3bc": 2, "bc": 1}
MODES = ["eager", "compile"] + (["cudagraphs"] if torch.cuda.is_available() else [])


def device_for(mode: str) -> str:
    return "cuda" if mode == "cudagraphs" else "cpu"


def make_loss(algo: str, seed: int = 0, device: str = "cpu"):
    torch.manual_seed(seed)
    return BUILDERS[algo](OBS, ACT, LOW, HIGH, num_cells=(16, 16), device=device)


def make_batch(seed: int = 0, seeds: int | None = None, device: str = "cpu") -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    shape = [BATCH] if seeds is None else [seeds, BATCH]
    return TensorDict(
        {
            "observation": torch.randn(*shape, OBS, generator=g),
            "action": torch.rand(*shape, ACT, generator=g) * 2 - 1,
            "next": {
                "observation": torch.randn(*shape, OBS, generator=g),
                "reward": torch.randn(*shape, 1, generator=g),
                "terminated": torch.zeros(*shape, 1, dtype=torch.bool),
                "done": torch.zeros(*shape, 1, dtype=torch.bool),
            },
        },
        batch_size=shape,
    ).to(device)


def params_of(updater, name: str) -> TensorDict:
    return updater.network_params(name).detach().clone()


def target_of(updater, name: str) -> TensorDict:
    key = f"target_{name}_network_params"
    source = updater.stacked.get(key) if hasattr(updater, "stacked") else getattr(updater.loss, key)
    return source.detach().clone()


def moved(before: TensorDict, after: TensorDict) -> bool:
    pairs = zip(before.values(True, True), after.values(True, True), strict=True)
    return any(not torch.equal(a, b) for a, b in pairs)


def no_gradients_left(updater) -> bool:
    """Every optimiser step ends with zero_grad(set_to_none=True): a gradient left on any
    tensor of the loss was computed for a network that its step does not train."""
    tensors = [*updater.loss.parameters()]
    if hasattr(updater, "stacked"):
        tensors += list(updater.stacked.values(True, True))
    return all(t.grad is None for t in tensors)


def train_and_check(updater, batch, steps: int = 4) -> None:
    algo = updater.steps.name
    before = {n: params_of(updater, n) for n in updater.steps.networks}
    targets = {n: target_of(updater, n) for n in updater.steps.targets}
    for _ in range(steps):
        metrics = updater.update(batch)
        for key, value in metrics.items():
            assert torch.isfinite(value).all(), (algo, key, value)
        assert no_gradients_left(updater), algo
    assert "loss_actor" in metrics.keys()
    assert ("loss_qvalue" in metrics.keys()) == (algo != "bc")
    for name, params in before.items():
        assert moved(params, params_of(updater, name)), (algo, name)
    for name, params in targets.items():
        after = target_of(updater, name)
        assert moved(params, after), (algo, name)  # Polyak-averaged ...
        assert moved(after, params_of(updater, name))  # ... not copied
        assert not any(t.requires_grad for t in after.values(True, True))


def test_each_loss_has_its_networks_and_targets():
    assert steps_for(make_loss("iql")).networks == ("value", "qvalue", "actor")
    assert steps_for(make_loss("iql")).targets == ("qvalue",)
    assert steps_for(make_loss("td3bc")).networks == ("qvalue", "actor")
    assert steps_for(make_loss("td3bc")).targets == ("actor", "qvalue")
    assert steps_for(make_loss("bc")).networks == ("actor",)
    assert steps_for(make_loss("bc")).targets == ()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("algo", sorted(BUILDERS))
def test_a_baseline_trains_a_few_steps(algo, mode):
    device = device_for(mode)
    loss = make_loss(algo, device=device)
    updater = ActorCriticUpdater(loss, mode=mode, policy_freq=POLICY_FREQ[algo])
    train_and_check(updater, make_batch(device=device), steps=8 if mode == "cudagraphs" else 4)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("algo", sorted(BUILDERS))
def test_stacked_seeds_of_a_baseline_train_as_separate_agents(algo, mode):
    device = device_for(mode)
    updater = SeedStackedUpdater(
        [make_loss(algo, seed, device) for seed in (0, 1)], mode=mode, policy_freq=POLICY_FREQ[algo]
    )
    train_and_check(updater, make_batch(seeds=2, device=device))
    actor = updater.network_params("actor")
    first = next(iter(actor.values(True, True)))
    assert not torch.equal(first[0], first[1])


def test_td3bc_actor_and_targets_wait_for_the_second_critic_step():
    updater = ActorCriticUpdater(make_loss("td3bc"), policy_freq=2)
    batch = make_batch()
    actor, target = params_of(updater, "actor"), target_of(updater, "qvalue")
    first = updater.update(batch)
    assert "loss_actor" not in first.keys()
    assert not moved(actor, params_of(updater, "actor"))
    assert not moved(target, target_of(updater, "qvalue"))
    assert "loss_actor" in updater.update(batch).keys()


@pytest.mark.parametrize("algo", sorted(BUILDERS))
def test_update_many_runs_k_iterations_of_a_baseline(algo):
    updater = ActorCriticUpdater(make_loss(algo), policy_freq=POLICY_FREQ[algo])
    batches = torch.stack([make_batch(seed) for seed in range(4)])
    metrics = updater.update_many(batches)
    assert updater.num_updates == 4
    assert metrics["actor"].batch_size == torch.Size([4 // POLICY_FREQ[algo]])
    assert metrics["critic"].batch_size == torch.Size([4])
    assert ("loss_qvalue" in metrics["critic"].keys()) == (algo != "bc")


@pytest.mark.parametrize("algo", sorted(BUILDERS))
def test_a_baseline_checkpoint_restores_its_optimisers(algo):
    a = ActorCriticUpdater(make_loss(algo), policy_freq=POLICY_FREQ[algo])
    a.update(make_batch())
    a.update(make_batch(1))
    b = ActorCriticUpdater(make_loss(algo, seed=5), policy_freq=POLICY_FREQ[algo])
    b.load_state_dict(a.state_dict())
    assert set(a.state_dict()) == {f"optim_{n}" for n in a.steps.networks} | {
        "loss",
        "scheduler",
        "num_updates",
    }
    for name in a.steps.networks:
        assert not moved(params_of(a, name), params_of(b, name))


@pytest.mark.parametrize("algo", sorted(BUILDERS))
def test_the_stacked_policy_of_a_baseline_acts_within_the_bounds(algo):
    updater = SeedStackedUpdater([make_loss(algo, seed) for seed in (0, 1)])
    from torchrl.envs.utils import ExplorationType, set_exploration_type

    with set_exploration_type(ExplorationType.DETERMINISTIC):
        out = updater.policy()(TensorDict({"observation": torch.randn(4, OBS)}, [4]))
    assert out["action"].shape == (4, ACT)
    assert (out["action"].abs() <= 1).all()


def diagnostic_sample(size: int = 16) -> TensorDict:
    g = torch.Generator().manual_seed(3)
    return TensorDict(
        {
            "observation": torch.randn(size, OBS, generator=g),
            "action": torch.rand(size, ACT, generator=g) * 2 - 1,
            "mc_return": torch.full((size, 1), 2.5),
        },
        [size],
    )


def test_the_diagnostic_is_the_min_over_critics_of_q_on_the_sample():
    loss = make_loss("td3bc")
    updater = ActorCriticUpdater(loss, policy_freq=2)
    sample = diagnostic_sample()
    row = OverestimationDiagnostic(updater, sample, seeds=[0])()
    qs = []
    for i in range(2):
        with loss.qvalue_network_params[i].to_module(loss.qvalue_network):
            qs.append(loss.qvalue_network(sample.clone())["state_action_value"])
    expected = torch.stack(qs).min(0).values.mean()
    assert row["q_data_mean"] == pytest.approx(float(expected), rel=1e-5)
    assert row["mc_return_mean"] == pytest.approx(2.5)


def test_the_diagnostic_of_stacked_seeds_is_logged_per_seed():
    updater = SeedStackedUpdater([make_loss("iql", seed) for seed in (0, 1)], policy_freq=1)
    row = OverestimationDiagnostic(updater, diagnostic_sample(), seeds=[4, 5])()
    assert row["q_data_mean"] == pytest.approx((row["q_data_mean/s4"] + row["q_data_mean/s5"]) / 2)
    assert row["q_data_mean/s4"] != row["q_data_mean/s5"]


def test_behaviour_cloning_has_no_q_only_the_monte_carlo_return():
    updater = ActorCriticUpdater(make_loss("bc"))
    row = OverestimationDiagnostic(updater, diagnostic_sample(), seeds=[0])()
    assert row == {"mc_return_mean": pytest.approx(2.5)}


def _sac_loss(seed: int = 0):
    from torchrl.data import Bounded
    from torchrl.objectives import SACLoss

    from torchrl_dmg.modules import make_sac_actor, make_sac_qvalue

    torch.manual_seed(seed)
    spec = Bounded(LOW, HIGH, shape=(ACT,))
    loss = SACLoss(
        make_sac_actor(OBS, ACT, spec, (16, 16)),
        make_sac_qvalue(OBS, ACT, (16, 16)),
        num_qvalue_nets=2,
        action_spec=spec,
        target_entropy="auto",
        delay_actor=False,
        delay_qvalue=True,
    )
    loss.make_value_estimator(gamma=0.99)
    return loss


def _any_loss(algo: str):
    if algo == "dmg":
        from torchrl_dmg.modules import make_dmg_networks
        from torchrl_dmg.objectives import DMGLoss

        torch.manual_seed(0)
        return DMGLoss(
            *make_dmg_networks(OBS, ACT, -1.0, 1.0, num_cells=(16, 16)), bounds=(-1.0, 1.0)
        )
    return _sac_loss() if algo == "sac" else make_loss(algo)


@pytest.mark.inductor
@pytest.mark.parametrize("algo", ["dmg", "iql", "td3bc", "bc", "sac"])
def test_the_compiled_iteration_equals_eager_for_every_loss(algo):
    """mode="auto" on a CPU (the whole iteration compiled with inductor, backward and Adam
    inside, guards skipped after warm-up) gives eager's weights, targets and Adam moments
    within float rounding, the random draws (DMG's and TD3+BC's target noise, SAC's
    actions) included."""
    torch._dynamo.reset()
    runs = {}
    for mode in ("eager", "auto"):
        loss = _any_loss(algo)
        updater = ActorCriticUpdater(
            loss, mode=mode, policy_freq=2, actor_cosine_steps=5, guard_warmup=2
        )
        assert updater.mode == ("eager" if mode == "eager" else "compile")
        torch.manual_seed(1)
        for step in range(6):
            metrics = updater.update(make_batch(seed=step))
        runs[mode] = (updater, metrics)
    (eager, eager_metrics), (compiled, compiled_metrics) = runs["eager"], runs["auto"]
    assert compiled.skip_guards
    for (key, a), b in zip(
        eager.loss.state_dict().items(), compiled.loss.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=key)
    for name in eager.steps.networks:
        for a, b in zip(
            eager._adam[name].exp_avg_sqs, compiled._adam[name].exp_avg_sqs, strict=True
        ):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-9)
    for key in eager_metrics.keys():
        torch.testing.assert_close(eager_metrics[key], compiled_metrics[key], rtol=1e-4, atol=1e-5)
    # and it learnt something: a loss's weights moved from where they started
    assert not torch.equal(
        next(iter(_any_loss(algo).parameters())), next(iter(compiled.loss.parameters()))
    )


def test_iql_s_actor_is_its_authors_gaussian_with_finite_log_probs_on_the_bounds():
    """IQL's policy: mean tanh(net) inside the bounds, a state-independent std, not squashed,
    so a dataset action on a bound (a fifth of the local AntMaze actions' components) has
    a finite log-probability; under the TanhNormal SAC actor it is near -inf."""
    from tensordict.nn import InteractionType, set_interaction_type

    torch.manual_seed(0)
    low, high = -torch.ones(2), torch.ones(2)
    obs = torch.randn(64, 3)
    on_bounds = torch.tensor([[1.0, -1.0]]).expand(64, 2)
    log_probs = {}
    for actor in ("gaussian", "tanh_normal"):
        loss = make_iql_loss(3, 2, low, high, num_cells=(8,), actor=actor)
        td = TensorDict({"observation": obs}, [64])
        dist = loss.actor_network.get_dist(td)
        log_probs[actor] = dist.log_prob(on_bounds)
    gaussian, tanh_normal = log_probs["gaussian"], log_probs["tanh_normal"]
    assert torch.isfinite(gaussian).all() and gaussian.min() > -10
    assert tanh_normal.mean() < gaussian.mean() - 10
    loss = make_iql_loss(3, 2, low, high, num_cells=(8,))
    head = loss.actor_network.module[0].module[1]
    assert head.log_std.shape == (2,)  # one std per action dimension, for every state
    with set_interaction_type(InteractionType.DETERMINISTIC):
        mean = loss.actor_network(TensorDict({"observation": 100 * obs}, [64]))["action"]
    assert mean.abs().max() <= 1.0
    # other bounds: the mean maps onto them
    shifted = make_iql_loss(
        3, 2, torch.tensor([0.0, -3.0]), torch.tensor([2.0, 1.0]), num_cells=(8,)
    )
    with set_interaction_type(InteractionType.DETERMINISTIC):
        mean = shifted.actor_network(TensorDict({"observation": 100 * obs}, [64]))["action"]
    assert (mean[:, 0] >= 0).all() and (mean[:, 0] <= 2).all()
    assert (mean[:, 1] >= -3).all() and (mean[:, 1] <= 1).all() and mean[:, 1].min() < -1
    with pytest.raises(ValueError, match="iql actor must be one of"):
        make_iql_loss(3, 2, low, high, actor="beta")


@pytest.mark.parametrize("tau", [0.005, 0.3])
@pytest.mark.parametrize("algo", ["dmg", "iql", "td3bc", "bc", "sac"])
def test_the_updater_s_target_update_is_torchrl_s_soft_update_to_the_bit(algo, tau):
    """``update_targets`` (one ``_foreach_lerp_`` over the trained parameters, compiled
    into the iteration) moves every target of every loss exactly as TorchRL's
    ``SoftUpdate(loss, tau).step()`` does, and nothing else of the loss."""
    ours, theirs = _any_loss(algo), _any_loss(algo)
    updater = ActorCriticUpdater(ours, mode="eager", tau=tau)
    # starts the targets equal to their networks; BC has none (TorchRL refuses it)
    soft_update = SoftUpdate(theirs, tau=tau) if algo != "bc" else None
    with torch.no_grad():  # the networks move away from their targets, alike in both
        g = torch.Generator().manual_seed(0)
        for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
            noise = torch.randn(a.shape, generator=g)
            a.add_(noise)
            b.add_(noise)
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    for _ in range(3):
        updater.update_targets()
        if soft_update is not None:
            soft_update.step()
    after, expected = ours.state_dict(), theirs.state_dict()
    moved_targets = {k for k in after if not torch.equal(after[k], before[k])}
    assert moved_targets == {k for k in expected if not torch.equal(expected[k], before[k])}
    assert all(k.startswith("target_") for k in moved_targets)
    assert bool(moved_targets) == bool(updater.steps.targets)
    for key, value in expected.items():
        assert torch.equal(after[key], value), key
