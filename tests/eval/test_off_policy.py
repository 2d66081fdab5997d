"""Off-policy estimators: hand-computed cases, and coverage of a simulated ground truth
(a small contextual bandit whose target policy's true reward is known exactly)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from shortlist.eval.off_policy import doubly_robust, estimate_all, ips, snips

# Four logged decisions, worked by hand:
#   w = t / p = [2, 0, 2, 0.5], w * r = [2, 0, 2, 0]
REWARD = [1.0, 0.0, 1.0, 0.0]
PROPENSITY = [0.5, 0.5, 0.25, 1.0]
TARGET = [1.0, 0.0, 0.5, 0.5]


def test_ips_by_hand():
    est = ips(REWARD, PROPENSITY, TARGET)
    assert est.value == pytest.approx(1.0)
    # sample sd of [2, 0, 2, 0] is sqrt(4 / 3); divided by sqrt(4)
    assert est.std_error == pytest.approx(math.sqrt(4 / 3) / 2)
    assert est.ci_low == pytest.approx(1.0 - 1.959964 * est.std_error, rel=1e-6)
    assert est.ci_high == pytest.approx(1.0 + 1.959964 * est.std_error, rel=1e-6)
    # (2 + 0 + 2 + 0.5)^2 / (4 + 0 + 4 + 0.25)
    assert est.effective_sample_size == pytest.approx(20.25 / 8.25)
    assert est.n == 4 and est.clipped == 0 and est.estimator == "ips"


def test_snips_by_hand():
    est = snips(REWARD, PROPENSITY, TARGET)
    assert est.value == pytest.approx(4 / 4.5)
    # w (r - V) = [2/9, 0, 2/9, -4/9]; sqrt(sum of squares * 4/3) / 4.5
    resid_sq = (2 / 9) ** 2 * 2 + (4 / 9) ** 2
    assert est.std_error == pytest.approx(math.sqrt(resid_sq * 4 / 3) / 4.5)
    assert est.ci_low < est.value < est.ci_high


def test_doubly_robust_by_hand():
    # q = 0.5 for every logged action, v = 0.6 under the target:
    # v + w (r - q) = [1.6, 0.6, 1.6, 0.35]
    est = doubly_robust(REWARD, PROPENSITY, TARGET, [0.5] * 4, [0.6] * 4)
    assert est.value == pytest.approx(4.15 / 4)
    assert est.std_error == pytest.approx(np.std([1.6, 0.6, 1.6, 0.35], ddof=1) / 2)


def test_clipping_caps_weights_and_says_how_many():
    est = ips(REWARD, PROPENSITY, TARGET, clip=1.5)  # w = [1.5, 0, 1.5, 0.5]
    assert est.value == pytest.approx(0.75) and est.clipped == 2


def test_on_policy_data_gives_the_sample_mean_and_full_sample_size():
    rng = np.random.default_rng(0)
    r = rng.random(500)
    p = rng.uniform(0.1, 1.0, 500)
    for est in estimate_all(r, p, p, q_logged=np.zeros(500), v_target=np.zeros(500)).values():
        assert est.value == pytest.approx(r.mean())
        assert est.effective_sample_size == pytest.approx(500)
        assert est.std_error == pytest.approx(r.std(ddof=1) / math.sqrt(500))


def test_a_target_that_never_takes_a_logged_action():
    est = snips([1.0, 0.0], [0.5, 0.5], [0.0, 0.0])
    assert math.isnan(est.value) and est.effective_sample_size == 0
    assert ips([1.0, 0.0], [0.5, 0.5], [0.0, 0.0]).value == 0.0


@pytest.mark.parametrize(
    "reward, propensity, target, words",
    [
        ([1.0], [0.0], [1.0], "propensities"),
        ([1.0], [1.5], [1.0], "propensities"),
        ([1.0], [0.5], [1.2], "target probabilities"),
        ([float("nan")], [0.5], [0.5], "NaN"),
        ([1.0, 0.0], [0.5], [0.5], "length"),
        ([], [], [], "no logged decisions"),
    ],
)
def test_bad_inputs_are_named(reward, propensity, target, words):
    with pytest.raises(ValueError, match=words):
        ips(reward, propensity, target)


# -- a simulated ground truth ---------------------------------------------------------


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _bandit(seed: int, n: int, greedy: bool = False, model_noise: float = 0.05):
    """Contexts x ~ px, logging policy mu(a|x), target pi(a|x), Bernoulli rewards with
    known means theta[x, a]; the target's true value is sum_x px pi theta."""
    rng = np.random.default_rng(seed)
    contexts, actions = 20, 10
    theta = rng.beta(1.0, 4.0, (contexts, actions))
    px = rng.dirichlet(np.ones(contexts))
    mu = _softmax(rng.normal(0.0, 1.0, (contexts, actions)))
    if greedy:  # a deterministic policy: the best action by a noisy estimate of theta
        best = (theta + rng.normal(0.0, 0.05, theta.shape)).argmax(axis=1)
        pi = np.eye(actions)[best]
    else:
        pi = _softmax(4.0 * theta + rng.normal(0.0, 0.5, theta.shape))
    truth = float((px[:, None] * pi * theta).sum())
    x = rng.choice(contexts, n, p=px)
    cdf = mu[x].cumsum(axis=1)
    a = np.minimum((rng.random(n)[:, None] > cdf).sum(axis=1), actions - 1)
    r = (rng.random(n) < theta[x, a]).astype(float)
    qhat = np.clip(theta + rng.normal(0.0, model_noise, theta.shape), 0.0, 1.0)
    return {
        "reward": r,
        "propensity": mu[x, a],
        "target": pi[x, a],
        "q_logged": qhat[x, a],
        "v_target": (pi[x] * qhat[x]).sum(axis=1),
        "truth": truth,
    }


@pytest.mark.parametrize("greedy", [False, True], ids=["stochastic-target", "greedy-target"])
def test_intervals_cover_the_true_reward_in_most_seeds(greedy):
    seeds = 100
    covered = {"ips": 0, "snips": 0, "dr": 0}
    se = {"ips": [], "snips": [], "dr": []}
    for seed in range(seeds):
        b = _bandit(seed, 3000, greedy=greedy)
        truth = b.pop("truth")
        for name, est in estimate_all(**b).items():
            covered[name] += est.covers(truth)
            se[name].append(est.std_error)
    # Nominal 95%: with 100 seeds, fewer than 88 would be far outside binomial noise.
    assert all(c >= 88 for c in covered.values()), covered
    # A good reward model makes DR tighter than IPS.
    assert np.mean(se["dr"]) < np.mean(se["ips"]), se


def test_doubly_robust_stays_unbiased_with_a_wrong_reward_model():
    covered, errors = 0, []
    for seed in range(100):
        b = _bandit(seed, 3000)
        n = len(b["reward"])
        est = doubly_robust(
            b["reward"], b["propensity"], b["target"], np.full(n, 0.5), np.full(n, 0.5)
        )
        covered += est.covers(b["truth"])
        errors.append(est.value - b["truth"])
    assert covered >= 88
    # mean error over 100 independent runs is within 3 standard errors of zero
    assert abs(np.mean(errors)) < 3 * np.std(errors) / 10
