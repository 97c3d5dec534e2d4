"""The graded benchmark: problems written for megaphi, scored by hidden tests and by an LLM judge.

phi-1's section 4 asks whether a model's HumanEval score comes from memorising HumanEval-like
training items. Its answer is a fresh set of unconventional problems, unlike anything in HumanEval,
MBPP or the training data, whose solutions a strong LLM grades for the quality of their logic,
beside the unit tests. This package holds such a set (``problems/``, one Markdown file per problem,
with its decontamination report ``DECONTAMINATION.md``), the judge (``judge.py``), the reports
(``report.py``) and the command (``python -m megaphi.eval graded`` / ``graded-table``, ``cli.py``).
"""
