"""PatentLMM (AAAI 2025): a LayoutLMv3-style encoder reads a drawing sheet with its OCR words and
boxes, an MLP projector maps it into a Llama-family LM that writes the brief or detailed description.

Read in this order: `configs` (presets, stage and pretraining settings) -> `tokenizer` -> `data` (LLaVA JSON to
batches) -> `modeling` -> `train` (one stage, under the DeepSpeed launcher of `distributed`; `plans`
writes its config) -> `inference` -> `metrics` and `baselines`. `patent_mme` and `patent_llama`
pretrain the encoder and the LM; `commands` are the jobs `training.entry` runs.
"""
