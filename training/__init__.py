"""The models, usable without Dagster: one folder per model family and what both share.

- `training.describe`: PatentLMM, which writes the description of a patent drawing.
- `training.retrieval`: the figure-search encoder, its FAISS index and its metrics.
- shared: `training.tracking` (MLflow runs and registry), `training.job` (what every job shares:
  its strict JSON config, the Pipes reporter, output helpers) and `training.entry` (the command
  line of the jobs the Dagster assets launch, `python -m training COMMAND --config JOB.json`).

The families never import each other; `training.entry` is the one module that knows both.
"""
