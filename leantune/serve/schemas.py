"""Request bodies of the HTTP API (OpenAI's fields where OpenAI has them). Unknown fields are ignored, as
OpenAI-compatible servers do; a wrong type or value is a 400 naming the field."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from leantune.generate import GREEDY_BELOW

MAX_STOPS = 4
MAX_STOP_CHARS = 256
"""Stop strings are searched in every row's text after every token: at most 4 (as OpenAI), each this long."""
SEED_RANGE = (-(2**63), 2**63 - 1)


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0, description=f"0 (or under {GREEDY_BELOW:g}): greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = Field(None, validate_default=True, description=(
        f"up to {MAX_STOPS} stop sequences of 1 to {MAX_STOP_CHARS} characters each"))
    seed: int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1, description="one choice per request")
    ignore_eos: bool = False  # vLLM's extension: generate max_tokens tokens (benchmarks)

    @field_validator("temperature")
    @classmethod
    def _greedy(cls, v: float) -> float:
        return 0.0 if v < GREEDY_BELOW else v

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> list[str]:
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop sequences (got {len(stops)})")
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        longest = max((len(s) for s in stops), default=0)
        if longest > MAX_STOP_CHARS:
            raise ValueError(f"a stop sequence is at most {MAX_STOP_CHARS} characters (got {longest})")
        return stops


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ChatMessage(_Body):
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    def as_messages(self) -> list[dict[str, str]]:
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] = Field(description="a string, a one-element list of strings, or token ids")
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v: str | list) -> str | list[int]:
        if isinstance(v, list) and v and all(isinstance(x, str) for x in v):
            if len(v) != 1:
                raise ValueError("one prompt per request (a string or a one-element list)")
            return v[0]
        if isinstance(v, list) and not v:
            raise ValueError("the prompt is empty")
        return v


class ClassifyRequest(_Body):
    model: str = Field(min_length=1)
    input: str | list[str] = Field(description="a text or a list of texts")

    @field_validator("input")
    @classmethod
    def _texts(cls, v: str | list[str]) -> list[str]:
        texts = [v] if isinstance(v, str) else v
        if not texts:
            raise ValueError("give at least one text")
        if len(texts) > 256:
            raise ValueError(f"at most 256 texts per request (got {len(texts)})")
        return texts


class AnswerRequest(_Body):
    model: str = Field(min_length=1)
    question: str = Field(min_length=1)
    context: str = Field(min_length=1)


class AdapterLoad(_Body):
    name: str = Field(min_length=1, max_length=128)
    path: str = Field(min_length=1)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    """Every error, in OpenAI's shape."""

    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict] = {
    "4XX": {"model": ErrorBody, "description": "the request is refused: the message says why, param names the field"},
    "5XX": {"model": ErrorBody, "description": "the server failed or is busy (no internal details)"},
}
JSON_ERRORS: dict[int | str, dict] = {  # the same, for a route whose own answers are not JSON
    status: {"description": r["description"],
             "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
    for status, r in ERROR_RESPONSES.items()}
