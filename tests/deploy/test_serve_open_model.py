"""An imported Hub model served: the prompt is its own chat template (the ids of transformers'
`apply_chat_template`) and the answer ends at the template's end-of-turn token, as transformers'
`generate` ends it."""

from __future__ import annotations

import pytest
import torch
import transformers
from hub_tokenizers import hub_tokenizer
from serve_helpers import NAME, LiveServer, reference_greedy

from tokenmill.cli import main
from tokenmill.deploy.serve.engine import EngineConfig
from tokenmill.deploy.serve.server import Limits

T = transformers

MESSAGES = [{"role": "system", "content": "You answer briefly."}, {"role": "user", "content": "Say hello, über-quickly 🙂"}]


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """A tiny Qwen2 with Qwen 3's tokenizer, wired to answer the chat prompt with two tokens and
    then <|im_end|>: every block adds nothing (output projections zero), so the next token is a
    function of the last one alone, which the untied head maps along prompt end → A → B → <|im_end|>."""
    transformers.logging.set_verbosity_error()
    tokenizer = T.AutoTokenizer.from_pretrained(str(hub_tokenizer("qwen3")))
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = T.Qwen2Config(hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
                           num_hidden_layers=2, vocab_size=len(tokenizer), max_position_embeddings=128,
                           tie_word_embeddings=False, eos_token_id=end)
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(config).eval()
    prompt = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True, return_dict=False)
    a, b = tokenizer.encode("Hello", add_special_tokens=False)[0], tokenizer.encode("!", add_special_tokens=False)[0]
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb, head = model.model.embed_tokens.weight, model.lm_head.weight
        head.zero_()
        for src, dst in ((prompt[-1], a), (a, b), (b, end)):
            head[dst] = 10 * emb[src]
    folder = tmp_path_factory.mktemp("qwen") / "hf"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, tokenizer, model, prompt, [a, b, end]


@pytest.fixture(scope="module")
def live(hf, tmp_path_factory):
    folder = tmp_path_factory.mktemp("served") / NAME
    assert main(["convert", str(hf[0]), str(folder), "--to", "tokenmill"]) == 0
    server = LiveServer(folder, EngineConfig(num_blocks=16, block_size=16, max_num_seqs=4), Limits())
    yield server
    server.stop()


def test_chat_prompt_is_the_model_template_and_the_answer_stops_at_its_end_of_turn(live, hf):
    _, tokenizer, model, prompt, answer = hf
    with torch.no_grad():  # transformers, from the same folder, writes the same answer and stops there
        assert model.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False)[0, len(prompt):].tolist() == answer
    assert reference_greedy(live.model, prompt, 10, live.tokenizer.stop_ids) == answer

    r = live.client().chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=10, temperature=0)
    assert r.usage.prompt_tokens == len(prompt)
    assert r.choices[0].message.content == tokenizer.decode(answer[:-1]) == "Hello!"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == len(answer)  # the end-of-turn token is generated, not shown


def test_a_streamed_chat_stops_at_the_end_of_turn_too(live):
    stream = live.client().chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=10, temperature=0, stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello!"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]


def test_serve_loads_an_imported_folder_with_its_own_tokenizer(hf, tmp_path):
    # What `tokenmill serve MODEL_DIR` calls: a Hub tokenizer carries no tokenmill_tokenizer.json.
    from tokenmill.deploy.serve.loading import load_engine

    assert main(["convert", str(hf[0]), str(tmp_path / "tm"), "--to", "tokenmill"]) == 0
    engine = load_engine(tmp_path / "tm", EngineConfig(num_blocks=16, block_size=16, max_num_seqs=4), device="cpu")
    assert engine.engine.tokenizer.encode_chat(MESSAGES, add_generation_prompt=True).ids == hf[3]
    assert hf[4][-1] in engine.engine.tokenizer.stop_ids
