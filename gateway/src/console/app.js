// Bucketgate's web console: every panel is a view of the admin API (/api/v1/...), refreshed
// every REFRESH_MS; every button is one API call. The session cookie set by POST
// /api/v1/login authenticates the calls; changes carry the session's CSRF token. Data from
// the server is only ever put in the page as text (textContent), never as markup.
"use strict";

const REFRESH_MS = 2000;
// `epoch` counts logins and logouts: an answer to a request sent in an earlier epoch is
// dropped, and a refresh from an earlier epoch sends nothing more (its cookie may be gone).
const state = { csrf: null, scope: null, timer: null, expiry: null, refreshing: false, editing: null, epoch: 0 };
const $ = (id) => document.getElementById(id);

function el(tag, props, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === "class") e.className = v;
    else if (k === "data") for (const [dk, dv] of Object.entries(v)) e.dataset[dk] = dv;
    else if (k === "onclick") e.addEventListener("click", v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

async function api(method, path, body) {
  const opts = { method, headers: {}, credentials: "same-origin", cache: "no-store" };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  if (method !== "GET" && state.csrf) opts.headers["X-CSRF-Token"] = state.csrf;
  const epoch = state.epoch;
  let r;
  try {
    r = await fetch(path, opts);
  } catch (e) {
    return { status: 0, data: { error: "the gateway does not answer" } };
  }
  let data = null;
  try { data = await r.json(); } catch (_) { data = null; }
  if (epoch !== state.epoch && !path.startsWith("/api/v1/log")) {
    return { status: 0, data: null, stale: true };
  }
  if (r.status === 401 && path !== "/api/v1/login" && state.scope) {
    showLogin((data && data.error) || "the session has ended: log in again");
  }
  return { status: r.status, data };
}

function notice(text, isError) {
  const n = $("notice");
  n.textContent = text;
  n.className = isError ? "error" : "";
}

/// Runs a change and reports its answer; refreshes at once after it.
async function act(what, method, path, body) {
  const r = await api(method, path, body);
  if (r.status >= 200 && r.status < 300) notice(what + ": done");
  else notice(what + ": " + ((r.data && r.data.error) || "HTTP " + r.status), true);
  await refresh();
  return r;
}

function bytes(n) {
  if (typeof n !== "number") return "";
  return n.toLocaleString("en") + " B";
}

function when(t) {
  if (!t) return "";
  const d = new Date(t);
  return isNaN(d) ? t : d.toLocaleString();
}

function button(label, cls, onclick) {
  return el("button", { type: "button", class: cls, onclick }, label);
}

/// Fills `tbody` with one row per item, keyed by `key(item)`: rows whose item is unchanged are
/// left alone; text cells of changed rows are updated in place, and a cell given as
/// {sig, make} (buttons) is rebuilt only when its sig changes, so a button is not replaced
/// under the pointer while a transfer's byte count grows.
function rows(tbody, emptyId, items, key, cells) {
  $(emptyId).hidden = items.length > 0;
  const seen = new Set();
  let prev = null;
  for (const item of items) {
    const k = key(item);
    seen.add(k);
    const sig = JSON.stringify(item) + "|" + state.scope;
    let tr = Array.from(tbody.children).find((r) => r.dataset.key === k);
    if (!tr) {
      tr = el("tr", { data: { key: k } });
      tr.dataset.sig = "";
    }
    if (tr.dataset.sig !== sig) {
      tr.dataset.sig = sig;
      const values = cells(item);
      values.forEach((v, i) => {
        let td = tr.children[i];
        if (!td) { td = el("td"); tr.append(td); }
        if (v && typeof v === "object" && "make" in v) {
          if (td.dataset.sig !== v.sig) {
            td.dataset.sig = v.sig;
            td.replaceChildren(...(v.sig === "" ? [] : [v.make()]));
          }
          td.className = "rw";
        } else {
          const cell = Array.isArray(v) ? v : [String(v ?? ""), ""];
          if (td.textContent !== cell[0]) td.textContent = cell[0];
          td.className = cell[1];
        }
      });
    }
    const want = prev ? prev.nextSibling : tbody.firstChild;
    if (want !== tr) tbody.insertBefore(tr, want);
    prev = tr;
  }
  for (const tr of Array.from(tbody.children)) if (!seen.has(tr.dataset.key)) tr.remove();
}

const rw = () => state.scope === "rw";
/// A button cell: present for a read-write account only.
const action = (sig, make) => ({ sig: rw() ? sig : "", make });

async function refreshSessions() {
  const r = await api("GET", "/api/v1/sessions");
  if (r.status !== 200) return;
  rows($("sessions-body"), "sessions-empty", r.data, (s) => s.id, (s) => [
    s.user,
    s.protocol,
    s.client,
    when(s.started),
    [bytes(s.bytes), "num"],
    [(s.transfers || []).map((t) => `${t.direction} ${t.path}: ${bytes(t.bytes)}`).join("; "), "transfers"],
    action("disconnect", () => button("Disconnect", "disconnect", () =>
      act(`disconnect ${s.user} (${s.client})`, "DELETE", `/api/v1/sessions/${encodeURIComponent(s.id)}`))),
  ]);
  $("sessions-updated").textContent = "updated " + new Date().toLocaleTimeString();
}

async function refreshBans() {
  const r = await api("GET", "/api/v1/bans");
  if (r.status !== 200) return;
  rows($("bans-body"), "bans-empty", r.data, (b) => b.ip, (b) => [
    b.ip,
    when(b.until),
    action("lift", () => button("Lift", "lift", () =>
      act(`lift the ban on ${b.ip}`, "DELETE", `/api/v1/bans/${encodeURIComponent(b.ip)}`))),
  ]);
}

async function refreshUsers() {
  const r = await api("GET", "/api/v1/users");
  if (r.status !== 200) return;
  rows($("users-body"), "users-empty", r.data, (u) => u.username, (u) => [
    u.username,
    u.home || "",
    (u.protocols || ["sftp", "ftp"]).join(", "),
    u.password ? "set" : "none",
    String(u.public_keys),
    [u.shadowed ? "shadowed by the config" : u.disabled ? "disabled" : "enabled", "state"],
    action(`${u.disabled}`, () => el("span", {},
      button(u.disabled ? "Enable" : "Disable", "toggle", () =>
        act(`${u.disabled ? "enable" : "disable"} ${u.username}`, "PATCH",
          `/api/v1/users/${encodeURIComponent(u.username)}`, { disabled: !u.disabled })),
      " ",
      button("Edit", "edit", () => editUser(u)),
      " ",
      button("Delete", "delete", () =>
        act(`delete ${u.username}`, "DELETE", `/api/v1/users/${encodeURIComponent(u.username)}`)))),
  ]);
}

function runText(run) {
  const parts = [run.result || "", when(run.end || run.start)];
  const copied = (run.copied_up || 0) + (run.copied_down || 0);
  parts.push(`copied ${copied}`, `deleted ${run.deleted || 0}`, `errors ${run.errors || 0}`, bytes(run.bytes || 0));
  if (run.error) parts.push("error: " + run.error);
  return parts.join(" · ");
}

async function refreshSync() {
  const r = await api("GET", "/api/v1/sync/jobs");
  if (r.status !== 200) return;
  rows($("sync-body"), "sync-empty", r.data, (j) => j.name, (j) => [
    j.name,
    j.running ? "running" : "idle",
    j.last_ok ? when(j.last_ok.end) : "never",
    [(j.recent || []).slice().reverse().map(runText).join("\n"), "runs"],
    action("run", () => button("Run now", "run", () =>
      act(`run ${j.name}`, "POST", `/api/v1/sync/jobs/${encodeURIComponent(j.name)}/run`))),
  ]);
}

async function refreshRemotes() {
  const r = await api("GET", "/api/v1/remotes");
  if (r.status !== 200) return;
  const list = Object.entries(r.data || {}).map(([name, s]) => ({ name, ...s }));
  rows($("remotes-body"), "remotes-empty", list, (x) => x.name, (x) => [
    x.name,
    [x.state, "state-" + x.state],
    x.error || "",
  ]);
}

/// One refresh of every panel. The sessions first, alone: if the login has ended, that one
/// request learns it (and its answer makes the browser drop the cookie) before any other is
/// sent, and if the user logged out meanwhile (the logout's answer may already have dropped
/// the cookie) nothing more is sent. So the console never sends requests without its cookie,
/// which the gateway would count as failed logins of this address.
async function refresh() {
  if (!state.scope || state.refreshing) return;
  state.refreshing = true;
  const epoch = state.epoch;
  try {
    await refreshSessions();
    if (state.scope && state.epoch === epoch) await Promise.all([refreshBans(), refreshUsers(), refreshSync(), refreshRemotes()]);
  } finally {
    state.refreshing = false;
  }
}

function userForm(u) {
  state.editing = u ? u.username : null;
  $("user-form-title").textContent = u ? `Change ${u.username}` : "Add a user";
  $("user-submit").textContent = u ? "Save changes" : "Add user";
  $("user-cancel").hidden = !u;
  $("user-name").value = u ? u.username : "";
  $("user-name").readOnly = !!u;
  $("user-password").value = "";
  $("user-keys").value = "";
  $("user-home").value = u ? u.home || "/" : "/";
  const protocols = (u && u.protocols) || ["sftp", "ftp"];
  $("user-sftp").checked = protocols.includes("sftp");
  $("user-ftp").checked = protocols.includes("ftp");
  $("user-permissions").value = u && u.permissions ? JSON.stringify(u.permissions) : "";
  $("user-ips").value = u && u.allowed_ips ? u.allowed_ips.join(", ") : "";
  $("user-disabled").checked = !!(u && u.disabled);
  $("user-form-hint").textContent = u
    ? "Leave the password and the keys empty to keep them."
    : "A new user needs a password or a key.";
  $("user-error").textContent = "";
}

function editUser(u) {
  userForm(u);
  $("user-form").scrollIntoView();
}

async function submitUser(ev) {
  ev.preventDefault();
  const name = $("user-name").value.trim();
  const spec = {
    home: $("user-home").value.trim(),
    protocols: [["sftp", "user-sftp"], ["ftp", "user-ftp"]].filter(([, id]) => $(id).checked).map(([p]) => p),
    disabled: $("user-disabled").checked,
  };
  const password = $("user-password").value;
  if (password) spec.password = password;
  const keys = $("user-keys").value.split("\n").map((k) => k.trim()).filter((k) => k);
  if (keys.length) spec.public_keys = keys;
  const perms = $("user-permissions").value.trim();
  if (perms) {
    try { spec.permissions = JSON.parse(perms); } catch (_) {
      $("user-error").textContent = "the permissions are not JSON";
      return;
    }
  } else if (state.editing) spec.permissions = null;
  const ips = $("user-ips").value.split(",").map((x) => x.trim()).filter((x) => x);
  if (ips.length) spec.allowed_ips = ips;
  else if (state.editing) spec.allowed_ips = null;
  const editing = state.editing;
  const r = await act(editing ? `change ${name}` : `add ${name}`, editing ? "PATCH" : "PUT",
    `/api/v1/users/${encodeURIComponent(name)}`, spec);
  if (r.status >= 200 && r.status < 300) userForm(null);
  else $("user-error").textContent = (r.data && r.data.error) || "HTTP " + r.status;
}

function stopRefreshing() {
  clearInterval(state.timer);
  clearTimeout(state.expiry);
  state.timer = null;
}

function showLogin(message) {
  stopRefreshing();
  state.epoch++;
  state.scope = null;
  state.csrf = null;
  $("console").hidden = true;
  $("logout").hidden = true;
  $("who").textContent = "";
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  for (const id of ["sessions-body", "bans-body", "users-body", "sync-body", "remotes-body"]) $(id).replaceChildren();
}

function showConsole(who) {
  state.epoch++;
  state.scope = who.scope;
  state.csrf = who.csrf;
  $("login").hidden = true;
  $("console").hidden = false;
  $("logout").hidden = false;
  $("who").textContent = `${who.name} (${who.scope === "rw" ? "read-write" : "read-only"})`;
  document.body.dataset.scope = who.scope;
  // A read-only account gets no change buttons or forms at all.
  for (const e of document.querySelectorAll("th.rw")) e.hidden = !rw();
  $("user-form").hidden = !rw();
  userForm(null);
  stopRefreshing();
  refresh();
  state.timer = setInterval(refresh, REFRESH_MS);
  // Stop a little before the session (and its cookie) ends, rather than poll without it.
  if (typeof who.expires_in === "number") {
    state.expiry = setTimeout(() => showLogin("the session has ended: log in again"),
      Math.max(0, who.expires_in - 5) * 1000);
  }
}

async function login(ev) {
  ev.preventDefault();
  $("login-error").textContent = "";
  const r = await api("POST", "/api/v1/login", {
    username: $("login-name").value,
    password: $("login-password").value,
  });
  $("login-password").value = "";
  if (r.status === 200) showConsole(r.data);
  else $("login-error").textContent = (r.data && r.data.error) || "HTTP " + r.status;
}

async function logout() {
  stopRefreshing();
  state.epoch++;
  state.scope = null;
  await api("POST", "/api/v1/logout");
  showLogin("logged out");
}

document.addEventListener("DOMContentLoaded", async () => {
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", logout);
  $("user-form").addEventListener("submit", submitUser);
  $("user-cancel").addEventListener("click", () => userForm(null));
  const r = await api("GET", "/api/v1/whoami");
  if (r.status === 200 && r.data.kind === "account") showConsole(r.data);
  else showLogin("");
});
