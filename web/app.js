// Parley's web UI: a thin client of the public API (/v1/auth, /v1/conversations, /v1/documents,
// /v1/models).
// Tokens live in sessionStorage (gone when the tab closes); every text is inserted with textContent,
// never as HTML, so a model's reply cannot inject markup.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { token: sessionStorage.getItem("parley.token"), conversation: null, busy: false, documents: [] };

async function api(path, { method = "GET", body } = {}) {
  const headers = { "content-type": "application/json" };
  if (state.token) headers.authorization = `Bearer ${state.token}`;
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (response.status === 401 && state.token) signOut();
  if (!response.ok) throw new Error(await errorText(response));
  return response.status === 204 ? null : response;
}

async function errorText(response) {
  try {
    const body = await response.json();
    return body.detail || (body.error && body.error.message) || response.statusText;
  } catch {
    return response.statusText || `HTTP ${response.status}`;
  }
}

function showError(id, error) { $(id).textContent = error ? String(error.message || error) : ""; }

function signOut() {
  state.token = null;
  state.conversation = null;
  sessionStorage.removeItem("parley.token");
  render();
}

async function signIn(register) {
  showError("signin-error", null);
  const credentials = { email: $("email").value, password: $("password").value };
  try {
    if (register) await api("/v1/auth/register", { method: "POST", body: credentials });
    const tokens = await (await api("/v1/auth/login", { method: "POST", body: credentials })).json();
    state.token = tokens.access_token;
    sessionStorage.setItem("parley.token", state.token);
    await render();
  } catch (error) {
    showError("signin-error", error);
  }
}

async function loadModels() {
  const select = $("model");
  select.replaceChildren();
  try {
    const models = await (await api("/v1/models")).json();
    for (const model of models.data) {
      const option = new Option(model.offline ? `${model.id} (offline)` : model.id, model.id);
      select.append(option);
    }
  } catch (error) {
    showError("chat-error", error);
  }
}

async function loadConversations() {
  const list = $("conversations");
  const page = await (await api("/v1/conversations?limit=50")).json();
  list.replaceChildren();
  for (const conversation of page.data) {
    const item = document.createElement("li");
    item.dataset.id = conversation.id;
    item.classList.toggle("active", conversation.id === state.conversation?.id);
    const title = document.createElement("span");
    title.textContent = conversation.title;
    title.title = "Double-click to rename";
    title.addEventListener("dblclick", () => rename(conversation));
    const remove = document.createElement("button");
    remove.className = "secondary";
    remove.textContent = "×";
    remove.setAttribute("aria-label", `Delete ${conversation.title}`);
    remove.addEventListener("click", (event) => { event.stopPropagation(); removeConversation(conversation); });
    item.append(title, remove);
    item.addEventListener("click", () => open(conversation));
    list.append(item);
  }
}

async function loadDocuments() {
  const page = await (await api("/v1/documents?limit=100")).json();
  state.documents = page.data;
  const list = $("documents");
  list.replaceChildren();
  for (const document_ of page.data) {
    const item = document.createElement("li");
    const title = document.createElement("span");
    title.textContent = document_.title;
    const remove = document.createElement("button");
    remove.className = "secondary";
    remove.textContent = "×";
    remove.setAttribute("aria-label", `Delete document ${document_.title}`);
    remove.addEventListener("click", () => removeDocument(document_).catch((e) => showError("documents-error", e)));
    item.append(title, remove);
    list.append(item);
  }
}

async function addDocument() {
  const input = $("document-file");
  const file = input.files[0];
  if (!file) return;
  showError("documents-error", null);
  try {
    await api("/v1/documents", { method: "POST", body: { title: file.name.slice(0, 200), content: await file.text() } });
    await loadDocuments();
  } catch (error) {
    showError("documents-error", error);
  } finally {
    input.value = "";
  }
}

async function removeDocument(document_) {
  await api(`/v1/documents/${document_.id}`, { method: "DELETE" });
  await loadDocuments();
}

// The line under a reply naming the document excerpts it was given ([{title, chunk}]).
function sourcesText(sources) {
  return sources.length ? `Sources: ${sources.map((s) => `${s.title} (part ${s.chunk + 1})`).join(", ")}` : "";
}

// A stream names its sources in the x-parley-sources header: "<document id>#<chunk>,...".
function sourcesFromHeader(header) {
  return (header ? header.split(",") : []).map((source) => {
    const [id, chunk] = source.split("#");
    const found = state.documents.find((d) => d.id === id);
    return { title: found ? found.title : "a deleted document", chunk: Number(chunk) };
  });
}

// Deleting the account needs the password again: a stolen session alone cannot do it.
async function deleteAccount() {
  showError("account-error", null);
  const password = prompt("This deletes your account, conversations and documents. Your password:");
  if (!password) return;
  try {
    await api("/v1/me", { method: "DELETE", body: { password } });
    signOut();
  } catch (error) {
    showError("account-error", error);
  }
}

async function rename(conversation) {
  const title = prompt("Rename conversation", conversation.title);
  if (!title) return;
  await api(`/v1/conversations/${conversation.id}`, { method: "PATCH", body: { title } });
  if (state.conversation?.id === conversation.id) $("title").textContent = title;
  await loadConversations();
}

async function removeConversation(conversation) {
  await api(`/v1/conversations/${conversation.id}`, { method: "DELETE" });
  if (state.conversation?.id === conversation.id) {
    state.conversation = null;
    $("messages").replaceChildren();
    $("title").textContent = "No conversation";
  }
  await loadConversations();
}

function addMessage(role, text) {
  const item = document.createElement("li");
  item.className = role;
  item.textContent = text;
  $("messages").append(item);
  item.scrollIntoView({ block: "end" });
  return item;
}

async function open(conversation) {
  state.conversation = conversation;
  $("title").textContent = conversation.title;
  $("messages").replaceChildren();
  const page = await (await api(`/v1/conversations/${conversation.id}/messages?order=asc&limit=100`)).json();
  for (const message of page.data) {
    addMessage(message.role, message.content || "");
    const sources = sourcesText(message.sources || []);
    if (sources) addMessage("sources", sources);
  }
  await loadConversations();
}

async function newConversation() {
  const conversation = await (await api("/v1/conversations", { method: "POST", body: {} })).json();
  await open(conversation);
  return conversation;
}

// Reads an OpenAI-style SSE stream and calls onDelta with each piece of content.
async function readStream(response, onDelta) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let boundary;
    while ((boundary = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, boundary);
      buffer = buffer.slice(boundary + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        for (const choice of chunk.choices || []) if (choice.delta?.content) onDelta(choice.delta.content);
      }
    }
  }
}

async function send(event) {
  event.preventDefault();
  const text = $("input").value.trim();
  if (!text || state.busy) return;
  showError("chat-error", null);
  state.busy = true;
  $("send").disabled = true;
  try {
    const conversation = state.conversation || (await newConversation());
    $("input").value = "";
    addMessage("user", text);
    const reply = addMessage("assistant", "");
    const useDocuments = $("use-documents").checked;
    const response = await api(`/v1/conversations/${conversation.id}/messages`, {
      method: "POST",
      body: { content: text, stream: true, model: $("model").value || undefined, documents: useDocuments ? "all" : undefined },
    });
    await readStream(response, (delta) => { reply.textContent += delta; reply.scrollIntoView({ block: "end" }); });
    const sources = sourcesText(sourcesFromHeader(response.headers.get("x-parley-sources")));
    if (sources) addMessage("sources", sources);
    await loadConversations();
  } catch (error) {
    showError("chat-error", error);
  } finally {
    state.busy = false;
    $("send").disabled = false;
  }
}

async function render() {
  const signedIn = Boolean(state.token);
  $("signin").hidden = signedIn;
  $("app").hidden = !signedIn;
  if (!signedIn) return;
  try {
    await Promise.all([loadModels(), loadConversations(), loadDocuments()]);
  } catch (error) {
    showError("chat-error", error);
  }
}

$("signin-form").addEventListener("submit", (event) => { event.preventDefault(); signIn(false); });
$("register").addEventListener("click", () => { if ($("signin-form").reportValidity()) signIn(true); });
$("logout").addEventListener("click", signOut);
$("new-conversation").addEventListener("click", () => newConversation().catch((e) => showError("chat-error", e)));
$("composer").addEventListener("submit", send);
$("document-file").addEventListener("change", addDocument);
$("delete-account").addEventListener("click", deleteAccount);
$("input").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) $("composer").requestSubmit();
});
render();
