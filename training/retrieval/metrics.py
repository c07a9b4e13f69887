"""Ranking metrics of figure retrieval, computed by ir-measures (trec_eval through pytrec_eval).

One call gives every metric the published patent-retrieval systems report, so that a run can be
compared with each paper on its own terms:

- Lo et al. (2024): ``mAP``, ``Recall@10``, ``MRR@10`` (under the prior-art filter: the caller
  ranks, and judges, only figures granted before the query).
- DeepPatent / Wang & Zhang (2023): ``mAP@all`` and ``Rank-1`` / ``Rank-5``, the share of queries
  with a relevant item in the top 1 / 5 (trec_eval's ``success@k``).
- UPAIR (2025): ``MAP``, ``nDCG@10``, ``MRR``, ``Recall@1`` (UPAIR's own evaluation uses
  ir-measures with exactly these measures).

``mAP``, ``mAP@all`` and ``MAP`` are one number (average precision over the whole ranking, divided
by the number of relevant items judged, unretrieved ones included), kept under each paper's
name. Nothing truncates the ranking (checked: a relevant item at rank 2,500 still counts).

Rules, stated because trec_eval's defaults would otherwise decide them silently:

- Order: items are ranked by score, highest first; equal scores keep the order of the run's
  dict (a FAISS result's order), not trec_eval's reverse document-id tie-break.
- Queries evaluated: those of the qrels with at least one relevant item (relevance >= 1). A
  query without one (a figure whose patent has no other view, or no earlier relevant figure
  under the prior-art filter) has no defined AP and is left out; ``skipped_queries`` counts
  them. A judged query that the run lacks scores 0 (nothing was retrieved).
- A run query without qrels is an error: it would be silently ignored otherwise.
- Relevance is an integer; >= 1 is relevant (binary measures), nDCG uses it as the graded gain.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping

import ir_measures
from ir_measures import AP, RR, R, Success, nDCG

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]]

# Our name -> the ir-measures measure that computes it.
MEASURES: dict[str, ir_measures.Measure] = {
    "mAP": AP,
    "mAP@all": AP,
    "MAP": AP,
    "Recall@10": R @ 10,
    "Recall@1": R @ 1,
    "MRR@10": RR @ 10,
    "MRR": RR,
    "Rank-1": Success @ 1,
    "Rank-5": Success @ 5,
    "nDCG@10": nDCG @ 10,
}

# The metrics each paper reports, for a table that compares with it.
LO_ET_AL = ("mAP", "Recall@10", "MRR@10")
DEEPPATENT = ("mAP@all", "Rank-1", "Rank-5")
UPAIR = ("MAP", "nDCG@10", "MRR", "Recall@1")


def _check_run(run: Run, qrels: Qrels) -> None:
    unjudged = sorted(str(q) for q in run if q not in qrels)
    if unjudged:
        raise ValueError(f"run has {len(unjudged)} queries without qrels: {', '.join(unjudged[:5])}")
    for query_id, scores in run.items():
        for doc_id, score in scores.items():
            if not isinstance(score, int | float) or not math.isfinite(score):
                raise ValueError(
                    f"run query {query_id!r}, document {doc_id!r}: score {score!r} is not finite"
                )


def _check_qrels(qrels: Qrels) -> None:
    for query_id, judged in qrels.items():
        for doc_id, relevance in judged.items():
            if isinstance(relevance, bool) or not isinstance(relevance, int):
                raise ValueError(
                    f"qrels query {query_id!r}, document {doc_id!r}: relevance {relevance!r} is not an integer"
                )


def _rank_scores(scores: Mapping[str, float]) -> dict[str, float]:
    """Replace scores by ``n - rank`` so that trec_eval sees no ties (stable sort keeps dict order)."""
    ordered = sorted(scores, key=lambda doc_id: -scores[doc_id])
    n = len(ordered)
    return {str(doc_id): float(n - rank) for rank, doc_id in enumerate(ordered)}


def evaluate_rankings(run: Run, qrels: Qrels) -> dict[str, float]:
    """Every metric of ``MEASURES`` averaged over the judged queries, plus ``queries`` and
    ``skipped_queries`` (counts, as floats so the dict logs straight to MLflow).

    ``run``: query id -> {document id: score, higher is better}; ``qrels``: query id ->
    {document id: relevance}. Raises ``ValueError`` on an empty evaluation (no query with a
    relevant item), a run query without qrels, a non-finite score or a non-integer relevance.
    """
    _check_qrels(qrels)
    _check_run(run, qrels)
    judged = {
        str(q): {str(d): int(r) for d, r in docs.items()}
        for q, docs in qrels.items()
        if any(r >= 1 for r in docs.values())
    }
    if not judged:
        raise ValueError(
            f"no query of the {len(qrels)} in the qrels has a relevant item: nothing to evaluate"
        )
    ranked = {str(q): _rank_scores(scores) for q, scores in run.items() if str(q) in judged}

    # trec_eval leaves out a query that the run lacks; an empty ranking is what it retrieved.
    per_query: dict[ir_measures.Measure, dict[str, float]] = defaultdict(dict)
    measures = set(MEASURES.values())
    if ranked:
        for metric in ir_measures.iter_calc(measures, judged, ranked):
            per_query[metric.measure][metric.query_id] = metric.value

    result: dict[str, float] = {}
    for name, measure in MEASURES.items():
        values = per_query[measure]
        result[name] = sum(values.get(q, 0.0) for q in judged) / len(judged)
    result["queries"] = float(len(judged))
    result["skipped_queries"] = float(len(qrels) - len(judged))
    return result


def same_patent_qrels(
    figures: Iterable[tuple[str, Hashable]], queries: Iterable[str]
) -> dict[str, dict[str, int]]:
    """Qrels of "retrieve the other views of the same design patent" (DeepPatent's task).

    ``figures``: (figure id, patent id) of every figure in the searched collection; ``queries``:
    figure ids among them. A query's relevant items are the other figures of its patent, the
    query itself excluded; a query whose patent has no other figure gets an empty dict (and is
    then skipped by ``evaluate_rankings``). Raises ``ValueError`` on a figure id listed twice
    or a query that is not among the figures.
    """
    patent_of: dict[str, Hashable] = {}
    figures_of: dict[Hashable, list[str]] = defaultdict(list)
    for figure_id, patent_id in figures:
        if figure_id in patent_of:
            raise ValueError(
                f"figure {figure_id!r} is listed twice (patents {patent_of[figure_id]!r} and {patent_id!r})"
            )
        patent_of[figure_id] = patent_id
        figures_of[patent_id].append(figure_id)

    qrels: dict[str, dict[str, int]] = {}
    for query_id in queries:
        if query_id not in patent_of:
            raise ValueError(f"query figure {query_id!r} is not among the {len(patent_of)} figures")
        qrels[query_id] = {
            figure_id: 1 for figure_id in figures_of[patent_of[query_id]] if figure_id != query_id
        }
    return qrels
