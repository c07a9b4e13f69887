"""Data-pipeline benchmarks; prints a table for the README.

    .venv/bin/python benchmarks/data_pipeline.py [--patents N] [--repeat R]

1. XML parse throughput of `uspto_xml` against raw lxml on the same bytes (the real
   146-grant weekly design file, repeated to a few MB).
2. OCR sheets/s with 1 and 2 workers, and on a cached re-run.
3. Cost of materializing a second release relative to the first, and of re-materializing
   an unchanged release (Dagster, in process, DVC versioning included).

Ratios are measured within one run; absolute times on these machines are noisy.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import dagster as dg
from lxml import etree

from orchestration.assets import releases
from orchestration.definitions import build_definitions
from orchestration.resources import LandingDirectory, PatentflowHome
from patent_assets import ocr, synthetic, uspto_xml

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"


def bench_parse(repeat: int) -> list[tuple[str, str]]:
    data = (
        REALDATA / "uspto_xml" / "design_grants_concatenated" / "ipg151229.sax2pats_test.xml"
    ).read_bytes()
    data = data * repeat
    mb = len(data) / 1e6
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)

    start = time.perf_counter()
    n_raw = 0
    for _, doc in uspto_xml.split_documents(data):
        try:
            etree.fromstring(doc, parser)
            n_raw += 1
        except etree.XMLSyntaxError:
            pass
    raw = time.perf_counter() - start

    start = time.perf_counter()
    report = uspto_xml.parse_concatenated(data, "bench")
    ours = time.perf_counter() - start
    return [
        ("XML: raw lxml parse (split + fromstring)", f"{mb / raw:.1f} MB/s ({n_raw} docs)"),
        (
            "XML: uspto_xml.parse_concatenated (full extraction)",
            f"{mb / ours:.1f} MB/s ({len(report.grants)} grants)",
        ),
        ("XML: ours / raw lxml time", f"{ours / raw:.2f}x"),
    ]


def bench_ocr(pngs: list[Path], work: Path) -> list[tuple[str, str]]:
    rows = []
    for workers in (1, 2):
        cache = work / f"ocr-cache-{workers}"
        start = time.perf_counter()
        ocr.ocr_images(pngs, cache, workers=workers)
        elapsed = time.perf_counter() - start
        rows.append((f"OCR: {workers} worker(s), cold cache", f"{len(pngs) / elapsed:.2f} sheets/s"))
    start = time.perf_counter()
    run = ocr.ocr_images(pngs, work / "ocr-cache-2", workers=2)
    elapsed = time.perf_counter() - start
    rows.append(("OCR: cached re-run", f"{len(pngs) / elapsed:.0f} sheets/s ({run.cached} cached)"))
    return rows


def bench_materialize(work: Path, patents: int) -> tuple[list[tuple[str, str]], list[Path]]:
    landing = work / "landing"
    synthetic.generate(synthetic.SyntheticConfig(releases=2, patents_per_release=patents, seed=1), landing)
    os.environ["PATENTFLOW_HOME"] = str(work / "home")
    source = LandingDirectory(path=str(landing))
    defs = build_definitions(release_source=source, home=PatentflowHome(root=str(work / "home")))
    job = defs.resolve_job_def("ingest_release")
    keys = sorted(r.key for r in source.list_releases())
    timings = []
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(releases.name, keys)
        for key in [*keys, keys[0]]:
            start = time.perf_counter()
            job.execute_in_process(instance=instance, partition_key=key)
            timings.append(time.perf_counter() - start)
    first, second, again = timings
    pngs = sorted((work / "home" / "data" / "releases" / keys[0] / "sheet_images" / "images").glob("*.png"))
    return [
        (f"Materialize release 1 ({patents} patents)", f"{first:.1f} s"),
        ("Materialize release 2 / release 1", f"{second / first:.2f}x"),
        ("Re-materialize unchanged release 1 / first time", f"{again / first:.2f}x"),
    ], pngs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--patents", type=int, default=6, help="patents per synthetic release")
    parser.add_argument("--repeat", type=int, default=4, help="copies of the 146-grant file to parse")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="patentflow-bench-"))
    try:
        rows = bench_parse(args.repeat)
        materialize_rows, pngs = bench_materialize(work, args.patents)
        rows += bench_ocr(pngs, work)
        rows += materialize_rows
    finally:
        shutil.rmtree(work, ignore_errors=True)
    width = max(len(name) for name, _ in rows)
    print(f"{'measure':<{width}} | result")
    print(f"{'-' * width}-|-{'-' * 30}")
    for name, value in rows:
        print(f"{name:<{width}} | {value}")
    print(f"\n(cpu cores: {os.cpu_count()})")


if __name__ == "__main__":
    main()
