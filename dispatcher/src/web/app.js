// The dispatcher's web page: live updates through server-sent events. No framework, no build
// step. Server HTML replaces the run's live part; log text is only ever inserted as text.
"use strict";

function followRun(live) {
  const source = new EventSource(live.dataset.events);
  source.addEventListener("update", (event) => {
    live.innerHTML = JSON.parse(event.data);
  });
  source.addEventListener("end", () => {
    source.close();
    const actions = document.getElementById("actions");
    if (actions) actions.remove();
  });
}

function followLog(pre) {
  const state = document.getElementById("log-state");
  const source = new EventSource(pre.dataset.stream);
  let stick = true;
  pre.addEventListener("scroll", () => {
    stick = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
  });
  source.addEventListener("reset", (event) => {
    pre.textContent = "";
    state.textContent = JSON.parse(event.data);
  });
  source.addEventListener("chunk", (event) => {
    pre.appendChild(document.createTextNode(JSON.parse(event.data)));
    if (stick) pre.scrollTop = pre.scrollHeight;
  });
  source.addEventListener("state", (event) => {
    const value = JSON.parse(event.data);
    const words = {
      streaming: "streaming live…",
      complete: "complete",
      truncated: "truncated: the log passed the dispatcher's size limit",
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
