"""The push at the end of a sweep: the best run (or every finished one) through the push step's own logic."""
from __future__ import annotations

import time

from components.push.params import SPEC as PUSH
from pipeline.sweep.compare import read_json, score


def push_points(entries: list[dict], best: dict | None, mode: str, params: dict, output_dir) -> list[dict]:
    """Pushes the best (or every finished point, best last so LATEST names it) through the push step's logic.

    Each model is pushed only when blessed, unless force_push; output_dir(entry) is where its push.json goes.
    """
    from components.common import registry
    from components.push import logic as push_logic
    from components.report.records import step_figures

    if mode == "none" or best is None:
        return []
    if mode == "best":
        chosen = [best]
    else:
        done = [e for e in entries if e["status"] == "succeeded" and e.get("measures")]
        chosen = sorted(done, key=lambda e: (score(e), -entries.index(e)))
    pushed = []
    for e in chosen:
        start = time.monotonic()
        out = output_dir(e)
        done = read_json(out, registry.PUSH_FILE)
        if done.get("pushed"):
            # Picked before (sweep-pick again, once more runs have finished): the same model is not pushed twice.
            rec = dict(done, message=f"already pushed as version {done['version']} ({done['uri']})")
        else:
            rec = None
        try:
            rec = rec or push_logic.run(e["model"], e["evaluation"], out, destination=params["registry"],
                                        model_name=params["model_name"], force=params["force_push"],
                                        keep=params["keep_versions"],
                                        # a plan saved before the check existed has no such key: the step's default
                                        infra_validate=params.get("infra_validate", PUSH.defaults.infra_validate))
        except push_logic.PushError as err:
            rec = {"pushed": False, "message": f"not pushed: {err}", "reasons": []}
        failed = [r for r in rec.get("reasons", []) if r.startswith("fail")]
        message = rec["message"] + (f" ({'; '.join(failed)})" if failed and not rec["pushed"] else "")
        entry = {"name": e["name"], "pushed": rec["pushed"], "version": rec.get("version"), "uri": rec.get("uri"),
                 "message": message, "output": out}
        e["_push"] = {"seconds": time.monotonic() - start, "output": out,
                      "figures": step_figures("push", {"pushed": out})}
        pushed.append(entry)
    return pushed
