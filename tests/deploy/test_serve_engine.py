"""The engine against a plain greedy loop without a cache."""

from __future__ import annotations

import pytest
import torch
from serve_helpers import ARCHITECTURES, EXTRA, reference_greedy, tiny_model

from tokenmill.deploy.serve import runner
from tokenmill.deploy.serve.engine import Engine, EngineConfig
from tokenmill.model.sampling import SamplingParams

TEXTS = [
    "The quick brown fox",
    "def f(x): return x",
    EXTRA[0] + " What is a lambda?",
    "Straße",
    "x",
    "Compound statements contain groups of other statements; they affect the execution of those statements.",
]


def run(engine: Engine, requests: dict[str, tuple[list[int], SamplingParams]]) -> dict[str, dict]:
    """Every request through `engine` to the end: per request, per choice, its tokens, text pieces and finish."""
    for rid, (ids, params) in requests.items():
        engine.add_request(rid, ids, params)
    results: dict[str, dict] = {rid: {} for rid in requests}
    for _ in range(10_000):
        if not engine.has_unfinished():
            break
        for out in engine.step():
            for d in out.deltas:
                c = results[out.request_id].setdefault(d.index, {"tokens": [], "pieces": [], "logprobs": []})
                c["tokens"] += d.token_ids
                c["pieces"].append(d.text)
                c["logprobs"] += d.logprobs
                c["finish"] = d.finish_reason
            if out.finished:
                results[out.request_id]["usage"] = (out.prompt_tokens, out.completion_tokens)
    assert not engine.has_unfinished()
    return results


def prompts(tokenizer) -> list[list[int]]:
    return [[tokenizer.bos_id, *tokenizer.encode(t)] for t in TEXTS]


def all_blocks_free(engine: Engine) -> bool:
    bm = engine.blocks
    return bm.num_free_blocks == bm.num_usable_blocks and not any(bm.ref) and not bm.tables


GREEDY = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_greedy_equals_a_loop_without_cache_alone_and_batched(tokenizer, arch, monkeypatch):
    model = tiny_model(tokenizer, arch)
    expected = [reference_greedy(model, p, GREEDY.max_tokens) for p in prompts(tokenizer)]
    # Small blocks (many per sequence) and a small token budget (prompts read in chunks).
    config = EngineConfig(num_blocks=200, block_size=4, max_num_seqs=8, max_num_batched_tokens=16)
    for i, p in enumerate(prompts(tokenizer)[:2]):  # alone
        assert run(Engine(model, tokenizer, config), {"a": (p, GREEDY)})["a"][0]["tokens"] == expected[i]
    # All decoding sequences in one attention group, then in groups of two of different lengths.
    for group_rows in (runner.GROUP_ROWS, 2):
        monkeypatch.setattr(runner, "GROUP_ROWS", group_rows)
        engine = Engine(model, tokenizer, config)
        batched = run(engine, {str(i): (p, GREEDY) for i, p in enumerate(prompts(tokenizer))})
        assert [batched[str(i)][0]["tokens"] for i in range(len(TEXTS))] == expected
        assert all_blocks_free(engine)


@pytest.mark.parametrize("prefix_caching", [True, False])
def test_greedy_is_unchanged_by_preemption_and_prefix_sharing(tokenizer, model, prefix_caching):
    system = tokenizer.encode_chat([{"role": "system", "content": EXTRA[0]}, {"role": "user", "content": "Hi"}]).ids
    shared = [system + tokenizer.encode(t) for t in TEXTS] + prompts(tokenizer)
    expected = [reference_greedy(model, p, GREEDY.max_tokens) for p in shared]
    # 23 blocks of 8: room for about three of these sequences at a time.
    engine = Engine(model, tokenizer, EngineConfig(num_blocks=24, block_size=8, max_num_seqs=12,
                                                   max_num_batched_tokens=64, prefix_caching=prefix_caching))
    results = run(engine, {str(i): (p, GREEDY) for i, p in enumerate(shared)})
    assert [results[str(i)][0]["tokens"] for i in range(len(shared))] == expected
    assert engine.scheduler.num_preemptions > 0
    assert (engine.blocks.prefix_hits > 0) == prefix_caching
    assert all_blocks_free(engine)


def test_n_samples_fork_the_prompt_and_copy_its_last_block_on_write(tokenizer, model, monkeypatch):
    prompt = prompts(tokenizer)[2]
    assert len(prompt) % 4  # the prompt's last block is partly filled, so the forks share it
    sampled = SamplingParams(n=3, temperature=1.0, top_k=50, max_tokens=20, seed=7, ignore_eos=True)
    config = EngineConfig(num_blocks=100, block_size=4, max_num_seqs=8, max_num_batched_tokens=64)
    engine = Engine(model, tokenizer, config)
    copies = []
    copy_blocks = engine.runner.copy_blocks
    monkeypatch.setattr(engine.runner, "copy_blocks", lambda c: (copies.extend(c), copy_blocks(c)))
    others = {str(i): (p, GREEDY) for i, p in enumerate(prompts(tokenizer)[:2])}
    forked = run(engine, {"n3": (prompt, sampled), **others})
    assert len(copies) == 2  # two of the three writers copied the shared block, the last wrote in place
    # Choice i draws from its own generator (seed + i): the same tokens as a lone request with that seed.
    for i in range(3):
        alone = SamplingParams(n=1, temperature=1.0, top_k=50, max_tokens=20, seed=7 + i, ignore_eos=True)
        lone = run(Engine(model, tokenizer, config), {"a": (prompt, alone)})["a"]
        assert forked["n3"][i]["tokens"] == lone[0]["tokens"]
    assert len({tuple(forked["n3"][i]["tokens"]) for i in range(3)}) == 3
    assert forked["n3"]["usage"] == (len(prompt), 60)
    assert all_blocks_free(engine)


def test_stop_tokens_and_stop_strings_end_the_text_where_they_start(tokenizer, model):
    prompt = prompts(tokenizer)[0]
    tokens = reference_greedy(model, prompt, 30)
    text = tokenizer.decode(tokens)
    config = EngineConfig(num_blocks=64, block_size=4)

    stop_id = tokens[5]
    first = tokens.index(stop_id)
    params = SamplingParams(temperature=0, max_tokens=30, stop_token_ids=[stop_id], ignore_eos=True)
    got = run(Engine(model, tokenizer, config), {"a": (prompt, params)})["a"]
    assert got[0]["tokens"] == tokens[: first + 1] and got[0]["finish"] == "stop"
    assert "".join(got[0]["pieces"]) == tokenizer.decode(tokens[:first])
    assert got["usage"] == (len(prompt), first + 1)

    stop = text[len(text) // 2 : len(text) // 2 + 3]
    params = SamplingParams(temperature=0, max_tokens=30, stop=["\x00never", stop], ignore_eos=True)
    got = run(Engine(model, tokenizer, config), {"a": (prompt, params)})["a"]
    assert "".join(got[0]["pieces"]) == text[: text.index(stop)]
    assert got[0]["finish"] == "stop" and len(got[0]["tokens"]) < 30


def test_streamed_pieces_put_together_are_the_decoded_text(tokenizer, model):
    # Sampling reaches odd tokens: parts of multi-byte characters, special tokens.
    params = SamplingParams(temperature=1.5, max_tokens=40, seed=3, ignore_eos=True)
    results = run(Engine(model, tokenizer, EngineConfig(num_blocks=200)),
                  {str(i): (p, params) for i, p in enumerate(prompts(tokenizer))})
    for r in results.values():
        assert "".join(r[0]["pieces"]) == tokenizer.decode(r[0]["tokens"])
        assert r[0]["finish"] == "length"


def test_logprobs_are_the_models_distribution(tokenizer, model):
    prompt = prompts(tokenizer)[1]
    params = SamplingParams(temperature=0, max_tokens=6, logprobs=3, ignore_eos=True)
    got = run(Engine(model, tokenizer, EngineConfig(num_blocks=64)), {"a": (prompt, params)})["a"][0]
    ids = list(prompt)
    for token, lp in zip(got["tokens"], got["logprobs"]):
        with torch.no_grad():
            ref = model(torch.tensor([ids]))[0, -1].log_softmax(-1)
        top = ref.topk(3)
        assert lp.token_id == token == top.indices[0]
        assert lp.logprob == pytest.approx(float(ref[token]), abs=1e-5)
        assert [i for i, _ in lp.top] == top.indices.tolist()
        assert [v for _, v in lp.top] == pytest.approx(top.values.tolist(), abs=1e-5)
        ids.append(token)


def test_an_aborted_request_gives_back_its_blocks(tokenizer, model):
    engine = Engine(model, tokenizer, EngineConfig(num_blocks=64, block_size=4))
    for i, p in enumerate(prompts(tokenizer)[:3]):
        engine.add_request(str(i), p, SamplingParams(temperature=0, max_tokens=40, ignore_eos=True))
    for _ in range(5):
        engine.step()
    assert engine.blocks.num_free_blocks < engine.blocks.num_usable_blocks
    for i in range(3):
        engine.abort_request(str(i))
    assert not engine.has_unfinished() and all_blocks_free(engine)


def test_requests_the_engine_cannot_serve_are_refused(tokenizer, model):
    engine = Engine(model, tokenizer, EngineConfig(num_blocks=8, block_size=4))  # 28 token slots
    with pytest.raises(ValueError, match="maximum context length is 160 tokens, but 170"):
        engine.add_request("a", [1] * 10, SamplingParams(max_tokens=160))
    with pytest.raises(ValueError, match="do not fit the KV cache of 28 tokens"):
        engine.add_request("a", [1] * 10, SamplingParams(max_tokens=19))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.add_request("a", [tokenizer.vocab_size], SamplingParams(max_tokens=1))
    with pytest.raises(ValueError, match="empty"):
        engine.add_request("a", [], SamplingParams(max_tokens=1))
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)


@pytest.mark.parametrize("method", ["int8", "rtn4"])
def test_a_quantized_model_folder_serves_its_own_greedy_tokens(tokenizer, tmp_path, monkeypatch, method):
    from tokenmill.deploy.quant.quantize import quantize_model, scheme_for
    from tokenmill.deploy.quant.save import save_quantized
    from tokenmill.model import load_model
    from tokenmill.model.quant.linear import QuantLinear

    fp = tiny_model(tokenizer)
    save_quantized(fp, tmp_path, quantize_model(fp, method, scheme_for(method, 32)))
    quantized = load_model(tmp_path, device="cpu")  # the loader `tokenmill serve` uses
    # One path for one row and for many, so that the loop without cache and the batch agree.
    monkeypatch.setattr(QuantLinear, "use_kernels", False)
    expected = [reference_greedy(quantized, p, GREEDY.max_tokens) for p in prompts(tokenizer)[:3]]
    engine = Engine(quantized, tokenizer, EngineConfig(num_blocks=100, block_size=8))
    results = run(engine, {str(i): (p, GREEDY) for i, p in enumerate(prompts(tokenizer)[:3])})
    assert [results[str(i)][0]["tokens"] for i in range(3)] == expected
    assert engine.runner.k_pool[0].dtype == torch.float32


def test_an_imported_gemma2_serves_the_logits_of_transformers(tmp_path):
    """Alternating sliding-window layers, soft-capped scores and logits, through the paged cache."""
    import transformers

    from tokenmill.model.hf import import_hf
    from tokenmill.model.io import load_model

    config = transformers.Gemma2Config(
        vocab_size=96, hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
        num_hidden_layers=3, head_dim=16, sliding_window=4, attn_logit_softcapping=2.0, final_logit_softcapping=3.0,
    )
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(config).eval()
    hf.save_pretrained(tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "tokenmill")
    model_runner = runner.ModelRunner(load_model(tmp_path / "tokenmill", device="cpu"), num_blocks=8, block_size=4)
    ids = torch.randint(0, 96, (12,), generator=torch.Generator().manual_seed(3)).tolist()
    served = [model_runner.execute([ids], [0], [8], [[1, 2, 3]])]  # a prompt of 8, then one token at a time
    served += [model_runner.execute([ids], [i], [1], [[1, 2, 3]]) for i in range(8, 12)]
    with torch.no_grad():
        torch.testing.assert_close(torch.cat(served), hf(torch.tensor([ids])).logits[0, 7:], atol=1e-4, rtol=0)
