import asyncio
import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import openai
import pytest
import torch
from aiohttp import web

from megaphi.backends import HFBackend, MegaphiBackend, load_backend
from megaphi.serve import FALLBACK_STOP, Server, build_server
from tests.megaphi.tiny_phi import make_hf_phi, make_tokenizer

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def running(app: web.Application):
    """Serves an aiohttp app on 127.0.0.1 from a background thread; yields the base URL."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def make_hf_gpt2(out_dir: Path) -> Path:
    """A random transformers GPT-2 (an architecture megaphi's model does not implement) with the tiny tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    make_tokenizer(out_dir)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=300, n_positions=256, bos_token_id=0, eos_token_id=0)
    )
    with torch.no_grad():  # larger than the default init, so that greedy text depends on the prompt
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
    model.save_pretrained(str(out_dir))
    return out_dir


def transformers_greedy(directory: Path, prompt: str, max_new_tokens: int) -> tuple[str, int]:
    """The oracle: transformers' own greedy ``generate`` on the source directory -> (text, new tokens before EOS)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32).eval()
    ids = torch.tensor([tokenizer.encode(prompt)])
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    new = [t for t in out[0, ids.shape[1] :].tolist() if t != tokenizer.eos_token_id]
    return tokenizer.decode(new), len(new)


@pytest.fixture(scope="module")
def phi_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tiny-phi")
    make_tokenizer(directory)
    make_hf_phi(directory, tokenizer_dir=directory, max_position_embeddings=256)
    return directory


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory) -> Path:
    return make_hf_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="module", params=["phi", "gpt2"])
def server(request):
    """The same server behaviour over both backends: megaphi's model (Phi) and transformers' (GPT-2)."""
    directory = request.getfixturevalue(f"{request.param}_dir")
    server = build_server(directory, model_name="tiny", batch_window_s=0.02)
    server.source_dir, server.kind = directory, request.param
    with running(server.app()) as base_url:
        server.base_url = base_url
        yield server


@pytest.fixture()
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=60)


def test_models_lists_the_served_model(client):
    (model,) = client.models.list().data
    assert model.id == "tiny" and model.owned_by == "megaphi"


def test_phi_runs_on_megaphis_model_and_other_architectures_on_transformers(server):
    assert type(server.backend) is {"phi": MegaphiBackend, "gpt2": HFBackend}[server.kind]


@pytest.mark.parametrize("prompt", ["def add(a, b):", "class Stack:"])
def test_greedy_completion_matches_transformers_greedy_generate(server, client, prompt):
    response = client.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=0)
    expected, new_tokens = transformers_greedy(server.source_dir, prompt, 12)
    (choice,) = response.choices
    assert choice.text == expected
    assert choice.finish_reason == ("length" if new_tokens == 12 else "stop")
    assert response.usage.prompt_tokens == len(server.tokenizer.encode(prompt))
    assert response.usage.completion_tokens == new_tokens


def test_a_seed_reproduces_samples_and_n_gives_n_choices(client):
    def sample(seed: int) -> list[str]:
        response = client.completions.create(
            model="tiny", prompt="for i in", max_tokens=10, temperature=1.0, n=3, seed=seed
        )
        assert [c.index for c in response.choices] == [0, 1, 2]
        return [c.text for c in response.choices]

    first = sample(7)
    assert sample(7) == first
    assert sample(8) != first
    assert len(set(first)) > 1, "n samples at temperature 1 differ from each other"


def test_a_seeded_request_gives_the_same_text_alone_or_batched_with_others(server, client):
    def texts(prompt, seed=7):
        response = client.completions.create(
            model="tiny", prompt=prompt, max_tokens=10, temperature=1.0, n=2, seed=seed
        )
        return [c.text for c in response.choices]

    alone = texts("for i in")
    # one request of two prompts: four rows in one pass
    assert texts(["for i in", "class Stack:"])[:2] == alone
    # concurrent requests, seeded and not, share the model's passes
    batches_before = server.batcher.stats.batches
    with ThreadPoolExecutor(4) as pool:
        runs = list(pool.map(texts, ["for i in", "def add(", "for i in", "x = "], [7, None, 7, 3]))
    assert server.batcher.stats.batches - batches_before < 4, "the requests shared at least one pass"
    assert runs[0] == runs[2] == alone


def test_the_transformers_backend_samples_a_seeded_row_like_megaphis_model(phi_dir):
    from megaphi.backends import load_hf_backend

    ours = load_backend(phi_dir)
    theirs = load_hf_backend(phi_dir, tokenizer=None, device="cpu", dtype=None, max_model_len=None)
    prompts = [ours.tokenizer.encode(p) for p in ["for i in", "class Stack:"]]
    kwargs = dict(max_new_tokens=10, temperature=1.0, top_p=0.9, seeds=[5, 6], is_done=None)
    sampled = ours.generate(prompts, **kwargs)
    assert theirs.generate(prompts, **kwargs) == sampled
    assert ours.generate(prompts[:1], **{**kwargs, "seeds": [5]}) == sampled[:1]
    assert ours.generate(prompts, **{**kwargs, "seeds": [6, 5]}) != sampled


def test_a_stop_sequence_cuts_the_text_and_finishes_with_stop(client):
    greedy = client.completions.create(model="tiny", prompt="class Stack:", max_tokens=24, temperature=0)
    text = greedy.choices[0].text
    # A printable piece from the middle of the greedy text (the random model also emits odd bytes).
    start = next(i for i in range(1, len(text) - 1) if text[i : i + 2].isprintable() and text[i : i + 2].isascii())
    stop = text[start : start + 2]
    cut = client.completions.create(model="tiny", prompt="class Stack:", max_tokens=24, temperature=0, stop=[stop])
    assert cut.choices[0].text == text[: text.find(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_chat_without_a_template_continues_a_plain_transcript(client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sort a list."}]
    chat = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0)
    plain = client.completions.create(
        model="tiny",
        prompt="System: Be brief.\nUser: Sort a list.\nAssistant:",
        max_tokens=10,
        temperature=0,
        stop=FALLBACK_STOP,
    )
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].message.content == plain.choices[0].text
    assert chat.object == "chat.completion" and chat.usage.total_tokens > 0


def test_concurrent_requests_share_a_batch_and_answer_as_if_alone(server, client):
    prompts = ["def fib(n):", "import math", "x = [", "print(", "for i in range(10):", "# sorts"]
    alone = [
        client.completions.create(model="tiny", prompt=p, max_tokens=8 + i, temperature=0).choices[0].text
        for i, p in enumerate(prompts)
    ]
    batches_before = server.batcher.stats.batches

    async def together() -> list[str]:
        async with openai.AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0) as aclient:
            responses = await asyncio.gather(
                *(
                    aclient.completions.create(model="tiny", prompt=p, max_tokens=8 + i, temperature=0)
                    for i, p in enumerate(prompts)
                )
            )
        return [r.choices[0].text for r in responses]

    assert asyncio.run(together()) == alone
    sizes = list(server.batcher.stats.requests_per_batch)[batches_before - server.batcher.stats.batches :]
    assert sum(sizes) == len(prompts) and max(sizes) > 1, sizes


@pytest.mark.parametrize(
    "call,status,param,code",
    [
        (lambda c: c.completions.create(model="gpt-4", prompt="x"), 404, "model", "model_not_found"),
        (lambda c: c.completions.create(model="tiny", prompt="x", temperature=3), 400, "temperature", None),
        (lambda c: c.completions.create(model="tiny", prompt="x", top_p=1.5), 400, "top_p", None),
        (lambda c: c.completions.create(model="tiny", prompt="x", n=0), 400, "n", None),
        (lambda c: c.completions.create(model="tiny", prompt="x", max_tokens=0), 400, "max_tokens", None),
        (
            lambda c: c.completions.create(model="tiny", prompt="x", max_tokens=10_000),
            400,
            "max_tokens",
            "context_length_exceeded",
        ),
        (lambda c: c.completions.create(model="tiny", prompt="x", stop=["a", "b", "c", "d", "e"]), 400, "stop", None),
        (lambda c: c.completions.create(model="tiny", prompt="x", stream=True), 400, "stream", None),
        (lambda c: c.completions.create(model="tiny", prompt="", max_tokens=2), 400, "prompt", None),
        (lambda c: c.completions.create(model="tiny", prompt="x", extra_body={"bogus": 1}), 400, "bogus", None),
        (lambda c: c.chat.completions.create(model="tiny", messages=[]), 400, "messages", None),
        (
            lambda c: c.chat.completions.create(model="tiny", messages=[{"role": "robot", "content": "hi"}]),
            400,
            "messages[0]",
            None,
        ),
    ],
    ids=[
        "unknown-model",
        "temperature",
        "top_p",
        "n",
        "max_tokens",
        "context",
        "stop",
        "stream",
        "empty-prompt",
        "unknown-argument",
        "no-messages",
        "bad-role",
    ],
)
def test_bad_requests_get_openai_shaped_errors(client, call, status, param, code):
    with pytest.raises(openai.APIStatusError) as caught:
        call(client)
    error = caught.value
    assert error.status_code == status and error.param == param and error.code == code
    assert error.type == "invalid_request_error" and param.split("[")[0] in error.message


@pytest.mark.parametrize(
    "path,data,status,message",
    [
        ("/completions", b"{not json", 400, "could not parse the JSON body"),
        ("/completions", json.dumps({"model": "tiny"}).encode(), 400, "Missing required parameter: 'prompt'"),
        ("/chat/completions", json.dumps({"prompt": "x"}).encode(), 400, "you must provide a model"),
        ("/embeddings", json.dumps({"model": "tiny"}).encode(), 404, "Not Found"),
    ],
)
def test_raw_bad_requests_are_json_errors_too(server, path, data, status, message):
    request = urllib.request.Request(server.base_url + path, data=data, headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    assert caught.value.code == status
    error = json.loads(caught.value.read())["error"]
    assert message in error["message"] and set(error) == {"message", "type", "param", "code"}


@pytest.mark.slow
def test_cli_refuses_a_directory_that_is_no_model_with_one_error_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "megaphi.serve", "--model", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {tmp_path} is neither a megaphi checkpoint")
    assert result.stderr.count("\n") == 1


@pytest.mark.slow
def test_cli_on_a_port_in_use_says_so_in_one_error_line(phi_dir):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "megaphi.serve", "--model", str(phi_dir), "--port", str(port)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines()[-1] == (f"error: port {port} on 127.0.0.1 is already in use: pass another --port")
    assert "Traceback" not in result.stderr


def test_a_megaphi_checkpoint_serves_the_same_text_as_its_hf_source(phi_dir, tmp_path):
    from megaphi.convert.conversions import convert_from_hf

    checkpoint = convert_from_hf(phi_dir, tmp_path / "ckpt", tensor_parallel_size=2)
    converted = build_server(checkpoint, model_name="tiny")
    assert isinstance(converted.backend, MegaphiBackend)
    with running(converted.app()) as base_url:
        other = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60)
        served = other.completions.create(model="tiny", prompt="def fib(n):", max_tokens=10, temperature=0)
    assert served.choices[0].text == transformers_greedy(phi_dir, "def fib(n):", 10)[0]


def test_a_directory_that_is_neither_a_checkpoint_nor_a_hf_model_is_refused(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="neither a megaphi checkpoint .* nor a Hugging Face model directory"):
        build_server(tmp_path)


def test_a_hf_model_without_a_causal_lm_head_is_refused(tmp_path):
    from transformers import T5Config

    T5Config(d_model=32, d_ff=64, num_layers=1, num_heads=2).save_pretrained(str(tmp_path))  # encoder-decoder
    with pytest.raises(ValueError, match="'t5' model, which transformers has no causal-LM class for"):
        build_server(tmp_path)


def test_max_model_len_caps_the_context_and_may_not_exceed_the_models(gpt2_dir):
    assert load_backend(gpt2_dir, max_model_len=32).context == 32
    with pytest.raises(ValueError, match="max_model_len 512 exceeds the model's context length 256"):
        load_backend(gpt2_dir, max_model_len=512)


def test_chat_uses_a_given_chat_template(server, client):
    template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}<assistant>"
    templated = Server(server.backend, "tiny", chat_template=template)
    with running(templated.app()) as base_url:
        other = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60)
        chat = other.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=8, temperature=0
        )
    plain = client.completions.create(model="tiny", prompt="<user>hi\n<assistant>", max_tokens=8, temperature=0)
    assert chat.choices[0].message.content == plain.choices[0].text


def test_chat_uses_the_tokenizer_directorys_own_template_with_its_special_tokens(phi_dir, tmp_path):
    import shutil

    directory = tmp_path / "with-template"
    shutil.copytree(phi_dir, directory)
    config = json.loads((directory / "tokenizer_config.json").read_text())
    config["chat_template"] = (
        "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}{{ eos_token }}[assistant]"
    )
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    server = build_server(directory, model_name="t")
    assert server.render_chat([{"role": "user", "content": "hi"}]) == ("[user] hi\n<|endoftext|>[assistant]", [])
