"""mmsoft.utils.case_subprocess: the benchmark tools' fresh-interpreter runner, on tiny worker scripts."""
import textwrap

from mmsoft.utils.case_subprocess import run_case_subprocess

WORKER = textwrap.dedent("""
    import json, os, sys
    spec = json.loads(sys.argv[sys.argv.index("--worker") + 1])
    print("log line {not json")
    if spec["mode"] == "ok":
        print(json.dumps({**spec, "cwd": os.getcwd(), "env": os.environ.get("CASE_ENV")}))
    elif spec["mode"] == "fail":
        sys.exit("worker broke")
    elif spec["mode"] == "sleep":
        import time; time.sleep(30)
""")


def test_result_env_and_cwd(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = run_case_subprocess(script, {"mode": "ok"}, timeout=60, env={"CASE_ENV": "x"}, cwd=tmp_path)
    assert out == {"mode": "ok", "cwd": str(tmp_path), "env": "x"}


def test_errors_become_entries(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    failed = run_case_subprocess(script, {"mode": "fail"}, timeout=60)
    assert failed["mode"] == "fail" and failed["error"] == "exit 1: worker broke"
    silent = run_case_subprocess(script, {"mode": "none"}, timeout=60)
    assert silent["error"].startswith("exit 0: ")  # ran, but printed no JSON result
    slow = run_case_subprocess(script, {"mode": "sleep"}, timeout=1)
    assert slow["error"] == "timeout after 1 s"
