import os

import pytest

# Everything in the suite runs on the CPU, offline, and must not oversubscribe two cores.
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")
# torch.compile: no pool of compile workers competing for the same two cores.
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")


@pytest.fixture(autouse=True)
def _restore_environment():
    """Undo whatever a test exported into this process (a launcher's RANK, MASTER_PORT, ...), so that
    later tests, and the jobs they submit (sbatch passes the environment on), start clean."""
    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)


def read_jsonl(*paths, missing_ok: bool = False) -> list[dict]:
    """Every JSON object of the JSONL files ``paths``, in order (blank lines ignored); with
    ``missing_ok`` a file that does not exist reads as empty."""
    import json
    from pathlib import Path

    records = []
    for path in paths:
        path = Path(path)
        if missing_ok and not path.exists():
            continue
        records.extend(json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    return records


def damaged_gzip(path, records: list[dict], how: str) -> None:
    """Write ``records`` as gzipped JSONL to ``path``, then damage it the way real files get damaged:
    ``truncated`` (a copy cut short), ``bitflip`` (one corrupt byte in the compressed data) or
    ``crc`` (intact data whose CRC-32 trailer does not match)."""
    import gzip
    import json
    from pathlib import Path

    data = bytearray(gzip.compress("".join(json.dumps(r) + "\n" for r in records).encode(), mtime=0))
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "bitflip":
        data[len(data) // 2] ^= 0xFF
    elif how == "crc":
        data[-8] ^= 0xFF  # the trailer is CRC-32 then the uncompressed size, 4 bytes each
    else:
        raise ValueError(f"unknown damage {how!r}")
    Path(path).write_bytes(bytes(data))
