"""The models, usable without Dagster: one folder per model family and what both share.

- `training.describe`: PatentLMM, which writes the description of a patent drawing.
- `training.retrieval`: the figure-search encoder, its FAISS index and its metrics.
- shared: `training.tracking` (MLflow runs and registry) and `training.entry` (the jobs the
  Dagster assets launch, `python -m training COMMAND --config JOB.json`, with Pipes reporting).

The families never import each other; `training.entry` is the one module that knows both.
"""
