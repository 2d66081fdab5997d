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
    propensity: float


class RecommendResponse(BaseModel):
    request_id: str
    bundle_id: str
    user_id: str | None
    served_at: float  # unix seconds; also the request context the user tower saw
    strategy: Literal["personalized", "popularity"]
    policy: str
    items: list[ScoredItem]


class SimilarItemsResponse(BaseModel):
    request_id: str
    bundle_id: str
    item_id: str
    policy: str
    items: list[ScoredItem]
