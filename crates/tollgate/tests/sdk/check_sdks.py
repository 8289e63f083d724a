#!/usr/bin/env python3
"""Drive a running Tollgate gateway with the official `openai` and `anthropic`
Python SDKs and assert that what they parse is what the gateway meant.

Run by crates/tollgate/tests/ai_sdk.rs, which starts fake providers and a
gateway with these models (see that file for the configuration):

    gpt-smart     -> an OpenAI-format provider
    claude-smart  -> an Anthropic-format provider
    text-embed    -> an OpenAI-format provider (embeddings)

The fakes answer `echo: <last user message>` with usage 11 in, 7 out unless
the test queued another reply (the `*-tools` checks expect queued tool calls).

Usage:
    check_sdks.py --base-url http://127.0.0.1:PORT --key KEY [CHECK ...]

With no CHECK, every check except the `*-tools` ones runs (they need a queued
reply). `--list` prints the check names. TOLLGATE_URL and TOLLGATE_KEY may
stand in for the flags. Every check runs: one `ok <check>` line per check
passed, one `FAIL <check>: <why>` per check failed, and exit status 1 when any
failed.
"""

import argparse
import base64
import json
import os
import struct
import sys
import traceback

import anthropic
import openai

USAGE_IN, USAGE_OUT = 11, 7
PROMPT = "Say hello"
ECHO = "echo: " + PROMPT
MODELS = {"gpt-smart", "claude-smart", "text-embed"}
WEATHER_TOOL_OPENAI = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
WEATHER_TOOL_ANTHROPIC = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


class CheckFailed(Exception):
    pass


def expect(cond, what, got=None):
    if not cond:
        raise CheckFailed(what if got is None else f"{what}; got {got!r}")


def expect_eq(got, want, what):
    if got != want:
        raise CheckFailed(f"{what}: expected {want!r}, got {got!r}")


def expect_tool_call(choice, city):
    """An OpenAI choice that calls `get_weather` for `city`."""
    expect_eq(choice.finish_reason, "tool_calls", "finish_reason")
    calls = choice.message.tool_calls
    expect(calls, "tool_calls present", choice.message)
    expect_eq(len(calls), 1, "number of tool calls")
    expect_eq(calls[0].type, "function", "tool_calls[0].type")
    expect(calls[0].id, "tool_calls[0].id set", calls[0])
    expect_eq(calls[0].function.name, "get_weather", "tool_calls[0].function.name")
    expect_eq(
        json.loads(calls[0].function.arguments),
        {"city": city},
        "tool_calls[0].function.arguments",
    )


def expect_tool_use(message, city):
    """An Anthropic message that uses `get_weather` for `city`."""
    expect_eq(message.stop_reason, "tool_use", "stop_reason")
    uses = [b for b in message.content if b.type == "tool_use"]
    expect_eq(len(uses), 1, f"number of tool_use blocks in {message.content!r}")
    expect_eq(uses[0].name, "get_weather", "tool_use.name")
    expect_eq(uses[0].input, {"city": city}, "tool_use.input")
    expect(uses[0].id, "tool_use.id set", uses[0])


def as_float32(vector):
    """`vector` rounded to float32, the precision of base64 embeddings."""
    return list(struct.unpack(f"<{len(vector)}f", struct.pack(f"<{len(vector)}f", *vector)))


class Checks:
    def __init__(self, base_url, key):
        self.base_url = base_url.rstrip("/")
        self.key = key
        # No retries: a failure must show up as itself, and the fakes count requests.
        self.oa = openai.OpenAI(
            base_url=self.base_url + "/v1", api_key=key, max_retries=0, timeout=20
        )
        # The Anthropic SDK appends /v1/messages itself and sends `x-api-key`.
        self.an = anthropic.Anthropic(
            base_url=self.base_url, api_key=key, max_retries=0, timeout=20
        )

    # --- OpenAI SDK -------------------------------------------------------

    def _openai_chat(self, model, provider):
        raw = self.oa.chat.completions.with_raw_response.create(
            model=model,
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": PROMPT},
            ],
        )
        expect_eq(raw.headers.get("x-tollgate-provider"), provider, "X-Tollgate-Provider")
        completion = raw.parse()
        expect_eq(completion.object, "chat.completion", "object")
        expect_eq(len(completion.choices), 1, "number of choices")
        choice = completion.choices[0]
        expect_eq(choice.message.role, "assistant", "message.role")
        expect_eq(choice.message.content, ECHO, "message.content")
        expect_eq(choice.finish_reason, "stop", "finish_reason")
        expect(completion.usage is not None, "usage present")
        expect_eq(completion.usage.prompt_tokens, USAGE_IN, "usage.prompt_tokens")
        expect_eq(completion.usage.completion_tokens, USAGE_OUT, "usage.completion_tokens")
        expect_eq(completion.usage.total_tokens, USAGE_IN + USAGE_OUT, "usage.total_tokens")
        # Like OpenAI (which answers `gpt-4o` with `gpt-4o-2024-08-06`), the
        # gateway names the model that answered, not the alias asked for.
        expect(completion.model, "a model name", completion.model)

    def _openai_stream(self, model):
        stream = self.oa.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": PROMPT}],
            stream=True,
            stream_options={"include_usage": True},
        )
        text, finish, usage_chunks, chunks = "", None, [], 0
        for chunk in stream:
            chunks += 1
            expect_eq(chunk.object, "chat.completion.chunk", "chunk.object")
            if chunk.usage is not None:
                # The spec: the usage chunk comes last and has no choices.
                expect_eq(chunk.choices, [], "choices of the usage chunk")
                usage_chunks.append(chunk.usage)
                continue
            expect(not usage_chunks, "no chunk after the usage chunk")
            for choice in chunk.choices:
                expect_eq(choice.index, 0, "choice.index")
                if choice.delta.content:
                    text += choice.delta.content
                if choice.finish_reason:
                    finish = choice.finish_reason
        expect_eq(text, ECHO, "concatenated deltas")
        expect_eq(finish, "stop", "finish_reason")
        expect_eq(len(usage_chunks), 1, "number of usage chunks")
        expect_eq(usage_chunks[0].prompt_tokens, USAGE_IN, "usage.prompt_tokens")
        expect_eq(usage_chunks[0].completion_tokens, USAGE_OUT, "usage.completion_tokens")
        expect(chunks >= 3, "several chunks", chunks)

        # The SDK's accumulating helper, which checks chunk structure harder.
        with self.oa.chat.completions.stream(
            model=model,
            messages=[{"role": "user", "content": PROMPT}],
            stream_options={"include_usage": True},
        ) as helper:
            final = helper.get_final_completion()
        expect_eq(final.choices[0].message.content, ECHO, "helper: final content")
        expect_eq(final.choices[0].finish_reason, "stop", "helper: finish_reason")
        expect_eq(final.usage.completion_tokens, USAGE_OUT, "helper: usage")

    def openai_chat(self):
        self._openai_chat("gpt-smart", "oa")

    def openai_stream(self):
        self._openai_stream("gpt-smart")

    def _openai_tools(self, model, city):
        """Takes two queued tool calls: one whole, one streamed."""
        messages = [{"role": "user", "content": f"Weather in {city}?"}]
        completion = self.oa.chat.completions.create(
            model=model, messages=messages, tools=[WEATHER_TOOL_OPENAI]
        )
        expect_tool_call(completion.choices[0], city)

        # Streamed, through the SDK's helper, which assembles tool-call deltas
        # by their index.
        with self.oa.chat.completions.stream(
            model=model, messages=messages, tools=[WEATHER_TOOL_OPENAI]
        ) as stream:
            final = stream.get_final_completion()
        expect_tool_call(final.choices[0], city)

    def openai_tools(self):
        # Expects two queued tool calls `get_weather {"city":"Paris"}` on the OpenAI fake.
        self._openai_tools("gpt-smart", "Paris")

    def openai_models(self):
        ids = [m.id for m in self.oa.models.list()]
        expect_eq(sorted(ids), sorted(MODELS), "model ids")
        model = self.oa.models.list().data[0]
        expect_eq(model.object, "model", "model.object")

    def openai_embeddings(self):
        # The SDK asks for base64 when no format is given and decodes it itself.
        default = self.oa.embeddings.create(model="text-embed", input=["alpha", "beta"])
        expect_eq(len(default.data), 2, "number of embeddings (default format)")
        for i, item in enumerate(default.data):
            expect_eq(item.index, i, "data[].index")
            expect(
                isinstance(item.embedding, list)
                and item.embedding
                and all(isinstance(x, float) for x in item.embedding),
                "default format decodes to a list of floats",
                item.embedding,
            )
        expect(default.usage.prompt_tokens > 0, "usage.prompt_tokens", default.usage)

        floats = self.oa.embeddings.create(
            model="text-embed", input=["alpha", "beta"], encoding_format="float"
        )
        # base64 carries float32; JSON floats are compared at that precision.
        expect_eq(
            [as_float32(d.embedding) for d in floats.data],
            [d.embedding for d in default.data],
            "float and base64 formats give the same vectors",
        )

        # And the raw base64 is little-endian float32, as OpenAI sends it.
        raw = self.oa.embeddings.create(
            model="text-embed", input="alpha", encoding_format="base64"
        )
        encoded = raw.data[0].embedding
        expect(isinstance(encoded, str), "base64 format gives a string", encoded)
        decoded = base64.b64decode(encoded)
        vector = list(struct.unpack(f"<{len(decoded) // 4}f", decoded))
        expect_eq(
            vector, as_float32(floats.data[0].embedding), "explicit base64 decodes to the vector"
        )

    def openai_errors(self):
        try:
            self.oa.chat.completions.create(
                model="no-such-model", messages=[{"role": "user", "content": "x"}]
            )
            raise CheckFailed("an unknown model was accepted")
        except openai.NotFoundError as e:
            expect_eq(e.status_code, 404, "status")
            expect_eq(e.code, "model_not_found", "error.code")
            expect(e.message, "an error message", e.body)

        bad = openai.OpenAI(
            base_url=self.base_url + "/v1", api_key="tg_wrong_key_0000000000", max_retries=0
        )
        try:
            bad.chat.completions.create(
                model="gpt-smart", messages=[{"role": "user", "content": "x"}]
            )
            raise CheckFailed("a bad key was accepted")
        except openai.AuthenticationError as e:
            expect_eq(e.status_code, 401, "status")

        try:
            bad.models.list()
            raise CheckFailed("a bad key listed models")
        except openai.AuthenticationError:
            pass

    # --- Anthropic SDK ----------------------------------------------------

    def _anthropic_messages(self, model, provider):
        raw = self.an.messages.with_raw_response.create(
            model=model,
            max_tokens=100,
            system="Be brief.",
            messages=[{"role": "user", "content": PROMPT}],
        )
        expect_eq(raw.headers.get("x-tollgate-provider"), provider, "X-Tollgate-Provider")
        message = raw.parse()
        expect_eq(message.type, "message", "type")
        expect_eq(message.role, "assistant", "role")
        expect_eq(message.content[0].type, "text", "content[0].type")
        expect_eq(message.content[0].text, ECHO, "content[0].text")
        expect_eq(message.stop_reason, "end_turn", "stop_reason")
        expect_eq(message.usage.input_tokens, USAGE_IN, "usage.input_tokens")
        expect_eq(message.usage.output_tokens, USAGE_OUT, "usage.output_tokens")
        expect(message.model, "a model name", message.model)

    def _anthropic_stream(self, model):
        with self.an.messages.stream(
            model=model,
            max_tokens=100,
            messages=[{"role": "user", "content": PROMPT}],
        ) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
        expect_eq(text, ECHO, "concatenated text_stream")
        expect_eq(final.content[0].text, ECHO, "final content[0].text")
        expect_eq(final.stop_reason, "end_turn", "final stop_reason")
        expect_eq(final.usage.input_tokens, USAGE_IN, "final usage.input_tokens")
        expect_eq(final.usage.output_tokens, USAGE_OUT, "final usage.output_tokens")

        # The low-level stream: the event sequence the SDK's types know.
        events = [
            e.type
            for e in self.an.messages.create(
                model=model,
                max_tokens=100,
                messages=[{"role": "user", "content": PROMPT}],
                stream=True,
            )
        ]
        expect_eq(events[0], "message_start", "first event")
        expect_eq(events[-1], "message_stop", "last event")
        expect("message_delta" in events, "a message_delta event", events)
        expect("content_block_delta" in events, "a content_block_delta event", events)

    def anthropic_messages(self):
        self._anthropic_messages("claude-smart", "an")

    def anthropic_stream(self):
        self._anthropic_stream("claude-smart")

    def _anthropic_tools(self, model, city):
        """Takes two queued tool calls: one whole, one streamed."""
        messages = [{"role": "user", "content": f"Weather in {city}?"}]
        message = self.an.messages.create(
            model=model, max_tokens=100, messages=messages, tools=[WEATHER_TOOL_ANTHROPIC]
        )
        expect_tool_use(message, city)

        # Streamed: the SDK assembles `input_json_delta` parts into `input`.
        with self.an.messages.stream(
            model=model, max_tokens=100, messages=messages, tools=[WEATHER_TOOL_ANTHROPIC]
        ) as stream:
            final = stream.get_final_message()
        expect_tool_use(final, city)

    def anthropic_tools(self):
        # Expects two queued tool calls `get_weather {"city":"Oslo"}` on the Anthropic fake.
        self._anthropic_tools("claude-smart", "Oslo")

    def anthropic_errors(self):
        try:
            self.an.messages.create(
                model="no-such-model",
                max_tokens=5,
                messages=[{"role": "user", "content": "x"}],
            )
            raise CheckFailed("an unknown model was accepted")
        except anthropic.NotFoundError as e:
            expect_eq(e.status_code, 404, "status")
            expect(isinstance(e.body, dict), "a JSON error body", e.body)
            expect_eq(e.body.get("type"), "error", "body.type")
            expect_eq(e.body.get("error", {}).get("type"), "not_found_error", "body.error.type")

        bad = anthropic.Anthropic(
            base_url=self.base_url, api_key="tg_wrong_key_0000000000", max_retries=0
        )
        try:
            bad.messages.create(
                model="claude-smart", max_tokens=5, messages=[{"role": "user", "content": "x"}]
            )
            raise CheckFailed("a bad key was accepted")
        except anthropic.AuthenticationError as e:
            expect_eq(e.status_code, 401, "status")

    def anthropic_denial_shape(self):
        # The gateway's own denials (here the auth policy's 401) on a messages
        # endpoint should be in the Anthropic error shape, like the AI layer's
        # errors there (the 404 above), for clients that read `error.type`.
        bad = anthropic.Anthropic(
            base_url=self.base_url, api_key="tg_wrong_key_0000000000", max_retries=0
        )
        try:
            bad.messages.create(
                model="claude-smart", max_tokens=5, messages=[{"role": "user", "content": "x"}]
            )
            raise CheckFailed("a bad key was accepted")
        except anthropic.AuthenticationError as e:
            expect(isinstance(e.body, dict), "a JSON error body", e.body)
            expect_eq(e.body.get("type"), "error", f"401 body.type (body {e.body})")
            expect_eq(
                e.body.get("error", {}).get("type"),
                "authentication_error",
                f"401 body.error.type (body {e.body})",
            )

    # --- Across formats ---------------------------------------------------

    def cross_openai_to_claude(self):
        self._openai_chat("claude-smart", "an")
        self._openai_stream("claude-smart")

    def cross_anthropic_to_gpt(self):
        self._anthropic_messages("gpt-smart", "oa")
        self._anthropic_stream("gpt-smart")

    def cross_tools(self):
        # Expects two queued tool calls on each fake: `get_weather {"city":"Paris"}`
        # on the Anthropic one (OpenAI SDK -> claude-smart), `{"city":"Oslo"}` on
        # the OpenAI one (Anthropic SDK -> gpt-smart).
        self._openai_tools("claude-smart", "Paris")
        self._anthropic_tools("gpt-smart", "Oslo")


CHECKS = {
    "openai-chat": Checks.openai_chat,
    "openai-stream": Checks.openai_stream,
    "openai-models": Checks.openai_models,
    "openai-embeddings": Checks.openai_embeddings,
    "openai-errors": Checks.openai_errors,
    "anthropic-messages": Checks.anthropic_messages,
    "anthropic-stream": Checks.anthropic_stream,
    "anthropic-errors": Checks.anthropic_errors,
    "anthropic-denial-shape": Checks.anthropic_denial_shape,
    "cross-openai-to-claude": Checks.cross_openai_to_claude,
    "cross-anthropic-to-gpt": Checks.cross_anthropic_to_gpt,
    # These need replies queued on the fakes by the caller.
    "openai-tools": Checks.openai_tools,
    "anthropic-tools": Checks.anthropic_tools,
    "cross-tools": Checks.cross_tools,
}
NEEDS_QUEUED_REPLY = {"openai-tools", "anthropic-tools", "cross-tools"}


def describe(e):
    """A failure, with the HTTP status and body when the SDK raised on one."""
    if isinstance(e, CheckFailed):
        return str(e)
    if isinstance(e, (openai.APIStatusError, anthropic.APIStatusError)):
        body = e.response.text[:500]
        return f"{type(e).__name__}: HTTP {e.status_code}: {body}"
    if isinstance(e, (openai.APIConnectionError, anthropic.APIConnectionError)):
        return f"{type(e).__name__}: {e} ({e.__cause__!r})"
    return "".join(traceback.format_exception(type(e), e, e.__traceback__)).rstrip()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", default=os.environ.get("TOLLGATE_URL"))
    parser.add_argument("--key", default=os.environ.get("TOLLGATE_KEY"))
    parser.add_argument("--list", action="store_true", help="print the check names")
    parser.add_argument("checks", nargs="*", metavar="CHECK")
    args = parser.parse_args()
    if args.list:
        print("\n".join(CHECKS))
        return 0
    if not args.base_url or not args.key:
        parser.error("--base-url and --key (or TOLLGATE_URL and TOLLGATE_KEY) are required")
    names = args.checks or [n for n in CHECKS if n not in NEEDS_QUEUED_REPLY]
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        parser.error(f"unknown checks {unknown}; known: {list(CHECKS)}")

    print(f"openai {openai.__version__}, anthropic {anthropic.__version__}", flush=True)
    checks = Checks(args.base_url, args.key)
    failed = []
    for name in names:
        try:
            CHECKS[name](checks)
        except Exception as e:  # noqa: BLE001 - every failure is reported the same way
            print(f"FAIL {name}: {describe(e)}", flush=True)
            failed.append(name)
        else:
            print(f"ok {name}", flush=True)
    if failed:
        print(f"{len(failed)} of {len(names)} checks failed: {', '.join(failed)}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
