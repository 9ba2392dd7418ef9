"""The vLLM client: vLLM's OpenAI-compatible server over HTTP, for the strategies and the pass-through.

- `backend.py`: `VllmBackend`, the `refiners.backend.Backend` contract and the pass-through call;
- `relay.py`: what the pass-through relays of an answer (`Relayed`: status, headers, bytes or events);
- `sse.py`: the one reader of vLLM's server-sent events;
- `transport.py`: the HTTP session, the upstream pool's choice per call, retries;
- `errors.py`: the one map from aiohttp's failures to the twice errors.

No aiohttp type leaves this package.
"""

from app.backends.vllm.backend import VllmBackend
from app.backends.vllm.relay import Relayed
from app.backends.vllm.sse import StreamCut, event_data

__all__ = ["Relayed", "StreamCut", "VllmBackend", "event_data"]
