"""The `embedding` ICL strategy against a loopback server speaking OpenAI's embeddings wire
format (tests/fake_openai_server.py): similar prompts first, vectors cached by content
hash, and a failing endpoint or a wrong dimension retried, then a clear error (never a
fallback to another strategy)."""

from __future__ import annotations

import pytest
from fake_openai_server import FakeOpenAIServer, Fault
from test_icl import TOPIC_POOL, count_tokens, topic_example

from flywheel_assets.core.icl import IclOptions, plan_icl_prompts
from flywheel_assets.settings import SettingsError, load_settings
from resources.embeddings import EmbeddingClient, EmbeddingError, EmbeddingsResource

EMBEDDINGS = IclOptions(strategy="embedding", max_examples=2)


@pytest.fixture
def server():
    with FakeOpenAIServer(model="nv-embed", api_key="sekret", embedding_dimensions=64) as server:
        yield server


def client(server, tmp_path, **kwargs) -> EmbeddingClient:
    settings = dict(api_key="sekret", backoff_s=0.0, max_retries=2) | kwargs
    return EmbeddingClient(server.base_url, "nv-embed", cache_path=tmp_path / "cache.sqlite", **settings)


def embedding_requests(server):
    return [r for r in server.requests if r.path.endswith("/embeddings")]


def test_the_most_similar_prompt_comes_first(server, tmp_path):
    embed = client(server, tmp_path, input_type="query")
    prompt = topic_example("p", "what is the weather forecast in Paris today")
    plan = plan_icl_prompts([prompt], TOPIC_POOL, EMBEDDINGS, count_tokens=count_tokens, embed=embed.embed)
    assert plan.choices[0].example_ids[0] == "t_weather"
    assert plan.choices[0].scores[0] > plan.choices[0].scores[1]
    (request,) = embedding_requests(server)
    assert request.authorization == "Bearer sekret"
    assert request.body["model"] == "nv-embed" and request.body["input_type"] == "query"
    # the prompts' conversations, never their answers
    assert "what is the weather forecast in Paris today" in request.body["input"]
    assert not any("arguments" in text for text in request.body["input"])


def test_a_rerun_embeds_nothing_again(server, tmp_path):
    prompt = topic_example("p", "book a flight to Rome")
    first = plan_icl_prompts(
        [prompt], TOPIC_POOL, EMBEDDINGS, count_tokens=count_tokens, embed=client(server, tmp_path).embed
    )
    assert len(embedding_requests(server)) == 1
    again_client = client(server, tmp_path)  # a new process would build a new client
    again = plan_icl_prompts([prompt], TOPIC_POOL, EMBEDDINGS, count_tokens=count_tokens, embed=again_client.embed)
    assert again.choices[0].example_ids == first.choices[0].example_ids
    assert len(embedding_requests(server)) == 1 and again_client.requests_made == 0
    # one new prompt: only its text goes to the endpoint
    plan_icl_prompts(
        [topic_example("q", "a hotel in Lisbon")],
        TOPIC_POOL,
        EMBEDDINGS,
        count_tokens=count_tokens,
        embed=again_client.embed,
    )
    assert embedding_requests(server)[-1].body["input"] == ["a hotel in Lisbon"]


def test_a_failing_endpoint_is_retried_then_named_with_the_remedy(server, tmp_path):
    server.add_faults(Fault.status(503))
    vectors = client(server, tmp_path).embed(["a", "b"])
    assert vectors.shape == (2, 64) and len(embedding_requests(server)) == 2  # one retry
    server.add_faults(*[Fault.status(503, message="model loading")] * 3)
    with pytest.raises(EmbeddingError) as failure:
        client(server, tmp_path).embed(["c"])
    message = str(failure.value)
    assert "HTTP 503" in message and "3 attempts" in message and "nv-embed" in message
    assert "FLYWHEEL_EMBEDDINGS_BASE_URL" in message and "sekret" not in message


def test_a_wrong_dimension_is_retried_then_refused(server, tmp_path):
    embed = client(server, tmp_path, dimensions=64)
    wrong = {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}]}
    server.add_faults(Fault.body(wrong))
    assert embed.embed(["x"]).shape == (1, 64)  # the retry got the right answer
    server.add_faults(*[Fault.body(wrong)] * 3)
    with pytest.raises(EmbeddingError, match=r"dimension \[3\], expected 64.*3 attempts"):
        embed.embed(["y"])
    # and a response missing vectors
    server.add_faults(*[Fault.body({"object": "list", "data": []})] * 3)
    with pytest.raises(EmbeddingError, match="0 embeddings for 1 inputs"):
        embed.embed(["z"])


def test_vectors_of_another_dimension_in_the_cache_are_refused(server, tmp_path):
    client(server, tmp_path).embed(["cached text"])  # 64 dimensions
    with pytest.raises(EmbeddingError, match="delete the cache file"):
        client(server, tmp_path, dimensions=32).embed(["cached text"])


def test_an_embedding_client_answers_no_chat_prompts(tmp_path):
    # it shares the chat client's transport only: no chat completion can reach an embedding model
    embed = EmbeddingClient("http://127.0.0.1:9/v1", "nv-embed", cache_path=tmp_path / "cache.sqlite")
    assert not hasattr(embed, "complete")


def test_the_resource_is_off_until_configured(server, tmp_path):
    assert EmbeddingsResource(cache_path=str(tmp_path / "c.sqlite")).client() is None
    resource = EmbeddingsResource(
        base_url=server.base_url, model="nv-embed", api_key="sekret", cache_path=str(tmp_path / "c.sqlite")
    )
    assert resource.client().embed(["hello"]).shape == (1, 64)


def test_settings_name_what_the_embedding_strategy_needs():
    with pytest.raises(
        SettingsError,
        match="FLYWHEEL_ICL_STRATEGY=embedding needs FLYWHEEL_EMBEDDINGS_BASE_URL, FLYWHEEL_EMBEDDINGS_MODEL",
    ):
        load_settings({"FLYWHEEL_ICL_STRATEGY": "embedding"})
    with pytest.raises(
        SettingsError, match="FLYWHEEL_ICL_STRATEGY='semantic' is not one of uniform, lexical, embedding"
    ):
        load_settings({"FLYWHEEL_ICL_STRATEGY": "semantic"})
    settings = load_settings(
        {
            "FLYWHEEL_ICL_STRATEGY": "embedding",
            "FLYWHEEL_EMBEDDINGS_BASE_URL": "http://nim:8000/v1/",
            "FLYWHEEL_EMBEDDINGS_MODEL": "nvidia/llama-3.2-nv-embedqa-1b-v2",
        }
    )
    assert settings.embeddings_base_url == "http://nim:8000/v1" and load_settings({}).icl_strategy == "lexical"
