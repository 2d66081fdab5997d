"""`shortlist simulate`: the feedback loop run against a known ground truth, and measured.

A deployed recommender trains on what it chose to show, so left alone its loop can
homogenise what users see and lose utility (Chaney, Stewart and Engelhardt 2018). This
package runs that loop with simulated users whose preferences are known, through the
platform's real parts, and records what the loop does round by round:

- The world is the synthetic generator's (`shortlist.data.synth`): its latent item
  factors and user tastes are the ground truth. A user's true preference for an item is
  sigmoid(taste . item - `pref_offset`) (taste at the end of the generated period); a
  shown item at position j is engaged (a click) with probability preference x
  1 / log2(j + 2) (position bias), drawn with the simulation's seed.
- Round 0 trains the first bundle from the generated history with the retrain stages in
  the DAG's order (validate, split, train towers, train ranker, evaluate and bless, build
  the bundle into the idle slot, canary, promote); it goes live whatever its blessing,
  which is recorded. Each round after it: every user asks
  the real serving app (`shortlist.serving.app`, its ASGI app through an HTTP client) for
  `k` items, clicks are posted to the real `/events/batch`, the app is closed (its logs
  flushed), the round's window is joined and landed through the data contract
  (`pipelines.feedback`), and every `retrain_every` rounds the retrain stages run again
  on the grown dataset. A bundle goes live when it is blessed and passes its canary
  (`promote="always"`: whenever its canary passes, the blessing recorded beside it).
- Per round: the true utility (mean true preference of the shown items), the realised
  and expected clicks per list, homogenisation (mean pairwise Jaccard overlap of the
  users' lists, Gini of item exposure over the catalog, catalog coverage), and on a
  retrain round the gate's offline metric (the challenger's `evaluation.primary_metric`
  on the held-out part) and the evaluate stage's off-policy estimate of the challenger
  (SNIPS and DR, with their intervals) beside the challenger's true reward on the same
  logged requests, computed from the ground truth: the mean over those requests of
  preference x position bias of the challenger's greedy list (its deterministic
  target), so `covered` says whether the interval holds the truth.

`bandit_first_users` measures the bandit a new system serves (no bundle yet) over its
first users against popularity-only lists (the generated history's counts) and uniformly
random lists, on the same users with the same click model.

Everything is written under `out_dir`; the per-round records are returned and logged to
MLflow (`params.mlflow`). Policies differ only through params overrides
(`POLICIES`: no exploration; exploration with propensity-aware training and the bandit's
cold section).

The package, one concern a module:

- `world`: the simulated world and its ground truth (`SimSpec`, `Truth`, `position_bias`,
  `write_world`).
- `measures`: what is measured and where it is recorded (`mean_pairwise_overlap`, `gini`,
  `true_target_reward`, `ope_summary`, `Tracker`, `summarise`, `round_line`).
- `loop`: the closed loop and the experiments (`POLICIES`, `retrain`, `serve_round`,
  `run_policy`, `bandit_first_users`, `simulate`).

Those names are re-exported here: `from shortlist import simulate` is the public surface.
"""

from __future__ import annotations

import logging

from shortlist.simulate.loop import (
    POLICIES,
    bandit_first_users,
    retrain,
    run_policy,
    serve_round,
    simulate,
)
from shortlist.simulate.measures import (
    Tracker,
    gini,
    mean_pairwise_overlap,
    ope_summary,
    round_line,
    summarise,
    true_target_reward,
)
from shortlist.simulate.world import SimSpec, Truth, position_bias, write_world

log = logging.getLogger(__name__)

__all__ = [
    "POLICIES",
    "SimSpec",
    "Tracker",
    "Truth",
    "bandit_first_users",
    "gini",
    "mean_pairwise_overlap",
    "ope_summary",
    "position_bias",
    "retrain",
    "round_line",
    "run_policy",
    "serve_round",
    "simulate",
    "summarise",
    "true_target_reward",
    "write_world",
]
