"""`wm teleop`: drive the robot inside the imagined world from a browser.

    wm teleop --model=outputs/train/small/model --dataset.root=outputs/datasets/metaworld_push
    # on a remote GPU machine, from your laptop:  ssh -N -L 8765:127.0.0.1:8765 user@gpu-host
    # then open http://127.0.0.1:8765

One page (every camera view side by side, predicted state, frames per second, control mode, key map)
talks to the server over one WebSocket. Each connection gets its own world-model session (the network
weights are shared); a disconnect frees it. The server sends a frame only after the page acknowledged
the previous one, so generation runs at the model's own pace and nothing queues up.

Client -> server messages (JSON objects, at most `max_message_bytes`):
    {"type": "keys", "down": ["w", "e"]}      the keys held now (key repeat does not matter)
    {"type": "reset", "episode": 3}           restart from that dataset episode's first frame
    {"type": "mode", "mode": "human"|"policy"}
    {"type": "pause", "paused": true}  {"type": "step"}   (one step while paused)
    {"type": "record", "on": true|false}      on -> off saves the episode to the LeRobotDataset
    {"type": "ack"}                           the last frame is on screen
Server -> client: {"type": "hello", ...}, {"type": "frame", ...}, {"type": "error", "message": ...}.
Anything malformed, oversized (up to 1 MiB; beyond that the socket closes with 1009), nested too deeply or
unknown gets an error message back; the session goes on. At most `max_sessions` pages at once.

Safe by default: binds 127.0.0.1; binding another address needs `--token` (then the page and socket
need `?token=...`).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import ctypes
import hmac
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from worldmodel.dataset import ClipDataset, DatasetConfig, start_frames
from worldmodel.model import VideoDiT
from worldmodel.recording import CommittedDataset
from worldmodel.sampler import SamplerConfig
from worldmodel.world import WorldModel

# Key -> (end-effector axis, value); gripper keys set a held gripper command. Which action dimension an axis
# is comes from the model's action names (keyboard_axes), so keys drive any end-effector-delta robot.
KEYMAP = {
    "w": ("y", 1.0), "s": ("y", -1.0), "a": ("x", -1.0), "d": ("x", 1.0), "r": ("z", 1.0), "f": ("z", -1.0),
    "ArrowUp": ("y", 1.0), "ArrowDown": ("y", -1.0), "ArrowLeft": ("x", -1.0), "ArrowRight": ("x", 1.0),
}
GRIPPER_KEYS = {"e": 1.0, "q": -1.0}  # close, open
AXIS_NAMES = {"x": ("dx", "x", "delta_x", "ee_dx", "eef_x", "ee_x"), "y": ("dy", "y", "delta_y", "ee_dy", "eef_y", "ee_y"),
              "z": ("dz", "z", "delta_z", "ee_dz", "eef_z", "ee_z"),
              "grip": ("grip", "gripper", "gripper_action", "claw")}
METAWORLD_ACTIONS = ["dx", "dy", "dz", "grip"]  # what a model saved without action names was trained on


def keyboard_axes(action_names: list[str] | None, action_dim: int) -> dict[str, int] | None:
    """{"x": i, "y": j, "z": k[, "grip": g]}: the action dimensions the keys drive, found by name; None when
    the actions are not end-effector deltas (joint velocities, ...): then only policy mode drives."""
    names = action_names if action_names is not None else (METAWORLD_ACTIONS if action_dim == 4 else None)
    if names is None:
        return None
    lowered = [str(n).lower() for n in names]
    axes = {axis: next((i for i, n in enumerate(lowered) if n in aliases), None) for axis, aliases in AXIS_NAMES.items()}
    if any(axes[a] is None for a in ("x", "y", "z")):
        return None
    return {a: i for a, i in axes.items() if i is not None}
KEY_HELP = {"w / s": "+y / -y", "a / d": "-x / +x", "r / f": "up / down", "e / q": "close / open gripper",
            "p": "pause", "n": "step once (paused)", "m": "human / policy", "c": "record on / off"}


@dataclass
class TeleopConfig:
    model: str = "outputs/train/tiny_cpu/model"
    dataset: DatasetConfig = field(default_factory=DatasetConfig)  # episodes to reset to
    policy: str | None = None  # a LeRobot pretrained policy folder to hand control to
    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    record_root: str = "outputs/datasets/teleop"
    record_repo_id: str = "local/teleop"
    task: str = "teleoperation in imagination"
    max_message_bytes: int = 4096
    max_json_depth: int = 8  # nesting of arrays/objects in a message (every valid message has 2)
    max_sessions: int = 4  # open pages at once; each holds a world-model session (KV cache, memory)
    speed: float = 1.0  # action magnitude per held key
    sampler: SamplerConfig = field(default_factory=lambda: SamplerConfig(steps=4, window=1, rolling=False))
    device: str | None = None


def return_freed_memory_to_the_os() -> bool:
    """Make glibc serve every buffer over 128 KiB (KV caches, memory frames, pictures) from its own mapping, so a
    closed session's memory goes back to the OS; -> whether it was set (glibc on Linux only).

    Why: glibc raises its mmap threshold after the first large free, after which session buffers land in heaps it
    can rarely shrink. Measured on the shipped reach tiny, 20 sessions opened and closed (4 at a time): +141 MB
    resident left behind without this, +12 MB with it, at the same speed. Process-wide, so the server sets it."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # another C library (musl): its own allocator, nothing to set
        return False
    M_MMAP_THRESHOLD = -3  # from glibc's malloc.h; setting it also turns the dynamic threshold off
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024))


def build_server(cfg: TeleopConfig) -> "TeleopServer":
    """The server `wm teleop` runs: process-wide memory settings first, then the model and start frames."""
    return_freed_memory_to_the_os()
    return TeleopServer(cfg)


def json_depth(text: str) -> int:
    """How deeply arrays/objects nest in a JSON text (brackets inside strings do not count), without parsing."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            escaped, in_string = (False, True) if escaped else (char == "\\", char != '"')
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


class Recorder:
    """Episodes of teleoperation written through lerobot's API, one lock for all sessions."""

    def __init__(self, root: str, repo_id: str, camera_keys: list[str], image_size: int, state_dim: int,
                 action_dim: int, fps: int):
        self.root, self.repo_id, self.fps = Path(root), repo_id, fps
        self.features = {k: {"dtype": "video", "shape": (image_size, image_size, 3),
                             "names": ["height", "width", "channels"]} for k in camera_keys}
        self.features["observation.state"] = {"dtype": "float32", "shape": (state_dim,), "names": None}
        self.features["action"] = {"dtype": "float32", "shape": (action_dim,), "names": None}
        self.lock = threading.Lock()

    def save(self, frames: list[dict], task: str) -> int:
        """One whole episode, committed by renames (worldmodel.recording): a hard kill mid-save leaves the
        episodes saved before it readable. -> episodes in the dataset."""
        with self.lock:
            recording = CommittedDataset(self.root, self.open_dataset, commit_every=1)
            try:
                index = recording.write(frames, task)
            finally:
                recording.commit()
            return index + 1

    def open_dataset(self, path: Path):
        from lerobot.datasets.lerobot_dataset import LeRobotDataset

        if (path / "meta" / "info.json").exists():
            return LeRobotDataset(self.repo_id, root=path)
        return LeRobotDataset.create(self.repo_id, fps=self.fps, features=self.features, root=path)


class Session:
    """One client's imagined world: state of control, the world model, the recording buffer."""

    def __init__(self, server: "TeleopServer"):
        self.server = server
        self.world = WorldModel(server.model, server.cfg.sampler, batch_size=1, device=server.cfg.device)
        # A policy keeps per-episode state (ACT's action queue): every session drives its own copy.
        self.policy = copy.deepcopy(server.policy) if server.policy is not None else None
        self.held: set[str] = set()
        self.gripper = -1.0
        self.mode, self.paused, self.single_step = "human", False, False
        self.recording: list[dict] | None = None
        self.episodes_recorded = 0
        self.last_action = np.zeros(server.model.cfg.action_dim, np.float32)
        self.steps, self.fps, self.episode = 0, 0.0, 0
        self.observation = None
        self.pending_frame = False  # a state change the page should see even while paused
        self.to_save: list[dict] | None = None  # a finished recording, written off the event loop

    def reset(self, episode: int) -> None:
        start = self.server.start_observation(episode)
        with self.server.compute:
            reset = self.world.reset(start)
        self.observation = {k: v.numpy() if hasattr(v, "numpy") else v for k, v in reset.items()}
        self.episode, self.steps = episode, 0
        if self.policy is not None:
            self.policy.reset()

    def human_action(self) -> np.ndarray:
        action = np.zeros(self.server.model.cfg.action_dim, np.float32)
        axes = self.server.axes or {}  # no keyboard for this action space: the robot holds still
        for key in self.held:
            if key in KEYMAP and KEYMAP[key][0] in axes:
                axis, value = KEYMAP[key]
                action[axes[axis]] += value * self.server.cfg.speed
            if key in GRIPPER_KEYS:
                self.gripper = GRIPPER_KEYS[key]
        if "grip" in axes:
            action[axes["grip"]] = self.gripper
        return np.clip(action, -1, 1)

    def advance(self) -> None:
        """One world-model frame: frame_stride env steps of the current controller's actions."""
        stride = self.server.model.cfg.frame_stride
        obs = {k: v[None] for k, v in self.observation.items()}
        with self.server.compute:
            if self.mode == "policy" and self.policy is not None:
                actions = np.stack([np.clip(self.policy.select_action(obs)[0], -1, 1) for _ in range(stride)])
            else:
                actions = np.stack([self.human_action()] * stride)
            started = time.perf_counter()
            new = self.world.step(actions[None].astype(np.float32))
            elapsed = time.perf_counter() - started
        self.fps = 0.8 * self.fps + 0.2 / max(elapsed, 1e-6) if self.fps else 1 / max(elapsed, 1e-6)
        if self.recording is not None:
            for a in actions:  # what was seen when acting, and the action taken (env-step rows)
                self.recording.append({**{k: self.observation[k] for k in self.observation}, "action": a})
        self.observation = {k: v[0].cpu().numpy() for k, v in new.items()}
        self.last_action = actions[-1]
        self.steps += stride

    def frame_message(self) -> dict:
        images = {}
        for key in self.server.model.cfg.camera_keys:
            ok, png = cv2.imencode(".png", cv2.cvtColor(self.observation[key], cv2.COLOR_RGB2BGR))
            images[key] = base64.b64encode(png.tobytes()).decode()
        return {"type": "frame", "images": images, "state": np.round(self.observation["observation.state"].astype(np.float64), 4).tolist(),
                "action": np.round(self.last_action, 3).tolist(), "fps": round(self.fps, 2), "mode": self.mode,
                "paused": self.paused, "step": self.steps, "episode": self.episode,
                "recording": self.recording is not None, "episodes_recorded": self.episodes_recorded}


class TeleopServer:
    def __init__(self, cfg: TeleopConfig, model: VideoDiT | None = None, policy=None, clips: ClipDataset | None = None):
        if cfg.host not in ("127.0.0.1", "localhost", "::1") and not cfg.token:
            raise ValueError(f"host: binding {cfg.host} exposes the server; pass --token=... (clients then "
                             "open the page with ?token=...)")
        self.cfg = cfg
        self.model = model or VideoDiT.from_pretrained(cfg.model)
        self.policy = policy
        if policy is None and cfg.policy is not None:
            from worldmodel.policy import LeRobotPolicy

            self.policy = LeRobotPolicy.from_pretrained(cfg.policy, task=cfg.task)
        mc = self.model.cfg
        self.axes = keyboard_axes(mc.action_names, mc.action_dim)
        self.clips = clips or start_frames(cfg.dataset, mc)
        self.recorder = Recorder(cfg.record_root, cfg.record_repo_id, list(mc.camera_keys), mc.image_size,
                                 mc.state_dim, mc.action_dim, mc.fps)
        self.sessions: set[Session] = set()
        # One network computation at a time; sessions take turns. Torch calls from several threads at once each
        # start their own OpenMP team, which only oversubscribes a small CPU.
        self.compute = threading.Lock()
        self.app = self._build_app()

    def start_observation(self, episode: int) -> dict:
        n = len(self.clips.cache.episode_start)
        if not 0 <= episode < n:
            raise ValueError(f"episode: {episode} is not in [0, {n})")
        return self.clips.first_observations([episode])

    def authorised(self, token: str | None) -> bool:
        return self.cfg.token is None or (token is not None and hmac.compare_digest(token, self.cfg.token))

    def _build_app(self):
        from starlette.applications import Starlette
        from starlette.responses import HTMLResponse, PlainTextResponse
        from starlette.routing import Route, WebSocketRoute
        from starlette.websockets import WebSocketDisconnect

        async def page(request):
            if not self.authorised(request.query_params.get("token")):
                return PlainTextResponse("missing or wrong token", status_code=403)
            return HTMLResponse(PAGE)

        async def socket(ws):
            if not self.authorised(ws.query_params.get("token")):
                await ws.close(code=1008)
                return
            await ws.accept()
            if len(self.sessions) >= self.cfg.max_sessions:
                await ws.send_json({"type": "error", "message": f"server busy: {len(self.sessions)} sessions are "
                                    f"open, at most {self.cfg.max_sessions} (--max_sessions); close one and reload"})
                await ws.close(code=1013)  # try again later
                return
            session = Session(self)
            self.sessions.add(session)
            try:
                await asyncio.to_thread(session.reset, 0)
                await ws.send_json({"type": "hello", "camera_keys": list(self.model.cfg.camera_keys),
                                    "episodes": int(len(self.clips.cache.episode_start)), "keymap": KEY_HELP,
                                    "has_policy": self.policy is not None, "keyboard": self.axes is not None})
                await self._serve(ws, session)
            except WebSocketDisconnect:
                pass
            finally:
                self.sessions.discard(session)

        return Starlette(routes=[Route("/", page), WebSocketRoute("/ws", socket)])

    async def _serve(self, ws, session: Session) -> None:
        from starlette.websockets import WebSocketDisconnect

        inbox: asyncio.Queue = asyncio.Queue(maxsize=256)
        acked = asyncio.Event()
        awaiting_ack = False

        async def receive():
            while True:
                text = await ws.receive_text()
                if text.replace(" ", "") == '{"type":"ack"}':  # never dropped, never queued behind a flood
                    acked.set()
                    continue
                if inbox.full():  # a flood: drop the oldest (the newest key state is what counts)
                    inbox.get_nowait()
                inbox.put_nowait(text)

        reader = asyncio.create_task(receive())
        try:
            await ws.send_json(session.frame_message())
            awaiting_ack = True
            while True:
                if reader.done():
                    reader.result()  # re-raises the disconnect
                if acked.is_set():
                    acked.clear()
                    awaiting_ack = False
                while not inbox.empty():
                    error = self.handle(session, inbox.get_nowait())
                    if error == "ack":
                        awaiting_ack = False
                    elif error:
                        await ws.send_json({"type": "error", "message": error})
                    elif session.to_save is not None:
                        frames, session.to_save = session.to_save, None
                        await asyncio.to_thread(self.recorder.save, frames, self.cfg.task)
                        session.episodes_recorded += 1
                        if not awaiting_ack:
                            await ws.send_json(session.frame_message())
                            awaiting_ack = True
                    elif session.pending_frame:
                        session.pending_frame = False
                        if not awaiting_ack:
                            await ws.send_json(session.frame_message())
                            awaiting_ack = True
                run = (not session.paused) or session.single_step
                if run and not awaiting_ack:
                    session.single_step = False
                    await asyncio.to_thread(session.advance)
                    await ws.send_json(session.frame_message())
                    awaiting_ack = True
                else:
                    await asyncio.sleep(0.01)
        except WebSocketDisconnect:
            pass
        finally:
            reader.cancel()

    def handle(self, session: Session, text: str) -> str | None:
        """Apply one client message; returns an error message, "ack", or None."""
        if len(text.encode()) > self.cfg.max_message_bytes:
            return f"message too large: {len(text.encode())} bytes, at most {self.cfg.max_message_bytes}"
        if json_depth(text) > self.cfg.max_json_depth:  # json.loads recurses: "[" * 2000 would blow the stack
            return f"message nested too deeply: at most {self.cfg.max_json_depth} levels of arrays/objects"
        try:
            message = json.loads(text)
        except json.JSONDecodeError as err:
            return f"malformed JSON: {err.msg}"
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            return 'messages must be JSON objects with a string "type"'
        kind = message["type"]
        try:
            if kind == "ack":
                return "ack"
            if kind == "keys":
                if self.axes is None:
                    return (f"keys: keyboard control needs end-effector delta actions (x, y, z); this model's actions "
                            f"are {self.model.cfg.action_names}: switch to policy mode (--policy=...)")
                down = message.get("down")
                if not isinstance(down, list) or len(down) > 16 or not all(isinstance(k, str) for k in down):
                    return 'keys: "down" must be a list of at most 16 key names'
                session.held = {k for k in down if k in KEYMAP or k in GRIPPER_KEYS}
            elif kind == "reset":
                episode = message.get("episode", 0)
                if not isinstance(episode, int) or isinstance(episode, bool):
                    return 'reset: "episode" must be an integer'
                session.reset(episode)
                session.pending_frame = True
            elif kind == "mode":
                if message.get("mode") not in ("human", "policy"):
                    return 'mode: expected "human" or "policy"'
                if message["mode"] == "policy" and self.policy is None:
                    return "mode: no policy was given (--policy=...)"
                session.mode = message["mode"]
            elif kind == "pause":
                if not isinstance(message.get("paused"), bool):
                    return 'pause: "paused" must be true or false'
                session.paused = message["paused"]
            elif kind == "step":
                session.single_step = True
            elif kind == "record":
                if not isinstance(message.get("on"), bool):
                    return 'record: "on" must be true or false'
                if message["on"] and session.recording is None:
                    session.recording = []
                elif not message["on"] and session.recording is not None:
                    frames, session.recording = session.recording, None
                    session.to_save = frames or None
                    session.pending_frame = True
            else:
                return f"unknown message type {kind!r}"
        except ValueError as err:
            return str(err)
        return None



def main(argv: list[str] | None = None) -> None:
    import draccus
    import uvicorn

    cfg = draccus.parse(TeleopConfig, args=argv)
    server = build_server(cfg)
    suffix = f"?token={cfg.token}" if cfg.token else ""
    print(f"open http://{cfg.host}:{cfg.port}/{suffix}  (remote GPU: ssh -N -L {cfg.port}:127.0.0.1:{cfg.port} "
          f"user@host, then http://127.0.0.1:{cfg.port}/{suffix})")
    # Frames up to 1 MiB reach the handler, which answers anything over max_message_bytes with an error message;
    # only beyond that does the socket layer close the connection (code 1009).
    uvicorn.run(server.app, host=cfg.host, port=cfg.port, log_level="warning", ws_max_size=2**20)


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>worldmodel teleop</title>
<style>
 body { font-family: sans-serif; margin: 16px; background: #111; color: #eee; }
 #views img { width: 256px; height: 256px; image-rendering: pixelated; margin-right: 8px; border: 1px solid #444; }
 #views figure { display: inline-block; margin: 0 8px 8px 0; } figcaption { font-size: 12px; color: #aaa; }
 button, input { margin-right: 6px; } #status span { margin-right: 14px; } table { font-size: 13px; }
 #error { color: #f66; } .rec { color: #f44; font-weight: bold; }
</style></head><body>
<h2>worldmodel: drive the robot in imagination</h2>
<div id="views"></div>
<div id="status"><span>mode: <b id="mode">-</b></span><span>fps: <b id="fps">-</b></span>
<span>step: <b id="step">0</b></span><span>episode: <b id="episode">0</b></span>
<span id="rec"></span><span>recorded: <b id="recorded">0</b></span></div>
<p>action: <code id="action">-</code></p><p>state: <code id="state">-</code></p>
<p><label>reset to episode <input id="ep" type="number" value="0" min="0" style="width:60px"></label>
<button id="reset">reset</button><button id="modebtn">human / policy (m)</button>
<button id="pause">pause (p)</button><button id="stepbtn">step (n)</button><button id="recbtn">record (c)</button></p>
<table id="keys"></table><p id="error"></p>
<script>
const token = new URLSearchParams(location.search).get("token");
const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws" + (token ? "?token=" + encodeURIComponent(token) : ""));
const held = new Set(); let paused = false, recording = false, mode = "human", frames = 0;
const send = (m) => { if (ws.readyState === 1) ws.send(JSON.stringify(m)); };
ws.onmessage = (event) => {
  const m = JSON.parse(event.data);
  if (m.type === "hello") {
    const views = document.getElementById("views");
    for (const k of m.camera_keys) views.insertAdjacentHTML("beforeend", `<figure><img id="${k}" alt="${k}"><figcaption>${k.replace("observation.images.", "")}</figcaption></figure>`);
    document.getElementById("keys").innerHTML = Object.entries(m.keymap).map(([k, v]) => `<tr><td><b>${k}</b></td><td>${v}</td></tr>`).join("");
  } else if (m.type === "frame") {
    for (const [k, png] of Object.entries(m.images)) { const img = document.getElementById(k); if (img) img.src = "data:image/png;base64," + png; }
    frames += 1; document.body.dataset.frames = frames;
    for (const f of ["mode", "fps", "step", "episode"]) document.getElementById(f).textContent = m[f];
    document.getElementById("recorded").textContent = m.episodes_recorded;
    document.getElementById("action").textContent = JSON.stringify(m.action);
    document.getElementById("state").textContent = JSON.stringify(m.state.slice(0, 7));
    document.getElementById("rec").innerHTML = m.recording ? '<span class="rec">&#9679; REC</span>' : "";
    paused = m.paused; recording = m.recording; mode = m.mode;
    send({type: "ack"});
  } else if (m.type === "error") { document.getElementById("error").textContent = m.message; }
};
const keyName = (e) => e.key.length === 1 ? e.key.toLowerCase() : e.key;
document.addEventListener("keydown", (e) => {
  const k = keyName(e); if (e.target.tagName === "INPUT") return;
  if (e.repeat) { e.preventDefault(); return; }  // held keys are sent once; the server keeps them held
  if (k === "p") { send({type: "pause", paused: !paused}); paused = !paused; return; }
  if (k === "n") { send({type: "step"}); return; }
  if (k === "m") { send({type: "mode", mode: mode === "human" ? "policy" : "human"}); return; }
  if (k === "c") { send({type: "record", on: !recording}); recording = !recording; return; }
  held.add(k); send({type: "keys", down: [...held]}); e.preventDefault();
});
document.addEventListener("keyup", (e) => { held.delete(keyName(e)); send({type: "keys", down: [...held]}); });
window.addEventListener("blur", () => { held.clear(); send({type: "keys", down: []}); });
document.getElementById("reset").onclick = () => send({type: "reset", episode: parseInt(document.getElementById("ep").value || "0")});
document.getElementById("modebtn").onclick = () => send({type: "mode", mode: mode === "human" ? "policy" : "human"});
document.getElementById("pause").onclick = () => { send({type: "pause", paused: !paused}); paused = !paused; };
document.getElementById("stepbtn").onclick = () => send({type: "step"});
document.getElementById("recbtn").onclick = () => { send({type: "record", on: !recording}); recording = !recording; };
</script></body></html>
"""
