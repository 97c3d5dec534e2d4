"""Generation with the KV cache matches transformers' generate, batches left-padded prompts, samples reproducibly."""

import json

import pytest

from megaphi.convert import convert_from_hf
from megaphi.generate import generate, generate_tokens, load_model, main as generate_main
from tests.megaphi.tiny_phi import make_hf_phi, make_tokenizer

PROMPTS = ["def fib(n):\n    if n < 2:\n        return n\n", "class Stack:\n", "for i in range(10):\n    print("]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    tokenizer = make_tokenizer(tmp_path_factory.mktemp("tokenizer"))
    path = tmp_path_factory.mktemp("hf")
    make_hf_phi(path, tokenizer_dir=tokenizer, seed=3)
    return path


@pytest.fixture(scope="module")
def reference(hf_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(hf_dir), padding_side="left")
    tokenizer.pad_token = tokenizer.eos_token
    return AutoModelForCausalLM.from_pretrained(str(hf_dir)).eval(), tokenizer


@pytest.fixture(scope="module")
def megaphi_tp2(hf_dir, tmp_path_factory):
    """The reference model converted at tensor parallel size 2, loaded (shards merged) for one process."""
    path = tmp_path_factory.mktemp("ckpt") / "tp2"
    convert_from_hf(hf_dir, path, tensor_parallel_size=2)
    return load_model(path)


def transformers_greedy(reference, prompts, max_new_tokens):
    model, tokenizer = reference
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    rows = out[:, batch.input_ids.shape[1] :].tolist()
    eos = tokenizer.eos_token_id
    return [row[: row.index(eos)] if eos in row else row for row in rows]


@pytest.mark.parametrize("prompts", [PROMPTS[:1], PROMPTS], ids=["one prompt", "left-padded batch"])
def test_greedy_tokens_equal_transformers_generate(reference, megaphi_tp2, prompts):
    model, tokenizer = megaphi_tp2
    ours = generate_tokens(model, [tokenizer.encode(p) for p in prompts], max_new_tokens=24, eos_id=tokenizer.eod_id)
    theirs = transformers_greedy(reference, prompts, 24)
    assert len({len(tokenizer.encode(p)) for p in prompts}) == len(prompts)  # really different lengths
    assert ours == theirs
    assert all(len(row) > 0 for row in ours)


def test_a_prompt_completes_the_same_alone_and_in_any_batch(megaphi_tp2):
    model, tokenizer = megaphi_tp2
    batched = generate(model, tokenizer, PROMPTS, max_new_tokens=16, batch_size=3)
    alone = [generate(model, tokenizer, [p], max_new_tokens=16)[0] for p in PROMPTS]
    assert batched == alone
    assert [len(c) for c in batched] == [1, 1, 1]


def test_an_hf_directory_and_its_megaphi_checkpoint_generate_the_same_text(hf_dir, reference, megaphi_tp2):
    hf_model, hf_tokenizer = load_model(hf_dir)
    from_hf = generate(hf_model, hf_tokenizer, PROMPTS, max_new_tokens=16)
    assert from_hf == generate(*megaphi_tp2, PROMPTS, max_new_tokens=16)
    _, tokenizer = reference
    assert from_hf == [[tokenizer.decode(ids)] for ids in transformers_greedy(reference, PROMPTS, 16)]


def test_stop_sequences_cut_the_completion_before_the_earliest_one(megaphi_tp2):
    model, tokenizer = megaphi_tp2
    ((full,),) = generate(model, tokenizer, PROMPTS[:1], max_new_tokens=24)
    stops = [full[12:15], full[6:8]]
    ((cut,),) = generate(model, tokenizer, PROMPTS[:1], max_new_tokens=24, stop=stops)
    assert cut == full[: min(full.find(s) for s in stops)]
    assert not any(s in cut for s in stops) and len(cut) < len(full)


def test_end_of_text_ends_a_row_and_is_not_returned(megaphi_tp2):
    model, tokenizer = megaphi_tp2
    ids = tokenizer.encode(PROMPTS[1])
    (free,) = generate_tokens(model, [ids], max_new_tokens=12)
    (ended,) = generate_tokens(model, [ids], max_new_tokens=12, eos_id=free[4])
    assert ended == free[: free.index(free[4])]


def test_n_samples_with_a_seed_are_reproducible_and_differ_from_another_seed(megaphi_tp2):
    model, tokenizer = megaphi_tp2
    kwargs = dict(max_new_tokens=12, temperature=1.0, top_p=0.95, n=3)
    first = generate(model, tokenizer, PROMPTS[:2], seed=7, **kwargs)
    assert first == generate(model, tokenizer, PROMPTS[:2], seed=7, **kwargs)
    assert [len(samples) for samples in first] == [3, 3]
    assert len(set(first[0])) > 1  # the n samples of one prompt are not copies
    assert first != generate(model, tokenizer, PROMPTS[:2], seed=8, **kwargs)


def test_a_seeded_sample_is_the_same_alone_in_any_batch_size_and_next_to_other_prompts(megaphi_tp2):
    model, tokenizer = megaphi_tp2
    kwargs = dict(max_new_tokens=12, temperature=1.0, top_p=0.95, n=3, seed=11)
    together = generate(model, tokenizer, PROMPTS, batch_size=9, **kwargs)
    assert generate(model, tokenizer, PROMPTS, batch_size=1, **kwargs) == together
    assert generate(model, tokenizer, PROMPTS, batch_size=4, **kwargs) == together
    alone = [generate(model, tokenizer, [p], **kwargs)[0] for p in PROMPTS]
    assert alone == together
    # fewer samples are the first of more: sample j has its own stream
    assert generate(model, tokenizer, PROMPTS[:1], **{**kwargs, "n": 1})[0] == together[0][:1]


def test_a_tiny_top_p_keeps_only_the_most_likely_token(megaphi_tp2):
    model, tokenizer = megaphi_tp2
    greedy = generate(model, tokenizer, PROMPTS, max_new_tokens=10)
    assert generate(model, tokenizer, PROMPTS, max_new_tokens=10, temperature=0.8, top_p=1e-6, seed=0) == greedy


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompts=["x"], temperature=-1.0), "temperature must be >= 0"),
        (dict(prompts=["x"], top_p=0.0), r"top_p must be in \(0, 1\]"),
        (dict(prompts=["x"], n=0), "n must be >= 1"),
        (dict(prompts="x"), "prompts must be a list of strings"),
        (dict(prompts=["x", ""], max_new_tokens=8), "prompt 1 is empty"),
        (
            dict(prompts=["x" * 200], max_new_tokens=8),
            "prompt 0 has 200 tokens; with max_new_tokens 8 it exceeds max_position_embeddings 128",
        ),
    ],
)
def test_bad_arguments_are_refused_with_one_clear_message(megaphi_tp2, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(*megaphi_tp2, **kwargs)


def test_the_generate_cli_prints_completions_as_json_lines(hf_dir, capsys):
    assert (
        generate_main(["--model", str(hf_dir), "--prompt", "def add(", "--prompt", "x", "--max-new-tokens", "4"]) == 0
    )
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["prompt"] for line in lines] == ["def add(", "x"]
    assert all(len(line["completions"]) == 1 for line in lines)
