"""Fast tests of the SAC behaviour-policy trainer (torchrl_dmg.datagen.behaviour.trainer) on Hopper-v5."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from torchrl_dmg.datagen.behaviour import trainer
from torchrl_dmg.datagen.behaviour.policy import act, load_behaviour_actor
from torchrl_dmg.datagen.behaviour.sac import SACSettings, make_sac_updater
from torchrl_dmg.datagen.behaviour.tasks import D4RL_REF_SCORES, d4rl_normalized_score
from torchrl_dmg.datagen.behaviour.trainer import train_sac
from torchrl_dmg.datagen.behaviour.transitions import TransitionStore, load_transitions
from torchrl_dmg.modules import make_sac_actor, make_sac_qvalue

TINY = dict(
    total_steps=600,
    init_random_steps=200,
    frames_per_batch=100,
    checkpoint_interval=300,
    num_cells=(16, 16),
    batch_size=32,
    eval_episodes=1,
    eval_max_steps=10,
    update_mode="eager",
    progress=False,
)


def _progress(out_dir) -> list[dict]:
    with open(out_dir / "progress.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("sac") / "hopper_s0"
    return out_dir, train_sac("hopper", out_dir=out_dir, seed=0, **TINY)


def test_tiny_run_writes_checkpoints_progress_and_transitions(tiny_run):
    out_dir, result = tiny_run
    assert result["env"] == "Hopper-v5" and result["steps"] == 600
    assert sorted(result["checkpoints"]) == [300, 600]
    for step in (300, 600):
        assert (out_dir / "checkpoints" / f"step_{step:08d}.pt").is_file()
    assert result["best_step"] in (300, 600)
    assert result["best_checkpoint"].endswith(f"step_{result['best_step']:08d}.pt")
    assert (out_dir / "state.pt").is_file()
    assert not list(out_dir.rglob("*.tmp"))

    rows = _progress(out_dir)
    assert [int(r["step"]) for r in rows] == [300, 600]
    assert all(np.isfinite(float(r["eval_return_mean"])) for r in rows)
    assert all(float(r["wall_s"]) > 0 and float(r["updates_per_s"]) > 0 for r in rows)
    # UTD 1 once the 200 random steps are in: batches ending at 200, 300, ..., 600
    assert [int(r["num_updates"]) for r in rows] == [200, 500]

    data = load_transitions(out_dir)
    assert data["observation"].shape == (600, 11) and data["observation"].dtype == np.float32
    assert data["next_observation"].shape == (600, 11)
    assert data["action"].shape == (600, 3)
    assert data["reward"].shape == data["terminated"].shape == data["truncated"].shape == (600,)
    assert data["terminated"].dtype == np.bool_
    np.testing.assert_array_equal(data["step"], np.arange(1, 601))
    assert np.all(np.abs(data["action"]) <= 1.0)
    # collection order: within an episode each next observation is the next observation
    ends = data["terminated"] | data["truncated"]
    cont = ~ends[:-1]
    assert ends.any() and cont.any()
    np.testing.assert_array_equal(
        data["next_observation"][:-1][cont], data["observation"][1:][cont]
    )
    # medium-replay style prefix: all transitions collected until a checkpoint step
    prefix = load_transitions(out_dir, max_step=300)
    assert len(prefix["step"]) == 300 and prefix["step"][-1] == 300
    np.testing.assert_array_equal(prefix["observation"], data["observation"][:300])


def test_checkpoint_rebuilds_an_actor_acting_inside_the_bounds(tiny_run):
    out_dir, _ = tiny_run
    actor, meta = load_behaviour_actor(out_dir / "checkpoints" / "step_00000300.pt")
    assert meta["env"] == "Hopper-v5" and meta["step"] == 300
    assert (meta["obs_dim"], meta["act_dim"], list(meta["num_cells"])) == (11, 3, [16, 16])
    assert "actor" not in meta and np.isfinite(meta["eval_return_mean"])

    obs = load_transitions(out_dir)["observation"][:64] * 10.0  # large inputs: saturated tanh
    det = act(actor, obs, deterministic=True)
    assert det.shape == (64, 3) and det.dtype == np.float32
    assert np.all((det >= -1.0) & (det <= 1.0))
    assert act(actor, obs[0], deterministic=True).shape == (3,)
    sample_a = act(actor, obs, deterministic=False, generator=torch.Generator().manual_seed(3))
    sample_b = act(actor, obs, deterministic=False, generator=torch.Generator().manual_seed(3))
    np.testing.assert_array_equal(sample_a, sample_b)  # a seeded generator reproduces
    assert np.all((sample_a >= -1.0) & (sample_a <= 1.0))
    assert not np.allclose(sample_a, det)
    returns = trainer.evaluate_actor(actor, "hopper", episodes=2, max_steps=5, seed=0)
    assert returns.shape == (2,) and np.all(np.isfinite(returns))


def test_resume_after_an_interruption_continues_from_the_saved_step(tmp_path, monkeypatch):
    out_dir = tmp_path / "run"
    evaluate = trainer.evaluate_actor
    calls = []

    def crash_on_second_checkpoint(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed while evaluating step 600
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(trainer, "evaluate_actor", crash_on_second_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        train_sac("hopper", out_dir=out_dir, **TINY)
    monkeypatch.setattr(trainer, "evaluate_actor", evaluate)
    assert torch.load(out_dir / "state.pt", weights_only=False)["steps"] == 300
    assert len(TransitionStore(out_dir / "transitions", 11, 3)) == 600  # beyond the state
    with pytest.raises(FileExistsError, match="resume=True"):
        train_sac("hopper", out_dir=out_dir, **TINY)

    result = train_sac("hopper", out_dir=out_dir, resume=True, **TINY)
    assert result["session_steps"] == 300  # continued at 300, not from zero
    assert result["steps"] == 600 and sorted(result["checkpoints"]) == [300, 600]
    rows = _progress(out_dir)
    assert [int(r["step"]) for r in rows] == [300, 600]
    assert [int(r["num_updates"]) for r in rows] == [200, 500]
    data = load_transitions(out_dir)
    np.testing.assert_array_equal(data["step"], np.arange(1, 601))
    # the episode running at the interruption ends at step 300
    assert data["terminated"][299] or data["truncated"][299]
    state = torch.load(out_dir / "state.pt", weights_only=False)
    assert state["steps"] == 600 and state["updater"]["num_updates"] == 500
    # a finished run: resuming it again does nothing
    assert train_sac("hopper", out_dir=out_dir, resume=True, **TINY)["session_steps"] == 0


def test_bad_env_name_names_the_allowed_ones(tmp_path):
    with pytest.raises(ValueError, match="hopper.*halfcheetah.*walker2d"):
        train_sac("ant", out_dir=tmp_path / "x", **TINY)
    assert not (tmp_path / "x").exists()
    assert trainer.resolve_env_name("walker2d") == "Walker2d-v5"
    assert trainer.resolve_env_name("HalfCheetah-v5") == "HalfCheetah-v5"


def test_d4rl_normalized_score():
    low, high = D4RL_REF_SCORES["hopper"]
    assert d4rl_normalized_score("hopper", low) == pytest.approx(0.0)
    assert d4rl_normalized_score("Hopper-v5", high) == pytest.approx(100.0)
    assert set(D4RL_REF_SCORES) == {"hopper", "halfcheetah", "walker2d"}


def test_transition_store_survives_a_torn_append(tmp_path):
    store = TransitionStore(tmp_path / "t", obs_dim=2, act_dim=1)

    def rows(first, n):
        return {
            "observation": np.full((n, 2), first, np.float32),
            "action": np.zeros((n, 1), np.float32),
            "reward": np.arange(first, first + n, dtype=np.float32),
            "next_observation": np.zeros((n, 2), np.float32),
            "terminated": np.zeros(n, bool),
            "truncated": np.zeros(n, bool),
            "step": np.arange(first, first + n),
        }

    store.append(rows(1, 3))
    with open(tmp_path / "t" / "reward.memmap", "r+b") as f:  # a crash mid-append:
        f.seek(3 * 4)  # rows 4 and 5 written, the length not
        f.write(np.array([9.0, 9.0], np.float32).tobytes())
    store = TransitionStore(tmp_path / "t", obs_dim=2, act_dim=1)
    assert len(store) == 3
    store.append(rows(4, 2))
    data = store.read()
    np.testing.assert_array_equal(data["reward"], np.arange(1, 6))
    np.testing.assert_array_equal(data["step"], np.arange(1, 6))
    store.truncate(4)
    store.mark_last_truncated()
    assert store.read()["truncated"].tolist() == [False, False, False, True]


def test_compiled_update_matches_eager():
    """update_mode="compile" (aot_eager) runs the same ops: same losses, same weights."""
    from tensordict import TensorDict
    from torchrl.data import Bounded

    spec = Bounded(-1.0, 1.0, shape=(3,))
    g = torch.Generator().manual_seed(0)
    n = 32
    batches = [
        TensorDict(
            {
                "observation": torch.randn(n, 11, generator=g),
                "action": torch.rand(n, 3, generator=g) * 2 - 1,
                "next": {
                    "observation": torch.randn(n, 11, generator=g),
                    "reward": torch.randn(n, 1, generator=g),
                    "terminated": torch.rand(n, 1, generator=g) < 0.2,
                    "done": torch.rand(n, 1, generator=g) < 0.3,
                },
            },
            batch_size=[n],
        )
        for _ in range(3)
    ]
    results = {}
    for mode in ("eager", "compile"):
        torch.manual_seed(0)
        updater = make_sac_updater(
            make_sac_actor(11, 3, spec, (16, 16)),
            make_sac_qvalue(11, 3, (16, 16)),
            spec,
            # vmap_critics: the same critic layout in both modes
            SACSettings(lr=1e-3, gamma=0.99, tau=0.005, update_mode=mode, vmap_critics=True),
        )
        losses = []
        for i, batch in enumerate(batches):
            torch.manual_seed(10 + i)
            losses.append(updater.update(batch.clone())["loss_qvalue"])
        results[mode] = (torch.stack(losses), updater.loss.state_dict())
    torch.testing.assert_close(results["compile"][0], results["eager"][0])
    for key, value in results["eager"][1].items():
        torch.testing.assert_close(results["compile"][1][key], value)


def test_batched_envs_store_every_transition_with_episodes_cut_at_batch_ends(tmp_path):
    """num_envs=2: each batch is [2, T]; the store gets env 0's T transitions then env 1's,
    each part's last one marked truncated; the run trains, evaluates and checkpoints."""
    out_dir = tmp_path / "hopper_s0"
    result = train_sac("hopper", out_dir=out_dir, seed=0, num_envs=2, **TINY)
    assert result["steps"] == 600 and sorted(result["checkpoints"]) == [300, 600]
    data = load_transitions(out_dir)
    assert len(data["step"]) == 600
    np.testing.assert_array_equal(data["step"], np.arange(1, 601))
    truncated = data["truncated"].reshape(6, 2, 50)  # 6 batches x 2 envs x 50 steps
    assert truncated[..., -1].all()  # every part ends cut
    # inside a part, consecutive transitions chain (next obs = obs), except after an end
    obs = data["observation"].reshape(6, 2, 50, -1)
    nxt = data["next_observation"].reshape(6, 2, 50, -1)
    ends = data["terminated"].reshape(6, 2, 50) | truncated
    chained = ~ends[..., :-1]
    np.testing.assert_allclose(nxt[..., :-1, :][chained], obs[..., 1:, :][chained])
    with pytest.raises(ValueError, match="multiple of num_envs"):
        train_sac("hopper", out_dir=tmp_path / "bad", num_envs=3, **TINY)


def test_cudagraphs_mode_without_cuda_fails_early(tmp_path):
    with pytest.raises(ValueError, match="CUDA|cuda"):
        train_sac("hopper", out_dir=tmp_path / "x", **{**TINY, "update_mode": "cudagraphs"})


def test_warm_start_trains_critics_only_until_the_actor_is_released(tiny_run, tmp_path):
    """init_actor loads an earlier actor; during actor_freeze_updates only the critics and
    their targets move (actor and alpha held), after them the actor trains too."""
    _, first = tiny_run
    source = first["checkpoints"][600]
    init_weights = torch.load(source, weights_only=False)["actor"]

    frozen = train_sac(
        "hopper",
        out_dir=tmp_path / "frozen",
        seed=1,
        init_actor=source,
        alpha_init=0.05,
        actor_freeze_updates=10_000,  # more than the run makes
        **{**TINY, "init_random_steps": 0},
    )
    for step, path in frozen["checkpoints"].items():
        weights = torch.load(path, weights_only=False)["actor"]
        for key, value in init_weights.items():
            torch.testing.assert_close(weights[key], value, msg=f"step {step} {key}")
    state = torch.load(tmp_path / "frozen" / "state.pt", weights_only=False)
    assert state["updater"]["num_updates"] == 600  # updates from the first batch on
    assert state["updater"]["loss"]["log_alpha"].exp().item() == pytest.approx(0.05)  # held
    assert state["hparams"]["init_actor"] == str(source)

    released = train_sac(
        "hopper",
        out_dir=tmp_path / "released",
        seed=1,
        init_actor=source,
        actor_freeze_updates=300,
        **{**TINY, "init_random_steps": 0},
    )
    at_300 = torch.load(released["checkpoints"][300], weights_only=False)["actor"]
    at_600 = torch.load(released["checkpoints"][600], weights_only=False)["actor"]
    for key, value in init_weights.items():  # the 300 updates up to step 300: all frozen
        torch.testing.assert_close(at_300[key], value)
    assert any(not torch.equal(at_600[k], v) for k, v in init_weights.items())


def _tiny_sac_updater(mode: str, **kwargs):
    from torchrl.data import Bounded

    spec = Bounded(-1.0, 1.0, shape=(3,))
    return make_sac_updater(
        make_sac_actor(11, 3, spec, (16, 16)),
        make_sac_qvalue(11, 3, (16, 16)),
        spec,
        SACSettings(gamma=0.99, tau=0.005, vmap_critics=None, update_mode=mode, **kwargs),
    )


def _random_sac_batch(n: int):
    from tensordict import TensorDict

    return TensorDict(
        {
            "observation": torch.randn(n, 11),
            "action": torch.rand(n, 3) * 2 - 1,
            "next": {
                "observation": torch.randn(n, 11),
                "reward": torch.randn(n, 1),
                "terminated": torch.zeros(n, 1, dtype=torch.bool),
                "done": torch.zeros(n, 1, dtype=torch.bool),
            },
        },
        batch_size=[n],
    )


def test_a_critic_only_update_leaves_actor_and_alpha_and_moves_the_critics():
    torch.manual_seed(0)
    updater = _tiny_sac_updater(lr=1e-3, mode="compile", alpha_init=0.1)
    batch = _random_sac_batch(32)

    def snapshot(prefix):
        return {k: v.clone() for k, v in updater.loss.state_dict().items() if k.startswith(prefix)}

    before = {
        p: snapshot(p) for p in ("actor_network", "qvalue_network", "target_qvalue", "log_alpha")
    }
    for _ in range(3):
        updater.update(batch.clone(), train_actor=False)
    for prefix, values in before.items():
        moved = any(not torch.equal(snapshot(prefix)[k], v) for k, v in values.items())
        assert moved == (prefix in ("qvalue_network", "target_qvalue")), prefix
    updater.update(batch.clone())
    assert any(
        not torch.equal(snapshot("actor_network")[k], v) for k, v in before["actor_network"].items()
    )
    assert not torch.equal(snapshot("log_alpha")["log_alpha"], before["log_alpha"]["log_alpha"])
    assert updater.num_updates == 4


def test_fixed_alpha_stays_at_its_start_value():
    updater = _tiny_sac_updater(lr=1e-2, mode="eager", alpha_init=0.01, fixed_alpha=True)
    batch = _random_sac_batch(16)
    actor_before = [
        p.detach().clone() for p in updater.loss.actor_network_params.values(True, True)
    ]
    for _ in range(3):
        updater.update(batch.clone())
    assert updater.loss.log_alpha.exp().item() == pytest.approx(0.01)
    actor_after = list(updater.loss.actor_network_params.values(True, True))
    assert any(not torch.equal(a, b) for a, b in zip(actor_before, actor_after, strict=True))


def test_mirror_augment_stores_each_transition_and_its_mirror_image(tmp_path, monkeypatch):
    """AntGoal only; the replay buffer gets every collected transition and its mirror image
    (reward and ends unchanged), the transition store the real ones only."""
    from torchrl_dmg.datagen.antmaze.goal_task import mirror_action, mirror_observation

    with pytest.raises(ValueError, match="mirror_augment"):
        train_sac("hopper", out_dir=tmp_path / "hopper", mirror_augment=True, **TINY)
    extended = []
    original = trainer.TensorDictReplayBuffer.extend

    def spy(self, data):
        extended.append(data.clone())
        return original(self, data)

    monkeypatch.setattr(trainer.TensorDictReplayBuffer, "extend", spy)
    out_dir = tmp_path / "ant"
    small = {**TINY, "total_steps": 200, "frames_per_batch": 100, "checkpoint_interval": 200}
    train_sac("antgoal", out_dir=out_dir, mirror_augment=True, **small)
    assert len(extended) == 4  # 2 batches x (real, mirrored)
    for real, image in (extended[:2], extended[2:]):
        torch.testing.assert_close(image["observation"], mirror_observation(real["observation"]))
        torch.testing.assert_close(
            image["next", "observation"], mirror_observation(real["next", "observation"])
        )
        torch.testing.assert_close(image["action"], mirror_action(real["action"]))
        torch.testing.assert_close(image["next", "reward"], real["next", "reward"])
        assert torch.equal(image["next", "done"], real["next", "done"])
    assert len(load_transitions(out_dir)["step"]) == 200


def test_warm_start_from_a_mismatched_actor_fails_early(tiny_run, tmp_path):
    _, first = tiny_run
    with pytest.raises(ValueError, match="num_cells"):
        train_sac(
            "hopper",
            out_dir=tmp_path / "x",
            init_actor=first["checkpoints"][300],
            **{**TINY, "num_cells": (8, 8)},
        )
    with pytest.raises(FileNotFoundError, match="init_actor"):
        train_sac("hopper", out_dir=tmp_path / "y", init_actor=tmp_path / "nope.pt", **TINY)


def test_sync_actor_copies_trained_weights_into_a_separate_acting_actor():
    """The GPU path: the acting CPU actor is a second module, refreshed in place (its
    parameters require grad, so the copy must run without autograd)."""
    acting = make_sac_actor(11, 3, num_cells=(16, 16))
    trained = make_sac_actor(11, 3, num_cells=(16, 16))
    trainer._sync_actor(acting, trained)
    for a, b in zip(acting.parameters(), trained.parameters(), strict=True):
        assert torch.equal(a, b) and a.requires_grad


def test_sigterm_saves_the_trainer_state_after_the_batch_and_a_rerun_continues(tmp_path):
    import signal

    from torchrl_dmg.errors import RunInterrupted
    from torchrl_dmg.training.guards import StopRequest

    out_dir = tmp_path / "run"
    stop = StopRequest("the same command again")
    stop.signum = signal.SIGTERM  # as if SIGTERM arrived during the first batches
    with pytest.raises(RunInterrupted, match="SIGTERM at step 100; checkpoint saved") as err:
        train_sac("hopper", out_dir=out_dir, stop=stop, **TINY)
    assert err.value.exit_code == 128 + signal.SIGTERM
    state = torch.load(out_dir / "state.pt", weights_only=False)
    assert state["steps"] == 100  # between checkpoints (300, 600): the batch boundary
    assert not (out_dir / "checkpoints").exists() or not list((out_dir / "checkpoints").iterdir())
    result = train_sac("hopper", out_dir=out_dir, resume=True, **TINY)
    assert result["session_steps"] == 500 and result["steps"] == 600
    assert [int(r["step"]) for r in _progress(out_dir)] == [300, 600]
    np.testing.assert_array_equal(load_transitions(out_dir)["step"], np.arange(1, 601))


def test_a_kill_9_between_the_rows_and_their_length_resumes_bit_identically(tiny_run, tmp_path):
    """SIGKILL right after the 4th batch's rows reach the transition log and before its
    length does (state.pt is at step 300); the rerun with resume ends with the uninterrupted
    run's transitions, each once, and its parameters and optimiser states, bit for bit."""
    ref_dir, _ = tiny_run
    out_dir = tmp_path / "killed"
    script = (
        "import os, signal\n"
        "from torchrl_dmg.datagen.behaviour import trainer, transitions\n"
        "write, calls = transitions._write_length_file, []\n"
        "def killing(root, count):\n"
        "    calls.append(count)\n"
        "    if len(calls) == 4:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    write(root, count)\n"
        "transitions._write_length_file = killing\n"
        f"trainer.train_sac('hopper', out_dir={str(out_dir)!r}, seed=0, **{TINY!r})\n"
    )
    root = Path(__file__).resolve().parents[1]  # this checkout's package first
    proc = subprocess.run([sys.executable, "-c", script], env=os.environ.copy(), cwd=root)
    assert proc.returncode == -signal.SIGKILL
    assert torch.load(out_dir / "state.pt", weights_only=False)["steps"] == 300
    train_sac("hopper", out_dir=out_dir, seed=0, resume=True, **TINY)
    ref, got = load_transitions(ref_dir), load_transitions(out_dir)
    for key, value in ref.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)
    ref_state = torch.load(ref_dir / "state.pt", weights_only=False)["updater"]
    state = torch.load(out_dir / "state.pt", weights_only=False)["updater"]
    for key, value in ref_state["loss"].items():
        assert torch.equal(state["loss"][key], value), key
    for name in ("optim_actor", "optim_qvalue", "optim_log_alpha"):
        for index, moments in ref_state[name]["state"].items():
            for key, value in moments.items():
                assert torch.equal(state[name]["state"][index][key], value), (name, key)
