"""Request bodies of the OpenAI-style API: pydantic models (FastAPI validates them and
describes every field at ``/openapi.json`` and ``/docs``), and their translation into
engine requests.

The models are strict: a boolean is not a number, ``"3"`` is not an integer, NaN and
infinities are refused, and ranges are part of the schema. Whatever fails comes back as
one OpenAI-shaped error (``{"error": {"message", "type", "param", "code"}}``) naming the
parameter (``validation_error``); what depends on the server (its limits, the model's
alphabet, the model's name) is checked after the schema, the same way.

Units: ``max_tokens`` counts roots, the manager's tokens (about 1.2 chunks, 3 characters
each); ``max_chars`` (an extension) bounds characters. The chat endpoint writes the
conversation in the corpus's dialogue format (``Speaker:\\ntext\\n\\n``) and lets the
model speak the next turn, which ends at a blank line.
"""

from __future__ import annotations

import json
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from ..generation.request import (DEFAULT_MANAGER_TEMPERATURE, DEFAULT_ROOTS, MAX_SEED, GenerationRequest,
                                  RendererSettings, draw_seed)
from ..render.decoders import DECODERS
from ..render.options import DecodeOptions
from ..sampling.config import SamplingConfig

DEFAULT_MAX_TOKENS = DEFAULT_ROOTS
MAX_STOP = 4
USER_SPEAKER, ASSISTANT_SPEAKER = "First Citizen", "Second Citizen"  # speakers of the corpus
TURN_END = "\n\n"
ONE_LINE = r"^[^\n]*\S[^\n]*$"  # not blank, no line break
ROLES = ("system", "developer", "user", "assistant")
UNSUPPORTED = ("logprobs", "best_of", "echo", "suffix", "tools", "functions")


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
    request: GenerationRequest
    stream: bool
    model: Optional[str]
    seed_given: bool


# ---------------------------------------------------------------- JSON


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def parse_json(raw: bytes) -> dict:
    """The body as a JSON object; NaN, Infinity, nesting deeper than Python's parser goes and
    anything but an object are refused with a 400."""
    try:
        body = json.loads(raw, parse_constant=_reject_constant)  # no NaN / Infinity
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the body is not valid JSON: {e}", code="invalid_json") from None
    except RecursionError:
        raise ApiError(400, "the body nests arrays or objects deeper than this server parses",
                       code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object", code="invalid_json")
    return body


# ---------------------------------------------------------------- the bodies


class _Strict(BaseModel):
    # unknown fields (frequency_penalty, user, ...) are ignored, as before
    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore")


class _Sampling(_Strict):
    """The fields /v1/completions, /v1/chat/completions and /v1/flood share."""

    model: Optional[str] = Field(None, description="The model id (GET /v1/models); another id gets 404. "
                                                   "Absent: this server's model.")
    n: Optional[int] = Field(None, ge=1, le=1, description="Choices per request: only 1.")
    max_tokens: Optional[int] = Field(
        None, ge=1, description="Roots to generate (the manager's tokens, about 1.2 chunks of about 3 "
                                f"characters each), at most the server's --max-tokens-limit. Default "
                                f"{DEFAULT_ROOTS} when max_chars is not given either.")
    max_completion_tokens: Optional[int] = Field(None, ge=1, description="The same as max_tokens, "
                                                                         "read when max_tokens is absent.")
    max_chars: Optional[int] = Field(None, ge=1, description="Extension: the text's length in characters, "
                                                             "at most (20,000 by default).")
    temperature: Optional[float] = Field(DEFAULT_MANAGER_TEMPERATURE, ge=0, le=2,
                                         description="The manager's sampling temperature (0: greedy); null: "
                                                     "the default.")
    top_p: Optional[float] = Field(None, gt=0, le=1, description="The manager's nucleus: sample from the "
                                                                 "smallest set of roots with this much "
                                                                 "probability.")
    top_k: Optional[int] = Field(None, ge=1, le=1 << 20, description="The manager samples from its k most "
                                                                     "likely roots.")
    seed: Optional[int] = Field(None, ge=0, le=MAX_SEED, description="The same seed and body give the same "
                                                                     "text, alone or among other requests. "
                                                                     "Absent: a random seed, reported in the "
                                                                     "answer's fractal_flood.seed.")
    stop: Union[Annotated[str, Field(min_length=1)],
                Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=MAX_STOP)], None] = Field(
        None, description=f"The text ends before the first of these strings (one, or a list of at most "
                          f"{MAX_STOP}; none empty). Not on /v1/flood.")
    stream: bool = Field(False, description="Answer with server-sent events, one per block of roots, then "
                                            "data: [DONE].")
    decoder: Optional[Literal[DECODERS]] = Field(None, description="Extension: the renderer's decoder. "
                                                                   "Absent: the server's --decoder.")
    k: Optional[int] = Field(None, ge=1, le=64, description="Extension: the renderer's best-of-K drafts per "
                                                            f"block (default {DecodeOptions.k}).")
    threshold: Optional[float] = Field(None, ge=-1e6, le=1e6, description="Extension: the renderer's energy "
                                                                          "threshold for the adaptive decoder "
                                                                          f"(default {DecodeOptions.threshold}).")
    logprobs: Any = Field(None, description="Not supported: absent, null or false.")
    best_of: Any = Field(None, description="Not supported: absent, null, false or 1.")
    echo: Any = Field(None, description="Not supported: absent, null or false.")
    suffix: Any = Field(None, description="Not supported: absent, null or false.")
    tools: Any = Field(None, description="Not supported: absent, null or false.")
    functions: Any = Field(None, description="Not supported: absent, null or false.")

    @field_validator(*UNSUPPORTED, mode="before")
    @classmethod
    def _unsupported(cls, v, info):
        if v is None or v is False or (info.field_name == "best_of" and v == 1):
            return v
        raise PydanticCustomError("unsupported", "is not supported by this server")


class CompletionRequest(_Sampling):
    """The body of POST /v1/completions and /v1/flood."""

    prompt: Union[str, Annotated[list[str], Field(min_length=1, max_length=1)]] = Field(
        "", description="The text to continue: a string, or a list of exactly one string; every character "
                        "in the model's alphabet. Default: empty.")


class TextPart(_Strict):
    type: Literal["text"] = Field(description="Only text parts are supported.")
    text: str = Field(description="The part's text.")


class Message(_Strict):
    role: Literal[ROLES] = Field(description="system and developer text leads the conversation; user and "
                                             "assistant turns are written as the corpus's dialogue.")
    content: Union[str, list[TextPart]] = Field("", description="The turn's text, or a list of text parts.")
    name: Optional[str] = Field(None, pattern=ONE_LINE, description="The speaker's name in the dialogue "
                                                                    "(default: First Citizen for user turns, "
                                                                    "Second Citizen for assistant turns).")

    @model_validator(mode="before")
    @classmethod
    def _an_object_with_a_role(cls, v):
        if not isinstance(v, dict) or v.get("role") not in ROLES:
            raise PydanticCustomError("invalid_type", "must be an object with role {roles}",
                                      {"roles": ", ".join(ROLES[:-1]) + " or " + ROLES[-1]})
        return v


class ChatRequest(_Sampling):
    """The body of POST /v1/chat/completions."""

    messages: Annotated[list[Message], Field(min_length=1)] = Field(
        description="The conversation, written as the corpus's dialogue (Speaker:\\ntext\\n\\n per turn); "
                    "the model speaks the next turn, which ends at a blank line.")
    speaker: str = Field(ASSISTANT_SPEAKER, pattern=ONE_LINE,
                         description="Extension: the name of the speaker who answers.")


# ---------------------------------------------------------------- errors


_RANGE = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}
_EXPECTS = {"prompt": "a string (or a list of exactly one string)",
            "stop": f"a non-empty string or a list of at most {MAX_STOP} of them",
            "messages": "a non-empty list of messages", "content": "a string or a list of text parts",
            "name": "a one-line string", "speaker": "a one-line string", "model": "a string",
            "stream": "true or false"}
_WHOLE = {"prompt", "stop", "content"}
_KINDS = (("int_", "an integer"), ("float_", "a number"), ("finite_number", "a number"),
          ("bool_", "true or false"), ("string_", "a string"), ("list_", "a list"),
          ("model_", "an object"), ("dict_", "an object"))


def _show(value) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        text = "a value nested too deeply to show"
    return text if len(text) <= 80 else text[:77] + "..."


def _model_in(annotation):
    """The model class an annotation holds (through Optional, Union, list, Annotated), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _locate(model, loc: tuple, body):
    """The parameter an error's location names (``messages[0].content``), the last field on
    the way and the value the client sent there. Names of union members are skipped; prompt,
    stop and a message's content are named as a whole (``stop``, not ``stop[1]``)."""
    param, field, cls, value = "", None, model, body
    for item in loc:
        if field in _WHOLE:
            break
        if isinstance(item, int):
            param += f"[{item}]"
            value = value[item] if isinstance(value, list) and 0 <= item < len(value) else None
        elif cls is not None and item in cls.model_fields:
            param += ("." if param else "") + item
            field = item
            value = value.get(item) if isinstance(value, dict) else None
            cls = _model_in(cls.model_fields[item].annotation)
    return param or None, field, value


def _interval(model, name: str, limits: Limits) -> Optional[str]:
    lo = hi = None
    lo_open = hi_open = False
    for m in model.model_fields[name].metadata if name in model.model_fields else ():  # Field(ge=...) etc.
        if getattr(m, "ge", None) is not None:
            lo = m.ge
        elif getattr(m, "gt", None) is not None:
            lo, lo_open = m.gt, True
        elif getattr(m, "le", None) is not None:
            hi = m.le
        elif getattr(m, "lt", None) is not None:
            hi, hi_open = m.lt, True
    hi = {"max_tokens": limits.max_tokens, "max_completion_tokens": limits.max_tokens,
          "max_chars": limits.max_chars}.get(name, hi)  # the server's own limits
    if lo is None or hi is None:
        return None
    return f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"


def validation_error(errors: list, body, model, limits: Limits) -> ApiError:
    """pydantic's errors for ``model`` -> one OpenAI-shaped 400 naming the first wrong
    parameter: out_of_range, invalid_value (not one of a fixed list), unsupported or
    invalid_type, with what the parameter must be and what the client sent."""
    errors = [e for e in errors if e["loc"][:1] == ("body",)] or errors
    first = errors[0]["loc"][1:2]
    same = [e for e in errors if e["loc"][1:2] == first]
    # a union's members each fail: the one that is not "wrong type" says most
    e = next((e for e in same if not e["type"].endswith("_type")), same[0])
    param, field, value = _locate(model, e["loc"][1:], body)
    kind, ctx = e["type"], e.get("ctx") or {}
    if kind in ("invalid_type", "unsupported"):  # ours (PydanticCustomError)
        return ApiError(400, f"{param} {e['msg']}", param, kind)
    if field in _WHOLE:  # one rule for the whole parameter, whatever part of it broke it
        if kind == "too_long" and ctx.get("max_length", 0) > 1:  # (a list of exactly one is a type)
            return ApiError(400, f"{param} takes at most {ctx['max_length']} items, "
                                 f"got {ctx.get('actual_length')}", param, "out_of_range")
        return ApiError(400, f"{param} must be {_EXPECTS[field]}, got {_show(value)}", param, "invalid_type")
    if kind in _RANGE and field == param:
        interval = _interval(model, param, limits)
        if interval:
            return ApiError(400, f"{param} must be in {interval}, got {value}", param, "out_of_range")
    if kind == "literal_error":
        return ApiError(400, f"{param} must be one of {ctx.get('expected')}, got {_show(value)}", param,
                        "invalid_value")
    if kind == "missing":
        return ApiError(400, f"{param} is required: {_EXPECTS.get(field, 'a value')}", param, "invalid_type")
    expects = _EXPECTS.get(field) or next((text for prefix, text in _KINDS if kind.startswith(prefix)),
                                          e["msg"].lower())
    return ApiError(400, f"{param} must be {expects}, got {_show(value)}", param, "invalid_type")


# ---------------------------------------------------------------- bodies -> engine requests


def _check_chars(text: str, alphabet: str, param: str) -> None:
    known = set(alphabet)
    for i, c in enumerate(text):
        if c not in known:
            raise ApiError(400, f"unknown character {c!r} (U+{ord(c):04X}) at position {i} of {param}: "
                                "it is not in the model's alphabet", param, "unknown_character")


def _within(name: str, value: Optional[int], hi: int) -> Optional[int]:
    if value is not None and value > hi:
        raise ApiError(400, f"{name} must be in [1, {hi}], got {value}", name, "out_of_range")
    return value


def _common(b: _Sampling, prompt: str, limits: Limits, alphabet: str, extra_stop: tuple = (),
            param: str = "prompt") -> Parsed:
    if len(prompt) > limits.max_prompt_chars:
        raise ApiError(400, f"the prompt has {len(prompt)} characters; this server takes at most "
                            f"{limits.max_prompt_chars}", param, "context_length_exceeded")
    _check_chars(prompt, alphabet, param)
    max_tokens = _within("max_tokens", b.max_tokens, limits.max_tokens)
    if max_tokens is None:
        max_tokens = _within("max_completion_tokens", b.max_completion_tokens, limits.max_tokens)
    max_chars = _within("max_chars", b.max_chars, limits.max_chars)
    if max_tokens is None and max_chars is None:
        max_tokens = DEFAULT_MAX_TOKENS
    stop = ((b.stop,) if isinstance(b.stop, str) else tuple(b.stop or ())) + extra_stop
    for s in stop:
        _check_chars(s, alphabet, "stop")
    given = {name: v for name, v in (("k", b.k), ("threshold", b.threshold)) if v is not None}
    options = DecodeOptions(**given) if given else None
    temperature = DEFAULT_MANAGER_TEMPERATURE if b.temperature is None else b.temperature
    req = GenerationRequest(prompt, roots=max_tokens, max_chars=max_chars, stop=stop,
                            seed=b.seed if b.seed is not None else draw_seed(),
                            manager=SamplingConfig(temperature, b.top_k, b.top_p),
                            renderer=RendererSettings(b.decoder, options))
    return Parsed(req, b.stream, b.model, b.seed is not None)


def from_completion(body: CompletionRequest, limits: Limits, alphabet: str) -> Parsed:
    prompt = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
    return _common(body, prompt, limits, alphabet)


def chat_prompt(messages: list, alphabet: str) -> str:
    """Messages -> the corpus's dialogue: 'Speaker:\\ntext\\n\\n' per turn, then the
    assistant's speaker line. A message's ``name`` is its speaker; system text leads."""
    parts = []
    for i, m in enumerate(messages):
        content = m.content if isinstance(m.content, str) else "".join(p.text for p in m.content)
        _check_chars(content, alphabet, f"messages[{i}].content")
        _check_chars(m.name or "", alphabet, f"messages[{i}].name")
        if m.role in ("system", "developer"):
            parts.append(content.strip() + TURN_END)
            continue
        speaker = m.name or (USER_SPEAKER if m.role == "user" else ASSISTANT_SPEAKER)
        parts.append(f"{speaker}:\n{content.strip()}{TURN_END}")
    return "".join(parts)


def from_chat(body: ChatRequest, limits: Limits, alphabet: str) -> tuple[Parsed, str]:
    prompt = chat_prompt(body.messages, alphabet)
    _check_chars(body.speaker, alphabet, "speaker")
    prompt += f"{body.speaker}:\n"
    return _common(body, prompt, limits, alphabet, (TURN_END,), "messages"), body.speaker
