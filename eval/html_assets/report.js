// BiLLP run report: the trajectory browser and the memory view switcher.
// Per-step detail lives in gzip+base64 blocks (<script type="application/octet-stream">),
// inflated with DecompressionStream only when one of their users is shown, so a big run's page
// opens as fast as a small one's.
"use strict";
(function () {
  const DATA = JSON.parse(document.getElementById("billp-data").textContent);
  const INDEX = DATA.index;
  const KNOWN = new Set([
    "step", "item", "title", "rating", "reward", "accepted", "quit_reason", "min_distance",
    "thought", "action", "actor_hint", "hint", "match", "replaced", "value", "advantage",
    "critic_hint", "fallbacks", "candidates", "shortlist", "explore", "value_before", "target",
    "critic_distance", "hint_radius", "hint_check",
  ].concat(DATA.distance_fields));
  const blocks = new Map();
  const shown = new Set(INDEX.methods);
  const $ = (id) => document.getElementById(id);

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v; else el.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : String(c));
    }
    return el;
  }
  const num = (v, d = 2) => (typeof v === "number" ? v.toFixed(d) : "–");
  const signed = (v, d = 2) => (typeof v === "number" ? (v >= 0 ? "+" : "") + v.toFixed(d) : "–");

  async function inflate(b64) {
    const bin = atob(b64);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    return JSON.parse(await new Response(stream).text());
  }
  function block(n) {
    if (!blocks.has(n)) blocks.set(n, inflate($("blk-" + n).textContent.trim()));
    return blocks.get(n);
  }

  // ---- controls ----
  const phaseSel = $("sel-phase"), seedSel = $("sel-seed"), userSel = $("sel-user");
  function rows() {
    return ((INDEX.phases[phaseSel.value] || {})[seedSel.value]) || [];
  }
  function fillSeeds(keep) {
    const seeds = Object.keys(INDEX.phases[phaseSel.value] || {}).sort((a, b) => a - b);
    seedSel.replaceChildren(...seeds.map((s) => h("option", { value: s }, "seed " + s)));
    if (keep !== undefined && seeds.includes(keep)) seedSel.value = keep;
  }
  function fillUsers(keep) {
    const opts = rows().map(([user, , scores], i) => {
      const parts = INDEX.methods.filter((m) => m in scores)
        .map((m) => m + " " + num(scores[m], 1));
      return h("option", { value: String(i) }, "user " + user + "  (" + parts.join(" · ") + ")");
    });
    userSel.replaceChildren(...opts);
    if (keep !== undefined) {
      const i = rows().findIndex((r) => String(r[0]) === String(keep));
      if (i >= 0) userSel.value = String(i);
    }
  }

  // ---- one step cell ----
  function ratingBadge(r) {
    if (typeof r !== "number") return null;
    const cls = r >= 4 ? "r-good" : r >= 3 ? "r-mid" : "r-bad";
    return h("span", { class: "rating " + cls, title: "rating" }, "★" + num(r, r % 1 ? 1 : 0));
  }
  function hintList(step) {
    const hint = step.hint || step.actor_hint;
    const dist = DATA.distance_fields.map((f) => step[f]).find((v) => typeof v === "number");
    const radius = typeof step.hint_radius === "number" ? ", fires within " + num(step.hint_radius, 3) : "";
    const where = dist !== undefined ? h("span", { class: "kv" }, "  (nearest state at distance " +
      num(dist, 3) + radius + ")") : null;
    if (!hint || typeof hint !== "object") {
      return dist === undefined ? null : h("div", { class: "hint kv" }, "actor hint: none", where);
    }
    const parts = [];
    Object.entries(hint).sort((a, b) => b[1] - a[1]).forEach(([label, sign], i) => {
      if (i) parts.push(", ");
      parts.push(h("span", { class: sign > 0 ? "plus" : "minus" }, (sign > 0 ? "+ " : "− ") + label));
    });
    return h("div", { class: "hint" }, h("b", {}, "actor hint: "), parts, where);
  }
  function stepCell(step) {
    const head = h("div", { class: "step-head" }, h("b", {}, step.title ?? ("item " + step.item)),
      ratingBadge(step.rating), h("span", { class: "kv" }, "  reward " + signed(step.reward, 1)));
    const lines = [head];
    if (step.match !== undefined || step.action !== undefined) {
      lines.push(h("div", { class: "kv" }, h("b", {}, "grounded: "), step.match ?? "–",
        step.replaced ? " (answer replaced)" : "",
        step.action !== undefined ? h("span", {}, " · answer “", h("b", {}, step.action), "”") : ""));
    }
    if (step.thought) lines.push(h("div", { class: "plan" }, "plan: " + step.thought));
    if (Array.isArray(step.explore) && step.explore.length) {
      lines.push(h("div", { class: "kv" }, "exploration hint: " + step.explore.join(", ")));
    }
    const hint = hintList(step);
    if (hint) lines.push(hint);
    if (step.hint_check && typeof step.hint_check === "object" && Object.keys(step.hint_check).length) {
      lines.push(h("div", { class: "kv", title: "would the test env accept each hinted item now?" },
        "hint check: " + Object.entries(step.hint_check)
          .map(([t, ok]) => (ok ? "✓ " : "✗ ") + t).join(", ")));
    }
    if (["value", "advantage", "critic_hint"].some((k) => typeof step[k] === "number")) {
      const memo = typeof step.critic_hint === "number" ? " · critic memory " + num(step.critic_hint)
        : typeof step.critic_distance === "number" ? " · no critic memory (nearest " +
          num(step.critic_distance, 3) + ")" : "";
      lines.push(h("div", { class: "kv" },
        typeof step.value_before === "number" ? "V(s) " + num(step.value_before) + " → " : "",
        "V(s') ", h("b", {}, num(step.value)),
        typeof step.target === "number" ? " · target " + num(step.target) : "",
        " · advantage ", h("b", {}, signed(step.advantage)), memo));
    }
    const cands = step.candidates || step.shortlist;
    if (Array.isArray(cands) && cands.length) {
      lines.push(h("details", {}, h("summary", {}, "shortlist (" + cands.length + ")"),
        h("ol", { class: "cands" }, cands.map((c) => h("li", {}, String(c))))));
    }
    if (Array.isArray(step.fallbacks) && step.fallbacks.length) {
      lines.push(h("div", { class: "fb" }, "fallback: " + step.fallbacks.join(", ")));
    }
    if (step.quit_reason) {
      const d = typeof step.min_distance === "number" ? " (nearest recent item at distance " +
        num(step.min_distance, 3) + ")" : "";
      lines.push(h("div", { class: "quit" }, "session ended: " + step.quit_reason + d));
    }
    const extra = Object.entries(step).filter(([k]) => !KNOWN.has(k));
    if (extra.length) {
      lines.push(h("details", {}, h("summary", {}, "more"),
        h("div", { class: "kv" }, extra.map(([k, v]) =>
          h("div", {}, k + ": " + (typeof v === "object" ? JSON.stringify(v) : String(v)))))));
    }
    return h("td", { class: "step" }, lines);
  }

  // ---- the side-by-side view ----
  function header(method, ep) {
    if (!ep) return h("th", {}, h("span", { class: "m" }, method), h("div", { class: "sum" }, "no episode"));
    const kind = DATA.kinds[method] ? " (" + DATA.kinds[method] + ")" : "";
    const sum = "R_traj " + num(ep.r_traj, 1) + " · Len " + (ep.len ?? "–") + " · ended: " +
      (ep.quit_reason ?? ep.status ?? "–");
    const refl = Array.isArray(ep.reflections) && ep.reflections.length
      ? h("details", { open: true }, h("summary", {}, "reflections shown (" + ep.reflections.length + ")"),
        h("ul", { class: "refl" }, ep.reflections.map((r) => h("li", {}, String(r)))))
      : null;
    const err = ep.error ? h("div", { class: "quit" }, "failed: " + ep.error) : null;
    return h("th", { "data-method": method }, h("span", { class: "m" }, method), h("span", { class: "sum" }, kind),
      h("div", { class: "sum" }, sum), refl, err);
  }
  async function render() {
    const row = rows()[Number(userSel.value)];
    const target = $("traj");
    if (!row) { target.replaceChildren(h("p", { class: "empty" }, "no episodes")); return; }
    const [user, n] = row;
    const group = (await block(n))[phaseSel.value + "/" + seedSel.value + "/" + user] || {};
    const methods = INDEX.methods.filter((m) => shown.has(m) && (m in group || m in row[2]));
    const eps = methods.map((m) => group[m]);
    const any = eps.find((e) => e && Array.isArray(e.history_titles) && e.history_titles.length);
    $("history").textContent = any ? "user " + user + "'s recent history: " +
      any.history_titles.join(" · ") : "user " + user;
    const depth = Math.max(0, ...eps.map((e) => (e && e.steps ? e.steps.length : 0)));
    const body = [];
    for (let i = 0; i < depth; i++) {
      body.push(h("tr", {}, h("td", { class: "stepno" }, String(i + 1)),
        eps.map((e) => (e && e.steps[i] ? stepCell(e.steps[i]) : h("td", {})))));
    }
    const foot = h("tr", {}, h("td", { class: "stepno" }, "end"), eps.map((e) =>
      h("td", {}, e && e.reflection ? [h("b", {}, "reflection written: "), String(e.reflection)] : "")));
    const table = h("table", { class: "traj", id: "traj-table", "data-user": String(user) },
      h("thead", {}, h("tr", {}, h("th", { class: "stepno" }, "step"), methods.map((m, i) => header(m, eps[i])))),
      h("tbody", {}, body, eps.some((e) => e && e.reflection) ? foot : null));
    target.replaceChildren(table);
    history.replaceState(null, "", "#" + phaseSel.value + "/" + seedSel.value + "/" + user);
  }
  function go(delta) {
    const i = Number(userSel.value) + delta;
    if (i >= 0 && i < rows().length) { userSel.value = String(i); render(); }
  }

  async function start() {
    const phases = Object.keys(INDEX.phases);
    if (!phases.length) {
      $("traj").replaceChildren(h("p", { class: "empty" }, "this run has no episodes yet"));
      return;
    }
    phaseSel.replaceChildren(...phases.map((p) => h("option", { value: p }, p)));
    const [p, s, u] = decodeURIComponent(location.hash.slice(1)).split("/");
    if (phases.includes(p)) phaseSel.value = p;
    fillSeeds(s);
    fillUsers(u);
    $("toggles").replaceChildren(...INDEX.methods.map((m) => {
      const box = h("input", { type: "checkbox", checked: true, "data-method": m });
      box.addEventListener("change", () => { box.checked ? shown.add(m) : shown.delete(m); render(); });
      return h("label", {}, box, " " + m);
    }));
    phaseSel.addEventListener("change", () => { fillSeeds(); fillUsers(); render(); });
    seedSel.addEventListener("change", () => { const u = (rows()[Number(userSel.value)] || [])[0]; fillUsers(u); render(); });
    userSel.addEventListener("change", render);
    $("prev").addEventListener("click", () => go(-1));
    $("next").addEventListener("click", () => go(1));
    await render();
  }

  const memSel = $("sel-memory");
  if (memSel) {
    const show = () => document.querySelectorAll(".mem-panel").forEach((el) => {
      el.hidden = el.dataset.key !== memSel.value;
    });
    memSel.addEventListener("change", show);
    show();
  }

  if (typeof DecompressionStream === "undefined") {
    $("traj").replaceChildren(h("p", { class: "quit" }, "This browser cannot inflate the step " +
      "data (it needs DecompressionStream: Chrome 80+, Firefox 113+, Safari 16.4+)."));
    return;
  }
  start().then(() => {
    window.billpReadyMs = performance.now();
    document.documentElement.dataset.ready = "1";
  }).catch((err) => {
    $("traj").replaceChildren(h("p", { class: "quit" }, "could not show the episode: " + err));
    document.documentElement.dataset.ready = "error";
  });
})();
