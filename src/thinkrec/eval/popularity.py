"""The most-popular list's metrics on the same samples and protocol as a model's: the floor every model's
table is printed beside (``thinkrec evaluate``) and stored with (``results.json``'s ``popularity``)."""

from __future__ import annotations

from typing import Any

from thinkrec.data.split import EvalSamples, Split
from thinkrec.eval.evaluator import evaluate
from thinkrec.eval.protocol import EvalConfig
from thinkrec.models.pop import popularity_model


def popularity_report(split: Split, samples: EvalSamples, cfg: EvalConfig, max_len: int) -> dict[str, Any]:
    """Metrics of ranking every item by its training count (ties: lower item id first) for ``samples``, through
    the same evaluator and ``cfg`` (full catalogue, history masking over the last ``max_len`` items, the same
    K values) as the model it is compared with. Cheap: counting the training split, one pass of scoring."""
    result = evaluate(popularity_model(split, max_len), split, samples, cfg, per_step=False)
    return {
        "metrics": result.metrics(cfg.ks),
        "n_samples": len(result.ranks),
        "model": "most popular in the training split (ties: lower item id first)",
    }
