// The live usage tail: a WebSocket to /ws/live/, one table row per finished request, newest first.
(() => {
  const rows = document.getElementById("live-rows");
  if (!rows) return;
  const status = document.getElementById("live-status");
  const keys = JSON.parse(document.getElementById("key-names").textContent);
  const zone = JSON.parse(document.getElementById("tenant-zone").textContent);
  const money = (micros) => `$${(micros / 1e6).toFixed(micros % 10000 === 0 ? 2 : 6)}`;

  function cell(text, numeric) {
    const td = document.createElement("td");
    td.textContent = text;
    if (numeric) td.className = "num";
    return td;
  }

  function connect(delay) {
    const socket = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws/live/`);
    socket.onopen = () => { status.textContent = "Connected."; delay = 1000; };
    socket.onmessage = (message) => {
      document.getElementById("live-empty")?.remove();
      for (const row of JSON.parse(message.data).rows) {
        const tr = document.createElement("tr");
        tr.dataset.requestId = row.request_id;
        tr.append(cell(new Date(row.at).toLocaleTimeString(undefined, { timeZone: zone })), cell(row.model), cell(keys[row.key_id] || "—"),
          cell(row.end_reason), cell(row.status, true), cell(row.prompt_tokens + row.completion_tokens, true),
          cell(money(row.cost_micros), true), cell(`${row.latency_ms} ms`, true));
        rows.prepend(tr);
      }
      while (rows.children.length > 200) rows.lastElementChild.remove();
    };
    socket.onclose = () => {
      status.textContent = "Disconnected; reconnecting…";
      setTimeout(() => connect(Math.min(delay * 2, 30000)), delay);
    };
  }
  connect(1000);
})();
