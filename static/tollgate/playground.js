// The playground: posts the conversation to /playground/chat and reads the answer as Server-Sent Events,
// appending each token as it arrives. The answer is plain text: it is never interpreted as HTML.
(() => {
  const form = document.getElementById("playground");
  if (!form) return;
  const chat = document.getElementById("chat");
  const status = document.getElementById("status");
  const history = [];

  function bubble(role, text) {
    const div = document.createElement("div");
    div.className = `msg ${role}`;
    div.textContent = text;
    chat.appendChild(div);
    return div;
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = form.message.value.trim();
    if (!text) return;
    history.push({ role: "user", content: text });
    bubble("user", text);
    form.message.value = "";
    const answer = bubble("assistant", "");
    form.send.disabled = true;
    status.textContent = "Answering…";
    try {
      const response = await fetch(form.dataset.url, {
        method: "POST",
        headers: { "content-type": "application/json", "x-csrftoken": form.csrfmiddlewaretoken.value },
        body: JSON.stringify({ model: form.model.value, messages: history, stream: true }),
      });
      if (!response.ok) {
        const body = await response.json().catch(() => ({}));
        throw new Error(body.error ? body.error.message : `HTTP ${response.status}`);
      }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const line = buffer.slice(0, end).trim();
          buffer = buffer.slice(end + 2);
          if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
          const chunk = JSON.parse(line.slice(6));
          if (chunk.error) throw new Error(chunk.error.message);
          const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
          if (delta && delta.content) answer.textContent += delta.content;
        }
      }
      history.push({ role: "assistant", content: answer.textContent });
      status.textContent = "";
    } catch (error) {
      answer.remove();
      history.pop();
      status.textContent = `Failed: ${error.message}`;
    } finally {
      form.send.disabled = false;
    }
  });
})();
