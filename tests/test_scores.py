"""Normalised scores on the paper's scale (torchrl_dmg.data.scores) for Minari-shaped data."""

from __future__ import annotations

import numpy as np
import pytest

from torchrl_dmg.data.local import minari_datasets_path
from torchrl_dmg.data.offline import load_offline_dataset
from torchrl_dmg.data.scores import D4RL_REF_SCORES, resolve_score_reference
from torchrl_dmg.envs import summarize_returns

HOPPER_ID = "mujoco/hopper/medium-v0"
MINARI_REFS = (-19.0, 3600.0)  # made-up reference returns, unlike D4RL's
D4RL_LOW, D4RL_HIGH = D4RL_REF_SCORES["hopper"]


def make_hopper_like(root, dataset_id: str, refs: tuple[float, float] | None) -> None:
    """Two short Hopper-v5 episodes (11-dim observations, 3-dim actions) stored like Minari's
    ``mujoco/hopper/*`` data, with or without reference scores in the metadata."""
    import gymnasium as gym
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    rng = np.random.default_rng(0)
    buffers = []
    for i, length in enumerate((5, 7)):
        term = np.zeros(length, dtype=bool)
        trunc = np.zeros(length, dtype=bool)
        (term if i == 0 else trunc)[-1] = True
        buffers.append(
            EpisodeBuffer(
                id=i,
                seed=0 if i == 0 else None,
                observations=rng.normal(size=(length + 1, 11)),
                actions=rng.uniform(-1, 1, size=(length, 3)).astype(np.float32),
                rewards=np.ones(length),
                terminations=term,
                truncations=trunc,
                infos={},
            )
        )
    ref_kwargs = {} if refs is None else {"ref_min_score": refs[0], "ref_max_score": refs[1]}
    with minari_datasets_path(root):
        minari.create_dataset_from_buffers(
            dataset_id=dataset_id,
            buffer=buffers,
            env=gym.spec("Hopper-v5"),
            eval_env=gym.spec("Hopper-v5"),
            algorithm_name="fixture",
            author="tests",
            author_email="n/a",
            code_permalink="tests/test_scores.py",
            description="a hopper-shaped fixture",
            **ref_kwargs,
        )


@pytest.fixture(scope="module")
def hopper_root(tmp_path_factory):
    """A Minari root with ``mujoco/hopper/medium-v0`` (Minari reference scores in its
    metadata) and ``mujoco/hopper/simple-v0`` (none)."""
    root = tmp_path_factory.mktemp("minari_hopper")
    make_hopper_like(root, HOPPER_ID, MINARI_REFS)
    make_hopper_like(root, "mujoco/hopper/simple-v0", None)
    return root


def load(root, dataset_id: str, reference: str = "auto"):
    with minari_datasets_path(root):
        return load_offline_dataset(
            dataset_id, download=False, progress=False, score_reference=reference
        )


def test_a_minari_hopper_dataset_is_scored_with_d4rl_returns_by_default(hopper_root):
    dataset = load(hopper_root, HOPPER_ID)
    assert dataset.reference.name == "d4rl"
    np.testing.assert_allclose(
        dataset.normalized_score([D4RL_LOW, D4RL_HIGH]), [0.0, 100.0], atol=1e-6
    )


def test_minari_reference_scores_are_an_option(hopper_root):
    dataset = load(hopper_root, HOPPER_ID, "minari")
    assert dataset.reference.name == "minari"
    np.testing.assert_allclose(dataset.normalized_score(list(MINARI_REFS)), [0.0, 100.0], atol=1e-6)


def test_a_hopper_dataset_without_metadata_scores_still_gets_d4rl_returns(hopper_root):
    dataset = load(hopper_root, "mujoco/hopper/simple-v0")
    assert dataset.reference.name == "d4rl"


def test_asking_for_minari_scores_the_metadata_lacks_fails_early(hopper_root):
    with pytest.raises(ValueError, match="no ref_min_score"):
        load(hopper_root, "mujoco/hopper/simple-v0", "minari")


def test_raw_scores_are_the_returns_themselves(hopper_root):
    dataset = load(hopper_root, HOPPER_ID, "raw")
    summary = summarize_returns(np.array([100.0, 300.0]), dataset)
    assert summary["normalized_score"] == summary["return_mean"] == 200.0


def test_the_summary_fields_name_the_reference(hopper_root):
    fields = load(hopper_root, HOPPER_ID).reference.as_dict()
    assert fields["score_reference"] == "d4rl"
    assert (fields["score_reference_min"], fields["score_reference_max"]) == (D4RL_LOW, D4RL_HIGH)
    assert "D4RL hopper" in fields["score_reference_text"]


def test_auto_falls_back_to_the_metadata_outside_d4rl_tasks():
    ref = resolve_score_reference(
        "local/pointmaze/umaze-v0", {"ref_min_score": 1.0, "ref_max_score": 3.0}
    )
    assert (ref.name, ref.ref_min, ref.ref_max) == ("minari", 1.0, 3.0)


def test_auto_gives_raw_returns_with_neither_reference():
    ref = resolve_score_reference("mujoco/swimmer/medium-v0", {})
    assert ref.is_raw
    assert "raw" in ref.describe()


def test_d4rl_returns_for_a_task_d4rl_never_scored_is_an_error():
    with pytest.raises(ValueError, match="D4RL has no reference returns"):
        resolve_score_reference("local/pointmaze/umaze-v0", {}, "d4rl")


def test_local_locomotion_ids_take_d4rl_returns():
    assert resolve_score_reference("local/mujoco/walker2d/medium-v0", {}).source == "D4RL walker2d"


def test_an_unknown_reference_choice_is_an_error():
    with pytest.raises(ValueError, match="must be one of"):
        resolve_score_reference(HOPPER_ID, {}, "paper")
