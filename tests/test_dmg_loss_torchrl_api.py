"""DMGLoss as a sibling of TorchRL's IQLLoss and TD3BCLoss: prioritized replay, the
constructor arguments they share, ``reduction="none"``, key renames, and one-line errors
for wiring mistakes."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import NormalParamExtractor, TensorDictModule, TensorDictSequential
from torchrl.data import LazyTensorStorage, PrioritizedSampler, TensorDictReplayBuffer
from torchrl.modules import MLP, ProbabilisticActor, TanhModule, TanhNormal, ValueOperator
from torchrl.objectives.utils import _GAMMA_LMBDA_DEPREC_ERROR

from torchrl_dmg.modules import make_dmg_networks
from torchrl_dmg.objectives import DMGLoss

pytestmark = pytest.mark.filterwarnings("ignore:No target network updater has been associated")

OBS, ACT, BATCH = 3, 2, 16


def networks(seed: int = 0):
    torch.manual_seed(seed)
    return make_dmg_networks(OBS, ACT, -1.0, 1.0, num_cells=(8, 8))


def make_loss(seed: int = 0, **kwargs) -> DMGLoss:
    return DMGLoss(*networks(seed), bounds=(-1.0, 1.0), **kwargs)


def batch(n: int = BATCH, seed: int = 1) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    return TensorDict(
        {
            "observation": torch.randn(n, OBS, generator=g),
            "action": torch.rand(n, ACT, generator=g) * 2 - 1,
            ("next", "observation"): torch.randn(n, OBS, generator=g),
            ("next", "reward"): torch.randn(n, 1, generator=g),
            ("next", "done"): torch.zeros(n, 1, dtype=torch.bool),
            ("next", "terminated"): torch.zeros(n, 1, dtype=torch.bool),
        },
        batch_size=[n],
    )


class Critic(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.mlp = MLP(in_features=OBS + ACT, out_features=1, num_cells=[8])

    def forward(self, obs, act):
        return self.mlp(torch.cat([obs, act], -1))


# --------------------------------------------------------------- copies
def test_a_pickled_or_deep_copied_loss_computes_the_same_losses_on_its_own_parameters():
    """``torch.save(loss)`` pickles the whole module: nothing in it is a local function.
    A copy computes what the original does, and only from its own parameters."""
    loss, td = make_loss(policy_noise=0.0), batch()
    expected = loss(td.clone())
    terms = ("loss_value", "loss_qvalue", "loss_actor")
    for twin in (pickle.loads(pickle.dumps(loss)), copy.deepcopy(loss)):
        got = twin(td.clone())
        for term in terms:
            torch.testing.assert_close(got[term], expected[term], rtol=0, atol=0)
        with torch.no_grad():
            for p in twin.qvalue_network_params.values(True, True):
                p.zero_()
        assert twin(td.clone())["loss_qvalue"] != expected["loss_qvalue"]
        again = loss(td.clone())
        for term in terms:
            torch.testing.assert_close(again[term], expected[term], rtol=0, atol=0)


# --------------------------------------------------------------- prioritized replay
def test_forward_writes_each_samples_largest_squared_td_error_at_the_priority_key():
    loss, td = make_loss(policy_noise=0.0), batch()
    loss(td)
    _, md = loss.qvalue_loss(td)
    expected = (md["state_action_value"] - md["target_value"]).pow(2).max(0).values
    torch.testing.assert_close(td["td_error"], expected)
    assert not td["td_error"].requires_grad


def test_the_priority_key_is_renamed_with_set_keys_not_the_constructor():
    loss, td = make_loss(), batch()
    loss.set_keys(priority="my_priority")
    loss(td)
    assert "my_priority" in td.keys() and "td_error" not in td.keys()
    with pytest.raises(RuntimeError, match="set_keys"):
        make_loss(priority_key="my_priority")


def test_priority_weights_weigh_every_term_and_can_be_switched_off():
    loss, td = make_loss(policy_noise=0.0), batch()
    per_sample = make_loss(policy_noise=0.0, reduction="none")(td.clone())
    weights = torch.zeros(BATCH)
    weights[3], weights[7] = 1.0, 3.0
    weighted = loss(td.clone().set("priority_weight", weights))
    for key in ("loss_value", "loss_qvalue"):
        torch.testing.assert_close(weighted[key], (per_sample[key] * weights).sum() / 4)
    # the actor's Q normaliser is the batch's mean |Q|, whatever the weights
    torch.testing.assert_close(
        weighted["loss_actor"], (per_sample["loss_actor"] * weights).sum() / 4
    )
    unweighted = make_loss(policy_noise=0.0, use_prioritized_weights=False)
    out = unweighted(td.clone().set("priority_weight", weights))
    torch.testing.assert_close(out["loss_qvalue"], per_sample["loss_qvalue"].mean())


class _TensorSegmentTree:
    """What TorchRL's C++ segment trees compute, as plain tensors: this torchrl build's
    extension does not load against torch 2.13, and its PrioritizedSampler needs them."""

    def __init__(self, capacity: int, reduce: str):
        fill = 0.0 if reduce == "sum" else float("inf")
        self.values = torch.full((capacity,), fill, dtype=torch.float64)
        self.reduce = reduce

    def __getitem__(self, index):
        return self.values[torch.as_tensor(index)]

    def __setitem__(self, index, value):
        self.values[torch.as_tensor(index)] = torch.as_tensor(value, dtype=torch.float64)

    def query(self, left: int, right: int) -> float:
        part = self.values[left:right]
        return float(part.sum() if self.reduce == "sum" else part.min())

    def scan_lower_bound(self, mass):
        cumulative = self.values.cumsum(0)
        index = torch.searchsorted(
            cumulative, torch.as_tensor(mass, dtype=torch.float64), right=True
        )
        return index.clamp_max(len(self.values) - 1)


@pytest.fixture
def prioritized_sampler(monkeypatch):
    from torchrl.data.replay_buffers.samplers import prioritized

    try:
        PrioritizedSampler(8, alpha=0.7, beta=0.5)
    except RuntimeError:  # the C++ extension is unavailable: its trees as tensors
        for name in ("SumSegmentTreeFp32", "SumSegmentTreeFp64"):
            monkeypatch.setattr(prioritized, name, lambda n: _TensorSegmentTree(n, "sum"))
        for name in ("MinSegmentTreeFp32", "MinSegmentTreeFp64"):
            monkeypatch.setattr(prioritized, name, lambda n: _TensorSegmentTree(n, "min"))
    return PrioritizedSampler(64, alpha=0.7, beta=0.5)


def test_a_prioritized_replay_buffer_trains_on_the_losses_td_errors(prioritized_sampler):
    loss = make_loss()
    buffer = TensorDictReplayBuffer(
        storage=LazyTensorStorage(64),
        sampler=prioritized_sampler,
        batch_size=BATCH,
        priority_key="td_error",
        generator=torch.Generator().manual_seed(0),  # not NumPy's global generator
    )
    buffer.extend(batch(64))
    sample = buffer.sample()
    weights = sample["priority_weight"]
    assert weights.shape == (BATCH,)
    per_sample = make_loss(reduction="none")
    torch.manual_seed(0)
    out = loss(sample)
    torch.manual_seed(0)
    unweighted = per_sample(sample.clone())
    torch.testing.assert_close(
        out["loss_value"], (unweighted["loss_value"] * weights).sum() / weights.sum()
    )
    buffer.update_tensordict_priority(sample)
    index = sample["index"]
    once = (index.unsqueeze(0) == index.unsqueeze(1)).sum(0) == 1  # a repeat keeps one write
    stored = torch.as_tensor(prioritized_sampler._sum_tree[index[once]], dtype=torch.float64)
    expected = (sample["td_error"][once].double() + prioritized_sampler._eps) ** 0.7
    torch.testing.assert_close(stored, expected, rtol=1e-5, atol=1e-6)
    # a transition with a larger TD error is now sampled more often
    top = sample["index"][sample["td_error"].argmax()]
    counts = torch.bincount(torch.cat([buffer.sample()["index"] for _ in range(50)]), minlength=64)
    assert counts[top] > counts.float().mean()


# --------------------------------------------------------------- shared arguments
def test_reduction_none_returns_per_sample_losses_with_the_inputs_batch_size():
    td = batch()
    torch.manual_seed(3)
    per_sample = make_loss(reduction="none")(td.clone())
    torch.manual_seed(3)
    mean = make_loss()(td.clone())
    assert per_sample.batch_size == td.batch_size
    for key in mean.keys():
        assert per_sample[key].shape == (BATCH,), key
        torch.testing.assert_close(per_sample[key].mean(), mean[key])


def test_reduction_sum_sums_the_per_sample_losses():
    td = batch()
    torch.manual_seed(3)
    per_sample = make_loss(reduction="none")(td.clone())
    torch.manual_seed(3)
    summed = make_loss(reduction="sum")(td.clone())
    for key in ("loss_value", "loss_qvalue", "loss_actor"):
        torch.testing.assert_close(summed[key], per_sample[key].sum())


@pytest.mark.parametrize("loss_function", ["l1", "smooth_l1"])
def test_loss_function_sets_the_critics_distance_to_their_target(loss_function):
    td = batch()
    _, md = make_loss(policy_noise=0.0).qvalue_loss(td)
    pred, target = md["state_action_value"], md["target_value"].expand_as(md["state_action_value"])
    distance = {"l1": torch.nn.functional.l1_loss, "smooth_l1": torch.nn.functional.smooth_l1_loss}
    expected = distance[loss_function](pred, target, reduction="none").sum(0).mean()
    got, _ = make_loss(policy_noise=0.0, loss_function=loss_function).qvalue_loss(td)
    torch.testing.assert_close(got, expected)
    with pytest.raises(ValueError, match="loss_function"):
        make_loss(loss_function="huber")


def test_separate_losses_keeps_the_critics_gradient_off_a_trunk_shared_with_the_actor():
    def build(separate: bool) -> tuple[DMGLoss, torch.nn.Linear]:
        torch.manual_seed(0)
        trunk = torch.nn.Linear(OBS, 8)

        class Head(torch.nn.Module):
            def __init__(self, n_in, n_out):
                super().__init__()
                self.trunk, self.head = trunk, torch.nn.Linear(n_in, n_out)

            def forward(self, obs, *rest):
                return self.head(torch.cat([torch.relu(self.trunk(obs)), *rest], -1))

        actor = TensorDictSequential(
            TensorDictModule(Head(8, ACT), in_keys=["observation"], out_keys=["param"]),
            TanhModule(in_keys=["param"], out_keys=["action"], low=-1.0, high=1.0),
        )
        qvalue = ValueOperator(Head(8 + ACT, 1), in_keys=["observation", "action"])
        value = ValueOperator(Head(8, 1), in_keys=["observation"])
        return DMGLoss(actor, qvalue, value, bounds=(-1.0, 1.0), separate_losses=separate), trunk

    for separate in (False, True):
        loss, _ = build(separate)
        critic_trunk = loss.qvalue_network_params["module", "trunk", "weight"]
        actor_trunk = loss.actor_network_params["module", "0", "module", "trunk", "weight"]
        out = loss(batch())
        assert critic_trunk.requires_grad is not separate
        if separate:  # the critics read the actor's trunk, detached
            torch.testing.assert_close(critic_trunk[0], actor_trunk.detach())
        else:
            (grad,) = torch.autograd.grad(out["loss_qvalue"], [critic_trunk])
            assert grad.abs().sum() > 0


def test_gamma_in_the_constructor_is_torchrls_deprecation_error():
    with pytest.raises(TypeError, match="make_value_estimator"):
        make_loss(gamma=0.9)
    assert str(_GAMMA_LMBDA_DEPREC_ERROR).startswith("Passing gamma")
    loss = make_loss()
    assert float(loss.gamma) == pytest.approx(0.99)
    loss.make_value_estimator(gamma=0.9)
    assert float(loss.gamma) == pytest.approx(0.9)


def test_the_tensordict_free_call_takes_the_same_entries_as_a_batch():
    loss, td = make_loss(), batch()
    kwargs = {"_".join(k) if isinstance(k, tuple) else k: td[k] for k in loss.in_keys}
    assert "next_done" in kwargs
    torch.manual_seed(5)
    values = loss(**kwargs)
    torch.manual_seed(5)
    out = loss(td)
    torch.testing.assert_close(values[0], out["loss_value"])


# --------------------------------------------------------------- wiring mistakes
def _one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and len(message) < 400, message
    return message


def test_a_stochastic_actor_is_refused():
    _, qvalue, value = networks()
    actor = ProbabilisticActor(
        TensorDictModule(
            torch.nn.Sequential(torch.nn.Linear(OBS, 2 * ACT), NormalParamExtractor()),
            in_keys=["observation"],
            out_keys=["loc", "scale"],
        ),
        in_keys=["loc", "scale"],
        distribution_class=TanhNormal,
    )
    with pytest.raises(TypeError) as excinfo:
        DMGLoss(actor, qvalue, value, bounds=(-1.0, 1.0))
    assert "deterministic actor" in _one_line(excinfo)


def test_fewer_than_two_critics_are_refused():
    with pytest.raises(ValueError) as excinfo:
        make_loss(num_qvalue_nets=1)
    assert "num_qvalue_nets=2" in _one_line(excinfo)


@pytest.mark.parametrize("bounds", [(-float("inf"), float("inf")), (-1.0, float("nan"))])
def test_infinite_bounds_are_refused(bounds):
    with pytest.raises(ValueError) as excinfo:
        DMGLoss(*networks(), bounds=bounds)
    assert "finite action bounds" in _one_line(excinfo)


def test_a_critic_that_does_not_read_the_action_is_refused():
    actor, _, value = networks()
    critic = ValueOperator(Critic(), in_keys=["observation", "obs_action"])
    with pytest.raises(ValueError) as excinfo:
        DMGLoss(actor, critic, value, bounds=(-1.0, 1.0))
    assert "critic must read 'action'" in _one_line(excinfo)


def test_a_critic_writing_another_key_is_refused():
    actor, _, value = networks()
    critic = ValueOperator(Critic(), in_keys=["observation", "action"], out_keys=["q"])
    with pytest.raises(ValueError) as excinfo:
        DMGLoss(actor, critic, value, bounds=(-1.0, 1.0))
    assert "critic must write 'state_action_value'" in _one_line(excinfo)


def test_renamed_keys_must_match_the_networks():
    loss = make_loss()
    with pytest.raises(ValueError) as excinfo:
        loss.set_keys(state_action_value="q")
    assert "out_keys" in _one_line(excinfo)
    assert loss.tensor_keys.state_action_value == "state_action_value"  # left as it was


def test_an_unknown_key_name_lists_the_accepted_ones_in_one_line():
    with pytest.raises(ValueError) as excinfo:
        make_loss().set_keys(not_a_key="x")
    message = _one_line(excinfo)
    assert "not_a_key" in message and "state_action_value" in message


def test_dataset_actions_outside_the_bounds_are_refused():
    td = batch()
    td["action"][0, 1] = 1.5
    with pytest.raises(ValueError) as excinfo:
        make_loss()(td)
    assert "outside the loss's bounds" in _one_line(excinfo)
