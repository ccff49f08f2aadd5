"""docker/: what the Dockerfiles copy exists and reaches the build context, and their pins are requirements.lock's."""
import fnmatch
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = {"cpu": ROOT / "docker" / "Dockerfile.cpu", "gpu": ROOT / "docker" / "Dockerfile.gpu"}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    out, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^\s;#]+)", line)
        if m:
            pins[m.group(1).lower().replace("_", "-")] = m.group(3)
    return pins


def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(relpath: str, patterns: list[str]) -> bool:
    """Docker's rule, simplified: a pattern (with ** for any folders) excludes a path or a folder above it."""
    parts = relpath.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    hit = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        p = pattern.lstrip("!").strip("/")
        options = {p, p.replace("**/", "")} if p.startswith("**/") else {p}
        if any(fnmatch.fnmatchcase(prefix, opt) for prefix in prefixes for opt in options):
            hit = not negate
    return hit


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_everything_the_dockerfile_copies_exists_and_is_in_the_build_context(kind):
    copies = [args for word, args in instructions(DOCKERFILES[kind]) if word in ("COPY", "ADD")]
    assert copies, f"{kind} image copies nothing"
    patterns = dockerignore()
    for args in copies:
        if "--from=" in args:
            continue  # from another image, not from the build context
        sources = [a for a in args.split() if not a.startswith("--")][:-1]
        for source in sources:
            assert (ROOT / source).exists(), f"Dockerfile.{kind}: COPY {source} does not exist"
            assert not ignored(source, patterns), f"Dockerfile.{kind}: COPY {source} is excluded by .dockerignore"
    # The project itself and its lock are copied; the image runs `python -m components.<step>`.
    copied = {s.rstrip("/") for args in copies if "--from=" not in args for s in args.split()[:-1]}
    assert {"requirements.lock", "setup.py", "pipeline", "components", "docker/image_lock.py"} <= copied


def arg_defaults(kind: str) -> dict[str, str]:
    return dict(args.split("=", 1) for word, args in instructions(DOCKERFILES[kind]) if word == "ARG" and "=" in args)


def image_lock():
    import importlib.util

    spec = importlib.util.spec_from_file_location("image_lock", ROOT / "docker" / "image_lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_the_image_installs_from_the_lock_and_nothing_else(kind):
    runs = [args for word, args in instructions(DOCKERFILES[kind]) if word == "RUN"]
    installs = [cmd for args in runs for cmd in re.split(r"&&|;", args) if re.search(r"\bpip3? install\b", cmd)]
    # The pins come from requirements.lock through docker/image_lock.py, for this image.
    assert any(f"image_lock.py requirements.lock --image {kind} > image.lock" in args for args in runs), kind
    assert any("-r image.lock" in cmd for cmd in installs), f"Dockerfile.{kind} does not install the lock's pins"
    pins = lock()
    for cmd in installs:
        # --no-deps everywhere: pip resolves nothing, so the image holds exactly the lock's versions.
        assert "--no-deps" in cmd, f"Dockerfile.{kind}: {cmd.strip()!r} could resolve versions outside the lock"
        for name, version in re.findall(r"([A-Za-z0-9_.\-]+)==([^\s\"']+)", cmd):
            assert pins.get(name.lower().replace("_", "-")) == version, f"Dockerfile.{kind} pins {name}=={version}, the lock {pins.get(name.lower())}"
    # The build's index settings are secrets of that one command, never files or variables of a layer.
    assert not any(re.search(r"pip\.conf|ca-certificates\.crt|PIP_CERT|PIP_INDEX|SSL_CERT", args)
                   for word, args in instructions(DOCKERFILES[kind]) if word in ("COPY", "ADD", "ENV", "ARG"))
    pip_run = next(args for args in runs if "-r image.lock" in args)
    assert "--mount=type=secret,id=pip.conf,target=/etc/pip.conf" in pip_run and "--mount=type=secret,id=ca.crt" in pip_run


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_image_lock_keeps_every_pin_but_the_ones_no_step_imports(kind):
    module = image_lock()
    pins = lock()
    text = (ROOT / "requirements.lock").read_text()
    out = dict(line.split("==") for line in module.image_pins(text, kind))
    substitutes = module.SUBSTITUTES[kind]
    for name, version in pins.items():
        if name in module.NOT_IN_IMAGES:
            assert name not in out
        else:
            assert out[substitutes.get(name, name)] == version, name
    assert set(module.NOT_IN_IMAGES) <= set(pins), "NOT_IN_IMAGES names a package the lock does not have"
    assert set(substitutes) <= set(pins)
    assert ("tensorflow-cpu" in out) == (kind == "cpu") and "opencv-contrib-python-headless" in out
    with pytest.raises(ValueError):
        module.image_pins(text, "tpu")


def test_no_step_imports_what_the_images_leave_out():
    module = image_lock()
    top_level = {"pytest": "pytest", "pytest-timeout": "pytest_timeout", "pytest-xdist": "xdist", "execnet": "execnet",
                 "iniconfig": "iniconfig", "pluggy": "pluggy",
                 "gcp-storage-emulator": "gcp_storage_emulator", "jax": "jax", "jaxlib": "jaxlib",
                 "sounddevice": "sounddevice", "libclang": "clang"}
    assert set(top_level) == set(module.NOT_IN_IMAGES)
    for path in [*(ROOT / "components").rglob("*.py"), *(ROOT / "pipeline").rglob("*.py")]:
        text = path.read_text()
        for name in top_level.values():
            assert not re.search(rf"^\s*(import|from) {name}\b", text, re.M), f"{path} imports {name}, which the images leave out"


def test_the_gpu_base_image_is_the_locks_tensorflow():
    base = [args for word, args in instructions(DOCKERFILES["gpu"]) if word == "FROM"]
    assert base == ["${BASE_IMAGE}"]
    m = re.fullmatch(r"tensorflow/tensorflow:([0-9.]+)-gpu", arg_defaults("gpu")["BASE_IMAGE"])
    assert m, f"GPU image base {arg_defaults('gpu')['BASE_IMAGE']!r} is not a tensorflow/tensorflow:X.Y.Z-gpu image"
    assert m.group(1) == lock()["tensorflow"], "the GPU base's TensorFlow differs from requirements.lock's"


def test_the_cpu_image_is_the_locks_python_and_its_dataflow_target_the_locks_beam():
    stages = {}
    for word, args in instructions(DOCKERFILES["cpu"]):
        if word == "FROM":
            image, _, name = args.partition(" AS ")
            stages[name.strip() or "(default)"] = image.strip()
    assert stages["cpu"] == "${BASE_IMAGE}" and stages["beam"] == "${BEAM_IMAGE}"
    assert re.fullmatch(r"python:3\.11[-.\w]*", arg_defaults("cpu")["BASE_IMAGE"])
    assert "--python-version 3.11" in (ROOT / "Makefile").read_text()
    assert arg_defaults("cpu")["BEAM_IMAGE"] == f"apache/beam_python3.11_sdk:{lock()['apache-beam']}"
    assert stages["dataflow"] == "cpu" and stages["(default)"] == "cpu"
    # The default target is the KFP image: no Beam entrypoint in front of `python -m components.<step>`.
    text = DOCKERFILES["cpu"].read_text()
    assert text.rstrip().endswith("FROM cpu") and text.index("ENTRYPOINT") < text.rindex("FROM cpu")


def test_make_images_reads_the_dockerfiles_bases():
    from pipeline import containers

    assert containers.public_base("cpu") == arg_defaults("cpu")["BASE_IMAGE"]
    assert containers.public_base("gpu") == arg_defaults("gpu")["BASE_IMAGE"]


def test_dockerignore_keeps_the_environment_runs_and_git_out():
    patterns = dockerignore()
    for path in (".venv", ".venv/lib/python3.11/site-packages/x.py", "runs", "runs/store/ledger.parquet", ".git",
                 "components/__pycache__/x.pyc", "tests/unit/test_docker.py", "docker/Dockerfile.cpu"):
        assert ignored(path, patterns), f".dockerignore lets {path} into the build context"
    for path in ("requirements.lock", "setup.py", "pipeline/dag.py", "components/download/component.py",
                 "docker/image_lock.py"):
        assert not ignored(path, patterns), f".dockerignore keeps {path} out, but the images need it"


def test_the_gpu_image_bakes_in_backbone_weights_only_when_asked_where_train_can_name_them():
    from keras.src.applications import resnet

    from components.train.params import SPEC as TRAIN
    from pipeline import defaults

    # Nothing is fetched or baked in by default: a cluster with internet has Keras fetch them at run time.
    assert arg_defaults("gpu")["BACKBONE_WEIGHTS_URL"] == '""' and arg_defaults("gpu")["BACKBONE_WEIGHTS_MD5"] == '""'
    steps = instructions(DOCKERFILES["gpu"])
    at = next(i for i, (word, args) in enumerate(steps) if word == "RUN" and "BACKBONE_WEIGHTS_URL" in args)
    run = steps[at][1]
    assert f"mkdir -p {defaults.IMAGE_WEIGHTS_DIR}" in run and f"cd {defaults.IMAGE_WEIGHTS_DIR}" in run
    assert 'if [ -n "$BACKBONE_WEIGHTS_URL" ]' in run and 'if [ -n "$BACKBONE_WEIGHTS_MD5" ]' in run
    assert "md5sum -c" in run
    # Before the project is copied, so a code change does not fetch them again.
    assert at < steps.index(("COPY", "setup.py ."))
    # The build arguments the Dockerfile shows are the installed Keras' own file and hash of the default backbone.
    text = DOCKERFILES["gpu"].read_text()
    backbone = TRAIN.defaults.backbone
    file = f"{backbone}_weights_tf_dim_ordering_tf_kernels_notop.h5"
    assert f"BACKBONE_WEIGHTS_URL={resnet.BASE_WEIGHTS_PATH}{file}" in text
    assert f"BACKBONE_WEIGHTS_MD5={resnet.WEIGHTS_HASHES[backbone][1]}" in text
    assert f"--weights {defaults.IMAGE_WEIGHTS_DIR}/{file}" in text
