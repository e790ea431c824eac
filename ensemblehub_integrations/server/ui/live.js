// Live view: ask an ensemble through the streaming chat API with "ensemble_trace": "full" and draw each round
// as its chunk arrives (candidates side by side, scores, winner), the answer tinted by the member that wrote it.
"use strict";

const TOKEN_STRATEGIES = new Set(["gac", "unite"]);
let models = [];
let controller = null;
let turns = []; // earlier turns of the conversation, sent with the next question while "Keep the conversation" is on

const $ = (id) => document.getElementById(id);

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function loadModels() {
  setStatus("loading ensembles…");
  let response;
  try {
    response = await fetch("../v1/models", { headers: authHeaders() });
  } catch (e) {
    return setStatus("cannot reach the server: " + e, true);
  }
  if (!response.ok) return setStatus("refused: " + (await apiError(response)), true);
  models = (await response.json()).data;
  const select = $("ensemble");
  const kept = select.value;
  select.replaceChildren(...models.map((m) => el("option", { value: m.id }, `${m.id} (${m.strategy})`)));
  if (models.some((m) => m.id === kept)) select.value = kept;
  showMembers();
  setStatus(`${models.length} ensembles`);
}

function currentModel() {
  return models.find((m) => m.id === $("ensemble").value) || { id: $("ensemble").value, members: [], strategy: "" };
}

function showMembers() {
  const model = currentModel();
  $("members").textContent = model.description || "";
  $("legend").replaceChildren(...model.members.map((name) =>
    el("span", { class: "chip", style: `background:${colourOf(name)}` }, name)));
}

/** Server-sent events from a fetch body: yields each `data:` payload (a string). */
async function* sseData(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      if (data) yield data;
    }
  }
}

function resetView() {
  for (const id of ["answer", "summary", "decision", "rounds"]) $(id).replaceChildren();
}

async function ask(event) {
  event.preventDefault();
  const model = currentModel();
  if (!model.id) return setStatus("load the ensembles and pick one first", true);
  resetView();
  const tokenLevel = TOKEN_STRATEGIES.has(model.strategy);
  $("rounds").classList.toggle("token-level", tokenLevel);
  const question = { role: "user", content: $("question").value };
  const body = {
    model: model.id,
    messages: [...($("chat").checked ? turns : []), question],
    max_tokens: Number($("max-tokens").value) || undefined,
    stream: true,
    stream_options: { include_usage: true },
    ensemble_trace: "full",
  };
  controller = new AbortController();
  $("ask").disabled = true;
  $("stop").disabled = false;
  setStatus("asking…");
  const started = performance.now();
  try {
    const response = await fetch("../v1/chat/completions", {
      method: "POST", headers: authHeaders(), body: JSON.stringify(body), signal: controller.signal,
    });
    if (!response.ok) return setStatus("refused: " + (await apiError(response)), true);
    let rounds = 0;
    let failed = null; // an error event mid-stream (the server still ends the stream with [DONE])
    for await (const data of sseData(response)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) { failed = chunk.error.message; setStatus("error: " + failed, true); continue; }
      const trace = chunk.ensemble_trace;
      if (trace && trace.round) {
        rounds += 1;
        addRound(trace.round, tokenLevel);
        setStatus(`round ${rounds}…`);
      } else if (trace) {
        showSummary(trace);
      }
      if (chunk.usage) showUsage(chunk.usage);
    }
    if (failed !== null) return setStatus(`error after ${rounds} rounds: ${failed}`, true);
    setStatus(`done: ${rounds} rounds in ${((performance.now() - started) / 1000).toFixed(2)} s`);
    $("answer").classList.add("done");
    if ($("chat").checked) {
      turns.push(question, { role: "assistant", content: $("answer").textContent });
      showConversation();
    }
  } catch (e) {
    setStatus(e.name === "AbortError" ? "stopped" : "error: " + e, e.name !== "AbortError");
  } finally {
    $("ask").disabled = false;
    $("stop").disabled = true;
    controller = null;
  }
}

/** One round: the accepted piece joins the answer, and (except token by token) a card shows every candidate. */
function addRound(round, tokenLevel) {
  const winnerColour = round.winner ? colourOf(round.winner) : "#666";
  const scores = Object.entries(round.scores || {}).map(([m, s]) => `${m}: ${fmt(s)}`).join(", ");
  if (round.accepted_text) {
    $("answer").append(el("span", {
      class: "piece", style: `border-color:${winnerColour};background:${winnerColour}22`,
      title: `round ${round.round}: ${round.winner || "no single member"}${scores ? " (" + scores + ")" : ""}`,
    }, round.accepted_text));
  }
  if (tokenLevel) return addTokenRound(round);
  const candidates = round.candidates || [];
  const scorers = Object.keys(round.scorer_scores || {});
  const columns = candidates.map((c, i) => {
    const won = round.winner_index === undefined ? c.member === round.winner : i === round.winner_index;
    const rows = scorers.map((s) => el("div", { class: "score" }, `${s}: ${fmt(round.scorer_scores[s][i])}`));
    return el("div", { class: "candidate" + (won ? " winner" : "") + (c.error ? " failed" : ""),
                       "data-member": c.member, style: `border-top-color:${colourOf(c.member)}` },
      el("div", { class: "member" }, c.member, won ? " ★" : ""),
      el("pre", { class: "text" }, c.error ? "error: " + c.error : c.text),
      ...rows,
      el("div", { class: "score combined" }, `combined: ${fmt((round.scores || {})[c.member])}`),
      el("div", { class: "muted" }, `${c.tokens} tokens · ${c.finish_reason} · ${fmt(c.elapsed_s, 3)} s`));
  });
  const errors = Object.entries(round.errors || {}).map(([m, e]) => el("div", { class: "error" }, `${m}: ${e}`));
  $("rounds").append(el("div", { class: "round", "data-round": round.round, "data-winner": round.winner || "" },
    el("div", { class: "round-head" }, `Round ${round.round}`,
      el("span", { class: "muted" }, ` · generate ${fmt(round.generate_s, 3)} s · score ${fmt(round.score_s, 3)} s`
        + ` · ${round.accepted_tokens} tokens kept`, round.note ? ` · ${round.note}` : "")),
    el("div", { class: "candidates" }, columns), errors));
}

/** Token-level rounds are one token each: a compact row per token with each member's probability. */
function addTokenRound(round) {
  const cells = (round.candidates || []).map((c) => el("span", {
    class: "prob" + (c.member === round.winner ? " winner" : ""), style: `color:${colourOf(c.member)}`,
  }, `${c.member} ${JSON.stringify(c.text)} ${fmt((round.scores || {})[c.member], 3)}`));
  $("rounds").append(el("div", { class: "round token", "data-round": round.round, "data-winner": round.winner || "" },
    el("code", {}, JSON.stringify(round.accepted_text)), " ", cells, round.note ? ` (${round.note})` : ""));
}

/** The choice's last trace event: time, tokens per member, and a response-level strategy's vote or ranking. */
function showSummary(trace) {
  $("summary").append(el("div", { class: "muted" },
    `${trace.ensemble} · ${trace.strategy} · ${fmt(trace.elapsed_s, 3)} s`));
  if (trace.votes) {
    $("decision").append(el("h2", {}, "Vote"), el("table", { id: "votes" },
      el("tr", {}, el("th", {}, "answer"), el("th", {}, "count"), el("th", {}, "weight"), el("th", {}, "members")),
      trace.votes.map((v) => el("tr", {}, el("td", {}, v.answer ?? "(none)"), el("td", {}, v.count),
        el("td", {}, fmt(v.weight)), el("td", {}, (v.members || []).join(", "))))));
  }
  if (trace.ranking) {
    $("decision").append(el("h2", {}, "Ranking"), el("table", { id: "ranking" },
      el("tr", {}, el("th", {}, "rank"), el("th", {}, "candidate"), el("th", {}, "score")),
      trace.ranking.map((r) => el("tr", {}, el("td", {}, r.rank), el("td", {}, r.candidate), el("td", {}, fmt(r.score))))));
  }
}

/** The turns a chat has kept so far (the next question is sent after them). */
function showConversation() {
  $("conversation").replaceChildren(...turns.map((m) =>
    el("div", { class: "turn " + m.role }, el("span", { class: "muted" }, m.role + ": "), m.content)));
}

function newChat() {
  turns = [];
  showConversation();
  resetView();
}

function showUsage(usage) {
  const members = Object.entries(usage.member_tokens || {});
  $("summary").append(el("table", { id: "usage" },
    el("tr", {}, el("th", {}, "member"), el("th", {}, "tokens written")),
    members.map(([m, t]) => el("tr", {}, el("td", { style: `color:${colourOf(m)}` }, m), el("td", {}, t))),
    el("tr", {}, el("td", {}, "prompt / completion"), el("td", {}, `${usage.prompt_tokens} / ${usage.completion_tokens}`))));
}

$("load-models").addEventListener("click", loadModels);
$("ensemble").addEventListener("change", showMembers);
$("ask-form").addEventListener("submit", ask);
$("stop").addEventListener("click", () => controller && controller.abort());
$("new-chat").addEventListener("click", newChat);
loadModels();
