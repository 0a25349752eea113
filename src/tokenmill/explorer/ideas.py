"""What each block is for, at real scale: the short explanation a panel opens with.

The figures at scale are computed by the same planning code as `tokenmill plan --preset
llama-7b` (parameters, embedding, FLOPs, memory, KV cache), so they change when that code does;
the others are from the literature and say where they come from.
"""

from __future__ import annotations

from functools import lru_cache

from tokenmill.figures import human_bytes

SCALE_MODEL = "llama-7b"
SCALE_CONTEXT = 4096  # tokens: LLaMA's context at serving, as in `tokenmill plan --seq-len 4096`
CHINCHILLA_TOKENS_PER_PARAM = 20  # Hoffmann et al. 2022, the compute-optimal ratio
LLAMA_TRAINING_TOKENS = 1.0e12  # Touvron et al. 2023: LLaMA-7B saw 1.0 trillion tokens
COMMON_CRAWL_SHARE = 0.67  # of LLaMA's pre-training mix (Touvron et al. 2023, table 1)


@lru_cache(maxsize=1)
def scale() -> dict:
    """The 7B model's figures from tokenmill's own plan (see model/plan.py)."""
    from tokenmill.model.config import make_config
    from tokenmill.model.plan import make_layout, make_plan
    from tokenmill.model.presets import preset_fields

    config = make_config(preset_fields(SCALE_MODEL), SCALE_MODEL)
    plan = make_plan(config, SCALE_MODEL, make_layout(config, 1, None, 1, 1, False), SCALE_CONTEXT)
    p = plan["parameters"]
    return {"params": p["total"], "embedding": p["embedding"], "vocab": config.vocab_size, "d_model": config.d_model,
            "layers": config.n_layers, "training_flops": plan["flops_per_token"]["training"],
            "kv_per_user": plan["serving"]["kv_per_user"], "weights": plan["serving"]["weights"],
            "train_memory": plan["training"]["bf16-mixed"]["total"]}


def _billions(n: float) -> str:
    return f"{n / 1e9:,.2f} billion"


def idea(number: str) -> dict:
    """Block `number`'s explanation: a paragraph, then figures at real scale as (label, value, reading)."""
    s = scale()
    chinchilla = CHINCHILLA_TOKENS_PER_PARAM * s["params"]
    text, figures = IDEAS[number], []
    if number == "01":
        figures = [("web text in LLaMA's mix", f"{COMMON_CRAWL_SHARE:.0%}", "Common Crawl; the rest is C4, code, Wikipedia, books, papers"),
                   ("tokens LLaMA-7B was trained on", "1.0 trillion", "about 4 TB of text")]
    elif number == "02":
        figures = [("web text in LLaMA's mix", f"{COMMON_CRAWL_SHARE:.0%}", "after filtering and deduplication"),
                   ("share of crawled pages a typical pipeline keeps", "under 10%", "RefinedWeb and FineWeb drop most of the web")]
    elif number == "03":
        figures = [("LLaMA's vocabulary", f"{s['vocab']:,} tokens", "byte-level BPE pieces"),
                   ("English text per token", "about 4 bytes", "so 1 trillion tokens is about 4 TB")]
    elif number == "04":
        figures = [(f"parameters of {SCALE_MODEL}", _billions(s["params"]), f"{s['layers']} layers of width {s['d_model']:,}"),
                   ("of which the token embedding", f"{s['embedding'] / 1e6:,.0f} million",
                    f"{s['vocab']:,} tokens × {s['d_model']:,} numbers each"),
                   ("training FLOPs per token", f"{s['training_flops'] / 1e9:,.0f} billion", "about 6 × parameters")]
    elif number == "05":
        figures = [(f"compute-optimal tokens for {SCALE_MODEL}", f"{chinchilla / 1e9:,.0f} billion",
                    f"Chinchilla's {CHINCHILLA_TOKENS_PER_PARAM} tokens per parameter"),
                   ("tokens LLaMA-7B actually saw", "1.0 trillion",
                    f"{LLAMA_TRAINING_TOKENS / s['params']:,.0f} per parameter: past optimal, cheaper to serve"),
                   ("training memory on one GPU, bf16 mixed, before sharding", human_bytes(s["train_memory"]),
                    "weights, gradients, Adam moments, activations")]
    elif number == "06":
        figures = [("preference pairs in InstructGPT's reward model data", "about 33,000", "Ouyang et al. 2022"),
                   ("demonstrations it was fine-tuned on", "about 13,000", "a tiny fraction of pre-training")]
    elif number == "07":
        figures = [(f"{SCALE_MODEL} weights in bf16", human_bytes(s["weights"]["bf16"]), "2 bytes per parameter"),
                   (f"{SCALE_MODEL} weights in 4 bits", human_bytes(s["weights"]["int4"]), "fits a laptop GPU")]
    elif number == "08":
        figures = [(f"KV cache per user at {SCALE_CONTEXT:,} tokens", human_bytes(s["kv_per_user"]),
                    f"{SCALE_MODEL}, bf16: keys and values of every layer"),
                   ("weights, 4-bit", human_bytes(s["weights"]["int4"]), f"from {human_bytes(s['weights']['bf16'])} in bf16")]
    elif number == "09":
        figures = [("HellaSwag, LLaMA-7B", "76.1%", "4-way sentence completion: chance 25% (Touvron et al. 2023, table 3)"),
                   ("MMLU 5-shot, LLaMA-7B", "35.1%", "4-way exam questions in 57 subjects: chance 25%")]
    return {"type": "idea", "text": text, "scale_title": "at real scale", "figures": [list(f) for f in figures]}


IDEAS = {
    "01": "A language model learns only what is in its text. The raw corpus is gathered from many sources — "
          "web pages, encyclopedias, books, code, papers — each tagged with its domain, because how much of each "
          "domain the model sees shapes what it is good at.",
    "02": "Raw text is mostly noise: boilerplate, other languages, spam, copies of the same page. Curation runs "
          "each document through rules that remove it or clean it (personal data replaced by placeholders), "
          "removes exact and near duplicates so the model does not memorise them, then mixes the domains in "
          "chosen proportions, repeating scarce good data and sampling down the plentiful.",
    "03": "A model reads numbers, not letters. The tokenizer learns a vocabulary of frequent byte sequences "
          "(byte-pair encoding) so that common words are one token and rare ones a few; every document is then "
          "turned into token ids, framed by begin and end tokens, and packed into flat arrays for training.",
    "04": "The transformer: each token becomes a vector (the embedding), passes through a stack of identical "
          "layers — attention, which mixes in what earlier tokens said, and a feed-forward network, which "
          "transforms each position — and comes out as a score for every token in the vocabulary: the "
          "prediction of the next one.",
    "05": "Pre-training shows the model billions of tokens and nudges every weight to make the next token more "
          "likely (cross-entropy loss). The loss on held-out text says how surprised the model still is; the "
          "number of tokens per parameter says how far training went.",
    "06": "A pre-trained model continues text; an assistant answers. Supervised fine-tuning (SFT) shows it "
          "answers written by people; a reward model learns which of two answers people prefer; DPO and PPO "
          "then push the model toward preferred answers, while a penalty (KL) keeps it close to where it started.",
    "07": "Every stage that changes weights writes a self-contained model folder — architecture, weights, "
          "tokenizer — that can be served, compared, quantized or shared on its own.",
    "08": "Serving: the weights are quantized (fewer bits per number, smaller and faster, slightly worse), and "
          "an engine answers many users at once, keeping each conversation's keys and values (the KV cache) in "
          "fixed-size blocks so memory is shared and nothing is computed twice.",
    "09": "Evaluation asks every model of the run the same questions, through lm-evaluation-harness as model "
          "cards do: how many bits each byte of held-out text costs it, which of four documentations belongs to a "
          "function, what a command does. A score means something only beside chance and beside the model before: "
          "the table shows what each stage did.",
}
