"""megaphi: train phi-1 style code models (model, tensor parallelism, data, training, evaluation).

Kept import-light on purpose: ``import megaphi`` must not pull in torch or DeepSpeed.
"""
