"""Request bodies of the HTTP API (OpenAI's fields where OpenAI has them). Unknown fields are ignored, as
OpenAI-compatible servers do; a wrong type or value is a 400 naming the field."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = Field(None, validate_default=True)
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1, description="one choice per request")
    ignore_eos: bool = False  # vLLM's extension: generate max_tokens tokens (benchmarks)

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> list[str]:
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
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
