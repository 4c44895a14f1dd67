"""Request and response bodies of the server (OpenAI's shapes, plus adaptkit's fields).

Unknown request fields are ignored, as OpenAI-compatible servers do (clients send
``stream_options``, ``logprobs``, ... that this server has no use for)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from adaptkit.bank import Repetition

DEFAULT_MAX_TOKENS = 128
MAX_STOPS = 4


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    """OpenAI's error body: the ``openai`` client raises its own typed exception from it."""

    error: ErrorDetail


class ChatMessage(_Body):
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=32_000)


class StreamOptions(_Body):
    include_usage: bool = False


class _Generation(_Body):
    model: str = Field(max_length=320, description="'<base>', '<base>:<user>' or '...@<N>'")
    max_tokens: int | None = Field(default=None, ge=1, le=4096)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    stop: str | list[str] | None = Field(default=None)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=1, description="one answer per request")
    # OpenAI's penalties on the answer's tokens; HF's (vLLM's extra body fields) on the
    # prompt's and the answer's (adaptkit.bank.repetition).
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(default=1.0, gt=0.0, le=10.0, description="1: off")
    no_repeat_ngram_size: int = Field(default=0, ge=0, le=64, description="0: off")
    user: str | None = Field(default=None, max_length=256, description="ignored (OpenAI's)")
    # adaptkit: shared adapters added to the user's (name -> weight), and the user's weight.
    compose: dict[str, float] | None = Field(default=None, max_length=8)
    user_weight: float = Field(default=1.0, ge=-4.0, le=4.0)

    def repetition(self) -> Repetition:
        return Repetition(
            repetition_penalty=self.repetition_penalty,
            no_repeat_ngram_size=self.no_repeat_ngram_size,
            frequency_penalty=self.frequency_penalty,
            presence_penalty=self.presence_penalty,
        )

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]


class ChatCompletionRequest(_Generation):
    messages: list[ChatMessage] = Field(min_length=1, max_length=256)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=4096)

    def token_limit(self) -> int:
        return self.max_completion_tokens or self.max_tokens or DEFAULT_MAX_TOKENS


class CompletionRequest(_Generation):
    prompt: str | list[str] = Field(description="answered as one user turn")

    def token_limit(self) -> int:
        return self.max_tokens or 16  # OpenAI's default for completions


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Route(BaseModel):
    """How adaptkit answered: the plan's kind, its adapters and why."""

    kind: str
    user: str | None
    adapters: list[dict]
    reason: str


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    adaptkit: Route


class TextChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"]


class TextCompletion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[TextChoice]
    usage: Usage
    adaptkit: Route


class StoredCompletion(BaseModel):
    id: str
    object: Literal["chat.completion.stored"] = "chat.completion.stored"
    created: int
    model: str
    user: str
    messages: list[dict]
    response: str


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Answer(_Body):
    """One side of a preference: a stored completion, or a text."""

    completion_id: str | None = Field(default=None, max_length=64)
    text: str | None = Field(default=None, max_length=8000)


FeedbackKey = Literal["accept", "thumbs", "edit", "preference", "note"]


class FeedbackRequest(_Body):
    """LangSmith's feedback fields (key, score, correction, comment) plus DPO's pair.

    accept: the user went on with the answer. thumbs: ``score`` 1 (up) or 0 / -1
    (down). edit: ``correction`` is the corrected answer. preference: ``preferred``
    and ``non_preferred`` (completion ids or texts, one of them the completion
    ``completion_id``). note: ``comment`` is a stated preference (``user`` names
    whose, when there is no completion).
    """

    key: FeedbackKey
    completion_id: str | None = Field(default=None, max_length=64)
    score: float | None = None
    correction: str | None = Field(default=None, max_length=8000)
    comment: str | None = Field(default=None, max_length=8000)
    preferred: Answer | None = None
    non_preferred: Answer | None = None
    user: str | None = Field(default=None, max_length=64)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=128)


class FeedbackState(BaseModel):
    id: str
    object: Literal["feedback"] = "feedback"
    user: str
    kind: str
    completion_id: str | None
    state: Literal["pending", "trained", "held-out", "skipped", "rejected"]
    detail: str
    version: int | None = None  # trained: the version trained on it
    version_status: str | None = None  # active / retired / candidate (the gate refused)
    version_reason: str | None = None  # the gate's verdict


class VersionCard(BaseModel):
    number: int
    status: str
    reason: str
    parent: int | None
    method: str
    created: int
    sha256: str
    metrics: dict


class UserCard(BaseModel):
    id: str
    active_version: int | None
    versions: int


class ErasureCard(BaseModel):
    """What an erasure removed (counts only, as its audit row records)."""

    user: str
    actor: str
    versions: int
    feedback_events: int
    requests: int
    audit_id: int


class ActivateRequest(_Body):
    version: int = Field(ge=1)
