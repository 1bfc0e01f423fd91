// The live page: tiles show the server-drawn MJPEG of each camera; numbers refresh from /api every second.
"use strict";

const POLL_MS = 1000;

function element(tag, attributes = {}, text = "") {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  if (text) node.textContent = text;
  return node;
}

function verdictClass(camera) {
  return camera.defect ? "verdict defect" : "verdict ok";
}

function stats(camera) {
  const latency = camera.latency_ms === null ? "-" : `${camera.latency_ms.toFixed(0)} ms`;
  return `${camera.fps.toFixed(1)} fps · ${latency} (p95 ${camera.latency_p95_ms.toFixed(0)} ms) · frame ${camera.frame}`;
}

function fillHistory(container, history) {
  container.replaceChildren(...history.map((v) => element("span", {
    class: v.defect ? "defect" : "", title: `#${v.frame} ${v.verdict} ${v.score}`,
  })));
}

function fillGallery(container, camera, limit) {
  const shots = camera.gallery.slice(0, limit);
  const wanted = shots.map((s) => String(s.id)).join(",");
  if (container.dataset.shots === wanted) return;  // unchanged: keep the loaded images
  container.dataset.shots = wanted;
  container.replaceChildren(...shots.map((s) => {
    const image = element("img", {
      src: `/cameras/${encodeURIComponent(camera.name)}/defects/${s.id}.jpg`,
      alt: `defect at frame ${s.frame}`, title: `#${s.frame} ${s.labels.join(", ") || s.verdict}`,
    });
    return image;
  }));
}

async function getJson(url) {
  const response = await fetch(url, { credentials: "same-origin" });
  if (response.status === 401) { window.location = "/login"; throw new Error("not logged in"); }
  if (!response.ok) throw new Error(`${url}: ${response.status}`);
  return response.json();
}

function tile(camera) {
  const name = encodeURIComponent(camera.name);
  const box = element("article", { class: "tile", id: `tile-${camera.name}` });
  const link = element("a", { href: `/camera/${name}` });
  link.append(element("img", { src: `/cameras/${name}/live.mjpg`, alt: `${camera.name} live` }));
  const meta = element("div", { class: "meta" });
  meta.append(element("strong", {}, `${camera.name} · ${camera.model}`), element("span", { class: "verdict" }));
  box.append(link, meta, element("div", { class: "meta stats" }), element("div", { class: "history" }),
    element("div", { class: "gallery" }));
  return box;
}

function updateTile(box, camera) {
  box.classList.toggle("defect", camera.defect);
  const verdict = box.querySelector(".verdict");
  verdict.className = verdictClass(camera);
  verdict.textContent = camera.verdict || "waiting";
  box.querySelector(".stats").textContent = stats(camera);
  fillHistory(box.querySelector(".history"), camera.history);
  fillGallery(box.querySelector(".gallery"), camera, 6);
}

async function indexPage() {
  const tiles = document.getElementById("tiles");
  const status = document.getElementById("status");
  for (;;) {
    try {
      const state = await getJson("/api/cameras");
      document.getElementById("logout").hidden = !state.auth;
      for (const camera of state.cameras) {
        let box = document.getElementById(`tile-${camera.name}`);
        if (!box) { box = tile(camera); tiles.append(box); }
        updateTile(box, camera);
      }
      status.textContent = `${state.cameras.length} cameras · ${state.user}`;
    } catch (error) {
      status.textContent = String(error);
    }
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

async function cameraPage() {
  const name = decodeURIComponent(window.location.pathname.split("/").pop());
  const path = encodeURIComponent(name);
  document.getElementById("title").textContent = name;
  document.title = `mmfusion camera ${name}`;
  document.getElementById("live").src = `/cameras/${path}/live.mjpg`;
  const status = document.getElementById("status");
  for (;;) {
    try {
      const camera = await getJson(`/api/cameras/${path}`);
      status.textContent = `${camera.model} · ${camera.verdict || "waiting"}`;
      status.className = verdictClass(camera);
      document.getElementById("stats").textContent = stats(camera);
      fillHistory(document.getElementById("history"), camera.history);
      fillGallery(document.getElementById("gallery"), camera, 24);
      const rows = camera.history.slice().reverse().slice(0, 30).map((v) => {
        const row = element("tr");
        row.append(element("td", {}, new Date(v.time * 1000).toLocaleTimeString()), element("td", {}, String(v.frame)),
          element("td", { class: v.defect ? "verdict defect" : "verdict ok" }, v.verdict), element("td", {}, String(v.score)));
        return row;
      });
      document.querySelector("#verdicts tbody").replaceChildren(...rows);
    } catch (error) {
      status.textContent = String(error);
    }
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

function loginPage() {
  document.getElementById("failed").hidden = !window.location.search.includes("failed");
}

const page = document.body.dataset.page;
if (page === "index") indexPage();
else if (page === "camera") cameraPage();
else if (page === "login") loginPage();
