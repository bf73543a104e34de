// The dispatcher's web page: live updates through server-sent events. No framework, no build
// step. Server HTML replaces the run's live part; log text is only ever inserted as text.
"use strict";

function followRun(live) {
  const source = new EventSource(live.dataset.events);
  source.addEventListener("update", (event) => {
    live.innerHTML = JSON.parse(event.data);
    noteUnshownWaits(live);
  });
  source.addEventListener("end", () => {
    source.close();
    const actions = document.getElementById("actions");
    if (actions) actions.remove();
  });
}

// The approval form answers only for the jobs it was loaded with; says when more wait now.
function noteUnshownWaits(live) {
  const form = document.getElementById("approval");
  const note = document.getElementById("approval-stale");
  if (!form || !note) return;
  const offered = new Set(
    Array.from(form.querySelectorAll('input[name="job"]'), (input) => input.value),
  );
  const unshown = Array.from(live.querySelectorAll("tr[data-waiting]")).filter(
    (row) => !offered.has(row.dataset.waiting),
  ).length;
  note.textContent = `${unshown} more job(s) wait since this page was loaded: reload it to answer for them.`;
  note.hidden = unshown === 0;
}

// The most log text a page holds; older text is dropped from the top (the raw log has it).
const MAX_SHOWN = 2 * 1024 * 1024;

function followLog(pre) {
  const state = document.getElementById("log-state");
  const trimmed = document.getElementById("log-trimmed");
  const source = new EventSource(pre.dataset.stream);
  let stick = true;
  let shown = 0;
  pre.addEventListener("scroll", () => {
    stick = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
  });
  source.addEventListener("reset", (event) => {
    pre.textContent = "";
    shown = 0;
    trimmed.hidden = true;
    state.textContent = JSON.parse(event.data);
  });
  source.addEventListener("trimmed", (event) => {
    trimmed.textContent = JSON.parse(event.data);
    trimmed.hidden = false;
  });
  source.addEventListener("chunk", (event) => {
    const text = JSON.parse(event.data);
    pre.appendChild(document.createTextNode(text));
    shown += text.length;
    while (shown > MAX_SHOWN && pre.firstChild) {
      shown -= pre.firstChild.textContent.length;
      pre.removeChild(pre.firstChild);
      trimmed.textContent = "Only the end of the log is shown here; the raw log has it all.";
      trimmed.hidden = false;
    }
    if (stick) pre.scrollTop = pre.scrollHeight;
  });
  source.addEventListener("state", (event) => {
    const value = JSON.parse(event.data);
    const words = {
      streaming: "streaming live…",
      complete: "complete",
      truncated: "truncated: the log passed the dispatcher's size limit",
      "truncated-run": "truncated: its run's logs reached the dispatcher's limit for one run",
      "truncated-total": "truncated: all logs reached the dispatcher's limit",
      "truncated-disk": "truncated: the dispatcher's disk is kept from filling up",
      cut: "cut: its worker stopped before sending the rest",
      none: "no log: the job never ran on a worker that streams logs",
    };
    state.textContent = words[value] || value;
    pre.dataset.state = value;
  });
  source.addEventListener("end", () => source.close());
}

document.addEventListener("DOMContentLoaded", () => {
  const live = document.getElementById("live");
  if (live && live.dataset.final !== "true") followRun(live);
  const log = document.getElementById("log");
  if (log) followLog(log);
});
