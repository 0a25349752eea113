"""A model's own Hugging Face tokenizer: the same ids as transformers for text and chat, the
assistant mask from its template, its stop ids; real Qwen 3, Llama 3 and Gemma 3 files (and
Llama 2's, which has no chat template, for its stop ids)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hub_tokenizers import hub_tokenizer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from tokenmill.errors import TokenmillError
from tokenmill.tokenizer import Tokenizer
from tokenmill.tokenizer.pretrained import PretrainedTokenizer

TEXTS = [
    "Hello world",
    "  leading spaces, trailing spaces  ",
    "Die Würde des Menschen ist unantastbar. 人人生而自由 👩‍👩‍👧‍👦 e\u0301",
    "def f(x):\n\treturn x ** 2  # tabs\r\nand windows line ends",
    "a special token spelled as text: <|im_end|> <|eot_id|> <end_of_turn> <s></s>",
]
CONVERSATION = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "It is 4."},
    {"role": "user", "content": "And 3 + 3, über-quickly? 🙂"},
    {"role": "assistant", "content": "6, naturally."},
]
# What SFT trains on: each assistant turn as the template writes it after the generation prompt,
# through its end-of-turn token. Qwen 3 writes an empty thinking block into the last turn.
ASSISTANT_RUNS = {
    "qwen3": ["It is 4.<|im_end|>", "<think>\n\n</think>\n\n6, naturally.<|im_end|>"],
    "llama3": ["It is 4.<|eot_id|>", "6, naturally.<|eot_id|>"],
    "gemma3": ["It is 4.<end_of_turn>", "6, naturally.<end_of_turn>"],
}
CHAT_FAMILIES = list(ASSISTANT_RUNS)


@pytest.fixture(scope="module", params=CHAT_FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def pair(family):
    """Our tokenizer and transformers', loaded from the same folder."""
    folder = hub_tokenizer(family)
    return family, Tokenizer.load(folder), AutoTokenizer.from_pretrained(str(folder))


def masked_runs(tok: Tokenizer, ids: list[int], mask: list[int]) -> list[str]:
    """The decoded text of each maximal run of masked tokens."""
    runs, current = [], []
    for i, m in zip(ids, mask):
        if m:
            current.append(i)
        elif current:
            runs.append(tok.decode(current))
            current = []
    return runs + ([tok.decode(current)] if current else [])


def test_plain_text_ids_are_transformers_ids(pair):
    family, tok, hf = pair
    assert isinstance(tok, PretrainedTokenizer)
    assert tok.vocab_size == len(hf)
    assert (tok.bos_id, tok.eos_id) == (hf.bos_token_id, hf.eos_token_id)
    for text in TEXTS:
        # Text is text: spellings of special tokens are encoded as characters, as split_special_tokens does.
        assert tok.encode(text) == hf.encode(text, add_special_tokens=False, split_special_tokens=True), text
        assert tok.prompt_ids(text) == hf(text, split_special_tokens=True)["input_ids"], text
        assert tok.decode(tok.encode(text)) == hf.decode(tok.encode(text), clean_up_tokenization_spaces=False)
        assert tok.encode_batch([text]) == [tok.encode(text)]
    # The tokenizer's post-processor decides: Qwen has no BOS, and this Llama 3 tokenizer.json adds none.
    assert (tok.prompt_ids("Hi")[0] == tok.bos_id) == (family == "gemma3")


def test_token_bytes_spell_the_text(pair):
    _, tok, _ = pair
    text = "Größe: 1,75 m 👍🏽 naïve"
    assert b"".join(tok.token_bytes(i) for i in tok.encode(text)).decode("utf-8").strip() == text


@pytest.mark.parametrize("system", [True, False])
@pytest.mark.parametrize("turns", [1, 2, 3, 4])
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_chat_ids_are_transformers_ids(pair, system, turns, add_generation_prompt):
    _, tok, hf = pair
    if add_generation_prompt and turns % 2 == 0:
        turns -= 1  # the prompt ends with a user turn
    messages = CONVERSATION[(0 if system else 1) : 1 + turns]
    expected = hf.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True)["input_ids"]
    chat = tok.encode_chat(messages, add_generation_prompt)
    assert chat.ids == expected
    assert tok.render_chat(messages, add_generation_prompt) == hf.apply_chat_template(
        messages, add_generation_prompt=add_generation_prompt, tokenize=False
    )
    assert len(chat.loss_mask) == len(chat.ids)


def test_assistant_mask_is_each_assistant_turn_through_its_end_token(pair):
    family, tok, _ = pair
    chat = tok.encode_chat(CONVERSATION)
    assert masked_runs(tok, chat.ids, chat.loss_mask) == ASSISTANT_RUNS[family]
    prompt = tok.encode_chat(CONVERSATION[:2], add_generation_prompt=True)
    assert sum(prompt.loss_mask) == 0


contents = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(system=st.one_of(st.none(), contents), turns=st.lists(st.tuples(contents, contents), min_size=1, max_size=3))
def test_unicode_conversations_match_transformers(pair, system, turns):
    _, tok, hf = pair
    messages = [{"role": "system", "content": system}] if system is not None else []
    for question, answer in turns:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    chat = tok.encode_chat(messages)
    assert chat.ids == hf.apply_chat_template(messages, tokenize=True)["input_ids"]
    prompt = tok.encode_chat(messages[:-1], add_generation_prompt=True)
    assert prompt.ids == hf.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=True)["input_ids"]
    # The last answer is masked through its end token; what the mask covers decodes to the answer.
    runs = masked_runs(tok, chat.ids, chat.loss_mask)
    assert len(runs) <= len(turns)
    assert runs and runs[-1].endswith(tok.end_of_turn)
    assert turns[-1][1].strip() in runs[-1]


def test_stop_ids_per_family(tmp_path):
    expected = {
        # generation_config.json as the instruct models ship it, where it adds ids.
        "qwen3": ([151645, 151643], {"<|im_end|>", "<|endoftext|>"}),
        "llama3": ([128001, 128009], {"<|end_of_text|>", "<|eot_id|>"}),
        "gemma3": (None, {"<end_of_turn>"}),
        "llama2": (2, {"</s>"}),
    }
    for family, (eos_token_id, spellings) in expected.items():
        folder = tmp_path / family
        shutil.copytree(hub_tokenizer(family), folder)
        if eos_token_id is not None:
            (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": eos_token_id}))
        tok = Tokenizer.load(folder)
        assert tok.stop_ids == {tok.token_to_id(s) for s in spellings}, family
        assert tok.end_id in tok.stop_ids


def test_template_sources(tmp_path):
    """tokenizer_config.json's template (a string or named templates) or chat_template.jinja."""
    source = hub_tokenizer("qwen3")
    config = json.loads((source / "tokenizer_config.json").read_text())
    template = config.pop("chat_template")
    folder = tmp_path / "qwen"
    folder.mkdir()
    shutil.copyfile(source / "tokenizer.json", folder / "tokenizer.json")
    messages = CONVERSATION[:3]

    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(TokenmillError, match="no chat template"):
        Tokenizer.load(folder).encode_chat(messages)
    (folder / "chat_template.jinja").write_text(template)
    from_file = Tokenizer.load(folder).encode_chat(messages)
    named = [{"name": "tool_use", "template": "{{ raise_exception('not this one') }}"}, {"name": "default", "template": template}]
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": named}))
    assert Tokenizer.load(folder).encode_chat(messages) == from_file
    hf = AutoTokenizer.from_pretrained(str(folder))
    assert from_file.ids == hf.apply_chat_template(messages, tokenize=True)["input_ids"]

    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": named[:1]}))
    with pytest.raises(TokenmillError, match="none named 'default'"):
        Tokenizer.load(folder)


def write_template(source: Path, folder: Path, template: str) -> Path:
    folder.mkdir()
    shutil.copyfile(source / "tokenizer.json", folder / "tokenizer.json")
    config = json.loads((source / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": template}))
    return folder


# ChatML with the assistant's part marked, as templates written for training mark it.
MARKED = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def test_generation_blocks_give_transformers_assistant_mask(tmp_path):
    """With {% generation %} blocks the mask is transformers' return_assistant_tokens_mask; without
    them, the turn-by-turn renderings find the same tokens."""
    source = hub_tokenizer("qwen3")
    marked = write_template(source, tmp_path / "marked", MARKED)
    plain = write_template(source, tmp_path / "plain", MARKED.replace("{% generation %}", "").replace("{% endgeneration %}", ""))
    hf = AutoTokenizer.from_pretrained(str(marked))
    for messages in (CONVERSATION, CONVERSATION[1:3], [{"role": "user", "content": "x"}, {"role": "assistant", "content": ""}]):
        expected = hf.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        ours = Tokenizer.load(marked).encode_chat(messages)
        assert ours.ids == expected["input_ids"]
        assert ours.loss_mask == expected["assistant_masks"]
        assert Tokenizer.load(plain).encode_chat(messages) == ours


def test_template_is_sandboxed_and_errors_name_the_template(tmp_path):
    source = hub_tokenizer("qwen3")
    escape = write_template(source, tmp_path / "escape", "{{ messages.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(TokenmillError, match="chat template of .*escape"):
        Tokenizer.load(escape).encode_chat(CONVERSATION[1:3])
    raising = write_template(source, tmp_path / "raising", "{{ raise_exception('roles must alternate') }}")
    with pytest.raises(TokenmillError, match="roles must alternate"):
        Tokenizer.load(raising).encode_chat(CONVERSATION[1:3])
    broken = write_template(source, tmp_path / "broken", "{% for m in messages %}")
    with pytest.raises(TokenmillError, match="not valid Jinja"):
        Tokenizer.load(broken)


def test_tojson_keeps_html_characters_as_transformers_does(tmp_path):
    folder = write_template(hub_tokenizer("qwen3"), tmp_path / "json", "{{ messages | tojson }}{{ eos_token | tojson }}")
    messages = [{"role": "user", "content": "<b>a & b</b> 'quoted' ü"}]
    hf = AutoTokenizer.from_pretrained(str(folder))
    assert Tokenizer.load(folder).render_chat(messages) == hf.apply_chat_template(messages, tokenize=False)
