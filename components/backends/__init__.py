"""Generation backends behind one interface: ``make_backend(BackendConfig(...)).generate(requests, params)``.

See ``components.backends.base`` for the interface and semantics; ``hf`` (transformers in-process),
``openai`` (any OpenAI-compatible server) and ``vllm`` (in-process, GPU image only) implement it.

Imports only ``platform`` (config, errors); every stage and the method import it, it imports no stage.
"""

from components.backends.base import (
    BACKENDS,
    Backend,
    BackendConfig,
    CapabilityError,
    GenerationRequest,
    GenerationResult,
    Sample,
    SamplingParams,
    TokenLogprob,
    make_backend,
)

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendConfig",
    "CapabilityError",
    "GenerationRequest",
    "GenerationResult",
    "Sample",
    "SamplingParams",
    "TokenLogprob",
    "make_backend",
]
