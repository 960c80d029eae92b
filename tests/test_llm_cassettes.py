"""Real llama.cpp server behaviour, replayed: the HTTP exchanges ``make test-llm`` recorded from
llama-cpp-python's server (SmolLM2-135M) are played back against the backends, so the default
suite covers the real error bodies (its HTTP 500 for ``json_schema``, its context-length 400),
the real streamed chunks and a real runaway reply in seconds, without the server."""

from __future__ import annotations

import pytest

from agents.llm import OpenAIBackend
from tests import llm_scenarios as sc


@pytest.mark.parametrize("name", sorted(sc.SCENARIOS))
def test_replayed_llamacpp_exchanges(name):
    path = sc.cassette(name)
    assert path.exists(), f"{path} is missing: record it with `make test-llm`"
    with sc.vcr_config(record=False).use_cassette(str(path), allow_playback_repeats=False) as cass:
        be = OpenAIBackend(sc.MODEL, "http://127.0.0.1:8080/v1", timeout_s=30)
        out = sc.SCENARIOS[name](be)
        sc.check(name, out)
        assert cass.play_count == len(cass.data)  # the same requests as recorded, all of them


def test_replayed_negotiation_keeps_the_servers_error_body_whole():
    with sc.vcr_config(record=False).use_cassette(str(sc.cassette("llamacpp_negotiate"))):
        caps = OpenAIBackend(sc.MODEL, "http://127.0.0.1:8080/v1", timeout_s=30).negotiate(context_length=sc.N_CTX)
    refused = next(n for n in caps.notes if n.startswith("json_schema: refused"))
    assert "500" in refused and "json_object" in refused
