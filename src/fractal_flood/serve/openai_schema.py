"""Request bodies of the OpenAI-style API, checked by hand into engine requests.

Checked here rather than by a schema library so every mistake gets the same OpenAI-shaped
answer (``{"error": {"message", "type", "param", "code"}}``) with the parameter named, and
so NaN, booleans posing as numbers and out-of-range values are refused, not coerced.

Units: ``max_tokens`` counts roots, the manager's tokens (about 1.2 chunks, 3 characters
each); ``max_chars`` (an extension) bounds characters. The chat endpoint writes the
conversation in the corpus's dialogue format (``Speaker:\\ntext\\n\\n``) and lets the
model speak the next turn, which ends at a blank line.
"""

from __future__ import annotations

import json
import math
import secrets
from dataclasses import dataclass
from typing import Optional

from ..generation.engine import Request
from ..render.base import DecodeOptions
from ..render.decoders import DECODERS
from ..sampling.tokens import SamplingConfig

DEFAULT_MAX_TOKENS = 64
MAX_STOP = 4
USER_SPEAKER, ASSISTANT_SPEAKER = "First Citizen", "Second Citizen"  # speakers of the corpus
TURN_END = "\n\n"


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                 kind: str = "invalid_request_error", headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class Limits:
    max_prompt_chars: int = 20_000
    max_tokens: int = 4096  # roots per request
    max_chars: int = 20_000


@dataclass
class Parsed:
    request: Request
    stream: bool
    model: Optional[str]
    seed_given: bool


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def parse_json(raw: bytes) -> dict:
    try:
        body = json.loads(raw, parse_constant=_reject_constant)  # no NaN / Infinity
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object", code="invalid_json")
    return body


def _number(body: dict, name: str, lo: float, hi: float, default, lo_open: bool = False):
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ApiError(400, f"{name} must be a number, got {json.dumps(v)}", name, "invalid_type")
    if v < lo or v > hi or (lo_open and v == lo):
        bracket = "(" if lo_open else "["
        raise ApiError(400, f"{name} must be in {bracket}{lo}, {hi}], got {v}", name, "out_of_range")
    return v


def _integer(body: dict, name: str, lo: int, hi: int, default):
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        raise ApiError(400, f"{name} must be an integer, got {json.dumps(v)}", name, "invalid_type")
    if not lo <= v <= hi:
        raise ApiError(400, f"{name} must be in [{lo}, {hi}], got {v}", name, "out_of_range")
    return v


def _stop(body: dict) -> tuple:
    v = body.get("stop")
    if v is None:
        return ()
    stops = [v] if isinstance(v, str) else v
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise ApiError(400, "stop must be a non-empty string or a list of them", "stop", "invalid_type")
    if len(stops) > MAX_STOP:
        raise ApiError(400, f"at most {MAX_STOP} stop strings, got {len(stops)}", "stop", "out_of_range")
    return tuple(stops)


def _common(body: dict, prompt: str, limits: Limits, alphabet: str, extra_stop: tuple = (),
            param: str = "prompt") -> Parsed:
    if len(prompt) > limits.max_prompt_chars:
        raise ApiError(400, f"the prompt has {len(prompt)} characters; this server takes at most "
                            f"{limits.max_prompt_chars}", param, "context_length_exceeded")
    _check_chars(prompt, alphabet, param)
    _integer(body, "n", 1, 1, 1)  # one choice per request
    for unsupported in ("logprobs", "best_of", "echo", "suffix", "tools", "functions"):
        if body.get(unsupported) not in (None, False, 1 if unsupported == "best_of" else None):
            raise ApiError(400, f"{unsupported} is not supported by this server", unsupported, "unsupported")
    max_tokens = _integer(body, "max_tokens", 1, limits.max_tokens, None)
    if max_tokens is None:
        max_tokens = _integer(body, "max_completion_tokens", 1, limits.max_tokens, None)
    max_chars = _integer(body, "max_chars", 1, limits.max_chars, None)
    if max_tokens is None and max_chars is None:
        max_tokens = DEFAULT_MAX_TOKENS
    temperature = _number(body, "temperature", 0, 2, 1.0)
    top_p = _number(body, "top_p", 0, 1, None, lo_open=True)
    top_k = _integer(body, "top_k", 1, 1 << 20, None)
    seed = _integer(body, "seed", 0, 2 ** 63 - 1, None)
    stop = _stop(body) + extra_stop
    for s in stop:
        _check_chars(s, alphabet, "stop")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "stream must be true or false", "stream", "invalid_type")
    decoder = body.get("decoder")
    if decoder is not None and decoder not in DECODERS:
        raise ApiError(400, f"decoder must be one of {', '.join(DECODERS)}, got {json.dumps(decoder)}",
                       "decoder", "invalid_value")
    k = _integer(body, "k", 1, 64, None)
    threshold = _number(body, "threshold", -1e6, 1e6, None)
    options = None
    if k is not None or threshold is not None:
        options = DecodeOptions(k=k or 1, threshold=0.5 if threshold is None else threshold)
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(400, "model must be a string", "model", "invalid_type")
    req = Request(prompt, roots=max_tokens, max_chars=max_chars,
                  sampling=SamplingConfig(temperature, top_k, top_p),
                  seed=seed if seed is not None else secrets.randbelow(2 ** 32), stop=stop,
                  decoder=decoder, options=options)
    return Parsed(req, stream, model, seed is not None)


def _check_chars(text: str, alphabet: str, param: str) -> None:
    known = set(alphabet)
    for i, c in enumerate(text):
        if c not in known:
            raise ApiError(400, f"unknown character {c!r} (U+{ord(c):04X}) at position {i} of {param}: "
                                "it is not in the model's alphabet", param, "unknown_character")


def parse_completion(body: dict, limits: Limits, alphabet: str) -> Parsed:
    prompt = body.get("prompt", "")
    if isinstance(prompt, list):
        if len(prompt) != 1 or not isinstance(prompt[0], str):
            raise ApiError(400, "prompt must be a string (or a list of exactly one string)", "prompt",
                           "invalid_type")
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ApiError(400, "prompt must be a string", "prompt", "invalid_type")
    return _common(body, prompt, limits, alphabet)


def chat_prompt(messages, alphabet: str) -> str:
    """Messages -> the corpus's dialogue: 'Speaker:\\ntext\\n\\n' per turn, then the
    assistant's speaker line. A message's ``name`` is its speaker; system text leads."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list", "messages", "invalid_type")
    parts = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "developer", "user", "assistant"):
            raise ApiError(400, f"messages[{i}] must be an object with role system, user or assistant",
                           f"messages[{i}]", "invalid_type")
        content = m.get("content", "")
        if isinstance(content, list):  # text parts
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise ApiError(400, f"messages[{i}].content: only text parts are supported",
                               f"messages[{i}].content", "invalid_type")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{i}].content must be a string", f"messages[{i}].content",
                           "invalid_type")
        name = m.get("name")
        if name is not None and (not isinstance(name, str) or not name.strip() or "\n" in name):
            raise ApiError(400, f"messages[{i}].name must be a one-line string", f"messages[{i}].name")
        _check_chars(content, alphabet, f"messages[{i}].content")
        _check_chars(name or "", alphabet, f"messages[{i}].name")
        if m["role"] in ("system", "developer"):
            parts.append(content.strip() + TURN_END)
            continue
        speaker = name or (USER_SPEAKER if m["role"] == "user" else ASSISTANT_SPEAKER)
        parts.append(f"{speaker}:\n{content.strip()}{TURN_END}")
    return "".join(parts)


def parse_chat(body: dict, limits: Limits, alphabet: str) -> tuple[Parsed, str]:
    prompt = chat_prompt(body.get("messages"), alphabet)
    speaker = body.get("speaker", ASSISTANT_SPEAKER)  # extension: who answers
    if not isinstance(speaker, str) or not speaker.strip() or "\n" in speaker:
        raise ApiError(400, "speaker must be a one-line string", "speaker", "invalid_type")
    _check_chars(speaker, alphabet, "speaker")
    prompt += f"{speaker}:\n"
    return _common(body, prompt, limits, alphabet, (TURN_END,), "messages"), speaker
