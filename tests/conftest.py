"""Shared test setup: make the repository root importable (model, tokenizer, data, sample, ...).

Run: .venv/bin/python -m pytest tests
"""
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

torch.set_num_threads(1)  # the tests are tiny; one thread keeps them from competing with other work
