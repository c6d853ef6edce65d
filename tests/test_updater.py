"""DMGUpdater: the update step shared by the recipes, in every mode this machine can run.

CUDA-graph mode runs the same checks when a GPU is present (skipped otherwise).
"""

from __future__ import annotations

import copy

import pytest
import torch
from tensordict import TensorDict

from torchrl_dmg.modules import make_dmg_networks
from torchrl_dmg.objectives import DMGLoss
from torchrl_dmg.training import DMGUpdater

OBS, ACT, BATCH = 5, 2, 32
MODES = ["eager", "compile"] + (["cudagraphs"] if torch.cuda.is_available() else [])
#: mode="compile" with skip_guards=True; guard skipping starts after 2 iterations here, so
#: that the checks below run mostly with it
FAST = "compile-skip-guards"


def make_updater(loss: DMGLoss, mode: str, **kwargs) -> DMGUpdater:
    if mode == FAST:
        return DMGUpdater(loss, mode="compile", skip_guards=True, guard_warmup=2, **kwargs)
    return DMGUpdater(loss, mode=mode, **kwargs)


def make_loss(device="cpu", **kwargs) -> DMGLoss:
    torch.manual_seed(0)
    actor, qvalue, value = make_dmg_networks(OBS, ACT, -1.0, 1.0, num_cells=(16, 16))
    return DMGLoss(actor, qvalue, value, bounds=(-1.0, 1.0), **kwargs).to(device)


def make_batch(seed: int = 0, device="cpu") -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    return TensorDict(
        {
            "observation": torch.randn(BATCH, OBS, generator=g),
            "action": torch.rand(BATCH, ACT, generator=g) * 2 - 1,
            "next": {
                "observation": torch.randn(BATCH, OBS, generator=g),
                "reward": torch.randn(BATCH, 1, generator=g),
                "terminated": torch.zeros(BATCH, 1, dtype=torch.bool),
                "done": torch.zeros(BATCH, 1, dtype=torch.bool),
            },
        },
        batch_size=[BATCH],
    ).to(device)


def device_for(mode: str) -> str:
    return "cuda" if mode == "cudagraphs" else "cpu"


def snapshot(params) -> TensorDict:
    return params.detach().clone()


def changed(before: TensorDict, after: TensorDict) -> bool:
    pairs = zip(before.values(True, True), after.values(True, True), strict=True)
    return not all((a == b).all() for a, b in pairs)


@pytest.mark.parametrize("mode", [*MODES, FAST])
def test_actor_and_targets_update_exactly_every_policy_freq_steps(mode):
    device = device_for(mode)
    loss = make_loss(device)
    updater = make_updater(loss, mode, policy_freq=2)
    batch = make_batch(device=device)
    actor_changed, target_changed, reported = [], [], []
    for _ in range(8):
        actor_before = snapshot(loss.actor_network_params)
        target_before = snapshot(loss.target_qvalue_network_params)
        metrics = updater.update(batch)
        actor_changed.append(changed(actor_before, loss.actor_network_params))
        target_changed.append(changed(target_before, loss.target_qvalue_network_params))
        reported.append("loss_actor" in metrics.keys())
    expected = [False, True] * 4
    assert actor_changed == expected
    assert target_changed == expected
    assert reported == expected


@pytest.mark.parametrize("mode", [*MODES, FAST])
def test_target_policy_noise_is_fresh_at_every_step(mode):
    """With frozen networks (lr 0), consecutive critic targets differ only through the noise."""
    device = device_for(mode)
    loss = make_loss(device, mixture_coef=1.0)  # the target depends on the noisy action only
    updater = make_updater(loss, mode, lr=0.0)
    batch = make_batch(device=device)
    targets = [updater.update(batch)["target_value"].item() for _ in range(6)]
    assert len(set(targets)) == 6, targets

    if mode == FAST:
        return  # the noise-free control below is the same for every compiled mode
    quiet = make_loss(device, mixture_coef=1.0, policy_noise=0.0)
    updater = make_updater(quiet, mode, lr=0.0)
    targets = [updater.update(batch)["target_value"].item() for _ in range(6)]
    assert len(set(targets)) == 1, targets


@pytest.mark.inductor
@pytest.mark.parametrize("mode", ["compile", FAST])
def test_compiled_updater_matches_eager_for_several_steps(mode):
    from torch._inductor import config as inductor_config

    eager_loss = make_loss()
    compiled_loss = copy.deepcopy(eager_loss)
    eager = DMGUpdater(eager_loss, actor_cosine_steps=10)
    compiled = make_updater(compiled_loss, mode, actor_cosine_steps=10)
    torch._dynamo.reset()  # fallback_random is not guarded: drop graphs compiled earlier
    with inductor_config.patch(fallback_random=True):
        for step in range(8):
            batch = make_batch(seed=step)
            torch.manual_seed(100 + step)
            eager.update(batch)
            torch.manual_seed(100 + step)
            compiled.update(batch)
    for a, b in zip(eager_loss.parameters(), compiled_loss.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert eager.actor_lr == pytest.approx(compiled.actor_lr)


def test_cosine_schedule_runs_over_actor_updates_only():
    updater = DMGUpdater(make_loss(), lr=1e-3, policy_freq=2, actor_cosine_steps=4)
    batch = make_batch()
    lrs = []
    for _ in range(8):
        updater.update(batch)
        lrs.append(updater.actor_lr)
    # lr changes only with actor steps (every 2nd update) and reaches 0 after 4 of them
    assert lrs[0] == pytest.approx(1e-3)
    assert lrs[1] == lrs[2] < 1e-3
    assert lrs[3] == lrs[4] < lrs[2]
    assert lrs[7] == pytest.approx(0.0, abs=1e-12)
    assert updater.optim_value.param_groups[0]["lr"] == pytest.approx(1e-3)


def test_state_dict_round_trip_restores_training_exactly():
    loss_a = make_loss()
    a = DMGUpdater(loss_a, actor_cosine_steps=20)
    for step in range(3):
        a.update(make_batch(seed=step))
    state = copy.deepcopy(a.state_dict())
    loss_b = make_loss()
    b = DMGUpdater(loss_b, actor_cosine_steps=20)
    b.load_state_dict(state)
    assert b.num_updates == 3
    for step in range(3, 6):
        torch.manual_seed(step)
        a.update(make_batch(seed=step))
        torch.manual_seed(step)
        b.update(make_batch(seed=step))
    for pa, pb in zip(loss_a.state_dict().values(), loss_b.state_dict().values(), strict=True):
        torch.testing.assert_close(pa, pb)


def test_cudagraphs_mode_needs_cuda():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ValueError, match="CUDA"):
        DMGUpdater(make_loss(), mode="cudagraphs")


def test_skip_guards_update_many_matches_eager_and_needs_a_fixed_batch():
    """update_many under skip_guards (guards skipped from the second call) equals eager
    update_many; a batch of another shape is an error, not a silent stale graph."""
    from torch._inductor import config as inductor_config

    with pytest.raises(ValueError, match="skip_guards"):
        DMGUpdater(make_loss(), mode="eager", skip_guards=True)
    eager_loss = make_loss()
    fast_loss = copy.deepcopy(eager_loss)
    eager = DMGUpdater(eager_loss, actor_cosine_steps=10)
    fast = make_updater(fast_loss, FAST, actor_cosine_steps=10)
    torch._dynamo.reset()
    with inductor_config.patch(fallback_random=True):
        for call in range(3):
            batches = stacked_batches(2, first_seed=2 * call)
            torch.manual_seed(call)
            eager.update_many(batches)
            torch.manual_seed(call)
            fast.update_many(batches)
    for a, b in zip(eager_loss.parameters(), fast_loss.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="differs from the first one"):
        fast.update_many(stacked_batches(2)[:, :8])
    fast.update(make_batch())  # update() keeps its own first batch
    with pytest.raises(ValueError, match="differs from the first one"):
        fast.update(make_batch()[:8])


@pytest.mark.parametrize(("saved", "loaded"), [("eager", "compile"), ("compile", "eager")])
def test_loaded_learning_rate_takes_the_kind_the_mode_needs(saved, loaded):
    """A checkpoint from an eager run resumed compiled (or the reverse): compiled steps read
    the lr from a tensor that the cosine schedule updates in place, eager ones a float."""
    a = DMGUpdater(make_loss(), actor_cosine_steps=10, mode=saved)
    a.scheduler.step()
    state = copy.deepcopy(a.state_dict())
    b = DMGUpdater(make_loss(), actor_cosine_steps=10, mode=loaded)
    b.load_state_dict(state)
    for optimizer in (b.optim_value, b.optim_qvalue, b.optim_actor):
        lr = optimizer.param_groups[0]["lr"]
        assert isinstance(lr, torch.Tensor) == (loaded == "compile")
    assert b.actor_lr == pytest.approx(a.actor_lr) and b.actor_lr < 3e-4
    lr_object = b.optim_actor.param_groups[0]["lr"]
    b.scheduler.step()
    assert b.actor_lr < a.actor_lr
    if loaded == "compile":  # updated in place: what a compiled step reads
        assert b.optim_actor.param_groups[0]["lr"] is lr_object


@pytest.mark.parametrize("mode", ["eager", FAST])
def test_the_actor_s_cosine_schedule_follows_torch_s_cosine_annealing(mode):
    """The updater moves the actor's lr by the closed form (one float, written in place on
    a compiled step's tensor) instead of ``CosineAnnealingLR.step``: the same learning rates
    as PyTorch's scheduler stepped once per actor update, past its horizon too, and the
    scheduler's state as those steps leave it (what a checkpoint keeps)."""
    updater = make_updater(make_loss(), mode, policy_freq=2, actor_cosine_steps=3)
    lr_object = updater.optim_actor.param_groups[0]["lr"]
    param = torch.nn.Parameter(torch.zeros(1))
    torch_lr = torch.optim.Adam([param], lr=3e-4)
    theirs = torch.optim.lr_scheduler.CosineAnnealingLR(torch_lr, T_max=3)
    for step in range(1, 11):  # 5 actor updates: past T_max = 3, where the cosine rises
        updater.update(make_batch(step))
        if step % 2 == 0:
            theirs.step()
        assert updater.actor_lr == pytest.approx(theirs.get_last_lr()[0], rel=1e-6, abs=1e-12)
    assert updater.scheduler.state_dict()["last_epoch"] == theirs.last_epoch == 5
    assert updater.scheduler.state_dict()["_step_count"] == theirs._step_count
    if mode != "eager":  # the tensor a compiled step reads, updated in place
        assert updater.optim_actor.param_groups[0]["lr"] is lr_object


def stacked_batches(num: int, device="cpu", first_seed: int = 0) -> TensorDict:
    return torch.stack([make_batch(seed=first_seed + k, device=device) for k in range(num)])


@pytest.mark.parametrize("mode", MODES)
def test_update_many_equals_as_many_single_updates(mode):
    """K iterations in one call (one CUDA graph under "cudagraphs") == K update() calls:
    same parameters, same target noise draws, same cosine lr, per-update metrics kept."""
    from torch._inductor import config as inductor_config

    device = device_for(mode)
    single_loss = make_loss(device)
    many_loss = copy.deepcopy(single_loss)
    single = make_updater(single_loss, mode, actor_cosine_steps=12)
    many = make_updater(many_loss, mode, actor_cosine_steps=12)
    torch._dynamo.reset()
    expected_q = []
    with inductor_config.patch(fallback_random=True):
        for call in range(4):  # the first calls of a CUDA-graph module are its warm-up
            batches = stacked_batches(6, device, first_seed=6 * call)
            torch.manual_seed(call)
            for k in range(6):
                expected_q.append(single.update(batches[k])["loss_qvalue"])
            torch.manual_seed(call)
            metrics = many.update_many(batches)
            assert metrics["critic"].batch_size == torch.Size([6])
            assert metrics["actor"].batch_size == torch.Size([3])
            torch.testing.assert_close(
                metrics["critic", "loss_qvalue"], torch.stack(expected_q[-6:]), rtol=1e-4, atol=1e-5
            )
    assert many.num_updates == single.num_updates == 24
    for a, b in zip(single_loss.parameters(), many_loss.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert many.actor_lr == pytest.approx(single.actor_lr, rel=1e-5)
    assert many.scheduler.last_epoch == single.scheduler.last_epoch == 12


@pytest.mark.parametrize("mode", MODES)
def test_update_many_keeps_the_delay_and_fresh_noise(mode):
    """Inside one call the actor moves after every policy_freq-th critic step only, and the
    target-policy noise is drawn anew at every step and at every replay."""
    device = device_for(mode)
    loss = make_loss(device, mixture_coef=1.0)
    updater = DMGUpdater(loss, lr=0.0, policy_freq=2, mode=mode)
    batches = torch.stack([make_batch(device=device)] * 4)
    targets = []
    for _ in range(4):
        targets += updater.update_many(batches)["critic", "target_value"].tolist()
    assert len(set(targets)) == 16, targets
    moving = make_loss(device)
    updater = DMGUpdater(moving, policy_freq=3, mode=mode)
    before = snapshot(moving.actor_network_params)
    updater.update_many(torch.stack([make_batch(device=device)] * 3))
    assert changed(before, moving.actor_network_params)
    before = snapshot(moving.actor_network_params)
    updater.update(make_batch(device=device))
    updater.update(make_batch(device=device))
    assert not changed(before, moving.actor_network_params)


def test_update_many_rejects_a_count_off_the_actor_delay():
    updater = DMGUpdater(make_loss(), policy_freq=2)
    with pytest.raises(ValueError, match="multiples of policy_freq"):
        updater.update_many(stacked_batches(3))
    updater.update(make_batch())
    with pytest.raises(ValueError, match="multiples of policy_freq"):
        updater.update_many(stacked_batches(2))


def test_value_bounds_and_the_divergence_flag(capsys):
    """A logged Q beyond the range of any discounted return is flagged and warned once."""
    from torchrl_dmg.training import train_offline, value_bounds

    assert value_bounds(torch.tensor([-1.0, 0.0]), 0.99) == pytest.approx((-100.0, 0.0))
    assert value_bounds(torch.tensor([0.5, 2.0]), 0.9) == pytest.approx((0.0, 20.0))
    with pytest.raises(ValueError, match="gamma"):
        value_bounds(torch.tensor([1.0]), 1.0)

    class Updater:
        policy_freq, actor_lr, calls = 2, 3e-4, 0

        def update(self, batch):
            self.calls += 1  # Q climbs by 30 per update: out of [-100, 0] (+-10) after 4
            return {"state_action_value": torch.tensor([-100.0 + 30 * self.calls, -50.0])}

    class Sampler:
        def sample(self):
            return None

    class Logger:
        rows = []

        def log(self, step, kind, row):
            self.rows.append((step, row))

    logger = Logger()
    train_offline(
        Updater(), Sampler(), start=0, steps=8, logger=logger, log_interval=1,
        checkpoint=lambda step: None, checkpoint_interval=0, progress=False,
        value_bounds=(-100.0, 0.0),
    )  # fmt: skip
    flags = [row["q_out_of_bounds"] for _, row in logger.rows]
    assert flags == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]  # 20 > 0 + 10 at update 4
    out = capsys.readouterr().out
    assert out.count("WARNING") == 1 and "WARNING step 4" in out and "diverging" in out


def test_bf16_matmuls_train_close_to_float32_and_leave_the_weights_in_float32(monkeypatch):
    """matmul_precision="medium" on a CPU with bf16 units: the losses run under bf16
    autocast (a different number than float32, close to it); weights, targets and Adam's
    moments stay float32."""
    from torchrl_dmg.training import compile as compile_module

    monkeypatch.setattr(compile_module, "cpu_has_bf16", lambda: True)
    runs = {}
    for precision in ("highest", "medium"):
        loss = make_loss()
        updater = DMGUpdater(loss, matmul_precision=precision)
        torch.manual_seed(1)
        for step in range(4):
            metrics = updater.update(make_batch(step))
        runs[precision] = (loss, metrics)
    (fp32, m32), (bf16, m16) = runs["highest"], runs["medium"]
    assert all(p.dtype == torch.float32 for p in bf16.parameters())
    assert all(
        t.dtype == torch.float32 for t in bf16.target_qvalue_network_params.values(True, True)
    )
    assert not torch.equal(m32["loss_qvalue"], m16["loss_qvalue"])  # bf16 products ran
    torch.testing.assert_close(m16["loss_qvalue"], m32["loss_qvalue"], rtol=0.05, atol=1e-3)
    for a, b in zip(fp32.parameters(), bf16.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0.05, atol=5e-3)


def test_bf16_on_a_cpu_without_bf16_units_stays_float32_and_says_so(monkeypatch, capsys):
    from torchrl_dmg.training import compile as compile_module

    monkeypatch.setattr(compile_module, "cpu_has_bf16", lambda: False)
    updater = DMGUpdater(make_loss(), matmul_precision="high")
    assert updater.autocast_dtype is None
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "no bf16 matmul units" in out[0] and "float32" in out[0]
    with pytest.raises(ValueError, match="matmul_precision"):
        DMGUpdater(make_loss(), matmul_precision="bf16")


def test_auto_mode_compiles_on_a_cpu_and_skips_guards_for_one_agent():
    updater = DMGUpdater(make_loss(), mode="auto")
    assert (updater.mode, updater.skip_guards) == ("compile", True)
    assert DMGUpdater(make_loss(), mode="compile").skip_guards is False


def _failing_backend(graph_module, example_inputs):
    raise RuntimeError("g++: internal compiler error: File size limit exceeded")


def test_auto_mode_falls_back_to_eager_when_the_compiler_fails(capfd):
    """No C++ compiler, a full disk: mode="auto" warns in one line and trains in eager mode,
    with eager's numbers and iteration count; an explicit mode="compile" raises instead."""
    batches = [make_batch(seed) for seed in range(4)]
    updater = DMGUpdater(make_loss(), mode="auto", compile_backend=_failing_backend)
    eager = DMGUpdater(make_loss(), mode="eager")
    results = []
    for run in (updater, eager):  # from the same seed: the same target-policy noise
        torch.manual_seed(1)
        # policy_freq 2: critic and full iterations both fall back
        results.append([run.update(batch.clone()).to_dict() for batch in batches])
    torch.testing.assert_close(results[0], results[1])
    err = capfd.readouterr().err.strip().splitlines()
    warnings = [line for line in err if line.startswith("[dmg] WARNING")]
    assert len(warnings) == 1 and "File size limit exceeded" in warnings[0], err
    assert "compile.mode=eager" in warnings[0]
    assert (updater.mode, updater.num_updates) == ("eager", 4)
    torch.testing.assert_close(updater.loss.state_dict(), eager.loss.state_dict())
    strict = DMGUpdater(make_loss(), mode="compile", compile_backend=_failing_backend)
    with pytest.raises(torch._dynamo.exc.BackendCompilerFailed):
        strict.update(batches[0])


@pytest.mark.parametrize("resume_at", [0, 5])
def test_compiled_functional_adam_is_torch_adam_also_after_loading_a_saved_state(resume_at):
    """FunctionalAdam's compiled step against torch.optim.Adam, step by step; the bias
    corrections it keeps for the coming step follow a loaded state's step count."""
    from torchrl_dmg.training.compile import FunctionalAdam

    g = torch.Generator().manual_seed(0)
    shapes = [(7, 3), (7,), (2, 7)]
    reference = [torch.randn(s, generator=g) for s in shapes]
    torch_adam = torch.optim.Adam([p.clone().requires_grad_() for p in reference], lr=1e-2)
    grads = [[torch.randn(s, generator=g) for s in shapes] for _ in range(resume_at + 4)]
    for step_grads in grads[:resume_at]:
        for p, grad in zip(torch_adam.param_groups[0]["params"], step_grads, strict=True):
            p.grad = grad
        torch_adam.step()
    params = [p.detach().clone().requires_grad_() for p in torch_adam.param_groups[0]["params"]]
    mine = FunctionalAdam(torch.optim.Adam(params, lr=torch.tensor(1e-2), foreach=False))
    mine.load_state_dict(copy.deepcopy(torch_adam.state_dict()))
    step = torch.compile(mine.step, backend="inductor")
    for step_grads in grads[resume_at:]:
        for p, grad in zip(torch_adam.param_groups[0]["params"], step_grads, strict=True):
            p.grad = grad
        torch_adam.step()
        step(step_grads)
        for a, b in zip(torch_adam.param_groups[0]["params"], params, strict=True):
            torch.testing.assert_close(b, a.detach(), rtol=1e-5, atol=1e-6)
    assert float(mine.steps[0]) == resume_at + 4


def test_the_package_linear_compiles_to_nn_linear_s_numbers_and_keeps_its_state_dict():
    """``modules.Linear`` (matmul + bias add when compiled): the same outputs and gradients
    as ``nn.Linear`` eagerly, and the same parameters, so checkpoints load either way."""
    from torchrl_dmg.modules import Linear

    torch.manual_seed(0)
    mine, theirs = Linear(5, 3), torch.nn.Linear(5, 3)
    theirs.load_state_dict(mine.state_dict())
    assert list(mine.state_dict()) == list(theirs.state_dict())
    x = torch.randn(7, 5)

    def forward_backward(layer):
        out = layer(x).relu().sum()
        return out, torch.autograd.grad(out, [layer.weight, layer.bias])

    with torch._dynamo.config.patch(trace_autograd_ops=True):
        got, got_grads = torch.compile(forward_backward, backend="inductor")(mine)
    want, want_grads = forward_backward(theirs)
    torch.testing.assert_close(got, want)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w)


def test_the_bias_add_pass_splits_every_unscaled_addmm_and_keeps_the_numbers():
    """``unfused_bias_add_pass``: ``relu(addmm(b, x, w))`` becomes ``relu(mm(x, w) + b)``
    (the add then joins the ReLU's loop), an ``addmm`` feeding a reduction becomes
    ``mm + b`` too (its add a loop of its own), a scaled one stays whole; the graph
    computes the same numbers."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from torchrl_dmg.training.compile import unfused_bias_add_pass

    aten = torch.ops.aten

    def f(b, x, w, b2, w2):
        hidden = aten.addmm(b, x, w).relu()
        return aten.addmm(b2, hidden, w2).sum(), aten.addmm(b, x, w, beta=2).relu()

    args = (torch.randn(4), torch.randn(3, 5), torch.randn(5, 4), torch.randn(2), torch.randn(4, 2))
    gm = make_fx(f)(*args)
    want = gm(*args)
    unfused_bias_add_pass()(gm.graph)
    gm.recompile()
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert targets.count(aten.addmm.default) == 1  # the scaled one
    assert targets.count(aten.mm.default) == 2
    relu = next(n for n in gm.graph.nodes if n.target == aten.relu.default)
    assert relu.args[0].target == aten.add.Tensor
    total = next(n for n in gm.graph.nodes if n.target == aten.sum.default)
    assert total.args[0].target == aten.add.Tensor
    assert total.args[0].args[0].target == aten.mm.default
    for got, expected in zip(gm(*args), want, strict=True):
        torch.testing.assert_close(got, expected)


def test_a_compiled_linear_relu_on_a_cpu_copies_no_bias_into_its_output():
    """What the pass is for: ATen's CPU ``addmm`` copies the bias into every row of its
    output before the product; the compiled step (``compile_step(cpu=True)``) runs none,
    neither for a hidden layer nor for 1-wide heads whose outputs meet in a ``min`` (a
    double critic's last layers)."""
    from torch.profiler import ProfilerActivity, profile

    from torchrl_dmg.training.compile import compile_step, prepare_compile

    prepare_compile()
    torch.manual_seed(0)
    layers = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64))
    heads = torch.nn.ModuleList([torch.nn.Linear(64, 1), torch.nn.Linear(64, 1)])
    params = [*layers.parameters(), *heads.parameters()]
    x = torch.randn(32, 8)

    class Step:
        def run(self, x):
            hidden = layers(x).relu()
            q = torch.stack([head(hidden) for head in heads]).amin(0)
            out = q.square().mean()  # detached, as the update's metrics
            return out.detach(), torch.autograd.grad(out, params)

    step = compile_step(Step().run, "inductor", private=True, cpu=True)
    got = step(x)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step(x)
    # addmm's bias copy: an expand of the bias, then a copy_ into the output
    broadcasts = [e.input_shapes[0] for e in prof.events() if e.name == "aten::expand"]
    copies = [
        e for e in prof.events() if e.name == "aten::copy_" and e.input_shapes[:1] == [[32, 64]]
    ]
    assert broadcasts == [] and copies == []
    want = Step().run(x)
    torch.testing.assert_close(got[0], want[0])
    for g, w in zip(got[1], want[1], strict=True):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("mode", [*MODES, FAST])
def test_the_update_s_finite_flag_is_true_until_a_metric_is_not_and_never_a_metric(mode):
    """The NaN guard reads the flag the compiled step computes (``last_finite``), not each
    metric: it must turn false at the first non-finite loss, on the critic-only and the
    actor iterations and in ``update_many``, and stay out of the returned metrics."""
    from torchrl_dmg.errors import TrainingDiverged
    from torchrl_dmg.training.guards import FiniteGuard
    from torchrl_dmg.training.updater import FINITE_KEY

    device = device_for(mode)
    updater = make_updater(make_loss(device), mode, policy_freq=2)
    guard = FiniteGuard("unused.pt")
    for step in range(1, 5):  # critic-only iterations and ones with the actor step
        metrics = updater.update(make_batch(step, device=device))
        assert FINITE_KEY not in metrics.keys() and bool(updater.last_finite)
        guard(step, metrics, updater.last_finite)
    many = updater.update_many(torch.stack([make_batch(s, device=device) for s in (5, 6)]))
    assert FINITE_KEY not in many["critic"].keys() and FINITE_KEY not in many["actor"].keys()
    assert bool(updater.last_finite)
    bad = make_batch(7, device=device)
    bad["next", "reward"][0] = float("inf")  # the critic's target and loss become inf
    metrics = updater.update(bad)  # iteration 7: critic-only
    assert "loss_actor" not in metrics.keys() and not bool(updater.last_finite)
    with pytest.raises(TrainingDiverged, match="diverged at step 7: "):
        guard(7, metrics, updater.last_finite)
    metrics = updater.update(bad)  # iteration 8: the flag joins the critic and actor steps
    assert "loss_actor" in metrics.keys() and not bool(updater.last_finite)
    many = updater.update_many(torch.stack([make_batch(9, device=device), bad]))
    assert not bool(updater.last_finite)
