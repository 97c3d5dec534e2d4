"""Pieces every part of megaphi and data_tools shares, each written once.

- :mod:`megaphi.common.errors`: :class:`UserError`, the base of every error a user can fix.
- :mod:`megaphi.common.cli`: the runner of every ``python -m`` entry point (``error: ...``, exit 2).
- :mod:`megaphi.common.files`: atomic writes.
- :mod:`megaphi.common.checkpoints`: tag directories, the ``latest`` file, what a model path may be.
- :mod:`megaphi.common.jsonl`: JSONL reading with the skip/stop policy and ``file:line`` errors.
- :mod:`megaphi.common.net`: a free TCP port.
- :mod:`megaphi.common.processes`: a child process that dies with its parent.
- :mod:`megaphi.common.padding`: left-padded token batches (the one module here that needs torch).

Everything but ``padding`` is torch-free, so data tools and launchers import it cheaply.
"""
