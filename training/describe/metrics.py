"""Scores of generated figure descriptions against the reference ones.

Every metric comes from a maintained package; nothing is re-implemented here:

- BLEU-n (n = 1..4): sacrebleu's corpus BLEU with ``max_ngram_order=n`` (uniform weights over
  the 1..n-gram precisions, brevity penalty over the whole corpus, sacrebleu's defaults:
  13a tokenisation, case-sensitive, ``exp`` smoothing), i.e.
  ``BLEU(max_ngram_order=n).corpus_score(predictions, [references]).score / 100``.
- ROUGE-1/2/L: rouge-score's F1 with the Porter stemmer, averaged over the figures.
- METEOR: pycocoevalcap's ``Meteor`` (the METEOR 1.5 jar, run with Java) on the PTB-tokenised
  text, the corpus score the jar computes from the pooled statistics.
- CIDEr: pycocoevalcap's ``Cider`` (CIDEr-D's n-gram TF-IDF form) on the PTB-tokenised text.
- printed_label_rate (this project's, no package has it): whether the first FIG label a
  description names is one its sheet prints, labels parsed by ``patent_assets.figrefs``.

Scale: every metric is on 0-1 except CIDEr, which keeps pycocoevalcap's native scale (the
``x10`` of the reference implementation: 10 for a perfect match against one reference with
distinct n-grams) so that it stays comparable with published numbers. CIDEr's IDF comes from
the evaluated set itself: with a single figure every n-gram has IDF 0 and CIDEr is 0.

Tokenisation for METEOR and CIDEr is pycocoevalcap's ``PTBTokenizer`` (the Stanford CoreNLP
jar it bundles, offline; lower-cases and drops punctuation), as in the COCO caption evaluation.
It writes its input to a temporary file inside the installed pycocoevalcap package, so that
directory must be writable (it is in the project's virtualenv).

Input rules: predictions and references must name the same image ids (a missing or extra id
is a ``ValueError`` naming them); an empty reference is an error; an empty (or whitespace-only)
prediction is scored as an empty hypothesis (0 on every metric for that figure); an empty set
is an error. Java must be installed (``apt-get install default-jre-headless``); without it
METEOR fails with ``MissingProgram`` naming ``java``.
"""

from __future__ import annotations

import functools
import json
import shutil
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from statistics import fmean
from typing import Any

import sacrebleu
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU

from patent_assets.figrefs import first_label_key, label_key
from patent_assets.records import atomic_write

DESCRIPTION_KINDS = ("brief", "detailed")
METRIC_NAMES = (
    "bleu1",
    "bleu2",
    "bleu3",
    "bleu4",
    "rouge1",
    "rouge2",
    "rougeL",
    "meteor",
    "cider",
)
# Figures from the USPTO and from patentflow's synthetic releases, scored apart as well as together.
ORIGINS = ("real", "synthetic")
# every metric on the real figures and on the synthetic ones alone: "real_bleu4", ...
ORIGIN_METRICS = tuple(f"{origin}_{name}" for origin in ORIGINS for name in METRIC_NAMES)
# printed_label_rate on every labelled sheet, and on the real (USPTO) and synthetic ones apart
LABEL_RATES = ("printed_label_rate", "real_printed_label_rate", "synthetic_printed_label_rate")
_ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
# A segment separator of the METEOR jar's line protocol: it must not occur inside a text.
_METEOR_SEPARATOR = "|||"


class MissingProgram(RuntimeError):
    """A program a metric needs (Java, for METEOR and the PTB tokenizer) is not installed."""


def score_descriptions(predictions: Mapping[str, str], references: Mapping[str, str]) -> dict[str, float]:
    """Corpus scores of `predictions` against `references`, both `{image_id: text}`.

    Returns the keys of `METRIC_NAMES`; see the module docstring for how each is computed.
    """
    image_ids = _checked_ids(predictions, references)
    hypotheses = [_one_line(predictions[image_id]) for image_id in image_ids]
    targets = [_one_line(references[image_id]) for image_id in image_ids]

    scores: dict[str, float] = {}
    for order in range(1, 5):
        bleu = BLEU(max_ngram_order=order).corpus_score(hypotheses, [targets])
        scores[f"bleu{order}"] = _unit(bleu.score)

    scorer = _rouge_scorer()
    rouge = [scorer.score(target, hypothesis) for hypothesis, target in zip(hypotheses, targets, strict=True)]
    for rouge_type in _ROUGE_TYPES:
        scores[rouge_type] = fmean(result[rouge_type].fmeasure for result in rouge)

    tokenized_refs, tokenized_preds = _ptb_tokenize(image_ids, targets, hypotheses)
    scores["meteor"] = _meteor(tokenized_refs, tokenized_preds)
    scores["cider"] = _cider(tokenized_refs, tokenized_preds)
    return scores


def sentence_scores(prediction: str, reference: str) -> dict[str, float]:
    """One figure's sentence BLEU (sacrebleu's `sentence_bleu`: BLEU-4 with effective order) and
    ROUGE-L F1, both 0-1: the per-figure columns of `per_figure_{kind}.jsonl`."""
    hypothesis, target = _one_line(prediction), _one_line(reference)
    return {
        "bleu": _unit(sacrebleu.sentence_bleu(hypothesis, [target]).score),
        "rougeL": _rouge_scorer().score(target, hypothesis)["rougeL"].fmeasure,
    }


def _unit(bleu_score: float) -> float:
    """sacrebleu's 0-100 score as 0-1; a perfect match comes out of its log/exp as 100.00000000000004."""
    return min(bleu_score / 100.0, 1.0)


def printed_label_rate(
    predictions: Mapping[str, str], printed_labels: Mapping[str, Sequence[str]]
) -> dict[str, float | None]:
    """How often a description names a figure that its sheet prints: the share of the predicted
    figures whose sheet prints a label (`printed_labels`, the aligned FIG labels of each image id)
    and whose description's first FIG label is one of them (no label at all counts as wrong).

    Returns {"printed_label_rate": share, "labelled_figures": n}; the rate is None when no sheet
    prints a label. An id of `predictions` missing from `printed_labels` is a ValueError."""
    missing = sorted(set(predictions) - set(printed_labels))
    if missing:
        raise ValueError(f"no printed labels known for image ids {_sample(missing)}")
    right = labelled = 0
    for image_id, text in predictions.items():
        keys = set()
        for label in printed_labels[image_id]:
            try:
                keys.add(label_key(label))
            except ValueError:
                continue  # not a figure label: nothing a description could name
        if not keys:
            continue
        labelled += 1
        right += first_label_key(text) in keys
    return {"printed_label_rate": right / labelled if labelled else None, "labelled_figures": labelled}


def evaluate_split(
    predictions_by_kind: Mapping[str, Mapping[str, str]],
    references_by_kind: Mapping[str, Mapping[str, str]],
    out_dir: Path,
    synthetic: Mapping[str, bool] | None = None,
) -> dict[str, Any]:
    """Score each description kind and save what a reader needs to check the scores.

    Writes, atomically, into `out_dir`: `predictions_{kind}.json` (`{image_id: text}`, the
    format of PatentLMM's inference script), `per_figure_{kind}.jsonl` (image id, reference,
    prediction, sentence BLEU and ROUGE-L) and `metrics.json` (the returned dict).
    Returns `{kind: {metric: value, ..., "figures": n}, "bleu_signature": ...}`. With
    `synthetic` (image id -> from a synthetic release), each kind also holds every metric on its
    real and on its synthetic figures alone (`ORIGIN_METRICS`, with `real_figures`, ...); an
    origin with no figure is left out, and an id missing from `synthetic` is a ValueError.
    """
    missing_kinds = sorted(set(predictions_by_kind) ^ set(references_by_kind))
    if missing_kinds:
        raise ValueError(f"description kinds {missing_kinds} have predictions or references but not both")
    if not predictions_by_kind:
        raise ValueError("no description kinds to evaluate")

    out_dir = Path(out_dir)
    results: dict[str, Any] = {}
    for kind in sorted(predictions_by_kind):
        predictions, references = predictions_by_kind[kind], references_by_kind[kind]
        try:
            kind_scores: dict[str, Any] = dict(score_descriptions(predictions, references))
        except ValueError as error:
            raise ValueError(f"{kind} descriptions: {error}") from error
        kind_scores["figures"] = len(references)
        if synthetic is not None:
            kind_scores |= _scores_by_origin(predictions, references, synthetic)
        results[kind] = kind_scores

        with atomic_write(out_dir / f"predictions_{kind}.json") as handle:
            json.dump({image_id: predictions[image_id] for image_id in sorted(references)}, handle, indent=1)
        with atomic_write(out_dir / f"per_figure_{kind}.jsonl") as handle:
            for image_id in sorted(references):
                row = {
                    "image_id": image_id,
                    "reference": references[image_id],
                    "prediction": predictions[image_id],
                    **sentence_scores(predictions[image_id], references[image_id]),
                }
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")

    # The exact BLEU settings, so that a number can be reproduced with sacrebleu alone.
    results["bleu_signature"] = _bleu_signature()
    with atomic_write(out_dir / "metrics.json") as handle:
        json.dump(results, handle, indent=1)
    return results


def _scores_by_origin(
    predictions: Mapping[str, str], references: Mapping[str, str], synthetic: Mapping[str, bool]
) -> dict[str, float]:
    unknown = sorted(set(references) - set(synthetic))
    if unknown:
        raise ValueError(f"no origin (real or synthetic) known for image ids {_sample(unknown)}")
    scores: dict[str, float] = {}
    for origin in ORIGINS:
        ids = [i for i in references if synthetic[i] == (origin == "synthetic")]
        if ids:
            chosen = score_descriptions({i: predictions[i] for i in ids}, {i: references[i] for i in ids})
            scores |= {f"{origin}_{name}": value for name, value in chosen.items()}
            scores[f"{origin}_figures"] = len(ids)
    return scores


def _bleu_signature() -> str:
    """sacrebleu's signature of the BLEU-4 settings used (it knows the reference count only
    after scoring something, hence the one-sentence corpus)."""
    bleu = BLEU(max_ngram_order=4)
    bleu.corpus_score(["signature"], [["signature"]])
    return str(bleu.get_signature())


def _checked_ids(predictions: Mapping[str, str], references: Mapping[str, str]) -> list[str]:
    if not references:
        raise ValueError("no figures to score: the reference set is empty")
    missing = sorted(set(references) - set(predictions))
    extra = sorted(set(predictions) - set(references))
    if missing or extra:
        raise ValueError(
            f"predictions and references must cover the same figures: "
            f"{len(missing)} without a prediction {_sample(missing)}, "
            f"{len(extra)} without a reference {_sample(extra)}"
        )
    empty_refs = sorted(image_id for image_id, text in references.items() if not _one_line(text))
    if empty_refs:
        raise ValueError(f"{len(empty_refs)} references are empty {_sample(empty_refs)}")
    return sorted(references)


def _sample(items: list[str], limit: int = 5) -> str:
    return str(items[:limit]) + (" ..." if len(items) > limit else "")


def _one_line(text: str) -> str:
    """Collapse every kind of whitespace (newlines, CR, U+2028, ...) into single spaces: the
    Java tools read one text per line, and a stray line break would shift every later text."""
    return " ".join(str(text).split())


@functools.cache
def _rouge_scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(list(_ROUGE_TYPES), use_stemmer=True)


def _require_java(purpose: str) -> None:
    if shutil.which("java") is None:
        raise MissingProgram(
            f"{purpose} needs the program 'java', which is not on PATH: "
            "install a Java runtime (apt-get install default-jre-headless)"
        )


def _ptb_tokenize(
    image_ids: list[str], references: list[str], hypotheses: list[str]
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """PTB-tokenise references and hypotheses in one Java call: `{image_id: [text]}` each."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    _require_java("PTB tokenisation for METEOR and CIDEr")
    captions = {("ref", i): [{"caption": text}] for i, text in zip(image_ids, references, strict=True)}
    captions |= {("hyp", i): [{"caption": text}] for i, text in zip(image_ids, hypotheses, strict=True)}
    try:
        tokenized = PTBTokenizer().tokenize(captions)
    except PermissionError as error:
        # pycocoevalcap writes its input file beside the jar, inside the installed package.
        raise RuntimeError(f"PTB tokenizer cannot write its temporary file: {error}") from error
    if len(tokenized) != len(captions):
        raise RuntimeError(f"PTB tokenizer returned {len(tokenized)} texts for {len(captions)}")
    # The METEOR jar's line protocol splits on "|||": keep it out of every text.
    clean = {key: [texts[0].replace(_METEOR_SEPARATOR, " ")] for key, texts in tokenized.items()}
    return (
        {image_id: clean[("ref", image_id)] for image_id in image_ids},
        {image_id: clean[("hyp", image_id)] for image_id in image_ids},
    )


_meteor_lock = threading.Lock()
_meteor_scorer: Any = None


def _meteor(references: dict[str, list[str]], hypotheses: dict[str, list[str]]) -> float:
    """Corpus METEOR from one long-lived METEOR jar process (it takes ~10 s to load its tables)."""
    from pycocoevalcap.meteor.meteor import Meteor

    global _meteor_scorer
    _require_java("METEOR")
    with _meteor_lock:
        if _meteor_scorer is None or _meteor_scorer.meteor_p.poll() is not None:
            _meteor_scorer = Meteor()
        try:
            score, _ = _meteor_scorer.compute_score(references, hypotheses)
        except (ValueError, BrokenPipeError) as error:
            # The jar died (out of memory, a broken install): say so instead of a parse error.
            process = _meteor_scorer.meteor_p
            process.kill()
            if _meteor_scorer.lock.locked():  # else its __del__ would wait on it forever
                _meteor_scorer.lock.release()
            stderr = process.stderr.read().decode(errors="replace")[-2000:]
            _meteor_scorer = None
            raise RuntimeError(f"the METEOR jar failed ({error}): {stderr}") from error
    return float(score)


def _cider(references: dict[str, list[str]], hypotheses: dict[str, list[str]]) -> float:
    from pycocoevalcap.cider.cider import Cider

    score, _ = Cider().compute_score(references, hypotheses)
    return float(score)
