"""Request and response bodies of the serving API (pydantic).

Ids are opaque strings, but a served id must look like one: 1-128 characters of letters,
digits and `_ . : -`. Anything else (empty, whitespace, control characters, huge) is a
422 rather than a silent miss. Limits that come from params (k <= serving.max_k) are
checked by the endpoint, which also answers 422.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

ID_PATTERN = r"^[A-Za-z0-9_.:\-]{1,128}$"
Id = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
MAX_LIST = 1000  # recent_items / exclude_items / genres entries per request


class RecommendRequest(BaseModel):
    """A known user (`user_id`), an anonymous session (`recent_items`), or both.

    `recent_items` are appended to the user's stored history (oldest first); ids the live
    bundle does not know are ignored. `genres` keeps only items with at least one of
    these genres; `exclude_items` never returns these ids; `exclude_seen` removes the
    history (stored + recent) from the list.
    """

    model_config = ConfigDict(extra="forbid")

    user_id: Id | None = None
    recent_items: list[Id] | None = Field(default=None, max_length=MAX_LIST)
    k: int = 20
    exclude_seen: bool = True
    genres: list[Annotated[str, StringConstraints(min_length=1, max_length=64)]] | None = Field(
        default=None, max_length=MAX_LIST
    )
    exclude_items: list[Id] | None = Field(default=None, max_length=MAX_LIST)

    @model_validator(mode="after")
    def _who(self) -> RecommendRequest:
        if self.user_id is None and self.recent_items is None:
            raise ValueError("give a user_id, a recent_items list, or both")
        return self


class ScoredItem(BaseModel):
    item_id: str
    position: int
    score: float
    retrieval_score: float | None = None  # user . item inner product (None for the prior)
    propensity: float  # probability the policy shows this item at this position
    explored: bool = False  # drawn by an exploration slot rather than ranked there


class RecommendResponse(BaseModel):
    request_id: str
    bundle_id: str
    user_id: str | None
    served_at: float  # unix seconds; also the request context the user tower saw
    strategy: Literal["personalized", "popularity", "bandit"]
    policy: str
    # Expected loss in score of this list against the greedy list (0 when greedy).
    exploration_cost: float = 0.0
    items: list[ScoredItem]


class SimilarItemsResponse(BaseModel):
    request_id: str
    bundle_id: str
    item_id: str
    policy: str
    items: list[ScoredItem]


KIND_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"  # shortlist.serving.events.KIND_PATTERN
MAX_BATCH = 100_000  # hard ceiling; feedback.max_batch_events is checked by the endpoint


class Event(BaseModel):
    """What a user did with one item of a served list.

    `kind` is `click`, `watch` (needs `seconds`), `skip`, `dismiss`, or a custom
    lower-case name (needs `weight`, its engagement weight). `event_id` is the client's
    id for this event: give one to make retries safe (the join keeps one event per id).
    `occurred_at` is the client's clock (unix seconds), recorded as given."""

    model_config = ConfigDict(extra="forbid")

    request_id: Id
    item_id: Id
    kind: Annotated[str, StringConstraints(pattern=KIND_PATTERN)]
    seconds: float | None = Field(default=None, ge=0, le=1e7, allow_inf_nan=False)
    weight: float | None = Field(default=None, ge=0, le=1e6, allow_inf_nan=False)
    event_id: Id | None = None
    occurred_at: float | None = Field(default=None, allow_inf_nan=False)

    @model_validator(mode="after")
    def _fields_fit_kind(self) -> Event:
        if self.kind == "watch":
            if self.seconds is None or self.weight is not None:
                raise ValueError("a watch event gives `seconds` (and no `weight`)")
        elif self.kind in ("click", "skip", "dismiss"):
            if self.seconds is not None or self.weight is not None:
                raise ValueError(f"a {self.kind} event takes neither `seconds` nor `weight`")
        elif self.weight is None or self.seconds is not None:
            raise ValueError(f"custom kind {self.kind!r} gives its `weight` (and no `seconds`)")
        return self


class EventBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[Event] = Field(min_length=1, max_length=MAX_BATCH)


class EventsAccepted(BaseModel):
    accepted: int
    event_ids: list[str]
