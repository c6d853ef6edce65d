"""Seed-stacked training: N agents, one vmapped update (SeedStackedDMGUpdater), the
device-resident sampler and the stacked policy used for evaluation."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from tensordict import TensorDict
from test_updater import ACT, MODES, OBS, device_for, make_batch

from torchrl_dmg.data.samplers import DeviceSampler
from torchrl_dmg.modules import ParamsPolicy, SeedStackedPolicy, make_dmg_networks
from torchrl_dmg.objectives import DMGLoss
from torchrl_dmg.training import DMGUpdater, SeedStackedDMGUpdater, unstack_updater_state


def make_loss(seed: int = 0, device="cpu", num_cells=(16, 16), **kwargs) -> DMGLoss:
    torch.manual_seed(seed)
    actor, qvalue, value = make_dmg_networks(OBS, ACT, -1.0, 1.0, num_cells=num_cells)
    return DMGLoss(actor, qvalue, value, bounds=(-1.0, 1.0), **kwargs).to(device)


def state_of(loss: DMGLoss) -> TensorDict:
    return TensorDict.from_module(loss, as_module=False)


def assert_same_state(single: TensorDict, stacked_one: TensorDict, **tol) -> None:
    assert set(single.keys(True, True)) == set(stacked_one.keys(True, True))
    for key in single.keys(True, True):
        torch.testing.assert_close(single.get(key), stacked_one.get(key), msg=str(key), **tol)


def eager_random_numbers():
    """Inductor draws random numbers its own way unless told to fall back to eager's; the
    setting is not part of dynamo's guards, so graphs compiled earlier are dropped first."""
    from torch._inductor import config as inductor_config

    torch._dynamo.reset()
    return inductor_config.patch(fallback_random=True)


def test_one_stacked_agent_equals_the_single_agent_update():
    single = DMGUpdater(make_loss(), mode="eager", actor_cosine_steps=10)
    stacked = SeedStackedDMGUpdater([make_loss()], mode="eager", actor_cosine_steps=10)
    for step in range(6):
        batch = make_batch(seed=step)
        torch.manual_seed(100 + step)
        single.update(batch)
        torch.manual_seed(100 + step)
        metrics = stacked.update(batch.unsqueeze(0))
    assert metrics["loss_qvalue"].shape == (1,)
    assert_same_state(state_of(single.loss), stacked.agent_state(0))
    assert single.actor_lr == pytest.approx(stacked.actor_lr)


def test_two_stacked_agents_equal_two_separate_updates():
    """Noise off and the same batch for both: each agent evolves exactly as alone."""
    losses = [make_loss(seed, policy_noise=0.0) for seed in (0, 1)]
    separate = [DMGUpdater(copy.deepcopy(loss), mode="eager") for loss in losses]
    stacked = SeedStackedDMGUpdater(losses, mode="eager")
    for step in range(6):
        batch = make_batch(seed=step)
        for updater in separate:
            updater.update(batch)
        stacked.update(torch.stack([batch, batch]))
    for i, updater in enumerate(separate):
        assert_same_state(state_of(updater.loss), stacked.agent_state(i), rtol=1e-5, atol=1e-6)
    # and the two agents really are different
    a, b = stacked.agent_state(0), stacked.agent_state(1)
    assert not torch.allclose(
        a["value_network_params", "module", "0", "weight"],
        b["value_network_params", "module", "0", "weight"],
    )


@pytest.mark.parametrize("mode", [m for m in MODES if m != "eager"])
def test_a_compiled_stack_equals_the_eager_stack(mode):
    """The compiled (or captured) stacked iteration gives the eager stack's numbers: two
    agents, each on its own batch, target noise on, the actor's cosine learning rate. With
    the two tests above, every stacked agent equals its single-agent run in every mode
    (one compiled stack per mode keeps the suite short)."""
    device = device_for(mode)

    def stack(update_mode):
        losses = [make_loss(seed, device=device) for seed in (0, 1)]
        return SeedStackedDMGUpdater(losses, mode=update_mode, actor_cosine_steps=10)

    eager, compiled = stack("eager"), stack(mode)
    with eager_random_numbers():
        for step in range(6):
            batch = torch.stack(
                [make_batch(seed=step, device=device), make_batch(seed=step + 10, device=device)]
            )
            torch.manual_seed(100 + step)
            eager.update(batch)
            torch.manual_seed(100 + step)
            metrics = compiled.update(batch)
    assert metrics["loss_qvalue"].shape == (2,)
    for i in (0, 1):
        assert_same_state(eager.agent_state(i), compiled.agent_state(i), rtol=1e-4, atol=1e-5)
    assert eager.actor_lr == pytest.approx(compiled.actor_lr)


def test_stacked_agents_run_their_matmuls_in_bf16_when_asked(monkeypatch):
    """matmul_precision="medium" reaches every stacked agent: the update's matrix products
    (forward and backward) take bf16 inputs, the agents stay float32 and train close to
    their float32 selves."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from torchrl_dmg.training import compile as compile_module

    products = {torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.bmm, torch.ops.aten.baddbmm}

    class ProductDtypes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket in products:
                self.seen |= {a.dtype for a in args if isinstance(a, torch.Tensor)}
            return func(*args, **(kwargs or {}))

    monkeypatch.setattr(compile_module, "cpu_has_bf16", lambda: True)
    runs = {}
    for precision in ("highest", "medium"):
        stacked = SeedStackedDMGUpdater(
            [make_loss(seed, policy_noise=0.0) for seed in (0, 1)], matmul_precision=precision
        )
        spy = ProductDtypes()
        for step in range(4):
            batch = make_batch(seed=step)
            with spy:
                stacked.update(torch.stack([batch, batch]))
        runs[precision] = (stacked, spy.seen)
    (fp32, fp32_seen), (bf16, bf16_seen) = runs["highest"], runs["medium"]
    assert fp32_seen == {torch.float32}
    assert bf16_seen == {torch.bfloat16}
    for i in range(2):
        assert all(
            t.dtype == torch.float32
            for t in bf16.agent_state(i).values(True, True)
            if t.is_floating_point()
        )
        assert_same_state(fp32.agent_state(i), bf16.agent_state(i), rtol=0.05, atol=5e-3)


def test_compiled_bf16_stacks_run_vmapped_critics_and_refuse_looped_ones(monkeypatch):
    """Stacked agents compiled under bf16 autocast: with vmapped critics they train as the
    eager stack does (within bf16 rounding); with a loop over the critics inductor's
    AVX-512 code returned NaN at the first actor step (torch 2.13, a Xeon with AMX), so that
    combination is refused at construction, in one line naming the fix."""
    from torchrl_dmg.training import compile as compile_module

    monkeypatch.setattr(compile_module, "cpu_has_bf16", lambda: True)

    def stack(mode, loop=False):
        losses = [make_loss(seed, deactivate_vmap=loop) for seed in (0, 1)]
        return SeedStackedDMGUpdater(losses, mode=mode, matmul_precision="medium")

    with pytest.raises(ValueError, match="network.vmap_critics=true"):
        stack("compile", loop=True)
    eager, compiled = stack("eager"), stack("compile")
    with eager_random_numbers():
        for step in range(4):  # two critic iterations, two with the actor
            batch = torch.stack([make_batch(seed=step), make_batch(seed=step + 10)])
            torch.manual_seed(step)
            eager.update(batch)
            torch.manual_seed(step)
            metrics = compiled.update(batch)
    assert torch.isfinite(metrics["loss_qvalue"]).all()
    for i in (0, 1):
        assert_same_state(eager.agent_state(i), compiled.agent_state(i), rtol=0.05, atol=5e-3)


@pytest.mark.parametrize("algo", ["dmg", "iql"])
def test_a_compiled_stacked_iteration_is_one_graph(algo):
    """The stacked agents' losses, their backward passes and Adam compile into the step's
    graph: vmap over plain tensors, no TensorDict batching inside (which broke the graph in
    ten places and left the backward pass and Adam to eager code). DMG and IQL (a value
    network, targets IQL keeps no copy of); TD3+BC's stacked compile is checked against
    separate agents in tests/test_baselines.py."""
    from test_baselines import make_loss as make_baseline_loss
    from torch._dynamo.utils import counters

    from torchrl_dmg.training import SeedStackedUpdater

    torch._dynamo.reset()
    counters.clear()
    if algo == "dmg":
        losses = [make_loss(seed) for seed in (0, 1)]
        batch = torch.stack([make_batch(seed=0), make_batch(seed=1)])
    else:
        from test_baselines import make_batch as make_baseline_batch

        losses = [make_baseline_loss(algo, seed) for seed in (0, 1)]
        batch = make_baseline_batch(seeds=2)
    stacked = SeedStackedUpdater(losses, mode="compile", policy_freq=2)
    for _ in range(4):  # critic-only iterations and critic+actor iterations
        stacked.update(batch)
    assert dict(counters["graph_break"]) == {}
    # one graph per compiled step: the critic iteration and the critic+actor iteration
    assert counters["stats"]["unique_graphs"] == 2


@pytest.mark.parametrize("mode", MODES)
def test_stacked_actor_and_targets_update_exactly_every_policy_freq_steps(mode):
    device = device_for(mode)
    stacked = SeedStackedDMGUpdater(
        [make_loss(s, device=device) for s in (0, 1)], policy_freq=3, mode=mode
    )
    batch = torch.stack([make_batch(seed=0, device=device), make_batch(seed=1, device=device)])
    actor_changed, target_changed = [], []
    for _ in range(9):
        actor = stacked.network_params("actor").detach().clone()
        target = stacked.stacked["target_qvalue_network_params"].clone()
        metrics = stacked.update(batch)
        for before, after, record in (
            (actor, stacked.network_params("actor"), actor_changed),
            (target, stacked.stacked["target_qvalue_network_params"], target_changed),
        ):
            # per seed: did this agent's tensors move?
            pairs = list(zip(before.values(True, True), after.values(True, True), strict=True))
            moved = [any((x[i] != y[i]).any() for x, y in pairs) for i in range(2)]
            record.append(tuple(moved))
        assert ("loss_actor" in metrics.keys()) == (stacked.num_updates % 3 == 0)
    expected = [(False, False), (False, False), (True, True)] * 3
    assert actor_changed == expected
    assert target_changed == expected


@pytest.mark.parametrize("mode", MODES)
def test_stacked_target_noise_is_fresh_each_step_and_different_per_agent(mode):
    device = device_for(mode)
    # the same agent twice, frozen (lr 0), target = r + γ Q'(s', π'(s') + ε) only
    loss = make_loss(device=device, mixture_coef=1.0)
    stacked = SeedStackedDMGUpdater([loss, copy.deepcopy(loss)], lr=0.0, mode=mode)
    batch = make_batch(device=device)
    batch = torch.stack([batch, batch])
    targets = [stacked.update(batch)["target_value"].tolist() for _ in range(5)]
    per_step = [tuple(t) for t in targets]
    assert len(set(per_step)) == 5, targets  # fresh noise at every step
    assert all(a != b for a, b in per_step), targets  # each agent draws its own noise


def test_every_metric_of_a_stacked_update_has_one_value_per_agent():
    """Per-sample diagnostics are averaged over each agent's batch, not over the agents."""
    losses = [make_loss(), make_loss()]
    stacked = SeedStackedDMGUpdater(losses, mode="eager", policy_freq=1)
    batch = torch.stack([make_batch(0), make_batch(1)])
    metrics = stacked.update(batch)
    assert "loss_actor" in metrics.keys() and "target_value" in metrics.keys()
    assert {k: tuple(v.shape) for k, v in metrics.items()} == {k: (2,) for k in metrics.keys()}
    assert metrics["state_value"][0] != metrics["state_value"][1]


def test_stacked_state_dict_round_trip_and_coefficients():
    def build():
        return SeedStackedDMGUpdater([make_loss(s) for s in (0, 1)], actor_cosine_steps=20)

    a = build()
    for step in range(3):
        a.update(torch.stack([make_batch(seed=step), make_batch(seed=step + 10)]))
    state = copy.deepcopy(a.state_dict())
    b = build()
    b.load_state_dict(state)
    assert b.num_updates == 3
    for step in range(3, 6):
        batch = torch.stack([make_batch(seed=step), make_batch(seed=step + 10)])
        torch.manual_seed(step)
        a.update(batch)
        torch.manual_seed(step)
        b.update(batch)
    assert_same_state(a.stacked, b.stacked)

    a.set_coefficients(mixture_coef=0.4, penalty_coef=0.05)
    assert a.stacked["mixture_coef"].tolist() == pytest.approx([0.4, 0.4])
    assert a.stacked["penalty_coef"].tolist() == pytest.approx([0.05, 0.05])


def test_stacked_updater_rejects_bad_inputs():
    with pytest.raises(ValueError, match="architecture"):
        SeedStackedDMGUpdater([make_loss(0), make_loss(1, num_cells=(8, 8))])
    stacked = SeedStackedDMGUpdater([make_loss(0), make_loss(1)])
    with pytest.raises(ValueError, match=r"num_seeds=2"):
        stacked.update(make_batch())
    with pytest.raises(ValueError, match="single agent"):
        SeedStackedDMGUpdater([make_loss(0), make_loss(1)], mode="compile", skip_guards=True)


def test_device_sampler_draws_dataset_rows_per_seed():
    data = TensorDict({"x": torch.arange(100.0).unsqueeze(-1)}, batch_size=[100])
    single = DeviceSampler(data, batch_size=64)
    assert single.sample().shape == (64,)
    sampler = DeviceSampler(data, batch_size=64, num_seeds=3)
    batch = sampler.sample()
    assert batch.shape == (3, 64) and len(sampler) == 100
    x = batch["x"].squeeze(-1)
    assert ((x >= 0) & (x < 100) & (x == x.round())).all()
    assert not torch.equal(x[0], x[1])  # every agent its own batch
    seen = torch.cat([sampler.sample()["x"].flatten() for _ in range(20)]).unique()
    assert len(seen) == 100  # uniform over the whole dataset
    with pytest.raises(ValueError, match="batch_size"):
        DeviceSampler(data, batch_size=0)


@pytest.mark.parametrize("num_seeds, num", [(None, None), (3, None), (None, 4), (2, 4)])
def test_device_sampler_batches_are_the_dataset_indexed_by_the_same_draw(num_seeds, num):
    """The leaf-by-leaf batch equals ``data[index]`` for the same seeded draw: every key
    (nested ones too), dtype, batch size and value; a dataset whose leaves are not plain
    tensors is indexed as a whole."""
    from torchrl_dmg.data.samplers import _tensor_leaves

    g = torch.Generator().manual_seed(0)
    data = TensorDict(
        {
            "observation": torch.randn(50, 3, generator=g),
            "action": torch.randn(50, 2, generator=g),
            "next": {"reward": torch.randn(50, 1, generator=g), "done": torch.rand(50, 1) > 0.5},
        },
        batch_size=[50],
    )
    sampler = DeviceSampler(data, batch_size=8, num_seeds=num_seeds)
    assert sampler._leaves is not None
    shape = sampler.shape if num is None else (num, *sampler.shape)
    torch.manual_seed(3)
    got = sampler.sample(num)
    torch.manual_seed(3)
    want = data[torch.randint(len(data), shape)]
    assert got.batch_size == want.batch_size == torch.Size(shape)
    assert set(got.keys(True, True)) == set(want.keys(True, True))
    for key in want.keys(True, True):
        assert got.get(key).dtype == want.get(key).dtype
        assert torch.equal(got.get(key), want.get(key)), key
    lazy = TensorDict.lazy_stack(list(data.unbind(0)), 0)  # rows as separate TensorDicts
    assert _tensor_leaves(lazy) is None
    assert DeviceSampler(lazy, batch_size=8).sample().batch_size == torch.Size([8])


def test_stacked_policy_acts_as_each_agent_in_its_block_of_envs():
    losses = [make_loss(s) for s in (0, 1, 2)]
    stacked = SeedStackedDMGUpdater(losses)
    obs = torch.randn(3 * 4, OBS)
    td = stacked.policy()(TensorDict({"observation": obs}, batch_size=[12]))
    for i, loss in enumerate(losses):
        alone = ParamsPolicy(loss.actor_network, loss.actor_network_params)
        expected = alone(TensorDict({"observation": obs[4 * i : 4 * i + 4]}, batch_size=[4]))
        torch.testing.assert_close(td["action"][4 * i : 4 * i + 4], expected["action"])
    assert isinstance(stacked.policy(), SeedStackedPolicy)
    with pytest.raises(ValueError, match="multiple of 3"):
        stacked.policy()(TensorDict({"observation": torch.randn(5, OBS)}, batch_size=[5]))


@pytest.mark.parametrize("algo", ["dmg", "iql"])
def test_a_stacked_policy_leaves_the_shared_actor_as_it_was(algo):
    """Acting leaves the skeleton actor's parameters the very tensors they were, with
    their ``requires_grad``: ``to_module`` under ``vmap`` once left them without it, and a
    compiled stacked update, which guards on them, recompiled after the first evaluation.
    IQL's stochastic actor acts with its deterministic action, as each agent alone."""
    from test_baselines import make_loss as make_baseline_loss
    from torchrl.envs.utils import ExplorationType, set_exploration_type

    from torchrl_dmg.training import SeedStackedUpdater

    build = make_loss if algo == "dmg" else (lambda seed: make_baseline_loss(algo, seed))
    losses = [build(s) for s in (0, 1)]
    stacked = SeedStackedUpdater(losses)
    actor = stacked.loss.actor_network
    before = {name: (p, p.requires_grad) for name, p in actor.named_parameters()}
    obs = torch.randn(2 * 3, OBS)
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        td = stacked.policy()(TensorDict({"observation": obs}, batch_size=[6]))
        for i, loss in enumerate(losses):
            alone = ParamsPolicy(loss.actor_network, loss.actor_network_params)
            expected = alone(TensorDict({"observation": obs[3 * i : 3 * i + 3]}, [3]))
            torch.testing.assert_close(td["action"][3 * i : 3 * i + 3], expected["action"])
    after = {name: (p, p.requires_grad) for name, p in actor.named_parameters()}
    assert before.keys() == after.keys()
    for name, (param, grad) in before.items():
        assert after[name][0] is param and after[name][1] == grad, name


def test_a_compiled_stacked_update_does_not_recompile_after_an_evaluation():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    stacked = SeedStackedDMGUpdater([make_loss(s) for s in (0, 1)], mode="compile")
    batch = torch.stack([make_batch(seed=0), make_batch(seed=1)])
    for _ in range(2):  # the critic iteration and the critic+actor iteration
        stacked.update(batch)
    stacked.policy()(TensorDict({"observation": torch.randn(4, OBS)}, batch_size=[4]))
    for _ in range(2):
        stacked.update(batch)
    assert counters["stats"]["unique_graphs"] == 2


def test_one_agent_of_a_stack_continues_alone_exactly():
    """unstack_updater_state: agent 1's weights, targets and Adam moments, as a single
    DMGUpdater state; training it alone then matches training it inside the stack."""
    losses = [make_loss(s, policy_noise=0.0) for s in (0, 1)]
    stacked = SeedStackedDMGUpdater(losses)
    for step in range(3):
        stacked.update(torch.stack([make_batch(seed=step + 10), make_batch(seed=step)]))
    alone = DMGUpdater(make_loss(7, policy_noise=0.0))
    alone.load_state_dict(unstack_updater_state(stacked.state_dict(), 1, alone.loss))
    assert alone.num_updates == 3
    assert_same_state(state_of(alone.loss), stacked.agent_state(1))
    for step in range(3, 6):
        batch = make_batch(seed=step)
        alone.update(batch)
        stacked.update(torch.stack([make_batch(seed=step + 10), batch]))
    assert_same_state(state_of(alone.loss), stacked.agent_state(1), rtol=1e-5, atol=1e-6)
    with pytest.raises(IndexError):
        unstack_updater_state(stacked.state_dict(), 2, alone.loss)


@pytest.mark.parametrize("mode", MODES)
def test_stacked_update_many_equals_as_many_stacked_updates(mode):
    device = device_for(mode)
    one = SeedStackedDMGUpdater(
        [make_loss(device=device, seed=s) for s in (0, 1)], mode=mode, actor_cosine_steps=8
    )
    many = SeedStackedDMGUpdater(
        [make_loss(device=device, seed=s) for s in (0, 1)], mode=mode, actor_cosine_steps=8
    )
    with eager_random_numbers():
        for call in range(4):
            batches = torch.stack(
                [
                    torch.stack([make_batch(seed=10 * call + k + a, device=device) for a in (0, 5)])
                    for k in range(4)
                ]
            )  # [K=4, N=2, B]
            torch.manual_seed(call)
            for k in range(4):
                one.update(batches[k])
            torch.manual_seed(call)
            metrics = many.update_many(batches)
    assert metrics["critic", "loss_qvalue"].shape == (4, 2)
    assert metrics["actor", "loss_actor"].shape == (2, 2)
    tol = {} if mode == "eager" else {"rtol": 1e-4, "atol": 1e-5}
    for i in (0, 1):
        assert_same_state(one.agent_state(i), many.agent_state(i), **tol)
    assert one.actor_lr == pytest.approx(many.actor_lr, rel=1e-5)


def test_a_stacked_update_does_not_warn_that_no_target_updater_is_associated(monkeypatch):
    import torchrl.objectives.common

    monkeypatch.setattr(torchrl.objectives.common, "rl_warnings", lambda: True)  # conftest: off
    stacked = SeedStackedDMGUpdater([make_loss(0), make_loss(1)], mode="eager")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # TorchRL's TARGET_NET_WARNING is a UserWarning
        for step in range(2):
            stacked.update(torch.stack([make_batch(seed=step)] * 2))
