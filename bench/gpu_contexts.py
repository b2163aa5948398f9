"""Which processes hold GPU memory while the daemon runs (the supervisor should hold none).

    python3 bench/gpu_contexts.py MODEL_DIR      (on the GPU machine; see bench/gpu.sh)
Starts the whole daemon on an empty inbox, waits for the model to load, asks nvidia-smi for the
compute processes and their memory, and writes bench/results/gpu-contexts.json.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "bench")]

from batch import _DAEMON, _meta, _wait  # noqa: E402
from configs import config_dict, to_toml  # noqa: E402


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        toml = root / "ocrd.toml"
        toml.write_text(to_toml(config_dict(root, model={"path": sys.argv[1], "mode": "small"})))
        (root / "inbox").mkdir()
        proc = subprocess.Popen([sys.executable, "-c", _DAEMON, str(toml), "ocrd.daemon.engines.mlxvlm:MlxVlmEngine"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait(lambda: _meta(root / "state" / "ledger.db", "model_status") == "ok", 600, "model loaded")
            time.sleep(2)   # a fixed pause is fine in a bench: let the worker's first allocations land
            out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader"],
                                 capture_output=True, text=True).stdout
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    apps = [dict(zip(("pid", "used"), (v.strip() for v in line.split(",")))) for line in out.splitlines() if line]
    result = {"supervisor_pid": proc.pid, "compute_apps": apps,
              "supervisor_holds_gpu": any(a["pid"] == str(proc.pid) for a in apps)}
    print(json.dumps(result))
    (ROOT / "bench" / "results" / "gpu-contexts.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
