// The operator page: reads /ops/data with the operator token every two seconds.
"use strict";

const $ = (id) => document.getElementById(id);

function table(id, head, rows) {
  const escape = (value) => String(value ?? "").replace(/[&<>]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;" })[c]);
  $(id).innerHTML = "<tr>" + head.map((h) => `<th>${escape(h)}</th>`).join("") + "</tr>" +
    rows.map((row) => "<tr>" + row.map((cell) => `<td>${escape(cell)}</td>`).join("") + "</tr>").join("");
}

async function refresh() {
  const token = $("ops-token").value.trim();
  localStorage.setItem("img2img-ops-token", token);
  const response = await fetch("/ops/data", { headers: { Authorization: "Bearer " + token } });
  if (!response.ok) {
    $("error").textContent = (await response.json()).error || `HTTP ${response.status}`;
    return;
  }
  $("error").textContent = "";
  const data = await response.json();
  table("queue-table", ["queue", "depth"], data.queues.map((q) => [q.name, q.depth]));
  table("worker-table", ["worker", "last heartbeat (s ago)"], data.workers.map((w) => [w.name, w.age_seconds]));
  table("job-table", ["status", "jobs"], Object.entries(data.jobs));
  table("counter-table", ["counter", "value"], Object.entries(data.counters).concat([["uploads pending", data.uploads_pending]]));
  table("failure-table", ["job", "error", "attempts"], data.failures.map((f) => [f.id, f.error, f.attempts]));
}

$("ops-token").value = localStorage.getItem("img2img-ops-token") || "";
$("ops-token").addEventListener("change", refresh);
refresh();
setInterval(refresh, 2000);
