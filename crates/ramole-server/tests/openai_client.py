"""The real `openai` Python client against `ramole serve` on the tiny Llama (run by tests/openai_client.rs).

Usage: python openai_client.py BASE_URL API_KEY
"""

import sys

import openai

base, key = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base, api_key=key, max_retries=0)
checks = 0


def check(cond, what):
    global checks
    if not cond:
        raise AssertionError(what)
    checks += 1


ids = [m.id for m in client.models.list()]
check(ids[:2] == ["tiny", "ramole"] and {"a0", "a1", "a2", "a3"} <= set(ids), f"models: {ids}")

c = client.completions.create(model="tiny", prompt="Plural of mouse:", max_tokens=4)
check(isinstance(c.choices[0].text, str) and c.usage.completion_tokens <= 4, f"completion: {c}")
check(c.model_extra["routing"] == [], f"base routing: {c.model_extra}")

chat = client.chat.completions.create(
    model="a1", messages=[{"role": "user", "content": "What is 7 + 8?"}], max_tokens=4
)
check(chat.choices[0].message.role == "assistant", f"chat: {chat}")
check(chat.model_extra["routing"] == [{"lora": "a1", "score": None, "weight": 1.0}], f"adapter routing: {chat}")

routed = client.completions.create(model="ramole", prompt="Plural of goose:", max_tokens=3, extra_body={"top_k": 2})
routing = routed.model_extra["routing"]
check(len(routing) == 2 and routing[0]["lora"] == "a0" and routing[0]["score"] is not None, f"ramole: {routing}")

mix = client.chat.completions.create(
    model="tiny",
    messages=[{"role": "user", "content": "hello"}],
    max_tokens=3,
    extra_body={"adapters": [{"name": "a0", "weight": 0.7}, {"name": "a1", "weight": 0.3}], "composition": "mixture"},
)
check([(r["lora"], r["weight"]) for r in mix.model_extra["routing"]] == [("a0", 0.7), ("a1", 0.3)], f"mixture: {mix}")

messages = [{"role": "user", "content": "Translate to French: cat"}]
plain = client.chat.completions.create(model="a2", messages=messages, max_tokens=6)
chunks = list(client.chat.completions.create(model="a2", messages=messages, max_tokens=6, stream=True))
check(chunks[0].model_extra.get("routing") == [{"lora": "a2", "score": None, "weight": 1.0}], f"stream: {chunks[0]}")
streamed = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
check(streamed == plain.choices[0].message.content, f"stream {streamed!r} vs {plain.choices[0].message.content!r}")
check(chunks[-1].choices[0].finish_reason in ("length", "stop"), f"last chunk: {chunks[-1]}")

try:
    client.completions.create(model="nope", prompt="x", max_tokens=1)
    check(False, "an unknown model must fail")
except openai.NotFoundError as e:
    check("nope" in str(e), f"not found: {e}")

try:
    openai.OpenAI(base_url=base, api_key="wrong", max_retries=0).models.list()
    check(False, "a wrong key must fail")
except openai.AuthenticationError:
    check(True, "")

print(f"openai client: {checks} checks passed")
