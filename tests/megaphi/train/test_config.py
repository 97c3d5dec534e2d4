"""The training schema (megaphi.train.config) loaded by megaphi.config: YAML + dotted overrides into typed
dataclasses, with one precise error per mistake."""

from dataclasses import dataclass, field

import pytest

from megaphi.config import ConfigError, config_from_dict, config_to_dict, load_config, parse_override
from megaphi.train.config import TrainConfig, TrainSection, plan_batches


def write(tmp_path, text: str):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_yaml_values_and_overrides_land_in_typed_fields(tmp_path):
    path = write(tmp_path, "run_dir: runs/x\noptim:\n  lr: 1e-3\n  decay: cosine\ntrain:\n  steps: 10\n")
    cfg = load_config(
        TrainConfig,
        path,
        [
            "train.steps=20",
            "optim.warmup_steps=5",
            "data.paths=[a, b]",
            "model.overrides.resid_pdrop=0.1",
            "checkpoint.init_from=null",
        ],
    )
    assert cfg.run_dir == "runs/x"
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.optim.lr, float)  # PyYAML reads "1e-3" as a string
    assert cfg.optim.decay == "cosine"
    assert cfg.train.steps == 20 and cfg.optim.warmup_steps == 5
    assert cfg.data.paths == ["a", "b"]
    assert load_config(TrainConfig, None, ["data.paths=[0.7, a, 0.3, b]"]).data.paths == ["0.7", "a", "0.3", "b"]
    assert cfg.model.overrides.changes() == {"resid_pdrop": 0.1}
    assert cfg.checkpoint.init_from is None
    assert cfg.train.precision == TrainSection().precision  # untouched fields keep their defaults


def test_config_round_trips_through_a_plain_dict(tmp_path):
    cfg = load_config(TrainConfig, None, ["train.steps=7", "data.paths=[p]", "model.overrides.hidden_size=64"])
    assert config_from_dict(TrainConfig, config_to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["optim.learning_rate=1"], "optim.learning_rate: unknown field"),
        (["trian.steps=1"], "trian: unknown field"),
        (["train.steps=ten"], "train.steps: expected int, got 'ten'"),
        (["train.steps=1.5"], "train.steps: expected int"),
        (["train.precision=fp8"], "train.precision: must be one of 'fp16', 'bf16', 'fp32'"),
        (["logging.tensorboard=maybe"], "logging.tensorboard: expected bool"),
        (["data.paths=prefix"], "data.paths: expected a list of str | float"),
        (["train.micro_batch_size=0"], "train.micro_batch_size: must be > 0"),
        (["optim.warmup_steps=500", "train.steps=100"], "optim.warmup_steps: 500 exceeds train.steps 100"),
        (["optim.min_lr=1", "optim.lr=0.1"], "optim.min_lr: 1.0 exceeds optim.lr 0.1"),
        (["train.steps.max=3"], "train.steps: expected int"),
        (["optim.lr"], "optim.lr: overrides look like section.field=value"),
        (["model.overrides.hidden=3"], "model.overrides.hidden: unknown field; model.overrides accepts "),
        (["model.overrides.hidden_size=wide"], "model.overrides.hidden_size: expected int | null, got 'wide'"),
        (
            ["optim.decay_steps=1", "optim.warmup_steps=2", "train.steps=10"],
            "optim.warmup_steps: 2 exceeds optim.decay_steps 1",
        ),
    ],
)
def test_each_mistake_is_one_error_naming_the_dotted_field(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(TrainConfig, None, overrides)
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_field_in_yaml_names_its_section(tmp_path):
    path = write(tmp_path, "train:\n  steps: 3\n  global_batch: 8\n")
    with pytest.raises(ConfigError, match=r"^train\.global_batch: unknown field; train accepts .*global_batch_size"):
        load_config(TrainConfig, path)


def test_missing_or_malformed_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="--config: no such file"):
        load_config(TrainConfig, tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(TrainConfig, write(tmp_path, "- a\n- b\n"))


def test_generic_dataclasses_nest_and_require_fields():
    @dataclass
    class Inner:
        name: str
        sizes: list[int] = field(default_factory=list)

    @dataclass
    class Outer:
        inner: Inner
        scale: float | None = None

    cfg = load_config(Outer, None, ["inner.name=x", "inner.sizes=[1, 2]", "scale=2"])
    assert cfg == Outer(Inner("x", [1, 2]), 2.0)
    with pytest.raises(ConfigError, match=r"^inner\.name: required field is missing"):
        load_config(Outer, None, ["scale=1"])
    with pytest.raises(ConfigError, match=r"^inner\.sizes\[1\]: expected int"):
        load_config(Outer, None, ["inner.name=x", "inner.sizes=[1, b]"])


def test_override_values_are_parsed_as_yaml():
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_override("a=null") == ("a", None)
    assert parse_override("a=x=y") == ("a", "x=y")


def test_batch_plan_derives_accumulation_from_global_micro_and_data_parallel_size():
    plan = plan_batches(TrainSection(global_batch_size=1024, micro_batch_size=16), data_parallel_size=8)
    assert (plan.gradient_accumulation_steps, plan.data_parallel_size) == (8, 8)
    explicit = TrainSection(global_batch_size=64, micro_batch_size=4, gradient_accumulation_steps=8)
    assert plan_batches(explicit, 2).gradient_accumulation_steps == 8


def test_batch_plan_that_does_not_divide_names_global_batch_size():
    with pytest.raises(
        ConfigError,
        match=r"^train\.global_batch_size: 10 is not divisible by micro_batch_size 4 x "
        r"data-parallel size 1 = 4",
    ):
        plan_batches(TrainSection(global_batch_size=10, micro_batch_size=4), 1)
    with pytest.raises(
        ConfigError,
        match=r"^train\.global_batch_size: 64 != micro_batch_size 4 x "
        r"gradient_accumulation_steps 4 x data-parallel size 2 = 32",
    ):
        plan_batches(TrainSection(global_batch_size=64, micro_batch_size=4, gradient_accumulation_steps=4), 2)


def test_shipped_recipes_load(tmp_path):
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[3]
    names = sorted(p.name for p in (root / "configs").glob("*.yaml"))
    assert {"phi1_pretrain.yaml", "phi1_finetune.yaml", "phi1_small_pretrain.yaml", "phi_tiny_cpu.yaml"} <= set(names)
    for name in names:
        load_config(TrainConfig, root / "configs" / name)
    pretrain = load_config(TrainConfig, root / "configs" / "phi1_pretrain.yaml")
    # The paper's recipe: effective batch 1024 x 2048 tokens, lr 1e-3, 750 warmup steps, wd 0.1, 36k steps, fp16.
    assert (
        pretrain.train.global_batch_size,
        pretrain.data.seq_len,
        pretrain.optim.lr,
        pretrain.optim.warmup_steps,
        pretrain.optim.weight_decay,
        pretrain.train.steps,
        pretrain.train.precision,
    ) == (1024, 2048, 1e-3, 750, 0.1, 36000, "fp16")
    assert plan_batches(pretrain.train, 8).gradient_accumulation_steps == 8
    finetune = load_config(TrainConfig, root / "configs" / "phi1_finetune.yaml")
    assert (
        finetune.train.global_batch_size,
        finetune.optim.lr,
        finetune.optim.warmup_steps,
        finetune.optim.weight_decay,
        finetune.train.steps,
    ) == (256, 1e-4, 50, 0.01, 6000)
    assert finetune.checkpoint.init_from
