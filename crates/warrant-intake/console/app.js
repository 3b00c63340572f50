// The reviewers' console: the queue, an instance's record, and a decision
// form that signs with the reviewer's own Ed25519 key.
//
// The key is generated here by WebCrypto as NON-extractable and kept in
// IndexedDB: the private half never leaves the browser, not even to this
// page's code. Only the raw public key is exported, to show the line an
// operator adds to the principals file.
//
// Everything that comes from the log is shown as text (textContent), never
// parsed as HTML; only http(s) URLs become links. Intake serves this file
// with a CSP that forbids inline script and every other origin.

const SESSION_PREFIX = "warrant.session.v1\n";
const DECISION_PREFIX = "warrant.decision.v1\n";
const POLL_MS = 2000;
// A record page asks intake to hold each read until the record changes
// (the wait API), so a decision shows up the moment it is folded.
const WAIT_MS = 25000;
const STATUSES = [
  "AWAITING_DECISION", "AWAITING_SIGNALS", "BLOCKED", "AUTHORIZED", "EXECUTING",
  "COMPLETED", "FAILED", "REJECTED", "EXPIRED", "WITHDRAWN",
];
const FINAL = new Set(["COMPLETED", "FAILED", "REJECTED", "EXPIRED", "WITHDRAWN"]);
// Waiting for something before its decision deadline; open to a decision.
const WAITING = new Set(["AWAITING_SIGNALS", "AWAITING_DECISION", "BLOCKED"]);
const DECIDABLE = new Set(["AWAITING_DECISION", "BLOCKED"]);
const VERDICTS = ["APPROVE", "REJECT", "OVERRIDE"];

const main = document.getElementById("app");
const who = document.getElementById("who");
const utf8 = new TextEncoder();

// What the page knows: the key in IndexedDB and the session intake opened.
const state = { key: null, session: null };
// Bumped on every route change: a poll from an older page stops itself.
let generation = 0;

// ---- small DOM helpers (text only) ----------------------------------------

/** An element; string children become text nodes, `on*` props listeners. */
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

const mono = (text) => el("code", {}, text ?? "—");
const section = (title, ...body) => el("section", {}, el("h2", {}, title), ...body);

/** A definition list of [label, value] pairs; values may be nodes. */
function facts(pairs) {
  return el("dl", { class: "facts" },
    pairs.filter(Boolean).map(([k, v]) => [el("dt", {}, k), el("dd", {}, v ?? "—")]));
}

function table(headings, rows, empty = "none") {
  if (rows.length === 0) return el("p", { class: "muted" }, empty);
  return el("table", {},
    el("thead", {}, el("tr", {}, headings.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.map((cells) => el("tr", {}, cells.map((c) => el("td", {}, c))))));
}

/** A context ref or evidence URI: a link only for http(s), else plain text. */
function uriNode(uri) {
  let url = null;
  try { url = new URL(uri); } catch { /* not absolute: shown as text */ }
  if (url && (url.protocol === "https:" || url.protocol === "http:")) {
    return el("a", { href: url.href, rel: "noopener noreferrer", target: "_blank" }, uri);
  }
  return el("span", { class: "uri", title: "not an http(s) link: shown as text" }, uri);
}

const statusBadge = (status) =>
  el("span", { class: `status s-${String(status).toLowerCase()}` }, status ?? "UNKNOWN");

function errorBox(error) {
  return el("p", { class: "error", role: "alert" }, error.message);
}

// ---- time ------------------------------------------------------------------

function duration(ms) {
  const s = Math.round(Math.abs(ms) / 1000);
  if (s < 60) return `${s} s`;
  const m = Math.round(s / 60);
  if (m < 60) return `${m} min`;
  const h = Math.floor(m / 60);
  if (h < 48) return m % 60 ? `${h} h ${m % 60} min` : `${h} h`;
  return `${Math.round(h / 24)} d`;
}

function when(ms) {
  if (ms === null || ms === undefined) return "—";
  const date = new Date(ms);
  return el("time", { datetime: date.toISOString(), title: `${date.toISOString()} (${ms} ms)` },
    date.toLocaleString());
}

const age = (ms) => `${duration(Date.now() - ms)} ago`;

function timeLeft(deadline, status) {
  if (!WAITING.has(status)) return "—";
  const left = deadline - Date.now();
  return left > 0
    ? el("span", { class: left < 10 * 60_000 ? "soon" : "" }, `${duration(left)} left`)
    : el("span", { class: "late" }, `passed ${duration(left)} ago`);
}

// ---- bytes -----------------------------------------------------------------

const hex = (buffer) =>
  Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, "0")).join("");

async function sha256Hex(bytes) {
  return hex(await crypto.subtle.digest("SHA-256", bytes));
}

function concat(a, b) {
  const out = new Uint8Array(a.length + b.length);
  out.set(a, 0);
  out.set(b, a.length);
  return out;
}

// ---- the key, in IndexedDB -------------------------------------------------

function database() {
  return new Promise((resolve, reject) => {
    const open = indexedDB.open("warrant-console", 1);
    open.onupgradeneeded = () => open.result.createObjectStore("keys");
    open.onsuccess = () => resolve(open.result);
    open.onerror = () => reject(open.error);
  });
}

async function store(mode, action) {
  const db = await database();
  try {
    return await new Promise((resolve, reject) => {
      const request = action(db.transaction("keys", mode).objectStore("keys"));
      request.onsuccess = () => resolve(request.result);
      request.onerror = () => reject(request.error);
    });
  } finally {
    db.close();
  }
}

const loadKey = () => store("readonly", (keys) => keys.get("current"));
const saveKey = (key) => store("readwrite", (keys) => keys.put(key, "current"));

/** A fresh non-extractable Ed25519 key pair; only the public half is exported. */
async function generateKey() {
  const pair = await crypto.subtle.generateKey({ name: "Ed25519" }, false, ["sign", "verify"]);
  const raw = await crypto.subtle.exportKey("raw", pair.publicKey);
  const publicHex = hex(raw);
  const key = {
    pair,
    public_hex: publicHex,
    // docs: the key id is the first 16 hex digits of SHA-256(raw public key).
    key_id: (await sha256Hex(raw)).slice(0, 16),
    created_at: Date.now(),
  };
  await saveKey(key);
  return key;
}

async function sign(bytes) {
  return hex(await crypto.subtle.sign({ name: "Ed25519" }, state.key.pair.privateKey, bytes));
}

const principalsLine = (key) => `keys: ["ed25519:${key.public_hex}"]`;

// ---- the API ---------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(`${code}: ${message} (HTTP ${status})`);
    this.status = status;
    this.code = code;
  }
}

async function api(path, options = {}) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = null; }
  if (!response.ok) {
    const error = body?.error ?? {};
    throw new ApiError(response.status, error.code ?? "http_error", error.message ?? text.slice(0, 200));
  }
  return body;
}

const postJson = (path, value) => api(path, {
  method: "POST",
  headers: { "Content-Type": "application/json" },
  body: JSON.stringify(value),
});

async function refreshSession() {
  try {
    state.session = await api("/v1/session");
  } catch {
    state.session = null;
  }
  showWho();
}

/** Open a session: sign a fresh challenge with the key. */
async function signIn() {
  const { challenge } = await postJson("/v1/sessions/challenge", {});
  const message = utf8.encode(`${SESSION_PREFIX}${challenge}\n${state.key.key_id}`);
  const signature = await sign(message);
  state.session = await postJson("/v1/sessions", { key_id: state.key.key_id, challenge, signature });
  showWho();
}

async function signOut() {
  await api("/v1/session", { method: "DELETE" });
  state.session = null;
  showWho();
}

function showWho() {
  const s = state.session;
  who.textContent = s?.reviewer
    ? `${s.reviewer.principal} (${s.reviewer.roles.join(", ")}) · key ${s.key_id} · until ${new Date(s.expires_at).toLocaleTimeString()}`
    : "not signed in";
  who.classList.toggle("signed-in", Boolean(s?.reviewer));
}

/** What a read that needs a session shows when there is none. */
function signInPrompt(error) {
  if (!(error instanceof ApiError) || error.status !== 401) return errorBox(error);
  state.session = null;
  showWho();
  if (!state.key) {
    return el("p", { class: "notice" }, "You have no key in this browser yet. ",
      el("a", { href: "#/keys" }, "Generate one"), " and have it registered first.");
  }
  const status = el("span", { class: "muted" });
  const button = el("button", {
    type: "button",
    onclick: async () => {
      button.disabled = true;
      try {
        await signIn();
        route();
      } catch (e) {
        status.textContent = e.message;
        button.disabled = false;
      }
    },
  }, "Sign in with my key");
  return el("p", { class: "notice" }, "Reading needs a session. ", button, " ", status);
}

// ---- pages -----------------------------------------------------------------

function keysPage() {
  const out = el("div", { class: "page" }, el("h1", {}, "Your key and session"));
  if (!window.isSecureContext || !crypto.subtle) {
    out.append(el("p", { class: "error" },
      "This page is not a secure context (HTTPS or localhost), so WebCrypto is unavailable and the console cannot sign."));
    return out;
  }
  const status = el("p", { class: "muted", id: "key-status" });
  const run = (action) => async (event) => {
    event.target.disabled = true;
    status.textContent = "";
    try {
      await action();
      render(keysPage());
    } catch (error) {
      status.textContent = error.message;
      event.target.disabled = false;
    }
  };

  const key = state.key;
  if (!key) {
    out.append(
      el("p", {}, "Generate an Ed25519 key in this browser. Its private half cannot be exported: it stays in this browser's storage, and only signatures leave it."),
      el("button", { type: "button", id: "generate-key", onclick: run(async () => { state.key = await generateKey(); }) }, "Generate my key"),
    );
  } else {
    out.append(
      facts([
        ["key id", el("code", { id: "key-id" }, key.key_id)],
        ["public key", mono(key.public_hex)],
        ["created", when(key.created_at)],
      ]),
      el("p", {}, "To register it, an operator adds this line under your entry in the principals file (", el("code", {}, "reviewers:"), "), then reloads intake (SIGHUP):"),
      el("pre", { class: "line" }, el("code", { id: "principals-line" }, principalsLine(key))),
    );
  }

  const s = state.session;
  if (s?.reviewer) {
    out.append(section("Session",
      facts([
        ["reviewer", el("span", { id: "session-principal" }, s.reviewer.principal)],
        ["roles", s.reviewer.roles.join(", ")],
        ["key id", mono(s.key_id)],
        ["expires", when(s.expires_at)],
      ]),
      el("p", {},
        el("a", { class: "button", href: "#/queue" }, "Open the queue"), " ",
        el("button", { type: "button", id: "sign-out", onclick: run(signOut) }, "Sign out")),
    ));
  } else if (key) {
    out.append(section("Session",
      el("p", {}, "Sign in by signing a fresh challenge from intake with this key. The session only reads; each decision is signed on its own."),
      el("button", { type: "button", id: "sign-in", onclick: run(signIn) }, "Sign in with my key"),
    ));
  }
  if (key) {
    out.append(section("Replace the key",
      el("p", { class: "muted" }, "A new key replaces this one in this browser. Keep the old line in the principals file until the new one is registered."),
      el("button", {
        type: "button",
        class: "quiet",
        onclick: run(async () => {
          if (window.confirm("Replace this browser's key? The old one is deleted.")) state.key = await generateKey();
        }),
      }, "Generate a new key"),
    ));
  }
  out.append(status);
  return out;
}

function queuePage(params) {
  const status = STATUSES.includes(params.get("status")) ? params.get("status") : "AWAITING_DECISION";
  const role = params.get("role") ?? "";
  const roles = state.session?.reviewer?.roles ?? [];
  const form = el("form", { class: "filters", id: "queue-filters" },
    el("label", {}, "status ",
      el("select", { name: "status" }, STATUSES.map((s) => el("option", { value: s, selected: s === status }, s)))),
    el("label", {}, "role ",
      el("input", { name: "role", value: role, list: "my-roles", placeholder: "any", size: 10 })),
    el("datalist", { id: "my-roles" }, roles.map((r) => el("option", { value: r }))),
    el("button", { type: "submit" }, "Filter"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const query = new URLSearchParams({ status: form.elements.status.value });
    if (form.elements.role.value.trim()) query.set("role", form.elements.role.value.trim());
    location.hash = `#/queue?${query}`;
  });

  const results = el("div", { id: "queue" }, el("p", { class: "muted" }, "Loading…"));
  const page = el("div", { class: "page" }, el("h1", {}, "Queue"), form, results);
  const mine = generation;

  const load = async () => {
    if (mine !== generation) return;
    const query = new URLSearchParams({ status, limit: "50" });
    if (role) query.set("role", role);
    const rows = [];
    let after = null;
    try {
      do {
        if (after) query.set("after", after);
        const pageOf = await api(`/v1/instances?${query}`);
        rows.push(...pageOf.instances);
        after = pageOf.next;
      } while (after && rows.length < 200);
    } catch (error) {
      if (mine !== generation) return;
      results.replaceChildren(signInPrompt(error));
      if (!(error instanceof ApiError && error.status === 401)) setTimeout(load, 5 * POLL_MS);
      return;
    }
    if (mine !== generation) return;
    results.replaceChildren(queueTable(rows, status), el("p", { class: "muted" },
      `${rows.length} instance${rows.length === 1 ? "" : "s"} · refreshed ${new Date().toLocaleTimeString()}`));
    setTimeout(load, 5 * POLL_MS);
  };
  load();
  return page;
}

function queueTable(rows, status) {
  const empty = `No instance is ${status} for this filter.`;
  return table(["instance", "status", "action", "rule", "approvals", "proposer", "age", "deadline"],
    rows.map((row) => [
      el("a", { href: `#/instance/${encodeURIComponent(row.instance_id)}`, class: "instance-link" },
        el("code", {}, row.instance_id.slice(0, 8))),
      statusBadge(row.status),
      el("span", {}, el("strong", {}, row.action.kind), " ", el("code", {}, row.action.target)),
      el("span", {}, row.rule.rule_id, row.rule.signed_decisions ? el("span", { class: "tag" }, "signed only") : null),
      el("span", { title: `approvers: ${row.rule.approver_roles.join(", ")}; override: ${row.rule.override_roles.join(", ")}` },
        approvalsCell(row)),
      row.proposer.principal,
      age(row.proposed_at),
      timeLeft(row.decision_deadline, row.status),
    ]), empty);
}

// One group: "1 of 2 (alice)". Several: each on its own, since every group
// must be met and the sum hides which one is missing.
function approvalsCell(row) {
  const groups = row.approval_groups ?? [];
  if (groups.length <= 1) {
    return el("span", {}, `${row.decided_by.length} of ${row.rule.approvals_required}`,
      row.decided_by.length ? el("span", { class: "muted" }, ` (${row.decided_by.join(", ")})`) : null);
  }
  return el("span", {}, ...groups.flatMap((g, i) => [
    i ? " · " : null,
    g.missing === 0 ? `${g.roles.join("/")} ${g.counted} of ${g.count}` : el("strong", {}, `${g.roles.join("/")} ${g.counted} of ${g.count}`),
    g.approved_by.length ? el("span", { class: "muted" }, ` (${g.approved_by.join(", ")})`) : null,
  ]));
}

function instancePage(id) {
  // What to decide on, the form, then the log's detail.
  const recordBox = el("div", { id: "record" }, el("p", { class: "muted" }, "Loading…"));
  const formBox = el("div", { id: "decide" });
  // Outside the form, so the answer stays when the form closes.
  const result = el("div", { id: "decision-result" });
  const logBox = el("div", { id: "log" });
  const page = el("div", { class: "page" },
    el("p", {}, el("a", { href: "#/queue" }, "← queue")),
    el("h1", {}, "Instance ", el("code", {}, id)),
    el("p", { class: "muted", id: "poll-state" }),
    recordBox, formBox, result, logBox);
  const mine = generation;
  let shown = null;
  let shownEntries = 0;
  let shownAt = 0;

  const poll = async () => {
    if (mine !== generation) return;
    const seen = shown === null ? 0 : shownEntries;
    const asked = Date.now();
    let record;
    try {
      record = await api(`/v1/instances/${encodeURIComponent(id)}?after_seq=${seen}&wait_ms=${shown === null ? 0 : WAIT_MS}`);
    } catch (error) {
      if (mine !== generation) return;
      recordBox.replaceChildren(signInPrompt(error));
      if (error instanceof ApiError && error.status === 401) return;
      setTimeout(poll, 5 * POLL_MS);
      return;
    }
    if (mine !== generation) return;
    const changed = record.head_hash !== shown;
    if (changed) {
      shown = record.head_hash;
      shownEntries = (record.history || []).length;
      shownAt = Date.now();
      recordBox.replaceChildren(recordView(record));
      logBox.replaceChildren(logView(record));
      updateForm(formBox, record, result);
    } else if (Date.now() - shownAt > 20_000) {
      // Nothing new on the log: only the ages and time left moved on.
      shownAt = Date.now();
      recordBox.replaceChildren(recordView(record));
    }
    const waiting = !FINAL.has(record.status);
    page.querySelector("#poll-state").textContent = waiting
      ? `Live: shown as soon as the log changes · last checked ${new Date().toLocaleTimeString()}`
      : `Final: ${record.status}.`;
    if (!waiting) return;
    // An answer that came back at once with nothing new (an intake without
    // the wait API, say) must not turn into a tight loop.
    const quick = !changed && Date.now() - asked < 500;
    setTimeout(poll, quick ? POLL_MS : 0);
  };
  poll();
  return page;
}

function recordView(r) {
  const p = r.proposal;
  if (!p) return el("p", {}, "This instance has no proposal (a quarantine record).");
  const out = el("div", {});
  out.append(
    el("div", { class: "headline" }, statusBadge(r.status),
      el("span", {}, el("strong", {}, p.action.kind), " on ", el("code", {}, p.action.target)),
      WAITING.has(r.status) ? el("span", { class: "muted" }, " · ", timeLeft(p.decision_deadline, r.status)) : null),
    section("Action",
      facts([
        ["kind", mono(p.action.kind)],
        ["target", mono(p.action.target)],
        ["action digest", el("code", { id: "action-digest" }, p.action_digest)],
      ]),
      table(["parameter", "value"],
        Object.entries(p.action.parameters ?? {}).map(([k, v]) => [mono(k), mono(v)]), "no parameters")),
    section("Proposal",
      facts([
        ["proposer", `${p.proposer.principal} (${p.proposer.kind}${p.proposer.model ? `, ${p.proposer.model}` : ""})`],
        ["submitted by", mono(p.submitted_by)],
        ["proposed", el("span", {}, when(p.proposed_at), " · ", age(p.proposed_at))],
        ["decision deadline", el("span", {}, when(p.decision_deadline),
          WAITING.has(r.status) ? [" · ", timeLeft(p.decision_deadline, r.status)] : null)],
        ["rationale", el("p", { class: "rationale", id: "rationale" }, p.rationale ?? "—")],
      ]),
      el("h3", {}, "Context"),
      p.context_refs.length === 0 ? el("p", { class: "muted" }, "none") :
        el("ul", { class: "refs", id: "context-refs" }, p.context_refs.map((ref) => el("li", {},
          uriNode(ref.uri),
          ref.note ? el("span", { class: "note" }, ` — ${ref.note}`) : null,
          ref.digest ? el("span", { class: "muted" }, " · ", mono(ref.digest)) : null)))),
    section("Rule",
      facts([
        ["rule", mono(p.rule.rule_id)],
        ["approvals required", String(p.rule.approvals_required)],
        ["approver roles", p.rule.approver_roles.join(", ") || "—"],
        ["override roles", p.rule.override_roles.join(", ") || "—"],
        ["required signals", (p.rule.required_signals ?? []).join(", ") || "none"],
        ["review", p.rule.review],
        ["decisions", p.rule.signed_decisions ? "signed by the reviewer only" : "signed or attested"],
        ["ruleset", el("span", {}, `version ${p.ruleset.version} · digest `, mono(p.ruleset.digest))],
        ["rules passed over", (p.resolution ?? []).map((n) => `${n.rule_id} (${n.reason})`).join("; ") || "none"],
      ])),
    // append() would print a null, so an absent section is no argument at all.
    ...((r.approval_groups ?? []).length === 0 ? [] : [section("Approval groups",
      table(["group", "needs", "counted", "missing"],
        r.approval_groups.map((g, i) => [String(i + 1), `${g.count} of ${g.roles.join(", ")}`,
          g.approved_by.join(", ") || "nobody yet",
          g.missing === 0 ? "met" : el("strong", {}, String(g.missing))])))]),
    section("Signals",
      table(["#", "recorded", "source", "verdict", "reasons", "policy", "outcome"],
        r.signals.map((s) => [String(s.seq), when(s.recorded_at), s.source, el("strong", {}, s.verdict),
          s.reasons.join("; "), `${s.policy_ref.id} v${s.policy_ref.version}`, s.outcome]))),
    section("Decisions",
      table(["#", "recorded", "reviewer", "verdict", "justification", "scope", "outcome", "proof"],
        r.decisions.map((d) => [String(d.seq), when(d.recorded_at), `${d.reviewer} (${d.roles.join(", ")})`,
          el("strong", {}, d.verdict), d.justification || "—", scopeText(d.scope),
          el("span", { class: d.outcome === "applied" ? "" : "refused" }, d.outcome),
          attestation(d.attestation)]))),
  );
  if (r.authorization) {
    const a = r.authorization;
    const by = a.authority.kind === "QUORUM" ? `quorum of ${a.authority.approvers.join(", ")}`
      : a.authority.kind === "OVERRIDE" ? `override by ${a.authority.principal}: ${a.authority.justification}`
        : `the rule ${a.authority.rule_id}`;
    out.append(section("Authorization", facts([
      ["authorized", when(a.authorized_at)],
      ["by", by],
      ["scope", scopeText(a.scope)],
    ])));
  }
  if (r.grants.length) {
    out.append(section("Grants", table(["grant", "executor", "granted", "report"],
      r.grants.map((g) => [mono(g.grant_id), g.executor, when(g.granted_at),
        g.report ? `${g.report.outcome} at ${new Date(g.report.reported_at).toLocaleString()}` : "—"]))));
  }
  if (r.violations.length) {
    out.append(section("Violations", table(["#", "kind", "grant", "reported"],
      r.violations.map((v) => [String(v.seq), el("strong", { class: "late" }, v.kind), mono(v.grant_id), when(v.reported_at)]))));
  }
  return out;
}

/** How the instance got here: transitions, the hash-chained history, the head hash. */
function logView(r) {
  const entries = `${r.history.length} ${r.history.length === 1 ? "entry" : "entries"}, hash-chained`;
  return el("div", {},
    section("Transitions", table(["#", "recorded", "from", "to", "log position"],
      r.transitions.map((t) => [String(t.seq), when(t.recorded_at), t.from ?? "—", t.to,
        `partition ${t.position.partition}, offset ${t.position.offset}`]))),
    section("History",
      el("details", {}, el("summary", {}, entries),
        table(["#", "event", "submitted by", "outcome", "hash"],
          r.history.map((h) => [String(h.seq), h.event, h.submitted_by ?? "—", outcomeText(h.outcome), mono(h.hash)]))),
      facts([["head hash", el("code", { id: "head-hash" }, r.head_hash)]])));
}

function attestation(a) {
  if (a?.kind === "SIGNED_BY_REVIEWER") {
    return el("span", { class: "signed", title: `public key ${a.public_key}` }, "✔ signed by the reviewer · key ", mono(a.key_id));
  }
  return el("span", { class: "attested" }, "attested by intake (HMAC)");
}

function scopeText(scope) {
  if (!scope) return "—";
  const parts = Object.entries(scope.constraints ?? {}).map(([k, v]) => `${k}=${v}`);
  if (scope.not_after !== null && scope.not_after !== undefined) parts.push(`not after ${new Date(scope.not_after).toLocaleString()}`);
  if (scope.max_executions !== null && scope.max_executions !== undefined) parts.push(`at most ${scope.max_executions}×`);
  return parts.length ? parts.join(" · ") : "as the rule allows";
}

function outcomeText(o) {
  if (o.kind === "APPLIED") return `${o.from ?? "∅"} → ${o.to}${o.effect ? ` (${o.effect.kind})` : ""}`;
  if (o.kind === "REFUSED") return `refused ${o.code}`;
  if (o.kind === "VIOLATION") return `violation ${o.violation}`;
  return o.kind;
}

// ---- the decision form -----------------------------------------------------

/** Show the form while the instance can be decided; never rebuild it under the reviewer's hands. */
function updateForm(box, record, result) {
  if (record.proposal && DECIDABLE.has(record.status)) {
    if (box.dataset.open !== "yes") box.replaceChildren(decisionForm(record, result));
    box.dataset.open = "yes";
    return;
  }
  box.dataset.open = "no";
  const why = record.status === "AWAITING_SIGNALS"
    ? "The instance is waiting for its policy signals; a decision before them is refused."
    : `No decision is open: the instance is ${record.status}.`;
  box.replaceChildren(section("Decide", el("p", { class: "muted" }, why)));
}

function decisionForm(record, result) {
  const p = record.proposal;
  const field = (label, input, hint) => el("label", { class: "field" }, el("span", {}, label), input,
    hint ? el("small", { class: "muted" }, hint) : null);
  const verdict = el("select", { name: "verdict", id: "verdict" }, VERDICTS.map((v) => el("option", { value: v }, v)));
  const justification = el("textarea", { name: "justification", id: "justification", rows: 3 });
  const notAfter = el("input", { name: "not_after", id: "not-after", type: "datetime-local" });
  const maxExecutions = el("input", { name: "max_executions", id: "max-executions", type: "number", min: 1, step: 1 });
  const constraints = el("textarea", { name: "constraints", id: "constraints", rows: 2, placeholder: "strategy=rolling" });
  const evidence = el("textarea", { name: "evidence", id: "evidence", rows: 2, placeholder: "https://…" });
  const preview = el("div", { class: "preview", id: "preview" });
  const previewButton = el("button", { type: "submit", id: "preview-button" }, "Preview the signed bytes");
  const form = el("form", { class: "decision", id: "decision-form" },
    field("verdict", verdict,
      `approvers: ${p.rule.approver_roles.join(", ")}; override: ${p.rule.override_roles.join(", ")}`),
    field("justification", justification),
    el("fieldset", {}, el("legend", {}, "scope (optional: narrows what the rule allows)"),
      field("not after", notAfter, "local time"),
      field("max executions", maxExecutions),
      field("constraints", constraints, "one key=value a line")),
    field("evidence refs", evidence, "one a line"),
    previewButton, preview);

  let pending = null; // { bytes, timestamp } exactly as previewed
  const invalidate = () => {
    pending = null;
    preview.replaceChildren();
  };
  form.addEventListener("input", invalidate);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    result.replaceChildren();
    if (!state.key) {
      result.replaceChildren(el("p", { class: "error" }, "No key in this browser: ", el("a", { href: "#/keys" }, "generate one"), "."));
      return;
    }
    let decision;
    try {
      decision = buildDecision(record, {
        verdict: verdict.value,
        justification: justification.value,
        notAfter: notAfter.value,
        maxExecutions: maxExecutions.value,
        constraints: constraints.value,
        evidence: evidence.value,
      });
    } catch (error) {
      result.replaceChildren(el("p", { class: "error" }, error.message));
      return;
    }
    const bytes = utf8.encode(JSON.stringify(decision));
    const signed = concat(utf8.encode(DECISION_PREFIX), bytes);
    pending = { bytes, timestamp: decision.timestamp };
    const send = el("button", { type: "button", id: "sign-send", class: "primary" }, `Sign with key ${state.key.key_id} and send`);
    send.addEventListener("click", () => sendDecision(record.instance_id, pending, send, result, invalidate));
    preview.replaceChildren(
      el("h3", {}, "The exact bytes your key will sign"),
      el("pre", { class: "signed-bytes", id: "signed-bytes" }, new TextDecoder().decode(signed)),
      el("p", { class: "muted" },
        `${signed.length} bytes: the line "warrant.decision.v1", a newline, then the request body byte for byte. SHA-256 `,
        mono(await sha256Hex(signed)), `. X-Warrant-Timestamp: ${decision.timestamp}.`),
      send);
  });
  return section("Decide", form);
}

/** The signed decision, fields in the order intake documents them. */
function buildDecision(record, input) {
  const constraints = {};
  for (const line of input.constraints.split("\n").map((l) => l.trim()).filter(Boolean)) {
    const at = line.indexOf("=");
    if (at <= 0) throw new Error(`constraint "${line}" is not key=value`);
    constraints[line.slice(0, at).trim()] = line.slice(at + 1).trim();
  }
  let notAfter = null;
  if (input.notAfter) {
    notAfter = new Date(input.notAfter).getTime();
    if (!Number.isFinite(notAfter)) throw new Error("not after is not a date");
  }
  let maxExecutions = null;
  if (input.maxExecutions !== "") {
    maxExecutions = Number(input.maxExecutions);
    if (!Number.isInteger(maxExecutions) || maxExecutions < 1) throw new Error("max executions must be a whole number of at least 1");
  }
  return {
    instance_id: record.instance_id,
    action_digest: record.proposal.action_digest,
    verdict: input.verdict,
    justification: input.justification,
    scope: { constraints, not_after: notAfter, max_executions: maxExecutions },
    evidence_refs: input.evidence.split("\n").map((l) => l.trim()).filter(Boolean),
    timestamp: Math.floor(Date.now() / 1000),
    key_id: state.key.key_id,
  };
}

async function sendDecision(instanceId, pending, button, result, invalidate) {
  if (!pending) return;
  if (Date.now() / 1000 - pending.timestamp > 240) {
    result.replaceChildren(el("p", { class: "error" }, "The preview is over four minutes old: preview again (intake accepts a timestamp within 5 minutes)."));
    return;
  }
  button.disabled = true;
  try {
    const signature = await sign(concat(utf8.encode(DECISION_PREFIX), pending.bytes));
    const answer = await api(`/v1/instances/${encodeURIComponent(instanceId)}/decisions`, {
      method: "POST",
      headers: {
        "Content-Type": "application/json",
        "X-Warrant-Timestamp": String(pending.timestamp),
        "X-Warrant-Signature": `ed25519=${signature}`,
      },
      body: pending.bytes,
    });
    invalidate();
    result.replaceChildren(el("p", { class: "ok", id: "decision-accepted" },
      `On the log as ${answer.reviewer.principal} (event ${answer.event_id}, partition ${answer.partition}, offset ${answer.offset}). `,
      "What the fold made of it appears under Decisions."));
  } catch (error) {
    button.disabled = false;
    result.replaceChildren(errorBox(error));
  }
}

// ---- routing ---------------------------------------------------------------

function render(node) {
  main.replaceChildren(node);
}

function route() {
  generation += 1;
  const hash = location.hash.replace(/^#/, "") || (state.key ? "/queue" : "/keys");
  const [path, query = ""] = hash.split("?");
  const instance = path.match(/^\/instance\/([^/]+)$/);
  if (path === "/keys") render(keysPage());
  else if (path === "/queue") render(queuePage(new URLSearchParams(query)));
  else if (instance) render(instancePage(decodeURIComponent(instance[1])));
  else render(el("p", {}, "No such page. ", el("a", { href: "#/queue" }, "Go to the queue.")));
  for (const link of document.querySelectorAll("header nav a")) {
    link.classList.toggle("current", path.startsWith(link.getAttribute("href").slice(1)));
  }
}

async function start() {
  try {
    state.key = (await loadKey()) ?? null;
  } catch (error) {
    state.key = null;
    console.warn("no IndexedDB:", error);
  }
  await refreshSession();
  window.addEventListener("hashchange", route);
  route();
}

start();
