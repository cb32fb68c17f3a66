// Crop Guardian's service worker: keeps the app shell so the app opens on a farm without signal.
// The shell is fetched from the network first (a new Kaset version shows at once) and served
// from the cache only when the network fails. API calls (/v1/, /v2/) are never intercepted nor
// cached: they carry the person's credential and photos, and a stale diagnosis would mislead.

const CACHE = "kaset-farmer-v3";
const SHELL = [
  "/farmer/", "/farmer/index.html", "/farmer/app.js", "/farmer/spoken.js", "/farmer/farmer.css", "/farmer/manifest.webmanifest",
  "/farmer/icon-192.png", "/farmer/icon-512.png", "/static/kaset.js", "/static/mic-worklet.js", "/static/kaset.css",
  "/static/icon.svg",
];

self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil(caches.keys()
    .then((names) => Promise.all(names.filter((name) => name !== CACHE).map((name) => caches.delete(name))))
    .then(() => self.clients.claim()));
});

function isShell(url) {
  return url.origin === self.location.origin && SHELL.includes(url.pathname);
}

self.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  // Only the shell's GETs: everything else (the API above all) goes to the network untouched.
  if (event.request.method !== "GET" || !isShell(url)) return;
  event.respondWith((async () => {
    const cache = await caches.open(CACHE);
    try {
      const response = await fetch(event.request);
      if (response.ok) await cache.put(event.request, response.clone());
      return response;
    } catch (err) {
      const cached = await cache.match(event.request, { ignoreSearch: true });
      if (cached) return cached;
      throw err;
    }
  })());
});
