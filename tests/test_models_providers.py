"""The OpenAI, Anthropic and Gemini adapters, each through its official SDK, against a
loopback server that speaks the provider's real wire format (``tests/providers/``).

No test reaches the network: ``tests/conftest.py`` refuses every non-loopback connection,
and one test below proves that a model pointed elsewhere hits that guard.
"""

from __future__ import annotations

import copy
import pickle
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pytest

import agentbook as ab
from agentbook.errors import (
    ModelAuthError,
    ModelError,
    ModelNotInstalledError,
    ModelRateLimitError,
    ModelResponseError,
    ModelTimeoutError,
)
from agentbook.models import Chunk, Model, Response, ToolCall
from agentbook.models.providers.anthropic import AnthropicModel
from agentbook.models.providers.gemini import GeminiModel
from agentbook.models.providers.openai import OpenAIModel
from tests.providers import anthropic_wire, gemini_wire, openai_wire
from tests.providers.server import LoopbackServer, Reply

KEYS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "GEMINI_API_KEY",
        "GOOGLE_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL", "GOOGLE_GENAI_USE_VERTEXAI")
WEATHER = {"name": "get_weather", "description": "The current weather in a city.",
           "parameters": {"type": "object",
                          "properties": {"city": {"type": "string"},
                                         "unit": {"enum": ["celsius", "fahrenheit"]}},
                          "required": ["city"]}}
HI = [{"role": "user", "content": "Hi"}]
PROVIDERS = ["openai", "anthropic", "gemini"]


@dataclass
class Provider:
    """One provider under test: its wire format, its loopback server and its model class."""

    name: str
    wire: ModuleType
    server: LoopbackServer
    make: Callable[..., Model]
    models: list[Model] = field(default_factory=list)

    def model(self, **options: Any) -> Model:
        """A model with a test key, pointed at the loopback server, closed after the test."""
        options.setdefault("api_key", "sk-test")
        model = self.make(**options)
        self.models.append(model)
        return model

    def sent(self) -> dict[str, Any]:
        """The body of the last request the SDK sent."""
        return self.server.requests[-1].json()


@pytest.fixture(scope="session")
def servers() -> Iterator[dict[str, LoopbackServer]]:
    running = {name: LoopbackServer() for name in PROVIDERS}
    yield running
    for server in running.values():
        server.close()


@pytest.fixture(autouse=True)
def _no_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """Real keys and endpoints in the environment never reach a test."""
    for name in KEYS:
        monkeypatch.delenv(name, raising=False)


def _provider(name: str, servers: dict[str, LoopbackServer]) -> Provider:
    server = servers[name]
    server.reset()
    if name == "openai":
        return Provider(name, openai_wire, server, lambda **kw: OpenAIModel(
            openai_wire.MODEL, **{"base_url": server.url + "/v1", "max_retries": 0, **kw}))
    if name == "anthropic":
        return Provider(name, anthropic_wire, server, lambda **kw: AnthropicModel(
            anthropic_wire.MODEL, **{"base_url": server.url, "max_retries": 0, **kw}))
    return Provider(name, gemini_wire, server, lambda **kw: GeminiModel(
        gemini_wire.MODEL, **{"base_url": server.url, **kw}))


async def _serving(name: str, servers: dict[str, LoopbackServer]) -> AsyncIterator[Provider]:
    chosen = _provider(name, servers)
    yield chosen
    for model in chosen.models:
        await model.aclose()


@pytest.fixture(params=PROVIDERS)
async def provider(request: pytest.FixtureRequest,
                   servers: dict[str, LoopbackServer]) -> AsyncIterator[Provider]:
    async for chosen in _serving(request.param, servers):
        yield chosen


def _one_provider(name: str) -> Any:
    @pytest.fixture
    async def one(servers: dict[str, LoopbackServer]) -> AsyncIterator[Provider]:
        async for chosen in _serving(name, servers):
            yield chosen

    return one


openai_p, anthropic_p, gemini_p = (_one_provider(n) for n in ("openai", "anthropic", "gemini"))


async def _collect(model: Model, messages: list[dict[str, Any]],
                   tools: list[dict[str, Any]] | None = None) -> list[Chunk]:
    return [chunk async for chunk in model.stream(messages, tools)]


async def _ask(model: Model, reply: Reply) -> Response:
    """Answer HI, streaming when the queued *reply* is a stream."""
    if reply.events is None:
        return await model.complete(HI, [WEATHER])
    chunks = await _collect(model, HI, [WEATHER])
    assert chunks[-1].response is not None
    return chunks[-1].response


def _exceptions(exc: BaseException) -> Iterator[BaseException]:
    """*exc*, its causes and contexts, and the members of exception groups, depth first."""
    yield exc
    for inner in getattr(exc, "exceptions", ()):
        yield from _exceptions(inner)
    for linked in (exc.__cause__, exc.__context__):
        if linked is not None:
            yield from _exceptions(linked)


# -- answers ----------------------------------------------------------------------------
async def test_a_plain_answer_comes_back_with_usage_and_model(provider: Provider):
    provider.server.queue(provider.wire.text("Hello there!", usage=(12, 5)))

    response = await provider.model().complete(HI)

    assert response.content == "Hello there!"
    assert response.tool_calls == []
    assert response.finish_reason == "stop"
    assert response.usage == {"input_tokens": 12, "output_tokens": 5, "total_tokens": 17}
    assert response.model == provider.wire.MODEL
    request = provider.server.requests[-1]
    assert (request.method, request.path) == ("POST", provider.wire.PATH)
    assert "sk-test" in (request.headers.get("authorization", "") +
                         request.headers.get("x-api-key", "") +
                         request.headers.get("x-goog-api-key", ""))


async def test_streamed_text_chunks_concatenate_to_the_final_content(provider: Provider):
    pieces = ["Hel", "lo", " there", "!"]
    provider.server.queue(provider.wire.text_stream(pieces, usage=(12, 5)))

    chunks = await _collect(provider.model(), HI)

    assert [c.text for c in chunks[:-1]] == pieces
    assert all(c.response is None for c in chunks[:-1])
    final = chunks[-1]
    assert final.text == "" and final.response is not None
    assert final.response.content == "".join(pieces)
    assert final.response.finish_reason == "stop"
    assert final.response.usage == {"input_tokens": 12, "output_tokens": 5, "total_tokens": 17}
    request = provider.server.requests[-1]
    if provider.name == "gemini":
        assert request.path == gemini_wire.STREAM_PATH and request.query == {"alt": ["sse"]}
    else:
        assert request.json()["stream"] is True
    if provider.name == "openai":
        assert request.json()["stream_options"] == {"include_usage": True}


async def test_a_tool_call_comes_back_with_its_arguments(provider: Provider):
    call_id = None if provider.name == "gemini" else "call_1"
    provider.server.queue(provider.wire.tool_calls(
        [(call_id, "get_weather", {"city": "Paris", "unit": "celsius"})]))

    response = await provider.model().complete([{"role": "user", "content": "Paris?"}], [WEATHER])

    assert response.finish_reason == "tool_calls"
    [call] = response.tool_calls
    assert (call.name, call.arguments) == ("get_weather", {"city": "Paris", "unit": "celsius"})
    assert call.id == "call_1" if call_id else call.id.startswith("call_")
    assert response.message()["tool_calls"] == [call.to_json()]


async def test_streamed_tool_call_arguments_are_assembled(provider: Provider):
    calls = [("c_1", "get_weather", {"city": "Paris", "unit": "celsius"}),
             ("c_2", "get_weather", {"city": "Reykjavík"})]
    provider.server.queue(provider.wire.tool_call_stream(calls, content="Let me check.",
                                                         fragment=4))

    chunks = await _collect(provider.model(), [{"role": "user", "content": "Paris?"}], [WEATHER])

    assert "".join(c.text for c in chunks) == "Let me check."
    response = chunks[-1].response
    assert response is not None and response.content == "Let me check."
    assert [(c.id, c.name, c.arguments) for c in response.tool_calls] == calls
    assert response.finish_reason == "tool_calls"
    assert response.usage["input_tokens"] == 40


async def test_tools_are_sent_in_the_providers_own_format(provider: Provider):
    provider.server.queue(provider.wire.text("ok"))

    await provider.model().complete(HI, [WEATHER])

    body = provider.sent()
    if provider.name == "openai":
        assert body["tools"] == [{"type": "function", "function": WEATHER}]
    elif provider.name == "anthropic":
        assert body["tools"] == [{"name": WEATHER["name"], "description": WEATHER["description"],
                                  "input_schema": WEATHER["parameters"]}]
    else:
        [declaration] = body["tools"][0]["functionDeclarations"]
        schema = declaration.get("parametersJsonSchema") or declaration.get("parameters_json_schema")
        assert (declaration["name"], declaration["description"], schema) == (
            WEATHER["name"], WEATHER["description"], WEATHER["parameters"])


# -- conversations with tool results ------------------------------------------------------
CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Weather in Paris and Oslo?"},
    {"role": "assistant", "content": "Checking.", "tool_calls": [
        {"id": "call_a", "name": "get_weather", "arguments": {"city": "Paris"}},
        {"id": "call_b", "name": "get_weather", "arguments": {"city": "Oslo"}}]},
    {"role": "tool", "tool_call_id": "call_a", "name": "get_weather", "content": '{"temp": 21}'},
    {"role": "tool", "tool_call_id": "call_b", "name": "get_weather", "content": "snow"},
]


async def test_openai_gets_tool_calls_and_results_back_in_its_format(openai_p: Provider):
    openai_p.server.queue(openai_wire.text("Paris 21, Oslo snow."))

    response = await openai_p.model().complete(CONVERSATION, [WEATHER], temperature=0)

    assert response.content == "Paris 21, Oslo snow."
    body = openai_p.sent()
    assert body["temperature"] == 0
    assert body["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Weather in Paris and Oslo?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "call_a", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_b", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "call_a", "content": '{"temp": 21}'},
        {"role": "tool", "tool_call_id": "call_b", "content": "snow"},
    ]


async def test_anthropic_gets_system_text_and_one_user_turn_of_tool_results(anthropic_p: Provider):
    anthropic_p.server.queue(anthropic_wire.text("Paris 21, Oslo snow."))

    await anthropic_p.model().complete(CONVERSATION, [WEATHER], stop=["\n\n"])

    body = anthropic_p.sent()
    assert body["system"] == "You are terse."
    assert body["max_tokens"] == 4096
    assert body["stop_sequences"] == ["\n\n"]
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris and Oslo?"}]},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "call_b", "name": "get_weather", "input": {"city": "Oslo"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "call_a", "content": '{"temp": 21}'},
            {"type": "tool_result", "tool_use_id": "call_b", "content": "snow"}]},
    ]


async def test_gemini_gets_function_calls_and_one_turn_of_function_responses(gemini_p: Provider):
    gemini_p.server.queue(gemini_wire.text("Paris 21, Oslo snow."))

    await gemini_p.model().complete(CONVERSATION, [WEATHER], max_tokens=50, temperature=0.2)

    body = gemini_p.sent()
    assert body["systemInstruction"]["parts"] == [{"text": "You are terse."}]
    assert body["generationConfig"] == {"temperature": 0.2, "maxOutputTokens": 50}
    user, model, results = body["contents"]
    assert user == {"role": "user", "parts": [{"text": "Weather in Paris and Oslo?"}]}
    assert model["role"] == "model"
    assert [p.get("text") or p["functionCall"] for p in model["parts"]] == [
        "Checking.", {"name": "get_weather", "args": {"city": "Paris"}},
        {"name": "get_weather", "args": {"city": "Oslo"}}]
    # calls this model never saw (a restored history) get Google's documented placeholder,
    # on the first call of the turn only
    assert [p.get("thoughtSignature") for p in model["parts"]] == [
        None, "skip_thought_signature_validator", None]
    assert results == {"role": "user", "parts": [
        {"functionResponse": {"name": "get_weather", "response": {"temp": 21}}},
        {"functionResponse": {"name": "get_weather", "response": {"output": "snow"}}}]}


async def test_gemini_gets_back_the_signatures_and_ids_it_gave(gemini_p: Provider):
    model = gemini_p.model()
    gemini_p.server.queue(gemini_wire.tool_calls([("fc_paris", "get_weather", {"city": "Paris"}),
                                                  (None, "get_weather", {"city": "Oslo"})]))
    first = await model.complete(HI, [WEATHER])
    paris, oslo = first.tool_calls
    assert paris.id == "fc_paris" and oslo.id.startswith("call_")

    gemini_p.server.queue(gemini_wire.text("Done."))
    await model.complete([*HI, first.message(),
                          {"role": "tool", "tool_call_id": paris.id, "content": "21"},
                          {"role": "tool", "tool_call_id": oslo.id, "content": "snow"}], [WEATHER])

    _, calls, results = gemini_p.sent()["contents"]
    assert calls["parts"] == [
        {"functionCall": {"id": "fc_paris", "name": "get_weather", "args": {"city": "Paris"}},
         "thoughtSignature": gemini_wire.SIGNATURE},
        {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}}]
    assert [p["functionResponse"].get("id") for p in results["parts"]] == ["fc_paris", None]


# -- errors -------------------------------------------------------------------------------
@pytest.mark.parametrize(("status", "error"), [
    (401, ModelAuthError), (429, ModelRateLimitError), (500, ModelError)])
async def test_error_answers_become_typed_errors_with_the_providers_message(
        provider: Provider, status: int, error: type[ModelError]):
    provider.server.queue(provider.wire.error(status))

    with pytest.raises(error) as raised:
        await provider.model().complete(HI)

    assert type(raised.value) is error
    assert provider.wire.ERRORS[status][0] in str(raised.value)
    assert (raised.value.status, raised.value.provider) == (status, provider.name)


async def test_error_answers_to_a_stream_are_typed_too(provider: Provider):
    provider.server.queue(provider.wire.error(429))

    with pytest.raises(ModelRateLimitError, match="rate|quota"):
        await _collect(provider.model(), HI)


async def test_gemini_400_for_a_bad_key_is_an_auth_error(gemini_p: Provider):
    gemini_p.server.queue(gemini_wire.bad_key())

    with pytest.raises(ModelAuthError, match="API key not valid"):
        await gemini_p.model().complete(HI)


async def test_anthropic_error_event_mid_stream_is_a_model_error(anthropic_p: Provider):
    anthropic_p.server.queue(anthropic_wire.error_event())

    with pytest.raises(ModelError, match="Overloaded") as raised:
        await _collect(anthropic_p.model(), HI)
    assert type(raised.value) is ModelError


async def test_a_slow_provider_is_a_timeout(provider: Provider):
    provider.server.queue(Reply(json={}, delay=5))

    with pytest.raises(ModelTimeoutError, match="did not answer in time"):
        await provider.model(timeout=0.2).complete(HI)


@pytest.mark.parametrize("story", ["malformed_stream", "cut_stream", "unfinished_stream",
                                   "bad_arguments"])
async def test_broken_answers_are_response_errors(provider: Provider, story: str):
    reply = getattr(provider.wire, story)()
    provider.server.queue(reply)

    with pytest.raises(ModelResponseError):
        await _ask(provider.model(), reply)


async def test_malformed_json_body_is_a_response_error(provider: Provider):
    provider.server.queue(Reply(body=b'{"id": "x", "choi', headers={"Content-Type": "application/json"}))

    with pytest.raises(ModelResponseError, match="could not be read"):
        await provider.model().complete(HI)


async def test_sdk_retries_stay_available_through_client_options(openai_p: Provider):
    openai_p.server.queue(Reply(**{**vars(openai_wire.error(500)),
                                   "headers": {"retry-after-ms": "1"}}),
                          openai_wire.text("second time lucky"))

    response = await openai_p.model(max_retries=1).complete(HI)

    assert response.content == "second time lucky"
    assert len(openai_p.server.requests) == 2


# -- keys ---------------------------------------------------------------------------------
async def test_a_missing_key_is_an_auth_error_before_any_request(provider: Provider):
    model = provider.model(api_key=None)

    with pytest.raises(ModelAuthError, match="API_KEY"):
        await model.complete(HI)
    with pytest.raises(ModelAuthError):
        await _collect(model, HI)
    assert provider.server.requests == []


async def test_the_key_comes_from_the_providers_environment_variable(
        provider: Provider, monkeypatch: pytest.MonkeyPatch):
    variable = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY",
                "gemini": "GEMINI_API_KEY"}[provider.name]
    monkeypatch.setenv(variable, "sk-from-env")
    provider.server.queue(provider.wire.text("hi"))

    await provider.model(api_key=None).complete(HI)

    assert "sk-from-env" in str(provider.server.requests[-1].headers)


async def test_the_key_is_never_shown_nor_serialized(provider: Provider):
    model = provider.model(api_key="sk-canary-4f2a")
    provider.server.queue(provider.wire.text("hi"))
    await model.complete(HI)

    assert "sk-canary" not in repr(model) + str(model) + repr(vars(model))
    with pytest.raises(TypeError, match="never serialized"):
        pickle.dumps(model)
    assert copy.deepcopy(model).name == model.name


# -- hosts, guards and installs -----------------------------------------------------------
async def test_openai_compatible_hosts_reuse_the_openai_wire(openai_p: Provider):
    model = ab.models.openai_compatible(base_url=openai_p.server.url + "/v1", model="llama3.2",
                                        max_retries=0)
    openai_p.models.append(model)
    openai_p.server.queue(openai_wire.text_stream(["Hi", " from", " llama"]))

    chunks = await _collect(model, HI)

    assert chunks[-1].response is not None and chunks[-1].response.content == "Hi from llama"
    assert openai_p.sent()["model"] == "llama3.2"
    assert openai_p.server.requests[-1].headers["authorization"] == "Bearer not-needed"
    assert repr(model) == f"<openai-compatible model 'llama3.2' at {openai_p.server.url}/v1>"
    openai_p.server.queue(openai_wire.error(500))
    with pytest.raises(ModelError) as raised:
        await model.complete(HI)
    assert raised.value.provider == "openai-compatible"


async def test_a_model_pointed_at_the_internet_hits_the_network_guard(provider: Provider):
    model = provider.model(base_url="http://203.0.113.7/v1")

    with pytest.raises(BaseException) as raised:  # the guard's error, however it is wrapped
        await model.complete(HI)

    assert any("tests may not reach the network" in str(e) for e in _exceptions(raised.value))


@pytest.mark.parametrize(("module", "make"), [
    ("openai", lambda: OpenAIModel("gpt-4o-mini")),
    ("anthropic", lambda: AnthropicModel("claude-sonnet-4-6")),
    ("google.genai", lambda: GeminiModel("gemini-2.5-flash")),
])
def test_a_missing_sdk_says_what_to_install(monkeypatch: pytest.MonkeyPatch, module: str,
                                            make: Callable[[], Model]):
    monkeypatch.setitem(sys.modules, module, None)

    with pytest.raises(ModelNotInstalledError, match="pip install") as raised:
        make()
    assert isinstance(raised.value, ImportError)


async def test_a_stream_left_early_releases_its_connection(provider: Provider):
    model = provider.model()
    provider.server.queue(provider.wire.text_stream(["one", " two", " three"]))
    stream = model.stream(HI)
    assert (await anext(stream)).text == "one"
    await stream.aclose()

    provider.server.queue(provider.wire.text("again"))
    assert (await model.complete(HI)).content == "again"


async def test_replies_are_tool_calls_the_base_types_understand(provider: Provider):
    provider.server.queue(provider.wire.tool_calls([("c_9", "get_weather", {"city": "Oslo"})]))

    response = await provider.model().complete(HI, [WEATHER])

    assert Response.from_json(response.to_json()) == response
    assert response.tool_calls == [ToolCall("c_9", "get_weather", {"city": "Oslo"})]


def test_the_factories_stay_callable_after_their_module_is_imported():
    assert callable(ab.models.openai)
    assert callable(ab.models.anthropic)
    assert callable(ab.models.gemini)


def test_importing_the_adapters_and_making_models_loads_no_sdk_until_the_first_call():
    import subprocess

    code = ("import sys, agentbook as ab\n"
            "from agentbook.models.providers.openai import OpenAIModel\n"
            "from agentbook.models.providers.anthropic import AnthropicModel\n"
            "from agentbook.models.providers.gemini import GeminiModel\n"
            "OpenAIModel('m'), AnthropicModel('m'), GeminiModel('m')\n"
            "print(sorted(m for m in ('openai', 'anthropic', 'google.genai', 'httpx2') "
            "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
