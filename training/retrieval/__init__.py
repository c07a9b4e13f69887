"""Figure retrieval for prior-art search: an image encoder (ArcFace on patent identity plus the
LLM-informed alignment with generated descriptions), a FAISS index that shows a query only the
figures granted before its date, and the metrics of DeepPatent, UPAIR and Lo et al.

Read in this order: `model` (backbone, pooling, head) and `features` (the frozen backbone's
cache) -> `configs` and `train` (with `text_encoder`) -> `evaluate` and `metrics` -> `faiss_index` ->
`search_index` (what `patentflow index` builds and `patentflow search` reads). `benchmark_readers`
reads the public benchmarks; `commands` are the jobs `training.entry` runs.
"""
