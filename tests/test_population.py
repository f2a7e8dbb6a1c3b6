"""Populations: a member is its standalone trial (weights at step 0, per-part gradients on one
batch, one full update, its checkpoint state), a NaN member stops alone, and what members may not
share is refused."""

import math

import numpy as np
import pytest
import torch

from rlscale.actors import LocalPool, plan_envs
from rlscale.envs import EnvSpec
from rlscale.errors import ConfigError
from rlscale.population import PopulationLearner, PopulationSampler, check_population, draw_noise, member_grads
from rlscale.ppo import ppo_loss
from rlscale.rollout import FragmentBuffer
from tests.helpers import cfg_for, make_learner

SPEC = EnvSpec((4,), "float32", 2, encoder="mlp")
# members differ in every scalar a population lets them set apart
MEMBERS = [
    ["seed=1", "ppo.lr=1e-3"],
    ["seed=2", "ppo.lr=5e-4", "ppo.clip_coef=0.1", "ppo.ent_coef=0.01", "ppo.vf_coef=0.25", "ppo.max_grad_norm=0.1"],
    ["seed=3", "ppo.lr=2e-3", "ppo.max_grad_norm=0"],
]
# two minibatches of two micro-batches over three epochs: Adam's preconditioner, the minibatch
# order and the env grouping of the noise estimate all come into play
SHAPE = ["workers.backend=local", "ppo.num_minibatches=2", "ppo.microbatch_size=64", "ppo.epochs=3"]


def member_cfgs(*extra):
    return [cfg_for(*SHAPE, *m, *extra) for m in MEMBERS]


def cartpole_batch(cfg, steps=256):
    """One batch of real CartPole steps, collected as `rlscale train` collects it."""
    pool = LocalPool(cfg, plan_envs(cfg))
    learner = make_learner(cfg)
    buf = FragmentBuffer(cfg.ppo.gamma, cfg.ppo.gae_lambda)
    for frag in pool.sample([steps // 8] * 2, learner.get_weights(), 0).fragments:
        buf.add(frag)
    return buf.take(steps)


@pytest.fixture(scope="module")
def batch():
    return cartpole_batch(cfg_for("workers.backend=local", "seed=7"))


def test_members_start_with_their_standalone_weights():
    cfgs = member_cfgs()
    pop = PopulationLearner(cfgs, SPEC, torch.device("cpu"))
    for i, cfg in enumerate(cfgs):
        alone = make_learner(cfg)
        for name, q in alone.model.named_parameters():
            assert torch.equal(pop.params[name][i], q), name


def test_member_gradients_equal_the_standalone_learners_per_part(batch):
    cfgs = member_cfgs()
    pop = PopulationLearner(cfgs, SPEC, torch.device("cpu"))
    t = {k: torch.from_numpy(np.asarray(batch[k])) for k in ("obs", "actions", "logp", "values", "advantages", "returns")}
    n = len(cfgs)
    rows = {k: v[:128].expand(n, *v[:128].shape) for k, v in t.items()}
    coefs = [torch.tensor([float(getattr(c.ppo, name)) for c in cfgs]) for name in ("clip_coef", "vf_coef", "ent_coef")]
    policy, value, _, _ = pop._losses(pop.params, rows["obs"], rows["actions"], rows["logp"], rows["values"],
                                      rows["advantages"], rows["returns"], *coefs)
    pop_grads = {"policy": member_grads(pop.params, policy.sum(), retain=True), "value": member_grads(pop.params, value.sum())}
    for i, cfg in enumerate(cfgs):
        alone = make_learner(cfg)
        p = cfg.ppo
        logits, v = alone.model(t["obs"][:128])
        parts, _ = ppo_loss(logits, v, t["actions"][:128], t["logp"][:128], t["values"][:128], t["advantages"][:128],
                            t["returns"][:128], clip_coef=p.clip_coef, clip_vloss=p.clip_vloss, vf_coef=p.vf_coef, ent_coef=p.ent_coef)
        for part in ("policy", "value"):
            expected = alone._grads(getattr(parts, part), retain=True)
            assert sum(bool(g.abs().max() > 0) for g in expected) >= 3, part  # a tower's weights and biases
            for name, got, want in zip(pop.names, pop_grads[part], expected):
                torch.testing.assert_close(got[i], want, rtol=1e-5, atol=1e-7, msg=f"member {i} {part} {name}")


@pytest.mark.parametrize("split", [False, True])
def test_one_update_leaves_each_member_where_its_standalone_update_does(batch, split):
    cfgs = member_cfgs(f"noise.split_policy_value={split}")
    pop = PopulationLearner(cfgs, SPEC, torch.device("cpu"))
    lrs, clips = [c.ppo.lr for c in cfgs], [c.ppo.clip_coef for c in cfgs]
    got = pop.update([batch] * len(cfgs), lrs, [0] * len(cfgs), clips)
    for i, cfg in enumerate(cfgs):
        alone = make_learner(cfg)
        want = alone.update(batch, lrs[i], iteration=0, clip_coef=clips[i])
        for name, q in alone.model.named_parameters():
            torch.testing.assert_close(pop.params[name][i], q, rtol=1e-5, atol=1e-6, msg=f"member {i} {name}")
        m = got[i]
        assert m is not None and list(m) == list(want)  # the same metrics, in the same order
        for key, value in want.items():
            assert m[key] == pytest.approx(value, rel=1e-4, abs=1e-6, nan_ok=True), key
        assert pop.members[i].optimizer_steps == alone.optimizer_steps
        assert pop.members[i].probe.ema["combined"].n == alone.probe.ema["combined"].n > 0
        # the member's checkpoint state is a standalone Learner's: it loads and holds its weights
        other = make_learner(cfg)
        other.load_state_dict(pop.members[i].state_dict())
        for name, q in other.model.named_parameters():
            assert torch.equal(q, pop.params[name][i])
        assert other.optimizer.state_dict()["state"][0]["step"] == alone.optimizer.state_dict()["state"][0]["step"]


def test_a_diverged_member_is_frozen_and_leaves_the_others_unchanged(batch):
    cfgs = member_cfgs()
    healthy = PopulationLearner(cfgs, SPEC, torch.device("cpu"))
    sick = PopulationLearner(cfgs, SPEC, torch.device("cpu"))
    bad = {**batch, "advantages": np.full_like(batch["advantages"], np.nan)}
    before = {k: v[1].detach().clone() for k, v in sick.params.items()}
    lrs, clips = [c.ppo.lr for c in cfgs], [c.ppo.clip_coef for c in cfgs]
    healthy.update([batch] * 3, lrs, [0] * 3, clips)
    out = sick.update([batch, bad, batch], lrs, [0] * 3, clips)
    assert [m.diverged for m in sick.members] == [False, True, False]
    assert sick.members[1].optimizer_steps == 0
    assert out[1] is not None and math.isnan(out[1]["losses/policy_loss"])
    for name, v in sick.params.items():
        assert torch.equal(v[1], before[name])  # frozen at its last finite weights
        for i in (0, 2):
            assert torch.equal(v[i], healthy.params[name][i])  # neighbours bit for bit unchanged
    # a diverged member sits out later updates; the others train on
    out = sick.update([batch] * 3, lrs, [1] * 3, clips)
    assert out[1] is None and out[0] is not None and out[2] is not None
    assert sick.members[0].optimizer_steps == 2 * healthy.members[0].optimizer_steps


def test_members_that_sit_out_an_update_keep_their_state(batch):
    cfgs = member_cfgs()
    pop = PopulationLearner(cfgs, SPEC, torch.device("cpu"))
    before = {k: v[0].detach().clone() for k, v in pop.params.items()}
    lrs, clips = [c.ppo.lr for c in cfgs], [c.ppo.clip_coef for c in cfgs]
    pop.update([None, batch, batch], lrs, [0] * 3, clips)
    alone = make_learner(cfgs[2])
    alone.update(batch, lrs[2], clip_coef=clips[2])
    for name, q in alone.model.named_parameters():
        assert torch.equal(pop.params[name][0], before[name])
        torch.testing.assert_close(pop.params[name][2], q, rtol=1e-5, atol=1e-6)
    assert pop.members[0].version == 0 and pop.members[2].version == 1


@pytest.mark.parametrize("num_actions", [2, 5])
def test_drawn_noise_gives_the_actions_and_generator_state_of_per_step_multinomial_draws(num_actions):
    steps, envs = 37, 4
    probs = torch.softmax(3 * torch.randn(steps, envs, num_actions, generator=torch.Generator().manual_seed(0)), -1)
    g_alone, g_pop = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    want = torch.stack([torch.multinomial(probs[t], 1, generator=g_alone).squeeze(-1) for t in range(steps)])
    got = (probs / draw_noise(g_pop, steps, envs, num_actions)).argmax(-1)
    assert torch.equal(got, want) and 0 < float(want.float().mean()) < num_actions - 1
    assert torch.equal(g_pop.get_state(), g_alone.get_state())  # the stream goes on as the standalone one


def test_sampled_fragments_are_the_standalone_pools(tmp_path):
    cfgs = member_cfgs()[:2]
    pop = PopulationLearner(cfgs, SPEC, torch.device("cpu"))
    pools = [LocalPool(cfg, plan_envs(cfg)) for cfg in cfgs]
    alone = [LocalPool(cfg, plan_envs(cfg)) for cfg in cfgs]
    lengths = [40, 25]  # workers of unequal fragment length; CartPole episodes end inside
    got = PopulationSampler(pop, pools).sample([0, 1], lengths)
    for i, pool in enumerate(alone):
        want = pool.sample(lengths, pop.members[i].get_weights(), 0).fragments
        assert len(got[i].fragments) == len(want) == 2
        for a, b in zip(got[i].fragments, want):
            assert np.array_equal(a.actions, b.actions) and np.array_equal(a.obs, b.obs)
            assert np.array_equal(a.terminated, b.terminated) and a.episode_returns == b.episode_returns
            np.testing.assert_allclose(a.logp, b.logp, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(a.values, b.values, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(a.next_values, b.next_values, rtol=1e-5, atol=1e-6)
        assert any(f.terminated.any() for f in want)
    for pool in pools + alone:
        pool.close()


@pytest.mark.parametrize("override, match", [
    ("env.id=Acrobot-v1", "must share env.id"),
    ("ppo.env_steps_per_iteration=512", "must share ppo.env_steps_per_iteration"),
    ("model.hidden_sizes=[32,32]", "must share model.hidden_sizes"),
    ("workers.backend=ray", "workers.backend=local"),
    ("tracking.wandb_mode=offline", "wandb_mode=disabled"),
    ("noise.b_noise_interval=2", "B_simple only"),
])
def test_what_members_cannot_share_is_refused(tmp_path, override, match):
    cfgs = [cfg_for("workers.backend=local"), cfg_for("workers.backend=local", "seed=2", override)]
    with pytest.raises(ConfigError, match=match):
        check_population(cfgs, [tmp_path / "a", tmp_path / "b"])
    check_population(cfgs[:1] * 2, [tmp_path / "a", tmp_path / "b"])  # settings members may differ in pass


@pytest.mark.slow
def test_population_runs_write_standalone_run_dirs_and_member_zero_is_its_standalone_run(tmp_path):
    import json

    import pandas as pd

    from rlscale.population import train_population
    from rlscale.train import train
    from tests.helpers import strip_times

    base = ["workers.backend=local", "total_env_steps=2048", "checkpoint_interval=4", "eval.interval=2", "eval.episodes=3"]
    cfgs = [cfg_for(*base, "seed=1"), cfg_for(*base, "seed=2", "ppo.lr=5e-4", "ppo.ent_coef=0.01")]
    dirs = [tmp_path / "m0", tmp_path / "m1"]
    # the first half, then a resume to the full budget
    train_population([cfg_for(*base, "seed=1", "total_env_steps=1024"), cfg_for(*base, "seed=2", "ppo.lr=5e-4", "ppo.ent_coef=0.01",
                                                                                "total_env_steps=1024")], dirs, quiet=True)
    summaries = train_population(cfgs, dirs, resume=True, quiet=True)
    alone = train(cfgs[0], tmp_path / "alone", quiet=True)
    a = strip_times(pd.read_csv(tmp_path / "alone" / "metrics.csv"))
    for d, s in zip(dirs, summaries):
        m = strip_times(pd.read_csv(d / "metrics.csv"))
        assert list(m.columns) == list(a.columns) and list(m["iteration"]) == list(range(1, 9))
        assert sorted(json.loads((d / "summary.json").read_text())) == sorted(alone) == sorted(s)
        assert (d / "config.yaml").is_file() and (d / "checkpoints" / "ckpt_00000008.pt").is_file()
    m0 = strip_times(pd.read_csv(dirs[0] / "metrics.csv"))
    assert m0.loc[0, "env_steps"] == a.loc[0, "env_steps"] and m0.loc[0, "episodes"] == a.loc[0, "episodes"]
    for key in ("losses/policy_loss", "losses/value_loss", "losses/entropy", "losses/grad_norm", "noise/grad_sq"):
        assert m0.loc[0, key] == pytest.approx(a.loc[0, key], rel=1e-4, abs=1e-7), key
    # each member evaluates its own policy on its own eval envs, every eval.interval iterations
    assert m0["eval/return_mean"].notna().tolist() == [i % 2 == 0 for i in range(1, 9)]
    assert m0.loc[1, "eval/return_mean"] == a.loc[1, "eval/return_mean"]  # the same policy, envs and draws
    # member 1 differs from member 0 (own seed and settings), as it should
    assert not strip_times(pd.read_csv(dirs[1] / "metrics.csv")).equals(m0)


def test_a_populations_members_checkpoint_at_the_same_iterations(tmp_path):
    """One member due (every 2 iterations) checkpoints every member (the other's interval is
    1000, and no wall-time interval): a resumed population starts all its members at one iteration."""
    from rlscale.population import train_population

    base = ["workers.backend=local", "total_env_steps=1536", "checkpoint_interval_s=0", "checkpoint_keep=0"]
    dirs = [tmp_path / "m0", tmp_path / "m1"]
    train_population([cfg_for(*base, "seed=1", "checkpoint_interval=2"), cfg_for(*base, "seed=2", "checkpoint_interval=1000")], dirs, quiet=True)
    for d in dirs:
        assert sorted(int(p.stem.split("_")[1]) for p in (d / "checkpoints").glob("ckpt_*.pt")) == [2, 4, 6]


@pytest.mark.parametrize("overrides, args, match", [
    ([], ["--seeds", "1", "2", "--lrs", "1e-3"], "workers.backend=local"),  # cartpole.yaml uses Ray actors
    (["workers.backend=local"], ["--seeds", "1", "1", "--lrs", "1e-3"], "repeat a member"),
    (["workers.backend=local"], ["--seeds", "1", "--lrs=-1e-3"], "--lrs must be positive"),
])
def test_train_population_cli_refuses_bad_input_in_one_line(tmp_path, capsys, overrides, args, match):
    from rlscale.cli import main

    code = main(["train-population", "configs/cartpole.yaml", "tracking.wandb_mode=disabled", *overrides,
                 "--out", str(tmp_path / "pop"), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and match in err, err
    assert not (tmp_path / "pop").exists()  # refused before anything is written


def test_losing_members_stop_only_when_their_lr_cannot_win_an_open_target():
    from rlscale.population import losing_members

    def lose(groups, reached, t, targets, active=None):
        n = len(groups)
        return list(losing_members(groups, reached, active or [True] * n, [t] * n if isinstance(t, int) else t, targets))

    # two lrs x three seeds, targets "a" < "b"
    groups = ["x", "x", "x", "y", "y", "y"]
    # x: two seeds reached b at 4 and 6 -> its median for both targets is fixed (6 for b);
    # y: nothing reached by 10, so its median is at least 11 > 6: y loses both targets
    reached = [{"a": 3, "b": 4}, {"a": 5, "b": 6}, {}, {}, {}, {}]
    assert lose(groups, reached, 10, ["a", "b"]) == [3, 4, 5]
    # at iteration 5, with x's second seed short of b, x's median for b is open: nobody stops
    assert lose(groups, [{"a": 3, "b": 4}, {"a": 5}, {}, {}, {}, {}], 5, ["a", "b"]) == []
    # at iteration 5 with x's b fixed at 6, y's lowest median for b is 6: a tie is not a loss
    assert lose(groups, reached, 5, ["a", "b"]) == []
    # one y seed reached a early: at iteration 4 y's lowest median for a is 5, x's fixed one 5
    reached_y = [{"a": 3, "b": 4}, {"a": 5, "b": 6}, {}, {"a": 2}, {}, {}]
    assert lose(groups, reached_y, 4, ["a", "b"]) == []
    # at iteration 8 y's lowest medians are 9 (a: 2, 9, 9) and 9 (b): both above x's 5 and 6
    assert lose(groups, reached_y, 8, ["a", "b"]) == [3, 4, 5]
    # the winner's last seed never stops: its lr's median is fixed, but nothing beats it
    assert 2 not in lose(groups, reached_y, 50, ["a", "b"])
    # a member behind the others (resumed from an older checkpoint) is bounded by its own
    # iteration: y's seeds at 3 could still reach by 4 < x's fixed 5 for a
    assert lose(groups, reached_y, [8, 8, 8, 3, 3, 3], ["a"]) == []
    # four seeds: x reached a at 3 and 5, the other two are open, so x's median lies between
    # (5 + 11) / 2 and +inf: not fixed, and y (nothing yet) does not lose to it
    four = ["x"] * 4 + ["y"] * 4
    assert lose(four, [{"a": 3}, {"a": 5}, {}, {}, {}, {}, {}, {}], 10, ["a"]) == []
    # ... once x's two open seeds have left without reaching, x's median is +inf and fixed:
    # y's lowest, 11, is below it, so y goes on; a third x seed at 7 fixes x's median at 6
    left = [True, True, False, False, True, True, True, True]
    assert lose(four, [{"a": 3}, {"a": 5}, {}, {}, {}, {}, {}, {}], 10, ["a"], left) == []
    assert lose(four, [{"a": 3}, {"a": 5}, {"a": 7}, {}, {}, {}, {}, {}], 10, ["a"]) == [4, 5, 6, 7]
    # a y seed that left without reaching counts as never: with x fixed at 6, y = (inf, 2, open)
    # has a lowest median of 11 at iteration 10 and loses; with it still active, 2 and 11 and
    # 11 give 11 too; and a group alone never loses
    gone = [True, True, True, False, True, True]
    assert lose(groups, [{"a": 3}, {"a": 6}, {}, {}, {"a": 2}, {}], 10, ["a"], gone) == [5]
    assert lose(["x", "x"], [{"a": 1}, {}], 9, ["a"]) == []


def test_settled_pruning_also_stops_a_seed_whose_lr_median_is_fixed_without_it():
    from rlscale.population import LOSING_REASON, SETTLED_REASON, losing_members

    groups = ["x", "x", "x", "y", "y", "y"]
    # x's seeds 0 and 1 reached a and b; seed 2 has not by iteration 50: x's medians are fixed
    # (4 and 6) whatever seed 2 does, and y lost both targets
    reached = [{"a": 3, "b": 4}, {"a": 5, "b": 6}, {}, {"a": 2}, {}, {}]
    assert losing_members(groups, reached, [True] * 6, [50] * 6, ["a", "b"]) == dict.fromkeys([3, 4, 5], LOSING_REASON)
    # each member with its reason: y's seeds lose (whatever `settled` says), x's straggler settles
    assert losing_members(groups, reached, [True] * 6, [50] * 6, ["a", "b"], settled=True) == {
        2: SETTLED_REASON, 3: LOSING_REASON, 4: LOSING_REASON, 5: LOSING_REASON}
    # a member that loses and whose lr's median is fixed without it is named for losing: y's
    # medians (10, 12, open) are fixed at 12 > x's 4 whatever seed 5 does
    both = [{"a": 3}, {"a": 4}, {"a": 5}, {"a": 10}, {"a": 12}, {}]
    assert losing_members(groups, both, [True] * 6, [50] * 6, ["a"], settled=True) == {5: LOSING_REASON}
    # with only one x seed reached, x's median for b depends on seed 2: it goes on
    early = [{"a": 3, "b": 4}, {"a": 5}, {}, {}, {}, {}]
    assert 2 not in losing_members(groups, early, [True] * 6, [50] * 6, ["a", "b"], settled=True)
    # an lr whose median is fixed at one open target but not at another goes on
    part = [{"a": 3}, {"a": 5, "b": 6}, {}, {}, {}, {}]
    assert list(losing_members(["x"] * 3, part[:3], [True] * 3, [7] * 3, ["a", "b"], settled=True)) == []
    # a group alone: its straggler stops once its median is fixed
    assert list(losing_members(["x"] * 3, reached[:3], [True] * 3, [50] * 3, ["a", "b"], settled=True)) == [2]


def test_a_population_gives_each_stopped_member_its_reason():
    from types import SimpleNamespace

    from rlscale.population import LOSING_REASON, SETTLED_REASON, _PopulationLoop

    def run(reached, iteration=50):
        counters = SimpleNamespace(targets={k: {"iterations": v} for k, v in reached.items()}, iteration=iteration)
        return SimpleNamespace(state=SimpleNamespace(counters=counters), targets=[1.0, 2.0])

    reached = [{"1.0": 3, "2.0": 4}, {"1.0": 5, "2.0": 6}, {}, {"1.0": 2}, {}, {}]
    loop = object.__new__(_PopulationLoop)  # only what pruned() reads
    loop.runs, loop.finished, loop.summaries = [run(r) for r in reached], [], {}
    loop.groups = [("grid", 1e-3)] * 3 + [("grid", 1e-4)] * 3
    loop.settled = False
    assert loop.pruned(list(range(6))) == {3: LOSING_REASON, 4: LOSING_REASON, 5: LOSING_REASON}
    loop.settled = True
    assert loop.pruned(list(range(6))) == {2: SETTLED_REASON, 3: LOSING_REASON, 4: LOSING_REASON, 5: LOSING_REASON}


def test_finished_runs_count_as_members_that_left_and_a_pruned_one_as_still_open():
    from rlscale.population import Finished, losing_members

    # lr x finished earlier (3 seeds, median 6); lr y trains now: nothing by 10, so it loses
    x = [Finished(("r", 1.0), {"a": 3}, 3), Finished(("r", 1.0), {"a": 6}, 6), Finished(("r", 1.0), {}, 50)]
    assert list(losing_members([("r", 2.0)] * 3, [{}, {}, {}], [True] * 3, [10] * 3, ["a"], x)) == [0, 1, 2]
    # ... but not by 5 (its lowest median, 6, ties); the finished runs themselves never stop
    assert list(losing_members([("r", 2.0)] * 3, [{}, {}, {}], [True] * 3, [5] * 3, ["a"], x)) == []
    # lr w wins at 1: y's member stops, and of the finished runs (lr x lost too) none is named
    assert list(losing_members([("r", 3.0), ("r", 2.0)], [{"a": 1}, {}], [True, True], [10, 10], ["a"], x)) == [1]
    # two new seeds of an lr whose 3 old seeds were pruned at iteration 4 (lr z, fixed at 6, beat
    # them then); the new ones are at iteration 3. The old seeds might have reached at 5, the new
    # at 4: lr x's lowest median is 5 < 6, so it goes on. Counted as never, the old seeds would
    # make it +inf and stop the new ones: a wrong call
    z = [Finished(("r", 9.0), {"a": k}, k) for k in (5, 6, 7)]
    old = [Finished(("r", 1.0), {}, 4, pruned=True) for _ in range(3)]
    assert list(losing_members([("r", 1.0)] * 2, [{}, {}], [True] * 2, [3] * 2, ["a"], z + old)) == []
    never = [f._replace(pruned=False) for f in old]
    assert list(losing_members([("r", 1.0)] * 2, [{}, {}], [True] * 2, [3] * 2, ["a"], z + never)) == [0, 1]


def test_an_lr_added_later_is_pruned_against_the_finished_runs_of_the_others(tmp_path):
    """A grid grown by one lr: its population stops the new lr when the lr already run wins,
    at the iteration where the winner's median is known, as the two trained together would."""
    from rlscale.population import Finished, train_population

    base = ["workers.backend=local", "total_env_steps=6144", "ppo.env_steps_per_iteration=256", "eval.interval=1",
            "eval.episodes=3", "targets=[60]", "stop_return=60", "checkpoint_interval=4"]
    good = [cfg_for(*base, f"seed={s}", "ppo.lr=2e-3") for s in (1, 2, 3)]
    late = [cfg_for(*base, f"seed={s}", "ppo.lr=1e-7") for s in (1, 2, 3)]
    first = train_population(good, [tmp_path / "good" / str(i) for i in range(3)], quiet=True, prune=True,
                             groups=[("grid", 2e-3)] * 3)
    reach = sorted(s["targets"]["60.0"]["iterations"] for s in first)
    assert all(s["targets"]["60.0"]["reached"] for s in first) and reach[1] < 24
    finished = [Finished.from_summary(("grid", 2e-3), s) for s in first]
    assert finished[0].reached == {"60.0": first[0]["targets"]["60.0"]["iterations"]}
    # the same rule: the new lr stops as soon as the finished lr's median is beaten
    grown = train_population(late, [tmp_path / "late" / str(i) for i in range(3)], quiet=True, prune=True,
                             groups=[("grid", 1e-7)] * 3, finished=finished)
    assert [s["iterations"] for s in grown] == [reach[1]] * 3 and all(s["pruned"] for s in grown)
    # another rule's finished runs are not its competitors: the new lr runs its whole budget
    alone = train_population(late, [tmp_path / "alone" / str(i) for i in range(3)], quiet=True, prune=True,
                             groups=[("noise", 1e-7)] * 3, finished=finished)
    assert [s["iterations"] for s in alone] == [24] * 3 and not any(s["pruned"] for s in alone)


def test_a_population_prunes_only_against_the_lrs_of_its_own_rule(tmp_path, monkeypatch):
    from rlscale import population

    seen = []
    real = population.losing_members

    def spy(groups, *args, **kwargs):
        seen.append(sorted(set(groups)))
        return real(groups, *args, **kwargs)

    monkeypatch.setattr(population, "losing_members", spy)
    base = ["workers.backend=local", "total_env_steps=512", "ppo.env_steps_per_iteration=256", "targets=[60]"]
    cfgs = [cfg_for(*base, f"seed={s}") for s in (1, 2)]
    population.train_population(cfgs, [tmp_path / "a", tmp_path / "b"], quiet=True, prune=True,
                                groups=[("fixed", 2.5e-4), ("grid", 2.5e-4)])
    # the same lr under two rules: two separate comparisons, as the analysis picks a best lr per rule
    assert seen and all(len(g) == 1 for g in seen) and {g[0][0] for g in seen} == {"fixed", "grid"}


def test_a_pruned_population_stops_the_losing_lr_and_leaves_the_winner_as_it_was(tmp_path):
    import json

    from rlscale.population import train_population

    base = ["workers.backend=local", "total_env_steps=6144", "ppo.env_steps_per_iteration=256", "eval.interval=1",
            "eval.episodes=3", "targets=[60]", "stop_return=60", "checkpoint_interval=4"]
    cfgs = [cfg_for(*base, f"seed={s}", f"ppo.lr={lr}") for lr in (2e-3, 1e-7) for s in (1, 2, 3)]
    full = train_population(cfgs, [tmp_path / "full" / str(i) for i in range(6)], quiet=True)
    pruned = train_population(cfgs, [tmp_path / "pruned" / str(i) for i in range(6)], quiet=True, prune=True)
    good = sorted(s["targets"]["60.0"]["iterations"] for s in full[:3])
    assert all(s["targets"]["60.0"]["reached"] is False for s in full[3:])  # lr 1e-7 never learns
    # the winner's seeds reach as they do in the full population, none is stopped
    keys = ("reached", "iterations", "env_steps", "optimizer_steps")
    assert [[s["targets"]["60.0"][k] for k in keys] for s in pruned[:3]] == [[s["targets"]["60.0"][k] for k in keys] for s in full[:3]]
    for p, f in zip(pruned[:3], full[:3]):
        assert p["targets"]["60.0"]["b_simple"] == pytest.approx(f["targets"]["60.0"]["b_simple"], rel=1e-3)
    assert all(s["pruned"] is None for s in pruned[:3])
    # the loser's stop when the winner's median (its second seed of three) is known
    for i, s in enumerate(pruned[3:], start=3):
        record = json.loads((tmp_path / "pruned" / str(i) / "pruned.json").read_text())
        assert s["pruned"] == record and record["iteration"] == good[1] and s["iterations"] == good[1]
        assert full[i]["iterations"] == 24  # its full budget
    # a resumed population leaves the pruned members out
    again = train_population(cfgs, [tmp_path / "pruned" / str(i) for i in range(6)], resume=True, quiet=True, prune=True)
    assert [s["iterations"] for s in again] == [s["iterations"] for s in pruned]


def _interrupt_evaluation(monkeypatch, when) -> None:
    """The members' shared evaluation raises KeyboardInterrupt once, the first time `when(loop,
    members)` holds (a stop landing in it), and runs as it does otherwise."""
    from rlscale.population import _PopulationLoop

    real = _PopulationLoop.evaluate

    def interrupted(self, members):
        if when(self, members):
            monkeypatch.setattr(_PopulationLoop, "evaluate", real)
            raise KeyboardInterrupt
        return real(self, members)

    monkeypatch.setattr(_PopulationLoop, "evaluate", interrupted)


@pytest.mark.slow
def test_an_interrupted_population_evaluation_is_recorded_on_resume(tmp_path, monkeypatch):
    # The stop lands in the members' shared evaluation of iteration 3: each member's checkpoint
    # holds its pending row, and the resumed population logs it, evaluation and target included,
    # as the uninterrupted population does.
    import pandas as pd

    from rlscale.population import train_population
    from tests.helpers import strip_times

    base = ["workers.backend=local", "total_env_steps=1536", "checkpoint_interval=2", "eval.interval=3",
            "eval.episodes=2", "targets=[1]"]
    cfgs = [cfg_for(*base, "seed=1"), cfg_for(*base, "seed=2", "ppo.lr=5e-4")]
    _interrupt_evaluation(monkeypatch, lambda loop, members: bool(members))
    dirs = [tmp_path / "run" / str(i) for i in range(2)]
    with pytest.raises(KeyboardInterrupt):
        train_population(cfgs, dirs, quiet=True)
    resumed = train_population(cfgs, dirs, resume=True, quiet=True)
    whole = train_population(cfgs, [tmp_path / "whole" / str(i) for i in range(2)], quiet=True)
    for i in range(2):
        assert resumed[i]["targets"]["1.0"]["iterations"] == whole[i]["targets"]["1.0"]["iterations"] == 3
        a, b = (strip_times(pd.read_csv(tmp_path / d / str(i) / "metrics.csv")) for d in ("run", "whole"))
        assert list(a["iteration"]) == list(range(1, 7))
        pd.testing.assert_frame_equal(a, b)


@pytest.mark.slow
def test_a_population_interrupted_at_its_pruning_iteration_prunes_there_on_resume(tmp_path, monkeypatch):
    # The stop lands in the evaluation of the iteration at which the losing lr is pruned: the
    # resumed population records that iteration, then prunes at it, as the uninterrupted one did.
    import json

    from rlscale.population import train_population

    base = ["workers.backend=local", "total_env_steps=6144", "ppo.env_steps_per_iteration=256", "eval.interval=1",
            "eval.episodes=3", "targets=[60]", "stop_return=60", "checkpoint_interval=4"]
    cfgs = [cfg_for(*base, f"seed={s}", f"ppo.lr={lr}") for lr in (2e-3, 1e-7) for s in (1, 2, 3)]
    whole = train_population(cfgs, [tmp_path / "whole" / str(i) for i in range(6)], quiet=True, prune=True)
    at = json.loads((tmp_path / "whole" / "3" / "pruned.json").read_text())["iteration"]
    assert at % 4  # not a checkpoint's iteration: only the stop's checkpoint holds it
    _interrupt_evaluation(monkeypatch, lambda loop, members: loop.runs[members[0]].state.counters.iteration == at)
    dirs = [tmp_path / "run" / str(i) for i in range(6)]
    with pytest.raises(KeyboardInterrupt):
        train_population(cfgs, dirs, quiet=True, prune=True)
    resumed = train_population(cfgs, dirs, resume=True, quiet=True, prune=True)
    for i in range(3, 6):
        assert json.loads((dirs[i] / "pruned.json").read_text())["iteration"] == at
    keys = ("iterations", "env_steps", "pruned")
    assert [[s[k] for k in keys] for s in resumed] == [[s[k] for k in keys] for s in whole]
    def untimed(s):
        return {t: {k: v for k, v in r.items() if k != "wall_time_s"} for t, r in s["targets"].items()}

    assert [untimed(s) for s in resumed] == [untimed(s) for s in whole]


def test_a_population_cuts_each_members_evaluation_games_and_logs_how_many(tmp_path):
    """eval.max_episode_steps in a population: each member's evaluation games stop at the cut
    (CartPole scores 1 per step, so no mean exceeds it) and eval/games_cut counts the cut games,
    on evaluation rows only; a member whose games all reach the cut scores exactly the cut. A
    member that leaves packs its metrics (metrics.csv.gz)."""
    import gzip

    import pandas as pd

    from rlscale.population import train_population

    base = ["workers.backend=local", "total_env_steps=2048", "eval.interval=2", "eval.episodes=4", "eval.max_episode_steps=20"]
    dirs = [tmp_path / "m0", tmp_path / "m1"]
    train_population([cfg_for(*base, "seed=1"), cfg_for(*base, "seed=2", "ppo.lr=5e-3")], dirs, quiet=True)
    for d in dirs:
        m = pd.read_csv(d / "metrics.csv")
        evals = m[m["eval/return_mean"].notna()]
        assert len(evals) == 4 and m["eval/games_cut"].notna().tolist() == m["eval/return_mean"].notna().tolist()
        assert (evals["eval/return_mean"] <= 20).all() and evals["eval/games_cut"].between(0, 4).all()
        all_cut = evals["eval/games_cut"] == 4
        assert (evals.loc[all_cut, "eval/return_mean"] == 20).all() and (evals.loc[all_cut, "eval/return_std"] == 0).all()
        assert gzip.decompress((d / "metrics.csv.gz").read_bytes()) == (d / "metrics.csv").read_bytes()  # packed as it left
    cuts = pd.concat([pd.read_csv(d / "metrics.csv")["eval/games_cut"] for d in dirs]).dropna()
    assert cuts.sum() > 0  # the cut did act


@pytest.mark.slow
def test_a_population_stopped_while_its_checkpoints_were_written_resumes_its_running_members_together(tmp_path, monkeypatch, capsys):
    # The stop lands in the evaluation of iteration 5, and member 1's checkpoint of it is not
    # written (as when a stop comes between the members' writes): both running members resume
    # from iteration 4, the round before, member 0's checkpoint of 5 is removed, and both end as
    # the uninterrupted population does.
    import shutil

    import pandas as pd

    from rlscale.population import aligned_checkpoints, train_population
    from tests.helpers import strip_times

    base = ["workers.backend=local", "total_env_steps=1536", "checkpoint_interval=2", "checkpoint_keep=0", "eval.interval=5",
            "eval.episodes=2"]
    cfgs = [cfg_for(*base, "seed=1"), cfg_for(*base, "seed=2", "ppo.lr=5e-4")]
    _interrupt_evaluation(monkeypatch, lambda loop, members: bool(members))
    dirs = [tmp_path / "run" / str(i) for i in range(2)]
    with pytest.raises(KeyboardInterrupt):
        train_population(cfgs, dirs, quiet=True)
    assert all((d / "checkpoints" / "ckpt_00000005.pt").is_file() for d in dirs)
    (dirs[1] / "checkpoints" / "ckpt_00000005.pt").unlink()

    def names(run_dirs):
        return [p.name for p, _ in aligned_checkpoints(cfgs, run_dirs)]

    # a member that left resumes from its own newest, whatever the others hold
    left = [tmp_path / "left" / str(i) for i in range(2)]
    for d, c in zip(dirs, left):
        shutil.copytree(d, c)
    (left[0] / "pruned.json").write_text("{}")
    capsys.readouterr()
    assert names(left) == ["ckpt_00000005.pt", "ckpt_00000004.pt"] and capsys.readouterr().err == ""
    # members that are more than one round apart (never ran together) are not aligned
    apart = [tmp_path / "apart" / str(i) for i in range(2)]
    for d, c in zip(dirs, apart):
        shutil.copytree(d, c)
    (apart[1] / "checkpoints" / "ckpt_00000004.pt").unlink()
    assert names(apart) == ["ckpt_00000005.pt", "ckpt_00000002.pt"]
    assert "newest checkpoints are at iterations [2, 5], not one round of checkpoints apart" in capsys.readouterr().err
    # one interrupted round: aligned, and the round's files are gone
    assert names(dirs) == ["ckpt_00000004.pt"] * 2
    assert ("checkpoints of iteration 5 were written (1 of 2 were); all 2 running members resume from iteration 4"
            in capsys.readouterr().err)
    assert not any((d / "checkpoints" / name).exists() for d in dirs for name in ("ckpt_00000005.pt", "workers_00000005.pkl"))
    resumed = train_population(cfgs, dirs, resume=True, quiet=True)
    whole = train_population(cfgs, [tmp_path / "whole" / str(i) for i in range(2)], quiet=True)
    for i in range(2):
        assert resumed[i]["iterations"] == whole[i]["iterations"] == 6
        a, b = (strip_times(pd.read_csv(tmp_path / d / str(i) / "metrics.csv")) for d in ("run", "whole"))
        pd.testing.assert_frame_equal(a, b)


def _diverge(monkeypatch, member: int, iteration: int) -> None:
    """`member`'s loss turns non-finite in the update of its iteration `iteration` (counted from 1)."""
    from rlscale.population import PopulationLearner

    real = PopulationLearner.update

    def update(self, batches, lrs, iterations, clips):
        if batches[member] is not None and iterations[member] == iteration - 1:
            batches = [*batches]
            batches[member] = {**batches[member], "advantages": np.full_like(batches[member]["advantages"], np.nan)}
        return real(self, batches, lrs, iterations, clips)

    monkeypatch.setattr(PopulationLearner, "update", update)


@pytest.mark.slow
def test_members_that_left_before_a_stop_keep_their_records_as_written_when_the_population_resumes(tmp_path, monkeypatch):
    # Member 1 diverges at iteration 1, before the first checkpoint (iteration 2), and member 2
    # uses its budget at iteration 2 (its checkpoints are then removed); the stop lands in the evaluation of iteration 3. The
    # resume goes on from member 0's checkpoint and leaves the other two's files as written
    # (same bytes, not rewritten); member 0 ends as in the uninterrupted population.
    import pandas as pd

    from rlscale.population import train_population
    from tests.helpers import strip_times

    _diverge(monkeypatch, member=1, iteration=1)
    base = ["workers.backend=local", "total_env_steps=1536", "checkpoint_interval=2", "eval.interval=3", "eval.episodes=2"]
    cfgs = [cfg_for(*base, "seed=1"), cfg_for(*base, "seed=2", "ppo.lr=5e-4"), cfg_for(*base, "seed=3", "total_env_steps=512")]
    _interrupt_evaluation(monkeypatch, lambda loop, members: bool(members))
    dirs = [tmp_path / "run" / str(i) for i in range(3)]
    with pytest.raises(KeyboardInterrupt):
        train_population(cfgs, dirs, quiet=True)
    assert (dirs[1] / "diverged.json").is_file() and not list((dirs[1] / "checkpoints").glob("ckpt_*"))
    assert (dirs[2] / "summary.json").is_file()
    for p in (dirs[2] / "checkpoints").iterdir():  # a member that finished, its checkpoints removed to free the disk
        p.unlink()

    def files(d):
        return {p.relative_to(d): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(d.rglob("*")) if p.is_file()}

    before = [files(d) for d in dirs[1:]]
    resumed = train_population(cfgs, dirs, resume=True, quiet=True)
    after = [files(d) for d in dirs[1:]]
    assert [sorted(str(k) for k in set(a) | set(b) if a.get(k) != b.get(k)) for a, b in zip(after, before)] == [[], []]
    whole = train_population(cfgs, [tmp_path / "whole" / str(i) for i in range(3)], quiet=True)
    assert [s["iterations"] for s in resumed] == [s["iterations"] for s in whole] == [6, 1, 2]
    for i in (1, 2):
        untimed = [{k: v for k, v in s[i].items() if k not in ("wall_time_s", "env_steps_per_s", "run_dir")} for s in (resumed, whole)]
        assert untimed[0] == untimed[1]
    a, b = (strip_times(pd.read_csv(tmp_path / d / "0" / "metrics.csv")) for d in ("run", "whole"))
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.slow
def test_a_stop_before_the_first_checkpoint_round_starts_the_running_members_again_in_step(tmp_path, monkeypatch, capsys):
    # Member 1 diverges at iteration 3 and the stop lands in that iteration's evaluation, before
    # the first checkpoint round (4): member 0 saves its state at the stop, member 1 (diverged, its
    # diverged.json not written yet) nothing. Resumed, both start again in step and end as the
    # uninterrupted population does; where a member has more than one checkpoint, the resume is
    # refused instead.
    import shutil

    import pandas as pd

    from rlscale.errors import ConfigError
    from rlscale.population import aligned_checkpoints, train_population
    from tests.helpers import strip_times

    _diverge(monkeypatch, member=1, iteration=3)
    base = ["workers.backend=local", "total_env_steps=1536", "checkpoint_interval=4", "eval.interval=3", "eval.episodes=2"]
    cfgs = [cfg_for(*base, "seed=1"), cfg_for(*base, "seed=2", "ppo.lr=5e-4")]
    _interrupt_evaluation(monkeypatch, lambda loop, members: bool(members))
    dirs = [tmp_path / "run" / str(i) for i in range(2)]
    with pytest.raises(KeyboardInterrupt):
        train_population(cfgs, dirs, quiet=True)
    assert [p.name for p in (dirs[0] / "checkpoints").glob("ckpt_*")] == ["ckpt_00000003.pt"]
    assert not list((dirs[1] / "checkpoints").glob("ckpt_*")) and not (dirs[1] / "diverged.json").exists()
    more = [tmp_path / "more" / str(i) for i in range(2)]
    for d, c in zip(dirs, more):
        shutil.copytree(d, c)
    shutil.copy(more[0] / "checkpoints" / "ckpt_00000003.pt", more[0] / "checkpoints" / "ckpt_00000002.pt")
    with pytest.raises(ConfigError, match="member 1 .* has no checkpoint while member 0 has 2; start the population again"):
        aligned_checkpoints(cfgs, more)
    capsys.readouterr()
    resumed = train_population(cfgs, dirs, resume=True, quiet=True)
    assert "member(s) [1] have no checkpoint (a stop came before their first); the running members [0, 1] start again" in capsys.readouterr().err
    whole = train_population(cfgs, [tmp_path / "whole" / str(i) for i in range(2)], quiet=True)
    assert [s["iterations"] for s in resumed] == [s["iterations"] for s in whole] == [6, 3]
    assert (dirs[1] / "diverged.json").read_text() == (tmp_path / "whole" / "1" / "diverged.json").read_text()
    for i in range(2):
        a, b = (strip_times(pd.read_csv(tmp_path / d / str(i) / "metrics.csv")) for d in ("run", "whole"))
        pd.testing.assert_frame_equal(a, b)


@pytest.mark.slow
def test_a_population_whose_members_all_left_without_checkpoints_resumes_to_their_records(tmp_path, monkeypatch):
    from rlscale.population import train_population

    _diverge(monkeypatch, member=0, iteration=1)
    _diverge(monkeypatch, member=1, iteration=1)
    base = ["workers.backend=local", "total_env_steps=1024", "checkpoint_interval=4"]
    cfgs = [cfg_for(*base, "seed=1"), cfg_for(*base, "seed=2")]
    dirs = [tmp_path / str(i) for i in range(2)]
    first = train_population(cfgs, dirs, quiet=True)
    assert [s["iterations"] for s in first] == [1, 1] and not list(tmp_path.glob("*/checkpoints/ckpt_*"))
    before = {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    assert train_population(cfgs, dirs, resume=True, quiet=True) == first
    assert {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()} == before


@pytest.mark.slow
def test_pruning_after_a_resume_counts_what_a_member_that_left_had_reached(tmp_path, monkeypatch):
    # Member 1 reaches target 1 at its first evaluation and diverges at iteration 3, before the first
    # checkpoint (5); the stop lands in the evaluation of iteration 4. Pruning in the resumed
    # population sees member 1's reach and iterations as the uninterrupted population did (from its
    # summary: its state there is a records-only member's, at iteration 0).
    from rlscale import population

    calls: list = []
    real = population.losing_members

    def spy(groups, reached, active, iterations, *args, **kwargs):
        calls.append((reached[1], iterations[1]))
        return real(groups, reached, active, iterations, *args, **kwargs)

    monkeypatch.setattr(population, "losing_members", spy)
    _diverge(monkeypatch, member=1, iteration=3)
    base = ["workers.backend=local", "total_env_steps=2048", "checkpoint_interval=5", "eval.interval=1", "eval.episodes=2",
            "targets=[1, 1000]"]
    cfgs = [cfg_for(*base, f"seed={s}") for s in (1, 2, 3)]
    whole = population.train_population(cfgs, [tmp_path / "whole" / str(i) for i in range(3)], quiet=True, prune=True)
    assert whole[1]["iterations"] == 3 and whole[1]["targets"]["1.0"]["iterations"] == 1
    assert ({"1.0": 1}, 3) in calls  # what the uninterrupted population's pruning saw once member 1 left
    _interrupt_evaluation(monkeypatch, lambda loop, members: loop.runs[members[0]].state.counters.iteration == 4)
    dirs = [tmp_path / "run" / str(i) for i in range(3)]
    with pytest.raises(KeyboardInterrupt):
        population.train_population(cfgs, dirs, quiet=True, prune=True)
    calls[:] = []
    resumed = population.train_population(cfgs, dirs, resume=True, quiet=True, prune=True)
    assert calls and all(c == ({"1.0": 1}, 3) for c in calls)
    assert [s["iterations"] for s in resumed] == [s["iterations"] for s in whole]
