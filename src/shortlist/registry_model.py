"""The pyfunc each registry version wraps: a whole serving bundle behind `predict`.

`mlflow.pyfunc.load_model("models:/shortlist-bundle@champion")` loads the bundle from
the version's own artifacts, verifies its manifest and checksums (exactly as serving
does) and answers top-k requests through the same code path as the HTTP API, so what
a reviewer scores from the registry is what production serves.

Logged as MLflow "models from code": the version stores this source file, not a
pickle, and loading it runs this file and the installed `shortlist` package; nothing a
registry writer uploads is unpickled. The artifacts are the bundle files only.
"""

from __future__ import annotations

import mlflow.models
import mlflow.pyfunc


class BundlePyfunc(mlflow.pyfunc.PythonModel):
    """Input: a frame with user_id (and optional k). Output: one row per recommendation."""

    def load_context(self, context):
        from shortlist.bundle.bundle import load_bundle
        from shortlist.config import Params
        from shortlist.serving.recommend import prepare

        location = context.artifacts["bundle"]
        self._serving = prepare(load_bundle(location), location)
        self._params = Params()

    def predict(self, context, model_input, params=None):
        import numpy as np
        import pandas as pd

        from shortlist.serving.recommend import recommend
        from shortlist.serving.schemas import RecommendRequest

        rng = np.random.default_rng(0)
        frame = pd.DataFrame(model_input)
        default_k = int((params or {}).get("k", 10))
        rows = []
        for record in frame.to_dict("records"):
            k = record.get("k")
            k = default_k if k is None or pd.isna(k) else int(k)
            request = RecommendRequest(user_id=str(record["user_id"]), k=k)
            served = recommend(self._serving, request, self._params, rng)
            for rank, (item, score) in enumerate(
                zip(served.item_ids, served.scores, strict=True), start=1
            ):
                rows.append(
                    {
                        "user_id": request.user_id,
                        "item_id": str(item),
                        "rank": rank,
                        "score": float(score),
                        "bundle_id": self._serving.bundle_id,
                    }
                )
        return pd.DataFrame(rows, columns=["user_id", "item_id", "rank", "score", "bundle_id"])


# Models from code: MLflow runs this file to build the model it serves.
mlflow.models.set_model(BundlePyfunc())
