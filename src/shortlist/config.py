"""One typed configuration for every stage, and the single home of every default.

Each setting is a typed field here with its default and a one-line description (the
docstring under it). `params.yaml` is generated from these (`shortlist params --out
params.yaml`, `render_params`), so a default lives in one place; DVC reads that file for
dependency tracking, and Airflow and the CLI load it here into one validated object.
Unknown keys and wrong types are errors that name the offending key, so a typo cannot
silently fall back to a default.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

PARAMS_ENV = "SHORTLIST_PARAMS"
DEFAULT_PARAMS_FILE = "params.yaml"

#: The params naming local working paths, each with where `Params.under` puts it.
WORK_PATHS: dict[str, str] = {
    "project.work_dir": ".",
    "data.dir": "data",
    "validation.reference_dir": "reference",
    "validation.quarantine_dir": "quarantine",
    "validation.docs_dir": "data_docs",
    "split.dir": "split",
    "towers.out_dir": "model",
    "bundle.root": "bundles",
    "bundle.staging_dir": "staging",
    "bundle.cache_dir": "bundle-cache",
    "serving.impressions_dir": "impressions",
    "feedback.batches_dir": "feedback",
    "tuning.path": "tuning/best.json",
}


class ConfigError(ValueError):
    """A params file or override that does not fit the schema."""


class _Section(BaseModel):
    # A field's docstring is its description: the comment `render_params` writes.
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, use_attribute_docstrings=True
    )


class ProjectParams(_Section):
    work_dir: str = ".shortlist"
    """Local working directory of the stages' outputs."""
    seed: int = 42
    """Seed of every random choice the stages make."""


class DataParams(_Section):
    source: Literal["movielens-100k", "movielens-1m", "movielens-latest", "csv", "synth"] = (
        "movielens-100k"
    )
    """Importer of the data at `path`."""
    path: str = ""
    """Source data to import (empty: MovieLens 100K from the shared datasets, else synth)."""
    dir: str = ".shortlist/data"
    """Dataset directory the stages read (a path or s3://)."""


class SynthParams(_Section):
    users: int = Field(5000, gt=0)
    """Users of a generated dataset."""
    items: int = Field(2000, gt=0)
    """Items of a generated dataset."""
    interactions: int = Field(200_000, gt=0)
    """Interactions of a generated dataset."""
    factors: int = Field(16, gt=0)
    """Dimension of the latent user and item factors."""
    topics: int = Field(32, gt=0)
    """Latent item clusters; titles draw words per topic."""
    candidates: int = Field(4, gt=0)
    """Items drawn per interaction; the best affinity wins."""
    zipf_exponent: float = Field(1.1, gt=0)
    """Exponent of the Zipf popularity inside each topic."""
    cold_item_fraction: float = Field(0.05, ge=0, lt=1)
    """Share of items released late in the period (no interactions before release)."""
    late_user_fraction: float = Field(0.05, ge=0, lt=1)
    """Share of users who join late in the period."""
    period_days: int = Field(180, gt=0)
    """Length of the generated period."""
    drift: float = Field(0.3, ge=0)
    """How far a user's taste moves toward a second topic by the end of the period."""
    chunk_rows: int = Field(1_000_000, gt=0)
    """Interactions generated and written per Parquet row group."""
    start_timestamp: int = 1_640_995_200
    """Start of the period, unix seconds (2022-01-01 UTC)."""
    threads: int = Field(2, ge=1)
    """Chunk workers; the output does not depend on it."""


class ValidationParams(_Section):
    reference_dir: str = ".shortlist/reference"
    """The last accepted batch, which the next one is compared with."""
    quarantine_dir: str = ".shortlist/quarantine"
    """Where a batch that fails validation is moved."""
    docs_dir: str = ".shortlist/data_docs"
    """Great Expectations Data Docs site."""
    min_timestamp: int = 631_152_000
    """Oldest timestamp accepted (1990-01-01 UTC): older is a unit error, not history."""
    max_future_seconds: int = Field(3600, ge=0)
    """Timestamps at most this far past the validation time are accepted."""
    volume_tolerance: float = Field(0.5, gt=0)
    """Each table's row count within this relative change of the reference's."""
    max_new_item_share: float = Field(0.5, ge=0, le=1)
    """Most of the interactions that may name items the reference does not have."""
    max_new_user_share: float = Field(0.5, ge=0, le=1)
    """Most of the interactions that may name users the reference does not have."""
    per_user_quantile_tolerance: float = Field(1.0, gt=0)
    """Largest fold change minus 1 of each per-user interaction-count quantile vs the reference."""
    per_user_quantiles: list[float] = [0.5, 0.9, 0.99]
    """Quantiles of interactions per user compared with the reference."""
    example_rows: int = Field(5, gt=0)
    """Offending values shown per failed check."""
    max_weight: float = Field(1e6, gt=0)
    """Largest interaction weight accepted (a rating, count or seconds; weights must be finite)."""
    max_id_length: int = Field(128, ge=1)
    """Longest user or item id (the serving API accepts at most 128 characters)."""
    min_users: int = Field(10, ge=1)
    """Fewest users a batch may have."""
    min_title_share: float = Field(0.5, ge=0, le=1)
    """Share of items that must have a title (the item tower reads them; 0 for none)."""


class SplitParams(_Section):
    dir: str = ".shortlist/split"
    """Where the split writes its train, validation and test tables."""
    # auto: random per-user holdout when timestamps were synthesised; with real time a
    # global time cut when it puts global_min_user_share of the users in validation, else
    # each user's most recent interactions (per_user). See shortlist.data.split.
    mode: Literal["auto", "global", "per_user", "random"] = "auto"
    """auto: random if time was synthesised, else a global or per-user time cut."""
    validation_fraction: float = Field(0.1, ge=0, lt=1)
    """Share of interactions in validation."""
    test_fraction: float = Field(0.1, ge=0, lt=1)
    """Share of interactions in test (may be 0)."""
    min_user_interactions: int = Field(1, ge=1)
    """Users with fewer interactions are left out of the split."""
    global_min_user_share: float = Field(0.5, ge=0, le=1)
    """auto: a global time cut only when validation covers this share of users."""
    min_validation_users: int = Field(50, ge=1)
    """Fewer users with history in validation or test is an error (metrics would be noise)."""


class LogQParams(_Section):
    enabled: bool = True
    """Correct the in-batch softmax by each item's sampling probability (logQ)."""
    hash_buckets: int = Field(1 << 20, gt=0)
    """Buckets of the streaming item-frequency estimate."""
    alpha: float = Field(0.01, gt=0, le=1)
    """Learning rate of the streaming frequency estimate."""
    inference_popularity_weight: float = 0.3
    """Weight of log popularity added to the serving score (0: none)."""


class TowerParams(_Section):
    out_dir: str = ".shortlist/model"
    """Where train-towers writes the model."""
    embedding_dim: int = Field(64, gt=0)
    """Width of the user and item embeddings."""
    hidden_dim: int = Field(128, gt=0)
    """Width of each tower's hidden layer."""
    history_len: int = Field(50, gt=0)
    """Most recent items of a user's history the user tower reads."""
    # causal = the user's items before the target's time (next-item); leave_one_out = the
    # user's last history_len train items except the target; auto = causal where
    # timestamps are real, leave_one_out where they were synthesised (the split records it).
    history_mode: Literal["auto", "causal", "leave_one_out"] = "auto"
    """causal: items before the target (real time); leave_one_out: a set (synthesised time)."""
    ema_decay: float = Field(0.995, ge=0, lt=1)
    """Decay of the weights' moving average, evaluated and kept (0: off)."""
    title_hash_buckets: int = Field(16384, gt=0)
    """Hash buckets of title words in the item tower."""
    user_buckets: int = Field(1, ge=1)
    """Embedding rows shared by users unseen in training."""
    id_dropout: float = Field(0.1, ge=0, le=1)
    """Chance an id is replaced by the unknown id in training (teaches the content path)."""
    id_dim: int = Field(64, gt=0)
    """Width of the user and item id embeddings."""
    context_dropout: float = Field(0.5, ge=0, le=1)
    """Chance the request context is zeroed in training."""
    temperature: float = Field(0.05, gt=0)
    """Softmax temperature of the in-batch loss."""
    batch_size: int = Field(1024, gt=0)
    """Training examples per step."""
    epochs: int = Field(20, gt=0)
    """Most epochs (early stopping usually ends sooner)."""
    learning_rate: float = Field(0.005, gt=0)
    """Adam's learning rate."""
    weight_decay: float = Field(0.0, ge=0)
    """Adam's weight decay."""
    mixed_negatives: int = Field(512, ge=0)
    """Uniformly drawn items added to each batch's in-batch negatives."""
    early_stopping_patience: int = Field(3, ge=1)
    """Epochs without a better validation recall before training stops."""
    eval_k: int = Field(20, gt=0)
    """K of the validation recall that early stopping watches."""
    # Scoring runs at ~3e7 users x items cells/s here: 2e9 is about a minute per epoch.
    validation_max_cells: int = Field(2_000_000_000, gt=0)
    """Validation users x items scored per epoch at most; above, a seeded user sample."""
    threads: int = Field(2, ge=1)
    """torch threads per training process."""
    processes: int = Field(1, ge=1)
    """Data-parallel training processes (torchrun + DDP, `threads` each); 1: one process."""
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    """Their process group: gloo (CPU), nccl (CUDA); auto: nccl where CUDA is available."""
    refit_on_validation: bool = True
    """Retrain on train + validation for the epochs early stopping chose."""
    # Sparse tables change Adam's dynamics (a row's moments age only when it is touched),
    # so small catalogs keep dense Adam; a distributed run always trains dense tables. On
    # ml-100k validation `on` was within seed noise of `off` (benchmarks/HISTORY.md).
    sparse_embeddings: Literal["auto", "on", "off"] = "auto"
    """Id and title tables on RowAdam, touched rows only; auto: on from sparse_min_items."""
    sparse_min_items: int = Field(100_000, ge=0)
    """Catalog size from which sparse_embeddings auto turns sparse tables on."""
    prefetch_batches: int = Field(2, ge=0)
    """Batches a background thread assembles ahead of the training step (0: inline)."""
    logq: LogQParams = LogQParams()
    """The sampling-bias correction (Yi et al. 2019) and the serving popularity term."""

    @field_validator("sparse_embeddings", mode="before")
    @classmethod
    def _yaml_on_off(cls, v: object) -> object:
        # YAML 1.1 reads a bare on/off as a boolean.
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v


class RankerParams(_Section):
    candidates: int = Field(200, gt=0)
    """Candidates the towers retrieve for the ranker."""
    random_negatives: int = Field(5, ge=0)
    """Uniformly drawn catalog items added as negatives per training request."""
    hard_negatives: int = Field(50, ge=0)
    """Retrieved candidates the user did not take, sampled per training request (0: all)."""
    cross_layers: int = Field(2, ge=0)
    """DCN cross layers."""
    # Full rank costs n_features^2 multiply-adds per candidate; DCN-v2's low-rank form
    # costs 2 * n_features * rank.
    cross_rank: int = Field(0, ge=0)
    """Rank of each cross layer's weight (0: full rank)."""
    hidden_dims: list[int] = [128, 64]
    """Widths of the MLP beside the cross layers."""
    batch_size: int = Field(1024, gt=0)
    """Training rows per step."""
    epochs: int = Field(20, gt=0)
    """Most epochs (early stopping usually ends sooner)."""
    learning_rate: float = Field(0.0003, gt=0)
    """Adam's learning rate."""
    early_stopping_patience: int = Field(3, ge=1)
    """Epochs without a better held-out NDCG before training stops."""
    eval_k: int = Field(20, gt=0)
    """K of the NDCG that early stopping and the ship decision use."""
    threads: int = Field(2, ge=1)
    """torch threads for training."""
    id_dim: int = Field(16, gt=0)
    """Width of the ranker's user and item id embeddings."""
    dropout: float = Field(0.1, ge=0, lt=1)
    """Dropout of the MLP."""
    weight_decay: float = Field(0.0, ge=0)
    """Adam's weight decay."""
    positive_weight: Literal["engagement", "unit"] = "engagement"
    """Positives weighted by engagement (the rating on MovieLens), or all 1."""
    popularity_windows_days: list[int] = [1, 7, 30]
    """Windows of the item popularity features."""
    feature_groups: list[Literal["crosses", "cooccurrence", "popularity", "ids"]] = [
        "crosses",
        "cooccurrence",
        "popularity",
        "ids",
    ]
    """Feature groups beyond the always-on retrieval, item and user features (for ablations)."""
    # 1: 5 members gain on test but add ~0.9 ms to every ranked request, more than the
    # serving p99 target can spare (benchmarks/HISTORY.md, funnel quality).
    ensemble: int = Field(1, ge=1)
    """Networks averaged into the ranker, each with its own seed and early-stopping users."""
    cooccurrence_neighbours: int = Field(100, gt=0)
    """Item-item neighbours of the `cooccurrence` group (top-k by shrunk cosine)."""
    cooccurrence_shrink: float = Field(10.0, ge=0)
    """Shrinkage of the co-occurrence cosine similarity."""
    # The extra sources (shortlist.ranking.sources) are off: on validation they lowered the
    # ranker (benchmarks/HISTORY.md); `shortlist tune` searches them.
    item_to_item_candidates: int = Field(0, ge=0)
    """ItemKNN neighbours of the history added to the ranker's candidates (0: off)."""
    popular_candidates: int = Field(0, ge=0)
    """Recent-trend items added to the ranker's candidates (0: off)."""
    cut_points: int = Field(1, ge=1)
    """Training requests per validation user (the first event, then later cuts)."""
    # Featurising one request over its candidates costs ~10 ms, so at 500k validation
    # users this stage alone would take hours; 10k users still decide on ~2k requests.
    max_users: int = Field(10_000, ge=0)
    """Validation users the ranker learns from and is judged on at most, seeded (0: all)."""
    holdout_fraction: float = Field(0.2, gt=0, lt=1)
    """Validation users kept out of fitting, for early stopping."""
    decision_fraction: float = Field(0.2, gt=0, lt=1)
    """Other validation users kept out, for the ship decision alone."""
    # Below it the bundle serves the retrieval order (shortlist.ranking.decision).
    ship_min_z: float = 1.0
    """Ship the ranker only if it beats the retrieval order by this many standard errors."""
    # The blend (shortlist.ranking.item_item) ships under the network's rule; the better
    # of the two on the decision users is served.
    blend_weights: list[float] = [0.1, 0.2, 0.3, 0.5, 1.0]
    """Weights of z(EASE) added to z(retrieval score), chosen on validation (empty: no blend)."""
    ease_l2: float = Field(250.0, gt=0)
    """EASE's L2 regularisation (lambda) in the blend."""
    ease_neighbours: int = Field(200, gt=0)
    """EASE weights kept per item."""
    ease_max_items: int = Field(10_000, gt=0)
    """EASE fitted on this many most popular items."""
    # Off until a closed-loop run shows it helps (benchmarks/feedback_loop.py); no effect
    # on data without an exposures table (shortlist.ranking.propensity).
    propensity_weighting: bool = False
    """Weight positives engaged from a logged exposure by 1 / propensity (clipped)."""
    propensity_clip: float = Field(10.0, ge=1)
    """Largest inverse-propensity weight."""

    @model_validator(mode="after")
    def _holdouts_leave_users_to_fit(self) -> RankerParams:
        if self.holdout_fraction + self.decision_fraction >= 1.0:
            raise ValueError("holdout_fraction + decision_fraction must be below 1")
        return self


class TuningParams(_Section):
    path: str = ".shortlist/tuning/best.json"
    """Written by `shortlist tune`, read by train-towers and train-ranker."""
    budget_minutes: float = Field(10.0, gt=0)
    """Wall-clock budget of one search."""
    ranker_share: float = Field(0.3, ge=0, lt=1)
    """Share of the budget spent on the ranker's knobs."""
    use: bool = True
    """Apply the tuning file while the data keeps the shape it was tuned on."""
    # Off: a retrain never spends the budget unasked.
    in_retrain: bool = False
    """The retrain DAG searches when no tuning file fits the data's shape."""


class BaselineGridParams(_Section):
    item_knn_neighbours: list[int] = [50, 100, 200]
    """ItemKNN neighbours tried."""
    item_knn_shrink: list[float] = [0.0, 10.0, 50.0]
    """ItemKNN shrinkage tried."""
    ease_lambda: list[float] = [100.0, 250.0, 500.0, 1000.0]
    """EASE L2 regularisation tried."""
    als_factors: list[int] = [32, 64, 128]
    """ALS factors tried."""
    als_regularization: list[float] = [0.01, 0.1]
    """ALS regularisation tried."""
    als_iterations: list[int] = [15]
    """ALS iterations tried."""
    als_alpha: list[float] = [1.0, 10.0]
    """ALS confidence scaling tried."""


class OffPolicyParams(_Section):
    enabled: bool = True
    """Estimate when logged exposures (with propensities and engagement) exist."""
    logged_path: str = ""
    """Exposures table to read (empty: <data.dir>/exposures.parquet)."""
    # Greedy: its exploration slots reach deeper into the tail than a differently ranked
    # logger could have shown, and mass on items the logs cannot show biases every estimate.
    target: Literal["deterministic", "exploration"] = "deterministic"
    """The challenger as a target policy: its greedy top k, or its own exploration slots."""
    reward: Literal["engaged", "weight"] = "engaged"
    """Reward of a shown item: engaged (0/1) or its engagement weight."""
    confidence: float = Field(0.95, gt=0, lt=1)
    """Level of the estimates' confidence intervals."""
    clip: float = Field(0.0, ge=0)
    """Cap on importance weights (0: none)."""
    gate: bool = False
    """Blessing also needs estimator value >= logged reward x (1 + min_lift) once ESS >= min_ess."""
    estimator: Literal["ips", "snips", "dr"] = "snips"
    """Estimator the gate reads."""
    min_lift: float = -0.05
    """Least relative lift over the logged policy's reward the gate accepts."""
    min_ess: float = Field(500.0, ge=0)
    """Effective sample size below which the gate is skipped (and the report says so)."""


class EvaluationParams(_Section):
    ks: list[int] = [10, 20, 50, 200]
    """Cutoffs of the full-ranking metrics."""
    primary_metric: str = "recall@20"
    """Metric that blessing compares."""
    heavy_user_quantile: float = Field(0.8, gt=0, lt=1)
    """Users above this quantile of train interactions form the heavy segment."""
    baselines: list[Literal["most_popular", "item_knn", "ease", "als"]] = [
        "most_popular",
        "item_knn",
        "ease",
        "als",
    ]
    """Baselines evaluated beside the model; blessing requires beating them."""
    min_relative_gain_over_champion: float = 0.0
    """Least relative gain in the primary metric over the live model to bless."""
    min_relative_gain_over_baselines: float = 0.0
    """Least relative gain in the primary metric over the best baseline to bless."""
    threads: int = Field(2, ge=1)
    """Threads for scoring."""
    batch_users: int = Field(0, ge=0)
    """Users per scoring block at most (0: sized by block_cells)."""
    block_cells: int = Field(20_000_000, gt=0)
    """Users x items score cells per block: bounds evaluation memory."""
    sample_users: int = Field(0, ge=0)
    """Evaluate a seeded sample of this many users (0: all), stated in the result."""
    # Full ranking scores ~3e7 users x items cells/s here: 2e9 is ~1 min per model, 2,000
    # users at 1M items, and every user of a catalog up to 200k items x 10k users.
    max_cells: int = Field(2_000_000_000, ge=0)
    """Users x catalog scored per model at most; above, a seeded user sample (0: no cap)."""
    # A grid point is a fit: at 10M interactions ALS's 12 points alone exceed an hour here.
    tune_max_interactions: int = Field(2_000_000, ge=0)
    """Baselines search their grid on a seeded user sample of this many train rows (0: all)."""
    # EASE inverts an items x items matrix: n^3 flops per lambda tried, ~40 s at 10k items
    # on 2 cores (20k: ~5 min and 3.2 GB), so a 1M-item retrain stays within its hour.
    ease_max_items: int = Field(10_000, gt=0)
    """EASE above this many items is fitted on the most popular ones only (noted)."""
    grid: BaselineGridParams = BaselineGridParams()
    """Validation grids of the baselines (shortlist.eval.baselines); small on purpose."""
    off_policy: OffPolicyParams = OffPolicyParams()
    """IPS, SNIPS and DR estimates of the challenger on the live bundle's logged lists."""


class IndexParams(_Section):
    type: Literal["auto", "flat", "hnsw", "ivf_flat", "ivf_pq"] = "auto"
    """FAISS index; auto picks by catalog size and memory (shortlist.index.ann.plan_index)."""
    flat_max_items: int = Field(200_000, gt=0)
    """auto: exact flat search up to this many items."""
    hnsw_max_items: int = Field(500_000, gt=0)
    """auto: HNSW up to this many items (builds take minutes per million)."""
    ivf_flat_max_items: int = Field(5_000_000, gt=0)
    """auto: IVF-Flat up to this many items, IVF-PQ with refine beyond."""
    memory_budget_mb: int = Field(0, ge=0)
    """auto: IVF-PQ with refine when the index would exceed this (0: half of free RAM)."""
    refine_type: Literal["auto", "flat", "fp16", "sq8"] = "auto"
    """IVF-PQ re-rank vectors: flat (float32), fp16 or sq8; auto: the best that fits."""
    hnsw_m: int = Field(32, gt=0)
    """HNSW links per node."""
    ef_construction: int = Field(40, gt=0)
    """HNSW search depth while building."""
    ef_search: int = Field(128, gt=0)
    """HNSW search depth per query."""
    nlist: int = Field(1024, gt=0)
    """IVF lists."""
    nprobe: int = Field(32, gt=0)
    """IVF lists searched per query."""
    # Validated at 10M items (benchmarks/results/index_scale.json).
    pq_m: int = Field(32, gt=0)
    """IVF-PQ sub-quantisers per vector."""
    refine_factor: int = Field(16, ge=1)
    """IVF-PQ candidates re-ranked per result with the refine vectors."""
    embed_batch_size: int = Field(65_536, gt=0)
    """Items embedded per batch when building a bundle."""
    threads: int = Field(2, ge=1)
    """FAISS threads for building."""


class CanaryParams(_Section):
    recall_slo: float = Field(0.95, ge=0, le=1)
    """Least ANN recall@10 against exact search."""
    users: int = Field(1000, gt=0)
    """Users sampled for the recall checks."""
    live_path_tolerance: float = Field(0.05, ge=0)
    """Largest gap of live-path recall below the offline recall."""
    breaches_before_rollback: int = Field(2, ge=1)
    """Consecutive failed scheduled canaries on live before a rollback."""
    live_path_k: int = Field(100, gt=0)
    """K of the live-path recall of held-out items."""
    reembed_sample: int = Field(1000, gt=0)
    """Items re-embedded for the consistency check."""
    reembed_tolerance: float = Field(1e-4, gt=0)
    """Largest |stored - re-embedded| per component."""
    seed: int = 0
    """Seed of the canary's samples."""


class BanditParams(_Section):
    enabled: bool = True
    """Serve Thompson-sampled lists over the catalog while no bundle is live."""
    catalog_dir: str = ""
    """Dataset whose items it serves (empty: data.dir); no items table, no bandit."""
    prior_strength: float = Field(10.0, gt=0)
    """Pseudo-trials behind each item's popularity prior."""
    base_rate: float = Field(0.05, gt=0, lt=1)
    """Prior click probability of a typical item."""
    pool: int = Field(500, gt=0)
    """Items with the highest posterior upper bound each list draws from."""
    draws: int = Field(500, gt=0)
    """Monte Carlo draws behind each logged propensity."""
    # Off: its propensity is a Monte Carlo estimate, not exact like the slot policy's.
    cold_section: bool = False
    """With a live bundle, the deepest exploration slot draws among items without interactions."""


class ServingParams(_Section):
    host: str = "127.0.0.1"
    """Address `shortlist serve` listens on."""
    port: int = Field(8000, gt=0, lt=65536)
    """Port `shortlist serve` listens on."""
    max_k: int = Field(1000, gt=0)
    """Longest list a request may ask for."""
    max_body_bytes: int = Field(65_536, gt=0)
    """Largest request body accepted."""
    impressions_dir: str = ".shortlist/impressions"
    """Where served lists are logged as Parquet files (a directory or s3://)."""
    impressions_rotate_rows: int = Field(10_000, gt=0)
    """Impression rows per Parquet file."""
    impressions_flush_seconds: float = Field(30.0, ge=0)
    """Also write buffered impressions this often (0: rotation and shutdown only)."""
    # Every served list is appended there before the response (a crash, even kill -9,
    # loses none) and replayed into Parquet on restart (shortlist.serving.wal).
    impressions_wal_dir: str = ""
    """Local write-ahead dir (empty: <impressions_dir>/.wal, or <work_dir>/impressions-wal)."""
    # Off the request thread: a power loss or kernel crash loses at most this window.
    impressions_fsync_ms: float = Field(5.0, ge=0, le=1000)
    """fdatasync the write-ahead file this often (0: in every request)."""
    poll_seconds: float = Field(0.25, gt=0)
    """Live pointer poll interval: a promotion or rollback is served within one poll."""
    keep_previous: bool = True
    """Keep the previous bundle in memory so a rollback is a reference swap."""
    max_cold_share: float = Field(0.1, ge=0, le=1)
    """At most this share of a list for items with no interactions yet."""
    exploration_temperature: float = Field(0.0, ge=0)
    """> 0: whole lists sampled by Plackett-Luce at this temperature instead of the slots."""
    exploration_slots: int = Field(2, ge=0)
    """Positions of each list drawn from the ranked tail (0: deterministic)."""
    exploration_protected: int = Field(3, ge=0)
    """Top positions exploration never displaces."""
    exploration_pool: int = Field(50, ge=1)
    """Ranked candidates after the greedy part that the slots draw from."""
    exploration_underexposed_share: float = Field(0.5, ge=0, le=1)
    """Share of each slot's draw reserved for cold or low-popularity items."""
    exploration_underexposed_quantile: float = Field(0.25, ge=0, le=1)
    """Popularity quantile of the tail at or below which an item is under-exposed."""
    bandit: BanditParams = BanditParams()
    """Thompson sampling over the catalog (shortlist.serving.bandit)."""
    threads: int = Field(1, ge=1)
    """torch and FAISS threads per request (one query at a time: more only contend)."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Log level of the serving process."""


class BundleParams(_Section):
    root: str = ".shortlist/bundles"
    """Artifact root with the blue and green slots and the live pointer (a path or s3://)."""
    staging_dir: str = ".shortlist/staging"
    """Local directory where a bundle is assembled before it is written to its slot."""
    cache_dir: str = ".shortlist/bundle-cache"
    """Local copies of s3:// bundles."""
    popularity_half_life_days: float = Field(7.0, gt=0)
    """Half-life of the recent-trend prior served to new users."""
    history_len: int = Field(200, gt=0)
    """Most recent items kept per user for serving."""


class PromotionParams(_Section):
    registered_model: str = "shortlist-bundle"
    """MLflow registered model that holds one version per bundle."""
    auto_approve: bool = False
    """Move the `champion` alias without waiting for a person."""
    approval_timeout_seconds: int = Field(8 * 3600, gt=0)
    """Wait for approval this long (a working day), then the run ends "not approved"."""
    poll_seconds: int = Field(30, gt=0)
    """Approval poll interval (keep >= 10 under a scheduler)."""


class MlflowParams(_Section):
    tracking_uri: str = "sqlite:///.shortlist/mlflow.db"
    """MLflow tracking and registry URI."""
    experiment: str = "shortlist"
    """MLflow experiment of the runs."""


class ScheduleParams(_Section):
    data: str = "@daily"
    """When the data DAG runs (cron or preset)."""
    retrain: str = "@weekly"
    """When the retrain DAG runs."""
    reembed: str = "@daily"
    """When the re-embed DAG runs."""
    canary: str = "@hourly"
    """When the canary on live runs."""


class StorageParams(_Section):
    s3_endpoint_url: str | None = None
    """S3 endpoint for s3:// paths (null: the AWS default)."""
    s3_region: str = "us-east-1"
    """S3 region."""


class FeedbackParams(_Section):
    events_dir: str = ""
    """Accepted events as Parquet (a dir or s3://); empty: `events` beside impressions_dir."""
    events_wal_dir: str = ""
    """Local write-ahead dir for events; empty: <events_dir>/.wal or <work_dir>/events-wal."""
    events_rotate_rows: int = Field(10_000, gt=0)
    """Events per Parquet file."""
    events_flush_seconds: float = Field(30.0, ge=0)
    """Also write buffered events this often (0: rotation and shutdown only)."""
    events_fsync_ms: float = Field(5.0, ge=0, le=1000)
    """fdatasync the events write-ahead file this often (0: before answering)."""
    lateness_seconds: float = Field(3600.0, gt=0)
    """Events later than this after their list was served are refused."""
    max_tracked_lists: int = Field(1_000_000, gt=0)
    """Served lists remembered to check events against (the oldest go first)."""
    max_batch_events: int = Field(1000, gt=0)
    """Most events in one POST /events/batch."""
    max_batch_bytes: int = Field(1_048_576, gt=0)
    """Body size limit of POST /events/batch."""
    click_weight: float = Field(1.0, ge=0)
    """Interaction weight of a click."""
    watch_seconds_per_unit: float = Field(60.0, gt=0)
    """A watch weighs its seconds / this (60: a minute weighs as a click)."""
    max_weight: float = Field(5.0, gt=0)
    """Cap on one shown item's summed engagement weight."""
    batches_dir: str = ""
    """Where the join writes one batch per closed window; empty: <work_dir>/feedback."""
    window_seconds: int = Field(3600, gt=0)
    """Length of one join window (the DAG's interval)."""
    max_catch_up_windows: int = Field(24, ge=1)
    """Closed windows one scheduled run joins after missed runs (oldest first)."""
    schedule: str = "@hourly"
    """When the shortlist_feedback DAG runs (UTC cron)."""


class Params(_Section):
    project: ProjectParams = ProjectParams()
    """Working directory and seed."""
    data: DataParams = DataParams()
    """The source to import and the dataset directory."""
    synth: SynthParams = SynthParams()
    """The synthetic generator (`shortlist synth`, and the default without MovieLens)."""
    validation: ValidationParams = ValidationParams()
    """The data contract each batch must pass (Great Expectations)."""
    split: SplitParams = SplitParams()
    """Train, validation and test split."""
    towers: TowerParams = TowerParams()
    """The two-tower retrieval model."""
    ranker: RankerParams = RankerParams()
    """The ranker over the retrieved candidates (DCN, or the item-item blend)."""
    tuning: TuningParams = TuningParams()
    """`shortlist tune`: a budgeted search on validation whose result later runs reuse."""
    evaluation: EvaluationParams = EvaluationParams()
    """Full-ranking evaluation, baselines and the blessing thresholds."""
    index: IndexParams = IndexParams()
    """The ANN index of a bundle."""
    canary: CanaryParams = CanaryParams()
    """Checks of a bundle before promotion and of live after it."""
    serving: ServingParams = ServingParams()
    """The HTTP server, its impressions log and its exploration."""
    bundle: BundleParams = BundleParams()
    """Bundles and the blue-green slots."""
    promotion: PromotionParams = PromotionParams()
    """The registry and the approval gate."""
    mlflow: MlflowParams = MlflowParams()
    """Tracking."""
    schedules: ScheduleParams = ScheduleParams()
    """The Airflow DAGs' schedules."""
    storage: StorageParams = StorageParams()
    """Object storage."""
    feedback: FeedbackParams = FeedbackParams()
    """The feedback loop: events on served lists, and their join into training data."""

    def with_overrides(self, overrides: list[str] | dict[str, Any]) -> Params:
        """Return a copy with `key.path=value` overrides applied and re-validated."""
        raw = self.model_dump()
        items = (
            overrides.items() if isinstance(overrides, dict) else map(_split_override, overrides)
        )
        for key, value in items:
            _set_path(raw, key, value)
        return _validate(raw)

    def under(self, work: str | os.PathLike[str]) -> Params:
        """A copy with every working path (`WORK_PATHS`) moved under `work`: what a test,
        the simulator or a cluster uses so that it never touches the project's own."""
        return self.with_overrides({key: str(Path(work, sub)) for key, sub in WORK_PATHS.items()})


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


PARAMS_HEADER = """\
# Every setting of Shortlist with its default, generated from src/shortlist/config.py by
# `shortlist params --out params.yaml`: change a default or a description there, not here.
# DVC (`params:` in dvc.yaml), the Airflow DAGs and the CLI read this file through that
# one typed object; an unknown key or a wrong type is an error naming the key. Override
# a value with `--set section.key=value`, or name your own file with `--params` (a key it
# leaves out keeps its default).
"""
_WIDTH = 100


def render_params(params: Params | None = None) -> str:
    """params.yaml for `params` (default: the defaults): every key with its value and its
    field's description as a comment, sections in declaration order."""
    lines = PARAMS_HEADER.splitlines()
    _render_section(Params() if params is None else params, 0, lines)
    return "\n".join(lines) + "\n"


def _render_section(section: BaseModel, depth: int, lines: list[str]) -> None:
    indent = "  " * depth
    for name, info in type(section).model_fields.items():
        value = getattr(section, name)
        description = " ".join((info.description or "").split())
        if isinstance(value, BaseModel):
            if depth == 0:
                lines.append("")
            lines += _comment_lines(description, indent)
            lines.append(f"{indent}{name}:")
            _render_section(value, depth + 1, lines)
            continue
        entry = f"{indent}{name}: {_yaml_value(value)}"
        if len(entry) + 4 + len(description) <= _WIDTH:
            lines.append(f"{entry}  # {description}")
        else:
            lines += _comment_lines(description, indent)
            lines.append(entry)


def _comment_lines(text: str, indent: str) -> list[str]:
    width = _WIDTH - len(indent) - 2
    return [f"{indent}# {line}" for line in textwrap.wrap(text, width)]


def _yaml_value(value: Any) -> str:
    """One value as YAML on one line (lists in flow style)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=float("inf"))
    return text.removesuffix("\n...\n").strip()
