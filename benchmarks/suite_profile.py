"""Where the test suite's time goes: wall time and JAX compile time per test, per file.

A pytest plugin plus its report. Each test process (xdist worker or not) appends one JSON
line per test to the file named by --suite-profile: wall seconds (setup + call + teardown)
CPU seconds of the process (all threads: steadier than wall time on a shared machine)
and the seconds JAX spent tracing, lowering to MLIR and compiling with XLA inside it (JAX's
own monitoring events, so eager op-by-op compiles count too), plus persistent-cache hits.
Compiles in subprocesses the test starts (main.py runs) are not seen: they show as run time.

  python -m pytest -n 2 -p benchmarks.suite_profile --suite-profile=/tmp/prof.jsonl
  python -m benchmarks.suite_profile /tmp/prof.jsonl        # per-file table, slowest tests
"""
import collections
import json
import os
import sys
import time

_EVENTS = {"/jax/core/compile/jaxpr_trace_duration": "trace_s",
           "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
           "/jax/core/compile/backend_compile_duration": "compile_s",
           "/jax/compilation_cache/cache_retrieval_time_sec": "cache_read_s"}


def pytest_addoption(parser):
  parser.addoption("--suite-profile", default=None, help="append per-test timings (JSON lines)")


class _Recorder:
  """Sums JAX's compile-time events into the test that is running."""

  def __init__(self, path):
    self.path, self.current = path, None
    import jax  # pylint: disable=g-import-not-at-top
    jax.monitoring.register_event_duration_secs_listener(self._on_duration)
    jax.monitoring.register_event_listener(self._on_event)
    self.start_s = time.perf_counter()

  def _on_duration(self, event, duration, **_):
    if self.current is not None and event in _EVENTS:
      self.current[_EVENTS[event]] += duration

  def _on_event(self, event, **_):
    if self.current is not None and event == "/jax/compilation_cache/cache_hits":
      self.current["cache_hits"] += 1

  def pytest_runtest_protocol(self, item):
    self.current = collections.Counter(test=item.nodeid, file=item.nodeid.split("::")[0])
    self.current["t0"], self.current["c0"] = time.perf_counter(), time.process_time()

  def pytest_runtest_logreport(self, report):
    if self.current is not None and (report.failed or report.when == "call"):
      self.current["outcome"] = report.outcome if report.failed else self.current.get(
          "outcome", report.outcome)

  def pytest_runtest_logfinish(self, nodeid):
    row, self.current = self.current, None
    if row is None:
      return
    row["wall_s"] = time.perf_counter() - row.pop("t0")
    row["cpu_s"] = time.process_time() - row.pop("c0")
    row["worker"] = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(self.path, "a", encoding="utf-8") as f:
      f.write(json.dumps(dict(row)) + "\n")


def pytest_configure(config):
  path = config.getoption("--suite-profile")
  if path:
    config.pluginmanager.register(_Recorder(os.path.abspath(path)), "suite_profile_recorder")


def report(path, top=30):
  """Prints seconds per file (wall, compile = trace + lower + XLA) and the slowest tests."""
  rows = [json.loads(line) for line in open(path, encoding="utf-8")]
  keys = ("wall_s", "cpu_s", "trace_s", "lower_s", "compile_s")
  per_file = collections.defaultdict(collections.Counter)
  for row in rows:
    per_file[row["file"]].update({k: row.get(k, 0.0) for k in keys})
    per_file[row["file"]]["tests"] += 1
  total = collections.Counter()
  print(f"{'file':44s} {'tests':>5s} {'wall s':>7s} {'cpu s':>7s} {'jax compile s':>13s} {'(xla)':>6s}")
  for name, sums in sorted(per_file.items(), key=lambda kv: -kv[1]["wall_s"]):
    total.update(sums)
    jax_s = sums["trace_s"] + sums["lower_s"] + sums["compile_s"]
    print(f"{name:44s} {sums['tests']:5d} {sums['wall_s']:7.1f} {sums['cpu_s']:7.1f} {jax_s:13.1f} "
          f"{sums['compile_s']:6.1f}")
  jax_s = total["trace_s"] + total["lower_s"] + total["compile_s"]
  print(f"{'total':44s} {total['tests']:5d} {total['wall_s']:7.1f} {total['cpu_s']:7.1f} {jax_s:13.1f} "
        f"{total['compile_s']:6.1f}")
  print(f"\nslowest {top} tests (wall s, cpu s, jax compile s):")
  for row in sorted(rows, key=lambda r: -r["wall_s"])[:top]:
    jax_s = row.get("trace_s", 0) + row.get("lower_s", 0) + row.get("compile_s", 0)
    print(f"{row['wall_s']:7.1f} {row.get('cpu_s', 0):7.1f} {jax_s:7.1f}  {row['test']}")


if __name__ == "__main__":
  report(sys.argv[1])
