"""An OpenAI-compatible HTTP server over a megaphi checkpoint or any Hugging Face causal-LM directory.

    python -m megaphi.serve --model runs/x/checkpoints --port 8000
    python -m megaphi.serve --model ~/models/Qwen2.5-Coder-7B-Instruct --device cuda --port 8000
    # then any OpenAI client: OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="EMPTY")

Endpoints: GET /v1/models, POST /v1/completions, POST /v1/chat/completions (and GET /health).
Parameters: max_tokens, temperature, top_p, n, stop, seed; errors come back in OpenAI's JSON shape
({"error": {"message", "type", "param", "code"}}) with the status OpenAI would use.

Concurrent requests are batched (megaphi.batcher): requests that can share a decoding pass run as
one batch, and a seeded request gives the same text whatever else is in flight. This module is the
HTTP layer: routes, response envelopes, the command; which requests are valid is
megaphi.openai_requests.

megaphi checkpoints and Hugging Face Phi directories run on megaphi's own model (KV cache, tensor
parallelism); any other causal LM (GPT-2, Llama, Qwen, CodeGen, ...) runs on transformers' ``generate``.
The batching is the same for both: see megaphi.backends.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Awaitable, Callable

from aiohttp import web

from megaphi.backends import Backend, load_backend
from megaphi.batcher import Batcher, Completion
from megaphi.common.cli import entry_point
from megaphi.common.errors import UserError
from megaphi.openai_requests import (
    CHAT_PARAMETERS,
    COMPLETION_PARAMETERS,
    RequestError,
    check_parameters,
    parse_sampling,
)

log = logging.getLogger("megaphi.serve")

# For tokenizers without a chat template: a plain transcript, and stops that end the assistant's turn.
FALLBACK_ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}
FALLBACK_STOP = ["\nUser:", "\nSystem:"]


# ---------------------------------------------------------------------------------------------
# The application


class Server:
    def __init__(
        self,
        backend: Backend,
        model_name: str,
        *,
        chat_template: str | None = None,
        max_batch_rows: int = 16,
        batch_window_s: float = 0.005,
    ):
        self.backend, self.tokenizer, self.model_name = backend, backend.tokenizer, model_name
        self.chat_template = chat_template or self.tokenizer.chat_template
        self.context = backend.context
        self.created = int(time.time())
        self.batcher = Batcher(backend, max_batch_rows=max_batch_rows, window_s=batch_window_s)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors], client_max_size=16 * 1024 * 1024)
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    async def _start(self, app: web.Application) -> None:
        self.batcher.start()

    async def _stop(self, app: web.Application) -> None:
        await self.batcher.stop()

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except RequestError as exc:
            return exc.response()
        except web.HTTPException as exc:  # unknown route, wrong method: still OpenAI-shaped
            return RequestError(
                f"{request.method} {request.path}: {exc.reason}", status=exc.status, code=None
            ).response()
        except Exception as exc:  # noqa: BLE001 - the client gets a 500 in the usual shape, we log it
            log.exception("request failed")
            return RequestError(
                f"internal error: {type(exc).__name__}: {exc}", status=500, kind="server_error"
            ).response()

    async def _body(self, request: web.Request, allowed: set[str]) -> dict:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RequestError("We could not parse the JSON body of your request: send valid JSON") from None
        if not isinstance(body, dict):
            raise RequestError("The request body must be a JSON object")
        model = body.get("model")
        if not model:
            raise RequestError("you must provide a model parameter", "model")
        if model != self.model_name:
            raise RequestError(
                f"The model `{model}` does not exist; this server serves `{self.model_name}`",
                "model",
                status=404,
                code="model_not_found",
            )
        check_parameters(body, allowed)
        return body

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {
                        "id": self.model_name,
                        "object": "model",
                        "created": self.created,
                        "owned_by": "megaphi",
                        "max_model_len": self.context,
                    }
                ],
            }
        )

    async def completions(self, request: web.Request) -> web.Response:
        body = await self._body(request, COMPLETION_PARAMETERS)
        prompt = body.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p for p in prompts):
            raise RequestError("Missing required parameter: 'prompt' (a non-empty string or list of strings)", "prompt")
        encoded = [self.tokenizer.encode(p) for p in prompts]
        sampling = parse_sampling(body, max(len(ids) for ids in encoded), self.context, default_max_tokens=16)
        results = await self.batcher.submit(encoded, sampling)
        choices = [
            {"index": i * sampling.n + j, "text": c.text, "finish_reason": c.finish_reason, "logprobs": None}
            for i, per_prompt in enumerate(results)
            for j, c in enumerate(per_prompt)
        ]
        return web.json_response(self._envelope("cmpl", "text_completion", choices, encoded, results))

    async def chat_completions(self, request: web.Request) -> web.Response:
        body = await self._body(request, CHAT_PARAMETERS)
        prompt, extra_stop = self.render_chat(body.get("messages"))
        encoded = [self.tokenizer.encode(prompt)]
        name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
        sampling = parse_sampling(body, len(encoded[0]), self.context, default_max_tokens=None, max_tokens_name=name)
        sampling.stop = sampling.stop + [s for s in extra_stop if s not in sampling.stop]
        (per_prompt,) = results = await self.batcher.submit(encoded, sampling)
        choices = [
            {
                "index": j,
                "message": {"role": "assistant", "content": c.text},
                "finish_reason": c.finish_reason,
                "logprobs": None,
            }
            for j, c in enumerate(per_prompt)
        ]
        return web.json_response(self._envelope("chatcmpl", "chat.completion", choices, encoded, results))

    def render_chat(self, messages: Any) -> tuple[str, list[str]]:
        """The prompt text for a conversation, and any stops that end the assistant's turn."""
        if not isinstance(messages, list) or not messages:
            raise RequestError("Missing required parameter: 'messages' (a non-empty list)", "messages")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in FALLBACK_ROLES or not isinstance(m.get("content"), str):
                raise RequestError(
                    f"messages[{i}] must be an object with a 'role' "
                    f"({', '.join(FALLBACK_ROLES)}) and a string 'content'",
                    f"messages[{i}]",
                )
        if self.chat_template:
            # transformers' own renderer (the sandboxed Jinja environment apply_chat_template uses); the
            # text is then encoded like any prompt, through the one tokenizer.
            from transformers.utils.chat_template_utils import render_jinja_template

            # transformers annotates the (texts, generation indices) pair it returns as a str
            (text,), _ = render_jinja_template(  # type: ignore[str-unpack]
                conversations=[messages],
                chat_template=self.chat_template,
                add_generation_prompt=True,
                **self.tokenizer.special_tokens,
            )
            return text, []
        # Base models (phi-1 among them) have no template: a plain transcript the model can continue.
        turns = "".join(f"{FALLBACK_ROLES[m['role']]}: {m['content']}\n" for m in messages)
        return f"{turns}Assistant:", FALLBACK_STOP

    def _envelope(
        self, prefix: str, kind: str, choices: list, encoded: list[list[int]], results: list[list[Completion]]
    ) -> dict:
        completion_tokens = sum(c.tokens for per_prompt in results for c in per_prompt)
        prompt_tokens = sum(len(ids) for ids in encoded)
        return {
            "id": f"{prefix}-{uuid.uuid4().hex}",
            "object": kind,
            "created": int(time.time()),
            "model": self.model_name,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }


def build_server(
    model_path: str | Path,
    *,
    tokenizer: str | None = None,
    model_name: str | None = None,
    device: str = "cpu",
    chat_template: str | None = None,
    max_batch_rows: int = 16,
    batch_window_s: float = 0.005,
    max_model_len: int | None = None,
) -> Server:
    """Loads the model through megaphi.backends.load_backend and wraps it in a Server."""
    if max_batch_rows < 1:
        raise UserError(f"max_batch_rows must be at least 1, got {max_batch_rows}")
    backend = load_backend(model_path, device=device, tokenizer=tokenizer, max_model_len=max_model_len)
    name = model_name or Path(model_path).resolve().name
    return Server(
        backend, name, chat_template=chat_template, max_batch_rows=max_batch_rows, batch_window_s=batch_window_s
    )


@entry_point
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m megaphi.serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        required=True,
        help="megaphi checkpoint (tag dir or root) or Hugging Face "
        "causal-LM directory (Phi runs on megaphi's model, others on transformers)",
    )
    parser.add_argument("--tokenizer", help="tokenizer directory (default: the checkpoint's)")
    parser.add_argument("--served-model-name", help="the model id clients send (default: the directory name)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--chat-template",
        help="a Jinja chat template file (default: the tokenizer's, else a plain 'User: ... Assistant:' transcript)",
    )
    parser.add_argument("--max-batch-size", type=int, default=16, help="most sequences decoded together")
    parser.add_argument("--batch-window-ms", type=float, default=5.0, help="wait this long to gather a batch")
    parser.add_argument(
        "--max-model-len", type=int, help="most tokens of prompt plus completion (default: the model's context length)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    template = None
    if args.chat_template:
        path = Path(args.chat_template)
        if not path.is_file():
            raise UserError(f"chat template {path} does not exist")
        template = path.read_text()
    server = build_server(
        args.model,
        tokenizer=args.tokenizer,
        model_name=args.served_model_name,
        device=args.device,
        chat_template=template,
        max_batch_rows=args.max_batch_size,
        batch_window_s=args.batch_window_ms / 1000,
        max_model_len=args.max_model_len,
    )
    print(f"serving {server.model_name} on http://{args.host}:{args.port}/v1", flush=True)
    try:
        web.run_app(server.app(), host=args.host, port=args.port, print=None)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise UserError(f"port {args.port} on {args.host} is already in use: pass another --port") from None
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
