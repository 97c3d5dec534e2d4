import subprocess
import sys

TORCH_FREE = [
    "megaphi.common.errors",
    "megaphi.common.cli",
    "megaphi.common.files",
    "megaphi.common.checkpoints",
    "megaphi.common.jsonl",
    "megaphi.common.net",
    "data_tools.jsonl",
]


def test_the_shared_modules_import_without_torch():
    """Launchers and data tools import these cheaply: none of them may pull in torch."""
    code = f"import sys\nfor m in {TORCH_FREE!r}: __import__(m)\nprint('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
