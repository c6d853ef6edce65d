"""Tests for :class:`torchrl_dmg.objectives.DMGLoss` against the "Losses" section of the spec.

Every reference below is written in plain torch (``F.linear`` layer by layer) and evaluated
on the very parameter tensors the loss holds, so a mix-up between online and target
networks, a wrong sign, a missing stop-gradient or a wrong default is caught. Target
parameters are perturbed away from the online ones, and non-default hyperparameters and
asymmetric action bounds are used throughout.
"""

from __future__ import annotations

import copy
import math
import time
import warnings

import pytest
import torch
import torch.nn.functional as F
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Composite, LazyTensorStorage, TensorDictReplayBuffer, Unbounded
from torchrl.objectives import SoftUpdate
from torchrl.objectives.utils import ValueEstimators

from torchrl_dmg.modules import make_dmg_networks
from torchrl_dmg.objectives import DMGLoss

pytestmark = pytest.mark.filterwarnings("ignore:No target network updater has been associated")

OBS_DIM, ACT_DIM, BATCH = 3, 2, 16
LOW = torch.tensor([-1.0, -2.0])
HIGH = torch.tensor([1.0, 0.5])
SCALE = (HIGH - LOW) / 2  # the unit of policy_noise and noise_clip
# Deliberately far from the paper's defaults (λ .25, ν .1, τ .7, α 3, w_max 3, γ .99, σ .2, c .5).
HP = {
    "mixture_coef": 0.4,
    "penalty_coef": 0.7,
    "expectile": 0.8,
    "temperature": 2.0,
    "max_weight": 1.5,
    "gamma": 0.9,
    "policy_noise": 0.3,
    "noise_clip": 0.4,
}
PARAM_GROUPS = (
    "actor_network_params",
    "qvalue_network_params",
    "value_network_params",
    "target_actor_network_params",
    "target_qvalue_network_params",
)


# ----------------------------------------------------------------------------- builders
def make_loss(seed: int = 0, perturb: bool = True, **overrides) -> DMGLoss:
    """Tiny DMG loss (8-8 MLPs), targets moved away from the online networks.

    V's output bias is shifted so that the advantages ``min Q' - V`` of the default batch
    are centred on 0: both signs occur, and so do weights on both sides of ``w_max``.
    """
    torch.manual_seed(seed)
    actor, qvalue, value = make_dmg_networks(OBS_DIM, ACT_DIM, LOW, HIGH, num_cells=(8, 8))
    kwargs = {**HP, **overrides}
    gamma = kwargs.pop("gamma")
    if "action_spec" not in kwargs:
        kwargs.setdefault("bounds", (LOW, HIGH))
    loss = DMGLoss(actor, qvalue, value, **kwargs)
    loss.make_value_estimator(gamma=gamma)
    if perturb:
        perturb_targets(loss)
    with torch.no_grad():
        loss.value_network_params["module", "4", "bias"].add_(
            ref_advantage(loss, make_batch()).mean()
        )
    return loss


def perturb_targets(loss: DMGLoss) -> None:
    """Move target actor and critics away from the online ones (bounds excepted)."""
    with torch.no_grad():
        for name in ("target_actor_network_params", "target_qvalue_network_params"):
            for key, tensor in getattr(loss, name).items(True, True):
                if key[-1] not in ("action_low", "action_high"):
                    tensor.add_(0.3 * torch.randn_like(tensor))


def make_batch(
    batch: int = BATCH,
    seed: int = 1,
    terminated: torch.Tensor | None = None,
    truncated: torch.Tensor | None = None,
) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    if terminated is None:
        terminated = torch.rand(batch, 1, generator=g) < 0.3
    if truncated is None:
        truncated = torch.zeros(batch, 1, dtype=torch.bool)
    return TensorDict(
        {
            "observation": torch.randn(batch, OBS_DIM, generator=g),
            "action": LOW + (HIGH - LOW) * torch.rand(batch, ACT_DIM, generator=g),
            ("next", "observation"): torch.randn(batch, OBS_DIM, generator=g),
            ("next", "reward"): torch.randn(batch, 1, generator=g),
            ("next", "terminated"): terminated,
            ("next", "truncated"): truncated,
            ("next", "done"): terminated | truncated,
        },
        batch_size=[batch],
    )


# ------------------------------------------------------------------- plain-torch reference
def _mlp(x: torch.Tensor, params: TensorDictBase, prefix: str, idx: int | None = None):
    """ReLU MLP with layers ``prefix.{0,2,4}`` (torchrl ``MLP`` layout), via ``F.linear``."""
    flat = params.flatten_keys(".")
    for k, layer in enumerate((0, 2, 4)):
        w, b = flat[f"{prefix}.{layer}.weight"], flat[f"{prefix}.{layer}.bias"]
        if idx is not None:
            w, b = w[idx], b[idx]
        x = F.linear(x, w, b)
        if k < 2:
            x = F.relu(x)
    return x


def ref_actor(params, obs):
    """tanh squashed to [LOW, HIGH]."""
    return LOW + (HIGH - LOW) * (torch.tanh(_mlp(obs, params, "module.0.module")) + 1) / 2


def ref_qs(params, obs, action):
    """Both critics: shape [2, batch]."""
    x = torch.cat([obs, action], -1)
    return torch.stack([_mlp(x, params, "module.mlp", i).squeeze(-1) for i in range(2)])


def ref_v(params, obs):
    return _mlp(obs, params, "module").squeeze(-1)


def ref_advantage(loss, td):
    """``min_i Q_θi'(s, a) - V(s)``, no gradient."""
    with torch.no_grad():
        q_tgt = ref_qs(loss.target_qvalue_network_params, td["observation"], td["action"])
        return q_tgt.min(0).values - ref_v(loss.value_network_params, td["observation"])


def ref_expectile_value_loss(loss, td, tau):
    u = ref_advantage(loss, td)
    return ((tau - (u < 0).float()).abs() * u**2).mean()


def ref_target(loss, td, lam, gamma, noise=None):
    """``y = r + γ(1-terminated)[λ min_i Q_θi'(s', ã') + (1-λ) V(s')]``."""
    with torch.no_grad():
        next_obs = td["next", "observation"]
        next_action = ref_actor(loss.target_actor_network_params, next_obs)
        if noise is not None:
            next_action = next_action + noise
        next_action = torch.clamp(next_action, LOW, HIGH)
        next_q = ref_qs(loss.target_qvalue_network_params, next_obs, next_action).min(0).values
        next_v = ref_v(loss.value_network_params, next_obs)
        reward = td["next", "reward"].squeeze(-1)
        not_term = 1.0 - td["next", "terminated"].squeeze(-1).float()
        return reward + gamma * not_term * (lam * next_q + (1 - lam) * next_v)


def ref_qvalue_loss(loss, td, y, reduce=True):
    """``Σ_i E[(Q_θi(s,a) - y)²]`` (per sample when ``reduce=False``)."""
    pred = ref_qs(loss.qvalue_network_params, td["observation"], td["action"])
    per_sample = ((pred - y) ** 2).sum(0)
    return per_sample.mean() if reduce else per_sample


def ref_actor_loss(loss, td, nu, alpha, w_max):
    """``-E[q]/sg(E|q|) + ν E[w mean_j (π(s) - a)²]``, gradient only into the actor."""
    w = torch.clamp(torch.exp(alpha * ref_advantage(loss, td)), max=w_max)
    pi = ref_actor(loss.actor_network_params, td["observation"])
    q = ref_qs(loss.qvalue_network_params.detach(), td["observation"], pi).min(0).values
    bc = ((pi - td["action"]) ** 2).mean(-1)
    return -q.mean() / q.abs().mean().detach() + nu * (w * bc).mean()


def seeded_noise(seed, action, sigma, clip):
    """The smoothing noise as the spec defines it, drawn after ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    eps = torch.randn_like(action) * sigma
    return eps.clamp(-clip, clip) * SCALE, eps


def trainable(params: TensorDictBase) -> list[torch.Tensor]:
    return [p for p in params.values(True, True) if p.requires_grad]


def grad_owners(loss: DMGLoss) -> set[str]:
    """Names of the parameter groups in which some tensor received a non-zero gradient."""
    owners = set()
    for name in PARAM_GROUPS:
        for p in getattr(loss, name).values(True, True):
            if p.grad is not None and p.grad.abs().sum() > 0:
                owners.add(name)
    return owners


def clear_grads(loss: DMGLoss) -> None:
    for name in PARAM_GROUPS:
        for p in getattr(loss, name).values(True, True):
            p.grad = None


# ------------------------------------------------------------------ 1. losses vs reference
def test_targets_differ_from_online_networks():
    """Precondition of the reference tests: a target/online mix-up would change the numbers."""
    loss = make_loss()
    for online, target in (
        (loss.actor_network_params, loss.target_actor_network_params),
        (loss.qvalue_network_params, loss.target_qvalue_network_params),
    ):
        w_online = online.flatten_keys(".")
        w_target = target.flatten_keys(".")
        key = next(k for k in w_online.keys() if k.endswith("weight"))
        assert not torch.allclose(w_online[key], w_target[key])


def test_targets_start_as_copies_of_online_networks_and_critics_differ():
    loss = make_loss(perturb=False)
    assert (loss.target_actor_network_params == loss.actor_network_params.detach()).all()
    assert (loss.target_qvalue_network_params == loss.qvalue_network_params.detach()).all()
    # the two critics are independently initialised, not two copies of one
    weight = loss.qvalue_network_params["module", "mlp", "0", "weight"]
    assert not torch.allclose(weight[0], weight[1])


@pytest.mark.parametrize("layer_norm", [False, True])
def test_value_init_moves_only_the_output_bias_of_critics_and_value(layer_norm):
    """``value_init`` sets the last bias of the critics and of V (targets start there too);
    every other parameter, the actor's included, is the one the same seed gives without it."""
    nets = {}
    for init in (None, -90.0):
        torch.manual_seed(0)
        nets[init] = make_dmg_networks(
            OBS_DIM, ACT_DIM, LOW, HIGH, num_cells=(8, 8), layer_norm=layer_norm, value_init=init
        )
    for plain, shifted in zip(nets[None], nets[-90.0], strict=True):
        plain_params = dict(plain.named_parameters())
        shifted_params = dict(shifted.named_parameters())
        last_bias = [k for k in plain_params if k.endswith("bias")][-1]
        for name, p in plain_params.items():
            q = shifted_params[name]
            if plain is nets[None][0] or name != last_bias:
                assert torch.equal(p, q), name
            else:
                assert torch.equal(q, torch.full_like(q, -90.0)) and not torch.equal(p, q)
    _, qvalue, value = nets[-90.0]
    td = make_batch()
    q = qvalue(td.clone())["state_action_value"]
    v = value(td.clone())["state_value"]
    assert (q + 90).abs().max() < 2 and (v + 90).abs().max() < 2  # a fresh net predicts ~ -90
    loss = DMGLoss(
        *nets[-90.0], bounds=(LOW, HIGH), **{k: v for k, v in HP.items() if k != "gamma"}
    )
    target = loss.target_qvalue_network_params.flatten_keys(".")
    assert torch.equal(
        target[[k for k in target.keys() if k.endswith("bias")][-1]], torch.full((2, 1), -90.0)
    )


def test_value_loss_is_expectile_regression_on_min_target_q():
    loss, td = make_loss(), make_batch()
    u = ref_advantage(loss, td)
    assert (u > 0).any() and (u < 0).any()  # both branches of |τ - 1(u<0)| are exercised
    value_loss, metadata = loss.value_loss(td)
    torch.testing.assert_close(value_loss, ref_expectile_value_loss(loss, td, HP["expectile"]))
    torch.testing.assert_close(
        metadata["state_value"], ref_v(loss.value_network_params, td["observation"])
    )


def test_qvalue_loss_without_noise_matches_dmg_target():
    loss, td = make_loss(policy_noise=0.0), make_batch()
    assert td["next", "terminated"].any() and not td["next", "terminated"].all()
    y = ref_target(loss, td, HP["mixture_coef"], HP["gamma"])
    qvalue_loss, metadata = loss.qvalue_loss(td)
    torch.testing.assert_close(qvalue_loss, ref_qvalue_loss(loss, td, y))
    torch.testing.assert_close(metadata["target_value"], y)
    torch.testing.assert_close(
        metadata["state_action_value"],
        ref_qs(loss.qvalue_network_params, td["observation"], td["action"]),
    )


def test_qvalue_loss_with_seeded_noise_matches_clipped_smoothing_noise():
    loss, td = make_loss(), make_batch()
    noise, eps = seeded_noise(123, td["action"], HP["policy_noise"], HP["noise_clip"])
    assert (eps.abs() > HP["noise_clip"]).any()  # the noise clip is exercised
    y = ref_target(loss, td, HP["mixture_coef"], HP["gamma"], noise=noise)
    torch.manual_seed(123)
    qvalue_loss, _ = loss.qvalue_loss(td)
    torch.testing.assert_close(qvalue_loss, ref_qvalue_loss(loss, td, y))
    # the noise matters: without it the loss is different
    y_plain = ref_target(loss, td, HP["mixture_coef"], HP["gamma"])
    assert not torch.allclose(qvalue_loss, ref_qvalue_loss(loss, td, y_plain))


def test_target_action_offset_is_noise_clip_times_action_half_range():
    """Huge σ: ã' = clip(π'(s') ± c·(high-low)/2, low, high), read from the critic's input."""
    clip = 0.1
    loss = make_loss(policy_noise=1e6, noise_clip=clip, deactivate_vmap=True)
    td = make_batch()
    seen = []

    def record(module, args):
        seen.append((args[0]["observation"].clone(), args[0]["action"].clone()))

    handle = loss.qvalue_network.register_forward_pre_hook(record)
    try:
        torch.manual_seed(7)
        loss.qvalue_loss(td)
    finally:
        handle.remove()
    next_actions = [a for obs, a in seen if torch.equal(obs, td["next", "observation"])]
    assert next_actions, "the critics were never queried at s'"

    torch.manual_seed(7)
    sign = torch.randn_like(td["action"]).sign()
    with torch.no_grad():
        pi_next = ref_actor(loss.target_actor_network_params, td["next", "observation"])
    unclipped = pi_next + sign * clip * SCALE
    expected = torch.clamp(unclipped, LOW, HIGH)
    inside = (unclipped >= LOW) & (unclipped <= HIGH)
    assert inside.any()
    for next_action in next_actions:
        torch.testing.assert_close(next_action, expected)
        offset = (next_action - pi_next).abs()
        torch.testing.assert_close(offset[inside], (clip * SCALE).expand_as(offset)[inside])


def test_actor_loss_matches_reference_value_and_gradient():
    loss, td = make_loss(), make_batch()
    raw = torch.exp(HP["temperature"] * ref_advantage(loss, td))
    assert (raw > HP["max_weight"]).any() and (raw < HP["max_weight"]).any()  # w_max is exercised
    actor_loss, metadata = loss.actor_loss(td)
    reference = ref_actor_loss(loss, td, HP["penalty_coef"], HP["temperature"], HP["max_weight"])
    torch.testing.assert_close(actor_loss, reference)
    # gradients agree too: this checks the stop-gradient on E|q| (same value, other gradient)
    params = trainable(loss.actor_network_params)
    got = torch.autograd.grad(actor_loss, params)
    want = torch.autograd.grad(reference, params)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)
    with torch.no_grad():
        pi = ref_actor(loss.actor_network_params, td["observation"])
        q = ref_qs(loss.qvalue_network_params, td["observation"], pi).min(0).values
    torch.testing.assert_close(metadata["actor_q"], q)
    torch.testing.assert_close(metadata["bc_loss"], ((pi - td["action"]) ** 2).mean(-1))
    torch.testing.assert_close(metadata["adv_weight"], raw.clamp(max=HP["max_weight"]))


# ------------------------------------------------------------------ 2. gradient isolation
@pytest.mark.parametrize(
    ("method", "owner"),
    [
        ("value_loss", "value_network_params"),
        ("qvalue_loss", "qvalue_network_params"),
        ("actor_loss", "actor_network_params"),
    ],
)
def test_each_loss_only_reaches_its_own_network(method, owner):
    loss, td = make_loss(), make_batch()
    clear_grads(loss)
    getattr(loss, method)(td)[0].backward()
    assert grad_owners(loss) == {owner}
    for name in ("target_actor_network_params", "target_qvalue_network_params"):
        for p in getattr(loss, name).values(True, True):
            assert p.grad is None
    # every weight of the owner is trained (for the critics: both of them)
    for p in trainable(getattr(loss, owner)):
        assert p.grad is not None
        if owner == "qvalue_network_params":
            assert all(p.grad[i].abs().sum() > 0 for i in range(2))


# ------------------------------------------------------------- 3. other in-sample estimators
def test_xql_value_loss_is_gumbel_regression_with_clipped_z():
    beta, clip = 0.1, 2.0
    loss = make_loss(in_sample_estimator="xql", xql_beta=beta, xql_clip=clip)
    td = make_batch()
    z_raw = ref_advantage(loss, td) / beta
    assert (z_raw.abs() > clip).any() and (z_raw.abs() < clip).any()  # the clip is exercised
    z = z_raw.clamp(-clip, clip)
    torch.testing.assert_close(loss.value_loss(td)[0], (torch.exp(z) - z - 1).mean())


def test_sql_value_loss_is_sparse_regression():
    sql_alpha = 0.15
    loss = make_loss(in_sample_estimator="sql", sql_alpha=sql_alpha)
    td = make_batch()
    with torch.no_grad():
        v = ref_v(loss.value_network_params, td["observation"])
    x = 1 + ref_advantage(loss, td) / (2 * sql_alpha)
    assert (x > 0).any() and (x < 0).any()  # both sides of 1(x>0) are exercised
    expected = ((x > 0).float() * x**2 + v / sql_alpha).mean()
    torch.testing.assert_close(loss.value_loss(td)[0], expected)


def test_unknown_in_sample_estimator_raises():
    with pytest.raises(ValueError, match="in_sample_estimator"):
        make_loss(in_sample_estimator="awr")


# ----------------------------------------------------------------------- 4. bootstrapping
def test_lambda_zero_target_is_reward_plus_discounted_next_state_value():
    loss = make_loss(mixture_coef=0.0, reduction="none")
    td = make_batch()
    with torch.no_grad():
        next_v = ref_v(loss.value_network_params, td["next", "observation"])
    not_term = 1.0 - td["next", "terminated"].squeeze(-1).float()
    y = td["next", "reward"].squeeze(-1) + HP["gamma"] * not_term * next_v
    per_sample, metadata = loss.qvalue_loss(td)
    torch.testing.assert_close(per_sample, ref_qvalue_loss(loss, td, y, reduce=False))
    torch.testing.assert_close(metadata["target_value"], y)


def test_terminated_transition_does_not_bootstrap():
    loss = make_loss()
    td = make_batch(terminated=torch.ones(BATCH, 1, dtype=torch.bool))
    qvalue_loss, metadata = loss.qvalue_loss(td)
    reward = td["next", "reward"].squeeze(-1)
    torch.testing.assert_close(metadata["target_value"], reward, rtol=0, atol=0)
    torch.testing.assert_close(qvalue_loss, ref_qvalue_loss(loss, td, reward))


def test_truncated_but_not_terminated_transition_bootstraps():
    loss = make_loss(mixture_coef=0.0)
    td = make_batch(
        terminated=torch.zeros(BATCH, 1, dtype=torch.bool),
        truncated=torch.ones(BATCH, 1, dtype=torch.bool),
    )
    assert td["next", "done"].all()
    with torch.no_grad():
        next_v = ref_v(loss.value_network_params, td["next", "observation"])
    y = td["next", "reward"].squeeze(-1) + HP["gamma"] * next_v
    _, metadata = loss.qvalue_loss(td)
    torch.testing.assert_close(metadata["target_value"], y)
    assert not torch.allclose(metadata["target_value"], td["next", "reward"].squeeze(-1))


# ---------------------------------------------------------------------- 5. coefficients
def test_set_coefficients_changes_losses_in_place():
    loss, td = make_loss(policy_noise=0.0), make_batch()
    buffers = {name: getattr(loss, name) for name in ("mixture_coef", "penalty_coef", "gamma")}
    lam, nu, gamma = 0.85, 2.5, 0.6
    loss.set_coefficients(mixture_coef=lam, penalty_coef=nu, gamma=gamma)
    for name, value in (("mixture_coef", lam), ("penalty_coef", nu), ("gamma", gamma)):
        assert getattr(loss, name) is buffers[name]  # same tensor object, updated in place
        torch.testing.assert_close(getattr(loss, name), torch.tensor(value))
    y = ref_target(loss, td, lam, gamma)
    torch.testing.assert_close(loss.qvalue_loss(td)[0], ref_qvalue_loss(loss, td, y))
    expected_actor = ref_actor_loss(loss, td, nu, HP["temperature"], HP["max_weight"])
    torch.testing.assert_close(loss.actor_loss(td)[0], expected_actor)


def test_set_coefficients_leaves_unnamed_coefficients_alone():
    loss = make_loss()
    loss.set_coefficients(gamma=0.5)
    torch.testing.assert_close(loss.mixture_coef, torch.tensor(HP["mixture_coef"]))
    torch.testing.assert_close(loss.penalty_coef, torch.tensor(HP["penalty_coef"]))


def test_make_value_estimator_sets_gamma():
    loss, td = make_loss(policy_noise=0.0), make_batch()
    gamma_buffer = loss.gamma
    loss.make_value_estimator(gamma=0.95)
    assert loss.gamma is gamma_buffer
    torch.testing.assert_close(loss.gamma, torch.tensor(0.95))
    y = ref_target(loss, td, HP["mixture_coef"], 0.95)
    torch.testing.assert_close(loss.qvalue_loss(td)[0], ref_qvalue_loss(loss, td, y))
    loss.make_value_estimator(ValueEstimators.TD0, gamma=0.9)
    torch.testing.assert_close(loss.gamma, torch.tensor(0.9))
    with pytest.raises(NotImplementedError):
        loss.make_value_estimator(ValueEstimators.GAE)


# ------------------------------------------------------------------------------ 6. keys
def test_set_keys_reads_renamed_reward_and_terminated():
    loss = make_loss(policy_noise=0.0)
    loss.set_keys(reward="rew", terminated="term")
    assert ("next", "rew") in loss.in_keys and ("next", "term") in loss.in_keys
    assert ("next", "reward") not in loss.in_keys
    td = make_batch()
    renamed = td.clone()
    renamed["next", "rew"] = td["next", "reward"]
    renamed["next", "term"] = td["next", "terminated"]
    # the old keys hold different values: the loss must not read them
    renamed["next", "reward"] = td["next", "reward"] + 100.0
    renamed["next", "terminated"] = ~td["next", "terminated"]
    y = ref_target(loss, td, HP["mixture_coef"], HP["gamma"])
    torch.testing.assert_close(loss.qvalue_loss(renamed)[0], ref_qvalue_loss(loss, td, y))
    with pytest.raises(KeyError, match="rew.*set_keys"):
        loss.qvalue_loss(td)  # no ("next", "rew") entry: a clear error, not a None crash


# ----------------------------------------------------------------- 7. stock TorchRL parts
def test_soft_update_moves_targets_by_tau_and_leaves_value_network_alone():
    loss = make_loss(perturb=False)
    tau = 0.005
    updater = SoftUpdate(loss, tau=tau)  # (TorchRL's updater copies online into target here)
    perturb_targets(loss)
    key_actor = ("module", "0", "module", "0", "weight")
    key_q = ("module", "mlp", "2", "weight")
    before = {
        "actor": loss.target_actor_network_params[key_actor].clone(),
        "qvalue": loss.target_qvalue_network_params[key_q].clone(),
    }
    value_before = loss.value_network_params.clone()
    updater.step()
    for name, key in (("actor", key_actor), ("qvalue", key_q)):
        online = getattr(loss, f"{name}_network_params")[key].detach()
        target = getattr(loss, f"target_{name}_network_params")[key]
        torch.testing.assert_close(
            target, before[name] + tau * (online - before[name]), rtol=1e-6, atol=1e-7
        )
        assert not torch.allclose(target, before[name])
    assert (loss.value_network_params == value_before).all()


def test_replay_buffer_sample_trains_all_networks():
    loss = make_loss()
    rb = TensorDictReplayBuffer(storage=LazyTensorStorage(64), batch_size=BATCH)
    rb.extend(make_batch(batch=64, seed=3))
    optim = torch.optim.Adam(
        [
            p
            for name in ("actor_network_params", "qvalue_network_params", "value_network_params")
            for p in trainable(getattr(loss, name))
        ],
        lr=1e-3,
    )
    before = {name: getattr(loss, name).clone() for name in PARAM_GROUPS}
    torch.manual_seed(0)
    out = loss(rb.sample())
    total = out["loss_value"] + out["loss_qvalue"] + out["loss_actor"]
    assert all(torch.isfinite(out[k]) for k in ("loss_value", "loss_qvalue", "loss_actor"))
    total.backward()
    optim.step()
    for name in ("actor_network_params", "qvalue_network_params", "value_network_params"):
        after = getattr(loss, name)
        assert not (after == before[name]).all(), name
    for name in ("target_actor_network_params", "target_qvalue_network_params"):
        assert (getattr(loss, name) == before[name]).all(), name


# ------------------------------------------------------------------------- 8. compile
def _train(loss: DMGLoss, compile_fns: bool, steps: int = 4) -> None:
    """value → critic → (every 2nd step) actor + target update, as in the spec's order."""

    def value_fn(td):
        return loss.value_loss(td)[0]

    def qvalue_fn(td):
        return loss.qvalue_loss(td)[0]

    def actor_fn(td):
        return loss.actor_loss(td)[0]

    if compile_fns:
        value_fn, qvalue_fn, actor_fn = (
            torch.compile(fn, dynamic=False) for fn in (value_fn, qvalue_fn, actor_fn)
        )
    optims = {
        name: torch.optim.Adam(trainable(getattr(loss, f"{name}_network_params")), lr=1e-2)
        for name in ("value", "qvalue", "actor")
    }
    updater = SoftUpdate(loss, tau=0.05)
    for step in range(1, steps + 1):
        td = make_batch(seed=100 + step)
        for name, fn in (("value", value_fn), ("qvalue", qvalue_fn), ("actor", actor_fn)):
            if name == "actor" and step % 2:
                continue
            optims[name].zero_grad()
            torch.manual_seed(1000 + step)  # same smoothing noise in both paths
            fn(td).backward()
            optims[name].step()
        if step % 2 == 0:
            updater.step()


@pytest.mark.inductor
def test_compiled_updates_match_eager(record_property):
    """Seeded smoothing noise; ``fallback_random`` makes inductor draw it with eager's RNG."""
    torch._dynamo.reset()
    eager = make_loss()
    compiled = copy.deepcopy(eager)
    initial = {k: v.clone() for k, v in eager.state_dict().items()}
    start = time.perf_counter()
    with torch._inductor.config.patch(fallback_random=True):
        _train(compiled, compile_fns=True)
    record_property("compile_path_seconds", time.perf_counter() - start)
    _train(eager, compile_fns=False)
    eager_state, compiled_state = eager.state_dict(), compiled.state_dict()
    assert eager_state.keys() == compiled_state.keys()
    for key in eager_state:
        torch.testing.assert_close(compiled_state[key], eager_state[key], rtol=1e-4, atol=1e-5)
    moved = [k for k in initial if not torch.equal(initial[k], eager_state[k])]
    assert any("target_qvalue" in k for k in moved) and any("value_network" in k for k in moved)


# ----------------------------------------------------------------------- 9. constructor
def test_action_spec_and_bounds_are_exclusive():
    spec = Bounded(low=LOW, high=HIGH, shape=(ACT_DIM,))
    with pytest.raises(ValueError):
        make_loss(action_spec=spec, bounds=(LOW, HIGH))
    torch.manual_seed(0)
    actor, qvalue, value = make_dmg_networks(OBS_DIM, ACT_DIM, LOW, HIGH, num_cells=(8, 8))
    with pytest.raises(ValueError):
        DMGLoss(actor, qvalue, value)


@pytest.mark.parametrize("composite", [False, True])
def test_bounded_action_spec_gives_the_same_loss_as_bounds(composite):
    spec = Bounded(low=LOW, high=HIGH, shape=(ACT_DIM,))
    if composite:
        spec = Composite(action=spec)
    from_spec = make_loss(action_spec=spec)
    from_bounds = make_loss()
    torch.testing.assert_close(from_spec.min_action, LOW)
    torch.testing.assert_close(from_spec.max_action, HIGH)
    td = make_batch()
    torch.manual_seed(5)
    a = from_spec.qvalue_loss(td)[0]
    torch.manual_seed(5)
    b = from_bounds.qvalue_loss(td)[0]
    torch.testing.assert_close(a, b)


def test_unbounded_action_spec_raises():
    with pytest.raises(ValueError):
        make_loss(action_spec=Unbounded(shape=(ACT_DIM,)))


@pytest.mark.parametrize("expectile", [0.0, 1.0, 1.5, -0.1])
def test_out_of_range_expectile_raises(expectile):
    with pytest.raises(ValueError, match="expectile"):
        make_loss(expectile=expectile)


def test_construction_emits_no_warning():
    """TorchRL convention: a LossModule annotates every ``*_params`` name it registers."""
    torch.manual_seed(0)
    actor, qvalue, value = make_dmg_networks(OBS_DIM, ACT_DIM, LOW, HIGH, num_cells=(8, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DMGLoss(actor, qvalue, value, bounds=(LOW, HIGH))


# ------------------------------------------------------------------- 10. forward output
def test_forward_returns_losses_and_detached_diagnostics():
    loss, td = make_loss(), make_batch()
    keys_before = set(td.keys(True, True))
    out = loss(td)
    assert set(out.keys()) == {
        "loss_value",
        "loss_qvalue",
        "loss_actor",
        "state_value",
        "state_action_value",
        "target_value",
        "adv_weight",
        "adv_weight_clipped_frac",
        "bc_loss",
        "actor_q",
    }
    for key in out.keys():
        assert out[key].shape == torch.Size([])
        assert out[key].requires_grad == key.startswith("loss_"), key
    # the input batch gains only the TD error for prioritized replay, TorchRL's convention
    assert set(td.keys(True, True)) == keys_before | {"td_error"}


def test_forward_losses_equal_the_individual_losses():
    loss, td = make_loss(), make_batch()
    torch.manual_seed(11)
    out = loss(td)
    torch.manual_seed(11)
    value_loss, qvalue_loss, actor_loss = (
        loss.value_loss(td)[0],
        loss.qvalue_loss(td)[0],
        loss.actor_loss(td)[0],
    )
    torch.testing.assert_close(out["loss_value"], value_loss)
    torch.testing.assert_close(out["loss_qvalue"], qvalue_loss)
    torch.testing.assert_close(out["loss_actor"], actor_loss)


def test_adv_weight_clipped_frac_counts_raw_weights_above_max_weight():
    """Make V constant so that exactly 5 of the 16 raw weights exceed w_max."""
    loss, td = make_loss(), make_batch()
    with torch.no_grad():
        q_tgt = ref_qs(loss.target_qvalue_network_params, td["observation"], td["action"])
        q_tgt = q_tgt.min(0).values.sort().values
        # raw weight > w_max  <=>  Q' - V > log(w_max)/α
        v_const = (q_tgt[-5] + q_tgt[-6]) / 2 - math.log(HP["max_weight"]) / HP["temperature"]
        loss.value_network_params["module", "4", "weight"].zero_()
        loss.value_network_params["module", "4", "bias"].fill_(v_const)
    out = loss(td)
    assert out["adv_weight_clipped_frac"].item() == 5 / BATCH
    raw = torch.exp(HP["temperature"] * (q_tgt - v_const))
    torch.testing.assert_close(out["adv_weight"], raw.clamp(max=HP["max_weight"]).mean())
    torch.testing.assert_close(out["state_value"], v_const)


def test_critics_as_a_loop_give_the_vmapped_critics_losses_and_gradients():
    """deactivate_vmap=True (the recipes' CPU default in float32) and vmapped critics (their
    default under bf16 and on a GPU) compute the same losses and gradients."""
    results = []
    for loop in (False, True):
        loss = make_loss(deactivate_vmap=loop)
        torch.manual_seed(3)  # the same target-policy noise
        out = loss(make_batch())
        total = out["loss_value"] + out["loss_qvalue"] + out["loss_actor"]
        params = [p for p in loss.parameters() if p.requires_grad]
        grads = torch.autograd.grad(total, params, allow_unused=True, materialize_grads=True)
        results.append((out, grads))
    (vmapped, grads_v), (looped, grads_l) = results
    for key in ("loss_value", "loss_qvalue", "loss_actor"):
        torch.testing.assert_close(vmapped[key], looped[key])
    for a, b in zip(grads_v, grads_l, strict=True):
        torch.testing.assert_close(a, b)
