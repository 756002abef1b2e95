"""How many tokens a backend's model can hold in one sequence, and how many a request's prompt takes.

The critique loop (``components/method/critique.py``) grows its conversation turn by turn; a long
solution can outgrow the model's context window. Every backend answers two questions so the loop can
stop a chain before its next round no longer fits, instead of sending a request the server refuses
(``vllm serve`` answers HTTP 400) or feeding a local model positions it never saw in training:

- ``Backend.context_window()``: hf, ``max_position_embeddings`` of the model's config; vllm, the engine's
  ``max_model_len``; openai, the ``max_model_len`` that ``vllm serve`` reports in ``GET /v1/models``
  (the smallest over several servers), None where no server reports one (``transformers serve``).
- ``Backend.prompt_length(request)`` (``components/backends/base.py``): the prompt's tokens with the
  backend's own tokenizer, encoded as the backend sends them (``prompt_ids``); None where there is no
  local tokenizer.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx

log = logging.getLogger(__name__)


def config_window(config: Any) -> int | None:
    """``max_position_embeddings`` of a transformers config, None where it has none."""
    value = getattr(config, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and value > 0 else None


def served_window(client: httpx.Client, urls: list[str], model: str) -> int | None:
    """The smallest ``max_model_len`` the servers report for ``model`` (``GET /v1/models``), else None."""
    windows = [w for w in (_server_window(client, url, model) for url in urls) if w is not None]
    return min(windows) if windows else None


def _server_window(client: httpx.Client, url: str, model: str) -> int | None:
    try:
        resp = client.get(url.rstrip("/") + "/models")
        resp.raise_for_status()
        cards = resp.json().get("data") or []
    except (httpx.HTTPError, ValueError, AttributeError) as exc:
        log.warning("%s/models: cannot read the context window (%s)", url, exc)
        return None
    for card in cards:
        if isinstance(card, dict) and card.get("id") == model:
            value = card.get("max_model_len")
            return int(value) if isinstance(value, int) and value > 0 else None
    return None
