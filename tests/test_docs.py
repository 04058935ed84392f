"""Documentation that tests itself: README.md and docs/*.md.

- Every fenced ```python block runs, at a tiny size (BLOCKS lists the textual substitutions and
  the placeholder names a prelude binds to tiny arrays), or is listed with the reason it does not
  run here and where it is run instead.
- Every command parses: `make X` names a Makefile target; `python -m MOD ...` is parsed by
  MOD's own argument parser (and its --help lists every flag); pip's pins, files and versions
  agree with requirements.txt and setup.py; a script it runs exists.
- Every path, link, `tfinvconv.x.y` / `tf.x` name, keyword, test name and TFINVCONV_* variable
  named exists.

The blocks, `--help` and the argument parsers run in one subprocess (one TensorFlow import):
`python tests/test_docs.py JOB.json RESULT.json` is that subprocess.
"""

import argparse
import contextlib
import fnmatch
import functools
import glob
import io
import json
import os
import re
import shlex
import subprocess
import sys
import traceback

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCUMENTS = ["README.md"] + sorted(os.path.relpath(p, ROOT)
                                   for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))
LANGUAGES = {"python", "sh", "bash", "console", "text"}
SHELL = {"sh", "bash", "console"}
PYTHONS = {"python", "python3", ".venv/bin/python"}
COMMANDS = PYTHONS | {"make", "pip", "horovodrun", "bash"}
# setup.py's console scripts and the modules they run (test_console_scripts_match_setup checks).
CONSOLE_SCRIPTS = {"tfinvconv-train": "tfinvconv.train"}
# Modules whose entry point parses its arguments before doing anything else: the runner parses
# the documented commands with their own parsers and stops there. A module not listed here is
# only imported (a command with flags for it fails: check its entry point, then list it).
PARSED_MODULES = {"tfinvconv.train", "benchmarks", "benchmarks.quality", "benchmarks.bench_mixed",
                  "benchmarks.bench_portable", "benchmarks.bench_models"}
# Flags that are pip's, named alone in the prose.
OTHER_FLAGS = {"--no-deps", "--no-build-isolation"}


class Run:
  """A python block run at a tiny size. `subs`: (old, new) replacements, each must occur;
  `after`: the id of a block whose namespace this one continues (the README's model); `check`:
  code run after the block."""

  def __init__(self, block_id, subs=(), after=None, check=""):
    self.id, self.subs, self.after, self.check = block_id, list(subs), after, check


class Elsewhere:
  """A python block that is a file run by another test, which this test checks it is."""

  def __init__(self, block_id, path, test, reason):
    self.id, self.path, self.test, self.reason = block_id, path, test, reason


TINY_GLOW = [("(32, 32, 3)", "(8, 8, 3)"), ("num_levels=3", "num_levels=2"),
             ("depth=32", "depth=1"), ("hidden_channels=512", "hidden_channels=8")]
RECIPES = "examples/distributed/"
RECIPE_TEST = "tests/train/test_recipes.py"
# (document, a string unique to the block, or recipe:NAME for docs/multi_gpu.md's recipes).
BLOCKS = {
    ("README.md", "ops.inverse_causal_conv2d"): Run(
        "ops", check="assert _np.allclose(x, _x0, atol=1e-4), abs(x - _x0).max()"),
    ("README.md", "model.fit(uint8_image_dataset"): Run(
        "glow", TINY_GLOW + [("epochs=...", "epochs=1"), ("model.sample(16,", "model.sample(2,")]),
    ("README.md", "rebuild_errors(images)"): Run(
        "backprop", [("(256, 256, 3)", "(8, 8, 3)"), ("num_levels=6", "num_levels=2"),
                     ("depth=32", "depth=2"), ("hidden_channels=512", "hidden_channels=8"),
                     ("epochs=...", "epochs=1")],
        after="glow", check="assert len(errors) == 4 and max(e for *_, e in errors) < 1e-4, errors"),
    ("README.md", "export_saved_model"): Run(
        "saving", [("loaded.sample(16,", "loaded.sample(2,")], after="glow"),
    ("README.md", "set_global_policy"): Run(
        "mixed_precision", [("(32, 32, 3), ...)",
                             "(8, 8, 3), num_levels=2, depth=1, hidden_channels=8)")],
        after="glow", check="assert tf_keras.mixed_precision.global_policy().name == "
                            "'mixed_bfloat16' and model.compute_dtype == 'float32'"),
    ("docs/multi_gpu.md", "recipe:common.py"): Elsewhere(
        "recipe_common", RECIPES + "common.py", RECIPE_TEST,
        "the recipes' shared module; the recipe test imports it and runs the four recipes"),
    ("docs/multi_gpu.md", "recipe:horovod_keras.py"): Elsewhere(
        "recipe_horovod_keras", RECIPES + "horovod_keras.py", RECIPE_TEST,
        "needs horovodrun with two Gloo ranks (make horovod)"),
    ("docs/multi_gpu.md", "recipe:horovod_custom_loop.py"): Elsewhere(
        "recipe_horovod_custom_loop", RECIPES + "horovod_custom_loop.py", RECIPE_TEST,
        "needs horovodrun with two Gloo ranks (make horovod)"),
    ("docs/multi_gpu.md", "recipe:mirrored_fit.py"): Elsewhere(
        "recipe_mirrored_fit", RECIPES + "mirrored_fit.py", RECIPE_TEST,
        "splits the CPU into two logical devices, which only a fresh process can"),
    ("docs/multi_gpu.md", "recipe:multiworker_fit.py"): Elsewhere(
        "recipe_multiworker_fit", RECIPES + "multiworker_fit.py", RECIPE_TEST,
        "needs two worker processes with TF_CONFIG"),
}
# What the placeholder names in the blocks stand for: tiny real data of the tiny model's shape.
PRELUDE = """
import numpy as _np
import tensorflow as _tf
_rng = _np.random.default_rng(0)
x = _rng.normal(size=(2, 8, 8, 3)).astype(_np.float32) * 0.1  # scaled data / op input
kernel = _rng.normal(size=(3, 3, 3, 3)).astype(_np.float32) * 0.1
kernel[2, 2] += _np.eye(3, dtype=_np.float32)  # same-pixel diagonal 1: invertible
_x0 = x.copy()
images = _rng.integers(0, 256, size=(4, 8, 8, 3), dtype=_np.uint8)
test_images = images
uint8_image_dataset = _tf.data.Dataset.from_tensor_slices(images).batch(2)
"""
# Paths that are not files of this repository, and why.
NOT_IN_REPO = {
    ".venv/": "created by make setup",
    "build/wheels/": "make horovod's wheel cache",
    "build/dist/": "where make sdist and make wheel write",
    "tfinvconv/ops/_inverse_conv_ops.tf_version": "written by the build next to the library",
    "tfinvconv/ops/_inverse_conv_ops.cuda.json": "written by the build next to the library",
    "runs/<dataset>-<mixer>": "a training run's folder",
    "tensorboard/": "inside a run folder",
    "samples/*.png": "inside a run folder",
    "checkpoints/": "inside a run folder",
    "metrics.json": "inside a run folder",
    "model.json": "inside a run folder",
    "model.keras": "inside a run folder",
    "ranks/rank<N>.json": "inside a run folder",
    "discover_hosts.sh": "a user's host-discovery script for Horovod elastic",
    "test/": "a subfolder of a user's image folder (with train/)",
    "train/": "a subfolder of a user's image folder (with test/)",
}
# Folders that hold no sources (outputs, caches), for a copy that is not a git checkout.
UNTRACKED = {"build", "runs", "peers", "__pycache__", "tfinvconv.egg-info"}
# Files of another project, named where this one patches them.
HOROVOD_PATCH = "tools/patch_horovod.py"
KNOWN_EXTENSIONS = {"py", "md", "json", "cc", "h", "cu", "sh", "txt", "toml", "png", "so", "whl",
                    "tf_version", "cfg"}
PATH_LIKE = re.compile(r"[\w.<>*{},/+-]+")
NAME = re.compile(r"\b(tfinvconv|tf|tfp|tfb|tfd|tf_keras|Glow)((?:\.\w+)+)")


# ---------------------------------------------------------------------------------------------
# Reading the documents


def _read(path):
  with open(os.path.join(ROOT, path)) as f:
    return f.read()


FENCE = re.compile(r"^```(\w*)[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)


@functools.lru_cache(maxsize=None)
def fenced_blocks():
  """(document, language, label, code) of every fenced block; label: recipe:NAME or ''."""
  found = []
  for doc in DOCUMENTS:
    text = _read(doc)
    for match in FENCE.finditer(text):
      before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
      label = re.fullmatch(r"<!-- (recipe:\S+) -->", before)
      found.append((doc, match.group(1), label.group(1) if label else "", match.group(2)))
  return found


def prose(doc):
  """The document without fenced blocks (their lines kept blank) and without HTML comments."""
  text = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), _read(doc))
  return re.sub(r"<!--.*?-->", "", text)


@functools.lru_cache(maxsize=None)
def spans():
  """(document, text) of every inline code span, whitespace collapsed."""
  return [(doc, " ".join(span.split())) for doc in DOCUMENTS
          for span in re.findall(r"(?<!`)`([^`]+)`(?!`)", prose(doc))]


def shell_lines():
  """(document, line) of every command: fenced shell lines and inline spans that start with
  a command (after VAR=value assignments)."""
  lines = [(doc, line) for doc, language, _, code in fenced_blocks() if language in SHELL
           for line in code.replace("\\\n", " ").splitlines() if line.split("#")[0].strip()]
  for doc, span in spans():
    words = _words(span)
    if words and words[0] in COMMANDS:
      lines.append((doc, span))
  return lines


def _words(command):
  """The command's words without leading VAR=value assignments and without comments."""
  try:
    words = shlex.split(command, comments=True)
  except ValueError:
    return []
  while words and re.fullmatch(r"\w+=.*", words[0]):
    words = words[1:]
  if words and os.path.basename(words[0]) in CONSOLE_SCRIPTS:  # the same as python -m MODULE
    words = ["python", "-m", CONSOLE_SCRIPTS[os.path.basename(words[0])], *words[1:]]
  return words


def _alternatives(words):
  """`--flag a|b` stands for two commands."""
  for i, word in enumerate(words):
    if "|" in word and i > 0 and words[i - 1].startswith("--"):
      return [alt for choice in word.split("|")
              for alt in _alternatives(words[:i] + [choice] + words[i + 1:])]
  return [words]


def _until_placeholder(args):
  return args[:args.index("...")] if "..." in args else args


def _launched(words):
  """The command horovodrun launches (from its python on), else the command itself."""
  if words and words[0] == "horovodrun":
    return next((words[i:] for i, w in enumerate(words) if w in PYTHONS), [])
  return words


def python_commands():
  """(document, module, argv) of every `python -m MODULE ...`, horovodrun's included."""
  found = []
  for doc, line in shell_lines():
    words = _launched(_words(line))
    if len(words) >= 3 and words[0] in PYTHONS and words[1] == "-m":
      for alternative in _alternatives(_until_placeholder(words[3:])):
        found.append((doc, words[2], alternative))
  return found + prose_flags()


def prose_flags():
  """(document, "tfinvconv.train", argv) for a flag named alone in the prose with a value (`--strategy
  mirrored`): the documents name the trainer's flags alone, and pip's (OTHER_FLAGS)."""
  found = []
  for doc, span in spans():
    words = span.split()
    if words and words[0].startswith("--") and words[0] not in OTHER_FLAGS and len(words) == 2 and \
       not re.fullmatch(r"[A-Z]+", words[1]):
      found += [(doc, "tfinvconv.train", alternative) for alternative in _alternatives(words)]
  return found


# ---------------------------------------------------------------------------------------------
# The subprocess: python blocks, --help and argument parsing, names


class _Parsed(Exception):
  pass


def _parse_only(module, argv):
  """Runs MODULE as `python -m MODULE argv` until its parser has read argv (the trainer: until
  it has made its configuration); returns what it printed and its exit code (0: parsed)."""
  import runpy  # pylint: disable=import-outside-toplevel
  if module == "tfinvconv.train":
    from tfinvconv.train.__main__ import parse  # pylint: disable=import-outside-toplevel
    output = io.StringIO()
    try:
      with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        parse(list(argv))
      return output.getvalue(), 0
    except SystemExit as exit_:
      return output.getvalue(), exit_.code
  original = argparse.ArgumentParser.parse_known_args

  def parse_known_args(self, args=None, namespace=None):
    namespace, extras = original(self, args, namespace)
    if extras:
      self.error(f"unrecognized arguments: {' '.join(extras)}")
    raise _Parsed()

  argparse.ArgumentParser.parse_known_args = parse_known_args
  saved_argv, output = sys.argv, io.StringIO()
  sys.argv = [module] + list(argv)
  try:
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
      runpy.run_module(module, run_name="__main__", alter_sys=True)
    return output.getvalue(), "ran to the end without parsing its arguments"
  except _Parsed:
    return output.getvalue(), 0
  except SystemExit as exit_:
    return output.getvalue(), exit_.code
  finally:
    argparse.ArgumentParser.parse_known_args = original
    sys.argv = saved_argv


def _run_blocks(blocks):
  import tf_keras  # pylint: disable=import-outside-toplevel
  namespaces, results = {}, {}
  for block in blocks:
    namespace = dict(namespaces.get(block["after"], {"__name__": "__doc_block__"}))
    try:
      for name, code in (("prelude", PRELUDE), (block["id"], block["code"]),
                         (block["id"] + ":check", block["check"])):
        exec(compile(code, name, "exec"), namespace)  # pylint: disable=exec-used
      results[block["id"]] = "ok"
    except Exception:  # pylint: disable=broad-except
      results[block["id"]] = traceback.format_exc(limit=-6)
    finally:
      tf_keras.mixed_precision.set_global_policy("float32")
    namespaces[block["id"]] = namespace
  return results


def _resolve(name):
  """Imports and follows a dotted name; raises if any part is missing."""
  import importlib  # pylint: disable=import-outside-toplevel
  aliases = {"tf": "tensorflow", "tfp": "tensorflow_probability",
             "tfb": "tensorflow_probability.bijectors",
             "tfd": "tensorflow_probability.distributions", "Glow": "tfinvconv.models.Glow"}
  parts = name.split(".")
  parts = aliases.get(parts[0], parts[0]).split(".") + parts[1:]
  value = importlib.import_module(parts[0])
  for i, part in enumerate(parts[1:], 1):
    if not hasattr(value, part):
      importlib.import_module(".".join(parts[:i + 1]))
    value = getattr(value, part)
  return value


def _check_call(name, keywords):
  import inspect  # pylint: disable=import-outside-toplevel
  parameters = inspect.signature(_resolve(name)).parameters
  missing = [k for k in keywords if k not in parameters]
  if missing:
    raise TypeError(f"{name} has no parameter {missing}")


def _outcome(function, *args):
  try:
    function(*args)
    return "ok"
  except Exception as error:  # pylint: disable=broad-except
    return f"{type(error).__name__}: {error}"


def runner(job_path, result_path):
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  here = os.path.dirname(os.path.abspath(__file__))  # tests/: its `train` is not the trainer
  sys.path[:] = [ROOT] + [p for p in sys.path if os.path.abspath(p or ".") != here]
  with open(job_path) as f:
    job = json.load(f)
  result = {"help": {}, "commands": []}
  for module in job["help"]:
    result["help"][module] = _parse_only(module, ["--help"])
  for module, argv in job["commands"]:
    result["commands"].append([module, argv, *_parse_only(module, argv)])
  result["names"] = {name: _outcome(_resolve, name) for name in job["names"]}
  result["calls"] = {name + str(keywords): _outcome(_check_call, name, keywords)
                     for name, keywords in job["calls"]}
  result["blocks"] = _run_blocks(job["blocks"])
  with open(result_path, "w") as f:
    json.dump(result, f)


# ---------------------------------------------------------------------------------------------
# The tests


def _match_blocks():
  """{table key: block} for the python blocks; unmatched blocks and keys as lists."""
  matched, unmatched = {}, []
  for doc, language, label, code in fenced_blocks():
    if language != "python":
      continue
    keys = [key for key in BLOCKS if key[0] == doc and key[1] in f"{label}\n{code}"]
    if len(keys) == 1 and keys[0] not in matched:
      matched[keys[0]] = code
    else:
      unmatched.append((doc, code.splitlines()[0], keys))
  return matched, unmatched, [key for key in BLOCKS if key not in matched]


def _runnable_code(entry, code):
  """The block with its substitutions made; a substitution that no longer applies makes code
  that fails saying so."""
  for old, new in entry.subs:
    if old not in code:
      message = f"the block no longer holds {old!r}: update BLOCKS in tests/test_docs.py"
      return f"raise AssertionError({message!r})"
    code = code.replace(old, new)
  return code


def _documented_calls():
  """(callable, keywords) for spans like `InverseConv(C, kernel_size=3, ...)` that name a
  bijector or Glow."""
  classes = {name: "tfinvconv.bijectors" for name in
             re.findall(r'"(\w+)"', _read("tfinvconv/bijectors/__init__.py"))}
  classes["Glow"] = "tfinvconv.models"
  calls = set()
  for _, span in spans():
    match = re.fullmatch(r"(\w+)\((.*)\)", span)
    if match and match.group(1) in classes:
      keywords = tuple(re.findall(r"(\w+)=", match.group(2)))
      calls.add((f"{classes[match.group(1)]}.{match.group(1)}", keywords))
  return [list(call) for call in sorted(calls)]


def _documented_names():
  names = set()
  for _, span in spans():
    for match in NAME.finditer(span):
      if not span[:match.start()].endswith((".", "/")):
        names.add(match.group(1) + match.group(2))
  return sorted(names)


def _parsed_commands():
  """The distinct (module, argv) of the documents' commands for PARSED_MODULES."""
  return list(dict.fromkeys((m, tuple(a)) for _, m, a in python_commands()
                            if m in PARSED_MODULES))


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
  """Runs every runnable block, --help of every module with documented flags, every documented
  module command's parse, and resolves every documented name, in one subprocess."""
  matched, _, _ = _match_blocks()
  blocks = [{"id": entry.id, "after": entry.after, "check": entry.check,
             "code": _runnable_code(entry, matched[key])}
            for key, entry in BLOCKS.items() if isinstance(entry, Run) and key in matched]
  commands = _parsed_commands()
  job = {"blocks": blocks, "commands": [[m, list(a)] for m, a in commands],
         "help": sorted({m for m, _ in commands} | {"tfinvconv.train"}), "names": _documented_names(),
         "calls": _documented_calls()}
  folder = tmp_path_factory.mktemp("docs")
  job_path, result_path = folder / "job.json", folder / "result.json"
  job_path.write_text(json.dumps(job))
  env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
  process = subprocess.run([sys.executable, os.path.abspath(__file__), str(job_path),
                            str(result_path)], cwd=folder, env=env, capture_output=True,
                           text=True, timeout=600, check=False)
  assert process.returncode == 0, process.stderr[-4000:]
  return json.loads(result_path.read_text())


def test_every_fenced_block_names_its_language():
  unnamed = [(doc, code.splitlines()[0]) for doc, language, _, code in fenced_blocks()
             if language not in LANGUAGES]
  assert not unnamed, f"fenced blocks need one of {sorted(LANGUAGES)}: {unnamed}"


def test_every_python_block_is_runnable_or_listed():
  _, unmatched, missing = _match_blocks()
  assert not unmatched, f"python blocks that BLOCKS neither runs nor lists: {unmatched}"
  assert not missing, f"BLOCKS lists blocks the documents no longer have: {missing}"


@pytest.mark.slow  # the `ran` fixture: one subprocess runs the blocks, parsers and names
@pytest.mark.parametrize("block_id", [e.id for e in BLOCKS.values() if isinstance(e, Run)])
def test_python_block_runs(ran, block_id):
  assert ran["blocks"].get(block_id) == "ok", ran["blocks"].get(block_id, "not run")


@pytest.mark.parametrize("block_id", [e.id for e in BLOCKS.values() if isinstance(e, Elsewhere)])
def test_listed_block_is_the_file_another_test_runs(block_id):
  key, entry = next((k, e) for k, e in BLOCKS.items() if e.id == block_id)
  matched, _, _ = _match_blocks()
  assert key in matched, f"{block_id} is gone from {key[0]}"
  assert matched[key] == _read(entry.path), f"{key[0]} does not show {entry.path} as it is"
  assert os.path.basename(entry.path) in _read(entry.test), (
      f"not run here ({entry.reason}), and {entry.test} does not run {entry.path}")


@functools.lru_cache(maxsize=None)
def make_targets():
  text = _read("Makefile")
  variables = dict(re.findall(r"^(\w+)\s*[:?]?=\s*(.*)$", text, re.M))
  targets = set()
  for line in re.findall(r"^([^\s#.$][^:=\n]*|\$\(\w+\)[^:=\n]*):(?!=)", text, re.M):
    for _ in range(5):  # variables made of variables
      line = re.sub(r"\$\((\w+)\)", lambda m: variables.get(m.group(1), m.group(0)), line)
    targets.update(line.split())
  return targets


def test_make_commands_name_makefile_targets():
  bad = [(doc, line) for doc, line in shell_lines() if _words(line)[:1] == ["make"]
         and not set(_words(line)[1:]) <= make_targets()]
  assert not bad, f"not Makefile targets: {bad}"


@pytest.mark.slow  # the `ran` fixture
def test_python_module_commands_parse(ran):
  modules = {module for _, module, _ in python_commands()}
  unchecked = [m for m in modules if m not in PARSED_MODULES]
  for module in unchecked:  # only imported: it must take no flags here
    assert importlib_spec(module), f"python -m {module}: no such module"
    flagged = [argv for _, m, argv in python_commands() if m == module and argv]
    assert not flagged, (f"python -m {module} {flagged}: list it in PARSED_MODULES once its "
                         "entry point parses its arguments first")
  failed = [(m, argv, out[-600:]) for m, argv, out, code in ran["commands"] if code != 0]
  assert not failed, f"documented commands their modules refuse: {failed}"
  assert len(ran["commands"]) == len(_parsed_commands()) > 5


def importlib_spec(module):
  import importlib.util  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, ROOT)
  try:
    return importlib.util.find_spec(module) is not None
  finally:
    sys.path.remove(ROOT)


def _help_flags(help_text):
  return set(re.findall(r"(?<![\w-])(--[a-zA-Z][\w-]*)", help_text))


@functools.lru_cache(maxsize=None)
def _horovodrun_flags():
  """horovodrun's own flags, which docs/multi_gpu.md names in its launch commands."""
  horovodrun = os.path.join(os.path.dirname(sys.executable), "horovodrun")
  if not os.path.exists(horovodrun):
    pytest.fail("horovodrun is not installed: run `make horovod` (the README's test command "
                "does)")
  shown = subprocess.run([horovodrun, "--help"], capture_output=True, text=True, check=True)
  return _help_flags(shown.stdout)


@pytest.mark.slow  # the `ran` fixture
def test_help_lists_every_documented_flag(ran):
  """Each command's flags are in its module's --help; a flag named alone in the prose
  (`--n-bins N`) is one of the trainer's (or another documented module's, horovodrun's or
  pip's)."""
  helps = {m: out for m, (out, _) in ran["help"].items()}
  assert all(code == 0 for _, code in ran["help"].values()), ran["help"]
  for _, module, argv in python_commands():
    if module in helps:
      unknown = {a.split("=")[0] for a in argv if a.startswith("--")} - _help_flags(helps[module])
      assert not unknown, f"python -m {module} --help does not list {unknown}"
  known = set().union(*map(_help_flags, helps.values()), _horovodrun_flags()) | OTHER_FLAGS
  alone = {span.split()[0].split("=")[0] for _, span in spans() if span.startswith("--")}
  assert alone <= known, f"flags no documented module has: {alone - known}"


def _requirement_pins():
  return dict(re.findall(r"^([\w-]+)==([\w.]+)", _read("requirements.txt"), re.M))


def _pip_problems(words):
  problems = []
  setup = _read("setup.py")
  version = re.search(r'version="([\d.]+)"', setup).group(1)
  pins = _requirement_pins()
  for word in words[2:]:
    pin = re.fullmatch(r"([\w-]+)(?:\[[\w,-]+\])?==([\w.*]+)", word)
    if pin:
      pinned = pins.get(pin.group(1)) or pins.get(pin.group(1) + "-cpu")
      if pinned and not fnmatch.fnmatch(pinned, pin.group(2)):
        problems.append(f"{word}: requirements.txt pins {pinned}")
    wheel = re.search(r"tfinvconv-([\d.]+)-", word)
    if wheel and wheel.group(1) != version:
      problems.append(f"{word}: setup.py builds {version}")
    if word == "." and not os.path.exists(os.path.join(ROOT, "setup.py")):
      problems.append("no setup.py")
  return problems


def _script(word):
  """A script a command runs: a repository path, or a name unique in the repository."""
  if os.path.exists(os.path.join(ROOT, word)):
    return True
  return sum(os.path.basename(f) == word for f in repository_files()) == 1


def test_other_commands():
  """pip agrees with requirements.txt and setup.py; `python FILE` and `bash FILE` run files
  that exist; a fenced shell line starts with a command this test knows."""
  problems = []
  for doc, line in shell_lines():
    words = _words(line)
    if not words or words[0] not in COMMANDS:
      problems.append((doc, line, "unknown command: teach tests/test_docs.py"))
      continue
    words = _launched(words) or words
    if words[0] == "pip":
      problems += [(doc, line, p) for p in _pip_problems(words)]
    elif words[0] in PYTHONS | {"bash"} and len(words) > 1 and words[1] != "-m":
      if not _script(words[1]):
        problems.append((doc, line, f"no script {words[1]}"))
  assert not problems, problems


def test_indented_blocks_hold_no_commands():
  """Commands live in fenced sh blocks, where this test finds them."""
  found = []
  for doc in DOCUMENTS:
    lines = prose(doc).splitlines()
    for before, line in zip([""] + lines, lines):
      if not before.strip() and line.startswith("    ") and _words(line)[:1] and \
         _words(line)[0] in COMMANDS:
        found.append((doc, line.strip()))
  assert not found, found


@functools.lru_cache(maxsize=None)
def repository_files():
  try:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout
    files = [f for f in listed.splitlines() if os.path.exists(os.path.join(ROOT, f))]
  except (OSError, subprocess.CalledProcessError):  # not a git checkout: the sources
    files = []
    for folder, subfolders, names in os.walk(ROOT):
      subfolders[:] = [d for d in subfolders if not d.startswith(".") and d not in UNTRACKED]
      files += [os.path.relpath(os.path.join(folder, f), ROOT) for f in names]
  return frozenset(files)


def _braces(path):
  match = re.search(r"\{([^}]*)\}", path)
  if not match:
    return [path]
  return [p for choice in match.group(1).split(",")
          for p in _braces(path[:match.start()] + choice + path[match.end():])]


def _exists(path, folder):
  files = repository_files()
  for candidate in (path, os.path.normpath(os.path.join(folder, path))):
    candidate = candidate.rstrip("/")
    if candidate in files or any(f.startswith(candidate + "/") for f in files):
      return True
    if any(fnmatch.fnmatch(f, candidate) for f in files):
      return True
  return "/" not in path and any(os.path.basename(f) == path for f in files)


def _looks_like_path(span):
  if not PATH_LIKE.fullmatch(span) or span.startswith(("/", "~", "http")):
    return False
  return "/" in span or span.rsplit(".", 1)[-1] in KNOWN_EXTENSIONS and "." in span[1:]


def _tfds_names():
  return set(re.findall(r'"([\w]+/[\w]+)"', _read("tfinvconv/train/presets.py")))


def _path_problems(doc, span):
  folder = os.path.dirname(doc)
  if span in NOT_IN_REPO or span in _tfds_names():
    return []
  if span.startswith("horovod/"):
    patched = _read(HOROVOD_PATCH)
    return [p for p in _braces(span) if p not in patched]
  return [p for p in _braces(span) if not _exists(p, folder)]


def test_named_paths_exist():
  """Every path in backticks, every Markdown link, every path in a ```text block's first
  column and in requirements.txt's comments."""
  missing = [(doc, p) for doc, span in spans() if _looks_like_path(span)
             for p in _path_problems(doc, span)]
  for doc, language, _, code in fenced_blocks():
    if language == "text":
      for line in code.splitlines():
        first = line.split()[0] if line.strip() and not line.startswith(" ") else ""
        if _looks_like_path(first):
          missing += [(doc, p) for p in _path_problems(doc, first)]
  for doc in DOCUMENTS:
    for target in re.findall(r"\]\(([^)\s]+)\)", prose(doc)):
      path = target.split("#")[0]
      if path and not target.startswith("http") and not _exists(path, os.path.dirname(doc)):
        missing.append((doc, target))
  comments = re.findall(r"#(.*)", _read("requirements.txt"))
  missing += [("requirements.txt", w) for c in comments for w in c.split()
              if "/" in w and not _exists(w.strip("().,;"), "")]
  assert not missing, f"named but not in the repository: {missing}"


def _slug(heading):
  return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_to_headings_exist():
  for doc in DOCUMENTS:
    text = prose(doc)
    anchors = {_slug(h) for h in re.findall(r"^#+ (.*)$", text, re.M)}
    for target in re.findall(r"\]\((#[^)\s]+)\)", text):
      assert target[1:] in anchors, (doc, target)


def test_no_path_leaves_the_repository():
  outside = []
  for doc in DOCUMENTS + ["requirements.txt", "Makefile"]:
    for path in re.findall(r"(?<![\w.])((?:\.\./)+[\w./-]+)", _read(doc)):
      resolved = os.path.normpath(os.path.join(ROOT, os.path.dirname(doc), path))
      if not resolved.startswith(ROOT + os.sep):
        outside.append((doc, path))
  assert not outside, f"paths outside the repository: {outside}"


@pytest.mark.slow  # the `ran` fixture
def test_named_modules_and_attributes_exist(ran):
  bad = {name: why for name, why in ran["names"].items() if why != "ok"}
  assert not bad, bad
  assert "tfinvconv.models.Glow" in ran["names"]  # the scan found the documents' names


@pytest.mark.slow  # the `ran` fixture
def test_documented_keywords_exist(ran):
  bad = {call: why for call, why in ran["calls"].items() if why != "ok"}
  assert not bad, bad
  assert any(call.startswith("tfinvconv.bijectors.InverseConv") for call in ran["calls"])


def test_named_tests_exist():
  defined = set()
  for path in repository_files():
    if path.startswith("tests/") and path.endswith(".py"):
      defined.update(re.findall(r"^def (test_\w+)", _read(path), re.M))
  keys = json.loads(_read("benchmarks/results/main_job.json"))  # metrics.json's keys
  named = {span for _, span in spans() if re.fullmatch(r"test_\w+", span) and span not in keys}
  assert named and named <= defined, named - defined


def test_environment_variables_are_read():
  """Every TFINVCONV_* variable the documents name is read by the build, the op or the
  library."""
  sources = "".join(_read(p) for p in repository_files()
                    if p == "setup.py" or p.startswith(("tfinvconv/", "custom_ops/")) and
                    p.endswith((".py", ".cc", ".h")))
  named = {v for doc in DOCUMENTS for v in re.findall(r"TFINVCONV_\w+", _read(doc))}
  assert named and not {v for v in named if f'"{v}"' not in sources}, named


if __name__ == "__main__":
  runner(*sys.argv[1:])


def test_console_scripts_match_setup():
  """Every console script setup.py installs is one this test parses, and runs that module."""
  scripts = dict(re.findall(r'"([\w-]+) = ([\w.]+)\.__main__:main"', _read("setup.py")))
  assert scripts == CONSOLE_SCRIPTS

