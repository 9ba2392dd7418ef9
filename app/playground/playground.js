"use strict";
// twice playground: one prompt, 2 to 4 plans, streamed side by side with each plan's trace and cost.
// All model and user text is rendered with textContent, never as HTML.

const KEY_STORAGE = "twice.apiKey";
const MIN_PLANS = 2;
const MAX_PLANS = 4;
const DEFAULT_PLANS = [
  { strategies: [], rounds: "auto" },
  { strategies: ["psr"], rounds: "2" },
];
const STEP_TITLES = {
  role: "role (role_play)",
  questions: "self-questions",
  answer: "self-answer",
  feedback: "self_refine feedback",
  compare: "self_refine comparison",
};

let running = null; // the AbortController of the run in progress

const byId = (id) => document.getElementById(id);

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// --- plans ---------------------------------------------------------------------------------------------

function addPlan(plan) {
  const list = byId("plans");
  if (list.children.length >= MAX_PLANS) return;
  const node = byId("plan-template").content.firstElementChild.cloneNode(true);
  const rounds = node.querySelector(".rounds input");
  const psr = node.querySelector("input[value=psr]");
  for (const box of node.querySelectorAll("input[type=checkbox]")) {
    box.checked = plan.strategies.includes(box.value);
  }
  rounds.value = plan.rounds;
  rounds.disabled = !psr.checked;
  psr.addEventListener("change", () => { rounds.disabled = !psr.checked; });
  node.querySelector(".remove").addEventListener("click", () => { node.remove(); renumberPlans(); });
  list.append(node);
  renumberPlans();
}

function renumberPlans() {
  const plans = [...byId("plans").children];
  plans.forEach((node, i) => { node.querySelector(".plan-name").textContent = planLetter(i); });
  for (const button of document.querySelectorAll(".plan .remove")) button.disabled = plans.length <= MIN_PLANS;
  byId("add-plan").disabled = plans.length >= MAX_PLANS;
}

function readPlans() {
  return [...byId("plans").children].map((node) => ({
    strategies: [...node.querySelectorAll("input[type=checkbox]:checked")].map((box) => box.value),
    rounds: node.querySelector(".rounds input").value.trim() || "auto",
  }));
}

const planLetter = (i) => String.fromCharCode(65 + i);

function planLabel(plan) {
  if (!plan.strategies.length) return "none";
  const rounds = plan.strategies.includes("psr") ? ` · rounds ${plan.rounds}` : "";
  return plan.strategies.join(" + ") + rounds;
}

// --- talking to the gateway ----------------------------------------------------------------------------

class GatewayError extends Error {
  constructor(status, body, midStream) {
    const error = (body && body.error) || {};
    super(error.message || (status ? `HTTP ${status}` : "unreadable error"));
    this.status = status;
    this.type = error.type;
    this.param = error.param;
    this.code = error.code;
    this.midStream = midStream;
  }
}

function authHeaders(key) {
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function readJson(response) {
  try {
    return await response.json();
  } catch {
    return null;
  }
}

async function resolveModel(key, signal) {
  const typed = byId("model").value.trim();
  if (typed) return typed;
  const response = await fetch("/v1/models", { headers: authHeaders(key), signal });
  const body = await readJson(response);
  if (!response.ok) throw new GatewayError(response.status, body, false);
  const id = body && body.data && body.data[0] && body.data[0].id;
  if (!id) throw new Error("the gateway lists no model");
  byId("model").value = id;
  return id;
}

// Yields the data of each server-sent event (`data: ...` lines, events split by a blank line).
async function* sseData(stream) {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart()).join("\n");
      if (data) yield data;
    }
  }
}

async function runPlan(view, plan, request, key, signal) {
  const headers = {
    "Content-Type": "application/json",
    "X-Twice-Strategy": plan.strategies.join(",") || "none",
    "X-Twice-Trace": "1",
    ...authHeaders(key),
  };
  if (plan.strategies.includes("psr")) headers["X-Twice-Rounds"] = plan.rounds;
  const started = performance.now();
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers, body: JSON.stringify(request), signal,
    });
    if (!response.ok) throw new GatewayError(response.status, await readJson(response), false);
    for await (const data of sseData(response.body)) {
      if (data === "[DONE]") break;
      const event = JSON.parse(data);
      if (event.error) throw new GatewayError(response.status, event, true);
      if (event.usage) view.usage = event.usage;
      const choice = event.choices && event.choices[0];
      if (!choice) continue;
      if (choice.delta && choice.delta.content) {
        if (view.ttft === null) view.ttft = performance.now() - started;
        view.append(choice.delta.content);
      }
      if (choice.finish_reason) view.finish(choice.finish_reason, event.twice);
    }
    view.done(performance.now() - started);
  } catch (error) {
    view.fail(error, performance.now() - started, signal.aborted);
  }
}

// --- one column ----------------------------------------------------------------------------------------

class ColumnView {
  constructor(index, plan) {
    this.node = byId("column-template").content.firstElementChild.cloneNode(true);
    this.node.querySelector(".title").textContent = `${planLetter(index)} · ${planLabel(plan)}`;
    this.answer = this.node.querySelector(".answer");
    this.text = "";
    this.ttft = null;
    this.usage = null;
    this.twice = null;
    this.finishReason = null;
    this.setState("streaming", "streaming…");
  }

  setState(state, label) {
    this.node.dataset.state = state;
    this.node.querySelector(".state").textContent = label;
  }

  append(text) {
    this.text += text;
    this.answer.textContent = this.text;
  }

  finish(reason, twice) {
    this.finishReason = reason;
    this.twice = twice || null;
  }

  done(totalMs) {
    const refused = this.finishReason === "content_filter" || (this.twice && this.twice.refused);
    this.setState(refused ? "refused" : "done", `done · ${this.finishReason || "no finish_reason"}`);
    if (refused) {
      const backtracks = this.twice ? this.twice.backtracks : 0;
      this.show(".refusal", `Refused: finish_reason content_filter, after ${backtracks} backtrack(s).`);
    }
    this.renderTrace(refused);
    this.renderCost(totalMs);
  }

  fail(error, totalMs, aborted) {
    if (aborted) {
      this.setState("stopped", "stopped");
    } else if (error instanceof GatewayError) {
      this.setState("error", error.midStream ? "stream error" : `HTTP ${error.status}`);
      const where = error.midStream ? "The stream failed after it started" : `HTTP ${error.status}`;
      const detail = [error.type, error.code, error.param && `param ${error.param}`].filter(Boolean).join(" · ");
      this.show(".error", `${where}${detail ? ` (${detail})` : ""}: ${error.message}`);
    } else {
      this.setState("error", "error");
      this.show(".error", `Request failed: ${error.message}`);
    }
    this.renderCost(totalMs);
  }

  show(selector, message) {
    const box = this.node.querySelector(selector);
    box.textContent = message;
    box.hidden = false;
  }

  // The trace, split into generation passes (chunks and verdicts) and the other strategies' steps.
  renderTrace(refused) {
    const steps = (this.twice && this.twice.trace) || [];
    const items = [];
    let pass = null;
    for (const step of steps) {
      if (step.step === "generate" || step.step === "verdict") {
        if (!pass) items.push((pass = { pass: [] }));
        pass.pass.push(step);
      } else {
        pass = null;
        items.push({ step });
      }
    }
    // The pass the client received: the last checked one whose kept chunks begin the answer.
    const checked = items.filter((item) => item.pass && item.pass.some((s) => s.step === "verdict"));
    const inAnswer = checked.reverse().find((item) => this.text.startsWith(keptText(item.pass)));
    if (inAnswer) this.annotateAnswer(inAnswer.pass, refused);
    const list = this.node.querySelector(".steps");
    for (const item of items) {
      if (item === inAnswer || (item.pass && keptText(item.pass) === this.text)) continue;
      list.append(item.pass ? passBlock(item.pass) : stepBlock(item.step));
    }
  }

  annotateAnswer(pass, refused) {
    const kept = keptText(pass);
    this.answer.replaceChildren(...trail(pass));
    const rest = this.text.slice(kept.length);
    if (rest) this.answer.append(el("span", refused ? "refusal-text" : "", rest));
    this.answer.classList.add("annotated");
  }

  renderCost(totalMs) {
    const twice = this.twice || {};
    const usage = this.usage || {};
    const hidden = usage.completion_tokens_details ? usage.completion_tokens_details.reasoning_tokens : undefined;
    const visible = usage.completion_tokens !== undefined && hidden !== undefined
      ? usage.completion_tokens - hidden : undefined;
    // Who chose the rounds, so a column that asked for 2 and got the predictor's 6 ("raised") says so.
    const chosenBy = twice.rounds && twice.rounds.source ? ` (${twice.rounds.source})` : "";
    const rounds = twice.rounds ? `${twice.rounds.used} / ${twice.rounds.granted}${chosenBy}` : undefined;
    const rows = [
      ["backend_calls", "backend calls", twice.backend_calls],
      ["hidden_tokens", "hidden tokens", hidden],
      ["visible_tokens", "visible tokens", visible],
      ["prompt_tokens", "prompt tokens", usage.prompt_tokens],
      ["rounds", "rounds used/given", rounds],
      ["backtracks", "backtracks", twice.backtracks],
      ["ttft_ms", "first token", this.ttft === null ? undefined : `${Math.round(this.ttft)} ms`],
      ["total_ms", "total", `${Math.round(totalMs)} ms`],
    ];
    const cost = this.node.querySelector(".cost");
    cost.replaceChildren();
    for (const [key, label, value] of rows) {
      const dd = el("dd", "", value === undefined || value === null ? "—" : String(value));
      dd.dataset.cost = key;
      cost.append(el("dt", "", label), dd);
    }
  }
}

function keptText(pass) {
  return pass.filter((s) => s.step === "generate" && !s.discarded).map((s) => s.output).join("");
}

// Chunks as text (struck through when discarded) with a verdict badge after each checkpoint.
function trail(pass) {
  return pass.map((step) => {
    if (step.step === "verdict") return badge(step);
    const chunk = el(step.discarded ? "del" : "span", step.discarded ? "discarded" : "chunk", step.output);
    if (step.discarded) chunk.title = `discarded at checkpoint ${step.checkpoint} (backtracked)`;
    return chunk;
  });
}

function badge(step) {
  const kind = step.off_format ? "off-format" : step.harmful ? "harmful" : "safe";
  const score = typeof step.score === "number" ? step.score.toFixed(2) : "?";
  const node = el("span", `badge ${kind}`, `${step.harmful ? "✗" : "✓"} ${score}`);
  node.dataset.score = String(step.score);
  node.title = `checkpoint ${step.checkpoint} · round ${step.round} · ${kind} · verdict token "${step.output}"`;
  return node;
}

function passBlock(pass) {
  const block = el("div", "step step-pass");
  block.dataset.step = "pass";
  block.append(el("h4", "", "a generation the client did not receive"));
  const text = el("p", "annotated");
  text.append(...trail(pass));
  block.append(text);
  return block;
}

function stepBlock(step) {
  const block = el("div", `step step-${step.step}`);
  block.dataset.step = step.step;
  const title = el("h4", "", STEP_TITLES[step.step] || `${step.strategy} ${step.step}`);
  title.append(el("small", "", ` ${Math.round(step.elapsed_ms)} ms`));
  if (step.step === "compare") {
    block.append(title, el("p", "", `kept ${step.output === "B" ? "the rewrite" : "the original"} (score ${step.score})`));
  } else {
    block.append(title, el("p", "", step.output));
  }
  return block;
}

// --- the form ------------------------------------------------------------------------------------------

async function run(event) {
  event.preventDefault();
  if (running) return;
  const plans = readPlans();
  const key = byId("api-key").value.trim();
  const controller = new AbortController();
  running = controller;
  setRunning(true, `running ${plans.length} plans…`);
  const columns = byId("columns");
  columns.replaceChildren();
  columns.className = `columns cols-${plans.length}`;
  try {
    const model = await resolveModel(key, controller.signal);
    const request = {
      model,
      messages: [{ role: "user", content: byId("prompt").value }],
      max_tokens: Number(byId("max-tokens").value) || 48,
      stream: true,
      stream_options: { include_usage: true },
    };
    const views = plans.map((plan, i) => new ColumnView(i, plan));
    columns.append(...views.map((view) => view.node));
    await Promise.all(views.map((view, i) => runPlan(view, plans[i], request, key, controller.signal)));
    setRunning(false, controller.signal.aborted ? "stopped" : "done");
  } catch (error) {
    const detail = error instanceof GatewayError ? `HTTP ${error.status}: ${error.message}` : error.message;
    setRunning(false, `could not start: ${detail}`, true);
  } finally {
    running = null;
  }
}

function setRunning(on, message, failed = false) {
  document.body.dataset.running = on ? "1" : "0";
  byId("run").disabled = on;
  byId("stop").disabled = !on;
  const status = byId("form-status");
  status.textContent = message;
  status.classList.toggle("failed", failed);
}

function init() {
  DEFAULT_PLANS.forEach(addPlan);
  const key = byId("api-key");
  key.value = sessionStorage.getItem(KEY_STORAGE) || "";
  key.addEventListener("input", () => {
    if (key.value) sessionStorage.setItem(KEY_STORAGE, key.value);
    else sessionStorage.removeItem(KEY_STORAGE);
  });
  byId("add-plan").addEventListener("click", () => addPlan({ strategies: [], rounds: "auto" }));
  byId("stop").addEventListener("click", () => running && running.abort());
  byId("form").addEventListener("submit", run);
  document.body.dataset.running = "0";
}

document.addEventListener("DOMContentLoaded", init);
