import asyncio
import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import openai
import pytest
from aiohttp import web

from megaphi.generate import generate
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


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tiny-phi")
    make_tokenizer(directory)
    make_hf_phi(directory, tokenizer_dir=directory, max_position_embeddings=256)
    return directory


@pytest.fixture(scope="module")
def server(model_dir):
    server = build_server(model_dir, model_name="tiny", batch_window_s=0.02)
    with running(server.app()) as base_url:
        server.base_url = base_url
        yield server


@pytest.fixture()
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=60)


def test_models_lists_the_served_model(client):
    (model,) = client.models.list().data
    assert model.id == "tiny" and model.owned_by == "megaphi"


def test_greedy_completion_matches_megaphi_generate(server, client):
    response = client.completions.create(model="tiny", prompt="def add(a, b):", max_tokens=12, temperature=0)
    (expected,) = generate(server.model, server.tokenizer, ["def add(a, b):"], max_new_tokens=12)
    (choice,) = response.choices
    assert choice.text == expected[0] and choice.finish_reason == "length"
    assert response.usage.prompt_tokens == len(server.tokenizer.encode("def add(a, b):"))
    assert response.usage.completion_tokens == 12


def test_a_seed_reproduces_samples_and_n_gives_n_choices(client):
    def sample(seed: int) -> list[str]:
        response = client.completions.create(model="tiny", prompt="for i in", max_tokens=10, temperature=1.0,
                                             n=3, seed=seed)
        assert [c.index for c in response.choices] == [0, 1, 2]
        return [c.text for c in response.choices]

    first = sample(7)
    assert sample(7) == first
    assert sample(8) != first
    assert len(set(first)) > 1, "n samples at temperature 1 differ from each other"


def test_a_stop_sequence_cuts_the_text_and_finishes_with_stop(client):
    greedy = client.completions.create(model="tiny", prompt="class Stack:", max_tokens=24, temperature=0)
    text = greedy.choices[0].text
    # A printable piece from the middle of the greedy text (the random model also emits odd bytes).
    start = next(i for i in range(1, len(text) - 1) if text[i:i + 2].isprintable() and text[i:i + 2].isascii())
    stop = text[start:start + 2]
    cut = client.completions.create(model="tiny", prompt="class Stack:", max_tokens=24, temperature=0, stop=[stop])
    assert cut.choices[0].text == text[: text.find(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_chat_without_a_template_continues_a_plain_transcript(client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sort a list."}]
    chat = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0)
    plain = client.completions.create(model="tiny", prompt="System: Be brief.\nUser: Sort a list.\nAssistant:",
                                      max_tokens=10, temperature=0, stop=FALLBACK_STOP)
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].message.content == plain.choices[0].text
    assert chat.object == "chat.completion" and chat.usage.total_tokens > 0


def test_concurrent_requests_share_a_batch_and_answer_as_if_alone(server, client):
    prompts = ["def fib(n):", "import math", "x = [", "print(", "for i in range(10):", "# sorts"]
    alone = [client.completions.create(model="tiny", prompt=p, max_tokens=8 + i, temperature=0).choices[0].text
             for i, p in enumerate(prompts)]
    batches_before = server.batcher.stats.batches

    async def together() -> list[str]:
        async with openai.AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0) as aclient:
            responses = await asyncio.gather(*(
                aclient.completions.create(model="tiny", prompt=p, max_tokens=8 + i, temperature=0)
                for i, p in enumerate(prompts)))
        return [r.choices[0].text for r in responses]

    assert asyncio.run(together()) == alone
    sizes = list(server.batcher.stats.requests_per_batch)[batches_before - server.batcher.stats.batches:]
    assert sum(sizes) == len(prompts) and max(sizes) > 1, sizes


@pytest.mark.parametrize("call,status,param,code", [
    (lambda c: c.completions.create(model="gpt-4", prompt="x"), 404, "model", "model_not_found"),
    (lambda c: c.completions.create(model="tiny", prompt="x", temperature=3), 400, "temperature", None),
    (lambda c: c.completions.create(model="tiny", prompt="x", top_p=1.5), 400, "top_p", None),
    (lambda c: c.completions.create(model="tiny", prompt="x", n=0), 400, "n", None),
    (lambda c: c.completions.create(model="tiny", prompt="x", max_tokens=0), 400, "max_tokens", None),
    (lambda c: c.completions.create(model="tiny", prompt="x", max_tokens=10_000), 400, "max_tokens",
     "context_length_exceeded"),
    (lambda c: c.completions.create(model="tiny", prompt="x", stop=["a", "b", "c", "d", "e"]), 400, "stop", None),
    (lambda c: c.completions.create(model="tiny", prompt="x", stream=True), 400, "stream", None),
    (lambda c: c.completions.create(model="tiny", prompt="", max_tokens=2), 400, "prompt", None),
    (lambda c: c.completions.create(model="tiny", prompt="x", extra_body={"bogus": 1}), 400, "bogus", None),
    (lambda c: c.chat.completions.create(model="tiny", messages=[]), 400, "messages", None),
    (lambda c: c.chat.completions.create(model="tiny", messages=[{"role": "robot", "content": "hi"}]), 400,
     "messages[0]", None),
], ids=["unknown-model", "temperature", "top_p", "n", "max_tokens", "context", "stop", "stream", "empty-prompt",
        "unknown-argument", "no-messages", "bad-role"])
def test_bad_requests_get_openai_shaped_errors(client, call, status, param, code):
    with pytest.raises(openai.APIStatusError) as caught:
        call(client)
    error = caught.value
    assert error.status_code == status and error.param == param and error.code == code
    assert error.type == "invalid_request_error" and param.split("[")[0] in error.message


@pytest.mark.parametrize("path,data,status,message", [
    ("/completions", b"{not json", 400, "could not parse the JSON body"),
    ("/completions", json.dumps({"model": "tiny"}).encode(), 400, "Missing required parameter: 'prompt'"),
    ("/chat/completions", json.dumps({"prompt": "x"}).encode(), 400, "you must provide a model"),
    ("/embeddings", json.dumps({"model": "tiny"}).encode(), 404, "Not Found"),
])
def test_raw_bad_requests_are_json_errors_too(server, path, data, status, message):
    request = urllib.request.Request(server.base_url + path, data=data, headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    assert caught.value.code == status
    error = json.loads(caught.value.read())["error"]
    assert message in error["message"] and set(error) == {"message", "type", "param", "code"}


@pytest.mark.slow
def test_cli_refuses_a_missing_model_with_one_error_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "megaphi.serve", "--model", str(tmp_path / "nothing")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and str(tmp_path / "nothing") in result.stderr


def test_a_megaphi_checkpoint_serves_the_same_text_as_its_hf_source(model_dir, client, tmp_path):
    from megaphi.convert.conversions import convert_from_hf

    checkpoint = convert_from_hf(model_dir, tmp_path / "ckpt", tensor_parallel_size=2)
    converted = build_server(checkpoint, model_name="tiny")
    with running(converted.app()) as base_url:
        other = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60)
        served = other.completions.create(model="tiny", prompt="def fib(n):", max_tokens=10, temperature=0)
    original = client.completions.create(model="tiny", prompt="def fib(n):", max_tokens=10, temperature=0)
    assert served.choices[0].text == original.choices[0].text


def test_chat_uses_a_given_chat_template(server, client):
    template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}<assistant>"
    templated = Server(server.model, server.tokenizer, "tiny", chat_template=template)
    with running(templated.app()) as base_url:
        other = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60)
        chat = other.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                             max_tokens=8, temperature=0)
    plain = client.completions.create(model="tiny", prompt="<user>hi\n<assistant>", max_tokens=8, temperature=0)
    assert chat.choices[0].message.content == plain.choices[0].text
