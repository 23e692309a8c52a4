/* The corral web chat: conversations live in this browser's localStorage; each
 * turn sends the whole conversation to /api/chat and reads the NDJSON stream.
 * Text is only ever inserted through textContent or corralMarkdown.render,
 * which escapes it, so nothing a user or the model writes becomes HTML.
 */
(function () {
  "use strict";

  const STORE = "corral.conversations";
  const $ = (id) => document.getElementById(id);
  const els = {
    list: $("conversations"), messages: $("messages"), input: $("input"), send: $("send"),
    stop: $("stop"), error: $("error"), model: $("model"), token: $("token"),
    system: $("system"), composer: $("composer"), newChat: $("new-chat"),
    modelName: $("model-name"), status: $("status"),
  };
  const HEALTH_EVERY_MS = 5000;

  let conversations = load();
  let currentId = localStorage.getItem("corral.current");
  let controller = null; // the AbortController of the answer being streamed

  function load() {
    try {
      const data = JSON.parse(localStorage.getItem(STORE) || "[]");
      return Array.isArray(data) ? data : [];
    } catch (err) {
      return [];
    }
  }

  function save() {
    localStorage.setItem(STORE, JSON.stringify(conversations));
    if (currentId) localStorage.setItem("corral.current", currentId);
  }

  function current() {
    let conv = conversations.find((c) => c.id === currentId);
    if (!conv) {
      conv = { id: String(Date.now()) + Math.random().toString(16).slice(2), title: "New chat",
        messages: [] };
      conversations.unshift(conv);
      currentId = conv.id;
    }
    return conv;
  }

  function headers() {
    const h = { "Content-Type": "application/json" };
    const token = els.token.value.trim();
    if (token) h.Authorization = "Bearer " + token;
    return h;
  }

  function showError(text) {
    els.error.textContent = text;
    els.error.hidden = !text;
  }

  function renderList() {
    els.list.replaceChildren();
    for (const conv of conversations) {
      const li = document.createElement("li");
      if (conv.id === currentId) li.className = "active";
      const open = document.createElement("button");
      open.type = "button";
      open.className = "open";
      open.textContent = conv.title;
      open.title = conv.title;
      open.addEventListener("click", () => { if (!controller) { currentId = conv.id; save(); renderAll(); } });
      const del = document.createElement("button");
      del.type = "button";
      del.className = "delete";
      del.textContent = "×";
      del.setAttribute("aria-label", "Delete conversation");
      del.addEventListener("click", () => {
        if (controller) return;
        conversations = conversations.filter((c) => c.id !== conv.id);
        if (currentId === conv.id) currentId = conversations.length ? conversations[0].id : null;
        save();
        renderAll();
      });
      li.append(open, del);
      els.list.append(li);
    }
  }

  function bubble(role) {
    const empty = $("empty");
    if (empty) empty.remove();
    const div = document.createElement("div");
    div.className = "msg " + role;
    els.messages.append(div);
    return div;
  }

  function fill(div, message) {
    if (message.role === "user") {
      div.textContent = message.content;
    } else {
      div.innerHTML = corralMarkdown.render(message.content);
      if (message.stopped) {
        const note = document.createElement("div");
        note.className = "note";
        note.textContent = "(stopped)";
        div.append(note);
      }
    }
  }

  function renderMessages() {
    els.messages.replaceChildren();
    const conv = conversations.find((c) => c.id === currentId);
    if (!conv || !conv.messages.length) {
      const empty = document.createElement("p");
      empty.id = "empty";
      empty.textContent = "Ask corral anything below. Conversations are kept in this browser only.";
      els.messages.append(empty);
      return;
    }
    for (const message of conv.messages) fill(bubble(message.role), message);
    els.messages.scrollTop = els.messages.scrollHeight;
  }

  function renderAll() {
    renderList();
    renderMessages();
  }

  function setBusy(busy) {
    els.send.hidden = busy;
    els.stop.hidden = !busy;
    els.input.disabled = busy;
  }

  async function errorText(response) {
    try {
      const body = await response.json();
      const err = body.error;
      return typeof err === "string" ? err : (err && err.message) || response.statusText;
    } catch (e) {
      return response.status + " " + response.statusText;
    }
  }

  async function send(text) {
    const conv = current();
    showError("");
    conv.messages.push({ role: "user", content: text });
    if (conv.title === "New chat") conv.title = text.slice(0, 60);
    save();
    renderAll();

    const reply = { role: "assistant", content: "" };
    const div = bubble("assistant");
    div.classList.add("streaming");
    const history = conv.messages.map((m) => ({ role: m.role, content: m.content }));
    const system = els.system.value.trim();
    if (system) history.unshift({ role: "system", content: system });

    controller = new AbortController();
    setBusy(true);
    setTimeout(checkHealth, 500); // a queue may be building behind this turn
    let pending = false;
    const paint = () => {
      if (pending) return;
      pending = true;
      requestAnimationFrame(() => {
        pending = false;
        fill(div, reply);
        els.messages.scrollTop = els.messages.scrollHeight;
      });
    };
    try {
      const response = await fetch("/api/chat", {
        method: "POST",
        headers: headers(),
        body: JSON.stringify({ model: els.model.value || "default", messages: history, stream: true }),
        signal: controller.signal,
      });
      if (!response.ok) throw new Error(await errorText(response));
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        const lines = buffer.split("\n");
        buffer = lines.pop();
        for (const line of lines) {
          if (!line.trim()) continue;
          const chunk = JSON.parse(line);
          if (chunk.error) throw new Error(chunk.error);
          if (chunk.message && chunk.message.content) {
            reply.content += chunk.message.content;
            paint();
          }
        }
      }
    } catch (err) {
      if (err.name === "AbortError") reply.stopped = true;
      else showError(err.message || String(err));
    } finally {
      controller = null;
      setBusy(false);
      div.classList.remove("streaming");
      if (reply.content || reply.stopped) conv.messages.push(reply);
      save();
      fill(div, reply);
      if (!reply.content && !reply.stopped) div.remove();
      els.input.focus();
    }
  }

  async function loadModels() {
    try {
      const response = await fetch("/api/tags", { headers: headers() });
      if (!response.ok) {
        showError(response.status === 401 ? "This server needs an API token: set it under Settings."
          : await errorText(response));
        return;
      }
      const body = await response.json();
      const chosen = localStorage.getItem("corral.model");
      els.model.replaceChildren();
      for (const model of body.models || []) {
        const option = document.createElement("option");
        option.value = option.textContent = model.name;
        els.model.append(option);
      }
      if (chosen && [...els.model.options].some((o) => o.value === chosen)) els.model.value = chosen;
      showModel();
      showError("");
    } catch (err) {
      showError("Cannot reach the server: " + err.message);
    }
  }

  // The model that answers this page's questions, in the header and the tab's title.
  function showModel() {
    const name = els.model.value;
    els.modelName.textContent = name ? "model: " + name : "no model served yet";
    document.title = name ? "corral — " + name : "corral — team assistant";
  }

  function showStatus(state, text) {
    els.status.dataset.state = state;
    els.status.textContent = text;
  }

  // /healthz is public (no token): worker processes up, and turns waiting in the queue.
  async function checkHealth() {
    try {
      const response = await fetch("/healthz", { cache: "no-store" });
      const body = await response.json();
      if (!response.ok || !body.redis) {
        showStatus("error", "queue unreachable: answers cannot start");
      } else if (!body.workers) {
        showStatus("down", "no worker running: start `corral worker`");
      } else {
        const up = body.workers === 1 ? "worker up" : body.workers + " workers up";
        const waiting = body.queue_depth ? " · " + body.queue_depth + " waiting in the queue" : "";
        showStatus("up", up + waiting);
      }
    } catch (err) {
      showStatus("error", "server unreachable");
    }
  }

  els.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = els.input.value.trim();
    if (!text || controller) return;
    els.input.value = "";
    send(text);
  });
  els.input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      els.composer.requestSubmit();
    }
  });
  els.stop.addEventListener("click", () => { if (controller) controller.abort(); });
  els.newChat.addEventListener("click", () => {
    if (controller) return;
    currentId = null;
    current();
    save();
    renderAll();
    els.input.focus();
  });
  els.token.value = localStorage.getItem("corral.token") || "";
  els.system.value = localStorage.getItem("corral.system") || "";
  els.token.addEventListener("change", () => {
    localStorage.setItem("corral.token", els.token.value.trim());
    loadModels();
  });
  els.system.addEventListener("change", () => localStorage.setItem("corral.system", els.system.value));
  els.model.addEventListener("change", () => {
    localStorage.setItem("corral.model", els.model.value);
    showModel();
  });

  renderAll();
  loadModels();
  checkHealth();
  setInterval(checkHealth, HEALTH_EVERY_MS);
})();
