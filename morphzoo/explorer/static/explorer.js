// The morphzoo explorer page: a three.js view of the model's mesh and controls that call the server's JSON API
// (morphzoo/explorer/server.py). The page holds only the latent *coordinates* (std units along the principal
// directions, session.py); every mesh comes from the model.
import * as THREE from 'three';
import { OrbitControls } from '/static/vendor/three/OrbitControls.js';

const $ = (id) => document.getElementById(id);
const state = { coordinates: [], seed: 0, drags: new Map(), colour: 'plain', error: null, inFlight: 0 };
// What a test (or a curious user in the console) can read: readiness, request counts, the current mesh.
const explorer = window.explorer = { ready: false, requests: 0, replies: 0, state,
  vertices: () => Array.from(geometry.attributes.position.array) };

// viridis, 9 stops: the error heat-map and its colour bar use the same ramp
const VIRIDIS = ['#440154', '#472d7b', '#3b528b', '#2c728e', '#21918c', '#28ae80', '#5ec962', '#addc30', '#fde725']
  .map((hex) => new THREE.Color(hex));
const PALETTE = ['#e6194b', '#3cb44b', '#4363d8', '#f58231', '#911eb4', '#46f0f0', '#f032e6', '#bcf60c',
  '#fabebe', '#008080', '#e6beff', '#9a6324', '#800000', '#aaffc3', '#808000', '#000075'].map((h) => new THREE.Color(h));

function viridis(t, colour) {
  const x = Math.min(Math.max(t, 0), 1) * (VIRIDIS.length - 1), i = Math.min(Math.floor(x), VIRIDIS.length - 2);
  return colour.copy(VIRIDIS[i]).lerp(VIRIDIS[i + 1], x - i);
}

document.querySelector('#colourbar .ramp').style.background =
  `linear-gradient(to right, ${VIRIDIS.map((c) => `#${c.getHexString()}`).join(', ')})`;

function floats(base64) { return new Float32Array(Uint8Array.from(atob(base64), (c) => c.charCodeAt(0)).buffer); }
function uints(base64) { return new Uint32Array(Uint8Array.from(atob(base64), (c) => c.charCodeAt(0)).buffer); }

function status(text, isError = false) { $('status').textContent = text; $('status').className = isError ? 'error' : ''; }

async function call(name, body = {}) {
  explorer.requests += 1;
  try {
    const reply = await fetch(`/api/${name}`, { method: 'POST', headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(body) });
    const json = await reply.json();
    if (!reply.ok) throw new Error(json.error || reply.statusText);
    return json;
  } catch (error) { status(error.message, true); throw error; } finally { explorer.replies += 1; }
}

// ------------------------------------------------------------------------------------------------------- the scene
const canvas = $('canvas');
const renderer = new THREE.WebGLRenderer({ canvas, antialias: true, preserveDrawingBuffer: true });
renderer.setPixelRatio(window.devicePixelRatio);
const scene = new THREE.Scene();
scene.background = new THREE.Color('#ffffff');
const camera = new THREE.PerspectiveCamera(30, 1, 0.001, 100);
const orbit = new OrbitControls(camera, canvas);
scene.add(new THREE.HemisphereLight('#ffffff', '#888888', 2.0));
const sun = new THREE.DirectionalLight('#ffffff', 1.5);
camera.add(sun); sun.position.set(1, 1, 2); scene.add(camera);
const geometry = new THREE.BufferGeometry();
const mesh = new THREE.Mesh(geometry, new THREE.MeshStandardMaterial({ vertexColors: true, roughness: 0.7,
  side: THREE.DoubleSide }));
scene.add(mesh);
const handles = new THREE.Group();
scene.add(handles);

function resize() {
  const { clientWidth: w, clientHeight: h } = canvas.parentElement;
  renderer.setSize(w, h, false); camera.aspect = w / h; camera.updateProjectionMatrix();
}
window.addEventListener('resize', () => { resize(); render(); });
orbit.addEventListener('change', () => render());
function render() { renderer.render(scene, camera); }

function showVertices(vertices, { base = false } = {}) {
  geometry.attributes.position.array.set(vertices);
  geometry.attributes.position.needsUpdate = true;
  geometry.computeVertexNormals();
  if (base) { state.base = vertices; state.drags.clear(); }
  placeHandles();
  paint();
}

function paint() {
  const colours = geometry.attributes.color, colour = new THREE.Color(), n = colours.count;
  const bar = $('colourbar');
  bar.style.display = state.colour === 'error' ? 'block' : 'none';
  for (let i = 0; i < n; i++) {
    if (state.colour === 'error') viridis(state.error[i] / state.maxError, colour);
    else if (state.colour === 'parts') colour.copy(PALETTE[model.features.parts.supports[i] % PALETTE.length]);
    else colour.set('#d9c7b8');
    colours.setXYZ(i, colour.r, colour.g, colour.b);
  }
  colours.needsUpdate = true;
  render();
}

// ----------------------------------------------------------------------------------------------- latent controls
let model;
const sliders = [];

function buildSliders() {
  const box = $('sliders');
  for (const factor of model.factors) {
    if (model.factors.length > 1) box.insertAdjacentHTML('beforeend', `<div><b>${factor.name}</b></div>`);
    factor.columns.forEach((column, rank) => {
      const row = document.createElement('div');
      row.className = 'row';
      const share = (100 * factor.variance_share[rank]).toFixed(1);
      row.innerHTML = `<label title="${share} % of the ${factor.name} variance">${factor.name} ${rank + 1}</label>
        <input type="range" min="-3" max="3" step="0.05" value="0" data-column="${column}"><output>0.00</output>`;
      const input = row.querySelector('input');
      input.addEventListener('input', () => {
        state.coordinates[column] = Number(input.value);
        row.querySelector('output').textContent = Number(input.value).toFixed(2);
        requestDecode();
      });
      sliders.push({ input, output: row.querySelector('output'), column });
      box.appendChild(row);
    });
  }
}

function showCoordinates(coordinates) {
  state.coordinates = coordinates;
  for (const { input, output, column } of sliders) {
    input.value = coordinates[column]; output.textContent = coordinates[column].toFixed(2);
  }
}

// Slider moves coalesce: one decode in flight, the latest coordinates sent when it returns.
let pending = false;
async function requestDecode() {
  if (state.inFlight) { pending = true; return; }
  state.inFlight = 1;
  try {
    const reply = await call('decode', { coordinates: state.coordinates });
    plainColour();
    showVertices(floats(reply.vertices), { base: true });
    status('decoded the slider position');
  } finally {
    state.inFlight = 0;
    if (pending) { pending = false; requestDecode(); }
  }
}

function plainColour() { state.colour = $('show-parts').checked ? 'parts' : 'plain'; }

async function showReply(reply, text) {
  if (reply.coordinates) showCoordinates(reply.coordinates);
  showVertices(floats(reply.vertices), { base: Boolean(reply.coordinates) });
  status(text);
}

$('mean').addEventListener('click', async () => {
  showCoordinates(new Array(model.dimension).fill(0)); plainColour();
  await showReply(await call('decode', { coordinates: state.coordinates }), 'the mean code');
});
$('sample').addEventListener('click', async () => {
  state.seed += 1; plainColour();
  await showReply(await call('sample', { seed: state.seed }), `sample ${state.seed} of the latent Gaussian`);
});

// ------------------------------------------------------------------------------------------------------- meshes
function buildMeshes() {
  if (!model.meshes.length) {
    $('meshes-section').innerHTML = '<h2>Meshes</h2><div>No meshes to compare: start with <code>--meshes</code> ' +
      'files (or a zoo model, whose test split is used).</div>';
    return;
  }
  for (const id of ['mesh-a', 'mesh-b']) {
    $(id).innerHTML = model.meshes.map((name, i) => `<option value="${i}">${name}</option>`).join('');
  }
  $('mesh-b').value = String(Math.min(1, model.meshes.length - 1));
  $('weight').addEventListener('input', async () => {
    $('weight-value').textContent = $('weight').value;
    plainColour();
    const reply = await call('interpolate', { source: Number($('mesh-a').value), target: Number($('mesh-b').value),
      weight: Number($('weight').value) });
    await showReply(reply, `interpolation A → B at ${$('weight').value}`);
  });
  $('error').addEventListener('click', async () => {
    const reply = await call('encode', { mesh: Number($('mesh-a').value) });
    state.error = floats(reply.error_mm); state.maxError = Math.max(reply.max_error_mm, 1e-6); state.colour = 'error';
    $('tick-mid').textContent = (state.maxError / 2).toFixed(2);
    $('tick-max').textContent = state.maxError.toFixed(2);
    await showReply(reply, `reconstruction of ${model.meshes[$('mesh-a').value]}: mean error ` +
      `${reply.mean_error_mm.toFixed(2)} mm, max ${reply.max_error_mm.toFixed(2)} mm`);
  });
}

// ------------------------------------------------------------------------------------------- LAMM: control drags
const raycaster = new THREE.Raycaster(), pointer = new THREE.Vector2(), plane = new THREE.Plane();
let dragging = null;

function buildRegions() {
  const regions = model.features.regions;
  if (!regions) return;
  $('regions-section').classList.remove('hidden');
  $('region').innerHTML = regions.names.map((name, i) => `<option value="${i}">${name}</option>`).join('');
  $('sample-region').disabled = !regions.can_sample;
  const radius = geometry.boundingSphere.radius * 0.025;
  regions.controls.forEach((vertices, region) => vertices.forEach((vertex, k) => {
    const ball = new THREE.Mesh(new THREE.SphereGeometry(radius, 12, 8),
      new THREE.MeshStandardMaterial({ color: PALETTE[region % PALETTE.length] }));
    ball.userData = { region, k, vertex };
    handles.add(ball);
  }));
  $('show-controls').addEventListener('change', () => { handles.visible = $('show-controls').checked; render(); });
  $('sample-region').addEventListener('click', async () => {
    state.seed += 1; plainColour();
    const reply = await call('sample_region', { coordinates: state.coordinates, region: Number($('region').value),
      seed: state.seed });
    await showReply(reply, `region ${regions.names[$('region').value]} sampled (seed ${state.seed})`);
  });
  $('reset-controls').addEventListener('click', () => requestDecode());
  canvas.addEventListener('pointerdown', startDrag);
  canvas.addEventListener('pointermove', moveDrag);
  canvas.addEventListener('pointerup', endDrag);
}

function basePosition(vertex) { return new THREE.Vector3().fromArray(state.base, 3 * vertex); }

function placeHandles() {
  for (const ball of handles.children) {
    const { region, k, vertex } = ball.userData;
    ball.position.copy(basePosition(vertex)).add(state.drags.get(`${region},${k}`) || new THREE.Vector3());
  }
}

function pick(event) {
  const box = canvas.getBoundingClientRect();
  pointer.set(((event.clientX - box.left) / box.width) * 2 - 1, -((event.clientY - box.top) / box.height) * 2 + 1);
  raycaster.setFromCamera(pointer, camera);
}

function startDrag(event) {
  pick(event);
  const hit = raycaster.intersectObjects(handles.children)[0];
  if (!hit) return;
  dragging = hit.object; orbit.enabled = false;
  plane.setFromNormalAndCoplanarPoint(camera.getWorldDirection(new THREE.Vector3()), dragging.position);
}

function moveDrag(event) {
  if (!dragging) return;
  pick(event);
  const point = raycaster.ray.intersectPlane(plane, new THREE.Vector3());
  if (point) { dragging.position.copy(point); render(); }
}

async function endDrag() {
  if (!dragging) return;
  const { region, k, vertex } = dragging.userData;
  state.drags.set(`${region},${k}`, dragging.position.clone().sub(basePosition(vertex)));
  dragging = null; orbit.enabled = true;
  const moves = [...state.drags].map(([key, d]) => [...key.split(',').map(Number), d.x, d.y, d.z]);
  plainColour();
  const reply = await call('edit_regions', { coordinates: state.coordinates, moves });
  showVertices(floats(reply.vertices));
  status(`edited ${moves.length} control vertices`);
}

// ---------------------------------------------------------------------------------------------- NMF: part swaps
function buildParts() {
  const parts = model.features.parts;
  if (!parts) return;
  $('parts-section').classList.remove('hidden');
  const options = ['<option value="-1">current</option>',
    ...model.meshes.map((name, i) => `<option value="${i}">${name}</option>`)].join('');
  for (let k = 0; k < parts.count; k++) {
    $('parts').insertAdjacentHTML('beforeend', `<div class="row"><label style="color:#${PALETTE[k % PALETTE.length]
      .getHexString()}">part ${k + 1}</label><select data-part="${k}">${options}</select></div>`);
  }
  $('show-parts').addEventListener('change', () => { plainColour(); paint(); });
  $('swap').addEventListener('click', async () => {
    const sources = [...document.querySelectorAll('[data-part]')].map((select) => Number(select.value));
    plainColour();
    const reply = await call('swap_parts', { coordinates: state.coordinates, sources });
    showVertices(floats(reply.vertices));
    status(`parts from: ${sources.map((s) => (s < 0 ? 'current' : model.meshes[s])).join(', ')}`);
  });
}

// --------------------------------------------------------------------------------------------------------- start
async function start() {
  model = await call('model');
  document.title = `morphzoo explorer: ${model.name}`;
  $('title').textContent = model.name;
  $('method').textContent = `${model.method}, ${model.num_vertices} vertices, ${model.dimension}-d code`;
  const vertices = floats(model.vertices);
  geometry.setAttribute('position', new THREE.BufferAttribute(new Float32Array(vertices.length), 3));
  geometry.setAttribute('color', new THREE.BufferAttribute(new Float32Array(vertices.length), 3));
  geometry.setIndex(new THREE.BufferAttribute(uints(model.faces), 1));
  geometry.attributes.position.array.set(vertices);
  geometry.computeBoundingSphere();
  const { center, radius } = geometry.boundingSphere;
  // z-up meshes look down -y (anny, and morphzoo's figures); y-up meshes (CoMA, DFAUST) look down +z
  camera.up.set(...(model.up === 'y' ? [0, 1, 0] : [0, 0, 1]));
  orbit.target.copy(center);
  camera.position.copy(center).add(new THREE.Vector3(...(model.up === 'y' ? [0, 0, 4] : [0, -4, 0]))
    .multiplyScalar(radius));
  orbit.update();
  camera.near = radius / 100; camera.far = radius * 100;
  resize();
  state.coordinates = new Array(model.dimension).fill(0);
  buildSliders(); buildMeshes(); buildRegions(); buildParts();
  showVertices(vertices, { base: true });
  status('ready: the mean code');
  explorer.ready = true;
}
start();
