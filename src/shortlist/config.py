"""One typed configuration for every stage.

`params.yaml` is the single source of hyperparameters, thresholds and paths. DVC reads
it for dependency tracking, Airflow and the CLI load it here into one validated object.
Unknown keys and wrong types are errors that name the offending key, so a typo cannot
silently fall back to a default.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PARAMS_ENV = "SHORTLIST_PARAMS"
DEFAULT_PARAMS_FILE = "params.yaml"


class ConfigError(ValueError):
    """A params file or override that does not fit the schema."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ProjectParams(_Section):
    work_dir: str = ".shortlist"
    seed: int = 42


class DataParams(_Section):
    source: Literal["movielens-100k", "movielens-1m", "movielens-latest", "csv", "synth"] = (
        "movielens-100k"
    )
    path: str = ""
    dir: str = ".shortlist/data"


class SynthParams(_Section):
    users: int = Field(5000, gt=0)
    items: int = Field(2000, gt=0)
    interactions: int = Field(200_000, gt=0)
    factors: int = Field(16, gt=0)
    topics: int = Field(32, gt=0)  # latent item clusters; titles draw words per topic
    candidates: int = Field(4, gt=0)  # items drawn per interaction, best affinity wins
    zipf_exponent: float = Field(1.1, gt=0)
    cold_item_fraction: float = Field(0.05, ge=0, lt=1)
    late_user_fraction: float = Field(0.05, ge=0, lt=1)
    period_days: int = Field(180, gt=0)
    drift: float = Field(0.3, ge=0)
    chunk_rows: int = Field(1_000_000, gt=0)
    start_timestamp: int = 1_640_995_200  # 2022-01-01 UTC
    threads: int = Field(2, ge=1)  # chunk workers; the output does not depend on it


class ValidationParams(_Section):
    reference_dir: str = ".shortlist/reference"
    quarantine_dir: str = ".shortlist/quarantine"
    docs_dir: str = ".shortlist/data_docs"
    min_timestamp: int = 631_152_000  # 1990-01-01 UTC: older is a unit error, not history
    max_future_seconds: int = Field(3600, ge=0)
    volume_tolerance: float = Field(0.5, gt=0)
    max_new_item_share: float = Field(0.5, ge=0, le=1)
    max_new_user_share: float = Field(0.5, ge=0, le=1)
    per_user_quantile_tolerance: float = Field(1.0, gt=0)
    per_user_quantiles: list[float] = [0.5, 0.9, 0.99]
    example_rows: int = Field(5, gt=0)
    # Absolute rules, checked on every batch (the first one has no reference to compare
    # with): weights finite and at most max_weight (a rating, count or seconds, not 1e38);
    # ids 1..max_id_length characters without leading/trailing whitespace or control
    # characters (the serving API accepts ids of at most 128); at least min_users users;
    # at least min_title_share of the items with a non-blank title (the item tower reads
    # titles; set 0 for a catalog without titles).
    max_weight: float = Field(1e6, gt=0)
    max_id_length: int = Field(128, ge=1)
    min_users: int = Field(10, ge=1)
    min_title_share: float = Field(0.5, ge=0, le=1)


class SplitParams(_Section):
    dir: str = ".shortlist/split"
    # auto: random per-user holdout when timestamps were synthesised; with real time a
    # global time cut when it puts global_min_user_share of the users in validation,
    # else each user's most recent interactions (per_user). See shortlist.data.split.
    mode: Literal["auto", "global", "per_user", "random"] = "auto"
    validation_fraction: float = Field(0.1, ge=0, lt=1)
    test_fraction: float = Field(0.1, ge=0, lt=1)
    min_user_interactions: int = Field(1, ge=1)
    global_min_user_share: float = Field(0.5, ge=0, le=1)
    # A validation or test part with fewer users that have history is an error: early
    # stopping, the ranker's decision and the blessing would be drawn from noise.
    min_validation_users: int = Field(50, ge=1)


class LogQParams(_Section):
    enabled: bool = True
    hash_buckets: int = Field(1 << 20, gt=0)
    alpha: float = Field(0.01, gt=0, le=1)
    inference_popularity_weight: float = 0.3


class TowerParams(_Section):
    out_dir: str = ".shortlist/model"
    embedding_dim: int = Field(64, gt=0)
    hidden_dim: int = Field(128, gt=0)
    history_len: int = Field(50, gt=0)
    # Training examples' histories: "causal" = the user's items before the target's time
    # (next-item); "leave_one_out" = the user's last history_len train items except the
    # target (a set: no order). "auto" = causal where timestamps are real, leave_one_out
    # where they were synthesised from row order (the split records which).
    history_mode: Literal["auto", "causal", "leave_one_out"] = "auto"
    # Evaluate and keep an exponential moving average of the weights (per step); 0 = off.
    ema_decay: float = Field(0.995, ge=0, lt=1)
    title_hash_buckets: int = Field(16384, gt=0)
    user_buckets: int = Field(1, ge=1)
    id_dropout: float = Field(0.1, ge=0, le=1)
    id_dim: int = Field(64, gt=0)
    context_dropout: float = Field(0.5, ge=0, le=1)
    temperature: float = Field(0.05, gt=0)
    batch_size: int = Field(1024, gt=0)
    epochs: int = Field(20, gt=0)
    learning_rate: float = Field(0.005, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    mixed_negatives: int = Field(512, ge=0)
    early_stopping_patience: int = Field(3, ge=1)
    eval_k: int = Field(20, gt=0)
    threads: int = Field(2, ge=1)
    # Data-parallel training processes (torchrun + DDP, `threads` each); 1 = one process.
    processes: int = Field(1, ge=1)
    # Their process group: gloo (CPU), nccl (CUDA), auto = nccl where CUDA is available.
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    # After early stopping picks the epoch count, retrain from scratch (same seed) on
    # train + validation for that many epochs, as the baselines refit after tuning.
    refit_on_validation: bool = True
    logq: LogQParams = LogQParams()


class RankerParams(_Section):
    candidates: int = Field(200, gt=0)
    random_negatives: int = Field(5, ge=0)
    # Hard negatives per training request, sampled from the retrieved candidates the user
    # did not take (0: all of them). Early stopping always ranks all candidates.
    hard_negatives: int = Field(50, ge=0)
    # With an ensemble, 5 members of one rank-16 cross layer and a (64, 32) MLP matched
    # 5 members of 2 full-rank layers and (128, 64) on validation.
    cross_layers: int = Field(2, ge=0)
    # Rank of each cross layer's weight (0 = full rank: n_features^2 multiply-adds per
    # candidate; DCN-v2's low-rank form costs 2 * n_features * rank).
    cross_rank: int = Field(0, ge=0)
    hidden_dims: list[int] = [128, 64]
    batch_size: int = Field(1024, gt=0)
    epochs: int = Field(20, gt=0)
    learning_rate: float = Field(0.0003, gt=0)
    early_stopping_patience: int = Field(3, ge=1)
    eval_k: int = Field(20, gt=0)
    threads: int = Field(2, ge=1)
    id_dim: int = Field(16, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    # Positives weighted by engagement (the rating on MovieLens), or all weight 1.
    positive_weight: Literal["engagement", "unit"] = "engagement"
    popularity_windows_days: list[int] = [1, 7, 30]
    # Feature groups used (retrieval, item and user are always on); for ablations.
    feature_groups: list[Literal["crosses", "cooccurrence", "popularity", "ids"]] = [
        "crosses",
        "cooccurrence",
        "popularity",
        "ids",
    ]
    # Networks averaged into the ranker, each with its own seed and early-stopping users
    # (bagging: the ranker learns from a few hundred requests, so one network's order
    # varies with its initialisation and stop set). Off by default: see params.yaml.
    ensemble: int = Field(1, ge=1)
    # Item-item neighbours of the `cooccurrence` group: top-k by shrunk cosine similarity.
    cooccurrence_neighbours: int = Field(100, gt=0)
    cooccurrence_shrink: float = Field(10.0, ge=0)
    # Candidates the extra sources add to the towers' `candidates` for the ranker to rank
    # (shortlist.ranking.sources): ItemKNN neighbours of the history, the recent trend.
    item_to_item_candidates: int = Field(0, ge=0)
    popular_candidates: int = Field(0, ge=0)
    # Requests per validation user the ranker trains on: the first validation event, then
    # cuts spread over the later ones (positives: the items from the cut on).
    cut_points: int = Field(1, ge=1)
    # Share of validation users held out of ranker fitting for early stopping.
    holdout_fraction: float = Field(0.2, gt=0, lt=1)
    # Another share, disjoint from the first, held out for the ship decision alone.
    decision_fraction: float = Field(0.2, gt=0, lt=1)
    # The ranker ships only when its NDCG@eval_k on the decision users beats the
    # retrieval order by more than this many standard errors (shortlist.ranking.decision);
    # otherwise the bundle serves the retrieval order.
    ship_min_z: float = 1.0
    # The item-item blend (shortlist.ranking.item_item): candidates re-ordered by the
    # standardised retrieval score plus a weight times the standardised EASE score. The
    # weight is chosen on validation among blend_weights (empty: no blend) and the blend
    # ships under the same rule as the network; the better of the two on the decision
    # users is served.
    blend_weights: list[float] = [0.1, 0.2, 0.3, 0.5, 1.0]
    ease_l2: float = Field(250.0, gt=0)  # EASE's L2 regularisation (lambda)
    ease_neighbours: int = Field(200, gt=0)  # EASE weights kept per item
    ease_max_items: int = Field(10_000, gt=0)  # EASE fitted on this many most popular items
    # Weight positives engaged from a logged exposure (the feedback join's exposures table)
    # by 1 / propensity, clipped at propensity_clip (shortlist.ranking.propensity). Off by
    # default: see params.yaml.
    propensity_weighting: bool = False
    propensity_clip: float = Field(10.0, ge=1)  # largest inverse-propensity weight

    @model_validator(mode="after")
    def _holdouts_leave_users_to_fit(self) -> RankerParams:
        if self.holdout_fraction + self.decision_fraction >= 1.0:
            raise ValueError("holdout_fraction + decision_fraction must be below 1")
        return self


class TuningParams(_Section):
    """`shortlist tune`: a budgeted search on validation whose result later runs reuse."""

    path: str = ".shortlist/tuning/best.json"
    budget_minutes: float = Field(10.0, gt=0)
    ranker_share: float = Field(0.3, ge=0, lt=1)  # of the budget, for the ranker's knobs
    # train-towers and train-ranker apply a tuning file whose data shape matches the split.
    use: bool = True
    # The retrain DAG runs the search when no tuning file fits the data's shape (off: a
    # retrain never spends the budget unasked; run `shortlist tune` or turn this on).
    in_retrain: bool = False


class BaselineGridParams(_Section):
    """Validation grids of the baselines (shortlist.eval.baselines); small on purpose."""

    item_knn_neighbours: list[int] = [50, 100, 200]
    item_knn_shrink: list[float] = [0.0, 10.0, 50.0]
    ease_lambda: list[float] = [100.0, 250.0, 500.0, 1000.0]
    als_factors: list[int] = [32, 64, 128]
    als_regularization: list[float] = [0.01, 0.1]
    als_iterations: list[int] = [15]
    als_alpha: list[float] = [1.0, 10.0]


class OffPolicyParams(_Section):
    """Off-policy estimates of the challenger's reward on the live bundle's logged lists."""

    # Estimate when logged exposures (with propensities and engagement) exist.
    enabled: bool = True
    # Exposures table to read (empty: <data.dir>/exposures.parquet, where the feedback
    # stage lands them).
    logged_path: str = ""
    # The challenger as a target policy: its greedy top k, or its own exploration slots.
    # Greedy by default: its slots reach deeper into the tail than a differently ranked
    # logger could have shown, and mass on items the logs cannot show biases every estimate.
    target: Literal["deterministic", "exploration"] = "deterministic"
    # Reward of a shown item: engaged (0/1) or its engagement weight.
    reward: Literal["engaged", "weight"] = "engaged"
    confidence: float = Field(0.95, gt=0, lt=1)
    clip: float = Field(0.0, ge=0)  # importance weights capped here (0: no cap)
    # Part of the blessing gate (off by default): when the effective sample size reaches
    # min_ess, the `estimator`'s value must be at least the logged policy's own reward
    # times (1 + min_lift); below min_ess the gate is skipped and the report says so.
    gate: bool = False
    estimator: Literal["ips", "snips", "dr"] = "snips"
    min_lift: float = -0.05
    min_ess: float = Field(500.0, ge=0)


class EvaluationParams(_Section):
    ks: list[int] = [10, 20, 50, 200]
    primary_metric: str = "recall@20"
    heavy_user_quantile: float = Field(0.8, gt=0, lt=1)
    baselines: list[Literal["most_popular", "item_knn", "ease", "als"]] = [
        "most_popular",
        "item_knn",
        "ease",
        "als",
    ]
    min_relative_gain_over_champion: float = 0.0
    min_relative_gain_over_baselines: float = 0.0
    threads: int = Field(2, ge=1)
    batch_users: int = Field(0, ge=0)  # users scored per block at most; 0 = sized to the catalog
    # Score cells (users x catalog) per block: bounds the harness's memory at any catalog size.
    block_cells: int = Field(20_000_000, gt=0)
    # Evaluate a seeded sample of this many users (0: all); the result states the sample.
    sample_users: int = Field(0, ge=0)
    # EASE inverts an items x items matrix: above this many items it is fitted on the most
    # popular ones only (stated in its result's notes); 20k items take ~3.2 GB in float64.
    ease_max_items: int = Field(20_000, gt=0)
    grid: BaselineGridParams = BaselineGridParams()
    off_policy: OffPolicyParams = OffPolicyParams()


class IndexParams(_Section):
    type: Literal["auto", "flat", "hnsw", "ivf_flat", "ivf_pq"] = "auto"
    flat_max_items: int = Field(200_000, gt=0)
    hnsw_max_items: int = Field(500_000, gt=0)  # auto: HNSW up to here (build minutes/M)
    ivf_flat_max_items: int = Field(5_000_000, gt=0)  # then IVF-Flat; IVF-PQ+refine beyond
    # auto also falls to IVF-PQ+refine when the size rule's index would exceed this many MiB
    # (0: half the memory available at build time); see shortlist.index.ann.plan_index.
    memory_budget_mb: int = Field(0, ge=0)
    # IVF-PQ's re-ranking vectors: float32 ("flat"), "fp16" or "sq8" (8-bit per component);
    # auto: the most precise that fits the memory budget.
    refine_type: Literal["auto", "flat", "fp16", "sq8"] = "auto"
    hnsw_m: int = Field(32, gt=0)
    ef_construction: int = Field(40, gt=0)
    ef_search: int = Field(128, gt=0)
    nlist: int = Field(1024, gt=0)
    nprobe: int = Field(32, gt=0)
    # IVF-PQ: validated at 10M items (benchmarks/results/index_scale.json): pq_m 16 stayed
    # below recall@10 0.88 at any refine factor up to 16; 32 with refine 16 reached 0.96.
    pq_m: int = Field(32, gt=0)
    refine_factor: int = Field(16, ge=1)
    embed_batch_size: int = Field(65_536, gt=0)
    threads: int = Field(2, ge=1)


class CanaryParams(_Section):
    recall_slo: float = Field(0.95, ge=0, le=1)
    users: int = Field(1000, gt=0)
    live_path_tolerance: float = Field(0.05, ge=0)
    breaches_before_rollback: int = Field(2, ge=1)
    live_path_k: int = Field(100, gt=0)  # recall@K of held-out items, live vs offline
    reembed_sample: int = Field(1000, gt=0)  # items re-embedded for the consistency check
    reembed_tolerance: float = Field(1e-4, gt=0)  # max |stored - re-embedded| per component
    seed: int = 0


class BanditParams(_Section):
    """Thompson sampling over the catalog while no bundle is live (`shortlist.serving.bandit`)."""

    enabled: bool = True
    # Dataset directory whose items (and interaction counts, for the priors) it serves;
    # empty: data.dir. Without an items table there is no bandit.
    catalog_dir: str = ""
    prior_strength: float = Field(10.0, gt=0)  # pseudo-trials behind each item's prior
    base_rate: float = Field(0.05, gt=0, lt=1)  # prior click probability of a typical item
    pool: int = Field(500, gt=0)  # items (highest posterior upper bound) each list draws from
    draws: int = Field(500, gt=0)  # Monte Carlo draws behind each logged propensity
    # Once a bundle is live, the deepest exploration slot of a list shows a Thompson draw
    # over the bundle's items without interactions when the cold share has room. Off by
    # default: see params.yaml.
    cold_section: bool = False


class ServingParams(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, gt=0, lt=65536)
    max_k: int = Field(1000, gt=0)
    max_body_bytes: int = Field(65_536, gt=0)
    impressions_dir: str = ".shortlist/impressions"
    impressions_rotate_rows: int = Field(10_000, gt=0)
    # Also turn the buffered impressions into a Parquet file this often (0: only on
    # rotation and shutdown), so a quiet server's log reaches readers within this time.
    impressions_flush_seconds: float = Field(30.0, ge=0)
    # Local write-ahead directory: every served list is appended there before the response
    # (a crash, even kill -9, loses none) and replayed into Parquet on restart. Empty:
    # <impressions_dir>/.wal when that is local, else <project.work_dir>/impressions-wal.
    impressions_wal_dir: str = ""
    # fdatasync the write-ahead file this often (ms) when written, off the request thread:
    # a power loss or kernel crash loses at most this window. 0: sync in every request.
    impressions_fsync_ms: float = Field(5.0, ge=0, le=1000)
    # Pointer poll interval: a promotion or rollback is visible within one poll.
    poll_seconds: float = Field(0.25, gt=0)
    # Keep the previously live bundle in memory so a rollback is a reference swap.
    keep_previous: bool = True
    # Most of each list that items without interactions (placed by content alone) may take.
    max_cold_share: float = Field(0.1, ge=0, le=1)
    # > 0: every served list is a Plackett-Luce draw at this temperature (overrides the
    # slots below); 0: the slot policy of `shortlist.serving.explore`.
    exploration_temperature: float = Field(0.0, ge=0)
    # Positions of each /recommend list drawn from the ranked tail (0: deterministic top-k).
    exploration_slots: int = Field(2, ge=0)
    # The top positions exploration never displaces.
    exploration_protected: int = Field(3, ge=0)
    # Ranked candidates after the greedy part that the slots draw from (split among them).
    exploration_pool: int = Field(50, ge=1)
    # Share of each slot's draw reserved for under-exposed items (cold, or low popularity).
    exploration_underexposed_share: float = Field(0.5, ge=0, le=1)
    # Popularity quantile of the tail at or below which an item counts as under-exposed.
    exploration_underexposed_quantile: float = Field(0.25, ge=0, le=1)
    bandit: BanditParams = BanditParams()
    # torch and FAISS threads per request (one query at a time: more threads only contend).
    threads: int = Field(1, ge=1)
    log_level: Literal["debug", "info", "warning", "error"] = "info"


class BundleParams(_Section):
    root: str = ".shortlist/bundles"
    staging_dir: str = ".shortlist/staging"
    cache_dir: str = ".shortlist/bundle-cache"  # local copies of s3:// bundles
    popularity_half_life_days: float = Field(7.0, gt=0)  # recent-trend prior for new users
    history_len: int = Field(200, gt=0)  # most recent items kept per user for serving


class PromotionParams(_Section):
    registered_model: str = "shortlist-bundle"
    auto_approve: bool = False
    approval_timeout_seconds: int = Field(8 * 3600, gt=0)  # a working day, then "not approved"
    poll_seconds: int = Field(30, gt=0)


class MlflowParams(_Section):
    tracking_uri: str = "sqlite:///.shortlist/mlflow.db"
    experiment: str = "shortlist"


class ScheduleParams(_Section):
    data: str = "@daily"
    retrain: str = "@weekly"
    reembed: str = "@daily"
    canary: str = "@hourly"


class StorageParams(_Section):
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"


class FeedbackParams(_Section):
    """The feedback loop: events on served lists, and their join into training data."""

    # Where the serving process writes accepted events as Parquet files (a directory or
    # s3://). Empty: `events` beside serving.impressions_dir (its sibling directory).
    events_dir: str = ""
    # Local write-ahead directory for events (empty: <events_dir>/.wal when that is local,
    # else <project.work_dir>/events-wal): an acknowledged event survives kill -9.
    events_wal_dir: str = ""
    # Turn buffered events into a Parquet file every this many events.
    events_rotate_rows: int = Field(10_000, gt=0)
    # Also write buffered events this often (seconds; 0: only on rotation and shutdown).
    events_flush_seconds: float = Field(30.0, ge=0)
    # fdatasync the events write-ahead file this often (ms); 0: sync before answering.
    events_fsync_ms: float = Field(5.0, ge=0, le=1000)
    # An event more than this many seconds after its list was served is refused (422).
    lateness_seconds: float = Field(3600.0, gt=0)
    # Served lists the server remembers to check events against; beyond it the oldest go.
    max_tracked_lists: int = Field(1_000_000, gt=0)
    # Most events one POST /events/batch may carry.
    max_batch_events: int = Field(1000, gt=0)
    # Body size limit of POST /events/batch (other endpoints keep serving.max_body_bytes).
    max_batch_bytes: int = Field(1_048_576, gt=0)
    # Interaction weight of a click.
    click_weight: float = Field(1.0, ge=0)
    # A watch weighs its seconds divided by this (60: one minute weighs as one click).
    watch_seconds_per_unit: float = Field(60.0, gt=0)
    # Cap on the summed engagement weight of one shown item (keeps weights on a rating scale).
    max_weight: float = Field(5.0, gt=0)
    # Where `shortlist feedback` writes one joined batch per closed window (empty:
    # <project.work_dir>/feedback).
    batches_dir: str = ""
    # Length of one join window in seconds (the DAG's interval; 3600 = hourly).
    window_seconds: int = Field(3600, gt=0)
    # Closed windows one scheduled run joins when earlier runs were missed (oldest first).
    max_catch_up_windows: int = Field(24, ge=1)
    # When the shortlist_feedback DAG runs (UTC cron).
    schedule: str = "@hourly"


class Params(_Section):
    project: ProjectParams = ProjectParams()
    data: DataParams = DataParams()
    synth: SynthParams = SynthParams()
    validation: ValidationParams = ValidationParams()
    split: SplitParams = SplitParams()
    towers: TowerParams = TowerParams()
    ranker: RankerParams = RankerParams()
    tuning: TuningParams = TuningParams()
    evaluation: EvaluationParams = EvaluationParams()
    index: IndexParams = IndexParams()
    canary: CanaryParams = CanaryParams()
    serving: ServingParams = ServingParams()
    bundle: BundleParams = BundleParams()
    promotion: PromotionParams = PromotionParams()
    mlflow: MlflowParams = MlflowParams()
    schedules: ScheduleParams = ScheduleParams()
    storage: StorageParams = StorageParams()
    feedback: FeedbackParams = FeedbackParams()

    def with_overrides(self, overrides: list[str] | dict[str, Any]) -> Params:
        """Return a copy with `key.path=value` overrides applied and re-validated."""
        raw = self.model_dump()
        items = (
            overrides.items() if isinstance(overrides, dict) else map(_split_override, overrides)
        )
        for key, value in items:
            _set_path(raw, key, value)
        return _validate(raw)


def _split_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not key=value")
    key, value = text.split("=", 1)
    # YAML typing, so `--set towers.epochs=3` is an int and `--set a.b=[1,2]` a list.
    return key.strip(), yaml.safe_load(value) if value.strip() else ""


def _set_path(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"unknown params key {'.'.join(parts[: i + 1])!r}")
        node = node[part]
    if not isinstance(node, dict) or parts[-1] not in node:
        raise ConfigError(f"unknown params key {key!r}")
    node[parts[-1]] = value


def _validate(raw: dict[str, Any]) -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(f"{key}: {msg}")
        raise ConfigError("invalid params: " + "; ".join(problems)) from None


def params_path(path: str | os.PathLike[str] | None = None) -> Path:
    """The params file in use: explicit path, else $SHORTLIST_PARAMS, else ./params.yaml."""
    return Path(path or os.environ.get(PARAMS_ENV) or DEFAULT_PARAMS_FILE)


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, but a key given twice in one mapping is an error.

    Plain YAML keeps the last value silently, so a pasted second `serving:` section would
    quietly replace the first one."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(
                    f"{self.name}: line {line}: key {key!r} repeats line {seen[key]} "
                    "(each key may appear once per section)"
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _read_yaml(file: Path) -> Any:
    text = file.read_text()
    loader = _UniqueKeyLoader(text)
    loader.name = str(file)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML: {exc}") from None
    finally:
        loader.dispose()


def load_params(
    path: str | os.PathLike[str] | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
) -> Params:
    """Load and validate params.yaml.

    Defaults alone only when no file was named and ./params.yaml does not exist: a file
    named by `path` or by $SHORTLIST_PARAMS must exist, since running on defaults because
    of a typo in a path would look like success."""
    file = params_path(path)
    raw: dict[str, Any] = {}
    if file.exists():
        loaded = _read_yaml(file) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{file}: top level must be a mapping")
        raw = loaded
    elif path is not None:
        raise ConfigError(f"params file {file} does not exist")
    elif os.environ.get(PARAMS_ENV):
        raise ConfigError(f"params file {file} (from ${PARAMS_ENV}) does not exist")
    params = _validate(raw)
    return params.with_overrides(overrides) if overrides else params
