"""GAE with exact numbers, and fragment assembly as a property test."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlscale.rollout import FragmentBuffer, FrameStacks, compute_gae, microbatch_groups
from tests.helpers import make_fragment


def col(*xs, dtype=np.float32):
    return np.array(xs, dtype=dtype)[:, None]  # [T, E=1]


R, V, NV = col(1, 1, 1), col(0.5, 0.4, 0.3), col(0.4, 0.3, 0.2)
NO = col(0, 0, 0, dtype=bool)


def test_gae_hand_computed_no_episode_end():
    # gamma 0.9, lambda 0.8: delta = r + 0.9 V' - V = 0.86, 0.87, 0.88
    # A2 = 0.88; A1 = 0.87 + 0.72 * 0.88 = 1.5036; A0 = 0.86 + 0.72 * 1.5036 = 1.942592
    adv, ret = compute_gae(R, V, NV, NO, NO, 0.9, 0.8)
    np.testing.assert_allclose(adv[:, 0], [1.942592, 1.5036, 0.88], rtol=1e-6)
    np.testing.assert_allclose(ret[:, 0], [2.442592, 1.9036, 1.18], rtol=1e-6)


def test_gae_termination_cuts_bootstrap_and_recursion():
    # terminated after t=1: delta1 = 1 - 0.4 = 0.6 (no V'), A1 = 0.6, A0 = 0.86 + 0.72 * 0.6 = 1.292
    adv, _ = compute_gae(R, V, NV, col(0, 1, 0, dtype=bool), NO, 0.9, 0.8)
    np.testing.assert_allclose(adv[:, 0], [1.292, 0.6, 0.88], rtol=1e-6)


def test_gae_truncation_bootstraps_but_cuts_recursion():
    # truncated after t=1: delta1 = 1 + 0.9 * 0.3 - 0.4 = 0.87 uses V(final obs); A1 = 0.87
    # A0 = 0.86 + 0.72 * 0.87 = 1.4864
    adv, _ = compute_gae(R, V, NV, NO, col(0, 1, 0, dtype=bool), 0.9, 0.8)
    np.testing.assert_allclose(adv[:, 0], [1.4864, 0.87, 0.88], rtol=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    shapes=st.lists(st.tuples(st.integers(1, 9), st.integers(1, 5)), min_size=1, max_size=12),
    batch_sizes=st.lists(st.integers(1, 40), min_size=1, max_size=20),
    stacks=st.booleans(),
    save_at=st.integers(0, 20),
)
def test_buffer_exact_batches_every_step_once(shapes, batch_sizes, stacks, save_at):
    buf, next_id, taken = FragmentBuffer(0.99, 0.95), 0, []
    total = 0
    frags = iter(shapes)
    for i, n in enumerate(batch_sizes):  # the batch size may change every iteration
        if i == save_at:  # a checkpoint's round trip changes nothing
            buf2 = FragmentBuffer(0.99, 0.95)
            buf2.load_state_dict(buf.state_dict())
            buf = buf2
        while len(buf) < n:
            try:
                T, E = next(frags)
            except StopIteration:
                break
            buf.add(make_fragment(T, E, next_id, stacks=stacks))
            next_id += T * E
            total += T * E
        if len(buf) < n:
            break
        b = buf.take(n)
        assert len(b["actions"]) == n and all(len(v) == n for v in b.values())
        obs = b["obs"].dense() if stacks else b["obs"]
        if stacks:  # the observations travel with their steps, and a batch holds only its frames
            assert isinstance(b["obs"], FrameStacks) and len(b["obs"].frames) <= 2 * n
            np.testing.assert_array_equal(obs[:, 1, 0, 0], b["actions"])
            first = b["time"] == 0
            np.testing.assert_array_equal(obs[first, 0, 0, 0], -1 - b["actions"][first])
        else:
            np.testing.assert_array_equal(obs[:, 0], b["actions"])
        taken.append(b["actions"])
    used = np.concatenate(taken) if taken else np.array([], np.int64)
    # FIFO, no step lost and none used twice: ids come out in order, contiguous from 0.
    np.testing.assert_array_equal(used, np.arange(len(used)))
    assert len(used) + len(buf) == total


def test_buffer_rejects_batch_larger_than_held():
    buf = FragmentBuffer(0.99, 0.95)
    buf.add(make_fragment(2, 2, 0))
    with pytest.raises(ValueError, match="cannot take 5 steps"):
        buf.take(5)


def test_env_grouping_cuts_a_minibatch_into_env_slices_in_time_order():
    buf = FragmentBuffer(0.99, 0.95)
    buf.add(make_fragment(4, 3, 0))
    buf.add(make_fragment(4, 2, 100, env_offset=3))
    b = buf.take(20)
    minibatch = np.random.default_rng(0).permutation(20)
    groups = microbatch_groups(b, minibatch, 4, "env")
    assert sorted(minibatch[np.concatenate(groups)].tolist()) == list(range(20))  # the same steps
    for g in groups:  # each micro-batch is T = 4 consecutive steps of one env
        steps = minibatch[g]
        assert len(set(b["env_ids"][steps])) == 1 and len(set(b["fragment"][steps])) == 1
        assert b["time"][steps].tolist() == [0, 1, 2, 3]
    random = microbatch_groups(b, minibatch, 8, "random")  # runs of the minibatch's own order
    assert [g.tolist() for g in random] == [list(range(0, 8)), list(range(8, 16)), list(range(16, 20))]


def test_a_restored_worker_acts_with_the_weights_it_is_sent_even_at_its_saved_version():
    # The saved state holds envs and RNG, not weights: a worker restored into a new process must
    # load the weights of the next request even when it names the version the state was saved at.
    import torch

    from rlscale.actors import RolloutWorker
    from rlscale.config import load_train_config
    from tests.helpers import CARTPOLE

    cfg = load_train_config(CARTPOLE, [])
    trained = RolloutWorker(cfg.env, cfg.model, 2, seed=1, env_offset=0)
    torch.manual_seed(0)
    weights = {k: torch.randn_like(v).numpy() for k, v in trained.policy.state_dict().items()}
    trained.sample(4, weights, version=7)
    fresh = RolloutWorker(cfg.env, cfg.model, 2, seed=99, env_offset=0)
    fresh.set_state(trained.get_state())
    frag = fresh.sample(4, weights, version=7)
    again = trained.sample(4)  # the same envs, RNG and weights, continued in place
    np.testing.assert_array_equal(frag.actions, again.actions)
    np.testing.assert_allclose(frag.logp, again.logp, rtol=1e-6)
