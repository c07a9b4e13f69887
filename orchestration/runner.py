"""`patentflow run`: the main job, on the persistent Dagster instance under $PATENTFLOW_HOME.

It does what the sensor and the automation do in a running deployment, once, in order:
if the landing directory is empty, put in it the synthetic releases and the shipped sample of
real USPTO design grants (`patent_assets.real_sample`, one directory release) and a real weekly
full-text file (text only, for the language model), add a partition
for each new release, run `ingest_release` for every release, then `build_dataset`. The runs
are ordinary Dagster runs: `patentflow ui` shows them afterwards.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg

from orchestration.assets import releases
from orchestration.definitions import build_definitions
from orchestration.model_assets import REAL_GATE_METRICS
from orchestration.resources import LandingDirectory, PatentflowHome
from orchestration.sensors import new_release_keys
from patent_assets import pipeline, real_sample
from patent_assets.dataset import release_passed
from patent_assets.layout import Home
from patent_assets.records import read_figure_rows, read_jsonl
from training.describe.baselines import BASELINES

# The console shows INFO and up; every event is still in the run's log in the Dagster UI.
QUIET = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


@dataclass
class RunReport:
    home: Home
    releases: list[str] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    rejected_by_reason: Counter[str] = field(default_factory=Counter)
    checks: dict[str, bool] = field(default_factory=dict)
    failed_runs: list[str] = field(default_factory=list)
    dataset: dict[str, int] = field(default_factory=dict)
    dataset_real: dict[str, int] = field(default_factory=dict)  # the same counts, real USPTO figures only
    model: dict[str, Any] = field(default_factory=dict)
    retrieval: dict[str, Any] = field(default_factory=dict)

    @property
    def success(self) -> bool:
        return not self.failed_runs

    def render(self) -> str:
        c = self.counts
        lines = [
            "",
            "PatentFlow run summary",
            f"  releases:   {len(self.releases)} ({', '.join(self.releases)})",
            f"  ingested:   {c['grants']} grants, {c['applications']} applications, {c['sheets']} sheets, "
            f"{c['ocr_words']} OCR words, {c['figures']} figures ({c['real_figures']} real USPTO, "
            f"{c['synthetic_figures']} synthetic; {c['labels_aligned']}/{c['labels_expected']} FIG labels aligned)",
            f"  skipped:    {c['skipped_non_grants']} documents neither grant nor application",
            f"  rejected:   {sum(self.rejected_by_reason.values())} items"
            + "".join(
                f"\n                {n} x {reason}" for reason, n in self.rejected_by_reason.most_common(8)
            ),
            "  validated:  "
            + (", ".join(f"{k} {'passed' if ok else 'FAILED'}" for k, ok in self.checks.items()) or "-"),
            f"  dataset:    {self.dataset.get('figures', 0)} figures ({self.dataset_real.get('figures', 0)} real); "
            + "splits "
            + ", ".join(
                f"{k} {v} ({self.dataset_real.get(k, 0)} real)"
                for k, v in self.dataset.items()
                if k not in ("figures", "all")
            ),
        ]
        if self.model:
            lines += _model_lines("model:", "PatentLMM", self.model)
        if self.retrieval:
            lines += _model_lines("retrieval:", "encoder", self.retrieval)
            if "index" in self.retrieval:
                lines.append(f"                index: {self.retrieval['index']}")
        if self.failed_runs:
            lines.append(f"  FAILED runs: {', '.join(self.failed_runs)}")
        lines += [
            "  look at:",
            f"    data (DVC-versioned): {self.home.data}",
            f"    figure dataset:       {self.home.data / 'dataset' / 'figures' / pipeline.FIGURES}",
            f"    LLaVA JSON:           {self.home.data / 'dataset' / 'llava_json'}",
            f"    search index:         {self.home.data / 'retrieval_index'}  (patentflow search --image PNG)",
            "    Dagster UI:           make ui  (http://127.0.0.1:3000)",
            f"    MLflow UI:            mlflow/server.sh  (runs, curves, registry; {self.home.mlflow})",
        ]
        return "\n".join(lines)


def run_all(
    home: Home,
    *,
    synthetic_releases: int = 3,
    patents_per_release: int = 8,
    seed: int = 0,
    echo: Callable[[str], None] = print,
    train: bool = True,
    real_release: bool = True,
) -> RunReport:
    landing = LandingDirectory(path=str(home.landing))
    fill_empty_landing(
        home.landing,
        synthetic_releases=synthetic_releases,
        patents_per_release=patents_per_release,
        seed=seed,
        real_release=real_release,
        echo=echo,
    )
    defs = build_definitions(release_source=landing, home=PatentflowHome(root=str(home.root)))
    report = RunReport(home)
    with dg.DagsterInstance.get() as instance:
        new = new_release_keys(instance, landing)
        if new:
            instance.add_dynamic_partitions(releases.name, new)
        report.releases = sorted(instance.get_dynamic_partitions(releases.name))
        ingest = defs.resolve_job_def("ingest_release")
        for key in report.releases:
            echo(f"ingest_release [{key}] ...")
            result = ingest.execute_in_process(
                instance=instance, partition_key=key, raise_on_error=False, run_config=QUIET
            )
            if not result.success:
                report.failed_runs.append(f"ingest_release[{key}] ({result.run_id})")
            _collect_release(report, home, key)
        echo("build_dataset ...")
        result = defs.resolve_job_def("build_dataset").execute_in_process(
            run_config=QUIET, instance=instance, raise_on_error=False
        )
        if not result.success:
            report.failed_runs.append(f"build_dataset ({result.run_id})")
        if train and not report.failed_runs:
            echo(
                "retrain_patentlmm (tokenizer, PatentMME, PatentLLaMA, stage 1, stage 2, evaluation, promotion) ..."
            )
            result = defs.resolve_job_def("retrain_patentlmm").execute_in_process(
                run_config=QUIET, instance=instance, raise_on_error=False
            )
            report.model = _model_summary(result)
            if not result.success and not report.model.get("blocked_by_check"):
                report.failed_runs.append(f"retrain_patentlmm ({result.run_id})")
        if train and not report.failed_runs:
            echo("retrain_retrieval (figure encoder, evaluation, promotion, search index) ...")
            result = defs.resolve_job_def("retrain_retrieval").execute_in_process(
                run_config=QUIET, instance=instance, raise_on_error=False
            )
            report.retrieval = _retrieval_summary(result)
            if not result.success and not report.retrieval.get("blocked_by_check"):
                report.failed_runs.append(f"retrain_retrieval ({result.run_id})")
    summary = pipeline.read_step_summary(home.figures_dir)
    report.dataset = {"figures": summary.get("figures", 0), **summary.get("splits", {})}
    report.dataset_real = _real_figures_by_split(home.figures_jsonl)
    return report


def fill_empty_landing(
    landing_dir: Path,
    *,
    synthetic_releases: int = 3,
    patents_per_release: int = 8,
    seed: int = 0,
    real_release: bool = True,
    echo: Callable[[str], None] = print,
) -> list[Path]:
    """The embedded default's releases, put in the landing directory only when it holds none:
    the synthetic weekly releases, the shipped sample of real USPTO design grants (a directory
    release), whose drawings the models train on and are judged by, and a real weekly full-text
    file (`ipg130416.zip`), whose grants are text for the language model. Returns what it wrote."""
    from patent_assets import synthetic

    landing_dir.mkdir(parents=True, exist_ok=True)
    if LandingDirectory(path=str(landing_dir)).list_releases():
        return []
    echo(f"landing directory empty: writing {synthetic_releases} synthetic weekly releases to {landing_dir}")
    config = synthetic.SyntheticConfig(
        releases=synthetic_releases, patents_per_release=patents_per_release, seed=seed
    )
    written = synthetic.generate(config, landing_dir)
    if real_release:
        written.append(real_sample.land(landing_dir))
        echo(f"and the sample of real USPTO design grants as release {written[-1].name}")
        written.append(real_sample.land_text(landing_dir))
        echo(f"and real USPTO full text without drawings (25 grants) as release {written[-1].name}")
    return written


def _real_figures_by_split(figures_jsonl: Path) -> dict[str, int]:
    """Real (USPTO, not synthetic) figures of the dataset: in all, and per split."""
    counts: Counter[str] = Counter()
    if figures_jsonl.exists():
        for row in read_figure_rows(figures_jsonl, "report")[0]:
            if not row.get("synthetic", False):
                counts["figures"] += 1
                counts[row.get("split", "")] += 1
    return dict(counts)


def _materialized(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    """Asset key -> the metadata of its materialization in `result`."""
    return {
        e.asset_key.to_user_string(): e.materialization.metadata
        for e in result.get_asset_materialization_events()
    }


def _model_summary(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    events = _materialized(result)
    summary: dict[str, Any] = {}
    challenger = events.get("patentlmm_challenger", {})
    if challenger:
        summary["model_version"] = challenger["model_version"].value
        # a blocked challenger leaves the champion where it was: the one it was compared with
        summary["champion_version"] = challenger["champion_version"].value
        summary["metrics"] = {
            k: v.value
            for k, v in challenger.items()
            if k
            in (
                "brief_bleu4",
                "brief_rougeL",
                "brief_meteor",
                "brief_cider",
                "brief_synthetic_printed_label_rate",
            )
        }
        # on the real test drawings: the challenger against the bars that need no description model
        for name in ("", *(f"{b}_" for b in BASELINES)):
            for metric in (*REAL_GATE_METRICS, "brief_real_printed_label_rate"):
                if f"{name}{metric}" in challenger:
                    key = f"{metric} ({name.rstrip('_') or 'challenger'})"
                    summary["metrics"][key] = challenger[f"{name}{metric}"].value
        summary["ablations"] = challenger["ablations"].value
    champion = events.get("patentlmm_champion", {})
    if champion:
        summary["champion_version"] = champion["champion_version"].value
        summary["reason"] = champion["reason"].value
    for evaluation in result.get_asset_check_evaluations():
        if evaluation.check_name == "challenger_beats_champion" and not evaluation.passed:
            summary["blocked_by_check"] = True
            summary["reason"] = f"not promoted: {evaluation.metadata['reason'].value}"
    return summary


def _retrieval_summary(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    events = _materialized(result)
    summary: dict[str, Any] = {}
    encoder = events.get("retrieval_encoder", {})
    for name in ("untrained_same_patent_mAP", "same_patent_mAP", "same_patent_Rank-1", "prior_art_mAP"):
        if name in encoder:
            summary.setdefault("metrics", {})[name] = encoder[name].value
    if challenger := events.get("retrieval_challenger", {}):
        summary["model_version"] = challenger["model_version"].value
        # on the real held-out drawings: the challenger against the bars it must clear
        for name in ("", "champion_", "untouched_", "pixels_"):
            if f"{name}real_same_patent_mAP" in challenger:
                key = f"real_same_patent_mAP ({name.rstrip('_') or 'challenger'})"
                summary.setdefault("metrics", {})[key] = challenger[f"{name}real_same_patent_mAP"].value
        # a blocked challenger leaves the champion where it was: the one it was compared with
        summary["champion_version"] = challenger["champion_version"].value
    if champion := events.get("retrieval_champion", {}):
        summary["champion_version"] = champion["champion_version"].value
        summary["reason"] = champion["reason"].value
    if index := events.get("retrieval_index", {}):
        fusion = (
            f"; thumbnail weight {index['thumbnail_weight'].value}" if "thumbnail_weight" in index else ""
        )
        summary["index"] = (
            f"{index['figures'].value} figures, {index['patents'].value} patents ({index['kind'].value}{fusion})"
        )
        if "collection_same_patent_mAP" in index:
            summary["index"] += f", same-patent mAP {index['collection_same_patent_mAP'].value:.3f} over them"
    for evaluation in result.get_asset_check_evaluations():
        if evaluation.check_name == "retrieval_challenger_beats_champion" and not evaluation.passed:
            summary["blocked_by_check"] = True
            summary["reason"] = f"not promoted: {evaluation.metadata['reason'].value}"
    return summary


def _collect_release(report: RunReport, home: Home, key: str) -> None:
    base = home.releases / key
    steps = {
        "documents": ("grants", "applications", "sheets", "skipped_non_grants"),
        "sheet_images": (),
        "ocr": ("words",),
        "figures": ("figures", "labels_aligned", "labels_expected"),
    }
    for step, fields in steps.items():
        summary = pipeline.read_step_summary(base / step)
        for name in fields:
            report.counts["ocr_words" if name == "words" else name] += int(summary.get(name, 0))
        if step == "figures" and (base / step / pipeline.FIGURES).exists():
            report.counts.update(
                "synthetic_figures" if row.get("synthetic") else "real_figures"
                for row in read_figure_rows(base / step / pipeline.FIGURES, "report")[0]
            )
        rejected = base / step / pipeline.REJECTED
        if rejected.exists():
            for row in read_jsonl(rejected):
                report.rejected_by_reason[_reason_kind(row["reason"])] += 1
    report.checks[f"release_figures_valid[{key}]"] = release_passed(base)


def _reason_kind(reason: str) -> str:
    return reason.split(":")[0][:70]


def _model_lines(label: str, name: str, record: dict[str, Any]) -> list[str]:
    """A model's summary: its version against the champion's and the reason, then its metrics."""
    head = (
        f"  {label:<12}{name} version {record.get('model_version', '?')} "
        f"(champion: version {record.get('champion_version', '?')}; {record.get('reason', '')})"
    )
    return [head, *(f"                {k} {v:.3f}" for k, v in record.get("metrics", {}).items())]
