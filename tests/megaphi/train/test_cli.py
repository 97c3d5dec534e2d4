"""``python -m megaphi.train`` refuses bad input with one line naming the field, before starting anything."""

import os
import shutil

import pytest

from megaphi.convert.checkpoint import write_meta
from megaphi.model import get_preset
from megaphi.train import main

LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def restore_environ():
    """main() exports the discovered launch (RANK, MASTER_PORT, ...) as a launcher would: undo it."""
    saved = dict(os.environ)
    for name in LAUNCH_VARIABLES:
        os.environ.pop(name, None)
    yield
    os.environ.clear()
    os.environ.update(saved)


def run_main(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    return code, err


def recipe(tmp_path, corpus, extra=""):
    path = tmp_path / "recipe.yaml"
    path.write_text(
        f"run_dir: {tmp_path / 'run'}\nmodel:\n  preset: phi-tiny\ndata:\n  paths: [{corpus}]\n"
        f"  seq_len: 64\ntrain:\n  steps: 4\n  global_batch_size: 8\n  micro_batch_size: 2\n"
        f"  precision: fp32\n{extra}"
    )
    return str(path)


def test_help_describes_the_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--config" in out and "--resume" in out and "section.field=value" in out


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.stepz=3"], "error: train.stepz: unknown field; train accepts"),
        (["train.steps=many"], "error: train.steps: expected int, got 'many'"),
        (["train.global_batch_size=7"], "error: train.global_batch_size: 7 is not divisible by micro_batch_size 2"),
        (["data.paths=[/nonexistent/corpus]"], "error: data.paths: no indexed dataset at '/nonexistent/corpus'"),
        (["data.paths=[]"], "error: data.paths: give at least one dataset prefix"),
        (["train.tensor_parallel_size=2"], "error: train.tensor_parallel_size: 2 does not divide the 1 processes"),
        (["data.tokenizer=/nonexistent/tok"], "error: data.tokenizer: '/nonexistent/tok' is not a directory"),
    ],
)
def test_bad_config_exits_2_with_one_line_naming_the_field(tmp_path, capsys, tiny_corpus, overrides, message):
    code, err = run_main(capsys, "--config", recipe(tmp_path, tiny_corpus), *overrides)
    assert code == 2
    assert err.startswith(message), err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()  # nothing was started


def test_missing_recipe_file_is_named(tmp_path, capsys):
    code, err = run_main(capsys, "--config", str(tmp_path / "nope.yaml"))
    assert (code, err) == (2, f"error: --config: no such file '{tmp_path / 'nope.yaml'}'")


def test_fp16_where_deepspeed_cannot_run_it_is_a_config_error(tmp_path, capsys, tiny_corpus):
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().is_fp16_supported():
        pytest.skip("this device runs fp16")
    code, err = run_main(capsys, "--config", recipe(tmp_path, tiny_corpus), "train.precision=fp16")
    assert code == 2 and err.startswith("error: train.precision: DeepSpeed does not support fp16 on this cpu device")


def test_existing_checkpoints_need_resume_auto(tmp_path, capsys, tiny_corpus):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "latest").write_text("step10")
    code, err = run_main(capsys, "--config", recipe(tmp_path, tiny_corpus))
    assert code == 2
    assert err.startswith(
        f"error: checkpoint.dir: {tmp_path / 'run' / 'checkpoints'} already holds checkpoints "
        "(latest: step10); pass --resume auto"
    )


def test_missing_init_from_checkpoint_is_named(tmp_path, capsys, tiny_corpus):
    code, err = run_main(capsys, "--config", recipe(tmp_path, tiny_corpus), f"checkpoint.init_from={tmp_path}/none")
    assert code == 2 and err.startswith(f"error: checkpoint.init_from: '{tmp_path}/none' is not a directory")


@pytest.mark.parametrize(
    "damage, named",
    [
        ("idx_truncated", ".idx is truncated"),
        ("bin_truncated", ".bin is"),
    ],
)
def test_corrupt_dataset_exits_2_with_one_line_naming_the_file(tmp_path, capsys, tiny_corpus, damage, named):
    prefix = tmp_path / "damaged"
    for suffix in (".bin", ".idx"):
        shutil.copy(tiny_corpus + suffix, str(prefix) + suffix)
    kind = damage.split("_")[0]
    damaged = f"{prefix}.{kind}"
    with open(damaged, "r+b") as f:
        f.truncate(10 if kind == "idx" else os.path.getsize(damaged) - 2)
    code, err = run_main(capsys, "--config", recipe(tmp_path, tiny_corpus), f"data.paths=[{prefix}]")
    assert code == 2
    assert err.startswith(f"error: data.paths: {damaged} is"), err
    assert named in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_token_ids_beyond_the_model_vocab_exit_2_naming_the_dataset(tmp_path, capsys, tiny_corpus):
    # the corpus holds ids up to 511: a 256-entry model cannot embed them
    code, err = run_main(capsys, "--config", recipe(tmp_path, tiny_corpus), "model.overrides.vocab_size=256")
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: data.paths: {tiny_corpus} holds token id 5") and "256 entries" in err


def fake_checkpoint_root(run_dir, tag, model_config=None):
    """A checkpoint root whose ``latest`` names ``tag``; with a model config, the tag holds only its megaphi.json."""
    root = run_dir / "checkpoints"
    root.mkdir(parents=True)
    (root / "latest").write_text(tag)
    if model_config is not None:
        (root / tag).mkdir()
        write_meta(root / tag, model_config, 1, None)
    return root


def test_resume_from_a_latest_that_names_a_missing_checkpoint_is_one_error_line(tmp_path, capsys, tiny_corpus):
    fake_checkpoint_root(tmp_path / "run", "step99")
    code, err = run_main(capsys, "--config", recipe(tmp_path, tiny_corpus), "--resume", "auto")
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("error: checkpoint.dir: cannot resume:") and "step99" in err


def test_resume_refuses_an_override_that_changes_the_architecture(tmp_path, capsys, tiny_corpus):
    fake_checkpoint_root(tmp_path / "run", "step2", get_preset("phi-tiny"))
    code, err = run_main(
        capsys, "--config", recipe(tmp_path, tiny_corpus), "--resume", "auto", "model.overrides.hidden_size=64"
    )
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("error: model.overrides.hidden_size: 64 differs from the checkpoint being resumed (128)")


def srun_task(rank: int) -> dict[str, str]:
    """What srun exports to task ``rank`` of a two-task step on one node (no RANK: srun does not set it)."""
    return {
        "SLURM_PROCID": str(rank),
        "SLURM_LOCALID": str(rank),
        "SLURM_NODEID": "0",
        "SLURM_STEP_ID": "0",
        "SLURM_STEP_NUM_TASKS": "2",
        "SLURM_STEP_TASKS_PER_NODE": "2",
        "SLURM_STEP_NODELIST": "localhost",
        "SLURM_JOB_ID": "7",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29555",
    }


@pytest.mark.parametrize("rank", [0, 1])
def test_under_srun_only_the_first_task_reports_a_bad_config(tmp_path, capsys, tiny_corpus, monkeypatch, rank):
    for name, value in srun_task(rank).items():
        monkeypatch.setenv(name, value)
    code, err = run_main(capsys, "--config", recipe(tmp_path, tiny_corpus), "train.stepz=3")
    assert code == 2
    if rank == 0:
        assert err.startswith("error: train.stepz: unknown field") and len(err.splitlines()) == 1, err
    else:
        assert err == ""
    assert os.environ["RANK"] == str(rank)  # exported for the trainer's own rendezvous


def test_inconsistent_launch_environment_is_one_error_line(tmp_path, capsys, tiny_corpus, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, err = run_main(capsys, "--config", recipe(tmp_path, tiny_corpus))
    assert (code, err) == (
        2,
        "error: RANK/WORLD_SIZE are set but MASTER_ADDR is not; export MASTER_ADDR too "
        "(or start the job with torchrun, deepspeed, mpirun or srun)",
    )
