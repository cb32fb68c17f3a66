"""Chat request messages as the model handles take them, and what is read from them."""

from __future__ import annotations

from kaset.api.schemas.chat import ChatCompletionRequest, ChatMessage
from kaset.errors import InvalidRequest, PayloadTooLarge
from kaset.runtimes.base import GenerationParams


def deterministic(params: GenerationParams) -> bool:
    """Whether a retry gives the answer the first attempt would have (temperature 0 or a seed):
    only such non-streamed calls count as idempotent, so only they get a route's retries."""
    return params.temperature == 0 or params.seed is not None


def message_text(message: ChatMessage, index: int) -> str:
    if message.content is None:
        return ""
    if isinstance(message.content, str):
        return message.content
    texts = []
    for part in message.content:
        if part.type != "text":
            raise InvalidRequest(
                f"messages[{index}] has a '{part.type}' part; this model takes text parts only.",
                param=f"messages[{index}].content",
            )
        texts.append(part.text or "")
    return "\n".join(texts)


def to_messages(request: ChatCompletionRequest, max_chars: int) -> list[dict[str, str]]:
    messages = []
    total = 0
    for index, message in enumerate(request.messages):
        text = message_text(message, index)
        total += len(text)
        role = "system" if message.role == "developer" else message.role
        messages.append({"role": role, "content": text})
    if total > max_chars:
        raise PayloadTooLarge(
            f"The messages hold {total} characters; this server accepts at most {max_chars}.",
            param="messages",
        )
    return messages


def stops(stop: str | list[str] | None) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else list(stop)
    if len(stops) > 4:
        raise InvalidRequest("At most 4 stop sequences are allowed.", param="stop")
    return [s for s in stops if s]


def last_user_text(body: ChatCompletionRequest) -> str:
    for index in range(len(body.messages) - 1, -1, -1):
        if body.messages[index].role == "user":
            return message_text(body.messages[index], index) if not has_images(body.messages[index]) else \
                " ".join(p.text or "" for p in body.messages[index].content or [] if not isinstance(p, str)
                         and p.type == "text")
    return ""


def has_images(message: ChatMessage) -> bool:
    return isinstance(message.content, list) and any(p.type == "image_url" for p in message.content)
