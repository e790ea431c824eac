// Run comparer: `ensemblehub run` output files (JSONL, one example a line) read with the File API. Accuracy per
// system where the examples carry an answer, items where systems disagree, each item's trace, win shares.
"use strict";

const ANSWER_FIELDS = ["answer", "expected", "target", "gold", "label"];
let systems = [];

/** The final answer, as the engine's "auto" extractor finds it: boxed, "the answer is …", last number, all. */
function extractAnswer(text) {
  const boxed = [...text.matchAll(/\\(?:boxed|fbox)\s*\{/g)];
  if (boxed.length) {
    let depth = 1;
    const begin = boxed[boxed.length - 1].index + boxed[boxed.length - 1][0].length;
    for (let i = begin; i < text.length; i++) {
      if (text[i] === "{") depth++;
      else if (text[i] === "}" && --depth === 0) return text.slice(begin, i).trim();
    }
  }
  const stated = [...text.matchAll(/answer is[:\s]*([^\n]+)/gi)];
  if (stated.length) {
    const value = stated[stated.length - 1][1].trim().replace(/^[*$ ]+|[*$ .]+$/g, "");
    const number = lastNumber(value);
    return number !== null && value.length <= number.length + 12 ? number : value;
  }
  return lastNumber(text) ?? (text.trim() || null);
}

function lastNumber(text) {
  const found = text.match(/-?\d[\d,]*(?:\.\d+)?(?:\/\d+)?/g);
  return found ? found[found.length - 1] : null;
}

/** The form answers are compared in: a canonical number, else lower-cased text with spaces collapsed. */
function answerKey(answer) {
  const s = String(answer).trim().replace(/^\\text\{(.*)\}$/, "$1").replace(/^[$ ]+|[$ ]+$/g, "").replace(/\.$/, "");
  const number = s.replace(/,/g, "");
  if (/^-?\d+(\.\d+)?$/.test(number)) return String(Number(number));
  return s.replace(/\s+/g, " ").toLowerCase();
}

function referenceOf(row) {
  const example = row.example || {};
  const field = ANSWER_FIELDS.find((f) => example[f] !== undefined && example[f] !== null);
  return field === undefined ? undefined : String(example[field]);
}

/** One system from one file: its rows by id, each judged against its reference answer when it has one. */
function parseRun(name, text) {
  const rows = new Map();
  let bad = 0;
  for (const line of text.split("\n")) {
    if (!line.trim()) continue;
    let row;
    try { row = JSON.parse(line); } catch (e) { bad++; continue; }
    if (!row || typeof row !== "object" || row.id === undefined) { bad++; continue; }
    const reference = referenceOf(row);
    const given = row.error || typeof row.text !== "string" ? null : extractAnswer(row.text);
    row.judged = { reference, given, correct: reference !== undefined && given !== null
      && answerKey(given) === answerKey(reference) };
    rows.set(String(row.id), row);
  }
  const first = rows.values().next().value || {};
  return { name, ensemble: first.ensemble || "", strategy: first.strategy || "", rows, bad };
}

async function loadFiles(event) {
  const files = [...event.target.files];
  const loaded = await Promise.all(files.map(async (f) => parseRun(f.name, await f.text())));
  systems = systems.filter((s) => !loaded.some((l) => l.name === s.name)).concat(loaded);
  const bad = loaded.reduce((n, s) => n + s.bad, 0);
  document.getElementById("compare-status").textContent =
    `${systems.length} runs loaded` + (bad ? `; ${bad} unreadable lines skipped` : "");
  drawAccuracy();
  drawCharts();
  drawDiffs();
  drawItems();
}

function drawAccuracy() {
  const head = el("tr", {}, ["system", "ensemble", "strategy", "examples", "with answer", "correct", "accuracy",
    "errors", "mean time (s)", "member tokens"].map((h) => el("th", {}, h)));
  const rows = systems.map((s) => {
    const all = [...s.rows.values()];
    const judged = all.filter((r) => r.judged.reference !== undefined);
    const correct = judged.filter((r) => r.judged.correct).length;
    const times = all.filter((r) => typeof r.elapsed_s === "number").map((r) => r.elapsed_s);
    const tokens = all.reduce((n, r) => n + Object.values((r.usage || {}).member_tokens || {})
      .reduce((a, b) => a + b, 0), 0);
    return el("tr", { "data-system": s.name }, el("td", {}, s.name), el("td", {}, s.ensemble), el("td", {}, s.strategy),
      el("td", { class: "n-examples" }, all.length), el("td", { class: "n-judged" }, judged.length),
      el("td", { class: "n-correct" }, correct),
      el("td", { class: "accuracy" }, judged.length ? (100 * correct / judged.length).toFixed(1) + "%" : "–"),
      el("td", {}, all.filter((r) => r.error).length),
      el("td", {}, times.length ? fmt(times.reduce((a, b) => a + b, 0) / times.length, 2) : "–"), el("td", {}, tokens));
  });
  document.getElementById("accuracy").replaceChildren(head, ...rows);
}

/** For every ordered pair of systems, the items the first got right and the second wrong. */
function drawDiffs() {
  const out = [];
  for (const a of systems) {
    for (const b of systems) {
      if (a === b) continue;
      const ids = [...a.rows.keys()].filter((id) => b.rows.has(id) && a.rows.get(id).judged.correct
        && b.rows.get(id).judged.reference !== undefined && !b.rows.get(id).judged.correct);
      if (!ids.length) continue;
      out.push(el("div", { class: "diff", "data-right": a.name, "data-wrong": b.name },
        `${a.name} right, ${b.name} wrong (${ids.length}): `,
        ids.map((id) => el("a", { href: "#", "data-id": id }, id)).flatMap((link) => [link, " "])));
    }
  }
  const diffs = document.getElementById("diffs");
  diffs.replaceChildren(...(out.length ? out : [el("span", { class: "muted" }, "none")]));
  for (const link of diffs.querySelectorAll("a")) {
    link.addEventListener("click", (e) => { e.preventDefault(); showItem(link.dataset.id); });
  }
}

function allIds() {
  const ids = [];
  for (const s of systems) for (const id of s.rows.keys()) if (!ids.includes(id)) ids.push(id);
  return ids;
}

function drawItems() {
  const head = el("tr", {}, el("th", {}, "id"), el("th", {}, "question"), el("th", {}, "answer"),
    systems.map((s) => el("th", {}, s.name)));
  const rows = allIds().map((id) => {
    const any = systems.map((s) => s.rows.get(id)).find(Boolean);
    const ex = any.example || {};
    const question = String(ex.question ?? ex.prompt ?? "").slice(0, 80);
    const row = el("tr", { class: "item", "data-id": id }, el("td", {}, id), el("td", {}, question),
      el("td", {}, any.judged.reference ?? "–"), systems.map((s) => {
        const r = s.rows.get(id);
        if (!r) return el("td", { class: "muted" }, "–");
        const mark = r.judged.reference === undefined ? "" : r.judged.correct ? " ✓" : " ✗";
        return el("td", { class: r.judged.reference === undefined ? "" : r.judged.correct ? "right" : "wrong" },
          r.error ? "error" : (r.judged.given ?? "–") + mark);
      }));
    row.addEventListener("click", () => showItem(id));
    return row;
  });
  document.getElementById("items").replaceChildren(head, ...rows);
}

/** One item across systems: each answer and its trace, round by round. */
function showItem(id) {
  const parts = systems.filter((s) => s.rows.has(id)).map((s) => {
    const r = s.rows.get(id);
    const rounds = (r.trace || []).map((t) => el("tr", {}, el("td", {}, t.round),
      el("td", { style: t.winner ? `color:${colourOf(t.winner)}` : "" }, t.winner || "–"),
      el("td", {}, Object.entries(t.scores || {}).map(([m, v]) => `${m}: ${fmt(v)}`).join(", ")),
      el("td", {}, t.accepted_text ?? ""), el("td", {}, fmt(t.generate_s, 3)),
      el("td", { class: "error" }, Object.entries(t.errors || {}).map(([m, e]) => `${m}: ${e}`).join("; "))));
    return el("div", { class: "item-system" }, el("h3", {}, `${s.name}: ${r.judged.correct ? "right" : "wrong"}`),
      el("pre", { class: "trace" }, r.error ? "error: " + r.error : r.text),
      el("table", {}, el("tr", {}, ["round", "winner", "scores", "text", "generate (s)", "errors"]
        .map((h) => el("th", {}, h))), rounds));
  });
  const detail = document.getElementById("item-detail");
  detail.replaceChildren(el("h2", {}, `Item ${id}`), ...parts);
  detail.scrollIntoView();
}

/** Per system, a stacked bar per round index: the share of items whose round was won by each member. */
function drawCharts() {
  const charts = systems.map((s) => {
    const wins = [];
    for (const r of s.rows.values()) {
      (r.trace || []).forEach((t, i) => {
        if (!t.winner) return;
        wins[i] = wins[i] || new Map();
        wins[i].set(t.winner, (wins[i].get(t.winner) || 0) + 1);
      });
    }
    return el("div", { class: "chart" }, el("div", {}, s.name), winChart(wins.slice(0, 40)));
  });
  document.getElementById("charts").replaceChildren(...charts);
}

function winChart(wins) {
  const NS = "http://www.w3.org/2000/svg";
  const width = 24, height = 120, pad = 20;
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("width", String(pad + wins.length * width));
  svg.setAttribute("height", String(height + pad));
  wins.forEach((counts, i) => {
    const total = [...(counts || new Map()).values()].reduce((a, b) => a + b, 0);
    let y = height;
    for (const [member, n] of [...(counts || new Map())].sort()) {
      const h = (height * n) / total;
      y -= h;
      const bar = document.createElementNS(NS, "rect");
      for (const [k, v] of Object.entries({ x: pad + i * width, y, width: width - 4, height: h, fill: colourOf(member) })) {
        bar.setAttribute(k, String(v));
      }
      bar.setAttribute("data-member", member);
      const title = document.createElementNS(NS, "title");
      title.textContent = `round ${i}: ${member} won ${n} of ${total} (${(100 * n / total).toFixed(0)}%)`;
      bar.append(title);
      svg.append(bar);
    }
    const label = document.createElementNS(NS, "text");
    for (const [k, v] of Object.entries({ x: pad + i * width + 4, y: height + 14, "font-size": 10 })) {
      label.setAttribute(k, String(v));
    }
    label.textContent = String(i);
    svg.append(label);
  });
  const legend = el("div", {}, [...new Set(wins.flatMap((c) => [...(c || new Map()).keys()]))].sort()
    .map((m) => el("span", { class: "chip", style: `background:${colourOf(m)}` }, m)));
  return el("div", {}, svg, legend);
}

document.getElementById("run-files").addEventListener("change", loadFiles);
