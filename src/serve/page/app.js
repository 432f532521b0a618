// The graftdb map page: the database's own imagery as the basemap, a drawn box or polygon,
// a text query at image or patch level, results as footprints coloured by score with a
// list, a heat layer for patches, tile click-through and GeoJSON export. No network but
// this server.
'use strict';
(function () {
  const $ = (id) => document.getElementById(id);
  const map = L.map('map', { worldCopyJump: true, preferCanvas: false }).setView([0, 0], 2);
  const basemap = L.layerGroup().addTo(map);
  const outlines = L.layerGroup().addTo(map);
  const drawn = new L.FeatureGroup().addTo(map);
  let results = null, heat = null, last = null, spaces = [];
  const state = { map, resultLayer: null, lastResult: null, lastRequest: null, basemapTiles: 0, drawnCount: () => drawn.getLayers().length };
  window.graftdb = state;

  map.addControl(new L.Control.Draw({
    draw: { rectangle: { shapeOptions: { color: '#ff7800', fill: false } },
            polygon: { allowIntersection: false, shapeOptions: { color: '#ff7800', fill: false } },
            polyline: false, circle: false, marker: false, circlemarker: false },
    edit: { featureGroup: drawn },
  }));
  map.on(L.Draw.Event.CREATED, (e) => { drawn.clearLayers(); drawn.addLayer(e.layer); });

  const status = (msg, err) => { const s = $('status'); s.textContent = msg; s.className = err ? 'error' : ''; };
  const tileUrl = (id) => '/tiles/' + encodeURIComponent(String(id)) + '.png';
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));

  // Basemap: tiles meeting the view, each its own image laid on its footprint's bounds.
  let basemapSeq = 0;
  async function loadBasemap() {
    const seq = ++basemapSeq;
    const b = map.getBounds();
    const w = Math.max(-180, b.getWest()), e = Math.min(180, b.getEast());
    const s = Math.max(-90, b.getSouth()), n = Math.min(90, b.getNorth());
    if (w >= e || s >= n) return;
    try {
      const r = await fetch(`/tiles?bbox=${w},${s},${e},${n}&limit=400`);
      const fc = await r.json();
      if (seq !== basemapSeq || !r.ok) return;
      basemap.clearLayers(); outlines.clearLayers();
      for (const f of fc.features) {
        const ring = f.geometry.coordinates[0];
        const lats = ring.map((p) => p[1]), lons = ring.map((p) => p[0]);
        const bounds = [[Math.min(...lats), Math.min(...lons)], [Math.max(...lats), Math.max(...lons)]];
        if (f.properties.pixels && !fc.truncated) {
          L.imageOverlay(tileUrl(f.properties.id), bounds, { opacity: 0.95 }).addTo(basemap);
        } else {
          L.polygon(ring.map((p) => [p[1], p[0]]), { color: '#8899aa', weight: 1, fill: false, interactive: false }).addTo(outlines);
        }
      }
      state.basemapTiles = fc.features.length;
      if (fc.truncated) status('Zoom in to see the imagery (outlines shown).');
    } catch (err) { /* the basemap is best effort */ }
  }
  map.on('moveend', loadBasemap);

  function fillSpaces() {
    const level = $('level').value;
    const sel = $('space'); sel.innerHTML = '';
    for (const sp of spaces.filter((s) => (level === 'patch') === s.level.startsWith('patch'))) {
      const o = document.createElement('option'); o.value = sp.name; o.textContent = `${sp.name} (${sp.level}, ${sp.vectors})`; sel.appendChild(o);
    }
  }
  $('level').addEventListener('change', fillSpaces);

  async function init() {
    try {
      const st = await (await fetch('/stats')).json();
      spaces = st.spaces || [];
      fillSpaces();
      if (st.extent) map.fitBounds([[st.extent[1], st.extent[0]], [st.extent[3], st.extent[2]]]);
      else loadBasemap();
      status(`${st.tiles} tiles, ${st.photos} photos` + (st.server && !st.server.text_queries ? ' — no --model: text search is off' : ''));
    } catch (err) { status('Cannot reach the server: ' + err, true); }
  }

  // Score → colour: low yellow to high red, over this result's score range.
  function colour(t) {
    const h = 60 - 60 * Math.max(0, Math.min(1, t));
    return `hsl(${h}, 100%, 45%)`;
  }

  function area() {
    const layer = drawn.getLayers()[0];
    if (!layer) return {};
    if (layer instanceof L.Rectangle) {
      const b = layer.getBounds();
      return { bbox: [b.getWest(), b.getSouth(), b.getEast(), b.getNorth()] };
    }
    return { polygon: layer.toGeoJSON().geometry };
  }

  function show(fc, level) {
    if (results) map.removeLayer(results);
    if (heat) { map.removeLayer(heat); heat = null; }
    const feats = fc.features;
    const scores = feats.map((f) => f.properties.score);
    const lo = Math.min(...scores), hi = Math.max(...scores);
    const norm = (s) => (hi > lo ? (s - lo) / (hi - lo) : 1);
    const list = $('results'); list.innerHTML = '';
    const byRank = {};
    results = L.geoJSON(fc, {
      style: (f) => ({ color: colour(norm(f.properties.score)), weight: 2, fillOpacity: 0.35, className: 'graft-hit' }),
      pointToLayer: (f, ll) => L.circleMarker(ll, { radius: 6, className: 'graft-hit' }),
      onEachFeature: (f, layer) => {
        const p = f.properties;
        const img = p.kind === 'tile' ? `<a href="${tileUrl(p.id)}" target="_blank">open tile image</a><img src="${tileUrl(p.id)}" alt="">` : '';
        const patch = p.patch ? ` patch r${p.patch.row} c${p.patch.col}` : '';
        layer.bindPopup(`<div class="popup"><b>#${p.rank} ${esc(p.id)}</b>${patch}<br>score ${p.score.toFixed(4)}<br>${img}</div>`);
        byRank[p.rank] = layer;
      },
    }).addTo(map);
    state.resultLayer = results;
    for (const f of feats) {
      const p = f.properties;
      const li = document.createElement('li');
      li.className = 'hit';
      li.innerHTML = `<span class="swatch" style="background:${colour(norm(p.score))}"></span>${esc(p.id)}${p.patch ? ` r${p.patch.row}c${p.patch.col}` : ''} <span class="score">${p.score.toFixed(4)}</span>`;
      li.addEventListener('click', () => {
        const layer = byRank[p.rank];
        if (layer.getBounds) map.fitBounds(layer.getBounds(), { maxZoom: 14 }); else map.setView(layer.getLatLng(), 14);
        layer.openPopup();
      });
      list.appendChild(li);
    }
    if (level === 'patch' && L.heatLayer && feats.length) {
      heat = L.heatLayer(feats.map((f) => [f.properties.lat, f.properties.lon, 0.2 + 0.8 * norm(f.properties.score)]), { radius: 25, blur: 20 }).addTo(map);
    }
    if (feats.length && !drawn.getLayers().length) map.fitBounds(results.getBounds(), { maxZoom: 12 });
  }

  $('search').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const text = $('q').value.trim();
    if (!text) { status('Type a query first.', true); return; }
    const level = $('level').value;
    const body = Object.assign({ text, level, k: Number($('k').value) || 10, format: 'geojson' }, area());
    if ($('space').value) body.space = $('space').value;
    state.lastRequest = body;
    status('Searching…');
    try {
      const r = await fetch('/query', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
      const j = await r.json();
      if (!r.ok) { status(`${j.error.field ? j.error.field + ': ' : ''}${j.error.message}`, true); return; }
      last = j; state.lastResult = j;
      show(j, level);
      $('export').disabled = false;
      status(`${j.features.length} results (${j.explain.path}, ${(j.explain.micros / 1000).toFixed(1)} ms)`);
    } catch (err) { status('Search failed: ' + err, true); }
  });

  $('clear-area').addEventListener('click', () => drawn.clearLayers());
  $('export').addEventListener('click', () => {
    if (!last) return;
    const fc = { type: 'FeatureCollection', features: last.features };
    const a = document.createElement('a');
    a.href = URL.createObjectURL(new Blob([JSON.stringify(fc, null, 1)], { type: 'application/geo+json' }));
    a.download = 'graftdb-results.geojson';
    document.body.appendChild(a); a.click(); a.remove();
  });

  init();
})();
