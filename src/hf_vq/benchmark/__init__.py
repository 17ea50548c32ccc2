"""`hf-vq benchmark SPEC`: which tokenizer generates best, on your data, in one command.

A spec names tokenizers (by config and kind), the AR and NAR proposal networks, a dataset, a seed and a budget per
stage; the run trains and evaluates every row with cached, resumable stages and writes one JSON per row, a Markdown
table and a plot (see `spec.py` for the file format).
"""

from .runner import BenchmarkRun
from .spec import TOKENIZER_KINDS, BenchmarkSpec, TokenizerKind, load_spec
from .table import render_table, write_table

__all__ = ["TOKENIZER_KINDS", "BenchmarkRun", "BenchmarkSpec", "TokenizerKind", "load_spec", "render_table",
           "write_table"]
