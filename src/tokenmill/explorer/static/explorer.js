// The explorer page: the pipeline as eight blocks; a click opens the block's panel.
// Everything shown from the run is put into the page as text (textContent, DOM nodes),
// never parsed as HTML, so no document can add markup or scripts to the page.
"use strict";

const TOKEN_COLORS = ["#fde2b8", "#cde7f7", "#d6f2c7", "#f7d3e3", "#e3dbf6", "#f9f1b5", "#cfeee9", "#f6d6c9"];
let poller = null; // the engine panel's refresh timer

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

async function getJSON(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const e = body.error;  // the explorer's errors are strings, the API's are objects
    throw new Error((typeof e === "string" ? e : e && e.message) || `${response.status} ${response.statusText}`);
  }
  return body;
}

function postJSON(url, payload) {
  return getJSON(url, {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(payload)});
}

function image(src, alt) {
  return el("img", {src, alt, loading: "eager", class: "chart"});
}

// --- the pipeline ------------------------------------------------------------------------------

async function start() {
  const run = await getJSON("api/run");
  document.getElementById("run-name").textContent = `run folder: ${run.name}`;
  const nav = document.getElementById("pipeline");
  run.blocks.forEach((block, i) => {
    if (i > 0) nav.append(handoff(run.handoffs && run.handoffs[i - 1]));
    nav.append(el("button", {
      class: `block status-${block.status.replace(/ /g, "-")}`, "data-block": block.number,
      onclick: () => { location.hash = block.number; },
      onkeydown: event => moveFocus(event, i),
    },
      el("span", {class: "number", text: block.number}),
      el("span", {class: "title", text: block.title}),
      el("span", {class: "status", text: block.status}),
      el("span", {class: "figure", text: block.figure || ""}),
    ));
  });
  window.addEventListener("hashchange", () => openBlock(location.hash.slice(1)));
  if (location.hash) openBlock(location.hash.slice(1));
}

async function openBlock(number) {
  if (!/^0[1-9]$/.test(number)) return;
  if (poller) { clearInterval(poller); poller = null; }
  for (const b of document.querySelectorAll(".block")) b.classList.toggle("active", b.dataset.block === number);
  const main = document.getElementById("panel");
  main.replaceChildren(el("p", {class: "muted", text: "loading…"}));
  try {
    const panel = await getJSON(`api/panel/${number}`);
    const body = el("section", {class: "panel", "data-block": number},
      el("h2", {}, `${panel.number} · ${panel.title} `, el("span", {class: `badge status-${panel.status.replace(/ /g, "-")}`, text: panel.status})));
    for (const section of panel.sections) body.append(render(section));
    main.replaceChildren(body);
    // On a phone the blocks stack above the panel: bring the panel into view.
    if (window.matchMedia("(max-width: 700px)").matches) main.scrollIntoView();
  } catch (error) {
    main.replaceChildren(el("p", {class: "error", text: `could not open block ${number}: ${error.message}`}));
  }
}

// The arrow between two blocks names what the first hands the second: its file, size and count.
function handoff(h) {
  if (!h) return el("span", {class: "arrow", "aria-hidden": "true"}, el("span", {class: "arrow-head", text: "→"}));
  return el("span", {class: "arrow handoff", title: `${h.file}: ${h.size}${h.count ? `, ${h.count}` : ""}`},
    el("span", {class: "arrow-file", text: h.file}),
    el("span", {class: "arrow-head", "aria-hidden": "true", text: "→"}),
    el("span", {class: "arrow-size", text: [h.size, h.count].filter(Boolean).join(" · ")}));
}

// Left and right arrows (up and down on a phone, where the blocks stack) move between blocks.
function moveFocus(event, i) {
  const step = {ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1}[event.key];
  if (!step) return;
  const blocks = [...document.querySelectorAll(".block")];
  const next = blocks[(i + step + blocks.length) % blocks.length];
  event.preventDefault();
  next.focus();
}

// --- sections ----------------------------------------------------------------------------------

const RENDERERS = {
  note: s => el("p", {class: "note", text: s.text}),
  idea: renderIdea,
  facts: s => el("dl", {class: "facts"}, s.items.map(([k, v, reading]) => [el("dt", {text: k}),
    el("dd", {}, el("span", {class: "value", text: v}), reading ? el("span", {class: "reading", text: reading}) : null)])),
  chart: s => el("figure", {}, image(`api/${s.src}`, s.title), el("figcaption", {text: s.title})),
  figures: s => el("div", {class: "figures"}, s.files.map(f => image(`api/file?path=${encodeURIComponent(f)}`, f))),
  table: renderTable,
  samples: renderSamples,
  pairs: renderPairs,
  redactions: renderRedactions,
  architecture: renderArchitecture,
  tokenize: renderTokenize,
  attention: renderAttention,
  follow: renderFollow,
  compare: renderCompare,
  engine: renderEngine,
  chat: renderChat,
};

function renderIdea(s) {
  return el("div", {class: "idea"}, el("p", {class: "idea-text", text: s.text}),
    s.figures.length ? el("div", {class: "scale"}, el("div", {class: "label", text: s.scale_title}),
      el("dl", {class: "facts"}, s.figures.map(([k, v, reading]) => [el("dt", {text: k}),
        el("dd", {}, el("span", {class: "value", text: v}), reading ? el("span", {class: "reading", text: reading}) : null)]))) : null);
}

// Loss 0 nats is white, LOSS_TOP nats and more is full red: what the model finds surprising.
const LOSS_TOP = 10;
function lossColor(loss) {
  const t = Math.min(1, Math.max(0, loss / LOSS_TOP));
  return `rgb(255, ${Math.round(255 - 170 * t)}, ${Math.round(255 - 200 * t)})`;
}

function renderFollow() {
  const query = el("input", {id: "follow-query", type: "search", "aria-label": "search raw documents by id or text", placeholder: "search raw documents by id or text"});
  const list = el("div", {class: "follow-list", id: "follow-list"});
  const out = el("div", {class: "follow-out", id: "follow-output"});
  let latest = 0;  // only the newest search may fill the list, however the answers arrive
  const searchDocs = async () => {
    const mine = ++latest;
    try {
      const found = await getJSON(`api/documents?q=${encodeURIComponent(query.value)}`);
      if (mine !== latest) return;
      list.replaceChildren(...(found.documents.length ? found.documents.map(d => el("button", {
        class: "doc-choice", "data-id": d.id, onclick: () => showDocument(d.id, out),
      }, el("strong", {text: d.id}), el("span", {class: "muted", text: ` ${d.source} · ${d.preview.slice(0, 60)}`})))
        : [el("p", {class: "muted", text: "no raw document matches"})]));
    } catch (error) { list.replaceChildren(el("p", {class: "error", text: error.message})); }
  };
  query.addEventListener("keydown", event => { if (event.key === "Enter") searchDocs(); });
  searchDocs();
  return el("div", {}, el("div", {class: "controls"}, query, el("button", {id: "follow-search", onclick: searchDocs, text: "search"})), list, out);
}

async function showDocument(id, out) {
  out.replaceChildren(el("p", {class: "muted", text: "following…"}));
  try {
    const d = await getJSON(`api/document?id=${encodeURIComponent(id)}`);
    const step = (title, ...body) => el("div", {class: "step"}, el("h4", {text: title}), ...body);
    const steps = [step(`1 · raw document (stage 01): ${d.id}`,
      el("p", {class: "muted", text: `domain ${d.source} · ${d.bytes.toLocaleString()} bytes`}), el("pre", {text: d.raw_text}))];
    if (d.removed) {
      steps.push(step("2 · curation (stage 02): removed", el("p", {class: "fate removed", id: "follow-fate"},
        `Removed by the ${d.removed.block || "?"} rule: ${d.removed.reason}`, d.removed.detail ? ` (${d.removed.detail})` : "",
        ". It goes no further: no tokens, no weight in the mixture, nothing the model learns from.")));
    } else {
      const counts = Object.entries(d.redactions).map(([k, n]) => `${n} ${k}`).join(", ");
      steps.push(step("2 · curation (stage 02): kept", el("p", {class: "fate kept", id: "follow-fate"},
        `Kept: it passed every rule${d.changed_by_curation ? ", and curation changed its text" : ", unchanged"}.`),
        el("p", {class: "muted", text: counts ? `personal data redacted: ${counts}` : "no personal data redacted"}),
        el("pre", {}, d.curated_segments.map(seg => el("span", seg.pii ? {class: "pii", title: seg.pii} : {}, seg.text)))));
    }
    const dup = d.duplicates;
    steps.push(step("duplicate cluster", el("p", {id: "follow-duplicates", text: dup.kept_copy
      ? `a copy of ${dup.kept_copy}, which was kept in its place`
      : dup.removed_count ? `the kept copy of a cluster: ${dup.removed_count} duplicate(s) removed: ${dup.removed_copies.join(", ")}`
        : "no duplicate of it was found"})));
    if (d.mixture) {
      const m = d.mixture;
      steps.push(step("3 · its weight in the mixture", el("p", {id: "follow-mixture",
        text: `domain ${d.source}: weight ${m.weight}, seen ${m.repeats}× per epoch; the domain is ${(100 * m.raw_share).toFixed(1)}% of the curated text and ${(100 * m.effective_share).toFixed(1)}% of what the model trains on`})));
    }
    if (d.tokens) {
      steps.push(step("4 · its tokens (stage 03)", el("p", {class: "muted", text: `${d.tokens.count} tokens for ${d.tokens.bytes} bytes (first ${d.raw_text.length} characters)`}),
        el("div", {class: "tokens", id: "follow-tokens"}, d.tokens.tokens.map((t, i) => {
          const span = el("span", {class: "token", title: `token ${t.id}`}, t.text);
          span.style.backgroundColor = TOKEN_COLORS[i % TOKEN_COLORS.length];
          return span;
        }))));
    }
    if (d.loss) {
      steps.push(step("5 · how surprising the pre-trained model finds each token (stage 05)",
        el("p", {class: "muted", text: `mean loss ${d.loss.mean} nats per token (perplexity ${d.loss.perplexity}); darker red is more surprising, up to ${LOSS_TOP} nats; the model reads its first ${d.loss.tokens.length + 1} tokens`}),
        el("div", {class: "tokens heat", id: "follow-loss"}, d.loss.tokens.map(t => {
          const span = el("span", {class: "token", title: `${t.loss} nats`}, t.text);
          span.style.backgroundColor = lossColor(t.loss);
          return span;
        }))));
    }
    out.replaceChildren(...steps);
  } catch (error) { out.replaceChildren(el("p", {class: "error", text: error.message})); }
}

function renderCompare(s) {
  if (!s.models.length) return el("p", {class: "muted", text: "no model folder yet"});
  const prompt = el("input", {id: "compare-prompt", type: "text", "aria-label": "prompt for every model", value: "What is the Python function len for?"});
  const out = el("div", {id: "compare-output"});
  const run = async () => {
    out.replaceChildren(el("p", {class: "muted", text: "every model is answering…"}));
    try {
      const r = await postJSON("api/compare", {prompt: prompt.value});
      const score = a => a.reward === null ? "no reward model" : `reward ${a.reward.toFixed(2)}`;
      out.replaceChildren(
        el("p", {class: "muted", text: `greedy: the most likely token each time; sampled: temperature ${r.temperature}; at most ${r.max_new_tokens} tokens; ${r.reward_model ? "each answer scored by the run's reward model (higher is preferred)" : "the run has no reward model"}`}),
        el("div", {class: "compare-grid"}, r.answers.map(a => el("div", {class: "answer", "data-model": a.key},
          el("h4", {text: a.label}),
          ["greedy", "sampled"].map(kind => el("div", {class: `answer-${kind}`},
            el("div", {class: "label", text: `${kind} · ${score(a[kind])}`}), el("pre", {text: a[kind].text || "(no text)"})))))));
    } catch (error) { out.replaceChildren(el("p", {class: "error", text: error.message})); }
  };
  prompt.addEventListener("keydown", event => { if (event.key === "Enter") run(); });
  return el("div", {}, el("div", {class: "controls"}, prompt, el("button", {id: "compare-button", onclick: run, text: "answer with every model"})), out);
}

function render(section) {
  const renderer = RENDERERS[section.type];
  const box = el("div", {class: `section section-${section.type}`});
  if (section.title && section.type !== "chart") box.append(el("h3", {text: section.title}));
  box.append(renderer ? renderer(section) : el("p", {class: "muted", text: `(${section.type})`}));
  return box;
}

function renderTable(s) {
  if (!s.rows.length) return el("p", {class: "muted", text: "none"});
  return el("div", {class: "scroll"}, el("table", {},
    el("thead", {}, el("tr", {}, s.columns.map(c => el("th", {text: c})))),
    el("tbody", {}, s.rows.map(r => el("tr", {}, r.map(c => el("td", {text: c})))))));
}

function renderSamples(s) {
  if (!s.groups.length) return el("p", {class: "muted", text: "none"});
  return el("div", {}, s.groups.map(g => el("details", {class: "group"},
    el("summary", {text: `${g.title} (${g.count})`}),
    g.items.map(item => el("div", {class: "sample"},
      el("div", {class: "sample-head"}, el("strong", {text: item.id || ""}), el("span", {class: "muted", text: ` ${item.meta || ""}`})),
      item.parts
        ? item.parts.map(([label, text]) => el("div", {class: "part"}, el("div", {class: "label", text: label}), el("pre", {text})))
        : el("pre", {text: item.text || ""}))))));
}

function segmentsPre(segments, mark) {
  return el("pre", {}, segments.map(seg => el("span", mark(seg), seg.text)));
}

function renderPairs(s) {
  if (!s.pairs.length) return el("p", {class: "muted", text: "no duplicates were removed"});
  return el("div", {}, s.pairs.map(p => el("div", {class: "pair"},
    el("div", {class: "pair-head", text: `${p.kind === "exact" ? "exact copy" : `near duplicate, estimated Jaccard ${p.jaccard.toFixed(2)}`} · ${p.source || ""}`}),
    el("div", {class: "side-by-side"},
      el("div", {class: "side removed"}, el("div", {class: "label", text: `removed: ${p.removed}`}),
        segmentsPre(p.removed_segments, seg => ({class: seg.same ? "same" : "differs"}))),
      el("div", {class: "side kept"}, el("div", {class: "label", text: `kept: ${p.kept}`}),
        segmentsPre(p.kept_segments, seg => ({class: seg.same ? "same" : "differs"})))))));
}

function renderRedactions(s) {
  if (!s.examples.length) return el("p", {class: "muted", text: "no personal data was found"});
  return el("div", {}, s.examples.map(ex => el("div", {class: "sample"},
    el("div", {class: "sample-head"}, el("strong", {text: ex.id}), el("span", {class: "muted", text: ` ${ex.source} · ${ex.redactions} redaction(s)`})),
    ex.snippets.map(seg => segmentsPre(seg, part => part.pii ? {class: "pii", title: part.pii} : {})))));
}

function renderArchitecture(s) {
  const c = s.config;
  if (!c || !c.d_model) return el("p", {class: "muted", text: "no model.json"});
  const attention = c.n_kv_heads === c.n_heads ? "multi-head" : c.n_kv_heads === 1 ? "multi-query" : "grouped-query";
  const box = (title, detail, kind = "") => el("div", {class: `arch-box ${kind}`}, el("div", {class: "arch-title", text: title}), el("div", {class: "arch-detail", text: detail}));
  const down = () => el("div", {class: "arch-arrow", text: "↓"});
  const norm = `${c.norm}${c.norm_place === "pre" ? " (before)" : " (after)"}`;
  const layer = el("div", {class: "arch-layer"},
    el("div", {class: "arch-repeat", text: `× ${c.n_layers} layers`}),
    box(norm, `ε ${c.norm_eps}`, "norm"), down(),
    box(`attention · ${attention}`, `${c.n_heads} query heads, ${c.n_kv_heads} key/value heads, head dim ${c.head_dim}, positions: ${c.position}${c.sliding_window ? `, window ${c.sliding_window}` : ""}`, "attn"),
    box("+ residual", "", "residual"), down(),
    box(norm, `ε ${c.norm_eps}`, "norm"), down(),
    box(`feed-forward · ${c.mlp}`, `${c.d_model} → ${c.d_ff} → ${c.d_model}`, "mlp"),
    box("+ residual", "", "residual"));
  return el("div", {class: "architecture"},
    box("tokens", `context ${c.context_length}`), down(),
    box("token embedding", `${c.vocab_size} × ${c.d_model}`, "embed"), down(),
    layer, down(),
    box(`final ${c.norm}`, "", "norm"), down(),
    box("output head", c.tie_embeddings ? `tied to the embedding (${c.d_model} × ${c.vocab_size})` : `${c.d_model} × ${c.vocab_size}`, "embed"), down(),
    box("next-token probabilities", `${c.vocab_size} logits`),
    el("p", {class: "muted", text: [s.preset && `preset ${s.preset}`, s.attention].filter(Boolean).join(" · ")}));
}

function renderTokenize() {
  const input = el("textarea", {id: "tokenize-input", rows: "4", placeholder: "Type any text…"});
  const summary = el("p", {class: "muted", id: "tokenize-summary"});
  const out = el("div", {class: "tokens", id: "tokenize-output"});
  let timer = null;
  const run = async () => {
    if (!input.value) { out.replaceChildren(); summary.textContent = ""; return; }
    try {
      const result = await postJSON("api/tokenize", {text: input.value});
      summary.textContent = `${result.count} tokens, ${result.bytes} bytes` + (result.bytes_per_token ? `, ${result.bytes_per_token} bytes per token` : "");
      out.replaceChildren(...result.tokens.map((t, i) => {
        const span = el("span", {class: "token", title: `token ${t.id}`, "data-id": String(t.id)}, t.text);
        span.style.backgroundColor = TOKEN_COLORS[i % TOKEN_COLORS.length];
        return span;
      }));
    } catch (error) { summary.textContent = error.message; }
  };
  input.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(run, 200); });
  return el("div", {}, input, el("button", {id: "tokenize-button", onclick: run, text: "tokenize"}), summary, out);
}

function renderAttention(s) {
  const model = el("select", {id: "attention-model"}, s.models.map(m => el("option", {value: m.key, text: m.label})));
  const prompt = el("input", {id: "attention-prompt", type: "text", value: "The quick brown fox jumps over the lazy dog."});
  const layer = el("select", {id: "attention-layer"}, Array.from({length: s.layers || 0}, (_, i) => el("option", {value: String(i), text: `layer ${i}`})));
  const out = el("div", {id: "attention-output"});
  const show = async () => {
    out.replaceChildren(el("p", {class: "muted", text: "computing…"}));
    try {
      const result = await postJSON("api/attention", {model: model.value, prompt: prompt.value});
      const query = new URLSearchParams({model: model.value, prompt: prompt.value, layer: layer.value});
      out.replaceChildren(
        el("p", {class: "muted", text: `${result.tokens.length} tokens, ${result.layers} layers × ${result.heads} heads; rows are queries, columns keys`}),
        image(`api/attention.svg?${query}`, `attention, layer ${layer.value}`));
    } catch (error) { out.replaceChildren(el("p", {class: "error", text: error.message})); }
  };
  layer.addEventListener("change", show);
  return el("div", {}, el("div", {class: "controls"}, model, prompt, layer, el("button", {id: "attention-button", onclick: show, text: "show attention"})), out);
}

function renderEngine(s) {
  if (!s.attached) return el("p", {class: "note", text: "No model is being served. `tokenmill explore RUN_DIR` serves the run's latest model beside this page; then its requests and KV-cache blocks show here live."});
  const stats = el("dl", {class: "facts", id: "engine-stats"});
  const grid = el("div", {class: "kv-grid", id: "kv-grid"});
  const legend = el("p", {class: "legend"}, ["free", "free, prefix cached", "in use", "shared"].map((name, i) => el("span", {}, el("i", {class: `kv kv-${i}`}), ` ${name} `)));
  const refresh = async () => {
    try {
      const e = await getJSON("api/engine");
      const rows = [
        ["running requests", e.running], ["waiting requests", e.waiting],
        ["KV-cache blocks in use", `${e.blocks_used} of ${e.blocks_total} (${(100 * e.kv_usage).toFixed(1)}%)`],
        ["shared blocks", e.blocks_shared], ["free blocks with a cached prefix", e.blocks_cached_free],
        ["block size (tokens)", e.block_size], ["tokens generated", e.generated_tokens], ["preemptions", e.preemptions],
      ];
      stats.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {text: k}), el("dd", {text: String(v)})]));
      if (e.blocks) grid.replaceChildren(...e.blocks.map((state, i) => el("i", {class: `kv kv-${state}`, title: `block ${i + 1}`})));
    } catch (error) { stats.replaceChildren(el("dd", {class: "error", text: error.message})); }
  };
  refresh();
  poller = setInterval(refresh, 1000);
  return el("div", {}, stats, legend, grid);
}

function renderChat(s) {
  if (!s.attached) return el("p", {class: "note", text: "The chat box needs a served model (tokenmill explore serves one)."});
  const log = el("div", {class: "chat-log", id: "chat-log"});
  const input = el("textarea", {id: "chat-input", rows: "2", placeholder: "Ask the model something…"});
  const temperature = el("input", {id: "chat-temperature", type: "number", min: "0", max: "2", step: "0.1", value: "0.7"});
  const maxTokens = el("input", {id: "chat-max-tokens", type: "number", min: "1", max: "1024", value: "48"});
  const messages = [];
  const send = async () => {
    const text = input.value.trim();
    if (!text) return;
    messages.push({role: "user", content: text});
    log.append(el("div", {class: "msg user"}, el("div", {class: "label", text: "you"}), el("pre", {text})));
    input.value = "";
    const headers = {"Content-Type": "application/json"};
    try {
      const response = await fetch(s.chat_url, {method: "POST", headers, body: JSON.stringify({
        model: s.model, messages, temperature: Number(temperature.value), max_tokens: Number(maxTokens.value)})});
      const body = await response.json();
      if (!response.ok) throw new Error((body.error && body.error.message) || response.statusText);
      const choice = body.choices[0];
      messages.push({role: "assistant", content: choice.message.content});
      log.append(el("div", {class: "msg assistant"}, el("div", {class: "label", text: s.model}),
        el("pre", {class: "reply", text: choice.message.content}),
        el("div", {class: "muted usage", text: `${body.usage.completion_tokens} tokens, finished by ${choice.finish_reason}`})));
    } catch (error) {
      messages.pop();
      log.append(el("div", {class: "msg error", text: error.message}));
    }
  };
  input.addEventListener("keydown", event => { if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); send(); } });
  return el("div", {}, log, input,
    el("div", {class: "controls"}, el("label", {}, "temperature ", temperature), el("label", {}, "max tokens ", maxTokens),
      el("button", {id: "chat-send", onclick: send, text: "send"})));
}

start().catch(error => {
  document.getElementById("panel").replaceChildren(el("p", {class: "error", text: `could not read the run: ${error.message}`}));
});
