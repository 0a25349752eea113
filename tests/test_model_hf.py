"""Hugging Face interop: logits parity with `transformers` for every family, exact round trips.

Each case builds a tiny random `transformers` model from a config (no hub), perturbs every
parameter (so that norms and biases are not at their 1/0 init and a swapped tensor shows),
saves it, converts it to tokenmill, compares logits, exports it back, loads that with
`AutoModelForCausalLM.from_pretrained`, and converts again: the weights must come back bit-equal.
"""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from safetensors.torch import load_file  # noqa: E402

from tokenmill.errors import TokenmillError  # noqa: E402
from tokenmill.model.config import ModelConfig  # noqa: E402
from tokenmill.model.hf import export_hf, import_hf  # noqa: E402
from tokenmill.model.io import build_model, load_model, save_model  # noqa: E402
from tokenmill.model.kv_cache import KVCache  # noqa: E402

T = transformers
V = 96
SMALL = dict(vocab_size=V, num_hidden_layers=2)
LLAMA = dict(hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2, **SMALL)

CASES = {
    # name: (transformers config, the family tokenmill exports it as)
    "llama-gqa": (lambda: T.LlamaConfig(**LLAMA), "llama"),
    "llama-yarn": (lambda: T.LlamaConfig(**{**LLAMA, "max_position_embeddings": 64}, rope_parameters={
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "rope_theta": 10000.0}), "llama"),
    "llama-linear-mqa-bias": (lambda: T.LlamaConfig(**{**LLAMA, "num_key_value_heads": 1}, attention_bias=True, mlp_bias=True,
                                                    rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0}), "llama"),
    "mistral-sliding-window": (lambda: T.MistralConfig(**LLAMA, sliding_window=5), "mistral"),
    "gemma-mqa": (lambda: T.GemmaConfig(**{**LLAMA, "num_key_value_heads": 1}, head_dim=16), "gemma"),
    "gpt2": (lambda: T.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=32, vocab_size=V), "gpt2"),
    "gpt-neox-parallel": (lambda: T.GPTNeoXConfig(hidden_size=32, intermediate_size=48, num_attention_heads=4, **SMALL), "gpt_neox"),
    "gpt-neox-sequential-tied": (lambda: T.GPTNeoXConfig(hidden_size=32, intermediate_size=48, num_attention_heads=4,
                                                         use_parallel_residual=False, tie_word_embeddings=True, **SMALL), "gpt_neox"),
    "falcon-7b-style": (lambda: T.FalconConfig(hidden_size=32, num_attention_heads=4, **SMALL), "falcon"),
    "falcon-40b-style": (lambda: T.FalconConfig(hidden_size=32, num_attention_heads=4, num_kv_heads=2,
                                                new_decoder_architecture=True, **SMALL), "falcon"),
    # Exactly a sequential GPT-NeoX block, so the first family that expresses it is gpt_neox.
    "falcon-mha-sequential": (lambda: T.FalconConfig(hidden_size=32, num_attention_heads=4, multi_query=False,
                                                     parallel_attn=False, bias=True, **SMALL), "gpt_neox"),
    "mpt": (lambda: T.MptConfig(d_model=32, n_layers=2, n_heads=4, vocab_size=V), "mpt"),
    "bloom": (lambda: T.BloomConfig(hidden_size=32, n_layer=2, n_head=4, vocab_size=V), "bloom"),
    "bloom-6-heads": (lambda: T.BloomConfig(hidden_size=36, n_layer=2, n_head=6, vocab_size=V), "bloom"),
    # Llama 3.1/3.2: with theta 10^4 and an original context of 64, the 4 frequencies of head_dim 8 fall in
    # every band (kept, blended, interpolated).
    "llama3.1-rope": (lambda: T.LlamaConfig(**{**LLAMA, "max_position_embeddings": 256}, rope_parameters={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64, "rope_theta": 10000.0}), "llama"),
    "smollm2-is-llama": (lambda: T.LlamaConfig(**LLAMA, tie_word_embeddings=True,
                                               rope_parameters={"rope_type": "default", "rope_theta": 100000.0}), "llama"),
    "qwen2": (lambda: T.Qwen2Config(**LLAMA), "qwen2"),
    "qwen2.5-tied": (lambda: T.Qwen2Config(**LLAMA, tie_word_embeddings=True), "qwen2"),
    "qwen3": (lambda: T.Qwen3Config(**LLAMA, head_dim=16), "qwen3"),
    "gemma2": (lambda: T.Gemma2Config(**{**LLAMA, "num_hidden_layers": 3}, head_dim=16, sliding_window=4,
                                      query_pre_attn_scalar=24, attn_logit_softcapping=2.0, final_logit_softcapping=3.0),
               "gemma2"),
    "gemma3-text": (lambda: T.Gemma3TextConfig(**{**LLAMA, "num_hidden_layers": 3}, head_dim=16, sliding_window=4,
                                               layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                                               rope_parameters={
                                                   "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                                                   "sliding_attention": {"rope_type": "default", "rope_theta": 100.0}}),
                    "gemma3_text"),
    # Fused Q/K/V and gate/up, otherwise LLaMA (and Mistral with its sliding window): exported as those.
    "phi3": (lambda: T.Phi3Config(**LLAMA, pad_token_id=0), "llama"),
    "phi3-sliding-window": (lambda: T.Phi3Config(**LLAMA, pad_token_id=0, sliding_window=5), "mistral"),
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True, scope="module")
def quiet_transformers():
    transformers.logging.set_verbosity_error()


def random_hf_model(config, folder, dtype=torch.float32):
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.to(dtype).save_pretrained(folder)
    return model


@pytest.mark.parametrize("case", CASES)
def test_logits_parity_and_exact_round_trip(case, tmp_path):
    make_config, family = CASES[case]
    hf = random_hf_model(make_config(), tmp_path / "hf")
    ids = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = hf(ids).logits

    import_hf(tmp_path / "hf", tmp_path / "tokenmill")
    model = load_model(tmp_path / "tokenmill", device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(model(ids), reference, atol=1e-4, rtol=0)
        # KV-cached decoding (a prompt of 5, then one token at a time) computes the same logits.
        cache = KVCache(model.config, batch_size=2, max_len=ids.shape[1])
        steps = [model(ids[:, :5], positions=torch.arange(5), cache=cache)]
        steps += [model(ids[:, i : i + 1], positions=torch.tensor([i]), cache=cache) for i in range(5, ids.shape[1])]
        torch.testing.assert_close(torch.cat(steps, dim=1), reference, atol=1e-4, rtol=0)

    assert export_hf(tmp_path / "tokenmill", tmp_path / "hf2").model_type == family
    again = T.AutoModelForCausalLM.from_pretrained(tmp_path / "hf2").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, reference, atol=1e-4, rtol=0)

    import_hf(tmp_path / "hf2", tmp_path / "tokenmill2")
    first, second = load_file(tmp_path / "tokenmill" / "model.safetensors"), load_file(tmp_path / "tokenmill2" / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert (tmp_path / "tokenmill" / "model.json").read_text() == (tmp_path / "tokenmill2" / "model.json").read_text()


@pytest.mark.parametrize("case", ["phi3", "phi3-sliding-window"])
def test_phi3_exports_with_fused_projections_when_asked(case, tmp_path):
    hf = random_hf_model(CASES[case][0](), tmp_path / "hf")
    ids = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(1))
    import_hf(tmp_path / "hf", tmp_path / "tokenmill")
    assert export_hf(tmp_path / "tokenmill", tmp_path / "hf2", family_name="phi3").model_type == "phi3"
    assert load_file(tmp_path / "hf2" / "model.safetensors").keys() == load_file(tmp_path / "hf" / "model.safetensors").keys()
    again = T.AutoModelForCausalLM.from_pretrained(tmp_path / "hf2").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, hf(ids).logits, atol=1e-4, rtol=0)


def test_phi3_longrope_is_refused_by_name(tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    config = T.Phi3Config(**LLAMA, pad_token_id=0, max_position_embeddings=64, original_max_position_embeddings=16,
                          rope_parameters={"rope_type": "longrope", "short_factor": [1.0] * 4, "long_factor": [2.0] * 4,
                                           "rope_theta": 10000.0})
    (folder / "config.json").write_text(json.dumps(config.to_dict()))
    with pytest.raises(TokenmillError, match="RoPE type 'longrope' .*frequencies switch with the sequence length"):
        import_hf(folder, tmp_path / "out")


def test_gemma2_refuses_layer_types_that_are_not_every_nth(tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    config = T.Gemma2Config(**{**LLAMA, "num_hidden_layers": 3}, head_dim=16,
                            layer_types=["sliding_attention", "full_attention", "full_attention"])
    (folder / "config.json").write_text(json.dumps(config.to_dict()))
    with pytest.raises(TokenmillError, match="tokenmill makes every Nth layer global"):
        import_hf(folder, tmp_path / "out")


def run_cli(*argv: str) -> int:
    import argparse

    from tokenmill.model.cli import register

    parser = argparse.ArgumentParser(prog="tokenmill")
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_tokenmill_model_to_hf_and_back_keeps_dtype_tokenizer_and_special_ids(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    config = ModelConfig(vocab_size=V, context_length=32, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2)
    torch.manual_seed(0)
    save_model(build_model(config, device="cpu", dtype=torch.bfloat16), tmp_path / "tm")
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel()
    tokenizer.train_from_iterator(["hello world"] * 10, trainers.BpeTrainer(vocab_size=V, special_tokens=["<unk>", "<s>", "</s>"]))
    tokenizer.save(str(tmp_path / "tm" / "tokenizer.json"))
    (tmp_path / "tm" / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))

    assert run_cli("convert", str(tmp_path / "tm"), str(tmp_path / "hf"), "--to", "hf") == 0
    hf_config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (hf_config["bos_token_id"], hf_config["eos_token_id"], hf_config["pad_token_id"]) == (1, 2, None)
    assert hf_config["dtype"] == "bfloat16"
    assert (tmp_path / "hf" / "tokenizer.json").read_bytes() == (tmp_path / "tm" / "tokenizer.json").read_bytes()
    hf = T.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert hf.dtype == torch.bfloat16

    assert run_cli("convert", str(tmp_path / "hf"), str(tmp_path / "back"), "--to", "tokenmill") == 0
    first, second = load_file(tmp_path / "tm" / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
    assert all(first[k].dtype == torch.bfloat16 and torch.equal(first[k], second[k]) for k in first)
    assert (tmp_path / "back" / "tokenizer_config.json").is_file()


def test_export_names_what_no_family_expresses(tmp_path):
    config = ModelConfig(vocab_size=V, context_length=32, d_model=32, n_layers=1, n_heads=4, mlp="relu2")
    save_model(build_model(config, device="cpu"), tmp_path / "tm")
    with pytest.raises(TokenmillError, match=r"llama: cannot express mlp \('relu2'; llama gives 'swiglu'\)"):
        export_hf(tmp_path / "tm", tmp_path / "hf")
    with pytest.raises(TokenmillError, match="bloom: cannot express"):
        run_cli("convert", str(tmp_path / "tm"), str(tmp_path / "hf"), "--to", "hf", "--family", "bloom")
    assert not (tmp_path / "hf").exists()


def test_static_ntk_export_suggests_the_equivalent_theta(tmp_path):
    config = ModelConfig(vocab_size=V, context_length=32, d_model=32, n_layers=1, n_heads=4, rope_scaling="ntk", rope_factor=4.0)
    save_model(build_model(config, device="cpu"), tmp_path / "tm")
    with pytest.raises(TokenmillError, match=r"rope_theta 6\d{4}"):
        export_hf(tmp_path / "tm", tmp_path / "hf", family_name="llama")


def test_import_refuses_pickles_unknown_families_and_unsupported_options(tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(T.LlamaConfig(**LLAMA).to_dict()))
    (folder / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(TokenmillError, match="pickled .bin checkpoints are not read"):
        import_hf(folder, tmp_path / "out")
    (folder / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(TokenmillError, match="model_type 't5' is not supported"):
        import_hf(folder, tmp_path / "out")
    random_hf_model(T.MptConfig(d_model=32, n_layers=1, n_heads=4, vocab_size=V, attn_config={"qk_ln": True}), tmp_path / "mpt")
    with pytest.raises(TokenmillError, match="qk_ln=True"):
        import_hf(tmp_path / "mpt", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_import_names_a_missing_tensor(tmp_path):
    random_hf_model(T.LlamaConfig(**LLAMA), tmp_path / "hf")
    state = load_file(tmp_path / "hf" / "model.safetensors")
    del state["model.layers.1.mlp.up_proj.weight"]
    from safetensors.torch import save_file

    save_file(state, str(tmp_path / "hf" / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(TokenmillError, match="'model.layers.1.mlp.up_proj.weight' is missing"):
        import_hf(tmp_path / "hf", tmp_path / "out")
