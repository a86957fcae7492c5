"""The memory viewer: one static HTML page per run (no server, no script) showing, for a few held-out
episodes at each eval point, every turn as the model lived it: the context it saw (decoded from the
exact token ids it was given), the memory / internal state it wrote, its action, the env's reply, the
reward, and the token count of the context. It is where one sees what an agent learned to keep, and
when its memory collapses (empty), or copies (the observation pasted in whole).

`episode_view` turns a Trajectory into plain dicts (JSON-able, tested without a browser); `render`
writes the page; the trainer calls `Viewer.add` after each eval and the page is rewritten atomically.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from memrl.agents.evaluate import episode_em
from memrl.io import write_atomic
from memrl.records import Trajectory

EPISODES_PER_POINT = 3


def episode_view(traj: Trajectory, tokenizer) -> dict:
    """A trajectory as the viewer shows it: its questions, answers, scores, and one dict per turn."""
    turns = []
    log = traj.info.get("turn_log") or []
    per_turn_contexts = len(traj.contexts) == len(log)  # memory agents: one context per turn
    for t, rec in enumerate(log):
        ctx = traj.contexts[t] if per_turn_contexts else (traj.contexts[0] if traj.contexts else None)
        prompt = ctx.token_ids[: rec["prompt_tokens"]] if ctx is not None else []
        turns.append({
            "turn": t + 1,
            "context": tokenizer.decode(prompt),
            "context_tokens": rec["prompt_tokens"] + rec["completion_tokens"],
            "completion": rec["completion"],
            "memory": rec["memory"],
            "action": rec["action"] if rec["ok"] else None,
            "observation": rec["observation"],
            "reward": rec["reward"],
        })
    return {"questions": list(traj.info.get("objectives") or []), "answers": traj.info.get("answers"),
            "reward": traj.reward, "em": episode_em(traj.info), "failed": traj.failed,
            "error": traj.info.get("error"), "turns": turns}


class Viewer:
    """The page of one run: eval points in the order they ran, a few episodes each. The points are also kept as
    JSON beside the page (`<page>.json`), so that a resumed run (`resume=True`) adds to the page its killed
    process wrote instead of starting an empty one."""

    def __init__(self, path: Path, title: str, resume: bool = False) -> None:
        self.path, self.title = Path(path), title
        self.data = self.path.with_suffix(".json")
        self.points: dict[str, list[dict]] = json.loads(self.data.read_text()) if resume and self.data.exists() else {}

    def add(self, point: str, trajs: list[Trajectory], tokenizer, episodes: int = EPISODES_PER_POINT) -> None:
        self.points[point] = [episode_view(t, tokenizer) for t in trajs[:episodes]]
        write_atomic(self.data, json.dumps(self.points, default=str).encode())
        write_atomic(self.path, render(self.title, self.points).encode())


def _e(text) -> str:
    return html.escape("" if text is None else str(text))


STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;max-width:1200px}
h2{border-bottom:1px solid #ccc;margin-top:2em}
.ep{border:1px solid #ddd;border-radius:6px;padding:.5em 1em;margin:.8em 0}
.turn{display:grid;grid-template-columns:9em 1fr;gap:.2em .8em;border-top:1px dashed #ddd;padding:.5em 0}
.k{color:#555;font-size:.9em}
pre{white-space:pre-wrap;margin:0;font-size:.85em;background:#f7f7f7;padding:.3em}
.mem pre{background:#eef6ff}.bad{color:#b00}.ok{color:#070}
"""


def render(title: str, points: dict[str, list[dict]]) -> str:
    """The whole page as a string: self-contained HTML, every model- or env-written text escaped."""
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title>",
           f"<style>{STYLE}</style></head><body><h1>{_e(title)}: memory viewer</h1>",
           "<p>Held-out episodes at each eval point. Per turn: the context the model saw (its exact tokens, "
           "decoded), the memory it wrote, its action, the env's reply and reward.</p>"]
    for point, episodes in points.items():
        out.append(f"<h2 class='point'>{_e(point)}</h2>")
        for i, ep in enumerate(episodes):
            verdict = "ok" if ep["em"] else "bad"
            out.append(f"<details class='ep' open><summary>episode {i + 1}: <span class='{verdict}'>EM "
                       f"{ep['em']:.2f}</span>, reward {ep['reward']:.2f}, {len(ep['turns'])} turns"
                       f"{', failed: ' + _e(ep['error']) if ep['failed'] else ''}</summary>")
            out.append(f"<p class='k'>questions: {_e('; '.join(map(str, ep['questions'])))} | gold: "
                       f"{_e(ep['answers'])}</p>")
            for t in ep["turns"]:
                action = _e(t["action"]) if t["action"] else "<span class='bad'>malformed (no valid action)</span>"
                memory = (f"<pre>{_e(t['memory'])}</pre>" if t["memory"] is not None
                          else "<span class='bad'> none written (no memory block)</span>")
                out.append(
                    f"<div class='turn'><div class='k'>turn {t['turn']}<br>{t['context_tokens']} tokens</div><div>"
                    f"<details><summary class='k'>context as the model saw it</summary><pre>{_e(t['context'])}"
                    f"</pre></details>"
                    f"<div class='mem'><span class='k'>memory</span>{memory}</div>"
                    f"<div><span class='k'>action</span> {action}</div>"
                    f"<details><summary class='k'>model output</summary><pre>{_e(t['completion'])}</pre></details>"
                    f"<div><span class='k'>observation</span><pre>{_e(t['observation'])}</pre></div>"
                    f"<div class='k'>reward {t['reward']:.2f}</div></div></div>")
            out.append("</details>")
    out.append("</body></html>")
    return "\n".join(out)
