// Shared helpers of the Ensemble-Hub page: DOM building, member colours, tabs.
"use strict";

const PALETTE = ["#2b6cb0", "#c05621", "#2f855a", "#9b2c2c", "#6b46c1", "#b7791f", "#2c7a7b", "#97266d"];
const memberColours = new Map();

/** A stable colour per member name, in order of first sight. */
function colourOf(member) {
  if (!memberColours.has(member)) {
    memberColours.set(member, PALETTE[memberColours.size % PALETTE.length]);
  }
  return memberColours.get(member);
}

/** el("td", {class: "x"}, "text", child) builds an element; strings become text nodes (never HTML). */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "style") node.style.cssText = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

/** A number for display: scores to 4 places, null as a dash. */
function fmt(value, digits = 4) {
  if (value === null || value === undefined) return "–";
  return typeof value === "number" ? String(Number(value.toFixed(digits))) : String(value);
}

/** Headers for an API call: the key the user typed, if any. */
function authHeaders() {
  const key = document.getElementById("api-key").value.trim();
  const headers = { "Content-Type": "application/json" };
  if (key) headers.Authorization = "Bearer " + key;
  return headers;
}

/** The message of an API error body ({"error": {...}}), else the HTTP status. */
async function apiError(response) {
  try {
    const body = await response.json();
    if (body && body.error) return `${response.status} ${body.error.code || ""}: ${body.error.message}`;
  } catch (e) { /* not JSON */ }
  return `HTTP ${response.status}`;
}

function showTab(name) {
  for (const tab of ["live", "compare"]) {
    document.getElementById(tab).hidden = tab !== name;
    document.getElementById("tab-" + tab).classList.toggle("active", tab === name);
  }
}

document.getElementById("tab-live").addEventListener("click", () => showTab("live"));
document.getElementById("tab-compare").addEventListener("click", () => showTab("compare"));
