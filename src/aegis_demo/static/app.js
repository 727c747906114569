// aegis-shared demo: the pages' one script. Plain JavaScript, no build step, no inline
// handlers (the Content-Security-Policy allows scripts from this file only). State
// changes go through the JSON endpoints with the page's CSRF token in X-CSRF-Token;
// values from the server are shown with textContent, never as HTML.
"use strict";

const csrfToken = () => document.querySelector('meta[name="csrf-token"]').content;

function toast(text) {
  const box = document.getElementById("toast");
  box.textContent = text;
  box.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { box.hidden = true; }, 4000);
}

// A JSON request; resolves to the parsed body (null for 204), rejects with the server's
// detail, which is also shown.
async function api(method, url, body) {
  const response = await fetch(url, {
    method,
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrfToken() },
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) {
    const detail = data && typeof data.detail === "string" ? data.detail : `HTTP ${response.status}`;
    toast(detail);
    throw new Error(detail);
  }
  return data;
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "–" : String(text);
  if (className) td.className = className;
  row.appendChild(td);
}

function fillTable(table, headings, rows) {
  table.replaceChildren();
  if (headings) {
    const head = table.insertRow();
    for (const heading of headings) {
      const th = document.createElement("th");
      th.textContent = heading;
      head.appendChild(th);
    }
  }
  for (const values of rows) {
    const row = table.insertRow();
    values.forEach((value, i) => cell(row, value, typeof value === "number" && i > 0 ? "num" : ""));
  }
}

function setUpAccount() {
  const login = document.getElementById("login");
  if (login) {
    login.addEventListener("submit", async (event) => {
      event.preventDefault();
      const user = new FormData(login).get("user").trim();
      if (!user) return;
      await api("POST", "/login", { user });
      location.reload();
    });
  }
  const logout = document.getElementById("logout");
  if (logout) {
    logout.addEventListener("click", async () => {
      await api("POST", "/logout");
      location.reload();
    });
  }
}

function setUpFridge() {
  const list = document.getElementById("fridge");
  const empty = document.getElementById("empty");
  const names = new Map(JSON.parse(list.dataset.names).map((item) => [item.id, item]));
  const inside = new Set(JSON.parse(list.dataset.initial));

  function render() {
    list.replaceChildren();
    for (const id of inside) {
      const item = names.get(id);
      if (!item) continue;
      const li = document.createElement("li");
      li.dataset.id = String(id);
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = item.name;
      const tag = document.createElement("span");
      tag.className = `tag ${item.category}`;
      tag.textContent = item.category;
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "small remove";
      remove.textContent = "Remove";
      remove.addEventListener("click", () => {
        api("DELETE", "/fridge/ingredients", { ingredient_ids: [id] }).then(() => {
          inside.delete(id);
          render();
        }, () => {});
      });
      li.append(name, " ", tag, remove);
      list.appendChild(li);
    }
    empty.hidden = inside.size > 0;
  }

  document.querySelectorAll("[data-add]").forEach((button) => {
    button.addEventListener("click", async () => {
      const id = Number(button.dataset.add);
      const body = await api("POST", "/fridge/ingredients", { ingredient_ids: [id] });
      inside.clear();
      for (const row of body.ingredients) inside.add(row.ingredient_id);
      render();
    });
  });

  // Live: a snapshot first, then each change as it commits, from any tab or worker.
  const live = document.getElementById("live");
  const source = new EventSource("/fridge/events");
  source.addEventListener("open", () => live.classList.add("on"));
  source.addEventListener("error", () => live.classList.remove("on"));
  source.addEventListener("snapshot", (event) => {
    inside.clear();
    for (const row of JSON.parse(event.data).ingredients) inside.add(row.ingredient_id);
    render();
  });
  source.addEventListener("resync", () => location.reload());
  source.addEventListener("message", (event) => {
    const change = JSON.parse(event.data);
    for (const id of change.added || []) inside.add(id);
    for (const id of change.removed || []) inside.delete(id);
    render();
  });
  render();
}

function setUpPosts() {
  document.querySelectorAll("form.comment").forEach((form) => {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const input = form.querySelector("input[name=body]");
      const body = input.value.trim();
      if (!body) return;
      const comment = await api("POST", `/api/v1/posts/${form.dataset.post}/comments`, { body });
      const li = document.createElement("li");
      li.textContent = comment.body;
      form.previousElementSibling.appendChild(li);
      input.value = "";
    });
  });
}

function setUpChat() {
  const form = document.getElementById("ask");
  const answer = document.getElementById("answer");
  const status = document.getElementById("chat-status");
  let source = null;
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const question = new FormData(form).get("question").trim();
    if (!question) return;
    if (source) source.close();
    answer.textContent = "";
    answer.classList.add("streaming");
    status.textContent = "Streaming…";
    source = new EventSource(`/api/v1/chat/stream?user_input=${encodeURIComponent(question)}`);
    const stream = source;
    stream.addEventListener("message", (message) => {
      if (message.data === "[DONE]") {
        stream.close();
        answer.classList.remove("streaming");
        status.textContent = "Complete: the answer is stored.";
        return;
      }
      answer.textContent += message.data;
    });
    stream.addEventListener("error", () => {
      if (stream.readyState === EventSource.CLOSED) return;
      stream.close();
      answer.classList.remove("streaming");
      status.textContent = "The stream was interrupted; ask again.";
    });
  });
}

function setUpOperator() {
  const login = document.getElementById("operator-login");
  if (login) {
    login.addEventListener("submit", async (event) => {
      event.preventDefault();
      await api("POST", "/operator/login", { token: new FormData(login).get("token") });
      location.reload();
    });
    return;
  }
  document.getElementById("operator-logout").addEventListener("click", async () => {
    await api("POST", "/operator/logout");
    location.reload();
  });
  const source = new EventSource("/operator/stream");
  const status = document.getElementById("panel-status");
  source.addEventListener("unavailable", (event) => {
    status.textContent = JSON.parse(event.data).detail;
  });
  source.addEventListener("overview", (event) => {
    const data = JSON.parse(event.data);
    status.textContent = "";
    fillTable(document.getElementById("pools"), ["pool", "size", "in use", "overflow"],
      Object.entries(data.pools).map(([name, p]) => [name, p.size, p.checked_out, p.overflow]));
    const s = data.sessions;
    fillTable(document.getElementById("sessions"), null, [
      ["active sessions", s.active], ["ingredients stored", s.ingredients],
      ["expired, waiting", s.expired_waiting], ["oldest", s.oldest],
    ]);
    fillTable(document.getElementById("stored"), null, [
      ["access log rows", data.stored.access_log_rows], ["chat answers", data.stored.chat_answers],
    ]);
    const h = data.housekeeping;
    fillTable(document.getElementById("housekeeping"), null, h ? [
      ["last run", h.finished_at], ["log rows trimmed", h.trimmed],
      ["access log rows", h.access_log_rows], ["chat answers", h.chat_answers],
    ] : [["last run", "not yet (every 5 minutes)"]]);
    const a = data.access_log;
    document.getElementById("writer").textContent =
      `written ${a.written} · failed ${a.failed} · dropped ${a.dropped} · in flight ${a.pending}`;
    fillTable(document.getElementById("access"), ["at", "request", "status", "ms"],
      a.newest.map((r) => [r.at.slice(11), `${r.method} ${r.path}`, r.status, r.ms]));
    fillTable(document.getElementById("events"), ["at", "channel", "position"],
      data.events.map((e) => [e.at.slice(11), e.channel, e.position]));
  });
}

document.addEventListener("DOMContentLoaded", () => {
  setUpAccount();
  const page = document.body.dataset.page;
  if (page === "fridge") setUpFridge();
  else if (page === "posts") setUpPosts();
  else if (page === "chat") setUpChat();
  else if (page === "operator") setUpOperator();
});
