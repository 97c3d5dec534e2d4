"""HumanEval / MBPP evaluation: benchmarks, a bubblewrap sandbox, pass@k scoring and reports.

``python -m megaphi.eval {generate,score,run}``; see ``megaphi.eval.__main__``.
"""
