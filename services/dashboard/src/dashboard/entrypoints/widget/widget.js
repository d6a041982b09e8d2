// Dashboard widget: polls GET /v1/pending with the token the user typed in.
// The token stays in this tab (sessionStorage) and is only ever sent to this origin.
"use strict";
(function () {
  const REFRESH_MS = 5000;
  const KEY = "manual-actions.dashboard.token";
  const $ = (id) => document.getElementById(id);
  let timer = null;

  function show(data) {
    $("total").textContent = String(data.total);
    $("calls").textContent = String(data.calls);
    $("sms").textContent = String(data.sms);
    const total = data.total || 1;
    $("bar-calls").style.width = (100 * data.calls / total) + "%";
    $("bar-sms").style.width = (100 * data.sms / total) + "%";
    $("updated").textContent = "Updated " + new Date().toLocaleTimeString();
    $("error").textContent = "";
  }

  async function refresh() {
    const token = sessionStorage.getItem(KEY);
    if (!token) {
      $("error").textContent = "Enter an API token to see the counts.";
      return;
    }
    try {
      const response = await fetch("v1/pending", {
        headers: { "Authorization": "Bearer " + token, "Accept": "application/json" },
        cache: "no-store",
      });
      const body = await response.json().catch(() => ({}));
      if (!response.ok) {
        // problem+json: show the server's title and detail as they are.
        $("error").textContent = (body.title || response.statusText) + (body.detail ? ": " + body.detail : "");
        return;
      }
      show(body);
    } catch (err) {
      $("error").textContent = "Cannot reach the dashboard: " + err;
    }
  }

  function start() {
    if (timer) clearInterval(timer);
    refresh();
    timer = setInterval(refresh, REFRESH_MS);
  }

  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("token").value.trim();
    if (value) sessionStorage.setItem(KEY, value);
    $("token").value = "";
    start();
  });
  $("forget").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    if (timer) clearInterval(timer);
    ["total", "calls", "sms"].forEach((id) => { $(id).textContent = "–"; });
    $("error").textContent = "Token forgotten.";
  });
  start();
})();
