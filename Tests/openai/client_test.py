"""The OpenAI-compatible server, driven by the official `openai` Python package.

Run by scripts/test-openai.sh against a live `ember serve` on loopback (base URL and API key
from EMBER_BASE_URL and EMBER_API_KEY; the server runs with --max-model-len 512,
--max-tokens-limit 256 and the default n limit of 8). EMBER_FIM_URL is a second server, on a model
with fill-in-the-middle tokens, for /infill and `suffix`; EMBER_REWARD_URL a third, on a reward model
(a LlamaForSequenceClassification written by `ember train-reward`), for /pooling; EMBER_EMBEDDING_URL
a fourth, on all-MiniLM-L6-v2, for /v1/embeddings (compared with Tests/Fixtures/embeddings, the
embeddings sentence-transformers gives).
"""
import concurrent.futures
import json
import os
import subprocess
import time
import unittest

import base64
import struct

import httpx
import openai

BASE = os.environ["EMBER_BASE_URL"]
KEY = os.environ["EMBER_API_KEY"]
client = openai.OpenAI(base_url=BASE + "/v1", api_key=KEY, max_retries=0, timeout=120)
MODEL = client.models.list().data[0].id
HEADERS = {"Authorization": f"Bearer {KEY}"}


def chat(content, **kw):
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}], **kw)


def metric(name):
    text = httpx.get(BASE + "/metrics", headers=HEADERS).text
    for line in text.splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)


class Endpoints(unittest.TestCase):
    def test_models_health_metrics(self):
        self.assertEqual(client.models.list().data[0].object, "model")
        self.assertEqual(httpx.get(BASE + "/health").status_code, 200)
        text = httpx.get(BASE + "/metrics", headers=HEADERS).text
        for name in ["vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                     "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total", "vllm:prompt_tokens_total",
                     "vllm:generation_tokens_total", "vllm:time_to_first_token_seconds_bucket",
                     "vllm:inter_token_latency_seconds_bucket", "vllm:e2e_request_latency_seconds_count"]:
            self.assertIn(name, text)

    def test_tokenize_detokenize(self):
        ids = httpx.post(BASE + "/tokenize", headers=HEADERS, json={"prompt": "Hello world"}).json()
        self.assertEqual(ids["count"], len(ids["tokens"]))
        text = httpx.post(BASE + "/detokenize", headers=HEADERS, json={"tokens": ids["tokens"]}).json()["prompt"]
        self.assertEqual(text, "Hello world")


class Chat(unittest.TestCase):
    def test_non_streaming_and_usage(self):
        r = chat("What is the capital of France?", max_tokens=20, temperature=0)
        choice = r.choices[0]
        self.assertEqual(choice.message.role, "assistant")
        self.assertTrue(choice.message.content)
        self.assertIn(choice.finish_reason, ["stop", "length"])
        prompt = httpx.post(BASE + "/tokenize", headers=HEADERS,
                            json={"messages": [{"role": "user", "content": "What is the capital of France?"}]}).json()
        self.assertEqual(r.usage.prompt_tokens, prompt["count"])
        self.assertEqual(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens)
        self.assertLessEqual(r.usage.completion_tokens, 20)

    def test_streaming_equals_non_streaming(self):
        whole = chat("Name three fruits.", max_tokens=24, temperature=0).choices[0].message.content
        chunks = list(chat("Name three fruits.", max_tokens=24, temperature=0, stream=True,
                           stream_options={"include_usage": True}))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        self.assertEqual(text, whole)
        self.assertEqual(chunks[0].choices[0].delta.role, "assistant")
        self.assertIsNotNone([c for c in chunks if c.choices][-1].choices[0].finish_reason)
        self.assertEqual(chunks[-1].choices, [])
        self.assertGreater(chunks[-1].usage.completion_tokens, 0)

    def test_n_seed_and_stop(self):
        r = chat("Write a sentence about cats.", n=3, max_tokens=16, temperature=1.0, seed=11)
        self.assertEqual(sorted(c.index for c in r.choices), [0, 1, 2])
        again = chat("Write a sentence about cats.", n=3, max_tokens=16, temperature=1.0, seed=11)
        self.assertEqual([c.message.content for c in r.choices], [c.message.content for c in again.choices])
        other = chat("Write a sentence about cats.", n=3, max_tokens=16, temperature=1.0, seed=12)
        self.assertNotEqual([c.message.content for c in r.choices], [c.message.content for c in other.choices])
        self.assertLessEqual(r.usage.completion_tokens, 3 * 16)
        # A stop string cuts the text before it.
        free = chat("Count: one, two, three, four, five", max_tokens=30, temperature=0).choices[0].message.content
        self.assertGreater(len(free), 6)
        stop = free[4:7]
        stopped = chat("Count: one, two, three, four, five", max_tokens=30, temperature=0, stop=[stop]).choices[0]
        self.assertEqual(stopped.message.content, free[:free.index(stop)])
        self.assertEqual(stopped.finish_reason, "stop")

    def test_logprobs(self):
        r = chat("Say hello.", max_tokens=8, temperature=0, logprobs=True, top_logprobs=3)
        content = r.choices[0].logprobs.content
        self.assertEqual(len(content), r.usage.completion_tokens)
        for item in content:
            self.assertLessEqual(item.logprob, 0)
            self.assertEqual(len(item.top_logprobs), 3)
            # Greedy: the chosen token is the most likely one.
            self.assertAlmostEqual(item.logprob, item.top_logprobs[0].logprob, places=5)

    def test_prefix_cache_reports_cached_tokens(self):
        long = "Here is a long system-style instruction that repeats. " * 8
        chat(long + "First question?", max_tokens=2, temperature=0)
        r = chat(long + "Second question?", max_tokens=2, temperature=0)
        self.assertGreater(r.usage.prompt_tokens_details.cached_tokens, 0)

    def test_concurrent_greedy_equals_sequential(self):
        prompts = [f"Tell me fact number {i} about the ocean." for i in range(16)]
        alone = [chat(p, max_tokens=16, temperature=0).choices[0].message.content for p in prompts]
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            together = list(pool.map(lambda p: chat(p, max_tokens=16, temperature=0).choices[0].message.content, prompts))
        self.assertEqual(alone, together)


class Completions(unittest.TestCase):
    def test_completion_streaming_and_logprobs(self):
        r = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0, logprobs=2)
        self.assertTrue(r.choices[0].text)
        self.assertEqual(len(r.choices[0].logprobs.tokens), len(r.choices[0].logprobs.token_logprobs))
        self.assertTrue(all(len(t) == 2 for t in r.choices[0].logprobs.top_logprobs))
        streamed = "".join(c.choices[0].text for c in client.completions.create(
            model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0, stream=True) if c.choices)
        self.assertEqual(streamed, r.choices[0].text)
        if r.choices[0].finish_reason == "length":
            self.assertEqual(r.usage.completion_tokens, 8)
        else:
            self.assertLess(r.usage.completion_tokens, 8)


class Evaluation(unittest.TestCase):
    """What lm-evaluation-harness's local-completions backend sends: several prompts in one request,
    and echo with logprobs and max_tokens 0 for the prompt tokens' log-probabilities."""

    def test_a_list_of_prompts_answers_each_as_alone(self):
        prompts = ["The capital of France is", [504, 3458, 314], "1, 2, 3,"]
        together = client.completions.create(model=MODEL, prompt=prompts, max_tokens=6, temperature=0)
        self.assertEqual([c.index for c in together.choices], [0, 1, 2])
        alone = [client.completions.create(model=MODEL, prompt=p, max_tokens=6, temperature=0) for p in prompts]
        self.assertEqual([c.text for c in together.choices], [a.choices[0].text for a in alone])
        self.assertEqual(together.usage.prompt_tokens, sum(a.usage.prompt_tokens for a in alone))
        two = client.completions.create(model=MODEL, prompt=prompts[:2], max_tokens=4, temperature=0, n=2)
        self.assertEqual([c.index for c in two.choices], [0, 1, 2, 3])  # prompt-major, n choices each

    def test_echo_gives_the_prompts_logprobs(self):
        ids = httpx.post(BASE + "/tokenize", headers=HEADERS, json={"prompt": "The capital of France is Paris, and of Italy"}).json()["tokens"]
        scored = client.completions.create(model=MODEL, prompt=[ids], max_tokens=0, echo=True, logprobs=5)
        choice = scored.choices[0]
        self.assertEqual(choice.finish_reason, "length")
        self.assertEqual(scored.usage.completion_tokens, 0)
        self.assertEqual(scored.usage.prompt_tokens, len(ids))
        self.assertEqual(len(choice.logprobs.tokens), len(ids))
        self.assertIsNone(choice.logprobs.token_logprobs[0])
        self.assertIsNone(choice.logprobs.top_logprobs[0])
        self.assertTrue(all(lp <= 0 for lp in choice.logprobs.token_logprobs[1:]))
        self.assertEqual("".join(choice.logprobs.tokens), choice.text)
        # Position j's distribution is what generating the next token after ids[:j] reports.
        worst = 0.0
        for j in (1, len(ids) // 2, len(ids) - 1):
            step = client.completions.create(model=MODEL, prompt=ids[:j], max_tokens=1, temperature=0, logprobs=5)
            expected, echoed = step.choices[0].logprobs.top_logprobs[0], choice.logprobs.top_logprobs[j]
            self.assertEqual(set(expected), set(echoed))
            worst = max([worst] + [abs(expected[t] - echoed[t]) for t in expected])
        print(f"echo vs next-token logprobs at 3 positions: max |Δ| {worst:.2e}")
        self.assertLess(worst, 1e-3)
        # echo with generation: the prompt's text, then the completion.
        generated = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=4, temperature=0)
        both = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=4, temperature=0, echo=True)
        self.assertEqual(both.choices[0].text, "The capital of France is" + generated.choices[0].text)


class Errors(unittest.TestCase):
    def assertError(self, status, call):
        with self.assertRaises(openai.APIStatusError) as caught:
            call()
        self.assertEqual(caught.exception.status_code, status)
        body = caught.exception.response.json()
        self.assertIn("message", body["error"])
        self.assertIn("type", body["error"])

    def test_bad_requests(self):
        self.assertError(400, lambda: chat("hi", temperature="hot"))
        self.assertError(400, lambda: chat("hi", max_tokens=-1))
        self.assertError(400, lambda: chat("hi", max_tokens=1000))  # over --max-tokens-limit
        self.assertError(400, lambda: chat("hi", n=50))
        self.assertError(400, lambda: chat("hi " * 600, max_tokens=4))  # longer than the context
        self.assertError(400, lambda: chat("hi", max_tokens=250, stop=5))
        self.assertError(400, lambda: client.chat.completions.create(model=MODEL, messages=[]))
        self.assertError(404, lambda: client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}]))
        self.assertError(400, lambda: client.completions.create(model=MODEL, prompt=[[1, 2], 3.5], max_tokens=2))
        self.assertError(400, lambda: client.completions.create(model=MODEL, prompt=[], max_tokens=2))
        self.assertError(400, lambda: client.completions.create(model=MODEL, prompt="a", max_tokens=0))  # 0 only with echo
        self.assertError(400, lambda: client.completions.create(model=MODEL, prompt=["a", "b"], max_tokens=2, stream=True))

    def test_raw_bad_input(self):
        r = httpx.post(BASE + "/v1/chat/completions", headers={**HEADERS, "Content-Type": "application/json"}, content=b"{not json")
        self.assertEqual(r.status_code, 400)
        self.assertIn("not valid JSON", r.json()["error"]["message"])
        r = httpx.post(BASE + "/v1/chat/completions", headers=HEADERS, content=b"x" * (5 << 20))
        self.assertEqual(r.status_code, 413)
        r = httpx.post(BASE + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
        self.assertEqual(r.status_code, 401)
        r = httpx.get(BASE + "/v1/nothing", headers=HEADERS)
        self.assertEqual(r.status_code, 404)
        self.assertEqual(r.json()["error"]["type"], "invalid_request_error")

    def test_disconnect_frees_blocks(self):
        with httpx.stream("POST", BASE + "/v1/chat/completions", headers=HEADERS, timeout=60,
                          json={"model": MODEL, "messages": [{"role": "user", "content": "Tell a very long story."}],
                                "max_tokens": 250, "stream": True, "ignore_eos": True}) as r:
            lines = r.iter_lines()
            for _ in range(3):
                next(lines)
        deadline = time.time() + 20
        while time.time() < deadline and (metric("vllm:num_requests_running") > 0 or metric("vllm:kv_cache_usage_perc") > 0):
            time.sleep(0.1)
        self.assertEqual(metric("vllm:num_requests_running"), 0)
        self.assertEqual(metric("vllm:kv_cache_usage_perc"), 0)


class SameSeedSameText(unittest.TestCase):
    """`ember generate` and /v1/completions share the engine, the sampler and the prompt handling."""

    CASES = [
        dict(temperature=0.9, seed=7, top_k=20, top_p=0.9, min_p=0.02, presence_penalty=0.5, frequency_penalty=0.3,
             repetition_penalty=1.1),
        dict(temperature=1.3, seed=123, top_k=0, top_p=1.0, min_p=0.1, presence_penalty=0.0, frequency_penalty=0.0,
             repetition_penalty=1.0),
        dict(temperature=0.0, seed=0, top_k=40, top_p=0.95, min_p=0.0, presence_penalty=0.0, frequency_penalty=0.0,
             repetition_penalty=1.0),
    ]

    def test_generate_equals_completions(self):
        prompt = "Once upon a time, in a small village by the sea,"
        for case in self.CASES:
            with self.subTest(**case):
                args = [os.environ.get("EMBER_BINARY", ".build/release/ember"), "generate", "--model", os.environ["EMBER_MODEL"],
                        "--prompt", prompt, "--max-tokens", "40", "--threads", "1", "--context", "512"]
                for key, value in case.items():
                    args += ["--" + key.replace("_", "-"), str(value)]
                generated = subprocess.run(args, capture_output=True, text=True, timeout=120, check=True).stdout
                r = httpx.post(BASE + "/v1/completions", headers=HEADERS, timeout=120,
                               json={"model": MODEL, "prompt": prompt, "max_tokens": 40, **case}).json()
                served = r["choices"][0]["text"]
                print(f"seed {case['seed']}, temperature {case['temperature']}: {served!r}")
                # generate ends its output with a newline.
                self.assertEqual(generated, served + "\n")


class Adapters(unittest.TestCase):
    """Two LoRA adapters served beside the base (--lora-modules one=… two=…)."""

    def complete(self, model, prompt, **kw):
        return client.completions.create(model=model, prompt=prompt, max_tokens=12, temperature=0, **kw)

    def test_models_list_adapters_with_their_parent(self):
        cards = {m.id: m for m in client.models.list().data}
        for name in ["one", "two"]:
            self.assertIn(name, cards)
            self.assertEqual(cards[name].model_extra["parent"], MODEL)

    def test_model_selects_the_adapter_in_one_batch(self):
        prompts = [f"Question {i}: what is the tallest mountain?" for i in range(3)]
        models = [MODEL, "one", "two"]
        alone = {(m, p): self.complete(m, p).choices[0].text for m in models for p in prompts}
        self.assertNotEqual(alone[(MODEL, prompts[0])], alone[("one", prompts[0])])
        self.assertNotEqual(alone[("one", prompts[0])], alone[("two", prompts[0])])
        with concurrent.futures.ThreadPoolExecutor(9) as pool:
            together = dict(zip(alone, pool.map(lambda key: self.complete(*key).choices[0].text, alone)))
        self.assertEqual(alone, together)
        self.assertEqual(self.complete("one", prompts[0]).model, "one")

    def test_generate_with_lora_equals_the_served_adapter(self):
        prompt = "The three primary colours are"
        args = [os.environ.get("EMBER_BINARY", ".build/release/ember"), "generate", "--model", os.environ["EMBER_MODEL"],
                "--lora", os.environ["EMBER_ADAPTERS"] + "/1", "--prompt", prompt, "--max-tokens", "12", "--temperature", "0",
                "--threads", "1", "--context", "512"]
        generated = subprocess.run(args, capture_output=True, text=True, timeout=120, check=True).stdout
        self.assertEqual(generated, self.complete("one", prompt).choices[0].text + "\n")

    def test_prefix_cache_is_per_adapter(self):
        long = "A long shared instruction about adapters and caches, repeated. " * 8
        client.chat.completions.create(model="one", messages=[{"role": "user", "content": long + "A?"}], max_tokens=1)
        same = client.chat.completions.create(model="one", messages=[{"role": "user", "content": long + "B?"}], max_tokens=1)
        other = client.chat.completions.create(model="two", messages=[{"role": "user", "content": long + "B?"}], max_tokens=1)
        self.assertGreater(same.usage.prompt_tokens_details.cached_tokens, 0)
        self.assertEqual(other.usage.prompt_tokens_details.cached_tokens, 0)

    def test_unknown_model_is_404(self):
        with self.assertRaises(openai.NotFoundError):
            self.complete("three", "Hi")


class RuntimeAdapters(unittest.TestCase):
    """vLLM's /v1/load_lora_adapter and /v1/unload_lora_adapter, confined to --lora-root (EMBER_ADAPTERS)."""

    def post(self, path, body):
        return httpx.post(BASE + path, headers=HEADERS, json=body, timeout=120)

    def text(self, model):
        return client.completions.create(model=model, prompt="The sea is", max_tokens=8, temperature=0).choices[0].text

    def test_load_use_unload_and_reload_under_the_same_name(self):
        self.assertEqual(self.post("/v1/load_lora_adapter", {"lora_name": "three", "lora_path": "1"}).status_code, 200)
        self.assertIn("three", [m.id for m in client.models.list().data])
        self.assertEqual(self.text("three"), self.text("one"))
        self.assertEqual(self.post("/v1/load_lora_adapter", {"lora_name": "three", "lora_path": "2"}).status_code, 400)
        self.assertEqual(self.post("/v1/unload_lora_adapter", {"lora_name": "three"}).status_code, 200)
        with self.assertRaises(openai.NotFoundError):
            self.text("three")
        self.assertEqual(self.post("/v1/unload_lora_adapter", {"lora_name": "three"}).status_code, 404)
        # Another adapter under the name used before: its own outputs, never the first one's cached rows.
        self.assertEqual(self.post("/v1/load_lora_adapter", {"lora_name": "three", "lora_path": os.environ["EMBER_ADAPTERS"] + "/2"}).status_code, 200)
        self.assertEqual(self.text("three"), self.text("two"))
        self.assertEqual(self.post("/v1/unload_lora_adapter", {"lora_name": "three"}).status_code, 200)

    def test_paths_outside_the_root_are_refused(self):
        root = os.environ["EMBER_ADAPTERS"]
        outside = root + "-outside"
        os.makedirs(outside, exist_ok=True)
        link = os.path.join(root, "escape")
        if not os.path.islink(link):
            os.symlink(outside, link)
        for path in ["../" + os.path.basename(outside), outside, "/etc", "escape", "1/../../" + os.path.basename(outside)]:
            r = self.post("/v1/load_lora_adapter", {"lora_name": "x", "lora_path": path})
            print(f"lora_path {path!r}: {r.status_code} {r.json()['error']['message']}")
            self.assertEqual(r.status_code, 403, path)
            self.assertEqual(r.json()["error"]["param"], "lora_path")
        self.assertEqual(self.post("/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "missing"}).status_code, 404)
        self.assertEqual(self.post("/v1/load_lora_adapter", {"lora_name": MODEL, "lora_path": "1"}).status_code, 400)
        self.assertNotIn("x", [m.id for m in client.models.list().data])


class Limits(unittest.TestCase):
    """What the server refuses at its edges: methods, sizes, keys; and its API description."""

    def test_another_method_is_405_with_allow(self):
        r = httpx.get(BASE + "/v1/completions", headers=HEADERS)
        self.assertEqual(r.status_code, 405)
        self.assertEqual(r.headers["allow"], "POST")
        self.assertIn("message", r.json()["error"])

    def test_a_body_over_the_limit_is_413(self):
        r = httpx.post(BASE + "/v1/completions", headers=HEADERS, content=b'{"prompt": "' + b"a" * (5 << 20) + b'"}', timeout=120)
        self.assertEqual(r.status_code, 413)

    def test_a_huge_header_is_refused_and_the_server_goes_on(self):
        try:
            r = httpx.get(BASE + "/v1/models", headers={**HEADERS, "X-Big": "a" * (200 << 10)}, timeout=30)
            self.assertGreaterEqual(r.status_code, 400)
        except httpx.HTTPError:
            pass  # the connection closed: also a refusal
        self.assertEqual(httpx.get(BASE + "/health").status_code, 200)

    def test_a_wrong_key_of_any_length_is_401(self):
        for key in ["k", KEY[:-1], KEY + "x", "x" * len(KEY)]:
            r = httpx.get(BASE + "/v1/models", headers={"Authorization": f"Bearer {key}"})
            self.assertEqual(r.status_code, 401, key)
        self.assertEqual(httpx.get(BASE + "/v1/models").status_code, 401)

    def test_openapi_document_describes_every_route(self):
        document = httpx.get(BASE + "/openapi.json", headers=HEADERS).json()
        self.assertTrue(document["openapi"].startswith("3."))
        for path in ["/health", "/metrics", "/v1/models", "/tokenize", "/detokenize", "/v1/chat/completions", "/v1/completions",
                     "/infill", "/pooling", "/v1/embeddings", "/openapi.json", "/v1/load_lora_adapter", "/v1/unload_lora_adapter"]:
            self.assertIn(path, document["paths"])


class Infill(unittest.TestCase):
    """llama.cpp's /infill and OpenAI's `suffix`, on a model with FIM tokens (the base has none)."""

    FIM = os.environ["EMBER_FIM_URL"]
    PREFIX, SUFFIX = "def area(width, height):\n    ", "\n    return result\n"

    def post(self, path, body, base=None):
        return httpx.post((base or self.FIM) + path, headers=HEADERS, json=body, timeout=120)

    def tokens(self, text):
        return self.post("/tokenize", {"prompt": text, "add_special_tokens": False}).json()["tokens"]

    def layout(self, prefix, suffix, extra=()):
        """The prompt llama-server builds: <reponame>myproject\\n (SmolLM2's <reponame> is what llama.cpp
        takes for the repository marker), the extra files, <fim_prefix> prefix <fim_suffix> suffix <fim_middle>."""
        [pre], [suf], [mid], [rep] = (self.tokens(t) for t in ["<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<reponame>"])
        files = [t for f in extra for t in self.tokens("\n\n--- snippet ---\n\n") + self.tokens(f["text"])]
        return [rep] + self.tokens("myproject\n") + files + [pre] + self.tokens(prefix) + [suf] + self.tokens(suffix) + [mid]

    def infill(self, **kw):
        body = {"input_prefix": self.PREFIX, "input_suffix": self.SUFFIX, "n_predict": 12, "temperature": 0, **kw}
        r = self.post("/infill", body)
        self.assertEqual(r.status_code, 200, r.text)
        return r.json()

    def test_infill_runs_llama_servers_prompt(self):
        answer = self.infill()
        layout = self.layout(self.PREFIX, self.SUFFIX)
        self.assertEqual(answer["tokens_evaluated"], len(layout))
        direct = self.post("/v1/completions", {"prompt": layout, "max_tokens": 12, "temperature": 0}).json()
        self.assertEqual(answer["content"], direct["choices"][0]["text"])
        self.assertEqual(answer["tokens_predicted"], direct["usage"]["completion_tokens"])
        self.assertIn(answer["stop_type"], ["eos", "limit"])

    def test_suffix_on_completions_equals_infill(self):
        completion = client.with_options(base_url=self.FIM + "/v1").completions.create(
            model="fim", prompt=self.PREFIX, suffix=self.SUFFIX, max_tokens=12, temperature=0)
        self.assertEqual(completion.choices[0].text, self.infill()["content"])
        self.assertEqual(completion.usage.prompt_tokens, len(self.layout(self.PREFIX, self.SUFFIX)))

    def test_input_extra_and_prompt(self):
        extra = [{"filename": "shapes.py", "text": "PI = 3.14159\n"}]
        answer = self.infill(input_extra=extra, prompt="result =")
        expected = self.layout(self.PREFIX, self.SUFFIX, extra)
        self.assertEqual(answer["tokens_evaluated"], len(expected) + len(self.tokens("result =")))

    def test_bad_infill_requests(self):
        cases = [
            ({"input_prefix": "a"}, 400, "input_suffix"),
            ({"input_suffix": "a"}, 400, "input_prefix"),
            ({"input_prefix": "a", "input_suffix": "b", "input_extra": "x"}, 400, "input_extra"),
            ({"input_prefix": "a", "input_suffix": "b", "input_extra": [{"filename": "f"}]}, 400, "input_extra"),
            ({"input_prefix": "a", "input_suffix": "b", "stream": True}, 400, "stream"),
            ({"input_prefix": 3, "input_suffix": "b"}, 400, "input_prefix"),
        ]
        for body, status, param in cases:
            r = self.post("/infill", body)
            print(f"/infill {json.dumps(body)}: {r.status_code} {r.json()['error']['message']}")
            self.assertEqual(r.status_code, status)
            self.assertEqual(r.json()["error"]["param"], param)

    def test_a_model_without_fim_tokens_refuses(self):
        r = self.post("/infill", {"input_prefix": "a", "input_suffix": "b"}, base=BASE)
        self.assertEqual(r.status_code, 501)
        self.assertIn("Infill is not supported", r.json()["error"]["message"])
        with self.assertRaises(openai.BadRequestError):
            client.completions.create(model=MODEL, prompt="a", suffix="b", max_tokens=2)


class Pooling(unittest.TestCase):
    """vLLM's /pooling on a reward model: one score per input, read at its last token."""

    REWARD = os.environ["EMBER_REWARD_URL"]

    def post(self, path, body, base=None):
        return httpx.post((base or self.REWARD) + path, headers=HEADERS, json=body, timeout=120)

    def scores(self, body):
        r = self.post("/pooling", {"model": "reward", **body})
        self.assertEqual(r.status_code, 200, r.text)
        answer = r.json()
        self.assertEqual(answer["object"], "list")
        self.assertEqual([d["index"] for d in answer["data"]], list(range(len(answer["data"]))))
        self.assertTrue(all(d["object"] == "pooling" and len(d["data"]) == 1 for d in answer["data"]))
        return [d["data"][0] for d in answer["data"]], answer["usage"]

    def test_text_ids_and_messages_score_alike(self):
        messages = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]
        ids = self.post("/tokenize", {"messages": messages, "add_generation_prompt": False}).json()["tokens"]
        text = self.post("/detokenize", {"tokens": ids}).json()["prompt"]
        [by_messages], usage = self.scores({"messages": messages})
        self.assertEqual(usage["prompt_tokens"], len(ids))
        [by_ids], _ = self.scores({"input": ids})
        [by_text], _ = self.scores({"input": text})
        self.assertEqual(by_messages, by_ids)
        self.assertEqual(by_text, by_ids)

    def test_a_batch_scores_each_input_alone(self):
        texts = ["The sky is blue.", "Paris is the capital of France.", "Two and two make five."]
        together, usage = self.scores({"input": texts})
        alone = [self.scores({"input": t})[0][0] for t in texts]
        self.assertEqual(together, alone)
        self.assertEqual(len(set(together)), 3)

    def test_bad_pooling_requests(self):
        cases = [({"input": 5}, 400), ({"input": []}, 400), ({"input": [10 ** 9]}, 400), ({"input": [[1, 2], 3.5]}, 400),
                 ({}, 400), ({"messages": "hi"}, 400), ({"model": "nope", "input": "a"}, 404)]
        for body, status in cases:
            r = self.post("/pooling", body)
            print(f"/pooling {json.dumps(body)}: {r.status_code} {r.json()['error']['message']}")
            self.assertEqual(r.status_code, status)

    def test_a_reward_model_does_not_generate_and_a_generator_does_not_score(self):
        r = self.post("/v1/completions", {"prompt": "a", "max_tokens": 2})
        self.assertEqual(r.status_code, 400)
        self.assertIn("reward model", r.json()["error"]["message"])
        r = self.post("/pooling", {"input": "a"}, base=BASE)
        self.assertEqual(r.status_code, 400)
        self.assertIn("no score head", r.json()["error"]["message"])


def embedding_fixture():
    """The sentences, their token ids and sentence-transformers' embeddings (384 floats each)."""
    folder = os.path.join(os.path.dirname(__file__), "..", "Fixtures", "embeddings")
    with open(os.path.join(folder, "minilm.json")) as f:
        fixture = json.load(f)
    with open(os.path.join(folder, "minilm.f32"), "rb") as f:
        raw = f.read()
    return fixture, [list(struct.unpack_from("<384f", raw, 4 * 384 * i)) for i in range(len(fixture["sentences"]))]


class Embeddings(unittest.TestCase):
    """OpenAI's embeddings API on a sentence encoder, through the openai client."""

    URL = os.environ["EMBER_EMBEDDING_URL"]
    embedder = openai.OpenAI(base_url=URL + "/v1", api_key=KEY, max_retries=0, timeout=120)
    fixture, reference = embedding_fixture()

    @staticmethod
    def cosine(a, b):
        dot = sum(x * y for x, y in zip(a, b))
        return dot / (sum(x * x for x in a) * sum(y * y for y in b)) ** 0.5

    def test_embeddings_create_equals_sentence_transformers(self):
        model = self.embedder.models.list().data[0].id
        texts = self.fixture["sentences"][:8]
        answer = self.embedder.embeddings.create(model=model, input=texts)
        self.assertEqual([d.index for d in answer.data], list(range(8)))
        self.assertEqual(answer.usage.prompt_tokens, sum(len(i) for i in self.fixture["ids"][:8]))
        worst = min(self.cosine(d.embedding, r) for d, r in zip(answer.data, self.reference))
        print(f"embeddings.create, 8 sentences: lowest cosine to sentence-transformers {worst:.10f}")
        self.assertGreater(worst, 1 - 1e-6)
        # One string, token ids, and base64 (little-endian f32, which the client decodes) agree.
        single = self.embedder.embeddings.create(model=model, input=texts[1]).data[0].embedding
        ids = self.embedder.embeddings.create(model=model, input=[self.fixture["ids"][1][1:-1]]).data[0].embedding
        # Alone or in a batch the products are split differently, so the sums round differently.
        self.assertLess(max(abs(x - y) for x, y in zip(single, answer.data[1].embedding)), 1e-6)
        self.assertEqual(ids, single)
        r = httpx.post(self.URL + "/v1/embeddings", headers=HEADERS, json={"input": texts[1], "encoding_format": "base64"})
        decoded = list(struct.unpack("<384f", base64.b64decode(r.json()["data"][0]["embedding"])))
        self.assertEqual(decoded, [struct.unpack("<f", struct.pack("<f", x))[0] for x in single])

    def test_bad_embedding_requests(self):
        cases = [({"input": 5}, 400), ({"input": []}, 400), ({"input": [10 ** 9]}, 400), ({"input": ["a", 3]}, 400), ({}, 400),
                 ({"input": "a", "encoding_format": "int8"}, 400), ({"input": "a", "dimensions": 64}, 400),
                 ({"input": "a", "model": "nope"}, 404)]
        for body, status in cases:
            r = httpx.post(self.URL + "/v1/embeddings", headers=HEADERS, json=body)
            print(f"/v1/embeddings {json.dumps(body)}: {r.status_code} {r.json()['error']['message']}")
            self.assertEqual(r.status_code, status)
        self.assertEqual(httpx.post(self.URL + "/v1/embeddings", headers=HEADERS, json={"input": "a", "dimensions": 384}).status_code, 200)
        r = httpx.post(self.URL + "/v1/completions", headers=HEADERS, json={"prompt": "a"})
        self.assertEqual(r.status_code, 400)
        self.assertIn("embedding model", r.json()["error"]["message"])
        r = httpx.post(BASE + "/v1/embeddings", headers=HEADERS, json={"input": "a"})
        self.assertEqual(r.status_code, 400)
        self.assertIn("generative model", r.json()["error"]["message"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
